"""The tables of a results database, declared once: what :mod:`explorer.data.store` reads and
writes (measurements, their history, points, accuracy, the schema version) and what
:mod:`explorer.data.queue` leases (published sweeps, their jobs, leases, device claims).

Every table hangs off :class:`Base`'s own ``MetaData``, so optuna (or anyone else) may keep its
tables in the same database; :class:`~explorer.data.store.Store` creates the missing ones. The
classes are SQLAlchemy ORM rows, used inside a store transaction (``Store.transaction``); what
the store hands out to callers are the plain records of :mod:`explorer.data.store`.
"""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import JSON, DateTime, Float, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "MeasurementColumns", "MeasurementRow", "MeasurementHistoryRow", "HISTORY_COPIED", "PointRow",
           "MetaRow", "AccuracyRow", "SweepRow", "SweepJobRow", "LeaseRow", "DeviceClaimRow", "jsonable"]


class Base(DeclarativeBase):
    # Own metadata: optuna (or anyone else) may create tables in the same database.
    metadata = MetaData()


class MeasurementColumns:
    """The columns of one measurement, shared by the live table and its history."""

    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(64))
    env_key: Mapped[str] = mapped_column(String(64))
    environment: Mapped[Any] = mapped_column(JSON)
    inputs: Mapped[Any] = mapped_column(JSON)
    payload: Mapped[Optional[Any]] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime] = mapped_column(DateTime)
    duration_s: Mapped[float] = mapped_column(Float)


class MeasurementRow(MeasurementColumns, Base):
    __tablename__ = "measurements"
    __table_args__ = (UniqueConstraint("kind", "key", "env_key", name="uq_measurement"),
                      Index("ix_measurements_env", "env_key", "kind"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)


class MeasurementHistoryRow(MeasurementColumns, Base):
    """A measurement row as it was before a later measurement of the same (kind, key, env_key)
    replaced it: the columns of ``measurements`` (``measurement_id`` is the id of the row it was
    replaced in) plus ``superseded_at``. Rows are only ever added."""

    __tablename__ = "measurement_history"
    __table_args__ = (Index("ix_measurement_history_slot", "kind", "key", "env_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    measurement_id: Mapped[int] = mapped_column(Integer)
    superseded_at: Mapped[datetime] = mapped_column(DateTime)


#: The columns a history row copies from the measurement row it keeps.
HISTORY_COPIED = ("kind", "key", "env_key", "environment", "inputs", "payload", "status", "error", "started_at",
                  "finished_at", "duration_s")


class PointRow(Base):
    __tablename__ = "points"
    __table_args__ = (UniqueConstraint("space", "point_key", name="uq_point"),
                      Index("ix_points_key", "point_key"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    space: Mapped[str] = mapped_column(String(200))
    point_key: Mapped[str] = mapped_column(String(64))
    point: Mapped[Any] = mapped_column(JSON)
    encoder: Mapped[str] = mapped_column(String(200))
    knobs: Mapped[str] = mapped_column(Text)  # canonical JSON, for matching accuracy rows
    resolution: Mapped[int] = mapped_column(Integer)
    llm: Mapped[str] = mapped_column(String(500))
    text_tokens: Mapped[int] = mapped_column(Integer)
    visual_tokens: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    encoder_key: Mapped[str] = mapped_column(String(64))
    projector_key: Mapped[str] = mapped_column(String(64))
    prefill_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class MetaRow(Base):
    __tablename__ = "explorer_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SweepRow(Base):
    """A published sweep: its measurement settings, so a worker started without the space can join."""

    __tablename__ = "sweeps"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    settings: Mapped[Any] = mapped_column(JSON)
    n_jobs: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class SweepJobRow(Base):
    """One unique measurement of a published sweep, independent of where it is measured."""

    __tablename__ = "sweep_jobs"
    __table_args__ = (UniqueConstraint("sweep", "kind", "key", name="uq_sweep_job"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(64))
    inputs: Mapped[Any] = mapped_column(JSON)
    label: Mapped[str] = mapped_column(Text)
    estimate_s: Mapped[float] = mapped_column(Float)


class LeaseRow(Base):
    """The state of one sweep job in one environment: pending, leased (to ``owner`` until
    ``lease_until``) or done. An expired lease counts as pending."""

    __tablename__ = "leases"
    __table_args__ = (UniqueConstraint("sweep", "env_key", "kind", "key", name="uq_lease"),
                      Index("ix_leases_claim", "sweep", "env_key", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep: Mapped[str] = mapped_column(String(200))
    env_key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(64))
    inputs: Mapped[Any] = mapped_column(JSON)
    label: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    owner: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[Optional[datetime]] = mapped_column(DateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class DeviceClaimRow(Base):
    """The one timing worker of a device of a host (a lease renewed by that worker's heartbeat)."""

    __tablename__ = "device_claims"

    host: Mapped[str] = mapped_column(String(200), primary_key=True)
    device: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    lease_until: Mapped[datetime] = mapped_column(DateTime)


class AccuracyRow(Base):
    __tablename__ = "accuracy"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    point_key: Mapped[Optional[str]] = mapped_column(String(64), nullable=True, index=True)
    encoder: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    knobs: Mapped[Optional[str]] = mapped_column(Text, nullable=True)  # canonical JSON; NULL = default knobs
    resolution: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    llm: Mapped[Optional[str]] = mapped_column(String(500), nullable=True)
    metric: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(500))
    details: Mapped[Optional[Any]] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def jsonable(value: Any) -> Any:
    """A JSON round-trip: what a JSON column will give back, with odd types made plain."""
    if value is None:
        return None
    return json.loads(json.dumps(value, default=_json_default, allow_nan=True))
