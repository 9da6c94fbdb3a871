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
from explorer.data.confidence import REMEASURE_MODES

__all__ = ["ISOLATION_MODES", "REMEASURE_MODES", "SAMPLERS", "LAUNCHERS", "SweepOptions", "SearchOptions", "TrainOptions", "WorkerOptions",
           "options_from"]

#: How a measurement runs and how its timeout is enforced (see explorer.engine.sweep.isolation).
ISOLATION_MODES: tuple[str, ...] = ("auto", "process", "alarm", "inline")
#: optuna samplers by the name the command line uses.
SAMPLERS: tuple[str, ...] = ("tpe", "nsga2", "random")
#: Where ``explorer worker`` runs its workers: in this process, or as Ray tasks (the ``ray`` extra).
LAUNCHERS: tuple[str, ...] = ("local", "ray")


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

    ``resume=False`` re-measures what is stored; ``remeasure`` re-measures the stored ok values
    that are ``noisy`` (a timing's CI missed its target), ``contended`` (taken while other
    processes used the machine), ``flagged`` (either) or ``all`` (default ``none``); a replaced
    value is kept in the store's ``measurement_history``; ``retry_failed`` re-measures stored failures; ``timeout_s`` caps one measurement (null: none);
    ``isolation`` is ``auto | process | alarm | inline``; ``max_measurements`` stops after that many
    (resume later); ``dry_run`` plans and prints, measuring nothing. ``interleave``: up to this many
    measurements of one kind are built together and timed in shuffled rounds (1: one at a time);
    ``machine_check`` looks at the machine before measuring, warns when other work runs, and (with
    ``measure.threads`` unset) measures with the cores left free (docs/measurement.md, "Contention").
    ``share``: sweeps of one store in one environment share the work through the store's leased
    queue (:mod:`explorer.data.queue`, the one ``explorer worker`` uses): two sweeps started
    together measure each job once (false: this sweep measures its whole list itself; sharing is
    off anyway with ``resume=false`` or ``remeasure``).
    """

    SECTION: ClassVar[str] = "sweep"

    dry_run: bool = False
    resume: bool = True
    retry_failed: bool = False
    timeout_s: Optional[float] = 900.0
    isolation: str = "auto"
    progress: bool = True
    max_measurements: Optional[int] = None
    interleave: int = 12
    machine_check: bool = True
    remeasure: str = "none"
    share: bool = True

    def __post_init__(self) -> None:
        check_int("sweep.interleave", self.interleave, low=1, high=1000)
        for name in ("dry_run", "resume", "retry_failed", "progress", "machine_check", "share"):
            check_bool(f"sweep.{name}", getattr(self, name))
        check_number("sweep.timeout_s", self.timeout_s, low=0, low_open=True, optional=True,
                     none_means="no timeout")
        check_choice("sweep.isolation", self.isolation, ISOLATION_MODES)
        check_int("sweep.max_measurements", self.max_measurements, low=1, optional=True,
                  none_means="measure everything")
        check_choice("sweep.remeasure", self.remeasure, REMEASURE_MODES)

    def replace(self, **changes: Any) -> "SweepOptions":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SearchOptions:
    """``search.*``: an optuna search over a space (see explorer.engine.search).

    ``trials`` is the total the study should reach (a second run adds only the missing ones);
    ``objectives`` e.g. ``["ttft_ms:min", "accuracy:max"]`` (null: that default, with resolution
    standing in for accuracy when none is stored); ``max_ttft_ms`` / ``max_params_m`` are
    constraints judged on measured values; ``ordinal`` makes evenly spaced numeric lists ordered
    parameters; ``study`` names the optuna study (null: ``<space>-<sampler>-<digest>``);
    ``accuracy=predicted`` gives every trial an accuracy (published, else predicted by
    :mod:`explorer.accuracy`, the FastVLM README's ``avg5``), so the search optimises it.
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
    accuracy: str = "stored"  # stored (trained/user values only) | predicted (published, else the accuracy model)

    def __post_init__(self) -> None:
        check_choice("search.accuracy", self.accuracy, ("stored", "predicted"))
        check_int("search.trials", self.trials, low=1, high=1_000_000)
        check_choice("search.sampler", self.sampler, SAMPLERS)
        check_int("search.seed", self.seed, low=0, high=2**32 - 1, optional=True, none_means="a different search every time")
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
    (encoder, knobs and resolution come from each point), validated by TrainConfig itself; a
    field set to null keeps TrainConfig's default.
    """

    SECTION: ClassVar[str] = "train"

    points: Any = "pareto"
    max_points: Optional[int] = None
    per_llm: bool = False
    dry_run: bool = False
    output_root: Optional[str] = None
    # max_steps listed (None: TrainConfig's default) so that train.config.max_steps=N overrides without +
    config: Any = field(default_factory=lambda: {"max_steps": None})

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


@dataclass(frozen=True)
class WorkerOptions:
    """``worker.*``: a worker of a sweep shared through the store (see explorer.engine.sweep.worker).

    ``sweep`` names the published sweep to work on (null: the chosen space's name, or the only
    sweep in the store); ``lease_s`` is how long a claimed job stays this worker's without a
    heartbeat (renewed every ``lease_s / 3``); ``poll_s`` the wait between looks while other
    workers hold the last leases; ``exclusive_device`` takes the one timing claim of this host's
    device (``host``: null = this machine's name); ``max_jobs`` stops after that many;
    ``launcher`` runs ``workers`` workers here (``local``, one after another is pointless, so
    ``local`` means one) or as Ray tasks (``ray``: ``ray_address`` null = a local Ray, each task
    asking for ``num_cpus`` CPUs and ``num_gpus`` GPUs).
    """

    SECTION: ClassVar[str] = "worker"

    sweep: Optional[str] = None
    lease_s: float = 60.0
    poll_s: float = 2.0
    exclusive_device: bool = True
    host: Optional[str] = None
    max_jobs: Optional[int] = None
    launcher: str = "local"
    workers: int = 1
    ray_address: Optional[str] = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        check_text("worker.sweep", self.sweep, optional=True, none_means="the space's name, or the only sweep")
        check_number("worker.lease_s", self.lease_s, low=0, low_open=True)
        check_number("worker.poll_s", self.poll_s, low=0, low_open=True)
        if self.poll_s > self.lease_s:
            raise OptionError("worker.poll_s", self.poll_s, f"at most worker.lease_s={self.lease_s:g}")
        check_bool("worker.exclusive_device", self.exclusive_device)
        check_text("worker.host", self.host, optional=True, none_means="this machine's host name")
        check_int("worker.max_jobs", self.max_jobs, low=1, optional=True, none_means="until the queue is empty")
        check_choice("worker.launcher", self.launcher, LAUNCHERS)
        check_int("worker.workers", self.workers, low=1, high=10_000)
        if self.launcher == "local" and self.workers != 1:
            raise OptionError("worker.workers", self.workers, "1 with worker.launcher=local (start more "
                              "`explorer worker` processes, or use worker.launcher=ray)")
        check_text("worker.ray_address", self.ray_address, optional=True, none_means="a local Ray")
        check_number("worker.num_cpus", self.num_cpus, low=0)
        check_number("worker.num_gpus", self.num_gpus, low=0)

    def replace(self, **changes: Any) -> "WorkerOptions":
        return dataclasses.replace(self, **changes)
