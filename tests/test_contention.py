"""Contention detection: the arithmetic on injected counters, the sweep's thread policy and
warning on an injected load, and one slow test beside a real busy process."""
import io
import subprocess
import sys
import time

import pytest
import torch

from explorer.engine.backend import MeasureBackend
from explorer.engine.options import SweepOptions
from explorer.engine.sweep.machine import machine_policy
from explorer.measure.contention import (BusyProcess, ContentionMeter, CpuCounters, MachineLoad, check_machine,
                                         free_cores, is_contended, other_cores_between)
from explorer.measure.settings import MeasureSettings


def counters(wall, busy, own, steal=0.0, total=None):
    return CpuCounters(wall_s=wall, busy_s=busy, steal_s=steal, total_s=total if total is not None else 2 * wall,
                       own_s=own)


def test_other_cores_is_busy_time_minus_our_own_over_wall_time():
    # 2 s: the machine was busy 3.0 CPU-seconds, 1.9 of them ours -> 0.55 cores of others
    other, steal = other_cores_between(counters(10, 5, 2), counters(12, 8, 3.9))
    assert other == pytest.approx(0.55) and steal == 0.0
    # steal: 0.4 of 4 CPU-seconds
    _, steal = other_cores_between(counters(0, 0, 0, 0, 0), counters(2, 1, 1, 0.4, 4))
    assert steal == pytest.approx(0.1)
    # counters never make a negative load (tick rounding)
    assert other_cores_between(counters(0, 1, 0), counters(1, 1.0, 0.02))[0] == 0.0


def test_the_meter_sums_only_its_windows():
    readings = iter([counters(0, 0, 0), counters(1, 2, 1),      # window 1: 1 other core
                     counters(5, 10, 3), counters(6, 11, 4)])   # window 2: 0 (gap between is ignored)
    meter = ContentionMeter(lambda: next(readings))
    for _ in range(2):
        meter.start()
        meter.stop()
    assert meter.other_cores == pytest.approx(0.5) and meter.contended


def test_a_meter_without_counters_records_nothing():
    def broken():
        raise OSError("no /proc")

    meter = ContentionMeter(broken)
    meter.start()
    meter.stop()
    assert meter.other_cores is None and meter.steal is None and not meter.contended


def test_thresholds_and_free_cores():
    assert not is_contended(0.24, 0.0) and is_contended(0.25, 0.0) and is_contended(0.0, 0.05)
    assert not is_contended(None, None)
    assert free_cores(2, 0.0) == 2 and free_cores(2, 0.4) == 2 and free_cores(2, 1.0) == 1
    assert free_cores(2, 2.0) == 1 and free_cores(16, 3.6) == 12


def _load(other, cores=2, **kw):
    return MachineLoad(cores=cores, other_cores=other, steal=0.0, load_average=(1.0, 1.0, 1.0), window_s=1.0,
                       busiest=(BusyProcess(4242, "stress", other),) if other else (), **kw)


def test_a_busy_machine_gets_fewer_threads_and_a_warning_naming_the_neighbour(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # torch would use both cores
    out = io.StringIO()
    settings = MeasureSettings(device="cpu")
    policy = machine_policy(settings, SweepOptions(), MeasureBackend(), check=lambda **_: _load(1.0), out=out)
    assert policy.settings.threads == 1 and policy.environ == {}
    text = out.getvalue()
    assert "busy" in text and "stress (pid 4242, 1.00 cores)" in text and "1 thread(s)" in text
    assert "sweep.remeasure=contended" in text


def test_user_threads_are_kept_and_waits_made_passive_when_they_exceed_the_free_cores():
    out = io.StringIO()
    settings = MeasureSettings(device="cpu", threads=2)
    policy = machine_policy(settings, SweepOptions(), MeasureBackend(), check=lambda **_: _load(1.0), out=out)
    assert policy.settings.threads == 2 and policy.environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert "measure.threads=2 is more than the 1 core(s) left free" in out.getvalue()


def test_a_quiet_machine_changes_nothing_and_prints_nothing():
    out = io.StringIO()
    settings = MeasureSettings(device="cpu")
    policy = machine_policy(settings, SweepOptions(), MeasureBackend(), check=lambda **_: _load(0.1), out=out)
    assert policy.settings is settings and policy.environ == {} and out.getvalue() == ""
    assert policy.summary().startswith("quiet")
    # switched off, or with fake measurers, nothing is checked at all
    def never(**_):
        raise AssertionError("checked")
    assert machine_policy(settings, SweepOptions(machine_check=False), MeasureBackend(), check=never).load is None
    fake = MeasureBackend(real_models=False)
    assert machine_policy(settings, SweepOptions(), fake, check=never).load is None


@pytest.mark.slow
def test_a_real_busy_process_is_named_within_two_seconds_and_flags_timings():
    from explorer.measure.timing import time_callable
    import torch

    busy = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
    try:
        time.sleep(0.3)
        load = check_machine(window_s=1.0)
        assert load.window_s >= 1.0  # the look lasted the window it was given
        assert load.busy and load.other_cores >= 0.6
        assert busy.pid in {p.pid for p in load.busiest}
        a = torch.randn(256, 256)
        # a CI target it cannot reach: 0.8 s of samples, enough ticks of the 100 Hz counters
        timing = time_callable(lambda: a @ a, MeasureSettings(device="cpu", threads=1, warmup_s=0.05, min_iters=20,
                                                              max_iters=100_000, max_time_s=0.8, target_rel_ci=1e-6))
        assert timing.contended and timing.other_cores >= 0.6
    finally:
        busy.kill()
        busy.wait(10)
