"""Multi-objective search over a space with optuna: measure a few points, not the whole grid.

A sweep measures every design point; a search asks an optuna sampler (TPE, NSGA-II or random)
which point to measure next and tells it the result, so a frontier of TTFT against accuracy
emerges from a fraction of the measurements. Each trial's point is measured by the sweep engine
(:func:`explorer.sweep.plan_sweep` / :func:`explorer.sweep.run_sweep` on that one point), so it
is factorised, cached and stored exactly like a sweep: a configuration measured before, by a
sweep or by an earlier trial, costs nothing.

How the space becomes optuna parameters (:class:`ParamSpace`):

- each knob of each encoder entry, the resolution, the LLM and the text prompt length become one
  parameter; a key with a single value is fixed and not sampled;
- numeric lists that are an arithmetic progression of 3 or more values (``[256, 512, 768]``,
  ``{start: 256, stop: 1024, step: 128}``, ``width_mult: [0.5, 0.75, 1.0]``) become stepped
  ``IntDistribution`` / ``FloatDistribution`` (ordinal: TPE and NSGA-II see that 512 lies
  between 256 and 768); every other list becomes a ``CategoricalDistribution`` (``ordinal=False``
  makes every list categorical). Sampled values always map back to a value the space lists, so
  search points have the same keys as sweep points. The space schema has no continuous ranges:
  a search only ever proposes points of the grid;
- with several encoder entries, ``encoder`` picks the entry (its label) and that entry's knobs
  are conditional parameters named ``<label>.<knob>``; ``resolution`` is shared when every
  entry lists the same resolutions, else it is ``<label>.resolution`` too.

How a trial ends:

- COMPLETE with the objective values (columns of the results table, e.g. ``ttft_ms`` and
  ``accuracy``). Constraints (``max_ttft_ms``, ``max_params_m``) are set with
  :meth:`optuna.trial.Trial.set_constraint` (``value - limit``; > 0 is infeasible), which TPE and
  NSGA-II use for constrained optimisation and ``study.best_trials`` filters on. (optuna 5
  deprecates the samplers' ``constraints_func`` in favour of this. The values are also stored in
  the trial's user attributes ``constraint:<name>``, which optuna 4 reads through a
  ``constraints_func``, and the dashboard shows.)
- FAIL when a measurement of the point failed (exception, timeout, out of memory): the error is
  in the user attribute ``error``.
- PRUNED when the point is not part of the space (an ``exclude:`` entry or a space constraint
  drops it) or an objective has no value for it (e.g. no accuracy is known for that point):
  TPE ranks pruned trials below complete ones, so it learns to stay away; ``skip_reason`` says why.

The study lives in the store's database (same SQLAlchemy URL, optuna's ``RDBStorage``). ``trials``
is the total the study should reach: running the same search again continues the study
(``load_if_exists``) and only adds the missing trials. The default study name is
``<space>-<sampler>-<digest>``, the digest covering the parameter space, objectives, constraints
and measuring environment, so a changed space or another machine starts a new study instead of
mixing incompatible trials. ``optuna-dashboard sqlite:///results/<space>/store.db`` shows it live.
"""
from __future__ import annotations

import dataclasses
import decimal
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import optuna
import pandas as pd
import sqlalchemy
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution,
                                  distribution_to_json)
from optuna.trial import FrozenTrial, Trial, TrialState

from explorer import pareto
from explorer.space import (DesignPoint, EncoderEntry, ShapeFn, Space, canonical_json, digest,
                            enumerate_points, load_space)
from explorer.store import Store

__all__ = ["SAMPLERS", "CONSTRAINT_COLUMNS", "OBJECTIVE_COLUMNS", "SearchError", "SearchConstraints",
           "Dimension", "ParamSpace", "Evaluation", "SearchReport", "SearchSetup", "resolve_objectives",
           "make_sampler", "default_study_name", "optuna_storage", "prepare_search", "count_finished", "run_search"]

#: Samplers by the name the command line uses.
SAMPLERS: tuple[str, ...] = ("tpe", "nsga2", "random")

#: Search constraint -> the results-table column it limits (feasible when value <= limit).
CONSTRAINT_COLUMNS: dict[str, str] = {"max_ttft_ms": "ttft_ms", "max_params_m": "encoder_params_m"}

_TEXT_COLUMNS = frozenset({"point_key", "encoder", "knobs", "llm", "prefill_method", "accuracy_source", "device",
                           "dtype", "torch_version", "status", "error", "measured_at"})


def _objective_columns() -> tuple[str, ...]:
    from explorer.results import COLUMNS

    return tuple(c for c in COLUMNS if c not in _TEXT_COLUMNS)


#: Numeric columns of the results table an objective may name.
OBJECTIVE_COLUMNS: tuple[str, ...] = _objective_columns()

#: Trial states that count toward ``trials`` (FAIL trials marked ``interrupted`` do not).
_FAILED_STATUSES = ("failed", "timeout", "oom")
#: optuna >= 5 takes constraints per trial (``Trial.set_constraint``); optuna 4 only through a
#: sampler's ``constraints_func``, which then reads the ``constraint:<name>`` user attributes.
_SET_CONSTRAINT = hasattr(Trial, "set_constraint")
_DIGEST_ATTR = "explorer:definition_digest"


class SearchError(ValueError):
    """Bad search input (names the key, the value and what is allowed), raised before any work."""


def _bad(key: str, value: Any, allowed: str) -> SearchError:
    return SearchError(f"invalid {key}={value!r}: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite(value: Any) -> Optional[float]:
    """``value`` as a float when it is a finite number (pandas NA and NaN give None)."""
    try:
        if value is None or pd.isna(value):
            return None
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


# --------------------------------------------------------------------------------------------
# Constraints and objectives


@dataclass(frozen=True)
class SearchConstraints:
    """Limits on measured values; a point over a limit is measured but marked infeasible.

    (The space's own ``constraints:`` drop points before anything is measured; these need a
    measurement to be judged, so optuna learns from them instead.)
    """

    max_ttft_ms: Optional[float] = None  # time to first token, milliseconds
    max_params_m: Optional[float] = None  # encoder parameters, millions

    def validate(self) -> "SearchConstraints":
        for name in CONSTRAINT_COLUMNS:
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value > 0):
                raise _bad(f"search.{name}", value, "a positive number or null (no limit)")
        return self

    def active(self) -> dict[str, tuple[str, float]]:
        """``name -> (column, limit)`` of the limits that are set."""
        return {n: (c, float(getattr(self, n))) for n, c in CONSTRAINT_COLUMNS.items() if getattr(self, n) is not None}

    def to_dict(self) -> dict[str, float]:
        return {n: lim for n, (_, lim) in self.active().items()}

    def violations(self, row: Mapping[str, Any]) -> dict[str, float]:
        """``name -> value - limit`` (> 0 is infeasible); a missing value counts as infeasible."""
        out: dict[str, float] = {}
        for name, (column, limit) in self.active().items():
            value = _finite(row.get(column))
            out[name] = float("inf") if value is None else value - limit
        return out

    @classmethod
    def coerce(cls, value: Union["SearchConstraints", Mapping[str, Any], None]) -> "SearchConstraints":
        if value is None:
            return cls()
        if isinstance(value, SearchConstraints):
            return value.validate()
        if not isinstance(value, Mapping):
            raise _bad("constraints", value, f"a mapping with keys {', '.join(CONSTRAINT_COLUMNS)}")
        unknown = sorted(set(value) - set(CONSTRAINT_COLUMNS))
        if unknown:
            raise _bad(f"search.{unknown[0]}", value[unknown[0]],
                       f"unknown constraint; allowed: {', '.join(CONSTRAINT_COLUMNS)}")
        return cls(**dict(value)).validate()


def _parse_objectives(objectives: Any) -> tuple[pareto.Objective, ...]:
    try:
        parsed = pareto.parse_objectives(objectives)
    except ValueError as err:
        raise SearchError(f"invalid search.objectives={objectives!r}: {err}") from None
    for o in parsed:
        if o.column not in OBJECTIVE_COLUMNS:
            raise _bad("search.objectives", objectives,
                       f"column {o.column!r} is not a numeric results column; allowed: {', '.join(OBJECTIVE_COLUMNS)}")
    return parsed


def _has_accuracy(store: Store, space: Space, points: Iterable[DesignPoint]) -> bool:
    """True when some stored accuracy can apply to a point of the space (by key or by fields)."""
    keys = {p.key for p in points}
    families = {e.family for e in space.encoders}
    for acc in store.accuracy():
        if acc.point_key is not None:
            if acc.point_key in keys:
                return True
        elif acc.encoder in families and (acc.llm is None or acc.llm in space.llms):
            return True
    return False


def resolve_objectives(objectives: Any, has_accuracy: bool) -> tuple[tuple[pareto.Objective, ...], list[str]]:
    """The objectives to search on and notes; default ``ttft_ms:min, accuracy:max``.

    Same convention as :func:`explorer.pareto.pareto_front`: when the defaults were asked for and no
    accuracy is known for this space, accuracy is replaced by the first of
    :data:`explorer.pareto.ACCURACY_FALLBACKS` (``resolution:max``: more input detail for more latency).
    """
    if objectives is not None:
        return _parse_objectives(objectives), []
    if has_accuracy:
        return pareto.DEFAULT_OBJECTIVES, []
    proxy = pareto.ACCURACY_FALLBACKS[0]
    used = tuple(proxy if o.column == "accuracy" else o for o in pareto.DEFAULT_OBJECTIVES)
    return used, [f"no accuracy is stored for this space, so the search uses {proxy} as a stand-in for accuracy "
                  "(pareto.py's convention); store accuracy or pass objectives to change it"]


# --------------------------------------------------------------------------------------------
# Space -> optuna parameters

_SCALARS = (type(None), bool, int, float, str)


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _progression(values: Sequence[Any]) -> Optional[tuple[str, Any, Any, Any]]:
    """(kind, low, high, step) when ``values`` are 3+ numbers forming an arithmetic progression."""
    if len(values) < 3 or not all(_is_number(v) for v in values):
        return None
    ordered = sorted(values)
    if all(_is_int(v) for v in values):
        step = ordered[1] - ordered[0]
        if step > 0 and all(b - a == step for a, b in zip(ordered, ordered[1:])):
            return "int", ordered[0], ordered[-1], step
        return None
    try:
        d = [decimal.Decimal(repr(float(v))) for v in ordered]
    except decimal.InvalidOperation:  # pragma: no cover - finite floats always convert
        return None
    step_d = d[1] - d[0]
    if step_d <= 0 or any(b - a != step_d for a, b in zip(d, d[1:])):
        return None
    return "float", float(ordered[0]), float(ordered[-1]), float(step_d)


@dataclass(frozen=True)
class Dimension:
    """One optuna parameter standing for one key of the space and the values it lists.

    ``kind``: ``fixed`` (one value, not sampled), ``int``/``float`` (stepped, ordinal) or
    ``categorical``. Values keep the space's own (frozen) form, so decoded points equal grid points.
    """

    name: str
    values: tuple[Any, ...]
    kind: str
    low: Any = None
    high: Any = None
    step: Any = None

    @classmethod
    def build(cls, name: str, values: Sequence[Any], ordinal: bool = True) -> "Dimension":
        vals = tuple(dict.fromkeys(values))
        if not vals:
            raise SearchError(f"invalid {name}=[]: at least one value is needed")
        if len(vals) == 1:
            return cls(name, vals, "fixed")
        prog = _progression(vals) if ordinal else None
        if prog is not None:
            kind, low, high, step = prog
            return cls(name, vals, kind, low, high, step)
        return cls(name, vals, "categorical")

    def choices(self) -> tuple[Any, ...]:
        """Categorical choices: scalars as they are, lists as their canonical JSON text."""
        return tuple(v if isinstance(v, _SCALARS) else canonical_json(_thaw(v)) for v in self.values)

    def distribution(self) -> Optional[BaseDistribution]:
        if self.kind == "fixed":
            return None
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), step=int(self.step))
        if self.kind == "float":
            return FloatDistribution(float(self.low), float(self.high), step=float(self.step))
        return CategoricalDistribution(self.choices())

    def suggest(self, trial: Trial) -> Any:
        """Sample this parameter in ``trial`` and return the space's value."""
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "int":
            raw: Any = trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step))
        elif self.kind == "float":
            raw = trial.suggest_float(self.name, float(self.low), float(self.high), step=float(self.step))
        else:
            raw = trial.suggest_categorical(self.name, self.choices())
        return self.decode(raw)

    def decode(self, raw: Any) -> Any:
        """The listed value a sampled ``raw`` stands for (nearest for numbers)."""
        if self.kind in ("int", "float"):
            return min(self.values, key=lambda v: abs(float(v) - float(raw)))
        return self.values[self.choices().index(raw)]

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.name} = {_thaw(self.values[0])!r} (fixed)"
        if self.kind in ("int", "float"):
            return f"{self.name}: {self.kind} {self.low}..{self.high} step {self.step} ({len(self.values)} values)"
        return f"{self.name}: categorical {[_thaw(v) for v in self.values]}"


@dataclass(frozen=True)
class _EntryDims:
    label: str
    entry: EncoderEntry
    knobs: tuple[tuple[str, Dimension], ...]  # knob name -> its parameter
    resolution: Dimension


@dataclass(frozen=True)
class ParamSpace:
    """How a :class:`~explorer.space.Space` maps to optuna parameters (see the module docstring)."""

    encoder: Dimension
    entries: tuple[_EntryDims, ...]
    llm: Dimension
    text_tokens: Dimension

    @classmethod
    def from_space(cls, space: Space, ordinal: bool = True) -> "ParamSpace":
        labels: list[str] = []
        for e in space.encoders:
            label = e.label or e.family
            while label in labels:
                label = f"{label}#{len(labels)}"
            labels.append(label)
        multi = len(space.encoders) > 1
        shared_res = len({e.resolutions for e in space.encoders}) == 1
        entries = []
        for label, e in zip(labels, space.encoders):
            prefix = f"{label}." if multi else ""
            knobs = tuple((k, Dimension.build(f"{prefix}{k}", vals, ordinal)) for k, vals in e.knobs)
            res_name = "resolution" if shared_res else f"{label}.resolution"
            entries.append(_EntryDims(label, e, knobs, Dimension.build(res_name, e.resolutions, ordinal)))
        return cls(encoder=Dimension.build("encoder", labels, ordinal=False), entries=tuple(entries),
                   llm=Dimension.build("llm", space.llms, ordinal=False),
                   text_tokens=Dimension.build("text_tokens", space.text_tokens, ordinal))

    def dimensions(self) -> list[Dimension]:
        """Every parameter once (conditional ones included), in a stable order."""
        out: dict[str, Dimension] = {self.encoder.name: self.encoder}
        for ed in self.entries:
            for d in (*(d for _, d in ed.knobs), ed.resolution):
                out.setdefault(d.name, d)
        out[self.llm.name] = self.llm
        out[self.text_tokens.name] = self.text_tokens
        return list(out.values())

    def distributions(self) -> dict[str, BaseDistribution]:
        return {d.name: dist for d in self.dimensions() if (dist := d.distribution()) is not None}

    def grid_size(self) -> int:
        """Points of the full product (before the space's exclusions and constraints)."""
        per_llm = len(self.llm.values) * len(self.text_tokens.values)
        return sum(math.prod(len(d.values) for _, d in ed.knobs) * len(ed.resolution.values) * per_llm
                   for ed in self.entries)

    def suggest(self, trial: Trial) -> DesignPoint:
        """Sample a design point in ``trial``."""
        label = self.encoder.suggest(trial)
        ed = next(e for e in self.entries if e.label == label)
        knobs = {k: _thaw(d.suggest(trial)) for k, d in ed.knobs}
        resolution = ed.resolution.suggest(trial)
        return DesignPoint.make(ed.entry.family, knobs, resolution, self.llm.suggest(trial),
                                self.text_tokens.suggest(trial))

    def describe(self) -> str:
        return "\n".join(d.describe() for d in self.dimensions())

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able definition (parameters and what each maps to) for the study digest."""
        return {"params": {n: distribution_to_json(d) for n, d in self.distributions().items()},
                "entries": [{"label": ed.label, "family": ed.entry.family,
                             "knobs": {k: [_thaw(v) for v in d.values] for k, d in ed.knobs},
                             "resolutions": list(ed.resolution.values)} for ed in self.entries],
                "llms": list(self.llm.values), "text_tokens": list(self.text_tokens.values)}


# --------------------------------------------------------------------------------------------
# Samplers and storage


@dataclass(frozen=True)
class _ConstraintValues:
    """optuna 4's ``constraints_func``: the values the loop stored as user attributes (one per
    constraint, always the same length; a trial without them counts as feasible)."""

    names: tuple[str, ...]

    def __call__(self, trial: FrozenTrial) -> list[float]:
        return [float(trial.user_attrs.get(f"constraint:{n}", 0.0)) for n in self.names]


def make_sampler(name: str, seed: Optional[int], *, population_size: Optional[int] = None,
                 conditional: bool = False, constraints: Sequence[str] = ()) -> optuna.samplers.BaseSampler:
    """The optuna sampler for ``tpe`` | ``nsga2`` | ``random``.

    TPE is multivariate (knobs interact: width and resolution both drive latency), with ``group``
    for conditional parameters of several encoder families. NSGA-II's ``population_size`` defaults
    to 50 (optuna's default) unless given.
    """
    if name not in SAMPLERS:
        raise _bad("search.sampler", name, f"one of {', '.join(SAMPLERS)}")
    extra: dict[str, Any] = {}
    if constraints and not _SET_CONSTRAINT:
        extra["constraints_func"] = _ConstraintValues(tuple(constraints))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=conditional, **extra)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size or 50, **extra)
        return optuna.samplers.RandomSampler(seed=seed)


def optuna_storage(url: str) -> optuna.storages.BaseStorage:
    """optuna's RDBStorage on the store's URL (an in-memory SQLite store gets in-memory trials)."""
    if url.startswith("sqlite://") and (url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url):
        return optuna.storages.InMemoryStorage()
    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url)
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})

    # The store put the file in WAL mode; with synchronous=NORMAL (what the store uses too) a
    # commit no longer waits for fsync, which makes optuna's many small writes ~10x cheaper.
    @sqlalchemy.event.listens_for(storage.engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    storage.engine.dispose()  # connections made before the hook get replaced
    return storage


def default_study_name(space: Space, sampler: str, definition_digest: str) -> str:
    return f"{space.name}-{sampler}-{definition_digest[:8]}"


# --------------------------------------------------------------------------------------------
# Evaluating one point through the sweep engine


@dataclass(frozen=True)
class Evaluation:
    """The outcome of measuring (or looking up) one design point."""

    point: DesignPoint
    status: str  # ok | failed | timeout | oom | pending | interrupted
    row: dict[str, Any]  # its results-table row (empty when none)
    error: Optional[str] = None
    measured: dict[str, int] = field(default_factory=dict)  # new measurements per factor
    cached: bool = False  # True when nothing had to be measured


def _no_gflops(family: str, knobs: Mapping[str, Any], resolution: int) -> float:
    """Skip the meta-device FLOP count plan_sweep makes for its time estimates (unused here)."""
    return float("nan")


class _Evaluator:
    """Measures single points with the sweep engine and remembers their results-table rows."""

    def __init__(self, space: Space, settings: Any, store: Store, environment: Any, env_key: str,
                 sweep_kwargs: dict[str, Any], plan_kwargs: dict[str, Any], retry_failed: bool,
                 log: Callable[[str], None]):
        self.space, self.settings, self.store = space, settings, store
        self.environment, self.env_key = environment, env_key
        self.sweep_kwargs, self.plan_kwargs = sweep_kwargs, plan_kwargs
        self.retry_failed = retry_failed
        self.log = log
        self.rows: dict[str, dict[str, Any]] = {}
        self.retried: set[str] = set()
        self.measured: dict[str, int] = {"encoder": 0, "projector": 0, "prefill": 0}
        self._reload()

    def _reload(self) -> None:
        from explorer.results import frame_from_store

        frame = frame_from_store(self.store, space=self.space.name, env=self.env_key)
        for row in frame.to_dict("records"):
            if row.get("status") != "pending":
                self.rows[str(row["point_key"])] = row

    def _settled(self, key: str) -> bool:
        row = self.rows.get(key)
        if row is None:
            return False
        return row["status"] == "ok" or not (self.retry_failed and key not in self.retried)

    def evaluate(self, point: DesignPoint) -> Evaluation:
        from explorer.sweep import plan_sweep, run_sweep

        key = point.key
        if self._settled(key):
            return self._outcome(point, cached=True, measured={})
        retry = self.retry_failed and key not in self.retried
        plan = plan_sweep(self.space, self.settings, self.store, retry_failed=retry, environment=self.environment,
                          points=[point], **self.plan_kwargs)
        measured: dict[str, int] = {}
        interrupted = False
        if plan.todo:
            report = run_sweep(self.space, self.settings, self.store, plan=plan, progress=False, log=self.log,
                               **self.sweep_kwargs)
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


# --------------------------------------------------------------------------------------------
# Report


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
        from explorer.results import frame_from_store

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
        from explorer.sweep import _fmt_duration

        s = self.states
        n_meas = sum(self.measured.values())
        lines = [f"search {self.study_name!r} ({self.sampler}, seed {self.seed}) on {self.space!r}: "
                 f"{self.trials_run} trials now, {self.trials_before + self.trials_run} of {self.trials_target} done "
                 f"(complete {s.get('COMPLETE', 0)}, failed {s.get('FAIL', 0)}, pruned {s.get('PRUNED', 0)}; "
                 f"{self.infeasible} infeasible), {_fmt_duration(self.elapsed_s)}",
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
                cols += [o.column for o in result.objectives if o.column not in cols]
                if "ttft_ms" not in cols:
                    cols.append("ttft_ms")
                lines.append(f"frontier ({len(result.front)} of {result.n_valid} feasible measured points):")
                lines.append(result.front[cols].round(3).to_string(index=False))
            else:
                lines.append("no feasible measured point yet")
        lines.append(f"study {self.study_name!r} in {self.store_url}  (optuna-dashboard {self.store_url})")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The loop


def _counts_toward_total(t: FrozenTrial) -> bool:
    """COMPLETE and PRUNED trials count, and FAIL trials whose measurement failed; a FAIL left by an
    interruption (no measurement status) does not, so resuming redoes it."""
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and t.user_attrs.get("status") in _FAILED_STATUSES


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fail_abandoned(study: optuna.Study) -> int:
    """FAIL the RUNNING trials left by a killed search on this machine (its process is gone),
    so they do not sit in the dashboard forever; other hosts' trials are left alone."""
    host = socket.gethostname()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        pid = worker.get("pid")
        if worker.get("host") == host and _is_int(pid) and pid != os.getpid() and not _pid_alive(pid):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            n += 1
    return n


def _study_summary(study: optuna.Study) -> tuple[dict[str, int], int, list[str], list[str]]:
    """(state counts, infeasible complete trials, evaluated point keys, feasible point keys)."""
    states: dict[str, int] = {}
    infeasible = 0
    keys: dict[str, None] = {}
    feasible: dict[str, None] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
        key = t.user_attrs.get("point_key")
        evaluated = t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.user_attrs.get("status")
                                                        in _FAILED_STATUSES)
        if key and evaluated:
            keys.setdefault(key, None)
        if t.state == TrialState.COMPLETE:
            if any(v > 0 for k, v in t.user_attrs.items() if k.startswith("constraint:")):
                infeasible += 1
            elif key:
                feasible.setdefault(key, None)
    return states, infeasible, list(keys), list(feasible)


def _check_study(study: optuna.Study, definition: dict[str, Any], definition_digest: str) -> None:
    """Adopt a new study (record its definition) or refuse one made for another search."""
    attrs = study.user_attrs
    have = attrs.get(_DIGEST_ATTR)
    if have is None:
        if study.get_trials(deepcopy=False):
            raise SearchError(f"invalid search.study={study.study_name!r}: that study already exists in the database "
                              f"but was not created by explorer search; choose another name")
        study.set_user_attr("explorer:definition", definition)
        study.set_user_attr(_DIGEST_ATTR, definition_digest)
    elif have != definition_digest:
        old = attrs.get("explorer:definition") or {}
        changed = sorted(k for k in set(old) | set(definition)
                         if canonical_json(old.get(k)) != canonical_json(definition.get(k)))
        raise SearchError(f"invalid search.study={study.study_name!r}: that study was made for another search "
                          f"(differs in: {', '.join(changed) or 'definition'}); give a new search.study name, or "
                          f"leave it unset for the default name <space>-<sampler>-<digest>")


@dataclass
class SearchSetup:
    """A validated search, ready to run: what :func:`run_search` needs and a dry run prints."""

    space: Space
    settings: Any
    environment: Any
    env_key: str
    params: ParamSpace
    valid_points: set[DesignPoint]
    objectives: tuple[pareto.Objective, ...]
    constraints: SearchConstraints
    definition: dict[str, Any]
    definition_digest: str
    study_name: str
    sampler: str
    notes: list[str] = field(default_factory=list)

    def describe(self, storage_url: Optional[str] = None, finished: Optional[int] = None) -> str:
        """The dry-run text: parameters, grid size, objectives, constraints and the study."""
        lines = [f"space {self.space.name!r}: {len(self.valid_points)} design points "
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


def prepare_search(
    space: Union[Space, str, Any],
    settings: Any = None,
    store: Optional[Store] = None,
    *,
    trials: int = 50,
    sampler: str = "tpe",
    seed: Optional[int] = 0,
    objectives: Any = None,
    constraints: Union[SearchConstraints, Mapping[str, Any], None] = None,
    study_name: Optional[str] = None,
    ordinal: bool = True,
    population_size: Optional[int] = None,
    isolation: str = "auto",
    shape_fn: Optional[ShapeFn] = None,
    environment: Any = None,
) -> SearchSetup:
    """Validate every input and map the space to optuna parameters; measures and writes nothing.

    Raises :class:`SearchError` (or :class:`~explorer.space.SpaceError`, ``ValueError`` for a bad
    measurement setting) naming the key, the value and what is allowed.
    """
    if not _is_int(trials) or trials < 1:
        raise _bad("search.trials", trials, "a positive integer (the total number of trials of the study)")
    if sampler not in SAMPLERS:
        raise _bad("search.sampler", sampler, f"one of {', '.join(SAMPLERS)}")
    if seed is not None and not _is_int(seed):
        raise _bad("search.seed", seed, "an integer, or null for a random seed")
    if study_name is not None and (not isinstance(study_name, str) or not study_name.strip()):
        raise _bad("search.study", study_name, "a non-empty study name, or null for <space>-<sampler>-<digest>")
    if population_size is not None and (not _is_int(population_size) or population_size < 2):
        raise _bad("search.population_size", population_size, "an integer >= 2, or null (50)")
    if not isinstance(ordinal, bool):
        raise _bad("search.ordinal", ordinal, "true or false")
    if isolation not in ("auto", "process", "alarm", "inline"):
        raise _bad("sweep.isolation", isolation, "one of auto, process, alarm, inline")
    cons = SearchConstraints.coerce(constraints)
    if objectives is not None:
        _parse_objectives(objectives)
    if not isinstance(space, Space):
        space = load_space(space, shape_fn=shape_fn, check_models=shape_fn is None)
    if settings is None:
        from explorer.sweep import default_settings

        settings = default_settings(space)
    elif hasattr(settings, "validate"):
        settings.validate()
    if environment is None:
        from explorer.measure.settings import current_environment

        environment = current_environment(settings)
    env_key = str(environment.key)
    params = ParamSpace.from_space(space, ordinal=ordinal)
    valid_points = set(enumerate_points(space, shape_fn=shape_fn))
    has_acc = _has_accuracy(store, space, valid_points) if store is not None else False
    used, notes = resolve_objectives(objectives, has_acc)
    definition = {"space": space.name, "parameters": params.fingerprint(), "exclude": space.exclusions(),
                  "space_constraints": {k: v for k, v in dataclasses.asdict(space.constraints).items()
                                        if v is not None},
                  "objectives": [str(o) for o in used], "constraints": cons.to_dict(), "env_key": env_key}
    definition_digest = digest(definition)
    name = study_name or default_study_name(space, sampler, definition_digest)
    return SearchSetup(space=space, settings=settings, environment=environment, env_key=env_key, params=params,
                       valid_points=valid_points, objectives=used, constraints=cons, definition=definition,
                       definition_digest=definition_digest, study_name=name, sampler=sampler, notes=notes)


def count_finished(storage_url: str, study_name: str) -> Optional[int]:
    """Trials of an existing study that count toward ``trials`` (None when there is no such study)."""
    storage = optuna_storage(storage_url)
    try:
        if study_name not in optuna.get_all_study_names(storage):
            return None
        study = optuna.load_study(study_name=study_name, storage=storage)
        return sum(_counts_toward_total(t) for t in study.get_trials(deepcopy=False))
    finally:
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.engine.dispose()


def run_search(
    space: Union[Space, str, Any],
    settings: Any = None,
    store: Union[Store, str, None] = None,
    *,
    trials: int = 50,
    sampler: str = "tpe",
    seed: Optional[int] = 0,
    objectives: Any = None,
    constraints: Union[SearchConstraints, Mapping[str, Any], None] = None,
    study_name: Optional[str] = None,
    ordinal: bool = True,
    population_size: Optional[int] = None,
    isolation: str = "auto",
    timeout_s: Optional[float] = None,
    retry_failed: bool = False,
    progress: bool = True,
    measure_encoder: Optional[Callable[..., Any]] = None,
    measure_projector: Optional[Callable[..., Any]] = None,
    measure_prefill: Optional[Callable[..., Any]] = None,
    shape_fn: Optional[ShapeFn] = None,
    llm_info: Optional[Callable[[str], tuple[int, dict[str, Any], float]]] = None,
    environment: Any = None,
    gflops_fn: Optional[Callable[[str, Mapping[str, Any], int], float]] = None,
    log: Callable[[str], None] = print,
) -> SearchReport:
    """Run (or continue) an optuna search over ``space`` until the study has ``trials`` trials.

    ``space``/``settings``/``store`` as in :func:`explorer.sweep.run_sweep`. ``sampler``: ``tpe``,
    ``nsga2`` or ``random``; ``seed`` makes it reproducible (a resumed run uses ``seed`` + the
    number of trials already finished, so it does not replay the first run's proposals).
    ``objectives``: e.g. ``"ttft_ms:min,accuracy:max"`` (default, with pareto.py's fallback when no
    accuracy is stored). ``constraints``: :class:`SearchConstraints` or a mapping
    (``max_ttft_ms``, ``max_params_m``). ``ordinal=False`` makes every parameter categorical;
    ``population_size`` is NSGA-II's (default 50, kept with the study).
    ``isolation``/``timeout_s``/``retry_failed``, the ``measure_*`` callables and the test hooks
    (``shape_fn``, ``llm_info``, ``environment``, ``gflops_fn``) are passed to the sweep engine.
    Raises :class:`SearchError` (or :class:`~explorer.space.SpaceError`) before any work on bad input.
    """
    t0 = time.monotonic()
    if not isinstance(space, Space):
        space = load_space(space, shape_fn=shape_fn, check_models=shape_fn is None)
    owned = not isinstance(store, Store)
    if not owned:
        st = store
    else:
        # validate before creating a database file for a search that cannot run
        prepare_search(space, settings, None, trials=trials, sampler=sampler, seed=seed, objectives=objectives,
                       constraints=constraints, study_name=study_name, ordinal=ordinal,
                       population_size=population_size, isolation=isolation, shape_fn=shape_fn,
                       environment=environment)
        st = Store(store or f"results/{space.name}")
    setup = prepare_search(space, settings, st, trials=trials, sampler=sampler, seed=seed, objectives=objectives,
                           constraints=constraints, study_name=study_name, ordinal=ordinal,
                           population_size=population_size, isolation=isolation, shape_fn=shape_fn,
                           environment=environment)
    space, used, cons, name = setup.space, setup.objectives, setup.constraints, setup.study_name
    notes = list(setup.notes)

    storage = optuna_storage(st.url)
    if isinstance(storage, optuna.storages.InMemoryStorage):
        notes.append("the store is an in-memory database: the study is not kept after this run")
    previous_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        probe = optuna.create_study(storage=storage, study_name=name, directions=[o.direction for o in used],
                                    load_if_exists=True)
        if [d.name.lower() for d in probe.directions] != [o.direction for o in used]:
            raise SearchError(f"invalid search.study={name!r}: that study optimises {len(probe.directions)} "
                              f"objective(s) in other directions than {', '.join(map(str, used))}; "
                              f"give another search.study")
        _check_study(probe, setup.definition, setup.definition_digest)
        abandoned = _fail_abandoned(probe)
        if abandoned:
            notes.append(f"{abandoned} trial(s) left running by a killed search were marked FAIL")
        before = sum(_counts_toward_total(t) for t in probe.get_trials(deepcopy=False))
        pop = int(population_size or probe.user_attrs.get("explorer:population_size") or 50)
        if sampler == "nsga2" and probe.user_attrs.get("explorer:population_size") != pop:
            probe.set_user_attr("explorer:population_size", pop)
        run_seed = None if seed is None else seed + before
        study = optuna.load_study(study_name=name, storage=storage,
                                  sampler=make_sampler(sampler, run_seed, population_size=pop,
                                                       conditional=len(setup.params.entries) > 1,
                                                       constraints=tuple(cons.active())))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.column for o in used])  # axis names in optuna-dashboard

        evaluator = _Evaluator(
            space, setup.settings, st, setup.environment, setup.env_key,
            sweep_kwargs=dict(isolation=isolation, timeout_s=timeout_s, measure_encoder=measure_encoder,
                              measure_projector=measure_projector, measure_prefill=measure_prefill,
                              shape_fn=shape_fn, llm_info=llm_info, environment=setup.environment,
                              gflops_fn=gflops_fn or _no_gflops),
            plan_kwargs=dict(shape_fn=shape_fn, llm_info=llm_info, gflops_fn=gflops_fn or _no_gflops),
            retry_failed=retry_failed, log=log)
        loop = _Loop(study, setup.params, setup.valid_points, evaluator, used, cons, progress, log,
                     f"search {space.name} ({sampler})")
        loop.go(max(0, trials - before))
        states, infeasible, keys, feasible = _study_summary(study)
    finally:
        optuna.logging.set_verbosity(previous_verbosity)
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.engine.dispose()
        if owned:
            st.close()
    return SearchReport(space=space.name, store_url=st.url, study_name=name, sampler=sampler, seed=seed,
                        objectives=used, constraints=cons, env_key=setup.env_key, trials_target=trials,
                        trials_before=before, trials_run=loop.finished, states=states, infeasible=infeasible,
                        point_keys=tuple(keys), feasible_keys=tuple(feasible), grid_size=len(setup.valid_points),
                        measured=dict(evaluator.measured), cached_trials=loop.cached, interrupted=loop.interrupted,
                        elapsed_s=time.monotonic() - t0, notes=notes)


class _Loop:
    """The ask/tell loop of one run (kept apart so run_search reads as setup, loop, report)."""

    def __init__(self, study: optuna.Study, params: ParamSpace, valid: set[DesignPoint], evaluator: _Evaluator,
                 objectives: Sequence[pareto.Objective], constraints: SearchConstraints, progress: bool,
                 log: Callable[[str], None], desc: str):
        self.study, self.params, self.valid, self.evaluator = study, params, valid, evaluator
        self.objectives, self.constraints = tuple(objectives), constraints
        self.progress, self.log = progress, log
        self.desc = desc
        self.finished = 0
        self.cached = 0
        self.points: set[str] = set()
        self.interrupted = False
        self.worker = {"host": socket.gethostname(), "pid": os.getpid()}

    def go(self, todo: int) -> None:
        bar = None
        if self.progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=todo, desc=self.desc, unit="trial", file=sys.stderr, dynamic_ncols=True,
                       mininterval=0.5)
        try:
            for _ in range(todo):
                trial = self.study.ask()
                try:
                    done = self._one(trial, bar)
                except KeyboardInterrupt:
                    self._interrupt(trial)
                    break
                except BaseException:
                    self._interrupt(trial, "the search stopped with an error")
                    raise
                if not done:
                    break
                self.finished += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"points {len(self.points)}, measured "
                                        f"{sum(self.evaluator.measured.values())}, cached {self.cached}", refresh=False)
        finally:
            if bar is not None:
                bar.close()

    def _interrupt(self, trial: Trial, why: str = "interrupted by the user") -> None:
        self.interrupted = True
        try:
            trial.set_user_attr("interrupted", why)
        except Exception:  # the trial was told already (interrupted inside tell)
            pass
        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    def _note(self, bar: Any, text: str) -> None:
        if bar is not None:
            bar.write(text, file=sys.stderr)
        else:
            self.log(text)

    def _one(self, trial: Trial, bar: Any) -> bool:
        """Run one trial; False when the user interrupted the measurement (trial told FAIL)."""
        trial.set_user_attr("worker", self.worker)
        point = self.params.suggest(trial)
        trial.set_user_attr("point_key", point.key)
        trial.set_user_attr("point", point.to_dict())
        trial.set_user_attr("label", point.label())
        if point not in self.valid:
            trial.set_user_attr("skip_reason", "not in the space (dropped by its exclude: or constraints:)")
            self.study.tell(trial, state=TrialState.PRUNED)
            return True
        ev = self.evaluator.evaluate(point)
        if ev.status == "interrupted":
            self._interrupt(trial)
            return False
        self.cached += int(ev.cached)
        self.points.add(point.key)
        trial.set_user_attr("status", ev.status)
        if ev.cached:
            trial.set_user_attr("cached", True)
        if ev.status != "ok":
            first = (ev.error or ev.status).splitlines()[0]
            trial.set_user_attr("error", first[:2000])
            if not ev.cached:
                self._note(bar, f"trial {trial.number}: {ev.status}: {point.label()}: {first}")
            self.study.tell(trial, state=TrialState.FAIL)
            return True
        metrics = {c: v for c in dict.fromkeys(("ttft_ms", "encoder_latency_ms", "projector_latency_ms",
                                                "prefill_latency_ms", "visual_tokens", "encoder_params_m", "accuracy",
                                                *(o.column for o in self.objectives)))
                   if (v := _finite(ev.row.get(c))) is not None}
        trial.set_user_attr("metrics", metrics)  # one attribute: each one is a database write
        values = [_finite(ev.row.get(o.column)) for o in self.objectives]
        missing = [o.column for o, v in zip(self.objectives, values) if v is None]
        if missing:
            trial.set_user_attr("skip_reason", f"no value for {', '.join(missing)} at this point")
            self.study.tell(trial, state=TrialState.PRUNED)
            return True
        for cname, excess in self.constraints.violations(ev.row).items():
            excess = excess if math.isfinite(excess) else 1e30
            trial.set_user_attr(f"constraint:{cname}", excess)
            if _SET_CONSTRAINT:
                trial.set_constraint(cname, excess)
        self.study.tell(trial, values)
        return True
