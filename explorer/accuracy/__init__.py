"""Accuracy for every design point: the literature table, the fitted model and its validation.

Public API (the rest is private to the package)::

    from explorer.accuracy import load_literature, fit_accuracy, default_model, fill_accuracy, leave_one_out

``fill_accuracy(df, metric)`` completes a results table: rows without a trained, user or published
accuracy get a prediction (``accuracy_source = predicted:<MODEL_NAME>/<recipe>``) with its interval
in ``accuracy_low`` / ``accuracy_high`` and ``accuracy_extrapolated``; a measured or published
value always wins. See docs/accuracy.md.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from explorer.accuracy.literature import (AVERAGES, BENCHMARK_GROUPS, LITERATURE_DIR, REGISTRY_FAMILY,
                                          load_literature, llm_family, nominal_params_b)
from explorer.accuracy.model import AccuracyFitOptions, AccuracyModel, design_rows, fit_accuracy
from explorer.accuracy.validate import HOLDOUT_BY, HoldoutResult, leave_one_out, validate_external

__all__ = ["AVERAGES", "BENCHMARK_GROUPS", "LITERATURE_DIR", "REGISTRY_FAMILY", "MODEL_NAME", "AccuracyFitOptions",
           "AccuracyModel", "HoldoutResult", "HOLDOUT_BY", "load_literature", "fit_accuracy", "default_model",
           "design_rows", "fill_accuracy", "leave_one_out", "validate_external", "llm_family", "nominal_params_b", "INTERVAL_LEVEL"]

#: The name predictions carry in ``accuracy_source`` (bump when the form changes).
MODEL_NAME = "loglinear-v1"
#: The level of every accuracy interval the explorer prints.
INTERVAL_LEVEL = 0.8


@functools.lru_cache(maxsize=4)
def _cached(stamp: tuple[tuple[str, float], ...], options: AccuracyFitOptions) -> AccuracyModel:
    return fit_accuracy(load_literature([Path(p) for p, _ in stamp]), options)


def default_model(options: AccuracyFitOptions = AccuracyFitOptions()) -> AccuracyModel:
    """The model fitted to the shipped literature table (refitted when a file changes)."""
    files = sorted(LITERATURE_DIR.glob("*.csv"))
    return _cached(tuple((str(p), p.stat().st_mtime) for p in files), options)


def fill_accuracy(df: pd.DataFrame, metric: str = "avg5", recipe: Optional[str] = "auto",
                  model: Optional[AccuracyModel] = None, level: float = INTERVAL_LEVEL,
                  explain: bool = False) -> pd.DataFrame:
    """Every row gets ``accuracy``, ``accuracy_low``, ``accuracy_high``, ``accuracy_source`` and
    ``accuracy_extrapolated``. Rows that already have an accuracy keep it (their interval is the
    value itself, or +-0.5 for numbers read off a plot); the rest are predicted for ``metric``
    with ``recipe`` (``auto``: one recipe for the whole frame, see :meth:`AccuracyModel.choose_recipe`;
    ``None``: an unknown recipe, wider intervals; or a literature source id). ``explain`` adds
    ``accuracy_why``: why a prediction is extrapolated.
    """
    out = df.copy()
    for column, fill in (("accuracy", np.nan), ("accuracy_source", None), ("accuracy_low", np.nan),
                         ("accuracy_high", np.nan)):
        if column not in out.columns:
            out[column] = fill
    out["accuracy"] = pd.to_numeric(out["accuracy"], errors="coerce").astype(float)
    out["accuracy_source"] = out["accuracy_source"].astype(object)
    have = out["accuracy"].notna()
    approximate = (out["accuracy_approximate"].fillna(False).astype(bool) if "accuracy_approximate" in out.columns
                   else pd.Series(False, index=out.index))
    half = np.where(approximate, 0.5, 0.0)
    out["accuracy_low"] = np.where(have & out["accuracy_low"].isna(), out["accuracy"] - half, out["accuracy_low"])
    out["accuracy_high"] = np.where(have & out["accuracy_high"].isna(), out["accuracy"] + half, out["accuracy_high"])
    out["accuracy_extrapolated"] = False
    todo = out.index[~have & out["encoder"].notna()]
    if len(todo) == 0:
        return out
    model = default_model() if model is None else model
    rows = design_rows(out.loc[todo])
    usable = rows[["resolution", "visual_tokens", "llm_params_b"]].notna().all(axis=1) & (rows["visual_tokens"] > 0)
    rows = rows[usable]
    if rows.empty:
        return out
    if recipe == "auto":
        recipe = model.choose_recipe(sorted(rows["encoder_family"].unique()), metric)
    pred = model.predict(rows, metric, recipe=recipe, level=level)
    pred = _bracket_pruned(out, rows, pred, model, metric, recipe, level)
    label = f"predicted:{MODEL_NAME}/{recipe or 'any-recipe'}"
    out.loc[pred.index, "accuracy"] = pred["accuracy"]
    out.loc[pred.index, "accuracy_low"] = pred["accuracy_low"]
    out.loc[pred.index, "accuracy_high"] = pred["accuracy_high"]
    out.loc[pred.index, "accuracy_source"] = label
    out.loc[pred.index, "accuracy_extrapolated"] = pred["extrapolated"]
    if explain:
        out["accuracy_why"] = pd.Series([None] * len(out), index=out.index, dtype=object)
        out.loc[pred.index, "accuracy_why"] = pred["why"]
    return out


def _bracket_pruned(out: pd.DataFrame, rows: pd.DataFrame, pred: pd.DataFrame, model: AccuracyModel, metric: str,
                    recipe: Optional[str], level: float) -> pd.DataFrame:
    """Rows whose visual tokens are pruned inside the LLM (``pruning``: ``{after_layer, ratio}``).

    No published result in the literature table prunes inside the LLM, so the model cannot say
    what FastV-style pruning costs. What it can say: the point is at most as accurate as its
    unpruned twin (the same encoder and tokens; pruning only removes information), and the
    literature's equal-token comparisons put token reduction at the LLM's input near the same
    encoder with the kept count ``Pruning.kept(V) = V - floor(r V)``. The prediction is the midpoint of those two
    predictions, its interval spans both of theirs, and it is always flagged ``extrapolated``
    with the reason. A bracket, not a fit: heavy pruning early in the LLM can fall below it.
    """
    if "pruning" not in out.columns:
        return pred
    pruned = [i for i in pred.index if isinstance(out.at[i, "pruning"], str) and out.at[i, "pruning"]]
    if not pruned:
        return pred
    import json

    from explorer.data.space import as_pruning

    pruning = {i: as_pruning(json.loads(out.at[i, "pruning"])) for i in pruned}
    kept_rows = rows.loc[pruned].copy()
    for i, pr in pruning.items():
        kept_rows.at[i, "visual_tokens"] = pr.kept(int(kept_rows.at[i, "visual_tokens"]))
    kept = model.predict(kept_rows, metric, recipe=recipe, level=level)
    pred = pred.copy()
    twin = pred.loc[pruned]
    pred.loc[pruned, "accuracy"] = (twin["accuracy"] + kept["accuracy"]) / 2
    pred.loc[pruned, "accuracy_low"] = np.minimum(twin["accuracy_low"], kept["accuracy_low"])
    pred.loc[pruned, "accuracy_high"] = np.maximum(twin["accuracy_high"], kept["accuracy_high"])
    pred.loc[pruned, "extrapolated"] = True
    for i, pr in pruning.items():
        note = (f"in-LLM pruning (after layer {pr.after_layer}, ratio {pr.ratio:g}) has no published "
                f"results in the table: bracketed by the unpruned point ({twin.at[i, 'accuracy']:.1f}) and the "
                f"same encoder with {int(kept_rows.at[i, 'visual_tokens'])} tokens ({kept.at[i, 'accuracy']:.1f})")
        earlier = pred.at[i, "why"]
        pred.at[i, "why"] = note if earlier is None else f"{earlier}; {note}"
    return pred
