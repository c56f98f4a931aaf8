"""A small Airflow-like schema for the isolation benchmark.

``dag``, ``dag_run``, ``task_instance`` (four-column composite primary key, as in Airflow 2.x/3.x)
and ``variable``. The DB-API subprocess imports ``bench.models:Base.metadata``.

``StreamingBase`` holds the one table of the streaming benchmark (``bench.bench_streaming``),
apart so that neither benchmark creates the other's tables.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID_LEN = 250


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class Dag(Base):
    __tablename__ = "dag"

    dag_id: Mapped[str] = mapped_column(sa.String(ID_LEN), primary_key=True)
    is_paused: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=True)
    fileloc: Mapped[str] = mapped_column(sa.String(2000), nullable=False)
    owners: Mapped[str] = mapped_column(sa.String(2000), nullable=False)
    description: Mapped[str | None] = mapped_column(sa.Text)
    last_parsed_time: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    max_active_tasks: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=16)


class DagRun(Base):
    __tablename__ = "dag_run"
    __table_args__ = (sa.UniqueConstraint("dag_id", "run_id", name="dag_run_dag_id_run_id_key"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    dag_id: Mapped[str] = mapped_column(sa.String(ID_LEN), sa.ForeignKey("dag.dag_id"), nullable=False)
    run_id: Mapped[str] = mapped_column(sa.String(ID_LEN), nullable=False)
    logical_date: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    start_date: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    end_date: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    state: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    run_type: Mapped[str] = mapped_column(sa.String(50), nullable=False)
    conf: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class TaskInstance(Base):
    __tablename__ = "task_instance"
    __table_args__ = (
        sa.ForeignKeyConstraint(["dag_id", "run_id"], ["dag_run.dag_id", "dag_run.run_id"],
                                name="task_instance_dag_run_fkey", ondelete="CASCADE"),
        sa.Index("ti_state", "state"),
        sa.Index("ti_dag_run", "dag_id", "run_id"),
    )

    dag_id: Mapped[str] = mapped_column(sa.String(ID_LEN), primary_key=True)
    task_id: Mapped[str] = mapped_column(sa.String(ID_LEN), primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(ID_LEN), primary_key=True)
    map_index: Mapped[int] = mapped_column(sa.Integer, primary_key=True, server_default=sa.text("-1"))
    start_date: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    end_date: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    duration: Mapped[float | None] = mapped_column(sa.Float)
    state: Mapped[str | None] = mapped_column(sa.String(20))
    try_number: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    max_tries: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    hostname: Mapped[str] = mapped_column(sa.String(1000), nullable=False, default="")
    unixname: Mapped[str] = mapped_column(sa.String(1000), nullable=False, default="")
    pool: Mapped[str] = mapped_column(sa.String(256), nullable=False, default="default_pool")
    pool_slots: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1)
    queue: Mapped[str] = mapped_column(sa.String(256), nullable=False, default="default")
    priority_weight: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=1)
    operator: Mapped[str | None] = mapped_column(sa.String(1000))
    queued_dttm: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    pid: Mapped[int | None] = mapped_column(sa.Integer)
    executor: Mapped[str | None] = mapped_column(sa.String(1000))
    next_kwargs: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), default=utcnow,
                                                           onupdate=utcnow)


class Variable(Base):
    __tablename__ = "variable"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(ID_LEN), unique=True, nullable=False)
    val: Mapped[str | None] = mapped_column(sa.Text)
    description: Mapped[str | None] = mapped_column(sa.Text)
    is_encrypted: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)


class StreamingBase(DeclarativeBase):
    pass


class Payload(StreamingBase):
    """Many narrow rows: an id and a ~100-byte string (``bench.bench_streaming``)."""

    __tablename__ = "stream_payload"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    payload: Mapped[str] = mapped_column(sa.String(120), nullable=False)
