"""SQLite ``PRAGMA name = value`` from a client (``dbapi_server.connection_settings``).

MLflow opens every SQLite session with three pragmas. They are connection-wide, so the DB-API
never runs them: it answers one as done when its connection already has that value, and refuses
it, naming its own value, otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from dbsession import guard
from dbsession.exceptions import PolicyViolationError
from tests.dbapi_server._extra_tables_models import metadata, things
from tests.servers import DBAPIProcess, dbapi_process

METADATA = "tests.dbapi_server._extra_tables_models:metadata"
MLFLOW_SESSION_START = ("PRAGMA foreign_keys = ON;", "PRAGMA busy_timeout = 20000;",
                        "PRAGMA case_sensitive_like = true;")


@pytest.fixture
def sqlite_url(tmp_path: Any) -> sa.URL:
    url = sa.make_url(f"sqlite:///{tmp_path / 'app.db'}")
    with guard.trusted():
        engine = sa.create_engine(url)
        metadata.create_all(engine)
        engine.dispose()
    return url


def _isolated(port: int | str, token: str) -> sa.Engine:
    return sa.create_engine(f"sqlite+dbsession://127.0.0.1:{port}/", connect_args={"token": token})


def test_a_pragma_the_connection_does_not_have_is_refused_and_not_run(sqlite_url: sa.URL) -> None:
    with dbapi_process(sqlite_url, METADATA) as server:
        engine = _isolated(server.port, server.token)
        try:
            with engine.begin() as conn:  # what the DB-API's connections already run with: accepted
                conn.execute(sa.text("PRAGMA foreign_keys = OFF"))
                conn.execute(sa.text("PRAGMA case_sensitive_like = false"))
                conn.execute(sa.text("PRAGMA busy_timeout = 5000"))  # sqlite3's default timeout, 5 s
            for statement, current in (("PRAGMA foreign_keys = ON;", "foreign_keys = 0"),
                                       ("PRAGMA case_sensitive_like = true;", "case_sensitive_like = 0"),
                                       ("PRAGMA busy_timeout = 20000;", "busy_timeout = 5000")):
                with engine.begin() as conn, pytest.raises(PolicyViolationError, match=current):
                    conn.execute(sa.text(statement))
            for raw in ("PRAGMA journal_mode = WAL", "PRAGMA foreign_keys = ON; DELETE FROM things"):
                with engine.begin() as conn, pytest.raises(PolicyViolationError, match="Raw SQL"):
                    conn.execute(sa.text(raw))
            with engine.begin() as conn:  # nothing above changed the server's connection
                conn.execute(things.insert().values(name="a"))
                assert conn.execute(sa.select(sa.func.count()).where(things.c.name.like("A"))).scalar() == 1
        finally:
            engine.dispose()


@pytest.fixture
def configured(sqlite_url: sa.URL) -> Iterator[DBAPIProcess]:
    """A DB-API whose connections run with MLflow's pragmas (``DBAPI_SQLITE_PRAGMAS``)."""
    pragmas = '{"foreign_keys": "ON", "busy_timeout": 20000, "case_sensitive_like": "true"}'
    with dbapi_process(sqlite_url, METADATA, env={"DBAPI_SQLITE_PRAGMAS": pragmas}) as server:
        yield server


def test_mlflow_session_start_is_accepted_where_the_server_runs_the_same(configured: DBAPIProcess) -> None:
    engine = _isolated(configured.port, configured.token)
    try:
        with engine.begin() as conn:
            for statement in MLFLOW_SESSION_START:
                conn.execute(sa.text(statement))
            conn.execute(things.insert().values(name="a"))
            # the server's case_sensitive_like is on: LIKE tells case apart, as MLflow expects
            assert conn.execute(sa.select(sa.func.count()).where(things.c.name.like("A"))).scalar() == 0
    finally:
        engine.dispose()


def test_sqlite_functions_registered_on_connect_run_where_the_server_has_them(configured: DBAPIProcess,
                                                                             sqlite_url: sa.URL) -> None:
    """MLflow registers REGEXP with ``dbapi_conn.create_function`` in a "connect" listener. The
    isolated connection records it (statements run on the DB-API's connections); a function the
    DB-API's connection lacks fails as a direct connection without it fails."""
    engine = _isolated(configured.port, configured.token)

    @event.listens_for(engine, "connect")
    def _register(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.create_function("shout", 1, str.upper)
        dbapi_connection.create_aggregate("agg", 1, object)

    with guard.trusted():
        direct = sa.create_engine(sqlite_url)
    try:
        errors = []
        for eng in (engine, direct):  # neither the DB-API's connections nor this direct one have it
            with eng.connect() as conn, pytest.raises(sa.exc.OperationalError, match="no such function") as caught:
                conn.execute(sa.select(sa.func.nosuch(things.c.name)))
            errors.append(type(caught.value.orig).__name__)
        assert errors == ["OperationalError", "OperationalError"]
        with engine.connect() as conn:
            assert conn.connection.dbapi_connection.registered_functions.keys() == {"shout", "agg"}
    finally:
        engine.dispose()
        direct.dispose()
