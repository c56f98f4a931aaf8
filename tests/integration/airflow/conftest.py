"""Airflow 3 on DBSession: environment, twin PostgreSQL databases and a DB-API in its own process.

Runs only where Airflow is installed (``tools/airflow_env.sh`` makes ``.venv-airflow``; CI's own
step, see docs/airflow.md); elsewhere this directory is not collected. Airflow reads its
configuration from the environment at import, so it is set here, before anything imports it.

Two databases, migrated by Airflow itself (``airflow db migrate``): ``direct`` is used through a
plain psycopg engine and ``Session``, ``isolated`` only through the DB-API
(``dbapi-server serve``, another process, ``DBAPI_EXTRA_TABLES=alembic_version``) with a
``DBSession``. The same Airflow code runs against each; tests compare outcomes and tables.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent

if importlib.util.find_spec("airflow") is None:
    collect_ignore_glob = ["test_*.py"]  # the default suite's environment has no Airflow
else:
    _home = Path(tempfile.mkdtemp(prefix="airflow-home-"))
    _suffix = secrets.token_hex(4)
    ADMIN_URL = os.environ.get("DBSESSION_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres")
    DIRECT_DB, ISOLATED_DB = f"af_direct_{_suffix}", f"af_isolated_{_suffix}"
    os.environ.update({
        "AIRFLOW_HOME": str(_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(HERE / "dags"),
        "AIRFLOW__CORE__FERNET_KEY": "",  # stored values comparable across the twins (no random IVs)
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": ADMIN_URL.rsplit("/", 1)[0] + f"/{DIRECT_DB}",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC":
            ADMIN_URL.rsplit("/", 1)[0].replace("+psycopg", "+psycopg_async") + f"/{DIRECT_DB}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    })

    def airflow_command() -> list[str]:
        return [str(Path(sys.executable).with_name("airflow"))]

    def migrate(url: str) -> None:
        """``airflow db migrate`` on *url*: Airflow's own schema and alembic head."""
        env = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": url.replace("+psycopg", "+psycopg_async")}
        done = subprocess.run([*airflow_command(), "db", "migrate"], env=env, capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def pytest_collection_modifyitems(items: list) -> None:  # type: ignore[type-arg]
    import pytest

    for item in items:  # Airflow's own deprecation warnings are not this project's failures
        item.add_marker(pytest.mark.filterwarnings("default"))


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.airflow._twins import TALLY

    if TALLY.cases:
        terminalreporter.write_line(TALLY.summary())


if importlib.util.find_spec("airflow") is not None:
    from collections.abc import Iterator
    from typing import Any

    import pytest
    import sqlalchemy as sa

    from dbsession import guard

    METADATA_PATH = "tests.integration.airflow.metadata:metadata"
    REPO = HERE.parent.parent.parent

    @pytest.fixture(scope="session")
    def twin_urls() -> Iterator[tuple[sa.URL, sa.URL]]:
        """Both databases, created and migrated by Airflow; dropped at the end."""
        admin = guard.exempt(sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT"))
        base = sa.make_url(ADMIN_URL)
        urls = (base.set(database=DIRECT_DB), base.set(database=ISOLATED_DB))
        with admin.connect() as conn:
            for url in urls:
                conn.exec_driver_sql(f"CREATE DATABASE {url.database}")
        try:
            for url in urls:
                migrate(url.render_as_string(hide_password=False))
            yield urls
        finally:
            with admin.connect() as conn:
                for url in urls:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")
            admin.dispose()

    @pytest.fixture(scope="session")
    def airflow_metadata() -> sa.MetaData:
        from tests.integration.airflow.metadata import metadata

        return metadata

    @pytest.fixture(scope="session")
    def isolated_server(twin_urls: tuple[sa.URL, sa.URL], parsed: Any) -> Iterator[Any]:
        """The DB-API for the in-process differential tests (open preset, alembic_version served)."""
        from tests.servers import dbapi_process

        with dbapi_process(twin_urls[1], METADATA_PATH, env={"DBAPI_EXTRA_TABLES": "alembic_version"}) as server:
            yield server

    def _isolated_side(server: Any, token: str, inspect_url: sa.URL) -> Any:
        """Airflow's session factory as ``sql_alchemy_session_maker`` makes it: DBSession, isolated."""
        from sqlalchemy.orm import sessionmaker

        from dbsession import DBSession
        from tests.integration.airflow._twins import Side

        engine = sa.create_engine(f"postgresql+dbsession://127.0.0.1:{server.port}/", connect_args={"token": token})
        return Side("isolated", engine, sessionmaker(engine, class_=DBSession, database_access_isolation=True,
                                                     database_api_host=server.url, token=token, autoflush=False,
                                                     expire_on_commit=False), inspect_url)

    @pytest.fixture(scope="session")
    def sides(twin_urls: tuple[sa.URL, sa.URL], isolated_server: Any) -> Iterator[tuple[Any, Any]]:
        """(direct, isolated): the isolated one through the open-preset DB-API."""
        from sqlalchemy.orm import sessionmaker

        from tests.integration.airflow._twins import Side

        with guard.trusted():
            direct_engine = sa.create_engine(twin_urls[0])
        direct = Side("direct", direct_engine, sessionmaker(direct_engine, autoflush=False, expire_on_commit=False),
                      twin_urls[0])
        isolated = _isolated_side(isolated_server, isolated_server.token, twin_urls[1])
        yield direct, isolated
        direct_engine.dispose()
        isolated.engine.dispose()

    @pytest.fixture(scope="session")
    def worker_sides(twin_urls: tuple[sa.URL, sa.URL], sides: tuple[Any, Any]) -> Iterator[tuple[Any, Any]]:
        """(direct, isolated): the isolated one as the execution API's role under
        examples/policies/airflow3_worker.toml, on a DB-API of its own."""
        from tests.servers import dbapi_process

        with dbapi_process(twin_urls[1], METADATA_PATH, policy=REPO / "examples" / "policies" / "airflow3_worker.toml",
                           ) as server:
            isolated = _isolated_side(server, server.mint("execution-api", role="worker"), twin_urls[1])
            yield sides[0], isolated
            isolated.engine.dispose()

    DAG_PROCESSOR_POLICY = REPO / "examples" / "policies" / "airflow3_dag_processor.toml"

    def run_dag_processor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """``airflow dag-processor --num-runs 1`` over the DAG folder: one parse of every file."""
        return subprocess.run([*airflow_command(), "dag-processor", "--num-runs", "1"], env=env,
                              capture_output=True, text=True, timeout=600)

    def without_database_settings() -> dict[str, str]:
        return {k: v for k, v in os.environ.items()
                if not k.startswith(("AIRFLOW__DATABASE__", "DBSESSION_", "DATABASE_API_", "DBAPI_"))}

    @pytest.fixture(scope="session")
    def parsed(twin_urls: tuple[sa.URL, sa.URL]) -> dict[str, Any]:
        """The DAG processor, one process per twin: directly, and with only the isolation URL and a
        token (role dag_processor, examples/policies/airflow3_dag_processor.toml)."""
        from tests.servers import dbapi_process

        direct_url = twin_urls[0].render_as_string(hide_password=False)
        direct = run_dag_processor({**without_database_settings(),
                                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": direct_url,
                                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC":
                                        direct_url.replace("+psycopg", "+psycopg_async")})
        with dbapi_process(twin_urls[1], METADATA_PATH, policy=DAG_PROCESSOR_POLICY) as server:
            token_file = Path(tempfile.mkdtemp(prefix="af-token-")) / "token"
            token_file.write_text(server.mint("dag-processor", role="dag_processor"))
            token_file.chmod(0o600)
            env = {**without_database_settings(),
                   # no database credentials anywhere: the DB-API's address and a token file
                   "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+dbsession://127.0.0.1:{server.port}/",
                   "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC":
                       f"postgresql+dbsession_async://127.0.0.1:{server.port}/",
                   "DATABASE_API_TOKEN_FILE": str(token_file)}
            isolated = run_dag_processor(env)
            server_log = server.output()
        return {"direct": direct, "isolated": isolated, "server_log": server_log, "isolated_env": env}

    @pytest.fixture(scope="session")
    def dag_run(sides: tuple[Any, Any]) -> None:
        """The etl DAG's manual run, created by Airflow's create_dagrun on both twins."""
        import pendulum
        from airflow.models.serialized_dag import SerializedDagModel
        from airflow.utils.session import create_session
        from airflow.utils.state import DagRunState
        from airflow.utils.types import DagRunTriggeredByType, DagRunType

        from tests.integration.airflow._cases import RUN_ID, both

        logical = pendulum.datetime(2026, 3, 1, tz="UTC")

        def create(side: Any) -> Any:
            with create_session() as session:
                dag = SerializedDagModel.get_dag("etl", session=session)
                run = dag.create_dagrun(run_id=RUN_ID, logical_date=logical,
                                        data_interval=(logical, logical.add(days=1)), run_after=logical, run_type=DagRunType.MANUAL,
                                        triggered_by=DagRunTriggeredByType.TEST, state=DagRunState.RUNNING,
                                        conf={"region": "eu"}, session=session)
                return run

        both(sides, "create_dagrun", create)
