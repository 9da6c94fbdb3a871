"""``worker.launcher=ray``: the sweep's workers as Ray tasks on a local Ray (skipped without Ray)."""
from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

import queue_fakes as Q
import sweep_fakes as F
from explorer.data.space import load_space
from explorer.data.store import Store
from explorer.engine.options import SweepOptions, WorkerOptions
from explorer.engine.sweep.worker import launch_workers
from explorer.measure.settings import MeasureSettings

ray = pytest.importorskip("ray", reason="Ray not installed: pip install 'explorer[ray]'")

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_two_ray_tasks_share_the_sweep(tmp_path, monkeypatch):
    raw = {"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2], "depth": [1, 2]}}},
           "resolutions": [64, 128], "llms": ["llm-a", "llm-b"], "text_tokens": [0, 8]}
    sp = load_space(raw, shape_fn=F.shape, check_models=False)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("EXPLORER_FAKE_LOG", str(log))
    monkeypatch.setenv("EXPLORER_FAKE_DELAY", "0.2")
    # Ray's worker processes import the fakes by module name (they start from this environment).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    url = f"sqlite:///{tmp_path}/store.db"
    options = WorkerOptions(launcher="ray", workers=2, num_cpus=1, poll_s=0.2, lease_s=20, exclusive_device=False)
    reports = launch_workers(url, sp, MeasureSettings(device="cpu"), options,
                             SweepOptions(isolation="inline", progress=False), Q.BACKEND)
    assert len(reports) == 2 and len({r.worker for r in reports}) == 2
    assert sum(sum(r.measured.values()) for r in reports) == 24
    oracle = Store(tmp_path / "oracle")
    F.run(sp, MeasureSettings(device="cpu"), oracle)
    rows = {(r.kind, r.key): r.payload for r in Store(url).measurements()}
    assert rows == {(r.kind, r.key): r.payload for r in oracle.measurements()}
    per_job = collections.Counter((kind, key) for _, kind, key in Q.read_log(log))
    assert set(per_job.values()) == {1} and len(per_job) == 24
