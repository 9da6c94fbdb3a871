"""Frontiers compared across environments: one per device, and the points good on all of them.

A fleet of workers (:mod:`explorer.engine.sweep.worker`) fills one sweep with one set of
latencies per environment (``env_key``: device, dtype, threads, torch). Latencies from different
devices are never mixed into one frontier; instead each environment gets its own, and two
questions are answered across them:

- which design points are on *every* environment's frontier (robust choices), and
- which meet a TTFT budget on every environment (with their worst TTFT across the fleet).

Input: the table of :func:`explorer.data.results.load` with ``env="all"`` (one row per point and
environment; columns ``point_key`` and ``env_key``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from explorer.analysis.pareto import ObjectivesLike, FrontierResult, pareto_front, status_ok

__all__ = ["FleetComparison", "compare_environments", "environment_label"]


def environment_label(row: "pd.Series | dict") -> str:
    """``cpu, 2 threads, float32`` (what a legend or a table header shows for an env_key)."""
    device = row.get("device") if hasattr(row, "get") else None
    threads = row.get("threads") if hasattr(row, "get") else None
    dtype = row.get("dtype") if hasattr(row, "get") else None
    parts = [str(device) if device is not None and not pd.isna(device) else "?"]
    if threads is not None and not pd.isna(threads):
        parts.append(f"{int(threads)} threads")
    if dtype is not None and not pd.isna(dtype):
        parts.append(str(dtype))
    return ", ".join(parts)


@dataclass(frozen=True)
class FleetComparison:
    """Per-environment frontiers of one results table and what they have in common.

    ``fronts``: env_key -> that environment's :class:`FrontierResult`. ``labels``: env_key ->
    readable label. ``on_every_front``: point keys on every environment's frontier (among the
    points measured in every environment). ``common_points``: point keys measured OK in every
    environment. ``within_budget``: for ``budget_ms``, one row per point under it everywhere, with
    the worst and best TTFT across environments (empty without a budget).
    """

    fronts: dict[str, FrontierResult]
    labels: dict[str, str]
    on_every_front: tuple[str, ...]
    common_points: tuple[str, ...]
    budget_ms: Optional[float] = None
    within_budget: pd.DataFrame = field(default_factory=pd.DataFrame)

    def table(self) -> pd.DataFrame:
        """One row per environment: how many points it measured and how many are on its frontier."""
        rows = []
        for env_key, result in self.fronts.items():
            rows.append({"env_key": env_key, "environment": self.labels[env_key], "points": result.n_valid,
                         "on_its_frontier": len(result.front),
                         "on_every_frontier": len(self.on_every_front)})
        return pd.DataFrame(rows)


def compare_environments(df: pd.DataFrame, objectives: ObjectivesLike = None,
                         budget_ms: Optional[float] = None) -> FleetComparison:
    """Per-environment frontiers of ``df`` and the points they share (see the module docstring)."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"invalid df={type(df).__name__}: a pandas DataFrame is required")
    for column in ("env_key", "point_key"):
        if column not in df.columns:
            raise ValueError(f"invalid df: no {column!r} column; load the table with "
                             "explorer.data.results.load(..., env='all')")
    if budget_ms is not None and not budget_ms > 0:
        raise ValueError(f"invalid budget_ms={budget_ms!r}: a TTFT in milliseconds > 0, or None")
    measured = df[status_ok(df) & df["env_key"].notna()]
    env_keys = list(dict.fromkeys(measured["env_key"]))
    if not env_keys:
        raise ValueError("invalid df: no environment measured any point yet")
    per_env = {e: measured[measured["env_key"] == e] for e in env_keys}
    common = set.intersection(*(set(part["point_key"]) for part in per_env.values()))
    fronts: dict[str, FrontierResult] = {}
    labels: dict[str, str] = {}
    on_all: Optional[set[str]] = None
    for e, part in per_env.items():
        fronts[e] = pareto_front(part, objectives)
        labels[e] = environment_label(part.iloc[0])
        # the frontier among the points every environment has, so that "on every frontier" compares like with like
        shared = part[part["point_key"].isin(common)]
        keys = set(pareto_front(shared, objectives).front["point_key"]) if len(shared) else set()
        on_all = keys if on_all is None else on_all & keys
    order = list(dict.fromkeys(measured["point_key"]))
    on_every = tuple(k for k in order if k in (on_all or set()))
    within = pd.DataFrame()
    if budget_ms is not None and "ttft_ms" in measured.columns:
        shared = measured[measured["point_key"].isin(common)]
        ttft = shared.pivot_table(index="point_key", columns="env_key", values="ttft_ms", aggfunc="first")
        ok = ttft[(ttft <= budget_ms).all(axis=1)]
        first = shared.drop_duplicates("point_key").set_index("point_key")
        keep = [c for c in ("encoder", "knobs", "resolution", "llm", "accuracy") if c in first.columns]
        within = first.loc[ok.index, keep].copy()
        within["worst_ttft_ms"] = ok.max(axis=1)
        within["best_ttft_ms"] = ok.min(axis=1)
        within = within.sort_values("worst_ttft_ms").reset_index()
    return FleetComparison(fronts=fronts, labels=labels, on_every_front=on_every,
                           common_points=tuple(k for k in order if k in common), budget_ms=budget_ms,
                           within_budget=within)
