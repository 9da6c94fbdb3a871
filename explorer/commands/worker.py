"""``python -m explorer worker store=URL [+space=NAME] [overrides]``: a worker of a shared sweep.

Everything lives in :mod:`explorer.engine.sweep.worker`; this module turns a composed Hydra
config into ``run_worker`` / ``launch_workers``, prints the reports and maps problems found
before any work (a bad option, an unreachable database, a store of another schema version, a
sweep that does not exist, a device held by another timing worker) to ``error: ...`` and exit 2.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from explorer.commands.common import error, space_and_settings
from explorer.conf.schema import hydra_command, measure_overrides, options_of, space_app_config

_STATE: dict[str, Any] = {"exit": 0, "argv": []}


def _worker_app() -> type:
    from explorer.engine.options import SweepOptions, WorkerOptions

    return space_app_config("WorkerAppConfig", "The whole config of ``explorer worker`` (``sweep.*``: how each job "
                            "is measured).", {"worker": WorkerOptions, "sweep": SweepOptions})


WorkerAppConfig = _worker_app()


def _refuse_sweep_only_options(options: Any) -> None:
    """``sweep.*`` options a worker does not use are refused rather than silently ignored."""
    from explorer.checks import OptionError

    if options.dry_run:
        raise OptionError("sweep.dry_run", True, "false for a worker (plan with `explorer sweep +space=NAME "
                          "sweep.dry_run=true`)")
    if options.max_measurements is not None:
        raise OptionError("sweep.max_measurements", options.max_measurements, "null for a worker (use worker.max_jobs)")
    if not options.resume:
        raise OptionError("sweep.resume", False, "true for a worker (what is stored is done; "
                          "sweep.retry_failed=true measures stored failures again)")
    if options.remeasure != "none":
        raise OptionError("sweep.remeasure", options.remeasure, "none for a worker (re-measure flagged values "
                          "with `explorer sweep +space=NAME sweep.remeasure=...` in that environment)")


def run_from_config(cfg: DictConfig) -> int:
    """One worker (or a Ray fleet of them) for a composed config; returns the exit code."""
    from explorer.data.queue import DeviceBusy
    from explorer.data.space import SpaceError
    from explorer.data.store import Store
    from explorer.engine.options import SweepOptions, WorkerOptions
    from explorer.engine.sweep.worker import launch_workers, resolve_sweep, run_worker

    try:
        options = options_of(WorkerOptions, cfg.worker)
        sweep_options = options_of(SweepOptions, cfg.sweep)
        _refuse_sweep_only_options(sweep_options)
        url = cfg.get("store")
        if not isinstance(url, str) or "://" not in url:
            from explorer.checks import OptionError

            raise OptionError("store", url, "a database URL that every worker reaches, such as "
                              "postgresql+psycopg://user@host/db (or sqlite:///path/store.db on one machine)")
        overrides = measure_overrides(cfg)
    except ValueError as err:
        error(str(err))
        return 2
    space = settings = None
    if cfg.get("space") is not None or cfg.get("space_file"):
        loaded = space_and_settings(cfg)
        if loaded is None:
            return 2
        space, settings, _ = loaded
        overrides = {}
    try:
        if space is None:  # joining: the database must be one already (no empty file made by a typo)
            Store(url, create=False).close()
        store = Store(url)
        if space is None:
            name = resolve_sweep(store, options.sweep)
            print(f"worker joins sweep {name!r} in {store.url}", flush=True)
        else:
            print(f"worker publishes sweep {space.name!r} to {store.url}", flush=True)
        if options.launcher == "ray":
            reports = launch_workers(store, space, settings, options, sweep_options, measure_overrides=overrides)
        else:
            reports = [run_worker(store, space, settings, options, sweep_options, measure_overrides=overrides)]
    except SpaceError as err:
        error(f"invalid search space: {err}")
        return 2
    except (ValueError, FileNotFoundError, DeviceBusy) as err:  # StoreError, OptionError: found before any measurement
        error(str(err))
        return 2
    for r in reports:
        print(r.format(), flush=True)
    return 0


main = hydra_command("worker", run_from_config, _STATE, schema=lambda: WorkerAppConfig)
