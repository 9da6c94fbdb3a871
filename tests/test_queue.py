"""Leased work through the store (SQLite, and the same checks on a real PostgreSQL server)."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import select, text

import queue_fakes as Q
import sweep_fakes as F
from explorer.data.queue import DeviceBusy, WorkQueue
from explorer.data.space import load_space
from explorer.data.store import SCHEMA_VERSION, MeasurementRecord, Store, StoreError
from explorer.data.tables import LeaseRow, MetaRow
from explorer.engine.options import SweepOptions, WorkerOptions
from explorer.engine.sweep import plan_sweep
from explorer.engine.sweep.worker import publish_sweep, resolve_sweep, run_worker
from explorer.measure.settings import MeasureSettings
from pg_server import pg_url, postgres_url  # noqa: F401 - fixtures

SETTINGS = MeasureSettings(device="cpu")
INLINE = SweepOptions(isolation="inline", progress=False)


def space():
    raw = {"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2], "depth": [1, 2]}}},
           "resolutions": [64, 128], "llms": ["llm-a", "llm-b"], "text_tokens": [0, 8]}
    return load_space(raw, shape_fn=F.shape, check_models=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return request.getfixturevalue("pg_url")


def _published(url):
    st = Store(url)
    publish_sweep(space(), SETTINGS, st, INLINE, Q.BACKEND)
    WorkQueue(st).join("toy", "fake-env")
    return st


def _rec(job, status="ok"):
    return MeasurementRecord(kind=job.kind, key=job.key, env_key=job.env_key, environment={}, inputs=job.inputs,
                             status=status, payload={"latency": {"median_ms": 1.0}})


def test_each_job_is_claimed_once_and_the_queue_empties(url):
    st = _published(url)
    n = len(plan_sweep(space(), SETTINGS, None, INLINE, Q.BACKEND).jobs)
    a, b = WorkQueue(st, owner="a"), WorkQueue(st, owner="b")
    claimed = []
    for i in range(n):
        job = (a if i % 2 else b).claim("toy", "fake-env")
        assert job is not None
        claimed.append((job.kind, job.key))
    assert len(set(claimed)) == n == 24  # 8 encoders + 8 projectors + 8 prefills (test_sweep's hand count)
    assert a.claim("toy", "fake-env") is None and b.claim("toy", "fake-env") is None
    counts = a.counts("toy", "fake-env")
    assert (counts.pending, counts.leased, counts.done) == (0, 24, 0)


def test_an_expired_lease_goes_to_another_worker_and_the_late_result_is_dropped(url):
    st = _published(url)
    slow, fast = WorkQueue(st, owner="slow", lease_s=0.5), WorkQueue(st, owner="fast", lease_s=30)
    job = slow.claim("toy", "fake-env")
    others = [fast.claim("toy", "fake-env") for _ in range(23)]
    assert fast.claim("toy", "fake-env") is None  # slow's lease is live
    time.sleep(0.7)
    again = fast.claim("toy", "fake-env")
    assert (again.kind, again.key, again.attempts) == (job.kind, job.key, 2)
    assert slow.complete(job, _rec(job, "failed")) is False  # lost its lease: nothing written
    assert st.get_measurement(job.kind, job.key, "fake-env") is None
    assert fast.complete(again, _rec(again)) is True
    assert st.get_measurement(job.kind, job.key, "fake-env").status == "ok"
    assert fast.complete(again, _rec(again, "failed")) is False  # done: never written twice
    assert st.get_measurement(job.kind, job.key, "fake-env").status == "ok"
    for j in others:
        assert fast.complete(j, _rec(j))
    assert fast.counts("toy", "fake-env").done == 24 and len(st.measurements(env_key="fake-env")) == 24


def test_the_heartbeat_keeps_a_lease(url):
    from explorer.data.queue import Heartbeat

    st = _published(url)
    holder, other = WorkQueue(st, owner="holder", lease_s=0.6), WorkQueue(st, owner="other")
    job = holder.claim("toy", "fake-env")
    with Heartbeat(holder):
        time.sleep(1.5)  # 2.5 leases
        taken = [other.claim("toy", "fake-env") for _ in range(24)]
        assert (job.kind, job.key) not in {(j.kind, j.key) for j in taken if j is not None}
        assert holder.complete(job, _rec(job))


def test_one_timing_worker_per_host_and_device(url):
    st = Store(url)
    a, b = WorkQueue(st, owner="a", lease_s=0.5), WorkQueue(st, owner="b")
    a.claim_device("node-1", "cpu")
    with pytest.raises(DeviceBusy, match="held by timing worker a"):
        b.claim_device("node-1", "cpu")
    b.claim_device("node-2", "cpu")  # another host
    b.release_device()
    time.sleep(0.7)  # a stopped renewing (died): its claim expires
    b.claim_device("node-1", "cpu")
    with pytest.raises(DeviceBusy, match="held by timing worker b"):
        a.claim_device("node-1", "cpu")


def test_a_worker_gives_the_same_rows_as_a_sweep(tmp_path):
    st = Store(tmp_path / "w")
    report = run_worker(st, space(), SETTINGS, WorkerOptions(poll_s=0.1), INLINE, Q.BACKEND)
    assert report.measured == {"encoder": 8, "projector": 8, "prefill": 8} and not report.lost
    oracle = Store(tmp_path / "s")
    F.run(space(), SETTINGS, oracle)
    rows = {(r.kind, r.key): r.payload for r in st.measurements()}
    assert rows == {(r.kind, r.key): r.payload for r in oracle.measurements()}
    assert {p.key for p in st.points("toy")} == {p.key for p in oracle.points("toy")}
    again = run_worker(st, None, None, WorkerOptions(), INLINE, Q.BACKEND)  # joins the only sweep
    assert sum(again.measured.values()) == 0 and again.sweep == "toy"


def test_a_killed_measurement_is_queued_again_by_the_next_worker(tmp_path):
    st = Store(tmp_path / "w")
    run_worker(st, space(), SETTINGS, WorkerOptions(), INLINE, Q.BACKEND)
    rec = st.measurements(kind="encoder")[0]
    st.save_measurement(MeasurementRecord(**{**rec.__dict__, "status": "killed", "payload": None, "id": None}))
    report = run_worker(st, None, None, WorkerOptions(), INLINE, Q.BACKEND)
    assert report.measured == {"encoder": 1, "projector": 0, "prefill": 0}
    assert st.get_measurement("encoder", rec.key, rec.env_key).status == "ok"


def test_errors_before_any_work(tmp_path, url):
    with pytest.raises(StoreError, match="cannot open it"):
        Store("postgresql+psycopg://nobody@127.0.0.1:1/none")
    st = Store(url)
    with pytest.raises(StoreError, match=r"invalid sweep='nope'.*published: none"):
        run_worker(st, None, None, WorkerOptions(sweep="nope"), INLINE, Q.BACKEND)
    publish_sweep(space(), SETTINGS, st, INLINE, Q.BACKEND)
    assert resolve_sweep(st, None) == "toy"
    with pytest.raises(StoreError, match="other measurement settings"):
        publish_sweep(space(), MeasureSettings(device="cpu", warmup_iters=7), st, INLINE, Q.BACKEND)
    st.transaction(lambda s: setattr(s.get(MetaRow, "schema_version"), "value", str(SCHEMA_VERSION + 1)))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Store(url)


def test_a_version_2_store_is_upgraded(tmp_path):
    import sqlite3

    st = Store(tmp_path / "old")
    st.close()
    db = sqlite3.connect(tmp_path / "old" / "store.db")
    for table in ("leases", "sweep_jobs", "sweeps", "device_claims"):
        db.execute(f"DROP TABLE {table}")
    db.execute("UPDATE explorer_meta SET value='2'")
    db.commit()
    db.close()
    assert Store(tmp_path / "old", create=False).schema_version() == 2  # reading needs no upgrade
    st = Store(tmp_path / "old")
    assert st.schema_version() == SCHEMA_VERSION == 4
    assert run_worker(st, space(), SETTINGS, WorkerOptions(), INLINE, Q.BACKEND).measured["encoder"] == 8


def test_postgres_claims_skip_rows_locked_by_another_claimer(pg_url):
    st = _published(pg_url)

    def another_claimer(s):  # in the middle of its transaction
        first = s.scalars(select(LeaseRow).order_by(LeaseRow.id).limit(1).with_for_update()).one()
        s.execute(text("SET LOCAL lock_timeout = '5s'"))
        t0 = time.monotonic()
        job = WorkQueue(st, owner="b").claim("toy", "fake-env")
        waited = time.monotonic() - t0
        assert job is not None and job.lease_id != first.id and waited < 4  # skipped, not waited for

    st.transaction(another_claimer)


def test_postgres_connections_lost_between_transactions_are_replaced(pg_url):
    import psycopg
    from sqlalchemy.engine import make_url

    st = _published(pg_url)
    queue = WorkQueue(st, owner="a")
    assert queue.claim("toy", "fake-env") is not None
    u = make_url(pg_url)
    with psycopg.connect(f"host={u.host} port={u.port} user={u.username} dbname=postgres", autocommit=True) as c:
        killed = c.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = %s AND pid <> pg_backend_pid()", (u.database,)).fetchone()[0]
    assert killed >= 1  # the store's pooled connection is gone
    job = queue.claim("toy", "fake-env")  # a fresh connection, not an error
    assert job is not None and queue.complete(job, _rec(job))


def test_an_optuna_search_keeps_its_study_in_the_same_postgres_database(pg_url):
    from sqlalchemy import inspect

    st = Store(pg_url)
    report = F.search(space(), SETTINGS, st, trials=4, sampler="random", seed=1, study_name="s1")
    tables = set(inspect(st.engine).get_table_names())
    assert {"studies", "trials", "measurements", "leases"} <= tables  # optuna's and ours side by side
    import optuna

    study = optuna.load_study(study_name="s1", storage=pg_url)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 4
    assert len(st.points("toy")) >= 1 and report is not None
