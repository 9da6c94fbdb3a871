"""``explorer accuracy fit|validate|show [key=value ...]``: the accuracy model from the command line.

- ``fit``: fit the model to the literature table and print what it learned (size, noise, recipe
  spread, the slopes of each benchmark group in LLM size, visual tokens, input side, encoder size).
- ``validate [holdout=all|<source_id>|llm|<LLM size in B>] [level=0.8]``: held-out errors, the
  coverage of the stated interval and the two baselines (docs/accuracy.md).
- ``show [encoder=NAME knobs={...} resolution=R llm=NAME] [metric=avg5] [recipe=auto]``: the
  literature table's sources and coverage, or one design point's predicted accuracy.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from omegaconf import DictConfig

if TYPE_CHECKING:
    from explorer.accuracy import HoldoutResult

from explorer.checks import OptionError, check_choice, check_int, check_number, check_text
from explorer.commands.common import error
from explorer.conf.schema import hydra_command, hydra_node, options_of

ACTIONS: tuple[str, ...] = ("fit", "validate", "show")
_STATE: dict[str, Any] = {"exit": 0}


@dataclass(frozen=True)
class AccuracyCommandOptions:
    """``explorer accuracy`` options (the action comes first: ``explorer accuracy validate ...``)."""

    SECTION: ClassVar[str] = "accuracy"

    action: str = "show"
    holdout: str = "all"  # validate: all (every source) | <source_id> | llm (every LLM size) | <size in B> | external
    external: Optional[str] = None  # validate holdout=external: a folder of literature CSVs (or one CSV) never fitted on
    level: float = 0.8  # the interval's central probability
    bootstrap: int = 40  # refits per model (validate fits one model per held-out value)
    metric: str = "avg5"  # show: a benchmark or an average (text_rich, general)
    recipe: str = "auto"  # show: auto | none | a literature source id
    encoder: Optional[str] = None  # show: a registry encoder (with resolution and llm) to predict
    knobs: Any = None  # show: the encoder's knobs, knobs={width_mult:0.75} (default: the family's)
    resolution: Optional[int] = None
    llm: Optional[str] = None

    def __post_init__(self) -> None:
        check_choice("action", self.action, ACTIONS)
        check_text("holdout", self.holdout)
        check_number("level", self.level, low=0.01, high=0.999)
        check_int("bootstrap", self.bootstrap, low=0, high=5000)
        check_text("metric", self.metric)
        check_text("recipe", self.recipe)
        check_int("resolution", self.resolution, low=16, high=8192, optional=True)
        check_text("external", self.external, optional=True, none_means="no external validation set")
        if (self.holdout == "external") != (self.external is not None):
            raise OptionError("external", self.external, "a folder of literature CSVs (or one CSV) together with "
                              "holdout=external, and only then")
        if self.knobs is not None and not isinstance(self.knobs, dict):
            raise OptionError("knobs", self.knobs, "a mapping such as knobs={width_mult:0.75}")
        given = [n for n in ("encoder", "resolution", "llm") if getattr(self, n) is not None]
        if given and len(given) != 3:
            raise OptionError("encoder/resolution/llm", given, "all three to predict a point, or none")


def _fit(opts: AccuracyCommandOptions) -> int:
    from explorer.accuracy import AccuracyFitOptions, default_model

    model = default_model(AccuracyFitOptions(bootstrap=max(opts.bootstrap, 1)))
    print(f"accuracy model fitted to {model.n_rows} published results from {len(model.sources)} sources, "
          f"{len(model.benchmarks)} benchmarks")
    print("residual sd (logit): " + ", ".join(f"{g} {v:.3f}" for g, v in model.sigma.items()))
    print("recipe spread between sources (logit): " + ", ".join(f"{g} {v:.3f}" for g, v in model.tau_source.items()))
    print("a recipe's extra spread on one benchmark (logit): "
          + ", ".join(f"{g} {v:.3f}" for g, v in model.tau_source_benchmark.items()))
    slopes = model.slopes()
    print("\nslopes of logit(score) per log unit, with the bootstrap's 10-90% range:")
    print(slopes.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _validate(opts: AccuracyCommandOptions) -> int:
    from explorer.accuracy import AccuracyFitOptions, leave_one_out, load_literature

    table = load_literature()
    fit = AccuracyFitOptions(bootstrap=opts.bootstrap)
    sources = sorted(table["source_id"].unique())
    if opts.holdout == "external":
        from pathlib import Path

        from explorer.accuracy import validate_external

        where = Path(opts.external)  # type: ignore[arg-type]
        files = sorted(where.glob("*.csv")) if where.is_dir() else [where]
        if not files or not all(f.is_file() for f in files):
            raise OptionError("external", opts.external, "an existing folder of literature CSVs or one CSV file")
        external = load_literature(files)
        clash = sorted(set(external["source_id"]) & set(sources))
        if clash:
            raise OptionError("external", opts.external, f"sources the model is fitted on are not held out: {clash}")
        print(f"external validation: fitted on {len(table)} published results ({len(sources)} sources), predicting "
              f"{len(external)} from {external['source_id'].nunique()} other sources as unknown recipes; "
              f"{opts.level:.0%} intervals; errors in points (0-100)")
        result = validate_external(table, external, AccuracyFitOptions(bootstrap=max(opts.bootstrap, 1)), opts.level)
        _print_result(result)
        return 0
    if opts.holdout == "all":
        by, holdouts = "source_id", None
    elif opts.holdout == "llm":
        by, holdouts = "llm_params_b", None
    elif opts.holdout in sources:
        by, holdouts = "source_id", [opts.holdout]
    else:
        sizes = sorted(table["llm_params_b"].unique())
        try:
            size = float(opts.holdout)
        except ValueError:
            size = None
        if size not in sizes:
            raise OptionError("holdout", opts.holdout, f"all, llm, a source id {sources} or an LLM size in B "
                              f"{[f'{s:g}' for s in sizes]}")
        by, holdouts = "llm_params_b", [size]
    what = "source" if by == "source_id" else "LLM size"
    print(f"leave-one-{what}-out over {len(table)} published results ({len(sources)} sources); "
          f"{opts.level:.0%} intervals; errors in points (0-100)")
    result = leave_one_out(table, by=by, holdouts=holdouts, options=fit, level=opts.level)
    _print_result(result)
    return 0


def _print_result(result: "HoldoutResult") -> None:
    import pandas as pd

    with pd.option_context("display.width", 200):
        print(result.summary().to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        ranks = result.rank_agreement()
        if len(ranks):
            print(f"\nrank agreement within held-out sources ({len(ranks)} source x benchmark sets of >= 3 "
                  f"results): median Spearman {ranks['spearman'].median():.2f}")
    if result.skipped:
        print(f"({result.skipped} held-out results left out: their benchmark had no other source)")


def _show(opts: AccuracyCommandOptions) -> int:
    import pandas as pd

    from explorer.accuracy import default_model, fill_accuracy, load_literature

    if opts.encoder is None:
        table = load_literature()
        per = table.groupby("source_id").agg(rows=("score", "size"), models=("model", "nunique"),
                                             llm_b=("llm_params_b", lambda s: f"{s.min():g}-{s.max():g}"),
                                             tokens=("visual_tokens", lambda s: f"{s.min()}-{s.max()}"),
                                             families=("encoder_family", lambda s: ",".join(sorted(set(s)))))
        print(f"literature table: {len(table)} results, {table['source_id'].nunique()} sources, "
              f"{table['encoder_family'].nunique()} encoder families, {table['benchmark'].nunique()} benchmarks")
        print(per.to_string())
        return 0
    import torch

    from explorer.models import build_encoder

    knobs = dict(opts.knobs or {})
    with torch.device("meta"):
        enc = build_encoder(opts.encoder, **knobs)
    row = pd.DataFrame([{"encoder": opts.encoder, "knobs": json.dumps(knobs, sort_keys=True), "resolution": opts.resolution,
                         "llm": opts.llm, "encoder_params_m": enc.num_params() / 1e6,
                         "visual_tokens": enc.num_tokens(int(opts.resolution)),  # type: ignore[arg-type]
                         "accuracy": float("nan"), "accuracy_source": None}])
    recipe = None if opts.recipe == "none" else opts.recipe
    out = fill_accuracy(row, metric=opts.metric, recipe=recipe, model=default_model(), level=opts.level,
                        explain=True).iloc[0]
    print(f"{opts.encoder} {json.dumps(knobs)} @{opts.resolution} + {opts.llm}: {opts.metric} predicted "
          f"{out['accuracy']:.1f} [{out['accuracy_low']:.1f}, {out['accuracy_high']:.1f}] ({opts.level:.0%} interval), "
          f"{out['accuracy_source']}")
    if out["accuracy_extrapolated"]:
        print(f"extrapolated: {out['accuracy_why']}")
    return 0


def run_from_config(cfg: DictConfig) -> int:
    try:
        opts = options_of(AccuracyCommandOptions, cfg)
        return {"fit": _fit, "validate": _validate, "show": _show}[opts.action](opts)
    except (ValueError, OSError) as err:
        error(str(err))
        return 2


_app = hydra_command("accuracy", run_from_config, _STATE, schema=lambda: hydra_node(AccuracyCommandOptions),
                     spaces=False)


def main(argv: list[str]) -> int:
    """``explorer accuracy ACTION [key=value ...]`` (ACTION: fit, validate, show; default show)."""
    argv = list(argv)
    if argv and argv[0] in ACTIONS:
        argv = [f"action={argv[0]}", *argv[1:]]
    return _app(argv)
