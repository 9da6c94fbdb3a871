"""``python -m explorer search +space=NAME search.trials=N [overrides]``: Hydra wrapper of run_search.

The search itself lives in :mod:`explorer.search` (a notebook calls ``run_search`` directly); this
module turns a composed config into that call, prints the report and maps problems to exit codes:
2 for a bad space, setting or search option (one line, no traceback), 130 when interrupted.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from explorer.commands.sweep import _chosen_space, _err
from explorer.conf.schema import (MeasureOverrides, measure_overrides,
                                  register_schemas, run_hydra_command)

_STATE: dict[str, Any] = {"exit": 0, "argv": []}


@dataclass
class SearchOptions:
    """``search.*``: the optuna loop (see explorer.search.run_search)."""

    trials: int = 50
    sampler: str = "tpe"
    seed: Optional[int] = 0
    study: Optional[str] = None
    objectives: Any = None  # "ttft_ms:min,accuracy:max" or a list of "column:min|max"
    max_ttft_ms: Optional[float] = None
    max_params_m: Optional[float] = None
    ordinal: bool = True
    population_size: Optional[int] = None
    dry_run: bool = False


@dataclass
class SearchMeasureOptions:
    """``sweep.*`` of the search: how the sweep engine measures each proposed point."""

    retry_failed: bool = False
    timeout_s: Optional[float] = 900.0
    isolation: str = "auto"
    progress: bool = True


@dataclass
class SearchAppConfig:
    """The whole config of ``python -m explorer search``."""

    space: Any = None  # filled by +space=NAME (validated by explorer.space.load_space)
    measure: Any = field(default_factory=MeasureOverrides)
    search: SearchOptions = field(default_factory=SearchOptions)
    sweep: SearchMeasureOptions = field(default_factory=SearchMeasureOptions)
    out: Optional[str] = None
    store: Optional[str] = None
    device: Optional[str] = None
    spaces_dir: Optional[str] = None
    space_file: Optional[str] = None


def register_search_schema() -> None:
    """Put ``search_schema`` (named in search.yaml's defaults) in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    register_schemas()
    ConfigStore.instance().store(name="search_schema", node=SearchAppConfig)


def _objectives(value: Any) -> Any:
    """``search.objectives`` as run_search takes it (a list node becomes a plain list)."""
    if value is None or isinstance(value, str):
        return value
    if OmegaConf.is_list(value):
        return [str(v) for v in OmegaConf.to_container(value, resolve=True)]  # type: ignore[union-attr]
    return value


def run_from_config(cfg: DictConfig) -> int:
    """One search for a composed config; returns the exit code."""
    from explorer.search import SearchError, count_finished, prepare_search, run_search
    from explorer.space import SpaceError, load_space
    from explorer.store import Store, resolve_url
    from explorer.sweep import default_settings

    chosen = _chosen_space(cfg)
    if chosen is None:
        return 2
    choice, source, node = chosen
    opts, how = cfg.search, cfg.sweep
    kwargs = dict(trials=opts.trials, sampler=opts.sampler, seed=opts.seed, objectives=_objectives(opts.objectives),
                  constraints={"max_ttft_ms": opts.max_ttft_ms, "max_params_m": opts.max_params_m},
                  study_name=opts.study, ordinal=opts.ordinal, population_size=opts.population_size,
                  isolation=how.isolation)
    try:
        space = load_space(node, name=None if node.get("name") else choice, source_name=source)
        settings = default_settings(space, **measure_overrides(cfg))
        prepare_search(space, settings, None, **kwargs)  # every option checked before a file is touched
    except SpaceError as err:
        _err(f"invalid search space\n{err}")
        return 2
    except SearchError as err:
        _err(str(err))
        return 2
    except ValueError as err:
        _err(f"invalid measurement setting: {err}")
        return 2

    out = Path(cfg.out) if cfg.get("out") else Path("results") / space.name
    url = cfg.store or resolve_url(out)
    if opts.dry_run:
        db = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None
        exists = db is None or db.is_file()
        store = Store(url) if exists else None
        try:
            setup = prepare_search(space, settings, store, **kwargs)
            finished = count_finished(url, setup.study_name) if exists else None
        finally:
            if store is not None:
                store.close()
        print(setup.describe(url, finished))
        print(f"watch it with: optuna-dashboard {url}")
        return 0

    print(f"search {space.name!r} from {source} -> {url}", flush=True)
    store = Store(url)
    try:
        report = run_search(space, settings, store, timeout_s=how.timeout_s, retry_failed=how.retry_failed,
                            progress=how.progress, **kwargs)
        print(report.format(store), flush=True)
    except (SearchError, SpaceError) as err:
        _err(str(err))
        return 2
    finally:
        store.close()
    cmd = "python -m explorer search " + " ".join(shlex.quote(a) for a in _STATE["argv"])
    if report.interrupted:
        print(f"interrupted after {report.trials_before + report.trials_run} of {report.trials_target} trials; "
              f"every finished trial and measurement is stored.\ncontinue with the same command:\n  {cmd}", flush=True)
        return 130
    print(f"continue the study with a larger search.trials; watch it with: optuna-dashboard {url}", flush=True)
    return 0


@hydra.main(version_base="1.3", config_path="pkg://explorer.conf", config_name="search")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        code = run_from_config(cfg)
    except KeyboardInterrupt:
        code = 130
    _STATE["exit"] = max(int(_STATE["exit"]), code)


def main(argv: list[str]) -> int:
    """Entry point of ``python -m explorer search``: Hydra parses ``argv`` (overrides, ``--help``,
    ``--cfg job`` and ``--multirun`` over e.g. ``search.sampler=tpe,nsga2`` behave as in any Hydra app)."""
    register_search_schema()
    return run_hydra_command("search", _hydra_main, argv, _STATE)
