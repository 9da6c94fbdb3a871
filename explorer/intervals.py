"""Re-measurement intervals and the verdicts they support.

One idea: where a re-measurement of a stored latency, in another run on the same machine, would
land, and which comparisons that allows. Plain Python (no torch, no pandas), so measurement stores
the interval with each timing, the results table gives it per factor and for TTFT, and the
summary, the report, ``best_under_budget``, ``explorer validate`` and the runtime ratios compare
with :func:`compare`. The model is stated in docs/measurement.md ("Re-measurement intervals").

The model, on the log scale (a ratio of latencies is what drifts), for a timing with median ``m``,
the order-statistic 95% CI of its median ``[c_lo, c_hi]`` over ``n`` samples and, when the reference
probe ran, the probe's 10th/90th percentiles ``[p10, p90]`` over the samples; ``z`` is the normal
quantile of the level (1.645 at 90%)::

    sampling   s_lo = ln(m / c_lo) / z_ci,  s_hi = ln(c_hi / m) / z_ci      (z_ci: 1.96 for n >= 6)
               h_s  = z * sqrt(2) * s                                      (two medians, each with its error)
    probe      h_p  = z * ln(p90 / p10) / (2 * 1.2816)                     (the host's speed spread over the samples)
    drift      h_d  = z * DRIFT_SD, or the level's quantile of the excess of re-measurements (calibrated)
    interval   [m * exp(-sqrt(h_s_lo^2 + h_p^2 + h_d^2)), m * exp(+sqrt(h_s_hi^2 + h_p^2 + h_d^2))]

``h_d`` is the between-run drift the run itself cannot see (the host's speed modes last tens of
seconds and the probe does not follow every model's slowdown). :func:`calibrate` sets it from
pairs of (earlier, later) values of the same measurement: for each pair the part of
``|ln(later / earlier)|`` the within-run terms do not explain, ``sqrt(max(0, r^2 - h_s^2 - h_p^2))``;
the level's empirical quantile of those is ``h_d`` at that level.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from explorer.checks import check_number, require

__all__ = ["LEVEL", "LEVELS", "DRIFT_SD", "MIN_CALIBRATION_PAIRS", "VERDICTS", "Interval", "Drift", "DEFAULT_DRIFT",
           "z_of", "remeasure_interval", "within_run_sd", "calibrate", "compare", "ratio_interval",
           "sum_intervals"]

#: The level of the intervals the tool prints unless told otherwise.
LEVEL = 0.9
#: The levels the coverage benchmark checks.
LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
#: Default between-run drift: the standard deviation of ``ln(later / earlier)`` that the within-run
#: terms leave unexplained. From the quiet-arm ratios of docs/benchmarks.md ("Stability": 36 values
#: of 9 settings in four pairs of quiet sweeps; 32 of them within the +-16% this puts at 90%).
#: Replaced by :func:`calibrate` where the store holds re-measurements.
DRIFT_SD = 0.09
#: Fewer re-measured pairs than this leave the default drift in place (a quantile of a handful is noise).
MIN_CALIBRATION_PAIRS = 10
#: What :func:`compare` answers.
VERDICTS: tuple[str, ...] = ("faster", "slower", "tied")

_Z_CI = statistics.NormalDist().inv_cdf(0.975)  # the stored CI of the median is a 95% one (n >= 6)
_Z_DECILE = statistics.NormalDist().inv_cdf(0.9)  # p10..p90 of a normal spans 2 x 1.2816 sd


def z_of(level: float) -> float:
    """The two-sided normal quantile of ``level`` (1.645 at 0.9)."""
    check_number("level", level, low=0.0, high=1.0, low_open=True)
    require(level < 1.0, "level", level, "a fraction in (0, 1)")
    return statistics.NormalDist().inv_cdf(0.5 + level / 2.0)


@dataclass(frozen=True)
class Interval:
    """``[low, high]`` milliseconds (or any unit) at ``level``."""

    low: float
    high: float
    level: float = LEVEL

    def __post_init__(self) -> None:
        require(not (self.low > self.high), "interval", (self.low, self.high), "low <= high")

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class Drift:
    """The drift allowance: ``sd`` (the default model), or, with at least
    :data:`MIN_CALIBRATION_PAIRS` re-measured ``pairs`` (``|ln(later / earlier)|``, the earlier
    value's within-run sd on that side), their empirical quantile: at a level, the drift term is
    the level's quantile of ``sqrt(max(0, r^2 - (z u)^2))`` over the pairs."""

    sd: float = DRIFT_SD
    pairs: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        check_number("drift.sd", self.sd, low=0.0, high=5.0)
        pairs = tuple((float(check_number("drift.pairs", r, low=0.0)), float(check_number("drift.pairs", u, low=0.0)))
                      for r, u in self.pairs)
        object.__setattr__(self, "pairs", pairs)

    @property
    def calibrated(self) -> bool:
        return len(self.pairs) >= MIN_CALIBRATION_PAIRS

    def half_width(self, level: float = LEVEL) -> float:
        """The drift term on the log scale at ``level``."""
        z = z_of(level)
        if not self.calibrated:
            return z * self.sd
        excess = sorted(math.sqrt(max(0.0, r * r - (z * u) ** 2)) for r, u in self.pairs)
        k = min(len(excess), max(1, math.ceil(level * len(excess) - 1e-9)))  # at least `level` of them covered
        return excess[k - 1]

    def describe(self) -> str:
        if self.calibrated:
            return f"calibrated from {len(self.pairs)} re-measurements"
        return f"default (sd {self.sd:g})"


DEFAULT_DRIFT = Drift()


def _get(timing: Any, name: str) -> Optional[float]:
    value = timing.get(name) if isinstance(timing, Mapping) else getattr(timing, name, None)
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def within_run_sd(timing: Any) -> Optional[tuple[float, float]]:
    """``(lower, upper)`` standard deviations on the log scale of a re-measurement's median around
    this one from the run itself (two medians' sampling errors and the probe's spread), without
    the drift term; times ``z_of(level)`` they are half-widths. None without a positive median."""
    m = _get(timing, "median_ms")
    if m is None or m <= 0:
        return None
    n = _get(timing, "n") or 0.0
    lo, hi = _get(timing, "ci_low_ms"), _get(timing, "ci_high_ms")
    if lo is not None and hi is not None and 0 < lo <= m <= hi:
        # n < 6: the stored CI is [min, max], which covers the median with 1 - 2 / 2**n
        z_ci = _Z_CI if n >= 6 else (z_of(1.0 - 2.0 * 0.5 ** n) if n >= 2 else 0.0)
        s_lo = math.log(m / lo) / z_ci if z_ci > 0 else 0.0
        s_hi = math.log(hi / m) / z_ci if z_ci > 0 else 0.0
    else:  # no usable CI: the median's spread from p10..p90 and n (normal: 1.2533 sd / sqrt(n))
        p10, p90 = _get(timing, "p10_ms"), _get(timing, "p90_ms")
        if p10 is not None and p90 is not None and 0 < p10 <= p90 and n >= 1:
            s_lo = s_hi = 1.2533 * math.log(p90 / p10) / (2 * _Z_DECILE) / math.sqrt(n)
        else:
            s_lo = s_hi = 0.0
    q10, q90 = _get(timing, "probe_p10_ms"), _get(timing, "probe_p90_ms")
    s_p = math.log(q90 / q10) / (2 * _Z_DECILE) if q10 is not None and q90 is not None and 0 < q10 <= q90 else 0.0
    return math.hypot(math.sqrt(2.0) * s_lo, s_p), math.hypot(math.sqrt(2.0) * s_hi, s_p)


def remeasure_interval(timing: Any, level: float = LEVEL, drift: Drift = DEFAULT_DRIFT,
                       stored: bool = True) -> Optional[Interval]:
    """Where a re-measurement of ``timing`` (a :class:`~explorer.measure.costs.Timing` or its stored
    dict) in another run on the same machine would land, at ``level``. ``stored``: use the bounds
    stored with the timing when they were made at this level with the default drift (the
    measurement's own); else computed from its statistics. None when it has no positive median."""
    if stored and drift == DEFAULT_DRIFT:
        low, high, at = (_get(timing, "remeasure_low_ms"), _get(timing, "remeasure_high_ms"),
                         _get(timing, "remeasure_level"))
        if low is not None and high is not None and at is not None and abs(at - level) < 1e-9 and low <= high:
            return Interval(low, high, level)
    within = within_run_sd(timing)
    if within is None:
        return None
    m = float(_get(timing, "median_ms"))  # type: ignore[arg-type]
    z, h_d = z_of(level), drift.half_width(level)
    return Interval(m * math.exp(-math.hypot(z * within[0], h_d)), m * math.exp(math.hypot(z * within[1], h_d)),
                    level)


def calibrate(pairs: Iterable[tuple[Any, Any]], base: Drift = DEFAULT_DRIFT) -> Drift:
    """The drift from ``(earlier, later)`` timings of the same measurement in the same environment
    (dicts or Timings; the store's ``measurement_history``): ``base`` with the pairs that have
    positive medians, which replace its ``sd`` once there are :data:`MIN_CALIBRATION_PAIRS`."""
    kept = []
    for earlier, later in pairs:
        u = within_run_sd(earlier)
        a, b = _get(earlier, "median_ms"), _get(later, "median_ms")
        if u is None or a is None or b is None or a <= 0 or b <= 0:
            continue
        r = math.log(b / a)
        kept.append((abs(r), u[1] if r > 0 else u[0]))
    return Drift(sd=base.sd, pairs=tuple(kept))


def _bounds(x: Union[Interval, Sequence[float], None]) -> Optional[tuple[float, float]]:
    if x is None:
        return None
    low, high = (x.low, x.high) if isinstance(x, Interval) else (x[0], x[1])
    try:
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return low, high


def compare(a: Union[Interval, Sequence[float], None], b: Union[Interval, Sequence[float], None]) -> str:
    """``"faster"`` when all of ``a`` lies below ``b`` (a latency: lower is faster), ``"slower"`` when
    above, else ``"tied"``: the intervals overlap (or one is missing), so no order is claimed."""
    x, y = _bounds(a), _bounds(b)
    if x is None or y is None:
        return "tied"
    if x[1] < y[0]:
        return "faster"
    if x[0] > y[1]:
        return "slower"
    return "tied"


def ratio_interval(a: Union[Interval, Sequence[float]],
                   b: Union[Interval, Sequence[float]]) -> Optional[tuple[float, float]]:
    """The range of ``a / b`` over both intervals (positive values only), or None."""
    x, y = _bounds(a), _bounds(b)
    if x is None or y is None or y[0] <= 0 or x[0] < 0:
        return None
    return x[0] / y[1], x[1] / y[0]


def sum_intervals(parts: Iterable[Optional[Interval]]) -> Optional[Interval]:
    """The interval of a sum (TTFT) as the sum of the bounds: the host's drift moves every part the
    same way, so the bounds add (conservative for the sampling terms). None if any part is None."""
    items = list(parts)
    if not items or any(p is None for p in items):
        return None
    levels = {p.level for p in items}  # type: ignore[union-attr]
    require(len(levels) == 1, "levels", sorted(levels), "intervals of one level")
    return Interval(sum(p.low for p in items), sum(p.high for p in items), levels.pop())  # type: ignore[union-attr]
