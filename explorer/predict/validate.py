"""Honest validation: calibrate on part of a measured space, predict the rest, score the errors.

:func:`split_validate` picks ``fraction`` of the design points (stratified by encoder family and
LLM, seeded), fits the profile to the measurements those points use, and predicts every factor
and every TTFT of the other points. Errors are ``predicted / measured - 1``.
"""
from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import pandas as pd

from explorer.predict.calibrate import FitOptions, with_fit, fit_profile
from explorer.predict.model import predict_trace
from explorer.predict.observations import Observation
from explorer.predict.profile import DeviceProfile

__all__ = ["ValidationResult", "spearman", "pair_order", "error_summary", "split_validate", "prior_errors"]


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (ties get average ranks); NaN for fewer than 2 values."""
    if len(a) != len(b):
        raise ValueError("spearman: sequences of different lengths")
    if len(a) < 2:
        return math.nan
    ra, rb = _ranks(list(a)), _ranks(list(b))
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return num / den if den > 0 else math.nan


def pair_order(rows: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """How many pairs of ``rows`` the prediction orders as measured, split by whether the measurement
    itself separates them: ``{"separated": (right, pairs), "overlapping": (right, pairs)}``.

    ``rows`` has ``measured_ms``, ``predicted_ms``, ``p10_ms`` and ``p90_ms``; a pair is
    *separated* when the two measured p10-p90 ranges do not overlap. Overlapping pairs are ties as
    far as the measurement can tell (their measured order may flip between two runs of the same
    sweep), so a rank correlation over them scores measurement noise as much as the model.
    """
    counts = {"separated": [0, 0], "overlapping": [0, 0]}
    items = list(rows[["measured_ms", "predicted_ms", "p10_ms", "p90_ms"]].itertuples(index=False, name=None))
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            (ma, pa, la, ha), (mb, pb, lb, hb) = items[i], items[j]
            kind = "separated" if ha < lb or hb < la else "overlapping"
            counts[kind][1] += 1
            counts[kind][0] += (ma < mb) == (pa < pb)
    return {k: (v[0], v[1]) for k, v in counts.items()}


def error_summary(errors: Sequence[float]) -> dict[str, float]:
    """n, median |error|, share within +-25%, worst |error| (errors as fractions)."""
    if not errors:
        return {"n": 0, "median_abs": math.nan, "within_25": math.nan, "max_abs": math.nan}
    abs_err = [abs(e) for e in errors]
    return {"n": len(errors), "median_abs": statistics.median(abs_err),
            "within_25": sum(e <= 0.25 for e in abs_err) / len(abs_err), "max_abs": max(abs_err)}


@dataclass(frozen=True)
class ValidationResult:
    calibration_points: tuple[str, ...]
    calibration_measurements: int
    factors: pd.DataFrame          # held-out factor measurements: kind, label, measured_ms, p10_ms, p90_ms, predicted_ms, error
    points: pd.DataFrame           # held-out points: point_key, encoder, knobs, resolution, llm, ttft measured/predicted
    profile: DeviceProfile

    def summary(self) -> dict[str, Any]:
        enc = self.factors[self.factors.kind == "encoder"]
        rho = {}
        pairs = {"separated": (0, 0), "overlapping": (0, 0)}
        for res, grp in enc.groupby("resolution"):
            if len(grp) >= 3:
                rho[int(res)] = spearman(list(grp.measured_ms), list(grp.predicted_ms))
            for kind, (right, total) in pair_order(grp).items():
                pairs[kind] = (pairs[kind][0] + right, pairs[kind][1] + total)
        return {"ttft": error_summary(list(self.points.error)), "factors": error_summary(list(self.factors.error)),
                "encoder": error_summary(list(enc.error)),
                "prefill": error_summary(list(self.factors[self.factors.kind == "prefill"].error)),
                "projector": error_summary(list(self.factors[self.factors.kind == "projector"].error)),
                "spearman_by_resolution": rho, "encoder_pairs_at_equal_resolution": pairs,
                "calibration_points": len(self.calibration_points),
                "calibration_measurements": self.calibration_measurements, "held_out_points": len(self.points)}


def _choose_points(points: pd.DataFrame, fraction: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    n_cal = max(1, int(math.floor(fraction * len(points) + 1e-9)))
    strata: dict[tuple[str, str], list[str]] = {}
    for _, row in points.sort_values("point_key").iterrows():
        strata.setdefault((row.encoder, row.llm), []).append(row.point_key)
    for keys in strata.values():
        rng.shuffle(keys)
    chosen: list[str] = []
    pools = sorted(strata.values(), key=lambda ks: (-len(ks), ks[0]))
    while len(chosen) < n_cal and any(pools):  # round robin over strata: every family and LLM is seen
        for keys in pools:
            if keys and len(chosen) < n_cal:
                chosen.append(keys.pop())
    return chosen


def split_validate(observations: Sequence[Observation], points: pd.DataFrame, point_factors: Mapping[str, Sequence[str]],
                   base: DeviceProfile, dtype: str, *, fraction: float = 1 / 3, seed: int = 0,
                   options: FitOptions = FitOptions()) -> ValidationResult:
    """Calibrate on ``fraction`` of ``points`` (their factors), predict the rest.

    ``points``: the measured results table (status ok, ttft_ms set); ``point_factors``: point key
    -> the measurement keys of its encoder, projector and prefill. A held-out point's measured
    TTFT is the sum of its three observations (so preprocessing, which the model does not
    predict, is never in it).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"invalid fraction={fraction!r}: in (0, 1)")
    ok = points[points.ttft_ms.notna()]
    chosen = _choose_points(ok, fraction, seed)
    cal_keys = {k for p in chosen for k in point_factors[p]}
    by_key = {o.key: o for o in observations}
    cal = [by_key[k] for k in sorted(cal_keys) if k in by_key]
    compute, memory, overhead = fit_profile(cal, base, dtype, options)
    prof = with_fit(base, compute, memory, overhead, f"validation fit on {len(cal)} measurements")
    predicted = {o.key: predict_trace(o.trace, prof, dtype).seconds * 1e3 for o in observations}
    rows = []
    for o in observations:
        if o.key in cal_keys:
            continue
        measured = o.seconds * 1e3
        rows.append({"kind": o.kind, "label": o.label, "family": o.family, "resolution": _resolution(o),
                     "measured_ms": measured, "p10_ms": o.p10_s * 1e3, "p90_ms": o.p90_s * 1e3,
                     "predicted_ms": predicted[o.key], "error": predicted[o.key] / measured - 1})
    factors = pd.DataFrame(rows, columns=["kind", "label", "family", "resolution", "measured_ms", "p10_ms", "p90_ms",
                                          "predicted_ms", "error"])
    prow = []
    for _, r in ok.iterrows():
        keys = point_factors[r.point_key]
        if r.point_key in chosen or not all(k in by_key for k in keys):
            continue
        # measured TTFT = the sum of the same observations the model is scored on (encoder +
        # projector + prefill: the model does not predict image preprocessing, so the table's
        # ttft_ms, which may include it, is not used; a speed rescaling applies to both alike)
        measured = sum(by_key[k].seconds for k in keys) * 1e3
        pred = sum(predicted[k] for k in keys)
        prow.append({"point_key": r.point_key, "encoder": r.encoder, "knobs": r.knobs, "resolution": r.resolution,
                     "llm": r.llm, "measured_ms": measured, "predicted_ms": pred, "error": pred / measured - 1})
    return ValidationResult(tuple(chosen), len(cal), factors, pd.DataFrame(prow), prof)


def _resolution(o: Observation) -> Optional[int]:
    if o.kind != "encoder":
        return None
    return int(o.label.rsplit("@", 1)[1])


def prior_errors(observations: Sequence[Observation], profile: DeviceProfile, dtype: str) -> list[float]:
    """predicted / measured - 1 of every observation with ``profile`` as it is (no fit)."""
    return [predict_trace(o.trace, profile, dtype).seconds / o.seconds - 1 for o in observations]
