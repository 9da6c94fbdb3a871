"""What a search optimises and what it must respect: objectives and measured-value constraints."""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

from explorer.analysis import pareto
from explorer.checks import OptionError, check_number
from explorer.data.space import DesignPoint, Space
from explorer.data.store import Store

__all__ = ["CONSTRAINT_COLUMNS", "OBJECTIVE_COLUMNS", "SearchError", "SearchConstraints", "finite",
           "parse_search_objectives", "has_accuracy", "resolve_objectives"]

#: Search constraint -> the results-table column it limits (feasible when value <= limit).
CONSTRAINT_COLUMNS: dict[str, str] = {"max_ttft_ms": "ttft_ms", "max_params_m": "encoder_params_m"}

_TEXT_COLUMNS = frozenset({"point_key", "encoder", "knobs", "llm", "prefill_method", "accuracy_source", "device",
                           "dtype", "torch_version", "status", "error", "measured_at"})


def _objective_columns() -> tuple[str, ...]:
    from explorer.data.results import COLUMNS

    return tuple(c for c in COLUMNS if c not in _TEXT_COLUMNS)


#: Numeric columns of the results table an objective may name.
OBJECTIVE_COLUMNS: tuple[str, ...] = _objective_columns()


class SearchError(ValueError):
    """Bad search input (names the key, the value and what is allowed), raised before any work."""


def finite(value: Any) -> Optional[float]:
    """``value`` as a float when it is a finite number (pandas NA and NaN give None)."""
    try:
        if value is None or pd.isna(value):
            return None
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


@dataclass(frozen=True)
class SearchConstraints:
    """Limits on measured values; a point over a limit is measured but marked infeasible.

    (The space's own ``constraints:`` drop points before anything is measured; these need a
    measurement to be judged, so optuna learns from them instead.)
    """

    max_ttft_ms: Optional[float] = None  # time to first token, milliseconds
    max_params_m: Optional[float] = None  # encoder parameters, millions

    def __post_init__(self) -> None:
        for name in CONSTRAINT_COLUMNS:
            check_number(f"search.{name}", getattr(self, name), low=0, low_open=True, optional=True,
                         none_means="no limit")

    def active(self) -> dict[str, tuple[str, float]]:
        """``name -> (column, limit)`` of the limits that are set."""
        return {n: (c, float(getattr(self, n))) for n, c in CONSTRAINT_COLUMNS.items() if getattr(self, n) is not None}

    def to_dict(self) -> dict[str, float]:
        return {n: lim for n, (_, lim) in self.active().items()}

    def violations(self, row: Mapping[str, Any]) -> dict[str, float]:
        """``name -> value - limit`` (> 0 is infeasible); a missing value counts as infeasible."""
        out: dict[str, float] = {}
        for name, (column, limit) in self.active().items():
            value = finite(row.get(column))
            out[name] = float("inf") if value is None else value - limit
        return out

    @classmethod
    def from_options(cls, options: Any) -> "SearchConstraints":
        """The limits set in :class:`~explorer.engine.options.SearchOptions`."""
        return cls(**{name: getattr(options, name) for name in CONSTRAINT_COLUMNS})


def parse_search_objectives(objectives: Any) -> tuple[pareto.Objective, ...]:
    """Objectives on numeric results columns, refused with the column named otherwise."""
    try:
        parsed = pareto.parse_objectives(objectives)
    except ValueError as err:
        raise SearchError(f"invalid search.objectives={objectives!r}: {err}") from None
    for o in parsed:
        if o.column not in OBJECTIVE_COLUMNS:
            raise OptionError("search.objectives", objectives, f"column {o.column!r} is not a numeric results "
                              f"column; allowed: {', '.join(OBJECTIVE_COLUMNS)}")
    return parsed


def has_accuracy(store: Store, space: Space, points: Iterable[DesignPoint]) -> bool:
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

    Same convention as :func:`explorer.analysis.pareto.pareto_front`: when the defaults were asked for and no
    accuracy is known for this space, accuracy is replaced by the first of
    :data:`explorer.analysis.pareto.ACCURACY_FALLBACKS` (``resolution:max``: more input detail for more latency).
    """
    if objectives is not None:
        return parse_search_objectives(objectives), []
    if has_accuracy:
        return pareto.DEFAULT_OBJECTIVES, []
    proxy = pareto.ACCURACY_FALLBACKS[0]
    used = tuple(proxy if o.column == "accuracy" else o for o in pareto.DEFAULT_OBJECTIVES)
    return used, [f"no accuracy is stored for this space, so the search uses {proxy} as a stand-in for accuracy "
                  "(pareto.py's convention); store accuracy or pass objectives to change it"]
