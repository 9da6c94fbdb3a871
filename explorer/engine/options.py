"""The engines' options: one frozen, validated dataclass per engine, declared once.

The library takes these objects, the Hydra commands register them as their config nodes
(:func:`explorer.conf.schema.hydra_node`), and the tests build them directly, so every default
lives here and nowhere else (the YAML files hold only comments and Hydra's own settings). A value
that cannot work is refused when the object is made, with the section, field, value and what is
allowed named (:class:`explorer.checks.OptionError`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

from explorer.checks import OptionError, check_bool, check_choice, check_int, check_number, check_text

__all__ = ["ISOLATION_MODES", "SAMPLERS", "SweepOptions", "SearchOptions", "TrainOptions", "options_from"]

#: How a measurement runs and how its timeout is enforced (see explorer.engine.sweep.isolation).
ISOLATION_MODES: tuple[str, ...] = ("auto", "process", "alarm", "inline")
#: optuna samplers by the name the command line uses.
SAMPLERS: tuple[str, ...] = ("tpe", "nsga2", "random")


def options_from(cls: type, values: Optional[Mapping[str, Any]]) -> Any:
    """``cls(**values)`` with unknown keys refused by name (``None`` gives the defaults)."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise OptionError(f"{cls.SECTION}.{key}", values[key], "unknown option; allowed: " + ", ".join(sorted(names)))
    return cls(**values)


@dataclass(frozen=True)
class SweepOptions:
    """``sweep.*``: how the sweep engine runs.

    ``resume=False`` re-measures what is stored (the earlier value is replaced in place);
    ``retry_failed`` re-measures stored failures; ``timeout_s`` caps one measurement (null: none);
    ``isolation`` is ``auto | process | alarm | inline``; ``max_measurements`` stops after that many
    (resume later); ``dry_run`` plans and prints, measuring nothing.
    """

    SECTION: ClassVar[str] = "sweep"

    dry_run: bool = False
    resume: bool = True
    retry_failed: bool = False
    timeout_s: Optional[float] = 900.0
    isolation: str = "auto"
    progress: bool = True
    max_measurements: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("dry_run", "resume", "retry_failed", "progress"):
            check_bool(f"sweep.{name}", getattr(self, name))
        check_number("sweep.timeout_s", self.timeout_s, low=0, low_open=True, optional=True,
                     none_means="no timeout")
        check_choice("sweep.isolation", self.isolation, ISOLATION_MODES)
        check_int("sweep.max_measurements", self.max_measurements, low=1, optional=True,
                  none_means="measure everything")

    def replace(self, **changes: Any) -> "SweepOptions":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SearchOptions:
    """``search.*``: an optuna search over a space (see explorer.engine.search).

    ``trials`` is the total the study should reach (a second run adds only the missing ones);
    ``objectives`` e.g. ``["ttft_ms:min", "accuracy:max"]`` (null: that default, with resolution
    standing in for accuracy when none is stored); ``max_ttft_ms`` / ``max_params_m`` are
    constraints judged on measured values; ``ordinal`` makes evenly spaced numeric lists ordered
    parameters; ``study`` names the optuna study (null: ``<space>-<sampler>-<digest>``).
    """

    SECTION: ClassVar[str] = "search"

    trials: int = 50
    sampler: str = "tpe"
    seed: Optional[int] = 0
    study: Optional[str] = None
    objectives: Any = None
    max_ttft_ms: Optional[float] = None
    max_params_m: Optional[float] = None
    ordinal: bool = True
    population_size: Optional[int] = None
    dry_run: bool = False

    def __post_init__(self) -> None:
        check_int("search.trials", self.trials, low=1, high=1_000_000)
        check_choice("search.sampler", self.sampler, SAMPLERS)
        check_int("search.seed", self.seed, optional=True, none_means="a different search every time")
        check_text("search.study", self.study, optional=True, none_means="<space>-<sampler>-<digest>")
        for name in ("max_ttft_ms", "max_params_m"):
            check_number(f"search.{name}", getattr(self, name), low=0, low_open=True, optional=True,
                         none_means="no limit")
        check_bool("search.ordinal", self.ordinal)
        check_int("search.population_size", self.population_size, low=2, optional=True, none_means="50")
        check_bool("search.dry_run", self.dry_run)
        if self.objectives is not None:
            from explorer.analysis.pareto import parse_objectives

            try:
                parsed = parse_objectives(self.objectives)
            except (TypeError, ValueError) as err:
                raise OptionError("search.objectives", self.objectives, str(err)) from None
            object.__setattr__(self, "objectives", tuple(str(o) for o in parsed))

    def replace(self, **changes: Any) -> "SearchOptions":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainOptions:
    """``train.*``: which points of a sweep ``explorer train`` trains (see explorer.train.points).

    ``points``: ``pareto``, ``all`` or comma-separated point keys; ``max_points``: at most this
    many runs, cheapest TTFT first; ``per_llm``: one run per LLM too (with ``config.lm=hf``);
    ``output_root``: run folders (default ``<out>/train``); ``config``: TrainConfig fields
    (encoder, knobs and resolution come from each point), validated by TrainConfig itself.
    """

    SECTION: ClassVar[str] = "train"

    points: Any = "pareto"
    max_points: Optional[int] = None
    per_llm: bool = False
    dry_run: bool = False
    output_root: Optional[str] = None
    config: Any = field(default_factory=lambda: {"max_steps": 600})

    def __post_init__(self) -> None:
        check_int("train.max_points", self.max_points, low=1, optional=True, none_means="every selected run")
        check_bool("train.per_llm", self.per_llm)
        check_bool("train.dry_run", self.dry_run)
        check_text("train.output_root", self.output_root, optional=True, none_means="<out>/train")
        if isinstance(self.points, (list, tuple)):
            object.__setattr__(self, "points", ",".join(str(p) for p in self.points))
        check_text("train.points", self.points)
        if not isinstance(self.config, Mapping):
            raise OptionError("train.config", self.config, "a mapping of TrainConfig fields")
