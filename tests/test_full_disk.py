"""A disk that fills up mid-sweep: a clear message, nothing lost, and a resume that completes.

Runs on a small tmpfs mounted for the test (skipped where this process may not mount).
"""
from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

import sweep_fakes as F
from explorer.data.space import load_space
from explorer.data.store import Store
from explorer.measure.settings import MeasureSettings


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not allowed here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder) -> None:
    with open(folder / "filler", "wb", buffering=0) as fh:  # unbuffered: closing has nothing left to flush
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
        try:
            os.fsync(fh.fileno())
        except OSError:
            pass


def test_full_disk_mid_sweep_stops_clearly_and_resumes(small_disk):
    sp = load_space({"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2], "depth": [1, 2]}}},
                     "resolutions": [64, 128], "llms": ["llm-a", "llm-b"], "text_tokens": [0, 8]},
                    shape_fn=F.shape, check_models=False)
    settings = MeasureSettings(device="cpu")
    db = small_disk / "store.db"
    first = F.run(sp, settings, Store(db), max_measurements=3)
    assert sum(first.measured.values()) == 3 and first.store_error is None
    _fill(small_disk)
    report = F.run(sp, settings, Store(db))
    assert report.store_error is not None and "full" in report.store_error.lower()
    assert "resume" in report.store_error and report.remaining > 0
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = con.execute("SELECT count(*) FROM measurements WHERE status='ok'").fetchone()[0]
    con.close()
    assert stored >= 3
    (small_disk / "filler").unlink()
    again = F.run(sp, settings, Store(db))
    assert again.store_error is None and again.remaining == 0
    assert len(Store(db).measurements()) == 24


def test_full_disk_at_the_very_first_write(small_disk):
    """The store opens, then the disk is full before the first point is written: a clear stop, no traceback."""
    sp = load_space({"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2]}}}, "resolutions": [64],
                     "llms": ["llm-a"], "text_tokens": [0]}, shape_fn=F.shape, check_models=False)
    db = small_disk / "store.db"
    st = Store(db)  # open (tables made), then the disk fills up
    _fill(small_disk)
    report = F.run(sp, MeasureSettings(device="cpu"), st)
    assert report.store_error is not None and "resume" in report.store_error
    assert sum(report.measured.values()) == 0 and report.remaining > 0
    (small_disk / "filler").unlink()
    again = F.run(sp, MeasureSettings(device="cpu"), Store(db))
    assert again.store_error is None and again.remaining == 0
    assert sum(again.measured.values()) == report.remaining == len(Store(db).measurements())
