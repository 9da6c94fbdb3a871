"""The stability benchmark's arithmetic, on hand-made latencies."""
import math

import pytest

from explorer.engine.stability import StabilityArm, StabilityReport, order_violations, ratio_spread


def key(w, r, depth=None):
    knobs = (("depth_mult", depth), ("width_mult", w)) if depth is not None else (("width_mult", w),)
    return ("fastvithd", knobs, r)


def grid(f):
    return {key(w, r): f(w, r) for w in (0.5, 1.0) for r in (128, 256)}


def test_a_consistent_grid_has_no_violations():
    assert order_violations(grid(lambda w, r: w * r * r)) == []


def test_each_inverted_pair_is_named_once():
    lat = grid(lambda w, r: w * r * r)
    lat[key(0.5, 256)] = lat[key(1.0, 256)] + 1  # narrower but slower at 256: one violation
    assert order_violations(lat) == [(key(0.5, 256), key(1.0, 256))]
    lat[key(0.5, 128)] = 1e9  # now slower than everything it should beat: three more
    assert len(order_violations(lat)) == 4
    # settings the order does not compare (wider but smaller; other encoders) are never violations
    assert order_violations({key(0.5, 256): 10.0, key(1.0, 128): 5.0}) == []
    assert order_violations({key(0.5, 128): 10.0, ("vit", (("width_mult", 1.0),), 256): 5.0}) == []


def test_two_knobs_order_only_pairs_no_larger_in_both():
    lat = {key(1.0, 256, depth=0.5): 10.0, key(0.5, 256, depth=1.0): 9.0, key(1.0, 256, depth=1.0): 9.5}
    # (1.0, 0.5) and (0.5, 1.0) are not comparable; both are no costlier than (1.0, 1.0): the first is
    # measured slower than it, one violation
    assert order_violations(lat) == [(key(1.0, 256, depth=0.5), key(1.0, 256, depth=1.0))]


def test_ratio_spread_is_the_largest_relative_distance_from_the_median_ratio():
    quiet = {"a": 10.0, "b": 20.0, "c": 40.0}
    loaded = {"a": 20.0, "b": 44.0, "c": 76.0}  # ratios 2.0, 2.2, 1.9: median 2.0
    spread, ratios = ratio_spread(loaded, quiet)
    assert ratios == {"a": 2.0, "b": 2.2, "c": 1.9}
    assert spread == pytest.approx(0.1)
    assert math.isnan(ratio_spread({"x": 1.0}, {"y": 1.0})[0])


def _arm(name, lat, units, p10=None):
    return StabilityArm(name=name, neighbours=0, threads=1, latency_ms=lat, probe_units=units, probe_ms=1.0,
                        noisy=0, contended=0, other_cores=0.0, machine="quiet", load_average="0", elapsed_s=1.0,
                        p10_ms=p10 if p10 is not None else {})


def test_report_figures_from_medians_and_probe_units():
    q1 = grid(lambda w, r: w * r)
    loaded = {k: 2 * v for k, v in q1.items()}
    q2 = {k: 1.05 * v for k, v in q1.items()}
    q2[key(1.0, 256)] = q1[key(1.0, 256)] * 1.2  # the host ran slower for this one
    units = grid(lambda w, r: w * r / 10)
    report = StabilityReport(arms=[_arm("quiet-1", q1, units), _arm("loaded", loaded, units),
                                   _arm("quiet-2", q2, units)], command="x")
    fig = report.figures()
    assert fig["raw"]["ratio_spread"] == pytest.approx(0.0)
    assert fig["raw"]["quiet_agreement_max"] == pytest.approx(0.2)
    assert fig["probe"]["quiet_agreement_max"] == pytest.approx(0.0)
    assert fig["raw"]["order_violations"] == {"quiet-1": 0, "loaded": 0, "quiet-2": 0}
    text = report.markdown()
    assert "two quiet arms agree within 20.0%" in text and "fastvithd width_mult=1@256" in text


def test_report_figures_from_lower_deciles():
    q1 = grid(lambda w, r: w * r)
    p10_q1 = {k: 0.9 * v for k, v in q1.items()}
    p10_loaded = {k: 1.5 * v for k, v in p10_q1.items()}
    p10_loaded[key(0.5, 128)] *= 1.1  # one setting 10% off the common ratio
    p10_q2 = dict(p10_q1)
    report = StabilityReport(arms=[_arm("quiet-1", q1, {}, p10_q1), _arm("loaded", q1, {}, p10_loaded),
                                   _arm("quiet-2", q1, {}, p10_q2)], command="x")
    fig = report.figures()
    assert "probe" not in fig  # no probe units: that kind is left out
    assert fig["p10"]["ratio_spread"] == pytest.approx(0.1)
    assert fig["p10"]["quiet_agreement_max"] == pytest.approx(0.0)
    assert "Lower deciles (p10): order violations" in report.markdown()
