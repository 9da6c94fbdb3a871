"""``python -m explorer train +space=NAME train.points=pareto|all|<keys>``: Hydra wrapper.

The work lives in :mod:`explorer.train.points` (select, plan, train, store); this module turns
the composed config into those calls and maps problems to exit codes (2: bad input, no traceback).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from explorer.commands.common import error as _err, results_location, space_source as _space_source
from explorer.conf.schema import options_of, hydra_command

_STATE: dict[str, Any] = {"exit": 0}


def _train_app() -> type:
    from explorer.conf.schema import space_app_config
    from explorer.engine.options import TrainOptions

    return space_app_config("TrainAppConfig", "The whole config of ``explorer train`` (``out``/``store``: the "
                            "sweep's results).", {"train": TrainOptions})


def run_from_config(cfg: DictConfig) -> int:
    from explorer.data import results
    from explorer.data.space import SpaceError, load_space
    from explorer.data.store import Store, sqlite_file
    from explorer.engine.options import TrainOptions
    from explorer.train.points import base_config, plan_targets, select_points, train_targets

    choice, source = _space_source(cfg)
    node = cfg.get("space")
    if node is None:
        _err("no search space chosen: add +space=NAME (the sweep whose points to train) or space_file=PATH")
        return 2
    try:
        opts = options_of(TrainOptions, cfg.train)
        space = load_space(node, name=None if node.get("name") else choice, source_name=source)
        base = base_config({k: v for k, v in dict(opts.config).items() if v is not None})
        base.check_runnable()
        out, url = results_location(cfg, space.name, create=False)
        db = sqlite_file(url)
        if db is not None and not db.is_file():
            _err(f"no results database at {url}: run `explorer sweep +space={space.name}` first")
            return 2
        store = Store(url, create=False)
        df = results.load(store, space=space.name, accuracy_metric=None)
        rows = select_points(df, opts.points)
    except (SpaceError, ValueError) as err:
        _err(str(err))
        return 2
    rows = rows.sort_values("ttft_ms", na_position="last")
    targets = plan_targets(rows, per_llm=bool(opts.per_llm))
    if opts.max_points is not None:
        targets = targets[: opts.max_points]
    print(f"{len(rows)} design point(s) selected ({opts.points}) -> {len(targets)} training run(s):")
    for t in targets:
        print(f"  {t.label}  (serves {len(t.point_keys)} point(s))")
    if opts.dry_run:
        return 0
    root = Path(opts.output_root) if opts.output_root else out / "train"
    try:
        train_targets(targets, base, store, root)
    except ValueError as err:
        _err(str(err))
        return 2
    print(f"accuracy stored in {url}; `explorer plot source={out}` shows it on the frontier")
    return 0


main = hydra_command("train", run_from_config, _STATE, schema=_train_app)
