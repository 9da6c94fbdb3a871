"""Re-measurement intervals, verdicts and the drift calibration (explorer.intervals), on injected
timings whose intervals are worked out by hand from the documented model (docs/measurement.md,
"Re-measurement intervals")."""
import math

import pytest

from explorer.intervals import (DEFAULT_DRIFT, DRIFT_SD, MIN_CALIBRATION_PAIRS, Drift, Interval, calibrate, compare,
                                ratio_interval, remeasure_interval, sum_intervals, within_run_sd, z_of)
from explorer.measure.costs import Timing
from explorer.measure.prefill import combine_scaled
from explorer.measure.timing import summarize

Z90, Z95 = 1.6448536269514722, 1.959963984540054


def timing(median, ci_low=None, ci_high=None, n=20, **extra):
    return {"median_ms": median, "p10_ms": median, "p90_ms": median, "mean_ms": median, "cv": 0.0, "n": n,
            "ci_low_ms": median if ci_low is None else ci_low, "ci_high_ms": median if ci_high is None else ci_high,
            "noisy": False, **extra}


def test_sampling_term_alone_by_hand():
    # the 95% CI of the median is +-1% on the log scale (sd 0.01); no probe, no drift: a
    # re-measurement's median differs by two medians' errors, sd 0.01 * sqrt(2); at 90% that is
    # 1.6449 * 0.014142 = 0.023262 on the log scale: [97.70, 102.35]
    t = timing(100.0, 100.0 * math.exp(-Z95 * 0.01), 100.0 * math.exp(Z95 * 0.01))
    got = remeasure_interval(t, 0.9, Drift(sd=0.0))
    assert got.low == pytest.approx(97.7007, abs=1e-3) and got.high == pytest.approx(102.3535, abs=1e-3)
    assert got.level == 0.9


def test_every_term_by_hand():
    # median 100, CI [98, 103] from 20 samples, probe p10..p90 = 2.0..2.2 ms, default drift 0.09:
    #   s_lo = ln(100/98)/1.96 = 0.0103078, s_hi = ln(1.03)/1.96 = 0.0150814
    #   s_p  = ln(1.1)/(2*1.28155) = 0.0371854
    #   within the run: sqrt(2*0.0103078^2 + 0.0371854^2) = 0.0399407, sqrt(2*0.0150813^2 + 0.0371854^2) = 0.0428678
    #   lower: sqrt(0.0399407^2 + 0.09^2) = 0.0984648 -> x1.6449 = 0.161962 -> 100 exp(-0.161962) = 85.048
    #   upper: sqrt(0.0428678^2 + 0.09^2) = 0.0996873 -> x1.6449 = 0.163973 -> 100 exp(+0.163973) = 117.818
    t = timing(100.0, 98.0, 103.0, probe_p10_ms=2.0, probe_p90_ms=2.2)
    got = remeasure_interval(t)
    assert got.low == pytest.approx(85.048, abs=2e-3) and got.high == pytest.approx(117.818, abs=2e-3)
    lo, hi = within_run_sd(t)
    assert lo == pytest.approx(0.0399407, abs=1e-6) and hi == pytest.approx(0.0428678, abs=1e-6)


def test_few_samples_use_the_coverage_of_min_max():
    # n = 5: [min, max] covers the median with 1 - 2/32 = 0.9375, z = 1.8627; CI +-5% on the log scale
    t = timing(100.0, 100.0 * math.exp(-0.05), 100.0 * math.exp(0.05), n=5)
    lo, hi = within_run_sd(t)
    assert lo == pytest.approx(math.sqrt(2) * 0.05 / 1.862732, rel=1e-5) and hi == pytest.approx(lo)


def test_a_payload_without_a_ci_uses_p10_p90_and_n():
    # p10..p90 = 90..110 over 16 samples: sd of a sample ln(110/90)/2.5631 = 0.078290, of the median
    # 1.2533 * 0.078290 / 4 = 0.024530, of a re-measurement's difference x sqrt(2) = 0.034691
    t = {"median_ms": 100.0, "p10_ms": 90.0, "p90_ms": 110.0, "n": 16}
    lo, hi = within_run_sd(t)
    assert lo == pytest.approx(0.034691, abs=1e-5) and hi == lo


def test_the_stored_interval_is_used_at_its_level_and_default_drift_only():
    t = timing(100.0, remeasure_low_ms=70.0, remeasure_high_ms=140.0, remeasure_level=0.9)
    assert remeasure_interval(t) == Interval(70.0, 140.0, 0.9)
    computed = remeasure_interval(t, 0.8)  # another level: from the statistics, drift only here
    assert computed.low == pytest.approx(100 * math.exp(-1.281552 * DRIFT_SD), rel=1e-5)
    assert remeasure_interval(t, 0.9, Drift(sd=0.0)) == Interval(100.0, 100.0, 0.9)
    assert remeasure_interval(timing(0.0)) is None and remeasure_interval({"n": 3}) is None


def test_summarize_stores_the_interval_and_the_probe_spread():
    samples = [10.0, 11.0, 12.0, 10.5, 11.5, 10.8, 11.2, 10.9]
    probes = [1.0, 1.1, 1.2, 1.0, 1.0, 1.05, 1.0, 1.0]
    t = summarize(samples, False, probes_ms=probes)
    # probe p10 / p90 by linear interpolation over the sorted probes: 1.0 and 1.1 + 0.3 * 0.1 = 1.13
    assert t.probe_p10_ms == pytest.approx(1.0) and t.probe_p90_ms == pytest.approx(1.13)
    # n = 8 is below 10: the CI of the median is [x(1), x(8)] = [10, 12] (coverage 99.2%)
    assert (t.ci_low_ms, t.ci_high_ms) == (10.0, 12.0)
    again = remeasure_interval(t, stored=False)
    assert (t.remeasure_low_ms, t.remeasure_high_ms, t.remeasure_level) == (again.low, again.high, 0.9)
    assert t.remeasure_low_ms < t.ci_low_ms and t.remeasure_high_ms > t.ci_high_ms
    assert Timing.from_dict(t.to_dict()) == t
    older = {k: v for k, v in t.to_dict().items() if not k.startswith(("remeasure", "probe_p"))}
    assert Timing(**older).remeasure_low_ms is None  # older payloads still load


def test_layer_sampled_prefill_adds_the_intervals():
    a = Timing(10.0, 9.0, 11.0, 10.0, 0.1, 6, 9.5, 10.5, False, remeasure_low_ms=8.0, remeasure_high_ms=12.0,
               remeasure_level=0.9)
    b = Timing(2.0, 1.8, 2.2, 2.0, 0.1, 6, 1.9, 2.1, False, remeasure_low_ms=1.5, remeasure_high_ms=2.5,
               remeasure_level=0.9)
    c = combine_scaled(a, b, 11.0)
    assert (c.remeasure_low_ms, c.remeasure_high_ms, c.remeasure_level) == (8.0 + 16.5, 12.0 + 27.5, 0.9)
    assert combine_scaled(a, Timing(2.0, 1.8, 2.2, 2.0, 0.1, 6, 1.9, 2.1, False), 1.0).remeasure_low_ms is None


@pytest.mark.parametrize("a, b, verdict", [
    ((1.0, 2.0), (2.5, 3.0), "faster"),
    ((2.5, 3.0), (1.0, 2.0), "slower"),
    ((1.0, 2.0), (2.0, 3.0), "tied"),  # touching: not separated
    ((1.0, 3.0), (1.5, 2.0), "tied"),
    ((1.0, float("nan")), (5.0, 6.0), "tied"),  # a missing bound claims nothing
    (None, (5.0, 6.0), "tied"),
])
def test_compare(a, b, verdict):
    assert compare(a, b) == verdict
    if a is not None and all(math.isfinite(v) for v in a):  # Interval objects answer the same
        assert compare(Interval(*a), Interval(*b)) == verdict


def test_sums_and_ratios():
    total = sum_intervals([Interval(1, 2), Interval(10, 12), Interval(0.5, 0.6)])
    assert (total.low, total.high) == (11.5, 14.6)
    assert sum_intervals([Interval(1, 2), None]) is None
    with pytest.raises(ValueError):
        sum_intervals([Interval(1, 2, 0.9), Interval(1, 2, 0.5)])
    assert ratio_interval((2, 4), (1, 2)) == (1.0, 4.0)


def test_calibration_is_the_empirical_quantile_of_the_unexplained_part():
    # ten exact earlier values (no CI width, no probe) re-measured 1%, 2%, ..., 10% higher: the
    # excess is the whole log ratio; at 90% the 9th smallest, ln(1.09); at 50% the 5th, ln(1.05)
    pairs = [(timing(100.0), timing(100.0 * (1 + i / 100))) for i in range(1, 11)]
    drift = calibrate(pairs)
    assert drift.calibrated and drift.describe() == "calibrated from 10 re-measurements"
    assert drift.half_width(0.9) == pytest.approx(math.log(1.09))
    assert drift.half_width(0.5) == pytest.approx(math.log(1.05))
    got = remeasure_interval(timing(200.0), 0.9, drift)
    assert (got.low, got.high) == pytest.approx((200 / 1.09, 200 * 1.09))
    # a within-run part explains some of each ratio: a CI that makes the re-measurement sd u = 0.02
    # (each median's sd u / sqrt 2); the excess at 90% is sqrt(r^2 - (1.6449 u)^2) of the 9th
    u = 0.02
    wide = timing(100.0, 100 * math.exp(-Z95 * u / math.sqrt(2)), 100 * math.exp(Z95 * u / math.sqrt(2)))
    drift = calibrate([(wide, timing(100.0 * (1 + i / 100))) for i in range(1, 11)])
    assert drift.half_width(0.9) == pytest.approx(math.sqrt(math.log(1.09) ** 2 - (Z90 * u) ** 2), rel=1e-6)
    # too few pairs: the default stays
    few = calibrate(pairs[:MIN_CALIBRATION_PAIRS - 1])
    assert not few.calibrated and few.half_width(0.9) == pytest.approx(Z90 * DRIFT_SD)
    assert DEFAULT_DRIFT.describe() == f"default (sd {DRIFT_SD:g})"


def test_bad_levels_and_drifts_are_refused():
    for level in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="level"):
            z_of(level)
    with pytest.raises(ValueError, match="drift.sd"):
        Drift(sd=-0.1)
    with pytest.raises(ValueError, match="interval"):
        Interval(2.0, 1.0)
