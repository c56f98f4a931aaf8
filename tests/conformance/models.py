"""Schema of the differential conformance corpus.

An orchestrator-like (Airflow-flavoured) schema, written in SQLAlchemy 2.0
declarative style.  Together the tables cover the column types whose values
(and Python types) the isolated session must round-trip unchanged:

* timezone-aware and naive datetimes, dates, times (with microseconds)
* ``Numeric`` with a scale (``Decimal``), ``Float`` (inf / nan where the
  backend can store them), ``BigInteger`` extremes, ``Boolean`` vs ``Integer``
* ``LargeBinary`` (including empty bytes), ``Uuid``
* ``JSON`` with both ``none_as_null`` settings (JSON ``null`` vs SQL ``NULL``)
* a Python ``enum.Enum`` through ``sa.Enum`` and a string-list ``sa.Enum``
* server-side defaults (``log.dttm`` / ``log.event_seq``)

String columns have explicit lengths so the schema also works on MariaDB; the
lengths of the composite-key columns are kept small enough for MariaDB's
3072-byte index limit with utf8mb4.

Relationships use ``lazy="select"`` (the default) so operations choose the
loading strategy through options, and every collection has an ``order_by`` so
collection contents are deterministic on every backend.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

KEY = 100  # length of identifier-like string columns (dag_id, task_id, run_id, ...)


class Base(AsyncAttrs, DeclarativeBase):
    pass


class TaskState(enum.Enum):
    """Python enum stored through ``sa.Enum(TaskState)`` (by member *name*)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    UP_FOR_RETRY = "up_for_retry"
    SKIPPED = "skipped"


# Plain string enum (values are returned as ``str``), in contrast to TaskState.
DAG_RUN_STATES = ("queued", "running", "success", "failed")


class Dag(Base):
    __tablename__ = "dag"

    dag_id: Mapped[str] = mapped_column(sa.String(KEY), primary_key=True)
    is_paused: Mapped[bool] = mapped_column(sa.Boolean, nullable=False)
    description: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    fileloc: Mapped[str] = mapped_column(sa.String(500), nullable=False)
    owner: Mapped[str] = mapped_column(sa.String(KEY), nullable=False)

    runs: Mapped[list[DagRun]] = relationship(
        back_populates="dag",
        cascade="all, delete-orphan",
        order_by="DagRun.id",
    )

    def __repr__(self) -> str:  # deterministic repr (no memory address)
        return f"Dag({self.dag_id!r})"


class DagRun(Base):
    __tablename__ = "dag_run"
    __table_args__ = (sa.UniqueConstraint("dag_id", "run_id", name="uq_dag_run_dag_id_run_id"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    dag_id: Mapped[str] = mapped_column(sa.String(KEY), sa.ForeignKey("dag.dag_id"), nullable=False)
    run_id: Mapped[str] = mapped_column(sa.String(KEY), nullable=False)
    state: Mapped[str] = mapped_column(sa.Enum(*DAG_RUN_STATES, name="dag_run_state"), nullable=False)
    execution_date: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)
    data_interval_start: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(), nullable=True)
    # none_as_null=True: Python None is stored as SQL NULL (contrast: log.payload)
    conf: Mapped[Any] = mapped_column(sa.JSON(none_as_null=True), nullable=True)
    run_type: Mapped[str] = mapped_column(sa.String(50), nullable=False)

    dag: Mapped[Dag] = relationship(back_populates="runs")
    task_instances: Mapped[list[TaskInstance]] = relationship(
        back_populates="dag_run",
        cascade="all, delete-orphan",
        order_by=lambda: [TaskInstance.task_id, TaskInstance.map_index],
    )

    def __repr__(self) -> str:
        return f"DagRun({self.dag_id!r}, {self.run_id!r})"


class TaskInstance(Base):
    __tablename__ = "task_instance"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["dag_id", "run_id"],
            ["dag_run.dag_id", "dag_run.run_id"],
            name="fk_task_instance_dag_run",
        ),
    )

    dag_id: Mapped[str] = mapped_column(sa.String(KEY), primary_key=True)
    task_id: Mapped[str] = mapped_column(sa.String(KEY), primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(KEY), primary_key=True)
    map_index: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    state: Mapped[TaskState | None] = mapped_column(sa.Enum(TaskState, name="task_state"), nullable=True)
    try_number: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    start_date: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    end_date: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    duration: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    pool: Mapped[str] = mapped_column(sa.String(KEY), nullable=False)
    priority_weight: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    queued_dttm: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    hostname: Mapped[str | None] = mapped_column(sa.String(KEY), nullable=True)
    external_executor_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, nullable=True)
    note: Mapped[str | None] = mapped_column(sa.Text, nullable=True)

    dag_run: Mapped[DagRun] = relationship(back_populates="task_instances")
    xcoms: Mapped[list[XCom]] = relationship(
        back_populates="task_instance",
        cascade="all, delete-orphan",
        order_by="XCom.id",
    )

    def __repr__(self) -> str:
        return f"TaskInstance({self.dag_id!r}, {self.task_id!r}, {self.run_id!r}, {self.map_index!r})"


class XCom(Base):
    __tablename__ = "xcom"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["dag_id", "task_id", "run_id", "map_index"],
            [
                "task_instance.dag_id",
                "task_instance.task_id",
                "task_instance.run_id",
                "task_instance.map_index",
            ],
            name="fk_xcom_task_instance",
        ),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    dag_id: Mapped[str] = mapped_column(sa.String(KEY), nullable=False)
    task_id: Mapped[str] = mapped_column(sa.String(KEY), nullable=False)
    run_id: Mapped[str] = mapped_column(sa.String(KEY), nullable=False)
    map_index: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    key: Mapped[str] = mapped_column(sa.String(KEY), nullable=False)
    value: Mapped[bytes] = mapped_column(sa.LargeBinary, nullable=False)
    timestamp: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True), nullable=False)

    task_instance: Mapped[TaskInstance] = relationship(back_populates="xcoms")

    def __repr__(self) -> str:
        return f"XCom({self.id!r})"


class Variable(Base):
    __tablename__ = "variable"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(sa.String(250), unique=True, nullable=False)
    val: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    is_encrypted: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    description: Mapped[str | None] = mapped_column(sa.Text, nullable=True)

    def __repr__(self) -> str:
        return f"Variable({self.key!r})"


class Connection(Base):
    __tablename__ = "connection"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    conn_id: Mapped[str] = mapped_column(sa.String(250), unique=True, nullable=False)
    conn_type: Mapped[str] = mapped_column(sa.String(500), nullable=False)
    host: Mapped[str | None] = mapped_column(sa.String(500), nullable=True)
    port: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    extra: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    password: Mapped[str | None] = mapped_column(sa.String(5000), nullable=True)

    def __repr__(self) -> str:
        return f"Connection({self.conn_id!r})"


class Log(Base):
    __tablename__ = "log"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    # Server-side default: func.now() differs between database A and database B
    # (the two inserts happen at different instants), so fingerprints exclude its
    # value (they only record whether it is NULL) and operations never return
    # it for rows they inserted.  See canonical.NONDETERMINISTIC_COLUMNS.
    dttm: Mapped[dt.datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )
    # Deterministic server-side default, compared like any other column.
    event_seq: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default=sa.text("7"))
    event: Mapped[str] = mapped_column(sa.String(60), nullable=False)
    dag_id: Mapped[str | None] = mapped_column(sa.String(KEY), nullable=True)
    owner: Mapped[str | None] = mapped_column(sa.String(500), nullable=True)
    extra: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(12, 4), nullable=True)
    day: Mapped[dt.date | None] = mapped_column(sa.Date, nullable=True)
    at_time: Mapped[dt.time | None] = mapped_column(sa.Time, nullable=True)
    ratio: Mapped[float | None] = mapped_column(sa.Double, nullable=True)  # DOUBLE on MariaDB too
    big: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    # none_as_null=False: Python None is stored as JSON 'null'; omitting the
    # attribute (or assigning sa.null()) stores SQL NULL.
    payload: Mapped[Any] = mapped_column(sa.JSON(none_as_null=False), nullable=True)

    def __repr__(self) -> str:
        return f"Log({self.id!r})"


metadata = Base.metadata

__all__ = [
    "DAG_RUN_STATES",
    "Base",
    "Connection",
    "Dag",
    "DagRun",
    "Log",
    "TaskInstance",
    "TaskState",
    "Variable",
    "XCom",
    "metadata",
]
