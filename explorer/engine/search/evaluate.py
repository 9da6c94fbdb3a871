"""Evaluating one design point of a search through the sweep engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

from explorer.data.space import DesignPoint, Space
from explorer.data.store import Store
from explorer.engine.backend import MeasureBackend
from explorer.engine.options import SweepOptions
from explorer.engine.sweep.isolation import RETRIED_ON_RESUME

__all__ = ["Evaluation", "PointEvaluator", "check_search_sweep_options"]


def check_search_sweep_options(sweep: SweepOptions) -> None:
    """Refuse ``sweep.*`` values a search cannot honour (rather than ignore them): a search
    measures each proposed point once, so ``sweep.remeasure`` would re-measure a flagged factor
    only when a new point happens to share it."""
    if sweep.remeasure != "none":
        from explorer.checks import OptionError

        raise OptionError("sweep.remeasure", sweep.remeasure, "none for a search (re-measure flagged values "
                          "with `explorer sweep +space=NAME sweep.remeasure=...`, then search again)")


@dataclass(frozen=True)
class Evaluation:
    """The outcome of measuring (or looking up) one design point."""

    point: DesignPoint
    status: str  # ok | failed | timeout | oom | killed | pending | interrupted
    row: dict[str, Any]  # its results-table row (empty when none)
    error: Optional[str] = None
    measured: dict[str, int] = field(default_factory=dict)  # new measurements per factor
    cached: bool = False  # True when nothing had to be measured


class PointEvaluator:
    """Measures single points with the sweep engine and remembers their results-table rows.

    ``sweep`` gives the isolation, timeout and ``retry_failed`` of each point's measurements
    (a stored failure is retried at most once per run); progress bars stay off per point.
    """

    def __init__(self, space: Space, settings: Any, store: Store, env_key: str, sweep: SweepOptions,
                 backend: MeasureBackend, predict_accuracy: bool = False):
        self.space, self.settings, self.store, self.env_key = space, settings, store, env_key
        self.predict_accuracy = predict_accuracy
        self.sweep = sweep.replace(progress=False, dry_run=False, max_measurements=None, resume=True)
        self.backend = backend
        self.retry_failed = sweep.retry_failed
        self.rows: dict[str, dict[str, Any]] = {}
        self.retried: set[str] = set()
        self.measured: dict[str, int] = {"encoder": 0, "projector": 0, "prefill": 0}
        self._reload()

    def _reload(self) -> None:
        from explorer.data.results import frame_from_store

        frame = frame_from_store(self.store, space=self.space.name, env=self.env_key)
        if self.predict_accuracy and len(frame):
            from explorer.accuracy import fill_accuracy
            from explorer.data.reference import attach_accuracy

            measured = frame["status"].eq("ok")
            filled = fill_accuracy(attach_accuracy(frame[measured]), metric="avg5")
            frame = pd.concat([filled, frame[~measured]]).loc[frame.index] if (~measured).any() else filled
        for row in frame.to_dict("records"):
            if row.get("status") != "pending":
                self.rows[str(row["point_key"])] = row

    def _settled(self, key: str) -> bool:
        row = self.rows.get(key)
        if row is None:
            return False
        if row["status"] in RETRIED_ON_RESUME:
            return key in self.retried
        return row["status"] == "ok" or not (self.retry_failed and key not in self.retried)

    def evaluate(self, point: DesignPoint) -> Evaluation:
        from explorer.engine.sweep import plan_sweep, run_sweep

        key = point.key
        if self._settled(key):
            return self._outcome(point, cached=True, measured={})
        retry = self.retry_failed and key not in self.retried
        options = self.sweep.replace(retry_failed=retry)
        plan = plan_sweep(self.space, self.settings, self.store, options, self.backend, points=[point])
        measured: dict[str, int] = {}
        interrupted = False
        if plan.todo:
            report = run_sweep(self.space, self.settings, self.store, options, self.backend, plan=plan)
            measured = {k: v for k, v in report.measured.items() if v}
            for k, v in measured.items():
                self.measured[k] = self.measured.get(k, 0) + v
            interrupted = report.interrupted
        else:
            self.store.save_points(plan.point_records)  # stored factors, new point of this space
        self.retried.add(key)
        self._reload()
        if interrupted:
            return Evaluation(point, "interrupted", dict(self.rows.get(key, {})), "interrupted by the user", measured)
        return self._outcome(point, cached=not measured, measured=measured)

    def _outcome(self, point: DesignPoint, cached: bool, measured: dict[str, int]) -> Evaluation:
        row = dict(self.rows.get(point.key, {}))
        status = str(row.get("status") or "pending")
        return Evaluation(point, status, row, row.get("error") if status != "ok" else None, measured, cached)
