"""A small orchestrator-like schema: DAGs, runs, task instances, variables, connections, XComs.

Shaped after Apache Airflow's metadata tables, with the features that make isolation hard: a
composite primary key, timezone-aware datetimes (a ``TypeDecorator``, processed on the server for
binds and on the client for results), a JSON column and Python enums. Both sides import this
module: the DB-API server for its table metadata, the worker for its ORM classes.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["Base", "Connection", "Dag", "DagRun", "RunState", "TaskDependency", "TaskInstance", "TaskState",
           "UtcDateTime", "Variable", "XCom"]


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out - on every database, SQLite included."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: UtcDateTime stores aware datetimes only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class RunState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


class TaskState(enum.Enum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"


class Base(DeclarativeBase):
    pass


class Dag(Base):
    __tablename__ = "dag"

    dag_id: Mapped[str] = mapped_column(sa.String(250), primary_key=True)
    is_paused: Mapped[bool] = mapped_column(default=False)
    fileloc: Mapped[str] = mapped_column(sa.String(2000))
    last_parsed: Mapped[datetime | None] = mapped_column(UtcDateTime)

    runs: Mapped[list[DagRun]] = relationship(back_populates="dag", order_by="DagRun.logical_date",
                                              cascade="all, delete-orphan")


class DagRun(Base):
    __tablename__ = "dag_run"
    __table_args__ = (sa.UniqueConstraint("dag_id", "run_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dag_id: Mapped[str] = mapped_column(sa.ForeignKey("dag.dag_id"))
    run_id: Mapped[str] = mapped_column(sa.String(250))
    state: Mapped[RunState] = mapped_column(sa.Enum(RunState, name="run_state"))
    logical_date: Mapped[datetime] = mapped_column(UtcDateTime)
    conf: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)

    dag: Mapped[Dag] = relationship(back_populates="runs")
    task_instances: Mapped[list[TaskInstance]] = relationship(
        back_populates="dag_run", order_by="TaskInstance.task_id", cascade="all, delete-orphan")


class TaskInstance(Base):
    __tablename__ = "task_instance"
    __table_args__ = (
        sa.ForeignKeyConstraint(["dag_id", "run_id"], ["dag_run.dag_id", "dag_run.run_id"]),
    )

    dag_id: Mapped[str] = mapped_column(sa.String(250), primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(250), primary_key=True)
    task_id: Mapped[str] = mapped_column(sa.String(250), primary_key=True)
    map_index: Mapped[int] = mapped_column(primary_key=True, default=-1)
    state: Mapped[TaskState | None] = mapped_column(sa.Enum(TaskState, name="task_state"))
    try_number: Mapped[int] = mapped_column(default=0)
    hostname: Mapped[str | None] = mapped_column(sa.String(1000))  # the worker running it (policy: writable)
    start_date: Mapped[datetime | None] = mapped_column(UtcDateTime)
    end_date: Mapped[datetime | None] = mapped_column(UtcDateTime)

    dag_run: Mapped[DagRun] = relationship(back_populates="task_instances")


class Variable(Base):
    __tablename__ = "variable"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(250), unique=True)
    val: Mapped[str] = mapped_column(sa.Text)
    description: Mapped[str | None] = mapped_column(sa.Text)


class TaskDependency(Base):
    """An edge of a DAG: *task_id* runs after *upstream_task_id* (Airflow keeps these in its
    serialized DAGs; a table keeps the example small)."""

    __tablename__ = "task_dependency"

    dag_id: Mapped[str] = mapped_column(sa.ForeignKey("dag.dag_id"), primary_key=True)
    task_id: Mapped[str] = mapped_column(sa.String(250), primary_key=True)
    upstream_task_id: Mapped[str] = mapped_column(sa.String(250), primary_key=True)


class Connection(Base):
    __tablename__ = "connection"

    id: Mapped[int] = mapped_column(primary_key=True)
    conn_id: Mapped[str] = mapped_column(sa.String(250), unique=True)
    conn_type: Mapped[str] = mapped_column(sa.String(500))
    host: Mapped[str | None] = mapped_column(sa.String(500))
    port: Mapped[int | None]
    login: Mapped[str | None] = mapped_column(sa.String(500))
    extra: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)


class XCom(Base):
    """A value a task instance hands to its downstream tasks.

    Keyed as Airflow keys it - by the run's integer id, not its (dag_id, run_id) strings - so the
    primary key fits an index on every database: on MariaDB / MySQL with utf8mb4 (4 bytes a
    character) 4 + 250 * 4 + 4 + 512 * 4 = 3056 of InnoDB's 3072 bytes. ``dag_id`` and ``run_id``
    stay as columns, which the worker policy's row filter compares with the token's claims.
    """

    __tablename__ = "xcom"
    __table_args__ = (
        sa.ForeignKeyConstraint(["dag_id", "run_id"], ["dag_run.dag_id", "dag_run.run_id"]),
    )

    dag_run_id: Mapped[int] = mapped_column(sa.ForeignKey("dag_run.id"), primary_key=True)
    task_id: Mapped[str] = mapped_column(sa.String(250), primary_key=True)
    map_index: Mapped[int] = mapped_column(primary_key=True, default=-1)
    key: Mapped[str] = mapped_column(sa.String(512), primary_key=True)
    dag_id: Mapped[str] = mapped_column(sa.String(250))
    run_id: Mapped[str] = mapped_column(sa.String(250))
    value: Mapped[Any] = mapped_column(sa.JSON)
    timestamp: Mapped[datetime] = mapped_column(UtcDateTime)
