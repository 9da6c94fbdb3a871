"""``explorer worker``: the problems found before any work, as ``error: ...`` and exit 2."""
from __future__ import annotations

import pytest

import queue_fakes as Q
from explorer.cli import main
from explorer.data.store import SCHEMA_VERSION, Store
from explorer.data.tables import MetaRow
from explorer.engine.options import SweepOptions
from explorer.engine.sweep.worker import publish_sweep
from explorer.measure.settings import MeasureSettings
from test_queue import space


def _run(capsys, *args):
    code = main(["worker", *args])
    return code, capsys.readouterr().err


def test_unreachable_database(capsys):
    code, err = _run(capsys, "store=postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert code == 2 and "error: invalid store=" in err and "cannot open it" in err and "Traceback" not in err


def test_store_of_a_newer_schema(capsys, tmp_path):
    st = Store(tmp_path / "r")
    st.transaction(lambda s: setattr(s.get(MetaRow, "schema_version"), "value", str(SCHEMA_VERSION + 1)))
    code, err = _run(capsys, f"store=sqlite:///{tmp_path}/r/store.db")
    assert code == 2 and f"schema version {SCHEMA_VERSION + 1}" in err and "upgrade explorer" in err


def test_a_sweep_that_does_not_exist(capsys, tmp_path):
    url = f"sqlite:///{tmp_path}/r/store.db"
    st = Store(url)
    code, err = _run(capsys, f"store={url}")
    assert code == 2 and "no sweep chosen and 0 published" in err
    publish_sweep(space(), MeasureSettings(device="cpu"), st, SweepOptions(isolation="inline"), Q.BACKEND)
    code, err = _run(capsys, f"store={url}", "worker.sweep=fastvithd")
    assert code == 2 and "invalid sweep='fastvithd'" in err and "published: toy" in err


def test_no_database_file_is_made_by_a_joining_worker(capsys, tmp_path):
    code, err = _run(capsys, f"store=sqlite:///{tmp_path}/typo.db")
    assert code == 2 and "no results database" in err and not (tmp_path / "typo.db").exists()


@pytest.mark.parametrize("arg, text", [("store=results/x", "invalid store='results/x'"),
                                       ("worker.lease_s=0", "invalid worker.lease_s=0"),
                                       ("worker.workers=3", "invalid worker.workers=3"),
                                       ("worker.launcher=slurm", "invalid worker.launcher='slurm'"),
                                       ("sweep.dry_run=true", "invalid sweep.dry_run=True"),
                                       ("sweep.max_measurements=3", "use worker.max_jobs"),
                                       ("sweep.remeasure=noisy", "invalid sweep.remeasure='noisy': none for a worker")])
def test_bad_options(capsys, tmp_path, arg, text):
    args = [arg] if arg.startswith("store=") else [f"store=sqlite:///{tmp_path}/s.db", arg]
    code, err = _run(capsys, *args)
    assert code == 2 and text in err
