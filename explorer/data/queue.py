"""Work distribution through the store: a sweep's jobs, claimed with leases by any number of workers.

A publisher (``explorer worker +space=NAME``, or :meth:`WorkQueue.publish`) writes a sweep's unique
measurements once (``sweep_jobs``, independent of the device) and its measurement settings
(``sweeps``). Each environment that joins gets one ``leases`` row per job it still has to measure
(:meth:`WorkQueue.join`), so a GPU box and a laptop work through the same sweep side by side and
their values stay apart (the ``env_key`` of :mod:`explorer.data.store`).

Why it looks like this (the standard queue-in-a-database pattern):

- A claim is one short transaction: on PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED`` picks a
  pending row no other claimer is looking at; on SQLite the transaction starts with
  ``BEGIN IMMEDIATE`` (the store's write engine), which serialises claimers.
- A lease lasts ``lease_s`` seconds from the last heartbeat (:class:`Heartbeat`, a thread of the
  worker). A worker that dies stops renewing; once its lease has expired the row counts as
  pending again and another worker claims it.
- :meth:`WorkQueue.complete` writes the measurement and marks the row done in one transaction,
  and only while the lease is still this worker's: a worker that lost its lease (it stalled past
  the lease and someone else took over) has its result dropped, so each measurement is committed
  once, by the lease holder (the ``measurements`` upsert on ``(kind, key, env_key)`` stays the
  last line of defence).
- :meth:`WorkQueue.claim_device` keeps timing workers from spoiling each other's numbers: one
  claim row per (host, device), itself a lease renewed by the heartbeat. Planning and publishing
  take no claim and may run anywhere.

Lease times come from the workers' clocks (UTC): keep hosts on NTP, and keep ``lease_s`` well
above the clock skew and the heartbeat interval (``lease_s / 3``).
"""
from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable, Mapping, Optional

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from explorer.data.store import MeasurementRecord, Store, StoreError, utcnow
from explorer.data.tables import DeviceClaimRow, LeaseRow, SweepJobRow, SweepRow, jsonable

__all__ = ["LEASE_STATES", "QueuedJob", "QueueCounts", "WorkQueue", "Heartbeat", "DeviceBusy", "worker_id", "owner_gone"]

LEASE_STATES = ("pending", "leased", "done")


class DeviceBusy(RuntimeError):
    """Another live timing worker holds this host's device."""


def owner_gone(owner: Optional[str]) -> bool:
    """Whether a lease's owner (``host:pid:random``, :func:`worker_id`) is a process of this host
    that no longer runs (killed, crashed). Owners on other hosts are judged by their leases' time."""
    if not owner:
        return False
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def worker_id() -> str:
    """``host:pid:random``: unique per worker process, readable in the tables."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class QueuedJob:
    """A job this worker holds the lease of."""

    lease_id: int
    sweep: str
    env_key: str
    kind: str
    key: str
    inputs: dict[str, Any]
    label: str
    attempts: int


@dataclass(frozen=True)
class QueueCounts:
    """Where one sweep stands in one environment (an expired lease counts as pending)."""

    pending: int
    leased: int
    done: int

    @property
    def open(self) -> int:
        return self.pending + self.leased


class WorkQueue:
    """The leased work of a :class:`~explorer.data.store.Store` (see the module docstring)."""

    def __init__(self, store: Store, owner: Optional[str] = None, lease_s: float = 60.0):
        if not lease_s > 0:
            raise ValueError(f"invalid lease_s={lease_s!r}: a number of seconds > 0")
        self.store = store
        self.owner = owner or worker_id()
        self.lease_s = float(lease_s)

    def _until(self) -> Any:
        return utcnow() + timedelta(seconds=self.lease_s)

    # -- publishing and joining --------------------------------------------------------------

    def publish(self, sweep: str, settings: Mapping[str, Any], jobs: Iterable[Any],
                estimates_s: Optional[Mapping[str, float]] = None) -> int:
        """Record sweep ``sweep`` (its settings and unique jobs: :class:`~explorer.engine.sweep.Job`);
        idempotent: jobs already published are kept. Returns how many jobs were added."""
        jobs = list(jobs)
        estimates_s = estimates_s or {}
        settings = jsonable(dict(settings))

        def attempt(s: Session) -> int:
            row = s.get(SweepRow, sweep)
            if row is None:
                s.add(SweepRow(name=sweep, settings=settings, n_jobs=0, created_at=utcnow()))
            elif row.settings != settings:
                raise StoreError(f"sweep {sweep!r} is already published with other measurement settings "
                                 f"({row.settings} here, {settings} now): one sweep measures one way; "
                                 "give the space another name to publish these settings")
            have = set(s.execute(select(SweepJobRow.kind, SweepJobRow.key).where(SweepJobRow.sweep == sweep)).all())
            added = 0
            for j in jobs:
                if (j.kind, j.key) in have:
                    continue
                have.add((j.kind, j.key))
                s.add(SweepJobRow(sweep=sweep, kind=j.kind, key=j.key, inputs=jsonable(j.inputs), label=j.label,
                                  estimate_s=float(estimates_s.get(j.key, 0.0))))
                added += 1
            s.flush()
            s.get(SweepRow, sweep).n_jobs = len(have)
            return added

        return int(self.store.transaction(attempt, retry_conflicts=True))

    def sweeps(self) -> dict[str, dict[str, Any]]:
        """``name -> settings`` of every published sweep."""
        with self.store.session() as s:
            return {r.name: dict(r.settings or {}) for r in s.scalars(select(SweepRow).order_by(SweepRow.name))}

    def settings(self, sweep: str) -> dict[str, Any]:
        """The measurement settings sweep ``sweep`` was published with (StoreError if unknown)."""
        known = self.sweeps()
        if sweep not in known:
            raise StoreError(f"invalid sweep={sweep!r}: no such sweep in {self.store.url} "
                             f"(published: {', '.join(known) or 'none'}); publish it with "
                             f"`explorer worker store=... +space={sweep}`")
        return known[sweep]

    def join(self, sweep: str, env_key: str, done: Iterable[tuple[str, str]] = ()) -> int:
        """Make this environment's lease rows for sweep ``sweep``: pending for every job not in ``done``
        (``(kind, key)`` pairs measured already). A done row whose job is not in ``done`` any more
        (a ``killed`` measurement a resume retries) is made pending again. Idempotent; returns how
        many rows became pending."""
        done = set(done)

        def attempt(s: Session) -> int:
            jobs = list(s.scalars(select(SweepJobRow).where(SweepJobRow.sweep == sweep).order_by(SweepJobRow.id)))
            rows = {(r.kind, r.key): r for r in s.scalars(
                select(LeaseRow).where(LeaseRow.sweep == sweep, LeaseRow.env_key == env_key).with_for_update())}
            now = utcnow()
            changed = 0
            for j in jobs:
                row = rows.get((j.kind, j.key))
                is_done = (j.kind, j.key) in done
                if row is None:
                    s.add(LeaseRow(sweep=sweep, env_key=env_key, kind=j.kind, key=j.key, inputs=j.inputs,
                                   label=j.label, state="done" if is_done else "pending", attempts=0,
                                   updated_at=now))
                    changed += not is_done
                elif row.state == "done" and not is_done:
                    row.state, row.owner, row.lease_until, row.updated_at = "pending", None, None, now
                    changed += 1
            return changed

        return int(self.store.transaction(attempt, retry_conflicts=True))

    # -- claiming ----------------------------------------------------------------------------

    def claim(self, sweep: str, env_key: str) -> Optional[QueuedJob]:
        """Lease the next pending (or expired) job of ``sweep`` in ``env_key``; None when none is free."""
        def attempt(s: Session) -> Optional[QueuedJob]:
            now = utcnow()
            row = s.scalars(
                select(LeaseRow).where(LeaseRow.sweep == sweep, LeaseRow.env_key == env_key,
                                       or_(LeaseRow.state == "pending",
                                         and_(LeaseRow.state == "leased", LeaseRow.lease_until < now)))
                .order_by(LeaseRow.id).limit(1).with_for_update(skip_locked=True)).first()
            if row is None:
                return None
            row.state, row.owner, row.lease_until = "leased", self.owner, self._until()
            row.attempts = (row.attempts or 0) + 1
            row.updated_at = now
            return QueuedJob(lease_id=int(row.id), sweep=row.sweep, env_key=row.env_key, kind=row.kind,
                             key=row.key, inputs=dict(row.inputs or {}), label=row.label,
                             attempts=int(row.attempts))

        return self.store.transaction(attempt)

    def claim_jobs(self, sweep: str, env_key: str, wanted: Iterable[tuple[str, str]]) -> list[QueuedJob]:
        """Lease those of ``wanted`` (``(kind, key)`` pairs) that are free: pending, with an expired
        lease, or leased by a process of this host that is gone (a killed sweep's jobs are taken
        over at once, not after its lease runs out). One transaction; the jobs others hold or have
        done are left out. What ``explorer sweep`` claims a group of interleaved jobs with."""
        wanted = list(dict.fromkeys(wanted))
        if not wanted:
            return []

        def attempt(s: Session) -> list[QueuedJob]:
            now = utcnow()
            keys = {k for _, k in wanted}
            rows = s.scalars(select(LeaseRow).where(LeaseRow.sweep == sweep, LeaseRow.env_key == env_key,
                                                    LeaseRow.key.in_(keys), LeaseRow.state != "done")
                             .order_by(LeaseRow.id).with_for_update(skip_locked=True)).all()
            got: list[QueuedJob] = []
            pairs = set(wanted)
            for row in rows:
                if (row.kind, row.key) not in pairs:
                    continue
                free = row.state == "pending" or (row.lease_until is not None and row.lease_until < now) \
                    or row.owner == self.owner or owner_gone(row.owner)
                if not free:
                    continue
                row.state, row.owner, row.lease_until = "leased", self.owner, self._until()
                row.attempts = (row.attempts or 0) + 1
                row.updated_at = now
                got.append(QueuedJob(lease_id=int(row.id), sweep=row.sweep, env_key=row.env_key, kind=row.kind,
                                     key=row.key, inputs=dict(row.inputs or {}), label=row.label,
                                     attempts=int(row.attempts)))
            return got

        return list(self.store.transaction(attempt))

    def states(self, sweep: str, env_key: str) -> dict[tuple[str, str], str]:
        """``(kind, key) -> pending | leased | done`` of a sweep in one environment (an expired
        lease, or one held by a gone process of this host, reads as pending)."""
        now = utcnow()
        with self.store.session() as s:
            rows = s.execute(select(LeaseRow.kind, LeaseRow.key, LeaseRow.state, LeaseRow.lease_until, LeaseRow.owner)
                             .where(LeaseRow.sweep == sweep, LeaseRow.env_key == env_key)).all()
        out: dict[tuple[str, str], str] = {}
        for kind, key, state, until, owner in rows:
            if state == "leased" and ((until is not None and until < now) or owner_gone(owner)):
                state = "pending"
            out[(str(kind), str(key))] = str(state)
        return out

    def attempts(self, sweep: str, env_key: str) -> dict[tuple[str, str], int]:
        """``(kind, key) -> how many times a worker leased it`` (more than once: a lease ran out, or
        a worker died holding it, and another worker took the job over)."""
        with self.store.session() as s:
            rows = s.execute(select(LeaseRow.kind, LeaseRow.key, LeaseRow.attempts)
                             .where(LeaseRow.sweep == sweep, LeaseRow.env_key == env_key)).all()
        return {(str(k), str(key)): int(n or 0) for k, key, n in rows}

    def renew(self) -> int:
        """Extend every lease this worker holds (what the heartbeat calls); returns how many."""
        def attempt(s: Session) -> int:
            until = self._until()
            n = s.execute(update(LeaseRow).where(LeaseRow.owner == self.owner, LeaseRow.state == "leased")
                          .values(lease_until=until)).rowcount
            s.execute(update(DeviceClaimRow).where(DeviceClaimRow.owner == self.owner).values(lease_until=until))
            return int(n or 0)

        return int(self.store.transaction(attempt))

    def complete(self, job: QueuedJob, rec: MeasurementRecord) -> bool:
        """Write ``rec`` and mark ``job`` done, in one transaction, if its lease is still ours.
        False (nothing written): the lease expired and another worker holds the job now."""
        def attempt(s: Session) -> bool:
            row = s.scalars(select(LeaseRow).where(LeaseRow.id == job.lease_id).with_for_update()).one_or_none()
            if row is None or row.owner != self.owner or row.state != "leased":
                return False
            self.store.upsert_measurement(s, rec)
            row.state, row.lease_until, row.updated_at = "done", None, utcnow()
            return True

        return bool(self.store.transaction(attempt, retry_conflicts=True))

    def release(self, job: QueuedJob) -> None:
        """Give a leased job back to the pool unmeasured (a worker stopping early)."""
        def attempt(s: Session) -> None:
            s.execute(update(LeaseRow).where(LeaseRow.id == job.lease_id, LeaseRow.owner == self.owner,
                                             LeaseRow.state == "leased")
                      .values(state="pending", owner=None, lease_until=None, updated_at=utcnow()))

        self.store.transaction(attempt)

    def counts(self, sweep: str, env_key: str) -> QueueCounts:
        now = utcnow()
        with self.store.session() as s:
            rows = s.execute(select(LeaseRow.state, LeaseRow.lease_until, func.count())
                             .where(LeaseRow.sweep == sweep, LeaseRow.env_key == env_key)
                             .group_by(LeaseRow.state, LeaseRow.lease_until)).all()
        pending = leased = done = 0
        for state, until, n in rows:
            if state == "done":
                done += n
            elif state == "leased" and until is not None and until >= now:
                leased += n
            else:
                pending += n
        return QueueCounts(pending=pending, leased=leased, done=done)

    # -- the one timing worker of a device ---------------------------------------------------

    def claim_device(self, host: str, device: str) -> None:
        """Take (host, device) for this worker, or raise :class:`DeviceBusy` naming the live holder."""
        def attempt(s: Session) -> None:
            now = utcnow()
            row = s.scalars(select(DeviceClaimRow).where(DeviceClaimRow.host == host, DeviceClaimRow.device == device)
                            .with_for_update()).one_or_none()
            if row is None:
                s.add(DeviceClaimRow(host=host, device=device, owner=self.owner, lease_until=self._until()))
            elif row.owner == self.owner or row.lease_until < now:
                row.owner, row.lease_until = self.owner, self._until()
            else:
                raise DeviceBusy(f"device {device!r} of host {host!r} is held by timing worker {row.owner} "
                                 f"(lease until {row.lease_until:%H:%M:%S} UTC): one timing worker per device, "
                                 "so that two do not spoil each other's numbers; give this worker another "
                                 "device, or wait for that one to finish")

        self.store.transaction(attempt, retry_conflicts=True)

    def release_device(self) -> None:
        def attempt(s: Session) -> None:
            s.execute(delete(DeviceClaimRow).where(DeviceClaimRow.owner == self.owner))

        self.store.transaction(attempt)


class Heartbeat:
    """A daemon thread renewing a :class:`WorkQueue`'s leases every ``lease_s / 3`` seconds.

    A renewal that fails (the database is briefly away) is tried again at the next beat; the
    lease outlives two missed beats."""

    def __init__(self, queue: WorkQueue, interval_s: Optional[float] = None):
        self.queue = queue
        self.interval_s = interval_s if interval_s is not None else queue.lease_s / 3
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="explorer-lease-heartbeat", daemon=True)
        self.failures = 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.queue.renew()
            except Exception:  # noqa: BLE001 - try again at the next beat
                self.failures += 1

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(self.interval_s + 5)
