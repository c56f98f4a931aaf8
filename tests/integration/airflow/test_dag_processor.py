"""An Airflow component process on the isolation URL: ``airflow dag-processor`` parses the DAG
folder with ``sql_alchemy_conn = postgresql+dbsession://...`` and a token file - no database
credentials - under ``examples/policies/airflow3_dag_processor.toml``, and leaves the same tables
as the same command run directly on the twin database."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tests.integration.airflow._twins import TALLY, differences, table_state


def test_the_environment_holds_no_database_credentials(parsed: dict[str, Any]) -> None:
    env = parsed["isolated_env"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+dbsession://")
    assert not any("psycopg" in value or "@127.0.0.1" in value for value in env.values())


def test_dag_processor_leaves_identical_tables(parsed: dict[str, Any], twin_urls: tuple[sa.URL, sa.URL],
                                               airflow_metadata: sa.MetaData) -> None:
    direct, isolated = parsed["direct"], parsed["isolated"]
    assert direct.returncode == 0, direct.stderr[-4000:]
    assert isolated.returncode == 0, isolated.stdout[-4000:] + isolated.stderr[-4000:]
    output = isolated.stdout + isolated.stderr
    errors = [line for line in output.splitlines() if "error" in line.lower() and "import_error" not in line]
    trace = output[output.find("Traceback"):][:6000] if "Traceback" in output else ""
    assert not trace and not errors, "\n".join(errors)[-6000:] + trace
    before = table_state(twin_urls[0], airflow_metadata)
    after = table_state(twin_urls[1], airflow_metadata)
    assert before["dag"] and before["serialized_dag"], "the direct run parsed nothing"
    diff = differences(before, after)
    TALLY.record("dag-processor: resulting tables", not diff)
    assert not diff, "\n".join(f"{t}: {d}" for t, d in diff.items())
