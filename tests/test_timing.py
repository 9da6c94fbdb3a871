"""The timer: statistics, the median's order-statistic CI, stopping rule, and state restoration."""
import gc
import math
import time

import pytest
import torch
from torch import nn

from explorer.measure.costs import Timing
from explorer.measure.memory import CPU_METHOD, measure_peak_memory, tensor_bytes
from explorer.measure.settings import MeasureSettings
from explorer.measure.timing import converged, median_ci, median_ci_ranks, percentile, summarize, time_callable

FAST = MeasureSettings(device="cpu", threads=1, warmup_s=0.0, warmup_iters=1, min_iters=3, max_iters=30,
                       max_time_s=2.0, target_rel_ci=0.5)


def test_median_ci_ranks_match_binomial_tables():
    assert median_ci_ranks(5) is None  # 2 * 2**-5 = 6.25% > 5%: no 95% interval exists
    assert median_ci_ranks(6) == (1, 6)
    assert median_ci_ranks(10) == (2, 9)
    assert median_ci_ranks(20) == (6, 15)
    assert median_ci_ranks(100) == (40, 61)
    # coverage of the chosen ranks is >= 95% and one rank tighter would be < 95%
    for n in (6, 11, 37, 200):
        lo, _ = median_ci_ranks(n)
        below = sum(math.comb(n, i) for i in range(lo)) / 2**n
        tighter = sum(math.comb(n, i) for i in range(lo + 1)) / 2**n
        assert 1 - 2 * below >= 0.95 > 1 - 2 * tighter


def _exact_lower_rank(n: int) -> int:
    """The oracle, in exact rationals: the largest l with P(B <= l - 1) <= 2.5%, B ~ Binomial(n, 1/2)."""
    from fractions import Fraction

    total, cdf, best = 2 ** n, 0, 0
    for l in range(1, n // 2 + 1):
        cdf += math.comb(n, l - 1)
        if Fraction(cdf, total) <= Fraction(1, 40):
            best = l
        else:
            break
    return best


def test_median_ci_ranks_for_thousands_of_samples():
    # 2**1024 overflows a float: a fast call timed for 0.8 s reached 1024 samples and raised
    # OverflowError before; exact arithmetic up to 2000 samples, a normal approximation beyond
    for n in (1023, 1024, 1500, 2000):
        assert median_ci_ranks(n) == (_exact_lower_rank(n), n - _exact_lower_rank(n) + 1)
    for n in (2001, 3000, 5000):
        lo, hi = median_ci_ranks(n)
        assert abs(lo - _exact_lower_rank(n)) <= 1 and hi == n - lo + 1
    assert median_ci_ranks(100_000)[0] == pytest.approx(50_000 - 1.96 * 158.1, abs=2)


def test_summarize_hand_values():
    xs = [float(i) for i in range(1, 11)]  # 1..10
    t = summarize(xs, noisy=False)
    assert t.median_ms == 5.5
    assert t.p10_ms == pytest.approx(1.9) and t.p90_ms == pytest.approx(9.1)
    assert t.mean_ms == 5.5 and t.n == 10
    assert t.cv == pytest.approx(math.sqrt(sum((x - 5.5) ** 2 for x in xs) / 9) / 5.5)
    assert (t.ci_low_ms, t.ci_high_ms) == (2.0, 9.0)
    assert percentile([3.0], 90) == 3.0
    lo, hi, exact = median_ci([1.0, 2.0, 3.0])
    assert (lo, hi, exact) == (1.0, 3.0, False)


def test_converged_rule():
    tight = [100.0 + 0.1 * i for i in range(20)]
    wide = [100.0 + 10 * i for i in range(20)]
    assert converged(tight, 0.02)
    assert not converged(wide, 0.02)
    assert not converged(tight[:5], 0.02)  # too few samples for a 95% interval


def test_timer_returns_every_field_for_a_sleep():
    t = time_callable(lambda: time.sleep(0.003), FAST)
    assert isinstance(t, Timing)
    assert 2.9 <= t.median_ms < 1000  # milliseconds: a sleep is never shorter; 3000 would be microseconds
    assert t.p10_ms <= t.median_ms <= t.p90_ms
    assert t.ci_low_ms <= t.median_ms <= t.ci_high_ms
    assert t.n >= FAST.min_iters and t.mean_ms > 0 and t.cv >= 0
    # noisy means: a cap ended the protocol before the median's CI was within the target
    within = median_ci_ranks(t.n) is not None and \
        t.median_ms - t.ci_low_ms <= FAST.target_rel_ci * t.median_ms and \
        t.ci_high_ms - t.median_ms <= FAST.target_rel_ci * t.median_ms
    assert t.noisy == (not within)


def test_timer_stops_as_soon_as_the_interval_is_tight_on_a_steady_clock():
    """A fake clock that each call advances by exactly 3 ms: median 3.0, not noisy, and the
    protocol stops at the first sample count with a 95% interval (6) instead of running to the caps."""
    clock = [0]

    def call() -> None:
        clock[0] += 3_000_000

    t = time_callable(call, FAST.replace(probe=False), clock=lambda: clock[0])
    assert (t.median_ms, t.p10_ms, t.p90_ms, t.cv) == (3.0, 3.0, 3.0, 0.0)
    assert not t.noisy and t.n == 6
    jitter = iter([1, 9] * 100)

    def noisy_call() -> None:
        clock[0] += next(jitter) * 1_000_000

    wide = time_callable(noisy_call, FAST.replace(probe=False, target_rel_ci=0.01), clock=lambda: clock[0])
    assert wide.noisy and wide.n == FAST.max_iters  # never within 1 %: the sample cap ends it


def test_tiny_cap_sets_noisy():
    model = nn.Linear(8, 8)
    x = torch.randn(4, 8)
    capped = FAST.replace(min_iters=1, max_iters=3, target_rel_ci=0.01)
    t = time_callable(lambda: model(x), capped, module=model)
    assert t.n == 3 and t.noisy  # 3 samples can never give a 95% CI of the median
    t = time_callable(lambda: time.sleep(0.02), FAST.replace(min_iters=1, max_time_s=0.001))
    assert t.n == 1 and t.noisy  # the time cap stops after the first sample


def test_short_calls_are_repeated_within_a_sample():
    calls = []
    t = time_callable(lambda: calls.append(1), FAST.replace(max_iters=5, min_iters=5))
    assert t.n == 5
    assert len(calls) > 5 * 10  # each sample held many calls of a microsecond function
    assert t.median_ms < 1.0


def test_state_restored_even_on_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    model.train()
    threads = torch.get_num_threads()
    calls = {"n": 0}

    def boom():
        calls["n"] += 1
        assert not model.training and not model[1].training  # eval mode while measuring
        assert torch.is_inference_mode_enabled()
        assert not gc.isenabled()
        assert torch.get_num_threads() == 1
        if calls["n"] > 2:
            raise RuntimeError("fail inside the timed loop")
        time.sleep(0.002)

    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="timed loop"):
        time_callable(boom, FAST.replace(warmup_iters=2), module=model)
    assert gc.isenabled()
    assert model.training and model[1].training
    assert torch.get_num_threads() == threads


def test_cpu_peak_memory_sees_live_intermediates():
    model = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256))
    x = torch.randn(128, 256)
    peak = measure_peak_memory(lambda: model(x), FAST, resident=(model, x))
    resident = tensor_bytes(model, x)
    assert resident == 4 * (256 * 1024 * 2 + 1024 + 256) + 4 * 128 * 256
    assert peak.method == CPU_METHOD
    intermediates = 2 * 128 * 1024 * 4  # Linear output and GELU output are alive together
    assert peak.peak_mb * 2**20 >= resident + intermediates
    assert peak.peak_mb * 2**20 <= resident + intermediates + 2**20
