"""Pareto frontiers, budget queries and hypervolume over the results table.

The analysis layer never measures: everything here takes a :class:`pandas.DataFrame` with the
documented results-table columns (``docs/architecture.md``) and returns data frames or frozen
dataclasses, so a notebook, the report and the CLI share one implementation.

Frontiers are computed with optuna: each valid row becomes a completed ``FrozenTrial`` of a
multi-objective study with the requested directions, and ``study.best_trials`` (optuna's
non-dominated set) is mapped back to rows. That keeps "best" meaning exactly what it means to
the optuna search that drives the sweeps.

Conventions, all stated in the results so a reader never has to guess:

* **Left-out rows.** A row whose ``status`` is not ``'ok'`` (when the column exists), or whose
  objective value is missing, not a number or infinite, takes no part and is listed in
  :attr:`FrontierResult.excluded` with the reason.
* **Ties.** Rows with identical objective vectors do not dominate one another, so when that
  vector is non-dominated *all* of them are on the frontier; ``n_identical`` on each frontier
  row says how many frontier rows share its vector.
* **No accuracy yet.** With the default objectives and no finite ``accuracy`` in the valid rows
  (nothing trained or imported yet), accuracy is replaced by a proxy that costs latency:
  maximise ``resolution``, or ``visual_tokens`` when resolution is missing too. The result's
  ``notes`` say so.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import optuna
import pandas as pd

__all__ = [
    "INTERVAL_COLUMNS",
    "MEMBERSHIP",
    "frontier_membership",
    "Objective",
    "DEFAULT_OBJECTIVES",
    "ACCURACY_FALLBACKS",
    "FrontierResult",
    "parse_objectives",
    "pareto_front",
    "best_under_budget",
    "hypervolume",
    "reference_point_from",
    "group_label",
    "status_ok",
    "OVERALL",
]

_DIRECTION_ALIASES: dict[str, str] = {
    "min": "minimize",
    "minimize": "minimize",
    "minimise": "minimize",
    "max": "maximize",
    "maximize": "maximize",
    "maximise": "maximize",
}

#: Columns that identify a row in the "left out" list (those present are shown).
ID_COLUMNS: tuple[str, ...] = ("point_key", "encoder", "knobs", "resolution", "llm", "text_tokens")

#: Label of the frontier over all rows, whatever the grouping.
OVERALL = "all"


@dataclass(frozen=True)
class Objective:
    """One column to optimise and which way; ``direction`` is ``minimize`` or ``maximize``.

    British spellings and ``min``/``max`` are accepted and normalised, so ``Objective("ttft_ms",
    "min")`` equals ``Objective("ttft_ms", "minimize")``.
    """

    column: str
    direction: str = "minimize"

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column:
            raise ValueError(f"invalid column={self.column!r}: a non-empty column name is required")
        key = self.direction.lower() if isinstance(self.direction, str) else self.direction
        if key not in _DIRECTION_ALIASES:
            raise ValueError(
                f"invalid direction={self.direction!r} for column {self.column!r}: "
                "allowed are 'minimize' or 'maximize' (also 'min', 'max', 'minimise', 'maximise')"
            )
        object.__setattr__(self, "direction", _DIRECTION_ALIASES[key])

    @property
    def minimize(self) -> bool:
        return self.direction == "minimize"

    @property
    def sign(self) -> float:
        """+1 for minimised objectives, -1 for maximised: ``sign * value`` is a loss."""
        return 1.0 if self.minimize else -1.0

    def __str__(self) -> str:
        return f"{self.column}:{'min' if self.minimize else 'max'}"


DEFAULT_OBJECTIVES: tuple[Objective, ...] = (
    Objective("ttft_ms", "minimize"),
    Objective("accuracy", "maximize"),
)

#: What replaces ``accuracy`` (in this order of preference) when no row has one.
ACCURACY_FALLBACKS: tuple[Objective, ...] = (
    Objective("resolution", "maximize"),
    Objective("visual_tokens", "maximize"),
)

ObjectivesLike = Union[None, str, Objective, Sequence[Union[Objective, str, tuple[str, str]]]]


def parse_objectives(objectives: ObjectivesLike) -> tuple[Objective, ...]:
    """Turn ``"ttft_ms:min,accuracy:max"``, ``[("ttft_ms", "min"), ...]``, a mapping
    ``{"ttft_ms": "minimize", "accuracy": "maximize"}`` or Objectives into a tuple.

    ``None`` gives :data:`DEFAULT_OBJECTIVES`. A bare column name means minimise.
    """
    if objectives is None:
        return DEFAULT_OBJECTIVES
    if isinstance(objectives, Objective):
        return (objectives,)
    items: Sequence[object]
    if isinstance(objectives, str):
        items = [part.strip() for part in objectives.split(",") if part.strip()]
    elif isinstance(objectives, Mapping):  # column -> direction (iterating would drop the directions)
        items = [(column, direction) for column, direction in objectives.items()]
    elif (isinstance(objectives, tuple) and len(objectives) == 2 and all(isinstance(v, str) for v in objectives)
          and objectives[1].lower() in _DIRECTION_ALIASES and ":" not in objectives[0]):
        items = [objectives]  # ("ttft_ms", "max"): one (column, direction) pair, not two columns
    elif isinstance(objectives, (list, tuple)) or (
            isinstance(objectives, Sequence) and not isinstance(objectives, (bytes, bytearray))):
        items = list(objectives)
    else:
        raise ValueError(f"invalid objectives={objectives!r}: allowed are 'column:min|max,...', a list of "
                         "Objective, 'column:min|max' or (column, direction), or a mapping column -> direction")
    parsed: list[Objective] = []
    for item in items:
        if isinstance(item, Objective):
            parsed.append(item)
        elif isinstance(item, str):
            column, _, direction = item.partition(":")
            parsed.append(Objective(column.strip(), direction.strip() or "minimize"))
        elif isinstance(item, tuple) and len(item) == 2:
            parsed.append(Objective(str(item[0]), str(item[1])))
        else:
            raise ValueError(
                f"invalid objectives item {item!r}: allowed are Objective, 'column:min|max' "
                "or (column, direction)"
            )
    if not parsed:
        raise ValueError(f"invalid objectives={objectives!r}: at least one objective is required")
    columns = [o.column for o in parsed]
    if len(set(columns)) != len(columns):
        raise ValueError(f"invalid objectives={objectives!r}: a column appears twice")
    return tuple(parsed)


def _group_columns(group_by: str | Sequence[str] | None) -> tuple[str, ...]:
    if group_by is None:
        return ()
    if isinstance(group_by, str):
        return (group_by,)
    columns = tuple(group_by)
    if not all(isinstance(c, str) for c in columns):
        raise ValueError(f"invalid group_by={group_by!r}: a column name or a list of column names")
    return columns


def _check_frame(df: object, name: str = "df") -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"invalid {name}={type(df).__name__}: a pandas DataFrame is required")
    if not df.index.is_unique:
        raise ValueError(
            f"invalid {name}: its index has duplicate labels; rows are reported by index, "
            "so reset it first (df.reset_index(drop=True))"
        )
    return df


def _check_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"invalid {what}={list(columns)!r}: column(s) {missing} not in the table; "
            f"available: {sorted(map(str, df.columns))}"
        )


def _numeric(df: pd.DataFrame, column: str) -> pd.Series:
    """The column as floats; text that is not a number becomes NaN (and so gets reported)."""
    return pd.to_numeric(df[column], errors="coerce").astype(float)


def status_ok(df: pd.DataFrame) -> pd.Series:
    """True per row whose ``status`` is ``'ok'``; every row when the table has no status column."""
    if "status" not in df.columns:
        return pd.Series(True, index=df.index)
    return df["status"].astype("string").fillna("").str.strip().eq("ok").astype(bool)


def _reasons(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Why each row cannot take part ('' where it can): failed status, missing or bad values."""
    parts: list[pd.Series] = []
    if "status" in df.columns:
        ok = status_ok(df)
        status = df["status"].astype("string").fillna("<missing>")
        text = "status=" + status
        if "error" in df.columns:
            error = df["error"].astype("string").fillna("").str.strip()
            text = text.where(error.eq(""), text + " (" + error + ")")
        parts.append(text.where(~ok, "").astype(str))
    for column in columns:
        raw = df[column]
        values = _numeric(df, column)
        reason = pd.Series("", index=df.index, dtype=object)
        reason[raw.isna()] = f"{column} is missing"
        reason[raw.notna() & values.isna()] = f"{column} is not a number"
        reason[np.isinf(values.to_numpy())] = f"{column} is infinite"
        parts.append(reason)
    if not parts:
        return pd.Series("", index=df.index, dtype=object)
    joined = pd.concat(parts, axis=1).apply(lambda r: "; ".join(x for x in r if x), axis=1)
    return joined.astype(object) if len(df) else pd.Series("", index=df.index, dtype=object)


def _excluded_frame(df: pd.DataFrame, reasons: pd.Series, extra: Sequence[str] = ()) -> pd.DataFrame:
    mask = reasons.ne("")
    shown = [c for c in (*ID_COLUMNS, *extra, "status", "error") if c in df.columns]
    shown = list(dict.fromkeys(shown))
    out = df.loc[mask, shown].copy()
    out.insert(0, "reason", reasons[mask])
    return out


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Silence optuna's 'A new study created in memory' chatter without changing it for good."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def _optuna_front(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values`` ([n, k]) found by an optuna study."""
    mask = np.zeros(len(values), dtype=bool)
    if len(values) == 0:
        return mask
    with _quiet_optuna():
        study = optuna.create_study(directions=[o.direction for o in objectives])
        study.add_trials(
            optuna.trial.create_trial(values=[float(v) for v in row], user_attrs={"row": i})
            for i, row in enumerate(values)
        )
        best = study.best_trials
    mask[[int(t.user_attrs["row"]) for t in best]] = True
    return mask


def _annotate_front(front: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """Sort a frontier by its first objective (best first) and count rows that share a vector."""
    columns = [o.column for o in objectives]
    if front.empty:
        out = front.copy()
        out["n_identical"] = pd.Series(dtype=int)
        return out
    keys = front[columns].apply(pd.to_numeric, errors="coerce").astype(float)
    out = front.copy()
    out["n_identical"] = keys.groupby(columns, sort=False)[columns[0]].transform("size").astype(int)
    sort_keys = [f"__sort{i}" for i in range(len(objectives))]
    for key, objective in zip(sort_keys, objectives):
        out[key] = keys[objective.column] * objective.sign
    out = out.sort_values(sort_keys, kind="stable").drop(columns=sort_keys)
    return out


@dataclass(frozen=True, eq=False)
class FrontierResult:
    """Non-dominated rows of a results table, overall and per group, plus what was left out.

    ``front``: the overall frontier (original columns and index, plus ``n_identical``), best
    first by the first objective. ``group_fronts``: each group's frontier stacked, with a
    ``group`` column (empty when no ``group_by``). ``on_front``: a boolean per input row, True
    on the overall frontier. ``excluded``: rows that took no part, with a ``reason``.
    ``objectives`` are the ones actually used; ``notes`` explain fallbacks and conventions.
    """

    objectives: tuple[Objective, ...]
    requested: tuple[Objective, ...]
    group_by: tuple[str, ...]
    front: pd.DataFrame
    group_fronts: pd.DataFrame
    on_front: pd.Series
    excluded: pd.DataFrame
    n_rows: int
    n_valid: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fallback(self) -> bool:
        """True when the objectives used differ from the ones asked for (accuracy missing)."""
        return self.objectives != self.requested

    def fronts(self) -> dict[str, pd.DataFrame]:
        """Every frontier by label: ``'all'`` first, then one per group (``'llm=qwen2-0.5b'``)."""
        out = {OVERALL: self.front}
        if not self.group_fronts.empty:
            for label, part in self.group_fronts.groupby("group", sort=False):
                out[str(label)] = part.drop(columns="group")
        return out

    def summary(self) -> str:
        """Two or three sentences a CLI can print."""
        lines = [
            f"{len(self.front)} of {self.n_valid} valid rows are on the frontier of "
            f"{', '.join(map(str, self.objectives))} ({self.n_rows} rows, {len(self.excluded)} left out)."
        ]
        lines += list(self.notes)
        return "\n".join(lines)


def group_label(columns: Sequence[str], key: object) -> str:
    """How a group is named in results and figures: ``llm=qwen2-0.5b, encoder=fastvithd``."""
    values = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{c}={'<missing>' if pd.isna(v) else v}" for c, v in zip(columns, values))


def _choose_objectives(
    df: pd.DataFrame, valid_status: pd.Series, requested: tuple[Objective, ...], defaulted: bool
) -> tuple[tuple[Objective, ...], list[str]]:
    """Swap accuracy for a proxy when the defaults were asked for and no row has an accuracy."""
    if not defaulted:
        return requested, []
    has_accuracy = "accuracy" in df.columns and bool(
        np.isfinite(_numeric(df, "accuracy")[valid_status]).any()
    )
    if has_accuracy:
        return requested, []
    for proxy in ACCURACY_FALLBACKS:
        if proxy.column in df.columns and bool(np.isfinite(_numeric(df, proxy.column)[valid_status]).any()):
            chosen = tuple(proxy if o.column == "accuracy" else o for o in requested)
            note = (
                f"No row has an accuracy yet, so the frontier uses {proxy} as a stand-in for "
                "accuracy (more input detail for more latency); add accuracy to rank by it."
            )
            return chosen, [note]
    raise ValueError(
        "invalid df: no row has an accuracy, resolution or visual_tokens value to rank by; "
        f"columns are {sorted(map(str, df.columns))}"
    )


def pareto_front(
    df: pd.DataFrame,
    objectives: ObjectivesLike = None,
    group_by: str | Sequence[str] | None = None,
) -> FrontierResult:
    """Non-dominated design points of ``df`` for ``objectives``, overall and per ``group_by``.

    Default objectives: minimise ``ttft_ms``, maximise ``accuracy`` (with the documented
    fallback when no row has an accuracy). Failed rows and rows with a missing objective are
    left out and listed with the reason; identical objective vectors are all kept.
    """
    df = _check_frame(df)
    requested = parse_objectives(objectives)
    groups = _group_columns(group_by)
    _check_columns(df, groups, "group_by")
    ok_rows = status_ok(df)
    defaulted = objectives is None
    if not defaulted:
        _check_columns(df, [o.column for o in requested], "objectives")
    elif "ttft_ms" not in df.columns:
        _check_columns(df, ["ttft_ms"], "objectives")
    used, notes = _choose_objectives(df, ok_rows, requested, defaulted)
    columns = [o.column for o in used]

    reasons = _reasons(df, columns)
    valid = reasons.eq("")
    values = pd.DataFrame({c: _numeric(df, c) for c in columns}, index=df.index)[valid]

    on_front = pd.Series(False, index=df.index)
    on_front[values.index[_optuna_front(values.to_numpy(), used)]] = True
    front = _annotate_front(df.loc[on_front], used)

    parts: list[pd.DataFrame] = []
    if groups:
        valid_rows = df.loc[valid]
        for key, part in valid_rows.groupby(list(groups), sort=True, dropna=False):
            mask = _optuna_front(values.loc[part.index].to_numpy(), used)
            sub = _annotate_front(part.loc[mask], used)
            sub.insert(0, "group", group_label(groups, key))
            parts.append(sub)
    group_fronts = pd.concat(parts) if parts else pd.DataFrame(columns=["group", *df.columns])

    excluded = _excluded_frame(df, reasons, extra=columns)
    if len(excluded):
        notes.append(f"{len(excluded)} row(s) left out (failed, or a missing objective value): see 'excluded'.")
    if len(front) and int(front["n_identical"].max()) > 1:
        notes.append(
            "Some frontier rows share identical objective values; all of them are kept "
            "(n_identical > 1)."
        )
    return FrontierResult(
        objectives=used,
        requested=requested,
        group_by=groups,
        front=front,
        group_fronts=group_fronts,
        on_front=on_front,
        excluded=excluded,
        n_rows=len(df),
        n_valid=int(valid.sum()),
        notes=tuple(notes),
    )


#: objective column -> the (low, high) columns of its interval, where the table has them.
INTERVAL_COLUMNS: dict[str, tuple[str, str]] = {
    "accuracy": ("accuracy_low", "accuracy_high"),
    "ttft_ms": ("ttft_low_ms", "ttft_high_ms"),
}
#: The verdicts of :func:`frontier_membership`.
MEMBERSHIP: tuple[str, ...] = ("certain", "possible", "dominated")


def _dominates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For losses (lower is better): does row i of ``a`` dominate ``b`` (all <=, one <)? [n, n] matrix."""
    le = (a[:, None, :] <= b[None, :, :]).all(axis=2)
    lt = (a[:, None, :] < b[None, :, :]).any(axis=2)
    return le & lt


def frontier_membership(df: pd.DataFrame, objectives: ObjectivesLike = None,
                        group_by: str | Sequence[str] | None = None) -> pd.Series:
    """Whether each row is on the frontier given the objectives' intervals (:data:`INTERVAL_COLUMNS`).

    ``certain``: no other row could beat it on every objective even at the best end of that
    row's intervals and the worst end of its own; ``dominated``: another row beats it on every
    objective at the worst end of the other's intervals and the best end of its own; ``possible``:
    neither (the intervals overlap, so the order is not settled). An objective without interval
    columns counts as exact. Rows that cannot be judged (failed, missing values) get NA. With
    ``group_by``, each group is judged on its own (a frontier per LLM).
    """
    objs = parse_objectives(objectives)
    for o in objs:
        if o.column not in df.columns:
            raise ValueError(f"invalid objectives: column {o.column!r} is not in the table")
    out = pd.Series(pd.NA, index=df.index, dtype="object")
    ok = df["status"].eq("ok") if "status" in df.columns else pd.Series(True, index=df.index)
    columns = [o.column for o in objs]
    values = df[columns].apply(pd.to_numeric, errors="coerce")
    ok &= values.notna().all(axis=1)
    groups = [df.index[ok]]
    if group_by is not None:
        keys = [group_by] if isinstance(group_by, str) else list(group_by)
        groups = [part.index for _, part in df[ok].groupby(keys, dropna=False)]
    for index in groups:
        if len(index) == 0:
            continue
        best = np.empty((len(index), len(objs)))
        worst = np.empty_like(best)
        for k, o in enumerate(objs):
            point = values.loc[index, o.column].to_numpy(dtype=float)
            low = high = point
            cols = INTERVAL_COLUMNS.get(o.column)
            if cols is not None and all(c in df.columns for c in cols):
                low = pd.to_numeric(df.loc[index, cols[0]], errors="coerce").fillna(
                    pd.Series(point, index=index)).to_numpy(dtype=float)
                high = pd.to_numeric(df.loc[index, cols[1]], errors="coerce").fillna(
                    pd.Series(point, index=index)).to_numpy(dtype=float)
            low, high = np.minimum(low, point), np.maximum(high, point)
            # as losses: the best end is the low one of a minimised objective, the high one of a maximised
            best[:, k] = low if o.minimize else -high
            worst[:, k] = high if o.minimize else -low
        could_beat = _dominates(best, worst)  # [j, i]: j at its best beats i at its worst
        surely_beats = _dominates(worst, best)  # [j, i]: j at its worst beats i at its best
        np.fill_diagonal(could_beat, False)
        np.fill_diagonal(surely_beats, False)
        verdict = np.where(surely_beats.any(axis=0), "dominated",
                           np.where(could_beat.any(axis=0), "possible", "certain"))
        out.loc[index] = verdict
    return out


def best_under_budget(
    df: pd.DataFrame,
    budget_column: str = "ttft_ms",
    budget: float = 200.0,
    maximise: str = "accuracy",
    group_by: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Answer "what is the best I can get under 200 ms": per group, the valid row with the
    highest ``maximise`` among those with ``budget_column <= budget``.

    Ties on ``maximise`` go to the cheaper row (lower ``budget_column``), then to the earlier
    row. One row per group (``row`` holds its label in ``df``), with ``n_under_budget`` (how
    many valid rows fit) and ``cheapest_<budget_column>`` (the cheapest valid row, useful when
    nothing fits). Where the table has intervals (:data:`INTERVAL_COLUMNS`): ``n_tied`` / ``tied_with``
    (the labels of the other fitting rows whose ``maximise`` interval overlaps the best one's: no
    order between them is claimed) and ``within_budget`` (``"yes"`` when the best row's
    ``budget_column`` interval lies under the budget, ``"possibly not"`` when it reaches past it,
    ``"unknown"`` without interval columns). A group where nothing fits gets a row whose other columns are empty, so no
    group vanishes silently. Groups come from all rows, failed ones included.
    Failed rows and rows missing either value take no part.
    """
    df = _check_frame(df)
    if not isinstance(budget, numbers.Real) or isinstance(budget, bool) or not math.isfinite(budget):
        raise ValueError(f"invalid budget={budget!r}: a finite number in the units of {budget_column!r}")
    _check_columns(df, [budget_column], "budget_column")
    _check_columns(df, [maximise], "maximise")
    groups = _group_columns(group_by)
    _check_columns(df, groups, "group_by")

    valid = _reasons(df, [budget_column, maximise]).eq("")
    cost = _numeric(df, budget_column)
    gain = _numeric(df, maximise)
    rows = df.loc[valid].copy()
    rows["__cost"], rows["__gain"] = cost[valid], gain[valid]
    rows["__order"] = np.arange(len(rows))

    if groups:
        keys = df[list(groups)].drop_duplicates().sort_values(list(groups), na_position="last")
        grouped = {
            (k if isinstance(k, tuple) else (k,)): part
            for k, part in rows.groupby(list(groups), sort=False, dropna=False)
        }
        key_list = [tuple(k) for k in keys.itertuples(index=False, name=None)]
    else:
        grouped = {(): rows}
        key_list = [()]

    out: list[pd.DataFrame] = []
    for key in key_list:
        part = next((p for k, p in grouped.items() if _same_key(k, key)), rows.iloc[0:0])
        fits = part[part["__cost"] <= budget]
        if len(fits):
            order = ["__gain", "__cost", "__order"]
            ranked = fits.sort_values(order, ascending=[False, True, True])
            tied = _tied_labels(df, ranked, maximise)
            best = ranked.iloc[[0]].drop(columns=order).rename_axis("row").reset_index()
            best["n_tied"], best["tied_with"] = len(tied), [tuple(tied)]
            best["within_budget"] = _within_budget(df, ranked.index[0], budget_column, budget)
        else:
            best = pd.DataFrame({"row": [pd.NA], **{c: [v] for c, v in zip(groups, key)}})
            best["n_tied"], best["tied_with"], best["within_budget"] = 0, [()], pd.NA
        best["n_under_budget"] = len(fits)
        best[f"cheapest_{budget_column}"] = float(part["__cost"].min()) if len(part) else math.nan
        best["budget"] = float(budget)
        out.append(best)
    result = pd.concat(out, ignore_index=True)
    first = list(groups) + [c for c in (maximise, budget_column) if c not in groups]
    rest = [c for c in ["row", *df.columns, "n_under_budget", f"cheapest_{budget_column}", "budget", "n_tied",
                        "tied_with", "within_budget"]
            if c not in first]
    return result.reindex(columns=list(dict.fromkeys(first + rest)))


def _interval(df: pd.DataFrame, label: object, column: str) -> tuple[float, float] | None:
    """``(low, high)`` of ``column`` at row ``label`` from its interval columns (None without them)."""
    cols = INTERVAL_COLUMNS.get(column)
    if cols is None or not all(c in df.columns for c in cols):
        return None
    low, high = (pd.to_numeric(pd.Series([df.at[label, c]]), errors="coerce").iloc[0] for c in cols)
    value = pd.to_numeric(pd.Series([df.at[label, column]]), errors="coerce").iloc[0]
    low, high = (value if pd.isna(low) else low), (value if pd.isna(high) else high)
    return float(min(low, value)), float(max(high, value))


def _tied_labels(df: pd.DataFrame, ranked: pd.DataFrame, column: str) -> list[object]:
    """Labels of the rows of ``ranked`` (best first) whose ``column`` interval overlaps the first's."""
    from explorer.intervals import compare

    first = _interval(df, ranked.index[0], column)
    if first is None:
        return []
    return [label for label in ranked.index[1:] if compare(first, _interval(df, label, column)) == "tied"]


def _within_budget(df: pd.DataFrame, label: object, column: str, budget: float) -> str:
    bounds = _interval(df, label, column)
    if bounds is None:
        return "unknown"
    return "yes" if bounds[1] <= budget else "possibly not"


def _same_key(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all((pd.isna(x) and pd.isna(y)) or x == y for x, y in zip(a, b))


def _hv_minimise(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume dominated by ``points`` (all minimised, all <= reference).

    Sweeps the last objective: between consecutive levels the dominated region is a prism whose
    base is the (d-1)-dimensional hypervolume of the points already passed. Exact in any
    dimension; O(n^(d-1) log n), which is nothing for frontiers of a few hundred points in 2-3-D.
    """
    n, d = points.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(reference[0] - points[:, 0].min())
    order = np.argsort(points[:, -1], kind="stable")
    pts = points[order]
    levels = np.append(pts[:, -1], reference[-1])
    if d == 2:
        best_x = np.minimum.accumulate(pts[:, 0])
        return float(np.sum((reference[0] - best_x) * np.diff(levels)))
    total = 0.0
    for i in range(n):
        height = levels[i + 1] - levels[i]
        if height > 0:
            total += height * _hv_minimise(pts[: i + 1, :-1], reference[:-1])
    return float(total)


def _reference_array(
    reference_point: Sequence[float] | Mapping[str, float], objectives: Sequence[Objective]
) -> np.ndarray:
    if isinstance(reference_point, Mapping):
        missing = [o.column for o in objectives if o.column not in reference_point]
        if missing:
            raise ValueError(
                f"invalid reference_point={dict(reference_point)!r}: no value for {missing}"
            )
        ref = [reference_point[o.column] for o in objectives]
    else:
        ref = list(reference_point)
    if len(ref) != len(objectives):
        raise ValueError(
            f"invalid reference_point={reference_point!r}: {len(objectives)} values are needed, "
            f"one per objective ({', '.join(map(str, objectives))})"
        )
    try:
        array = np.asarray(ref, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"invalid reference_point={reference_point!r}: numbers are required") from None
    if not np.all(np.isfinite(array)):
        raise ValueError(f"invalid reference_point={reference_point!r}: every value must be finite")
    return array


def hypervolume(
    front_df: pd.DataFrame,
    objectives: ObjectivesLike,
    reference_point: Sequence[float] | Mapping[str, float],
) -> float:
    """Volume of objective space dominated by ``front_df`` and bounded by ``reference_point``.

    ``reference_point`` is in the columns' own units (e.g. ``{"ttft_ms": 1000, "accuracy": 40}``:
    the worst TTFT and accuracy worth counting). Maximised objectives are negated internally so
    every axis is a loss. Rows with a non-finite value, and rows not better than the reference
    in every objective, add no volume and are ignored. Exact (optuna keeps its own hypervolume
    in a private module, ``optuna._hypervolume``, so it is not relied on; the tests compare).
    """
    _check_frame(front_df, "front_df")
    objs = parse_objectives(objectives)
    _check_columns(front_df, [o.column for o in objs], "objectives")
    ref = _reference_array(reference_point, objs)
    signs = np.array([o.sign for o in objs])
    values = np.array([_numeric(front_df, o.column).to_numpy() for o in objs], dtype=float).T.reshape(-1, len(objs))
    losses = values * signs
    ref_loss = ref * signs
    keep = np.all(np.isfinite(losses), axis=1) & np.all(losses < ref_loss, axis=1)
    return _hv_minimise(losses[keep], ref_loss)


def reference_point_from(
    df: pd.DataFrame, objectives: ObjectivesLike = None, margin: float = 0.1
) -> dict[str, float]:
    """A reference point just past the worst valid value of each objective (the nadir).

    ``margin`` widens each axis by that fraction of its range, so the extreme frontier points
    still add volume. Only for comparing fronts drawn from the same table: hypervolumes with
    different reference points cannot be compared.
    """
    _check_frame(df)
    if not isinstance(margin, numbers.Real) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"invalid margin={margin!r}: a finite number >= 0")
    objs = parse_objectives(objectives)
    _check_columns(df, [o.column for o in objs], "objectives")
    valid = _reasons(df, [o.column for o in objs]).eq("")
    if not valid.any():
        raise ValueError("invalid df: no valid row (status 'ok' with every objective finite)")
    out: dict[str, float] = {}
    for o in objs:
        column = _numeric(df, o.column)[valid]
        lo, hi = float(column.min()), float(column.max())
        pad = margin * (hi - lo) if hi > lo else margin * max(abs(hi), 1.0)
        out[o.column] = hi + pad if o.minimize else lo - pad
    return out
