"""Airflow's own model code on DBSession: variables, connections, a dag run, its task instances and
XComs. Each operation runs through ``airflow.settings.Session`` against the direct twin and then
the isolated one; values, types, exception classes and (per test) the resulting tables compare."""

from __future__ import annotations

import json
from typing import Any

import pendulum
import sqlalchemy as sa

from tests.integration.airflow._cases import RUN_ID, both
from tests.integration.airflow._twins import TALLY, Side, differences, table_state

LOGICAL = pendulum.datetime(2026, 3, 1, tz="UTC")


def _tables_match(sides: tuple[Side, Side], metadata: sa.MetaData, name: str) -> None:
    diff = differences(table_state(sides[0].inspect_url, metadata), table_state(sides[1].inspect_url, metadata))
    TALLY.record(f"tables after {name}", not diff)
    assert not diff, "\n".join(f"{t}: {d}" for t, d in diff.items())


def test_migration_head(sides: tuple[Side, Side]) -> None:
    """What every component checks first: alembic's MigrationContext on ``alembic_version``,
    a table outside Airflow's ORM metadata (served by ``DBAPI_EXTRA_TABLES``)."""
    from airflow.utils.db import _get_current_revision, check_migrations

    def revision(side: Side) -> Any:
        with side.sessions() as session:
            return _get_current_revision(session)

    head = both(sides, "_get_current_revision(session)", revision)
    assert head[1][0] == "str", head  # a real revision, not None twice
    both(sides, "check_migrations", lambda s: check_migrations(timeout=1))


def test_variables(sides: tuple[Side, Side], airflow_metadata: sa.MetaData) -> None:
    from airflow.models.variable import Variable

    both(sides, "Variable.set", lambda s: Variable.set("greeting", "hello", description="a greeting"))
    both(sides, "Variable.get", lambda s: Variable.get("greeting"))
    both(sides, "Variable.set json", lambda s: Variable.set("config", {"a": [1, 2], "b": None, "c": "é"},
                                                             serialize_json=True))
    both(sides, "Variable.get json", lambda s: Variable.get("config", deserialize_json=True))
    both(sides, "Variable.get missing", lambda s: Variable.get("missing"))
    both(sides, "Variable.get default", lambda s: Variable.get("missing", default_var="fallback"))
    both(sides, "Variable.update", lambda s: Variable.update("greeting", "hi"))
    both(sides, "Variable.update missing", lambda s: Variable.update("nope", "x"))
    both(sides, "Variable.set overwrite", lambda s: Variable.set("greeting", "bye"))

    def listed(side: Side) -> Any:
        with side.sessions() as session:
            return session.scalars(sa.select(Variable).order_by(Variable.key)).all()

    both(sides, "select(Variable)", listed)
    both(sides, "Variable.delete", lambda s: Variable.delete("config"))
    both(sides, "Variable.delete missing", lambda s: Variable.delete("config"))
    _tables_match(sides, airflow_metadata, "variables")


def test_connections(sides: tuple[Side, Side], airflow_metadata: sa.MetaData) -> None:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    def add(side: Side) -> Any:
        with create_session() as session:
            session.add(Connection(conn_id="pg_main", conn_type="postgres", host="db.example", login="etl",
                                   password="s3cret", schema="warehouse", port=5432,
                                   extra=json.dumps({"sslmode": "require", "connect_timeout": 10})))
        return None

    def fetched(side: Side) -> Any:
        conn = Connection.get_connection_from_secrets("pg_main")
        return conn.get_uri(), conn.password, conn.extra_dejson, conn.port, conn.conn_type

    def change(side: Side) -> Any:
        with create_session() as session:
            conn = session.scalar(sa.select(Connection).where(Connection.conn_id == "pg_main"))
            conn.password = "n3w"
            conn.extra = json.dumps({"sslmode": "disable"})
        return Connection.get_connection_from_secrets("pg_main").password

    def duplicate(side: Side) -> Any:
        with create_session() as session:
            session.add(Connection(conn_id="pg_main", conn_type="postgres"))

    both(sides, "add Connection", add)
    both(sides, "Connection.get_connection_from_secrets", fetched)
    both(sides, "Connection missing", lambda s: Connection.get_connection_from_secrets("nope"))
    both(sides, "change Connection", change)
    both(sides, "duplicate Connection (IntegrityError)", duplicate)
    _tables_match(sides, airflow_metadata, "connections")


def test_dag_run_and_task_instances(sides: tuple[Side, Side], dag_run: None, airflow_metadata: sa.MetaData) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState

    def find(side: Side) -> Any:
        return DagRun.find(dag_id="etl", run_id=RUN_ID)

    def tis(side: Side) -> Any:
        with create_session() as session:
            run = session.scalar(sa.select(DagRun).where(DagRun.run_id == RUN_ID))
            return sorted(run.get_task_instances(session=session), key=lambda ti: ti.task_id)

    def schedule(side: Side) -> Any:
        with create_session() as session:
            run = session.scalar(sa.select(DagRun).where(DagRun.run_id == RUN_ID))
            run.dag = __import__("airflow.models.serialized_dag", fromlist=["x"]).SerializedDagModel.get_dag(
                "etl", session=session)
            schedulable, callback = run.update_state(session=session)
            return sorted(ti.task_id for ti in schedulable), callback

    def queue(side: Side) -> Any:
        with create_session() as session:
            ti = session.scalar(sa.select(TaskInstance).where(TaskInstance.run_id == RUN_ID,
                                                              TaskInstance.task_id == "extract"))
            return ti.set_state(TaskInstanceState.QUEUED, session=session)

    def by_state(side: Side) -> Any:
        with create_session() as session:
            return session.execute(
                sa.select(TaskInstance.task_id, TaskInstance.state, TaskInstance.try_number)
                .where(TaskInstance.dag_id == "etl", TaskInstance.state.in_([TaskInstanceState.QUEUED,
                                                                              TaskInstanceState.SCHEDULED]))
                .order_by(TaskInstance.task_id)).all()

    def latest(side: Side) -> Any:
        with create_session() as session:
            return session.scalars(sa.select(DagRun).where(DagRun.state == DagRunState.RUNNING)
                                   .order_by(DagRun.logical_date.desc()).limit(1)).all()

    both(sides, "DagRun.find", find)
    both(sides, "DagRun.get_task_instances", tis)
    both(sides, "DagRun.update_state", schedule)
    both(sides, "TaskInstance.set_state(QUEUED)", queue)
    both(sides, "task instances by state (str enum IN)", by_state)
    both(sides, "latest running DagRun", latest)
    _tables_match(sides, airflow_metadata, "dag run and task instances")


def test_xcoms(sides: tuple[Side, Side], dag_run: None, airflow_metadata: sa.MetaData) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    def put(side: Side) -> Any:
        with create_session() as session:
            XComModel.set("return_value", {"rows": 3, "when": "2026-03-01"}, dag_id="etl", task_id="extract",
                          run_id=RUN_ID, session=session)
            XComModel.set("note", "plain text", dag_id="etl", task_id="extract", run_id=RUN_ID, session=session)

    def get(side: Side) -> Any:
        with create_session() as session:
            rows = XComModel.get_many(run_id=RUN_ID, dag_ids="etl", task_ids="extract", session=session)
            return [(x.key, XComModel.deserialize_value(x)) for x in rows.order_by(XComModel.key)]

    def one(side: Side) -> Any:
        with create_session() as session:
            row = session.scalars(XComModel.get_many(run_id=RUN_ID, key="return_value", dag_ids="etl",
                                                     session=session)).first()
            return XComModel.deserialize_value(row)

    def clear(side: Side) -> Any:
        with create_session() as session:
            XComModel.clear(dag_id="etl", task_id="extract", run_id=RUN_ID, session=session)
        return get(side)

    def missing_run(side: Side) -> Any:
        with create_session() as session:
            XComModel.set("k", 1, dag_id="etl", task_id="extract", run_id="no-such-run", session=session)

    both(sides, "XComModel.set", put)
    both(sides, "XComModel.get_many", get)
    both(sides, "XComModel one value", one)
    both(sides, "XComModel.set on a missing run", missing_run)
    both(sides, "XComModel.clear", clear)
    _tables_match(sides, airflow_metadata, "xcoms")
