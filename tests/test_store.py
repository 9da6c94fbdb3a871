"""The results database: URLs, upserts, points, accuracy, WAL mode, coexistence with optuna."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from explorer.data.space import DesignPoint
from explorer.data.store import MeasurementRecord, PointRecord, Store, resolve_url


def rec(key: str = "k1", status: str = "ok", env: str = "env-a", kind: str = "encoder", **kw) -> MeasurementRecord:
    payload = {"latency": {"median_ms": 3.0}, "gflops": 1.0} if status == "ok" else None
    return MeasurementRecord(kind=kind, key=key, env_key=env, environment={"device": "cpu", "threads": 2},
                             inputs={"x": 1}, status=status, payload=payload,
                             error=None if status == "ok" else "RuntimeError: boom", **kw)


def test_resolve_url(tmp_path):
    assert resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    assert resolve_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert resolve_url(tmp_path / "a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    assert resolve_url(tmp_path / "results") == f"sqlite:///{tmp_path / 'results' / 'store.db'}"


def test_measurement_roundtrip_and_upsert(tmp_path):
    store = Store(tmp_path / "res")
    assert (tmp_path / "res" / "store.db").is_file()
    first = store.save_measurement(rec())
    got = store.get_measurement("encoder", "k1", "env-a")
    assert got is not None and got.id == first and got.payload == {"latency": {"median_ms": 3.0}, "gflops": 1.0}
    assert got.environment == {"device": "cpu", "threads": 2} and got.status == "ok"
    # the same (kind, key, env) is replaced, not duplicated; another env is a separate row
    again = store.save_measurement(rec(status="failed"))
    other = store.save_measurement(rec(env="env-b"))
    assert again == first and other != first
    got = store.get_measurement("encoder", "k1", "env-a")
    assert got.status == "failed" and got.error == "RuntimeError: boom" and got.payload is None
    assert store.measurement_status("env-a") == {("encoder", "k1"): "failed"}
    assert len(store.measurements()) == 2 and len(store.measurements(env_key="env-b")) == 1
    assert set(store.environments()) == {"env-a", "env-b"}
    assert store.get_measurement("prefill", "k1", "env-a") is None
    with pytest.raises(ValueError, match="invalid status"):
        store.save_measurement(rec(status="weird"))
    with pytest.raises(ValueError, match="invalid kind"):
        store.save_measurement(rec(kind="decoder"))


def test_unique_constraint_in_the_schema(tmp_path):
    store = Store(tmp_path / "x.db")
    store.save_measurement(rec())
    con = sqlite3.connect(tmp_path / "x.db")
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("INSERT INTO measurements (kind, key, env_key, environment, inputs, status, started_at, "
                    "finished_at, duration_s) SELECT kind, key, env_key, environment, inputs, status, started_at, "
                    "finished_at, duration_s FROM measurements")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_points_are_added_once(tmp_path):
    store = Store(tmp_path / "x.db")
    p = DesignPoint.make("fastvithd", {"width_mult": 0.5}, 256, "qwen2-0.5b", 32)
    q = DesignPoint.make("fastvithd", {}, 512, "qwen2-0.5b", 32)
    rows = [PointRecord("s", p, "e1", "p1", "f1", 16), PointRecord("s", q, "e2", "p2", "f2", 64)]
    assert store.save_points(rows) == 2
    assert store.save_points(rows) == 0
    assert store.save_points([PointRecord("other", p, "e1", "p1", "f1", 16)]) == 1
    got = store.points("s")
    assert [r.point for r in got] == [p, q] and got[0].key == p.key and got[1].visual_tokens == 64
    assert store.spaces() == ["other", "s"]


def test_accuracy_rows(tmp_path):
    store = Store(tmp_path / "x.db")
    p = DesignPoint.make("fastvithd", {}, 256, "qwen2-0.5b", 32)
    store.add_accuracy(48.4, "paper README figure", encoder="fastvithd", resolution=256, llm="qwen2-0.5b")
    store.add_accuracy(50.0, "trained", point=p, details={"steps": 10})
    rows = store.accuracy()
    assert [r.value for r in rows] == [48.4, 50.0]
    assert rows[0].knobs is None and rows[1].point_key == p.key and rows[1].details == {"steps": 10}
    with pytest.raises(ValueError, match="needs a point"):
        store.add_accuracy(1.0, "x")


def test_concurrent_writers(tmp_path):
    """Two stores (as two workers would) writing the same database at once: nothing is lost."""
    url = tmp_path / "x.db"
    Store(url)

    def work(env: str) -> None:
        s = Store(url)
        for i in range(15):
            s.save_measurement(rec(key=f"k{i}", env=env))
        s.close()

    threads = [threading.Thread(target=work, args=(f"env-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(Store(url).measurements()) == 45


def test_optuna_tables_live_in_the_same_database(tmp_path):
    import optuna
    store = Store(tmp_path / "x.db")
    store.save_measurement(rec())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=store.url, study_name="s", directions=["minimize", "maximize"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=2)
    store.save_measurement(rec(key="k2"))
    again = Store(store.url)
    assert len(again.measurements()) == 2
    assert len(optuna.load_study(study_name="s", storage=store.url).trials) == 2


def test_missing_database_is_an_error_when_not_creating(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results database"):
        Store(tmp_path / "nothing.db", create=False)
