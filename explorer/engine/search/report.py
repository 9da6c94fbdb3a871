"""What a search is about to do (:class:`SearchSetup`) and what it did (:class:`SearchReport`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

from explorer.analysis import pareto
from explorer.data.space import DesignPoint, Space, admits
from explorer.data.store import Store
from explorer.engine.search.objectives import SearchConstraints
from explorer.engine.search.params import ParamSpace
from explorer.engine.sweep.estimate import format_duration

__all__ = ["SearchReport", "SearchSetup"]


@dataclass
class SearchReport:
    """What a search did; ``frame()``/``frontier()`` give the study's measured rows and frontier."""

    space: str
    store_url: str
    study_name: str
    sampler: str
    seed: Optional[int]
    objectives: tuple[pareto.Objective, ...]
    constraints: SearchConstraints
    env_key: str
    trials_target: int
    trials_before: int  # finished trials the study had when this run started
    trials_run: int  # trials finished by this run
    states: dict[str, int]  # whole study: COMPLETE / FAIL / PRUNED / RUNNING counts
    infeasible: int  # complete trials that break a constraint
    point_keys: tuple[str, ...]  # distinct points the study evaluated (complete or failed), first seen first
    feasible_keys: tuple[str, ...]
    grid_size: int  # points of the space
    measured: dict[str, int]  # new factor measurements made by this run
    cached_trials: int  # trials of this run answered from the store without measuring
    interrupted: bool = False
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def unique_points(self) -> int:
        """Distinct design points the study has evaluated: the search's cost in measurements."""
        return len(self.point_keys)

    def frame(self, store: Optional[Store] = None) -> pd.DataFrame:
        """Results-table rows of the points the study evaluated, with a ``feasible`` column."""
        from explorer.data.results import frame_from_store

        st = store or Store(self.store_url, create=False)
        try:
            full = frame_from_store(st, space=self.space, env=self.env_key)
        finally:
            if store is None:
                st.close()
        rows = full[full["point_key"].isin(set(self.point_keys))].reset_index(drop=True)
        rows["feasible"] = rows["point_key"].isin(set(self.feasible_keys))
        return rows

    def frontier(self, store: Optional[Store] = None) -> pareto.FrontierResult:
        """The Pareto frontier of the feasible measured rows for the search's objectives."""
        rows = self.frame(store)
        return pareto.pareto_front(rows[rows["feasible"]].reset_index(drop=True), list(self.objectives))

    def format(self, store: Optional[Store] = None) -> str:
        s = self.states
        n_meas = sum(self.measured.values())
        lines = [f"search {self.study_name!r} ({self.sampler}, seed {self.seed}) on {self.space!r}: "
                 f"{self.trials_run} trials now, {self.trials_before + self.trials_run} of {self.trials_target} done "
                 f"(complete {s.get('COMPLETE', 0)}, failed {s.get('FAIL', 0)}, pruned {s.get('PRUNED', 0)}; "
                 f"{self.infeasible} infeasible), {format_duration(self.elapsed_s)}",
                 f"objectives: {', '.join(map(str, self.objectives))}"
                 + (f"; constraints: {', '.join(f'{k}={v:g}' for k, v in self.constraints.to_dict().items())}"
                    if self.constraints.active() else ""),
                 f"unique design points evaluated: {self.unique_points} of {self.grid_size} in the space; "
                 f"new measurements this run: {n_meas} ({', '.join(f'{k} {v}' for k, v in self.measured.items())}), "
                 f"{self.cached_trials} trials answered from the store"]
        lines += self.notes
        try:
            result = self.frontier(store)
        except Exception as exc:  # a summary must never hide where the results are
            lines.append(f"(no frontier: {exc})")
        else:
            if len(result.front):
                cols = ["encoder", "knobs", "resolution", "llm", "text_tokens"]
                if "pruning" in result.front.columns and result.front.pruning.notna().any():
                    cols.append("pruning")  # a space with a pruning axis: which rows are pruned
                cols += [o.column for o in result.objectives if o.column not in cols]
                if "ttft_ms" not in cols:
                    cols.append("ttft_ms")
                lines.append(f"frontier ({len(result.front)} of {result.n_valid} feasible measured points):")
                lines.append(result.front[cols].round(3).to_string(index=False))
            else:
                lines.append("no feasible measured point yet")
        lines.append(f"study {self.study_name!r} in {self.store_url}  (optuna-dashboard {self.store_url})")
        return "\n".join(lines)


@dataclass
class SearchSetup:
    """A validated search, ready to run: what :func:`run_search` needs and a dry run prints."""

    space: Space
    settings: Any
    environment: Any
    env_key: str
    params: ParamSpace
    valid_points: Optional[frozenset[DesignPoint]]  # None: too many to list; judged point by point
    grid_size: int  # points of the space (of its product when valid_points is None)
    backend: Any
    objectives: tuple[pareto.Objective, ...]
    constraints: SearchConstraints
    definition: dict[str, Any]
    definition_digest: str
    study_name: str
    sampler: str
    notes: list[str] = field(default_factory=list)

    def admits(self, point: DesignPoint) -> bool:
        """Whether a proposed point is part of the space (not dropped by exclude/constraints)."""
        if self.valid_points is not None:
            return point in self.valid_points
        return admits(self.space, point, shape_fn=self.backend.encoder_shape)

    def describe(self, storage_url: Optional[str] = None, finished: Optional[int] = None) -> str:
        """The dry-run text: parameters, grid size, objectives, constraints and the study."""
        listed = (f"{len(self.valid_points)} design points" if self.valid_points is not None
                  else "too many design points to list (each proposal is checked against exclude/constraints)")
        lines = [f"space {self.space.name!r}: {listed} "
                 f"({self.params.grid_size()} in the product before exclusions/constraints)",
                 "optuna parameters:"]
        lines += [f"  {line}" for line in self.params.describe().splitlines()]
        lines.append(f"objectives: {', '.join(map(str, self.objectives))}")
        if self.constraints.active():
            lines.append("constraints: " + ", ".join(f"{k} <= {v:g}" for k, v in self.constraints.to_dict().items()))
        lines += self.notes
        state = "" if finished is None else f" ({finished} trials finished so far)"
        lines.append(f"study {self.study_name!r} ({self.sampler}){state}"
                     + (f" in {storage_url}" if storage_url else ""))
        lines.append(f"environment {self.env_key}")
        return "\n".join(lines)
