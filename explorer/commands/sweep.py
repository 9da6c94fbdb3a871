"""``python -m explorer sweep +space=NAME [overrides]``: the Hydra wrapper around run_sweep.

Everything a notebook needs lives in :mod:`explorer.engine.sweep`; this module only turns a composed
Hydra config into ``run_sweep(space, settings, store, SweepOptions)``, prints the result and maps
problems to exit codes (2 for a bad space, setting or option, printed without a traceback; 130
when interrupted).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from explorer.commands.common import error, results_location, space_and_settings, writable_folder
from explorer.conf.schema import options_of, hydra_command

_STATE: dict[str, Any] = {"exit": 0, "argv": []}


def run_from_config(cfg: DictConfig) -> int:
    """One sweep for a composed config; returns the exit code."""
    from explorer.data.space import SpaceError
    from explorer.data.store import Store, sqlite_file
    from explorer.engine.options import SweepOptions
    from explorer.engine.sweep import plan_sweep, run_sweep

    try:
        options = options_of(SweepOptions, cfg.sweep)
    except ValueError as err:
        error(str(err))
        return 2
    loaded = space_and_settings(cfg)
    if loaded is None:
        return 2
    space, settings, source = loaded

    try:
        out, url = results_location(cfg, space.name, create=False)
        accuracy_csv = _accuracy_table(cfg.get("accuracy"))
        if options.dry_run:
            db = sqlite_file(url)
            store = Store(url, create=False) if db is None or db.is_file() else None
            _dry_run(space, settings, store, options)
            print(f"results would go to: {url}")
            return 0
        plan_sweep(space, settings, None, options)  # what only planning finds, before a file is made
        if cfg.get("store") is None:  # the database goes into out=
            writable_folder("out", out)
        store = Store(url)
        writable_folder("out", out)  # pareto.html goes there
    except SpaceError as err:
        error(f"invalid search space: {err}")
        return 2
    except ValueError as err:  # StoreError, OptionError, a bad accuracy CSV
        error(str(err))
        return 2

    print(f"sweep {space.name!r} from {source} -> {url}", flush=True)
    report = run_sweep(space, settings, store, options)
    if report.store_error is not None:
        error(f"{report.store_error}\n{report.remaining} measurements still missing; every committed one is kept.")
        return 1
    print(report.format(store), flush=True)
    if cfg.get("report", True):
        _write_pareto_page(store, out / "pareto.html", space.name, cfg.get("accuracy"), accuracy_csv)
    if report.interrupted or report.remaining:
        how = "interrupted" if report.interrupted else "stopped early"
        cmd = "explorer sweep " + " ".join(shlex.quote(a) for a in _STATE["argv"])
        print(f"{how}: {report.remaining} measurements still missing; every finished one is stored.\n"
              f"resume with the same command:\n  {cmd}", flush=True)
        return 130 if report.interrupted else 0
    return 0


def _dry_run(space: Any, settings: Any, store: Any, options: Any) -> None:
    """Print the plan with the environment a sweep started now would measure in (the same look at
    the machine chooses the threads), and what the store holds of it in other environments."""
    from explorer.engine.backend import MeasureBackend
    from explorer.engine.sweep import plan_sweep
    from explorer.engine.sweep.machine import machine_policy

    policy = machine_policy(settings, options, MeasureBackend())
    plan = plan_sweep(space, policy.settings, store, options)
    print(plan.describe())
    if policy.settings is not settings:
        print(f"threads: {policy.settings.threads}, the cores free now (a sweep looks again when it starts; "
              "measure.threads=N fixes them)")
    if store is None:
        return
    wanted = {(j.kind, j.key) for j in plan.jobs}
    for env_key, env in store.environments().items():
        if env_key == plan.env_key:
            continue
        have = sum(1 for kk, status in store.measurement_status(env_key).items() if kk in wanted and status == "ok")
        if have:
            print(f"also stored: {have} of these measurements in environment {env_key} ({env.get('device')}, "
                  f"{env.get('threads')} thread(s), {env.get('dtype')}); measure.threads={env.get('threads')} "
                  "continues that one")


def _accuracy_table(accuracy: Any) -> Optional[str]:
    """Check ``accuracy.metric`` and the user's ``accuracy.csv`` before any work; returns the CSV path."""
    from explorer.data.reference import load_references, read_accuracy_csv

    if accuracy is None:
        return None
    metric, csv = accuracy.get("metric"), accuracy.get("csv")
    known = set(load_references()["metric"])
    if csv is not None:
        known |= set(read_accuracy_csv(csv, origin="user", metric=metric)["metric"])
    if metric is not None and metric not in known:
        from explorer.checks import OptionError

        raise OptionError("accuracy.metric", metric, f"one of {', '.join(sorted(known))} (the published tables"
                          f"{' and accuracy.csv' if csv else ''}), or null for none")
    return csv


def _write_pareto_page(store: Any, path: Path, space_name: str, accuracy: Any, csv: Optional[str]) -> None:
    """The sweep's closing page; a failure here never costs the measurements, only the page."""
    from explorer.analysis.report import write_report
    from explorer.data import results
    from explorer.data.reference import load_references

    metric = accuracy.get("metric") if accuracy is not None else "avg5"
    try:
        df = results.load(store, space=space_name, accuracy_metric=metric, accuracy_csv=csv)
        if not (df["status"] == "ok").any():
            print("no complete design point yet: pareto.html not written", flush=True)
            return
        page = write_report(df, path, title=f"explorer sweep: {space_name}", reference=load_references())
    except Exception as err:  # noqa: BLE001 - report the reason, keep the exit status of the sweep
        print(f"pareto.html not written: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return
    print(f"interactive Pareto report: {page}", flush=True)


main = hydra_command("sweep", run_from_config, _STATE)
