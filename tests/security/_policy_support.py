"""An Airflow-like schema, the example worker policy, and a real DB-API serving both.

The policy is ``examples/policies/airflow_worker.toml`` (the one ``docs/security.md`` shows), loaded
from its file as a deployment would. Tokens are real EdDSA JWTs carrying ``role`` and the row
filter claims; clients are isolated ``DBSession``s doing ordinary ORM work. Modules import the
``backend`` fixture (SQLite, PostgreSQL and MariaDB).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from dbsession import DBSession, guard
from tests.servers import RunningServer, running_dbapi

POLICY_FILE = Path(__file__).resolve().parents[2] / "examples" / "policies" / "airflow_worker.toml"
DAG_SOURCE = "SECRET-DAG-SOURCE-91c2"
PASSWORD = "SECRET-PASSWORD-5d7e"
DESCRIPTION = "SECRET-DESCRIPTION-0a4b"
CONF = "SECRET-CONF-77f1"


class Base(DeclarativeBase):
    metadata = sa.MetaData()


class DagRun(Base):
    __tablename__ = "dag_run"
    __table_args__ = (sa.UniqueConstraint("dag_id", "run_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dag_id: Mapped[str] = mapped_column(sa.String(50))
    run_id: Mapped[str] = mapped_column(sa.String(50))
    state: Mapped[str] = mapped_column(sa.String(20))
    conf: Mapped[str | None] = mapped_column(sa.String(100))
    task_instances: Mapped[list[TaskInstance]] = relationship(back_populates="dag_run", order_by="TaskInstance.id")


class TaskInstance(Base):
    __tablename__ = "task_instance"
    __table_args__ = (sa.ForeignKeyConstraint(["dag_id", "run_id"], ["dag_run.dag_id", "dag_run.run_id"]),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dag_id: Mapped[str] = mapped_column(sa.String(50))
    run_id: Mapped[str] = mapped_column(sa.String(50))
    task_id: Mapped[str] = mapped_column(sa.String(50))
    state: Mapped[str | None] = mapped_column(sa.String(20))
    hostname: Mapped[str | None] = mapped_column(sa.String(50))
    dag_run: Mapped[DagRun] = relationship(back_populates="task_instances")
    # a relationship toward a table the worker may not read at all
    code: Mapped[list[DagCode]] = relationship(
        primaryjoin="foreign(DagCode.fileloc) == TaskInstance.dag_id", viewonly=True)
    xcoms: Mapped[list[XCom]] = relationship(back_populates="task_instance", order_by="XCom.id")


class XCom(Base):
    __tablename__ = "xcom"
    id: Mapped[int] = mapped_column(primary_key=True)
    ti_id: Mapped[int] = mapped_column(sa.ForeignKey("task_instance.id"))
    dag_id: Mapped[str] = mapped_column(sa.String(50))
    run_id: Mapped[str] = mapped_column(sa.String(50))
    key: Mapped[str] = mapped_column(sa.String(50))
    value: Mapped[str | None] = mapped_column(sa.String(200))
    task_instance: Mapped[TaskInstance] = relationship(back_populates="xcoms")


class Variable(Base):
    __tablename__ = "variable"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(50), unique=True)
    val: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str | None] = mapped_column(sa.String(200))


class DagCode(Base):
    __tablename__ = "dag_code"
    id: Mapped[int] = mapped_column(primary_key=True)
    fileloc: Mapped[str] = mapped_column(sa.String(200))
    source: Mapped[str] = mapped_column(sa.Text)


class Connection(Base):
    __tablename__ = "connection"
    id: Mapped[int] = mapped_column(primary_key=True)
    conn_id: Mapped[str] = mapped_column(sa.String(50))
    password: Mapped[str] = mapped_column(sa.String(100))


RUNS = [("etl", "r1"), ("etl", "r2"), ("report", "r1")]
TASKS = ["extract", "load"]
MINE = {"dag_id": "etl", "run_id": "r1"}  # the worker's claims in most tests


def seed(engine: sa.Engine) -> None:
    with Session(engine) as s:
        ti_id = 0
        for run_no, (dag_id, run_id) in enumerate(RUNS, start=1):
            s.add(DagRun(id=run_no, dag_id=dag_id, run_id=run_id, state="running", conf=CONF))
            s.flush()
            for task_id in TASKS:
                ti_id += 1
                s.add(TaskInstance(id=ti_id, dag_id=dag_id, run_id=run_id, task_id=task_id, state="queued"))
                s.flush()
                s.add(XCom(id=ti_id, ti_id=ti_id, dag_id=dag_id, run_id=run_id, key="return_value",
                           value=f"{dag_id}/{run_id}/{task_id}"))
        s.add_all([Variable(id=1, key="threshold", val="10", description=DESCRIPTION),
                   Variable(id=2, key="region", val="eu", description=DESCRIPTION),
                   DagCode(id=1, fileloc="/dags/etl.py", source=DAG_SOURCE),
                   Connection(id=1, conn_id="warehouse", password=PASSWORD)])
        s.commit()


@dataclass
class Backend:
    name: str
    engine: sa.Engine  # the trusted side's direct engine, for comparisons
    server: RunningServer

    def token(self, **claims: Any) -> str:
        claims.setdefault("role", "worker")
        return self.server.mint(**claims)

    def session(self, **claims: Any) -> DBSession:
        """An isolated session whose token carries *claims* (role "worker" unless given)."""
        return DBSession(database_access_isolation=True, database_api_host=self.server.url,
                         token=self.token(**claims))

    def worker(self) -> DBSession:
        return self.session(**MINE)

    def direct(self) -> Session:
        return Session(self.engine)


@contextmanager
def serve(engine: sa.Engine, policy: Any = POLICY_FILE, name: str = "sqlite", **app_kw: Any) -> Iterator[Backend]:
    """A DB-API with *policy* on *engine* (the example worker policy file by default).

    With ``DBSESSION_TEST_DB_WALL=1``, a PostgreSQL server also runs every role's requests under
    the database roles compiled from *policy* (``dbapi_server.db_wall``): the suite then checks
    that the second wall refuses nothing the policy allows.
    """
    with _database_wall(engine, policy, name, app_kw), running_dbapi(engine, Base.metadata, policy=policy,
                                                                     **app_kw) as server:
        yield Backend(name, engine, server)


@contextmanager
def _database_wall(engine: sa.Engine, policy: Any, name: str, app_kw: dict[str, Any]) -> Iterator[None]:
    if name != "postgresql" or os.environ.get("DBSESSION_TEST_DB_WALL") != "1" or "db_roles" in app_kw:
        yield
        return
    from dbapi_server import Policy
    from dbapi_server import _db_catalog as catalog
    from dbapi_server.db_roles import DatabaseRoles

    compiled = policy if isinstance(policy, Policy) else Policy.from_file(policy, Base.metadata)
    roles = DatabaseRoles.from_policy(compiled, Base.metadata, namespace=f"t{secrets.token_hex(4)}")
    catalog.apply(engine, roles)
    app_kw["db_roles"] = roles
    try:
        yield
    finally:
        catalog.drop(engine, roles)


def make_engine(name: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> sa.Engine:
    """The schema created and seeded on SQLite, PostgreSQL (``pg_url``) or MariaDB (``mariadb_url``)."""
    if name == "sqlite":
        url: Any = f"sqlite:///{tmp_path_factory.mktemp('security') / 'policy.sqlite'}"
    else:
        url = request.getfixturevalue({"postgresql": "pg_url", "mariadb": "mariadb_url"}[name])
    engine = guard.exempt(sa.create_engine(url))
    Base.metadata.create_all(engine)
    seed(engine)
    return engine


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql),
                                        pytest.param("mariadb", marks=pytest.mark.mysql)])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """The example worker policy served on SQLite, PostgreSQL and MariaDB."""
    engine = make_engine(request.param, request, tmp_path_factory)
    try:
        with serve(engine, name=request.param) as backend:
            yield backend
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def clean_isolation(isolation_reset: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("DATABASE_ACCESS_ISOLATION", "DATABASE_API_HOST", "DATABASE_API_TOKEN", "DATABASE_API_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    yield
