"""The interleaved schedule, with injected timings: a fake clock that each fake call advances.

Oracle: a burst that slows the machine for a stretch of calls. Measured one after another, it
lands on one configuration and distorts the ratios; in shuffled rounds it is shared and the
medians keep the true ratios (1 : 2 : 4) exactly.
"""
import pytest

from explorer.measure.contention import CpuCounters
from explorer.measure.interleave import run_interleaved
from explorer.measure.settings import MeasureSettings
from explorer.measure.timing import time_callable

SETTINGS = MeasureSettings(device="cpu", warmup_iters=1, warmup_s=0.0, min_iters=9, max_iters=12,
                           max_time_s=1000.0, target_rel_ci=0.01, probe=False)
BASE_MS = {"a": 10.0, "b": 20.0, "c": 40.0}


class FakeMachine:
    """A clock in ns and a call counter; calls number [lo, hi) run 3x slower (the burst)."""

    def __init__(self, lo: int, hi: int):
        self.t_ns = 0
        self.calls = 0
        self.lo, self.hi = lo, hi
        self.log: list[str] = []

    def clock(self) -> int:
        return self.t_ns

    def counters(self) -> CpuCounters:  # an idle neighbour: nothing else runs
        s = self.t_ns / 1e9
        return CpuCounters(wall_s=s, busy_s=s, steal_s=0.0, total_s=2 * s, own_s=s)

    def fn(self, name: str):
        def call():
            slow = 3.0 if self.lo <= self.calls < self.hi else 1.0
            self.calls += 1
            self.log.append(name)
            self.t_ns += int(BASE_MS[name] * slow * 1e6)
        return call


def _time(machine: FakeMachine, name: str):
    return time_callable(machine.fn(name), SETTINGS, clock=machine.clock, counters=machine.counters)


def test_sequential_measurement_lets_a_burst_distort_the_ratios():
    m = FakeMachine(lo=12, hi=24)  # b's samples are calls 13..24
    t = {name: _time(m, name) for name in "abc"}
    assert t["a"].median_ms == 10.0 and t["c"].median_ms == 40.0
    assert t["b"].median_ms == 60.0  # 3x: the burst hit b alone
    assert t["b"].noisy is False or t["b"].n == SETTINGS.max_iters


def test_rounds_share_a_burst_and_keep_the_true_ratios():
    m = FakeMachine(lo=12, hi=24)
    orders = []
    results = run_interleaved([lambda n=n: _time(m, n) for n in "abc"], seed=0, turn_s=0.005,
                              on_round=lambda i, order: orders.append(order))
    t = {n: r.value for n, r in zip("abc", results)}
    assert all(r.error is None for r in results)
    assert [t[n].median_ms for n in "abc"] == [10.0, 20.0, 40.0]  # exactly 1 : 2 : 4
    # the burst's 12 calls were spread: no configuration took more than half of them
    burst = m.log[12:24]
    assert max(burst.count(n) for n in "abc") <= 6
    # every round gives each pending measurement one turn, in a shuffled order
    assert sorted(orders[0]) == [0, 1, 2] and len({tuple(o) for o in orders if len(o) == 3}) > 1


def test_rounds_are_reproducible_from_the_seed():
    def orders(seed):
        m = FakeMachine(lo=0, hi=0)
        seen = []
        run_interleaved([lambda n=n: _time(m, n) for n in "abc"], seed=seed, turn_s=0.0,
                        on_round=lambda i, o: seen.append(tuple(o)))
        return seen, m.log

    assert orders(1) == orders(1)
    assert orders(1)[1] != orders(2)[1]


def test_one_sample_a_turn_by_default():
    m = FakeMachine(lo=0, hi=0)
    run_interleaved([lambda: _time(m, "a"), lambda: _time(m, "b")], seed=3)
    # warm-up + first sample in the first turn, then one sample a turn: no run longer than 2
    # except where a round boundary joins two turns of the same measurement
    runs = "".join(m.log)
    assert runs.count("aaaa") == 0 and runs.count("bbbb") == 0


def test_a_turn_lasts_turn_s_of_own_samples():
    m = FakeMachine(lo=0, hi=0)
    run_interleaved([lambda: _time(m, "a"), lambda: _time(m, "c")], seed=0, turn_s=0.035)
    # a (10 ms a sample) takes 4 samples a turn (>= 35 ms), c (40 ms) one; the warm-up call joins
    # the first turn; once one converges (9 equal samples) the other runs on alone
    both = m.log[: max(i for i, n in enumerate(m.log) if n == "a") + 1]
    runs, prev = [], None
    for name in both:
        if name != prev:
            runs.append([name, 0])
            prev = name
        runs[-1][1] += 1
    a_runs = [r[1] for r in runs if r[0] == "a"]
    c_runs = [r[1] for r in runs if r[0] == "c"]
    # a: warm-up + 4 samples, then 4 a turn; the 9th sample converges it mid-turn
    assert a_runs[0] == 5 and all(n == 4 for n in a_runs[1:-1]) and 1 <= a_runs[-1] <= 4
    assert sum(a_runs) == 1 + 9
    # c: one sample a turn (two turns meet across a round boundary when the shuffle puts c last, then first)
    assert c_runs[0] >= 2 and all(n <= 2 for n in c_runs)


def test_a_failing_task_does_not_stop_the_others():
    m = FakeMachine(lo=0, hi=0)

    def broken():
        raise ValueError("bad knob")

    results = run_interleaved([lambda: _time(m, "a"), broken, lambda: _time(m, "b")], seed=0)
    assert isinstance(results[1].error, ValueError)
    assert results[0].value.median_ms == 10.0 and results[2].value.median_ms == 20.0


def test_the_time_cap_counts_only_own_samples():
    # three measurements that never converge (jitter, an unreachable CI target), 0.5 s cap each:
    # in rounds each still stops after its own 0.5 s of samples, as it does alone (the others'
    # turns in between do not count), so a group takes the samples a sequential run takes
    capped = SETTINGS.replace(max_time_s=0.5, max_iters=1000, target_rel_ci=1e-6)
    m = FakeMachine(lo=0, hi=0)

    def jitter(name):
        base = m.fn(name)

        def call():
            base()
            m.t_ns += (m.calls * 7919) % 2000 * 1000  # 0-2 ms, spread: the CI never closes
        return call

    alone = {n: time_callable(jitter(n), capped, clock=m.clock, counters=m.counters).n for n in "abc"}
    results = run_interleaved([lambda n=n: time_callable(jitter(n), capped, clock=m.clock, counters=m.counters)
                               for n in "abc"], seed=0)
    together = {n: r.value.n for n, r in zip("abc", results)}
    assert all(r.value.noisy for r in results)
    assert 40 <= alone["a"] <= 50 and 11 <= alone["c"] <= 13
    assert all(abs(together[n] - alone[n]) <= 2 for n in "abc")


def test_contention_is_recorded_per_timing():
    m = FakeMachine(lo=0, hi=0)

    def busy_neighbour() -> CpuCounters:  # one other core busy all the time
        s = m.t_ns / 1e9
        return CpuCounters(wall_s=s, busy_s=2 * s, steal_s=0.0, total_s=2 * s, own_s=s)

    twelve = SETTINGS.replace(min_iters=12, max_iters=12)  # 12 x 40 ms: a span the 100 Hz counters can judge
    quiet = time_callable(m.fn("c"), twelve, clock=m.clock, counters=m.counters)
    loaded = time_callable(m.fn("c"), twelve, clock=m.clock, counters=busy_neighbour)
    assert quiet.other_cores == 0.0 and not quiet.contended
    assert loaded.other_cores == pytest.approx(1.0) and loaded.contended
    # 9 x 10 ms is under the 0.4 s the counters need: no record rather than a guess
    short = time_callable(m.fn("a"), SETTINGS, clock=m.clock, counters=busy_neighbour)
    assert short.other_cores is None and not short.contended


def test_the_probe_measures_the_machines_speed_beside_each_sample():
    # the probe (1 ms at full speed) slows with the machine: latency in probe units stays exact
    # through a burst that moves the median itself
    m = FakeMachine(lo=4, hi=30)  # calls alternate probe, sample: samples 2..12 of 12 are slow

    def probe():
        slow = 3.0 if m.lo <= m.calls < m.hi else 1.0
        m.calls += 1
        m.t_ns += int(1e6 * slow)

    t = time_callable(m.fn("b"), SETTINGS.replace(probe=True), clock=m.clock, counters=m.counters, probe=probe)
    assert t.median_ms == 60.0  # most samples fell in the burst
    assert t.probe_units == 20.0 and t.probe_ms == 3.0
    off = time_callable(m.fn("b"), SETTINGS, clock=m.clock, counters=m.counters, probe=probe)
    assert off.probe_ms is None and off.probe_units is None


def test_the_real_probe_works_inside_and_outside_inference_mode():
    # regression: a probe first built inside a one-at-a-time timing (inference mode) made every
    # later interleaved timing fail with "Inference tensors cannot be saved for backward"
    import torch

    s = MeasureSettings(device="cpu", warmup_iters=1, warmup_s=0.0, min_iters=3, max_iters=3)
    a = torch.randn(64, 64)
    first = time_callable(lambda: a @ a, s)
    lin = torch.nn.Linear(64, 64)
    results = run_interleaved([lambda: time_callable(lambda: lin(a), s, module=lin),
                               lambda: time_callable(lambda: a @ a, s)])
    assert [r.error for r in results] == [None, None]
    assert first.probe_ms > 0 and all(r.value.probe_ms > 0 and r.value.probe_units > 0 for r in results)


def test_window_group_keeps_converged_timings_sampling_while_the_group_times():
    # a and b are steady and converge at min_iters; c jitters (+-2%) and samples to max_iters.
    # From call 30 on (when a and b have 9 samples) the machine runs 3x slower for good (a slow stretch of the host). With
    # each timing's own window, a and b stop before it and c samples mostly inside it: c's ratio
    # to a comes out ~12 instead of 4. With window=group, a and b keep sampling while c times,
    # so all three span the same stretch and the medians keep 1 : 2 : 4.
    settings = SETTINGS.replace(max_iters=30, target_rel_ci=0.001)

    def run(window: str):
        m = FakeMachine(lo=30, hi=10**9)  # round 0 takes 6 calls (a warm-up each), rounds 1-8 take 3

        def jitter(call):
            def fn():
                call()
                m.t_ns += int(((m.calls * 7919) % 5 - 2) * 0.01 * BASE_MS["c"] * 1e6)  # -2..+2% of 40 ms
            return fn

        fns = {"a": m.fn("a"), "b": m.fn("b"), "c": jitter(m.fn("c"))}
        results = run_interleaved([lambda n=n: time_callable(fns[n], settings.replace(window=window), clock=m.clock,
                                                             counters=m.counters) for n in "abc"], seed=0)
        assert all(r.error is None for r in results)
        return {n: r.value for n, r in zip("abc", results)}

    own = run("own")
    assert own["a"].n == own["b"].n == settings.min_iters and own["c"].n == settings.max_iters
    assert own["c"].median_ms / own["a"].median_ms > 10  # the slow stretch hit c alone
    group = run("group")
    assert group["a"].n == group["b"].n == group["c"].n == settings.max_iters
    assert group["b"].median_ms / group["a"].median_ms == pytest.approx(2.0)
    assert group["c"].median_ms / group["a"].median_ms == pytest.approx(4.0, rel=0.025)
    assert not group["a"].noisy and not group["b"].noisy and group["c"].noisy


def test_window_group_alone_is_the_default_protocol():
    # no other task to wait for: a timing stops at its own rule, as with window=own
    m = FakeMachine(lo=0, hi=0)
    results = run_interleaved([lambda: time_callable(m.fn("a"), SETTINGS.replace(window="group"), clock=m.clock,
                                                     counters=m.counters)], seed=0)
    assert results[0].value.n == SETTINGS.min_iters and not results[0].value.noisy
    with pytest.raises(ValueError, match="measure.window"):
        SETTINGS.replace(window="all")
