"""Re-measurement intervals of stored values (:mod:`explorer.intervals`) in the results table.

The drift allowance is calibrated per environment from the store's ``measurement_history``
(every re-measured value beside the value that replaced it), else the default. Each timed factor
gets ``<factor>_low_ms`` / ``<factor>_high_ms`` and TTFT ``ttft_low_ms`` / ``ttft_high_ms`` (the sum
of the parts' bounds), at ``latency_level``; ``latency_drift`` says which drift was used. The
summary's ties (:func:`ties`) read those columns.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Mapping, Optional

from explorer.data.confidence import TIMING_FIELDS
from explorer.data.store import MeasurementRecord, Store
from explorer.intervals import (DEFAULT_DRIFT, LEVEL, Drift, Interval, calibrate, compare, remeasure_interval,
                                sum_intervals)

__all__ = ["INTERVAL_COLUMNS", "PART_COLUMNS", "history_pairs", "history_drift", "row_intervals", "ties"]

#: Per factor: (median column, low column, high column) of the results table.
PART_COLUMNS: dict[str, tuple[str, str, str]] = {
    "encoder": ("encoder_latency_ms", "encoder_latency_low_ms", "encoder_latency_high_ms"),
    "preprocess": ("preprocess_ms", "preprocess_low_ms", "preprocess_high_ms"),
    "projector": ("projector_latency_ms", "projector_latency_low_ms", "projector_latency_high_ms"),
    "prefill": ("prefill_latency_ms", "prefill_latency_low_ms", "prefill_latency_high_ms"),
}
#: The columns this module adds to the results table, in order.
INTERVAL_COLUMNS: tuple[str, ...] = (
    *(c for _, lo, hi in PART_COLUMNS.values() for c in (lo, hi)), "ttft_low_ms", "ttft_high_ms", "latency_level",
    "latency_drift",
)


def _timings(payload: Optional[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {f: payload[f] for f in TIMING_FIELDS if isinstance((payload or {}).get(f), Mapping)}


def history_pairs(store: Store) -> dict[str, list[tuple[Mapping[str, Any], Mapping[str, Any]]]]:
    """Per environment key, ``(earlier, later)`` stored timings of the same measurement: each value
    in ``measurement_history`` with the one that replaced it (the next in its slot, or the current)."""
    slots: dict[tuple[str, str, str], list[MeasurementRecord]] = defaultdict(list)
    for rec in store.history():
        slots[(rec.kind, rec.key, rec.env_key)].append(rec)
    out: dict[str, list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = defaultdict(list)
    for (kind, key, env), earlier in slots.items():
        current = store.get_measurement(kind, key, env)
        chain = earlier + ([current] if current is not None else [])
        for a, b in zip(chain, chain[1:]):
            if a.status != "ok" or b.status != "ok":
                continue
            ta, tb = _timings(a.payload), _timings(b.payload)
            out[env].extend((ta[f], tb[f]) for f in ta if f in tb)
    return dict(out)


def history_drift(store: Store) -> dict[str, Drift]:
    """Per environment key with re-measurements, the drift calibrated from them (the default
    while there are too few: :data:`explorer.intervals.MIN_CALIBRATION_PAIRS`)."""
    return {env: calibrate(pairs) for env, pairs in history_pairs(store).items()}


def _nan() -> float:
    return float("nan")


def row_intervals(payloads: Mapping[str, Optional[Mapping[str, Any]]], with_preprocess: bool,
                  drift: Drift = DEFAULT_DRIFT, level: float = LEVEL) -> dict[str, Any]:
    """The :data:`INTERVAL_COLUMNS` of one row from its factors' ok payloads (``encoder``,
    ``projector``, ``prefill``; None: not measured). NaN where a factor was not timed."""
    enc = payloads.get("encoder") or {}
    timings = {"encoder": enc.get("latency"), "preprocess": enc.get("preprocess_latency"),
               "projector": (payloads.get("projector") or {}).get("latency"),
               "prefill": (payloads.get("prefill") or {}).get("latency")}
    out: dict[str, Any] = {}
    found: dict[str, Optional[Interval]] = {}
    for part, (_, lo, hi) in PART_COLUMNS.items():
        t = timings[part]
        interval = remeasure_interval(t, level, drift) if isinstance(t, Mapping) else None
        found[part] = interval
        out[lo], out[hi] = (interval.low, interval.high) if interval is not None else (_nan(), _nan())
    parts = ["encoder", "projector", "prefill"] + (["preprocess"] if with_preprocess else [])
    total = sum_intervals(found[p] for p in parts)
    out["ttft_low_ms"], out["ttft_high_ms"] = (total.low, total.high) if total is not None else (_nan(), _nan())
    out["latency_level"] = level
    out["latency_drift"] = drift.describe()
    return out


def ties(rows: list[Mapping[str, Any]], best: Mapping[str, Any], value: str = "ttft_ms", low: str = "ttft_low_ms",
         high: str = "ttft_high_ms") -> list[Mapping[str, Any]]:
    """The rows (other than ``best``, by ``point_key``) whose interval overlaps ``best``'s: the ones
    :func:`explorer.intervals.compare` cannot order against it, best first by ``value``."""
    def bounds(row: Mapping[str, Any]) -> tuple[float, float]:
        return (float(row.get(low, _nan())), float(row.get(high, _nan())))

    out = [r for r in rows if r.get("point_key") != best.get("point_key")
           and compare(bounds(best), bounds(r)) == "tied" and not _missing(r.get(value))]
    return sorted(out, key=lambda r: float(r[value]))


def _missing(value: Any) -> bool:
    try:
        return value is None or math.isnan(float(value))
    except (TypeError, ValueError):
        return True
