"""Held-out validation of the accuracy model, beside two simple baselines.

``leave_one_out(table, by="source_id")``: each source (or each LLM size, ``by="llm_params_b"``) in
turn is left out, the model is fitted on the rest and predicts the left-out rows (a left-out source
as an unknown recipe; a left-out LLM size with its source's recipe known, since the question there
is the size). Reported per benchmark group: median absolute error in points, the coverage of the
stated interval, the same errors for the nearest published point and the per-benchmark mean of the
training rows, and the rank agreement (Spearman) within each held-out source and benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from explorer.accuracy.literature import AVERAGES
from explorer.accuracy.model import FEATURES, AccuracyFitOptions, fit_accuracy
from explorer.checks import OptionError, check_choice, check_number

HOLDOUT_BY: tuple[str, ...] = ("source_id", "llm_params_b")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = pd.Series(a).rank().to_numpy()
    rb = pd.Series(b).rank().to_numpy()
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def nearest_published(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """Baseline: the score of the closest training result on the same benchmark (distance in log LLM
    size, log visual tokens and log resolution, plus one unit for another encoder family)."""
    out = np.full(len(test), np.nan)
    for i, r in enumerate(test.itertuples()):
        same = train[train["benchmark"] == r.benchmark]
        if same.empty:
            continue
        d = (np.abs(np.log(same["llm_params_b"].to_numpy() / r.llm_params_b))
             + np.abs(np.log(same["visual_tokens"].to_numpy() / r.visual_tokens))
             + np.abs(np.log(same["resolution"].to_numpy() / r.resolution))
             + (same["encoder_family"].to_numpy() != r.encoder_family))
        out[i] = same["score_pct"].to_numpy()[int(np.argmin(d))]
    return out


def benchmark_mean(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """Baseline: the mean of the training results on the same benchmark."""
    means = train.groupby("benchmark")["score_pct"].mean()
    return test["benchmark"].map(means).astype(float).to_numpy()


@dataclass(frozen=True)
class HoldoutResult:
    """Every held-out row with its prediction, interval and the baselines' predictions."""

    by: str
    level: float
    rows: pd.DataFrame  # held-out rows: benchmark, group, holdout, score_pct, predicted, low, high, nearest, mean
    skipped: int  # held-out rows whose benchmark had no training data

    def summary(self) -> pd.DataFrame:
        """Per benchmark group (and all): n, median |error| of model and baselines, coverage."""
        out = []
        for name, part in [*self.rows.groupby("group"), ("all", self.rows)]:
            out.append(_scores(part, name, self.level))
        text = self.text_rich_average()
        if len(text):
            out.append({"group": "text_rich average", "n": len(text),
                        "model_mae": float(np.median(np.abs(text["predicted"] - text["score_pct"]))),
                        "nearest_mae": float(np.median(np.abs(text["nearest"] - text["score_pct"]))),
                        "mean_mae": float(np.median(np.abs(text["mean"] - text["score_pct"]))),
                        "coverage": float(np.mean((text["low"] <= text["score_pct"])
                                                  & (text["score_pct"] <= text["high"]))),
                        "median_width": float(np.median(text["high"] - text["low"]))})
        return pd.DataFrame(out)

    def text_rich_average(self) -> pd.DataFrame:
        """Held-out models with all four text-rich benchmarks: the average, actual and predicted."""
        need = set(AVERAGES["text_rich"])
        keys = ["holdout", "source_id", "model", "llm", "resolution", "visual_tokens", "train_data"]
        rows = []
        for key, part in self.rows[self.rows["benchmark"].isin(need)].groupby(keys, dropna=False):
            if set(part["benchmark"]) != need or len(part) != len(need):
                continue
            rec = dict(zip(keys, key))
            for col in ("score_pct", "predicted", "nearest", "mean"):
                rec[col] = float(part[col].mean())
            # the average's interval from its own draws is not kept per row: the mean of the bounds
            # is wider than the average's interval, so this coverage is conservative
            rec["low"] = float(part["low"].mean())
            rec["high"] = float(part["high"].mean())
            rows.append(rec)
        return pd.DataFrame(rows)

    def rank_agreement(self, min_rows: int = 3) -> pd.DataFrame:
        """Spearman between predicted and published scores within each held-out source and benchmark."""
        out = []
        for (src, bench), part in self.rows.groupby(["source_id", "benchmark"]):
            if len(part) < min_rows or part["score_pct"].nunique() < 2:
                continue
            out.append({"source_id": src, "benchmark": bench, "n": len(part),
                        "spearman": _spearman(part["predicted"].to_numpy(), part["score_pct"].to_numpy())})
        return pd.DataFrame(out, columns=["source_id", "benchmark", "n", "spearman"])


def _scores(part: pd.DataFrame, name: str, level: float) -> dict:
    err = np.abs(part["predicted"] - part["score_pct"])
    inside = (part["low"] <= part["score_pct"]) & (part["score_pct"] <= part["high"])
    return {"group": name, "n": len(part), "model_mae": float(np.median(err)),
            "nearest_mae": float(np.nanmedian(np.abs(part["nearest"] - part["score_pct"]))),
            "mean_mae": float(np.nanmedian(np.abs(part["mean"] - part["score_pct"]))),
            "coverage": float(inside.mean()), "median_width": float(np.median(part["high"] - part["low"]))}


def _predict_held_out(model, train: pd.DataFrame, test: pd.DataFrame, recipes: Sequence[Optional[str]],
                      holdout: object, level: float) -> pd.DataFrame:
    """Predictions for ``test`` (every benchmark known to ``model``) with the baselines beside them."""
    keys = pd.DataFrame({"bench": test["benchmark"], "recipe": [r or "" for r in recipes]}, index=test.index)
    parts = []
    for (bench, recipe), part in keys.groupby(["bench", "recipe"]):
        parts.append(model.predict(test.loc[part.index, list(FEATURES)], bench, recipe=recipe or None, level=level))
    pred = pd.concat(parts).loc[test.index]
    return test.assign(holdout=holdout, predicted=pred["accuracy"], low=pred["accuracy_low"],
                       high=pred["accuracy_high"], extrapolated=pred["extrapolated"],
                       nearest=nearest_published(train, test), mean=benchmark_mean(train, test))


def validate_external(table: pd.DataFrame, external: pd.DataFrame,
                      options: AccuracyFitOptions = AccuracyFitOptions(), level: float = 0.8) -> HoldoutResult:
    """Fit on ``table``, predict ``external`` (published results the model never saw, e.g. a folder
    of literature CSVs kept out of the repository) as unknown recipes."""
    check_number("level", level, low=0.01, high=0.999)
    model = fit_accuracy(table, options)
    known = external["benchmark"].isin(model.benchmarks)
    test = external[known]
    rows = _predict_held_out(model, table, test, [None] * len(test), "external", level) if len(test) else pd.DataFrame()
    return HoldoutResult(by="external", level=level, rows=rows.reset_index(drop=True), skipped=int((~known).sum()))


def leave_one_out(table: pd.DataFrame, by: str = "source_id", holdouts: Optional[Sequence[object]] = None,
                  options: AccuracyFitOptions = AccuracyFitOptions(bootstrap=40), level: float = 0.8
                  ) -> HoldoutResult:
    """Leave each value of ``by`` out in turn (or only ``holdouts``), fit on the rest, predict it."""
    check_choice("by", by, HOLDOUT_BY)
    check_number("level", level, low=0.01, high=0.999)
    values = sorted(table[by].unique()) if holdouts is None else list(holdouts)
    unknown = [v for v in values if v not in set(table[by])]
    if unknown:
        raise OptionError("holdout", unknown[0], f"a value of {by} in the table: {sorted(table[by].unique())}")
    frames = []
    skipped = 0
    for value in values:
        test = table[table[by] == value]
        train = table[table[by] != value]
        model = fit_accuracy(train, options)
        known = test["benchmark"].isin(model.benchmarks)
        skipped += int((~known).sum())
        test = test[known]
        if test.empty:
            continue
        # a left-out source is an unknown recipe; a left-out LLM size keeps its source's recipe
        recipes = [None if by == "source_id" or s not in model.sources else s for s in test["source_id"]]
        frames.append(_predict_held_out(model, train, test, recipes, value, level))
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return HoldoutResult(by=by, level=level, rows=rows, skipped=skipped)
