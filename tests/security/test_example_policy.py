"""The documented example works as documented (issue 12, finding 8), on SQLite, PostgreSQL, MariaDB.

``docs/security.md`` and the README tell an operator to run::

    dbapi-server keygen --out keys
    dbapi-server serve --metadata examples.models:Base.metadata --policy examples/policies/airflow_worker.toml
    dbapi-server mint-token --key keys/dbapi.key --sub ... --role worker --claim dag_id=... --claim run_id=...

It did not start (``'task_instance' has no column 'hostname'``) and ``examples.models`` could not
be created on MariaDB (the ``xcom`` key was longer than a utf8mb4 index). Here the three commands
run out of process, as written, on each database the example schema was created on; then a worker
holding the minted token does what the policy's comments say it may, and is refused the rest.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, load_only

from dbsession import DBSession, PolicyViolationError, guard
from examples.models import Base, Connection, Dag, DagRun, RunState, TaskInstance, TaskState, Variable, XCom
from tests.servers import REPO, dbapi_process, server_command

POLICY = REPO / "examples" / "policies" / "airflow_worker.toml"
METADATA = "examples.models:Base.metadata"
WHEN = datetime(2024, 3, 31, tzinfo=UTC)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql),
                                        pytest.param("mariadb", marks=pytest.mark.mysql)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """``examples.models`` created (as the trusted side would) and seeded with two runs."""
    if request.param == "sqlite":
        url: str | sa.URL = f"sqlite:///{tmp_path_factory.mktemp('example') / 'example.sqlite'}"
    else:
        url = request.getfixturevalue({"postgresql": "pg_url", "mariadb": "mariadb_url"}[request.param])
    engine = guard.exempt(sa.create_engine(url))
    Base.metadata.create_all(engine)  # MariaDB: refused before (xcom's key over 3072 bytes)
    with Session(engine) as session, session.begin():
        session.add(Dag(dag_id="etl", fileloc="/dags/etl.py"))
        session.flush()
        for run_id in ("r1", "r2"):
            session.add(DagRun(dag_id="etl", run_id=run_id, state=RunState.RUNNING, logical_date=WHEN,
                               conf={"secret": f"conf-{run_id}"}))
            session.flush()
            session.add_all([TaskInstance(dag_id="etl", run_id=run_id, task_id=t, state=TaskState.SCHEDULED)
                             for t in ("extract", "load")])
        session.add(Variable(key="source_table", val="orders", description="SECRET-DESCRIPTION"))
        session.add(Connection(conn_id="warehouse", conn_type="postgres", host="db.internal"))
    try:
        yield engine
    finally:
        engine.dispose()


def cli(*args: str, cwd: Path) -> str:
    done = subprocess.run([*server_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_the_documented_commands_serve_the_worker_policy(database: sa.Engine, tmp_path: Path) -> None:
    cli("keygen", "--out", "keys", cwd=tmp_path)
    url = database.url.render_as_string(hide_password=False)
    with dbapi_process(url, METADATA, policy=POLICY, args=["--metadata", METADATA],
                       env={"DBAPI_JWT_KEY_FILE": str(tmp_path / "keys" / "dbapi.pub")}) as server:
        cli("mint-token", "--key", "keys/dbapi.key", "--sub", "task:etl.r1.extract", "--role", "worker",
            "--claim", "dag_id=etl", "--claim", "run_id=r1", "--ttl", "600", "--out", "task.token", cwd=tmp_path)
        token = (tmp_path / "task.token").read_text().strip()
        with DBSession(database_access_isolation=True, database_api_host=server.url, token=token) as worker:
            _may(worker)
        with DBSession(database_access_isolation=True, database_api_host=server.url, token=token) as worker:
            _may_not(worker)
    with Session(database) as trusted:
        ti = trusted.get(TaskInstance, ("etl", "r1", "extract", -1))
        assert ti is not None and (ti.state, ti.hostname) == (TaskState.RUNNING, "worker-7")
        assert trusted.scalars(sa.select(XCom.key).order_by(XCom.key)).all() == ["kept"]


def _may(worker: DBSession) -> None:
    """What the policy's comments grant: its own run's task instances, XComs, and variables."""
    mine = worker.scalars(sa.select(TaskInstance).order_by(TaskInstance.task_id)).all()
    assert [(t.run_id, t.task_id) for t in mine] == [("r1", "extract"), ("r1", "load")]  # not r2's
    assert worker.get(TaskInstance, ("etl", "r2", "extract", -1)) is None
    mine[0].state, mine[0].hostname = TaskState.RUNNING, "worker-7"
    run_id = worker.scalars(sa.select(DagRun.id).where(DagRun.run_id == "r1")).one()
    for key in ("return_value", "kept"):
        worker.add(XCom(dag_run_id=run_id, dag_id="etl", run_id="r1", task_id="extract", key=key,
                        value={"rows": [1, 2]}, timestamp=WHEN))
    worker.commit()
    pushed = worker.scalars(sa.select(XCom).where(XCom.key == "return_value")).one()
    assert pushed.value == {"rows": [1, 2]} and pushed.timestamp == WHEN
    worker.delete(pushed)
    worker.commit()
    variable = worker.scalars(sa.select(Variable).options(load_only(Variable.key, Variable.val))).one()
    assert (variable.key, variable.val) == ("source_table", "orders")
    run = worker.scalars(sa.select(DagRun).options(load_only(DagRun.state))).one()
    assert (run.run_id, run.state) == ("r1", RunState.RUNNING)


def _may_not(worker: DBSession) -> None:
    for refused in (sa.select(Variable.description), sa.select(DagRun.conf), sa.select(Connection.host),
                    sa.select(Dag.fileloc), sa.update(Variable).values(val="x"),
                    sa.update(TaskInstance).values(try_number=5)):
        with pytest.raises(PolicyViolationError):
            worker.execute(refused)
        worker.rollback()
    other_run = XCom(dag_run_id=2, dag_id="etl", run_id="r2", task_id="extract", key="x", value=1, timestamp=WHEN)
    worker.add(other_run)
    with pytest.raises(PolicyViolationError):
        worker.flush()
    worker.rollback()
