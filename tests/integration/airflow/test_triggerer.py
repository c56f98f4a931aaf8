"""A second component on the isolation URL: ``airflow triggerer`` with no database credentials, under
examples/policies/airflow3_triggerer.toml. A task instance deferred on a trigger that fires at
once is set up on both twins by Airflow's own code; each twin's triggerer picks the trigger up,
runs it and resumes the task instance. The resulting tables must be identical."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pendulum
import sqlalchemy as sa

from dbsession import guard
from tests.integration.airflow._cases import RUN_ID, both
from tests.integration.airflow._twins import TALLY, Side, differences, table_state
from tests.integration.airflow.conftest import METADATA_PATH, REPO, airflow_command, without_database_settings
from tests.servers import dbapi_process

POLICY = REPO / "examples" / "policies" / "airflow3_triggerer.toml"


def _defer(side: Side) -> Any:
    """What a deferring task leaves behind: a trigger row and the task instance pointing at it."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.providers.standard.triggers.temporal import DateTimeTrigger
    from airflow.utils.state import TaskInstanceState

    with side.sessions() as session, session.begin():
        trigger = Trigger.from_object(DateTimeTrigger(moment=pendulum.datetime(2026, 3, 1, tz="UTC")))
        session.add(trigger)
        session.flush()
        ti = session.scalar(sa.select(TaskInstance).where(TaskInstance.run_id == RUN_ID,
                                                          TaskInstance.task_id == "extract"))
        ti.state, ti.trigger_id, ti.next_method = TaskInstanceState.DEFERRED, trigger.id, "execute_complete"
        return trigger.id


def _pending(url: sa.URL) -> int:
    with guard.trusted():
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                return int(conn.exec_driver_sql("SELECT count(*) FROM trigger").scalar_one())
        finally:
            engine.dispose()


def _run_triggerer(env: dict[str, str], url: sa.URL) -> str:
    """Until the trigger fired and was cleaned up (or 90 s), then SIGTERM; the output."""
    log = Path(tempfile.mkdtemp(prefix="triggerer-")) / "out.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*airflow_command(), "triggerer"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None and _pending(url):
            time.sleep(1)
        time.sleep(3)  # a heartbeat after the event
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return log.read_text(errors="replace")


def test_triggerer_resumes_a_deferred_task_identically(twin_urls: tuple[sa.URL, sa.URL], sides: tuple[Side, Side],
                                                       dag_run: None, airflow_metadata: sa.MetaData) -> None:
    both(sides, "defer a task instance (Trigger.from_object)", _defer)
    direct_url = twin_urls[0].render_as_string(hide_password=False)
    direct = _run_triggerer({**without_database_settings(), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": direct_url,
                             "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC":
                                 direct_url.replace("+psycopg", "+psycopg_async")}, twin_urls[0])
    assert _pending(twin_urls[0]) == 0, direct[-4000:]
    with dbapi_process(twin_urls[1], METADATA_PATH, policy=POLICY) as server:
        token_file = Path(tempfile.mkdtemp(prefix="af-token-")) / "token"
        token_file.write_text(server.mint("triggerer", role="triggerer"))
        token_file.chmod(0o600)
        isolated = _run_triggerer({
            **without_database_settings(),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+dbsession://127.0.0.1:{server.port}/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"postgresql+dbsession_async://127.0.0.1:{server.port}/",
            "DATABASE_API_TOKEN_FILE": str(token_file)}, twin_urls[1])
    refusals = [line for line in isolated.splitlines() if "DB-API" in line or "Traceback" in line]
    assert not refusals, "\n".join(refusals)[-6000:]
    assert _pending(twin_urls[1]) == 0, isolated[-6000:]
    diff = differences(table_state(twin_urls[0], airflow_metadata), table_state(twin_urls[1], airflow_metadata))
    TALLY.record("triggerer: resulting tables", not diff)
    assert not diff, "\n".join(f"{t}: {d}" for t, d in diff.items())
