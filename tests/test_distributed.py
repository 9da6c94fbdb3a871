"""Three worker processes on one sweep against a real PostgreSQL server; one is SIGKILLed mid-measurement.

Every call of a measure function in any process is logged (queue_fakes), so the counts below are
the workers' own work, checked against an independent one-process sweep of the same space.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest

import queue_fakes as Q
import sweep_fakes as F
from explorer.data.queue import WorkQueue
from explorer.data.space import load_space
from explorer.data.store import Store
from explorer.data.tables import LeaseRow
from explorer.engine.options import SweepOptions, WorkerOptions
from explorer.engine.sweep.worker import publish_sweep, run_worker
from explorer.measure.settings import MeasureSettings
from pg_server import pg_url, postgres_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL of worker processes: Linux")

SETTINGS = MeasureSettings(device="cpu")
INLINE = SweepOptions(isolation="inline", progress=False)
LEASE_S = 6.0  # longer than any pause of a live worker on a loaded 2-core CI machine


def space():
    raw = {"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2], "depth": [1, 2]}}},
           "resolutions": [64, 128], "llms": ["llm-a", "llm-b"], "text_tokens": [0, 8]}
    return load_space(raw, shape_fn=F.shape, check_models=False)


def _worker(url: str, host: str) -> None:
    # Three "machines": one timing claim each (node-1..3), one sweep, one environment. The heavy
    # imports happen before the first claim, so a lease never runs out while a module loads.
    import explorer.data.results  # noqa: F401
    import explorer.measure.costs  # noqa: F401
    import torch  # noqa: F401

    run_worker(url, None, None, WorkerOptions(sweep="toy", lease_s=LEASE_S, poll_s=0.2, host=host), INLINE,
               Q.BACKEND)


def test_three_workers_one_killed_every_measurement_committed_once(pg_url, tmp_path, monkeypatch):
    log, stall = tmp_path / "calls.log", tmp_path / "stalled"
    monkeypatch.setenv("EXPLORER_FAKE_LOG", str(log))
    monkeypatch.setenv("EXPLORER_FAKE_STALL", str(stall))
    monkeypatch.setenv("EXPLORER_FAKE_DELAY", "0.15")
    publish_sweep(space(), SETTINGS, Store(pg_url), INLINE, Q.BACKEND)

    ctx = multiprocessing.get_context("spawn")  # fresh workers: nothing inherited from this test process
    procs = [ctx.Process(target=_worker, args=(pg_url, f"node-{i}")) for i in (1, 2, 3)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 240  # a bound on waiting (workers dead before it), not a speed claim
    while not stall.exists():  # one worker is inside a measurement that hangs
        assert time.monotonic() < deadline, "no worker reached the stalling measurement"
        assert any(p.is_alive() for p in procs), "every worker exited before the stalling measurement"
        time.sleep(0.05)
    victim_pid, stalled_key = stall.read_text().split()
    victim = next(p for p in procs if p.pid == int(victim_pid))
    os.kill(victim.pid, signal.SIGKILL)
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs if p is victim] == [-signal.SIGKILL]
    assert all(p.exitcode == 0 for p in procs if p is not victim), [p.exitcode for p in procs]

    # The oracle: the same space swept in one process into another store.
    oracle = Store(tmp_path / "oracle")
    F.run(space(), SETTINGS, oracle)
    want = {(r.kind, r.key): r.payload for r in oracle.measurements()}
    assert len(want) == 24

    st = Store(pg_url)
    rows = st.measurements(env_key="fake-env")
    assert len(rows) == len({(r.kind, r.key) for r in rows}) == 24  # one row each, no duplicates
    assert all(r.status == "ok" for r in rows)
    assert {(r.kind, r.key): r.payload for r in rows} == want  # same keys and values as one worker

    calls = Q.read_log(log)
    per_job = collections.Counter((kind, key) for _, kind, key in calls)
    assert per_job[("encoder", stalled_key)] == 2  # the killed attempt, then another worker's
    # Every other job was measured once, unless its lease ran out while a starved worker held it
    # (then the queue leased it again and a second worker measured it; still committed once above).
    leased = WorkQueue(st).attempts("toy", "fake-env")
    assert leased[("encoder", stalled_key)] == 2
    assert set(per_job) == set(want)
    for job, n in per_job.items():
        if job != ("encoder", stalled_key):
            assert n == 1 or n <= leased[job], (job, n, leased[job])
    finisher = [pid for pid, kind, key in calls if (kind, key) == ("encoder", stalled_key)][1]
    assert finisher != victim.pid and finisher in {p.pid for p in procs}
    assert len({pid for pid, _, _ in calls}) >= 2  # the work was shared

    with st.session() as s:
        leases = {(r.kind, r.key): r for r in s.query(LeaseRow).filter(LeaseRow.sweep == "toy")}
    assert all(r.state == "done" for r in leases.values())
    assert leases[("encoder", stalled_key)].attempts == 2
    assert WorkQueue(st).counts("toy", "fake-env").open == 0
