"""``python -m explorer search +space=NAME search.trials=N [overrides]``: Hydra wrapper of run_search.

The search itself lives in :mod:`explorer.engine.search` (a notebook calls ``run_search`` directly); this
module turns a composed config into that call, prints the report and maps problems to exit codes:
2 for a bad space, setting or search option (one line, no traceback), 130 when interrupted.
"""
from __future__ import annotations

import shlex
from typing import Any

from omegaconf import DictConfig

from explorer.commands.common import error, results_location, space_and_settings
from explorer.conf.schema import options_of, hydra_command

_STATE: dict[str, Any] = {"exit": 0, "argv": []}


def run_from_config(cfg: DictConfig) -> int:
    """One search for a composed config; returns the exit code."""
    from explorer.data.space import SpaceError
    from explorer.data.store import Store, sqlite_file
    from explorer.engine.options import SearchOptions, SweepOptions
    from explorer.engine.search import SearchError, count_finished, prepare_search, run_search
    from explorer.engine.search.evaluate import check_search_sweep_options

    try:
        options = options_of(SearchOptions, cfg.search)
        sweep = options_of(SweepOptions, cfg.sweep)
        check_search_sweep_options(sweep)
    except ValueError as err:
        error(str(err))
        return 2
    loaded = space_and_settings(cfg)
    if loaded is None:
        return 2
    space, settings, source = loaded
    try:
        prepare_search(space, settings, None, options)  # every option checked before a file is touched
        _, url = results_location(cfg, space.name, create=not options.dry_run)
    except SpaceError as err:
        error(f"invalid search space: {err}")
        return 2
    except ValueError as err:  # SearchError, OptionError, a bad out= or store=
        error(str(err))
        return 2

    if options.dry_run:
        db = sqlite_file(url)
        exists = db is None or db.is_file()
        store = Store(url) if exists else None
        try:
            setup = prepare_search(space, settings, store, options)
            finished = count_finished(url, setup.study_name) if exists else None
        finally:
            if store is not None:
                store.close()
        print(setup.describe(url, finished))
        print(f"watch it with: optuna-dashboard {url}")
        return 0

    print(f"search {space.name!r} from {source} -> {url}", flush=True)
    try:
        store = Store(url)
    except ValueError as err:  # StoreError: unreachable, foreign or newer database
        error(str(err))
        return 2
    try:
        report = run_search(space, settings, store, options, sweep)
        print(report.format(store), flush=True)
    except (SearchError, SpaceError) as err:
        error(str(err))
        return 2
    finally:
        store.close()
    cmd = "explorer search " + " ".join(shlex.quote(a) for a in _STATE["argv"])
    if report.interrupted:
        print(f"interrupted after {report.trials_before + report.trials_run} of {report.trials_target} trials; "
              f"every finished trial and measurement is stored.\ncontinue with the same command:\n  {cmd}", flush=True)
        return 130
    print(f"continue the study with a larger search.trials; watch it with: optuna-dashboard {url}", flush=True)
    return 0


main = hydra_command("search", run_from_config, _STATE)
