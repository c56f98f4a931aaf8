"""Airflow's execution API (the routes a task's supervisor calls) on DBSession: its FastAPI app
through a TestClient, ``airflow.settings``' session factory pointed at one twin at a time (the
dependency every route's ``SessionDep`` uses). Status codes, answers and tables compare. The
isolated side runs as the policy's ``worker`` role (examples/policies/airflow3_worker.toml)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.integration.airflow._cases import RUN_ID, both
from tests.integration.airflow._twins import TALLY, Side, differences, table_state

START = "2026-03-01T00:05:00+00:00"
END = "2026-03-01T00:06:00+00:00"


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI
    from fastapi.testclient import TestClient

    with TestClient(InProcessExecutionAPI().app) as test_client:
        yield test_client


def _ti_id(side: Side, task_id: str) -> str:
    from airflow.models.taskinstance import TaskInstance

    with side.sessions() as session:
        return str(session.scalar(sa.select(TaskInstance.id).where(TaskInstance.run_id == RUN_ID,
                                                                    TaskInstance.task_id == task_id)))


def _queue(side: Side, task_id: str) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.state import TaskInstanceState

    with side.sessions() as session, session.begin():
        ti = session.scalar(sa.select(TaskInstance).where(TaskInstance.run_id == RUN_ID,
                                                          TaskInstance.task_id == task_id))
        ti.set_state(TaskInstanceState.QUEUED, session=session)


def _answer(response: Any) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "request_id"}
    return response.status_code, body


def test_task_instance_lifecycle(client: Any, worker_sides: tuple[Side, Side], dag_run: None,
                                 airflow_metadata: sa.MetaData) -> None:
    """Under examples/policies/airflow3_worker.toml: what the API does for tasks, nothing more."""
    sides = worker_sides
    def call(method: str, task_id: str, route: str, json: dict[str, Any] | None) -> Any:
        def op(side: Side) -> Any:
            path = f"/task-instances/{_ti_id(side, task_id)}{route}"
            return _answer(client.request(method, path, json=json))
        return op

    running = {"state": "running", "hostname": "worker-1", "unixname": "airflow", "pid": 4242, "start_date": START}
    for task_id in ("load", "done"):
        for side in sides:
            _queue(side, task_id)
    statuses = {
        "run (queued -> running, FOR UPDATE)": both(sides, "run", call("PATCH", "load", "/run", running)),
        "run again": both(sides, "run again (same host and pid: accepted)", call("PATCH", "load", "/run", running)),
        "heartbeat": both(sides, "heartbeat", call("PUT", "load", "/heartbeat", {"hostname": "worker-1", "pid": 4242})),
        "heartbeat, other pid": both(sides, "heartbeat from another pid", call(
            "PUT", "load", "/heartbeat", {"hostname": "worker-1", "pid": 1})),
        "rendered fields": both(sides, "rendered fields", call(
            "PUT", "load", "/rtif", {"bash_command": "echo 1", "op_kwargs": {}})),
        "previous run": both(sides, "previous successful dag run", call(
            "GET", "load", "/previous-successful-dagrun", None)),
        "success": both(sides, "success", call("PATCH", "load", "/state", {"state": "success", "end_date": END})),
        "after success": both(sides, "state after success", call(
            "PATCH", "load", "/state", {"state": "failed", "end_date": END})),
        "run done": both(sides, "run done", call("PATCH", "done", "/run", running)),
        "failure": both(sides, "failure", call("PATCH", "done", "/state", {"state": "failed", "end_date": END})),
        "unknown": both(sides, "unknown task instance", lambda side: _answer(client.request(
            "PATCH", "/task-instances/0195f5b2-0000-7000-8000-000000000000/run", json=running))),
        "bad payload": both(sides, "bad payload", call("PATCH", "extract", "/run", {"state": "running"})),
    }
    # the routes really ran (not the same error twice): Airflow's own status codes
    codes = {name: result[1][1][0][1] for name, result in statuses.items()}
    assert codes == {"run (queued -> running, FOR UPDATE)": 200, "run again": 200, "heartbeat": 204,
                     "heartbeat, other pid": 409, "rendered fields": 201, "previous run": 200, "success": 204,
                     "after success": 409, "run done": 200, "failure": 204, "unknown": 404,
                     "bad payload": 422}, codes

    diff = differences(table_state(sides[0].inspect_url, airflow_metadata),
                       table_state(sides[1].inspect_url, airflow_metadata))
    TALLY.record("tables after the execution API calls", not diff)
    assert not diff, "\n".join(f"{t}: {d}" for t, d in diff.items())
