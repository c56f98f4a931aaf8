"""The example worker runs a DAG run to completion - unchanged in direct and isolation mode.

Run twice in CI: in the plain ``pytest`` and in ``pytest --db-isolation tests/examples
tests/plugin_sample``. In isolation mode the plugin fails any test whose code touches the database
directly, so passing there means the worker did everything through the DB-API, the named
method included.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from dbsession import DBSession
from examples.methods import (
    TaskStateError,
    finished_runs,
    latest_successful_task_instances,
    mark_success_and_schedule_downstream,
)
from examples.models import TaskInstance, TaskState, XCom
from examples.task_runner import run_task_instance


def states(engine: sa.Engine, run_id: str) -> dict[str, TaskState | None]:
    with Session(engine) as session:
        rows = session.execute(sa.select(TaskInstance.task_id, TaskInstance.state)
                               .where(TaskInstance.run_id == run_id))
        return {task_id: state for task_id, state in rows}


def xcom(engine: sa.Engine, task_id: str) -> object:
    with Session(engine) as session:
        return session.scalars(sa.select(XCom.value).where(XCom.task_id == task_id)).one()


def test_the_bind_matches_the_mode(pytestconfig: pytest.Config, dbsession_bind: sa.Engine) -> None:
    isolated = bool(getattr(dbsession_bind.dialect, "is_dbsession", False))
    assert isolated is bool(pytestconfig.getoption("db_isolation"))


def test_a_dag_run_runs_to_completion(sessions: sessionmaker[DBSession], trusted_engine: sa.Engine,
                                      dag_run: tuple[str, str]) -> None:
    dag_id, run_id = dag_run
    assert run_task_instance(sessions, dag_id, run_id, "extract") == ["audit", "transform"]
    assert states(trusted_engine, run_id) == {"extract": TaskState.SUCCESS, "audit": TaskState.SCHEDULED,
                                              "transform": TaskState.SCHEDULED, "load": None, "publish": None}
    assert xcom(trusted_engine, "extract") == {"source": "postgres://db.internal:5432", "table": "orders",
                                               "rows": [3, 1, 2]}
    assert run_task_instance(sessions, dag_id, run_id, "transform") == ["load"]
    assert run_task_instance(sessions, dag_id, run_id, "audit") == []  # publish still waits for load
    assert run_task_instance(sessions, dag_id, run_id, "load") == ["publish"]
    assert run_task_instance(sessions, dag_id, run_id, "publish") == []
    assert set(states(trusted_engine, run_id).values()) == {TaskState.SUCCESS}
    assert xcom(trusted_engine, "publish") == "3 rows; audited orders"


def test_marking_success_twice_is_refused_with_the_methods_own_error(
        sessions: sessionmaker[DBSession], trusted_engine: sa.Engine, dag_run: tuple[str, str]) -> None:
    dag_id, run_id = dag_run
    run_task_instance(sessions, dag_id, run_id, "extract")
    with sessions() as session, pytest.raises(TaskStateError, match="is success, not running"):
        mark_success_and_schedule_downstream(session, dag_id, run_id, "extract")
    with sessions() as session, pytest.raises(TaskStateError, match="No task instance etl.nope"):
        mark_success_and_schedule_downstream(session, dag_id, run_id, "nope")


def test_a_task_not_scheduled_is_not_run(sessions: sessionmaker[DBSession], trusted_engine: sa.Engine,
                                         dag_run: tuple[str, str]) -> None:
    dag_id, run_id = dag_run
    with pytest.raises(TaskStateError, match="etl.load .* is not scheduled"):
        run_task_instance(sessions, dag_id, run_id, "load")
    assert states(trusted_engine, run_id)["load"] is None


def test_the_scheduled_objects_are_the_callers_own(sessions: sessionmaker[DBSession],
                                                   dag_run: tuple[str, str]) -> None:
    dag_id, run_id = dag_run
    with sessions() as session:
        extract = session.get_one(TaskInstance, (dag_id, run_id, "extract", -1))
        extract.state = TaskState.RUNNING  # flushed before the method runs, as a direct call sees it
        scheduled = mark_success_and_schedule_downstream(session, dag_id, run_id, "extract")
        assert extract.state is TaskState.SUCCESS
        assert [sa.inspect(ti).persistent for ti in scheduled] == [True, True]
        assert scheduled[0] is session.get(TaskInstance, (dag_id, run_id, "audit", -1))
        session.rollback()  # the method's writes belong to this transaction
    with sessions() as session:
        assert session.get_one(TaskInstance, (dag_id, run_id, "extract", -1)).state is TaskState.SCHEDULED


def test_read_only_methods(sessions: sessionmaker[DBSession], dag_run: tuple[str, str]) -> None:
    dag_id, run_id = dag_run
    for task_id in ("extract", "transform"):
        run_task_instance(sessions, dag_id, run_id, task_id)
    with sessions() as session:
        latest = latest_successful_task_instances(session, dag_id)
        assert [(ti.task_id, ti.state) for ti in latest] == [("extract", TaskState.SUCCESS),
                                                             ("transform", TaskState.SUCCESS)]
        assert finished_runs(session, dag_id) == {}
