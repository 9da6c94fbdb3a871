"""The results database: every measurement, design point and accuracy behind one SQLAlchemy URL.

SQLite in the results folder by default (``sqlite:///results/<space>/store.db``); any SQLAlchemy
URL (PostgreSQL) when several machines share a sweep. Optuna may keep its study tables in the
same database: this module only owns ``measurements``, ``measurement_history``, ``points`` and
``accuracy`` (and the queue tables of :mod:`explorer.data.queue`), all declared in
:mod:`explorer.data.tables`. :meth:`Store.transaction` is the one way to write: the queue's
transactions go through it as the store's own do.

Why it looks like this:

- Each measurement is written in its own short transaction, so a sweep killed at any moment
  loses only the measurements in flight (one, or the unfinished members of an interleaved group)
  and resumes from what is committed.
- A measurement row is identified by ``(kind, key, env_key)``: the factor (encoder, projector or
  prefill), the digest of that factor's own inputs and the measuring environment. Values from
  different environments live side by side and are never mixed silently.
- Measuring the same row again (``sweep.remeasure``, ``sweep.resume=false``, a retried failure)
  replaces it, and the row it replaces is first copied to ``measurement_history`` with the time
  it was superseded: the results show the latest value and nothing is lost
  (:meth:`Store.history`).
- SQLite runs in WAL mode with a busy timeout, and write transactions start with
  ``BEGIN IMMEDIATE`` so concurrent writers queue instead of failing on a lock upgrade; a
  transaction that failed for a reason another try fixes (a lock, a serialization failure, a lost
  connection) runs again whole.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, TypeVar, Union

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from explorer.data.space import DesignPoint, canonical_json
from explorer.data.tables import (HISTORY_COPIED, AccuracyRow, Base, MeasurementHistoryRow, MeasurementRow, MetaRow,
                                  PointRow, jsonable)

T = TypeVar("T")

__all__ = ["KINDS", "STATUSES", "SCHEMA_VERSION", "StoreError", "AccuracyRecord", "MeasurementRecord", "PointRecord",
           "Store", "as_store", "resolve_url", "sqlite_file", "utcnow"]

KINDS = ("encoder", "projector", "prefill")
STATUSES = ("ok", "failed", "timeout", "oom", "killed")
#: Version of the tables this module writes (kept in the ``explorer_meta`` table). A database of a
#: newer version is refused rather than misread; version 1 databases had no meta table.
SCHEMA_VERSION = 4
#: The advisory lock (PostgreSQL) that serialises creating the schema.
SCHEMA_LOCK_KEY = 0x6578706C  # "expl"
#: Optuna's study tables, which may share a store's database (explorer search).
OPTUNA_TABLES = frozenset({"studies", "study_directions", "study_user_attributes", "study_system_attributes",
                           "trials", "trial_user_attributes", "trial_system_attributes", "trial_params",
                           "trial_values", "trial_intermediate_values", "trial_heartbeats", "version_info",
                           "alembic_version"})
#: Tables added by each version (an older database is upgraded by creating them).
SCHEMA_HISTORY = {2: "explorer_meta", 3: "sweeps, sweep_jobs, leases, device_claims (explorer.data.queue)",
                  4: "measurement_history"}


class StoreError(ValueError):
    """A results database that cannot be opened or is not one (names the URL and what is wrong)."""


SQLITE_BUSY_TIMEOUT_MS = 60_000


def utcnow() -> datetime:
    """Naive UTC timestamp (what every timestamp column holds)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


# --------------------------------------------------------------------------------------------
# Plain values handed out by the store


@dataclass(frozen=True)
class MeasurementRecord:
    """One stored measurement (payload is ``cost.to_dict()`` when status is ok).

    From :meth:`Store.history`: an earlier value, replaced at ``superseded_at`` (``id`` is then
    the id of the ``measurements`` row it was replaced in); None for current values."""

    kind: str
    key: str
    env_key: str
    environment: dict[str, Any]
    inputs: dict[str, Any]
    status: str
    payload: Optional[dict[str, Any]] = None
    error: Optional[str] = None
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None
    duration_s: float = 0.0
    id: Optional[int] = None
    superseded_at: Optional[datetime] = None


@dataclass(frozen=True)
class PointRecord:
    """A design point of a space and the keys of its three measurements."""

    space: str
    point: DesignPoint
    encoder_key: str
    projector_key: str
    prefill_key: str
    visual_tokens: Optional[int] = None
    created_at: Optional[datetime] = None

    @property
    def key(self) -> str:
        return self.point.key


@dataclass(frozen=True)
class AccuracyRecord:
    """An accuracy value for a point (by key) or for (encoder, knobs, resolution, llm)."""

    value: float
    source: str
    metric: str = "avg"
    point_key: Optional[str] = None
    encoder: Optional[str] = None
    knobs: Optional[dict[str, Any]] = None
    resolution: Optional[int] = None
    llm: Optional[str] = None
    details: Optional[dict[str, Any]] = None
    created_at: Optional[datetime] = None
    id: Optional[int] = None


# --------------------------------------------------------------------------------------------


def resolve_url(target: Union[str, Path]) -> str:
    """A SQLAlchemy URL for a URL, a ``.db`` file or a results folder (``<dir>/store.db``)."""
    text = str(target)
    if "://" in text:
        return text
    path = Path(text).expanduser()
    if path.suffix not in (".db", ".sqlite", ".sqlite3"):
        path = path / "store.db"
    return f"sqlite:///{path}"


def sqlite_file(url: str) -> Optional[Path]:
    """The database file a ``sqlite:///PATH`` URL names (None for a server's URL)."""
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) else None


def as_store(source: Union["Store", str, Path], *, create: bool) -> "Store":
    """``source`` itself when it is a :class:`Store`, else the store it names (opened with
    ``create``: False for readers, which refuse what is not a results database)."""
    return source if isinstance(source, Store) else Store(source, create=create)


#: SQLSTATEs of failures a retry of the whole transaction fixes (serialization failure, deadlock).
RETRIED_SQLSTATES = frozenset({"40001", "40P01"})


def _transient(err: Exception) -> bool:
    """Whether running the failed transaction again can succeed (see :meth:`Store.transaction`)."""
    if isinstance(err, IntegrityError):
        return False
    if getattr(err, "connection_invalidated", False):
        return True
    orig = getattr(err, "orig", None)
    if getattr(orig, "sqlstate", None) in RETRIED_SQLSTATES:
        return True
    return "locked" in str(err).lower()


class Store:
    """The results database behind one URL (see the module docstring).

    ``Store("results/fastvithd")``, ``Store("x.db")`` and ``Store("postgresql://...")`` all work.
    Creating a store creates the tables it owns if they are missing.
    """

    def __init__(self, url: Union[str, Path], *, create: bool = True, echo: bool = False):
        self.url = resolve_url(url)
        try:
            parsed = make_url(self.url)
            backend = parsed.get_backend_name()
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's ArgumentError and friends
            raise StoreError(f"invalid store={self.url!r}: not a database URL ({err}); give a results folder, "
                             "a .db file or a URL such as sqlite:///path/store.db or postgresql://host/db") from None
        self.is_sqlite = backend == "sqlite"
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            db = parsed.database
            if db and db != ":memory:" and not db.startswith("file:"):
                path = Path(db).expanduser()
                if not create and not path.exists():
                    raise FileNotFoundError(f"no results database at {db}")
                if path.is_dir():
                    raise StoreError(f"invalid store={self.url!r}: {db} is a folder, not a database file")
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise StoreError(f"invalid store={self.url!r}: cannot create the folder {path.parent} "
                                     f"({err.strerror or err})") from None
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:  # a server: test pooled connections before use (a restarted server, a dropped link)
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except Exception as err:  # noqa: BLE001 - a missing driver, a bad option
            raise StoreError(f"invalid store={self.url!r}: {type(err).__name__}: {err}") from None
        if self.is_sqlite:
            self._install_sqlite_hooks(self.engine)
        self._write_engine = self.engine.execution_options(explorer_begin="IMMEDIATE")
        self._check_schema(create)

    def _check_schema(self, create: bool) -> None:
        """Connect, refuse what is not (or not yet) ours, and create missing tables when ``create``."""
        from sqlalchemy import inspect
        from sqlalchemy.exc import SQLAlchemyError

        try:
            if self.is_sqlite:
                self._quick_check()
            tables = set(inspect(self.engine).get_table_names())
            ours = {t.name for t in Base.metadata.sorted_tables}
            version = None
            if "explorer_meta" in tables:
                with self.session() as s:
                    row = s.get(MetaRow, "schema_version")
                    version = int(row.value) if row is not None else None
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(f"invalid store={self.url!r}: written by a newer explorer (schema version {version}; "
                                 f"this one reads up to {SCHEMA_VERSION}); upgrade explorer")
            if not create and not tables & ours:
                raise StoreError(f"invalid store={self.url!r}: not an explorer results database (tables: "
                                 f"{', '.join(sorted(tables)) or 'none'}); run `explorer sweep` to make one")
            foreign = tables - ours - OPTUNA_TABLES
            if create and self.is_sqlite and foreign and not tables & ours:
                raise StoreError(f"invalid store={self.url!r}: the file holds another application's tables "
                                 f"({', '.join(sorted(foreign)[:5])}{', ...' if len(foreign) > 5 else ''}), not "
                                 "explorer's; give a new file or a results folder (out=...)")
            if create:
                self.transaction(lambda s: self._create_tables(s.connection()))
        except StoreError:
            self.engine.dispose()
            raise
        except (SQLAlchemyError, OSError) as err:
            self.engine.dispose()
            text = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
            raise StoreError(f"invalid store={self.url!r}: cannot open it ({text})") from None

    def _quick_check(self) -> None:
        """Refuse a SQLite file whose pages are damaged (``PRAGMA quick_check``) before reading it."""
        with self.engine.connect() as conn:
            rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
        if rows != ["ok"]:
            raise StoreError(f"invalid store={self.url!r}: the database file is damaged (PRAGMA quick_check: "
                             f"{rows[0][:120] if rows else 'no answer'}{f'; {len(rows)} problems' if len(rows) > 1 else ''}); "
                             "restore it from a copy, or recover it with `sqlite3 FILE .recover`")

    @staticmethod
    def _create_tables(conn: Any) -> None:
        """Create the missing tables and record the schema version, in one transaction. On PostgreSQL
        the transaction first takes an advisory lock, so workers started at the same instant on a fresh
        database create the schema one after another (each later one finds the tables made)."""
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})")
        Base.metadata.create_all(conn)
        meta = MetaRow.__table__
        row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
        if row is None:
            conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        elif int(row[0]) < SCHEMA_VERSION:  # an older database: its missing tables were made above
            conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))

    def schema_version(self) -> Optional[int]:
        """The version in ``explorer_meta`` (None: a version-1 database without the table)."""
        with self.session() as s:
            row = s.get(MetaRow, "schema_version")
            return None if row is None else int(row.value)

    # -- plumbing -----------------------------------------------------------------------------

    @staticmethod
    def _install_sqlite_hooks(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control away from pysqlite so BEGIN is emitted by us (below).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            try:
                cur.execute("PRAGMA journal_mode=WAL")
            except Exception:  # read-only media or an in-memory database: keep the default
                pass
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            mode = conn.get_execution_options().get("explorer_begin", "")
            conn.exec_driver_sql(f"BEGIN {mode}".strip())

    def transaction(self, fn: Callable[[Session], T], *, retry_conflicts: bool = False, attempts: int = 5) -> T:
        """Run ``fn(session)`` as one write transaction and return what it returns: committed when
        ``fn`` returns, rolled back when it raises. On SQLite the transaction starts with
        ``BEGIN IMMEDIATE`` (writers queue, none fails on a lock upgrade).

        The whole transaction runs again (up to ``attempts`` times) when it failed for a reason
        another try can fix: SQLite's 'database is locked' (another writer), a PostgreSQL
        serialization failure or deadlock (SQLSTATE 40001 / 40P01), a connection lost mid-way. With
        ``retry_conflicts`` also when a concurrent insert won a unique key (``IntegrityError``): ``fn``
        reads again and finds the other's row. So ``fn`` must do all its reading inside the session."""
        def once() -> T:
            with Session(self._write_engine, expire_on_commit=False) as s, s.begin():
                return fn(s)

        for i in range(attempts):
            try:
                return once()
            except IntegrityError:
                if not retry_conflicts or i == attempts - 1:
                    raise
            except (OperationalError, DBAPIError) as err:
                if not _transient(err) or i == attempts - 1:
                    raise
                time.sleep(0.2 * (i + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def session(self) -> Session:
        """A session for reading (use it in a ``with``); writes go through :meth:`transaction`."""
        return Session(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- measurements ---------------------------------------------------------------------------

    def save_measurement(self, rec: MeasurementRecord) -> int:
        """Insert or replace the row for ``(kind, key, env_key)`` in one transaction; returns its id.

        A replaced row is first copied to ``measurement_history`` (see :meth:`history`)."""
        # another worker inserting the same row meanwhile is a conflict: read again, update it
        return int(self.transaction(lambda s: self.upsert_measurement(s, rec), retry_conflicts=True))

    @staticmethod
    def upsert_measurement(s: Session, rec: MeasurementRecord) -> int:
        """Insert or replace ``rec``'s row inside the open transaction of ``s`` (a
        :meth:`transaction`'s session; a replaced row is copied to ``measurement_history`` in the
        same transaction); returns its id."""
        if rec.kind not in KINDS:
            raise ValueError(f"invalid kind={rec.kind!r}: one of {', '.join(KINDS)}")
        if rec.status not in STATUSES:
            raise ValueError(f"invalid status={rec.status!r}: one of {', '.join(STATUSES)}")
        now = utcnow()
        values = dict(environment=jsonable(rec.environment), inputs=jsonable(rec.inputs),
                      payload=jsonable(rec.payload), status=rec.status, error=rec.error,
                      started_at=rec.started_at or now, finished_at=rec.finished_at or now,
                      duration_s=float(rec.duration_s))
        row = s.scalars(select(MeasurementRow).where(
            MeasurementRow.kind == rec.kind, MeasurementRow.key == rec.key,
            MeasurementRow.env_key == rec.env_key)).one_or_none()
        if row is None:
            row = MeasurementRow(kind=rec.kind, key=rec.key, env_key=rec.env_key, **values)
            s.add(row)
        else:
            s.add(MeasurementHistoryRow(measurement_id=row.id, superseded_at=now,
                                        **{name: getattr(row, name) for name in HISTORY_COPIED}))
            for name, v in values.items():
                setattr(row, name, v)
        s.flush()
        return int(row.id)

    @staticmethod
    def _to_record(row: MeasurementRow) -> MeasurementRecord:
        return MeasurementRecord(kind=row.kind, key=row.key, env_key=row.env_key, environment=row.environment or {},
                                 inputs=row.inputs or {}, status=row.status, payload=row.payload, error=row.error,
                                 started_at=row.started_at, finished_at=row.finished_at,
                                 duration_s=row.duration_s or 0.0, id=row.id)

    def history(self, kind: Optional[str] = None, key: Optional[str] = None,
                env_key: Optional[str] = None) -> list[MeasurementRecord]:
        """The earlier values later measurements replaced, oldest first, optionally filtered
        (each with ``superseded_at``; the current value is :meth:`get_measurement`'s). Empty for a
        database opened read-only (``create=False``) before it had the table (schema < 4)."""
        stmt = select(MeasurementHistoryRow).order_by(MeasurementHistoryRow.id)
        for column, value in (("kind", kind), ("key", key), ("env_key", env_key)):
            if value is not None:
                stmt = stmt.where(getattr(MeasurementHistoryRow, column) == value)
        from sqlalchemy import inspect

        if MeasurementHistoryRow.__tablename__ not in inspect(self.engine).get_table_names():
            return []
        with self.session() as s:
            return [MeasurementRecord(kind=r.kind, key=r.key, env_key=r.env_key, environment=r.environment or {},
                                      inputs=r.inputs or {}, status=r.status, payload=r.payload, error=r.error,
                                      started_at=r.started_at, finished_at=r.finished_at,
                                      duration_s=r.duration_s or 0.0, id=r.measurement_id,
                                      superseded_at=r.superseded_at) for r in s.scalars(stmt)]

    def get_measurement(self, kind: str, key: str, env_key: str) -> Optional[MeasurementRecord]:
        with self.session() as s:
            row = s.scalars(select(MeasurementRow).where(
                MeasurementRow.kind == kind, MeasurementRow.key == key,
                MeasurementRow.env_key == env_key)).one_or_none()
            return None if row is None else self._to_record(row)

    def measurement_status(self, env_key: str) -> dict[tuple[str, str], str]:
        """``(kind, key) -> status`` of everything measured in one environment (for resuming)."""
        with self.session() as s:
            rows = s.execute(select(MeasurementRow.kind, MeasurementRow.key, MeasurementRow.status)
                             .where(MeasurementRow.env_key == env_key)).all()
        return {(k, key): st for k, key, st in rows}

    def measurements(self, *, env_key: Optional[str] = None, kind: Optional[str] = None,
                     keys: Optional[Iterable[str]] = None) -> list[MeasurementRecord]:
        """Stored measurements, oldest first, optionally filtered."""
        stmt = select(MeasurementRow).order_by(MeasurementRow.id)
        if env_key is not None:
            stmt = stmt.where(MeasurementRow.env_key == env_key)
        if kind is not None:
            stmt = stmt.where(MeasurementRow.kind == kind)
        wanted = set(keys) if keys is not None else None
        with self.session() as s:
            out = [self._to_record(r) for r in s.scalars(stmt)]
        return out if wanted is None else [r for r in out if r.key in wanted]

    def latencies_ms(self, kind: str) -> dict[str, float]:
        """``key -> median latency`` of ok measurements in any environment (for time estimates)."""
        out: dict[str, float] = {}
        for rec in self.measurements(kind=kind):
            lat = (rec.payload or {}).get("latency") if rec.status == "ok" else None
            if isinstance(lat, Mapping) and lat.get("median_ms") is not None:
                out[rec.key] = float(lat["median_ms"])
        return out

    def environments(self) -> dict[str, dict[str, Any]]:
        """``env_key -> environment`` with the time of its latest measurement under ``_last``."""
        out: dict[str, dict[str, Any]] = {}
        with self.session() as s:
            rows = s.execute(select(MeasurementRow.env_key, MeasurementRow.environment, MeasurementRow.finished_at)
                             .order_by(MeasurementRow.id)).all()
        for env_key, env, finished in rows:
            out[env_key] = {**(env or {}), "_last": finished}
        return out

    # -- points -------------------------------------------------------------------------------

    def save_points(self, records: Sequence[PointRecord]) -> int:
        """Add the points of a space that are not stored yet (one transaction); returns how many."""
        if not records:
            return 0
        spaces = {r.space for r in records}

        def attempt(s: Session) -> int:
            have = set(s.execute(select(PointRow.space, PointRow.point_key).where(PointRow.space.in_(spaces))).all())
            added = 0
            now = utcnow()
            for r in records:
                if (r.space, r.key) in have:
                    continue
                have.add((r.space, r.key))
                p = r.point
                s.add(PointRow(space=r.space, point_key=r.key, point=p.to_dict(), encoder=p.encoder,
                               knobs=canonical_json(p.knob_dict()), resolution=p.resolution, llm=p.llm,
                               text_tokens=p.text_tokens, visual_tokens=r.visual_tokens,
                               encoder_key=r.encoder_key, projector_key=r.projector_key,
                               prefill_key=r.prefill_key, created_at=now))
                added += 1
            return added

        # another process adding the same points first is a conflict: read again, add the rest
        return int(self.transaction(attempt, retry_conflicts=True))

    def points(self, space: Optional[str] = None) -> list[PointRecord]:
        stmt = select(PointRow).order_by(PointRow.id)
        if space is not None:
            stmt = stmt.where(PointRow.space == space)
        with self.session() as s:
            return [PointRecord(space=r.space, point=DesignPoint.from_dict(r.point), encoder_key=r.encoder_key,
                                projector_key=r.projector_key, prefill_key=r.prefill_key,
                                visual_tokens=r.visual_tokens, created_at=r.created_at) for r in s.scalars(stmt)]

    def spaces(self) -> list[str]:
        with self.session() as s:
            return sorted(s.scalars(select(PointRow.space).distinct()))

    # -- accuracy -----------------------------------------------------------------------------

    def add_accuracy(self, value: float, source: str, *, point: Optional[DesignPoint] = None,
                     point_key: Optional[str] = None, encoder: Optional[str] = None,
                     knobs: Optional[Mapping[str, Any]] = None, resolution: Optional[int] = None,
                     llm: Optional[str] = None, metric: str = "avg",
                     details: Optional[Mapping[str, Any]] = None) -> int:
        """Store an accuracy; it applies to ``point``/``point_key``, or to every unpruned point
        matching the given (encoder, knobs, resolution, llm) fields (``knobs=None`` = default
        knobs). A point pruned inside the LLM takes only a value stored for its own key."""
        if point is not None:
            point_key = point.key
        if point_key is None and encoder is None:
            raise ValueError("add_accuracy needs a point, a point_key or at least an encoder to match")
        row = AccuracyRow(point_key=point_key, encoder=encoder,
                          knobs=None if knobs is None else canonical_json(dict(knobs)), resolution=resolution,
                          llm=llm, metric=metric, value=float(value), source=source,
                          details=jsonable(dict(details) if details else None), created_at=utcnow())

        def attempt(s: Session) -> int:
            s.add(row)
            s.flush()
            return int(row.id)

        return int(self.transaction(attempt))

    def accuracy(self) -> list[AccuracyRecord]:
        with self.session() as s:
            rows = list(s.scalars(select(AccuracyRow).order_by(AccuracyRow.id)))
            return [AccuracyRecord(value=r.value, source=r.source, metric=r.metric, point_key=r.point_key,
                                   encoder=r.encoder, knobs=None if r.knobs is None else json.loads(r.knobs),
                                   resolution=r.resolution, llm=r.llm, details=r.details,
                                   created_at=r.created_at, id=r.id) for r in rows]

    def iter_tables(self) -> Iterator[str]:
        """Names of the tables this store owns."""
        yield from Base.metadata.tables
