"""The example worker's tests run under the dbsession pytest plugin, in either mode.

The plain ``pytest`` runs them against the database directly; ``pytest --db-isolation
tests/examples`` through a DB-API that serves ``examples.methods`` - with the same test code.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from dbsession import DBSession
from examples.models import (
    Base,
    Connection,
    Dag,
    DagRun,
    RunState,
    TaskDependency,
    TaskInstance,
    TaskState,
    Variable,
    XCom,
)

DAG_ID = "etl"
RUN_ID = "scheduled__2024-03-31"
LOGICAL = datetime(2024, 3, 31, tzinfo=UTC)
# extract -> transform -> load -> publish, and extract -> audit -> publish
EDGES = [("transform", "extract"), ("load", "transform"), ("audit", "extract"), ("publish", "load"),
         ("publish", "audit")]
TASK_IDS = ["audit", "extract", "load", "publish", "transform"]


@pytest.fixture(scope="session")
def db_metadata() -> sa.MetaData:
    return Base.metadata


@pytest.fixture(scope="session")
def db_methods() -> list[str]:
    return ["examples.methods"]


@pytest.fixture
def sessions(dbsession_bind: sa.Engine) -> sessionmaker[DBSession]:
    """The worker's session factory: the only thing that differs between the modes."""
    return sessionmaker(class_=DBSession, bind=dbsession_bind)


@pytest.fixture
def dag_run(trusted_engine: sa.Engine) -> Iterator[tuple[str, str]]:
    """A DAG run whose first task is scheduled, seeded (and removed) through the trusted engine."""
    with Session(trusted_engine) as session, session.begin():
        session.add(Dag(dag_id=DAG_ID, fileloc="/dags/etl.py"))
        session.add(DagRun(dag_id=DAG_ID, run_id=RUN_ID, state=RunState.RUNNING, logical_date=LOGICAL))
        session.flush()
        session.add_all([TaskDependency(dag_id=DAG_ID, task_id=t, upstream_task_id=u) for t, u in EDGES])
        session.add_all([TaskInstance(dag_id=DAG_ID, run_id=RUN_ID, task_id=t,
                                      state=TaskState.SCHEDULED if t == "extract" else None)
                         for t in TASK_IDS])
        session.add(Variable(key="source_table", val="orders"))
        session.add(Connection(conn_id="warehouse", conn_type="postgres", host="db.internal", port=5432,
                               extra={"sslmode": "require"}))
    yield DAG_ID, RUN_ID
    with Session(trusted_engine) as session, session.begin():
        for model in (XCom, TaskInstance, TaskDependency, DagRun, Connection, Variable, Dag):
            session.execute(sa.delete(model))
