"""Engine options of the served database (``dbapi_server.engine_options``) and the body-size limit.

Unit checks of the parsing, merging and engine building, then ``dbapi-server serve`` in its own
process with the options on its command line and in its environment, observed from outside: the
SQLite file's journal mode, PostgreSQL's settings as an isolated connection sees them; and the
body-size limit: a row over the old 16 MiB default passes, a body over the limit is refused by its
declared length before it is read.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbapi_server import create_app
from dbapi_server.app import DEFAULT_MAX_BODY_BYTES, ConfigError
from dbapi_server.engine_options import EngineOptions, EngineOptionsError, parse_assignment
from dbsession import DBSession, guard
from tests.servers import dbapi_process

from ._documents import documents, metadata

METADATA = "tests.dbapi_server._documents:metadata"
TESTING = 'preset = "testing"\n'


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'options.sqlite'}"
    with guard.trusted():
        engine = sa.create_engine(url)
        metadata.create_all(engine)
        engine.dispose()
    yield url


def _journal_mode(url: str) -> str:
    with guard.trusted():
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        engine.dispose()
    return str(mode)


# -- parsing and merging ---------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "parsed"), [
    ("pool_size=20", ("pool_size", 20)), ("pool_pre_ping=false", ("pool_pre_ping", False)),
    ("isolation_level=READ COMMITTED", ("isolation_level", "READ COMMITTED")),
    ('connect_args={"timeout": 5}', ("connect_args", {"timeout": 5})), ("options=-c a=b", ("options", "-c a=b")),
])
def test_name_equals_value(text: str, parsed: tuple[str, object]) -> None:
    assert parse_assignment(text) == parsed


@pytest.mark.parametrize("text", ["pool_size", "=3", ""])
def test_a_malformed_assignment_is_refused(text: str) -> None:
    with pytest.raises(EngineOptionsError, match="name=value"):
        parse_assignment(text)


def test_environment_then_arguments_key_by_key() -> None:
    env = {"DBAPI_ENGINE_OPTIONS": '{"pool_size": 3, "pool_recycle": 60, "connect_args": {"timeout": 1, "x": 1}}',
           "DBAPI_CONNECT_ARGS": '{"timeout": 2}', "DBAPI_SQLITE_PRAGMAS": '{"busy_timeout": 100}'}
    merged = EngineOptions.from_env(env).merged({"pool_size": 7, "connect_args": {"x": 2}})
    assert merged.options == {"pool_size": 7, "pool_recycle": 60}
    assert merged.connect_args == {"timeout": 2, "x": 2}
    assert merged.sqlite_pragmas == {"busy_timeout": 100}


@pytest.mark.parametrize(("env", "message"), [
    ({"DBAPI_ENGINE_OPTIONS": "{nope"}, "DBAPI_ENGINE_OPTIONS is not valid JSON"),
    ({"DBAPI_CONNECT_ARGS": "[1]"}, "DBAPI_CONNECT_ARGS must be a JSON object"),
    ({"DBAPI_ENGINE_OPTIONS": '{"connect_args": 3}'}, "connect_args must be an object"),
])
def test_a_malformed_environment_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(EngineOptionsError, match=message):
        EngineOptions.from_env(env)


def test_pool_options_and_the_pre_ping_default() -> None:
    url = "postgresql+psycopg://u@127.0.0.1:1/x"  # never connected
    engine = EngineOptions({"pool_size": 11, "max_overflow": 2}).create_engine(url)
    assert (engine.pool.size(), engine.pool._max_overflow, engine.pool._pre_ping) == (11, 2, True)  # type: ignore[attr-defined]
    assert EngineOptions({"pool_pre_ping": False}).create_engine(url).pool._pre_ping is False  # type: ignore[attr-defined]


@pytest.mark.parametrize(("options", "message"), [
    (EngineOptions({"no_such_option": 1}), "not valid for sqlite.*no_such_option"),
    (EngineOptions(sqlite_pragmas={"journal_mode": "WAL; DROP TABLE x"}), "Not a SQLite pragma setting"),
    (EngineOptions(sqlite_pragmas={"x y": 1}), "Not a SQLite pragma setting"),
    (EngineOptions(pg_options={"statement_timeout": "1s"}), "PostgreSQL options were given, but the served database is sqlite"),
])
def test_wrong_options_are_refused_naming_them(options: EngineOptions, message: str) -> None:
    with pytest.raises(EngineOptionsError, match=message):
        options.create_engine("sqlite://")


def test_sqlite_pragmas_run_on_every_connection(sqlite_url: str) -> None:
    engine = EngineOptions(sqlite_pragmas={"journal_mode": "wal", "busy_timeout": 1234, "foreign_keys": True}
                           ).create_engine(sqlite_url)
    with guard.trusted(), engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_postgresql_options_escape_spaces(pg_url: sa.URL) -> None:
    engine = EngineOptions(connect_args={"options": "-c lock_timeout=2s"},
                           pg_options={"statement_timeout": "5s", "application_name": "my app\\x"}).create_engine(pg_url)
    with guard.trusted(), engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "5s"
        assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "2s"
        assert conn.exec_driver_sql("SHOW application_name").scalar() == "my app\\x"
    engine.dispose()


def test_create_app_refuses_wrong_options_as_configuration(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBAPI_AUTH", "none")
    monkeypatch.setenv("DBAPI_SQLITE_PRAGMAS", '{"journal_mode": "x;y"}')
    with pytest.raises(ConfigError, match="Not a SQLite pragma setting"):
        create_app(sqlite_url, metadata)
    monkeypatch.delenv("DBAPI_SQLITE_PRAGMAS")
    app = create_app(sqlite_url, metadata, engine_options={"pool_size": 4, "pool_pre_ping": False})
    state = app.extensions["dbapi_server"]
    assert state.engine.pool.size() == 4 and app.config["MAX_CONTENT_LENGTH"] == DEFAULT_MAX_BODY_BYTES == 64 << 20
    state.close()


# -- dbapi-server serve, in its own process --------------------------------------------------------
def test_serve_takes_options_on_the_command_line_and_from_the_environment(sqlite_url: str) -> None:
    assert _journal_mode(sqlite_url) == "delete"
    env = {"DBAPI_ENGINE_OPTIONS": json.dumps({"pool_size": 2, "max_overflow": 5}), "DBAPI_METRICS_PUBLIC": "true"}
    with dbapi_process(sqlite_url, METADATA, env=env,
                       args=["--sqlite-pragma", "journal_mode=WAL", "--engine-option", "pool_size=3"]) as server:
        with DBSession(database_access_isolation=True, database_api_host=server.url, token=server.token) as s:
            s.execute(documents.insert().values(id=1, body="x"))  # the server connects: its pragmas run
            s.commit()
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
    # the command line won over the environment for pool_size; max_overflow came from the environment
    assert re.search(r"^dbapi_pool_size 3(\.0)?$", metrics, re.M), metrics
    assert re.search(r"^dbapi_pool_max_overflow 5(\.0)?$", metrics, re.M), metrics
    assert _journal_mode(sqlite_url) == "wal"  # persistent in the file: the server's connection set it


def test_serve_refuses_a_wrong_option_before_listening(sqlite_url: str) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 1 before listening.*not valid for sqlite.*"
                                           r"pool_sise"):
        with dbapi_process(sqlite_url, METADATA, args=["--engine-option", "pool_sise=3"]):
            pass


def test_serve_applies_postgresql_options(pg_url: sa.URL) -> None:
    with guard.trusted():
        engine = sa.create_engine(pg_url)
        metadata.create_all(engine)
        engine.dispose()
    env = {"DBAPI_PG_OPTIONS": json.dumps({"statement_timeout": "7s"})}
    with dbapi_process(pg_url, METADATA, policy=TESTING, env=env, args=["--pg-option", "lock_timeout=3s"]) as server:
        engine = sa.create_engine(f"postgresql+dbsession://127.0.0.1:{server.port}/",
                                  connect_args={"token": server.token})
        with engine.connect() as conn:  # driver SQL: the testing preset allows it
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "7s"
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "3s"
        engine.dispose()


# -- the body-size limit ---------------------------------------------------------------------------
def test_a_row_over_16_mib_passes_the_default_limit(sqlite_url: str) -> None:
    # MLflow's own test suite stores such rows; the default was 16 MiB
    body = "x" * (20 << 20)
    with dbapi_process(sqlite_url, METADATA) as server:
        with DBSession(database_access_isolation=True, database_api_host=server.url, token=server.token) as s:
            s.execute(documents.insert().values(id=2, body=body))
            s.commit()
            assert s.execute(sa.select(sa.func.length(documents.c.body))).scalar() == len(body)


def test_a_body_over_the_limit_is_refused_by_its_length_before_it_is_read(sqlite_url: str) -> None:
    # headers announcing 100 GB, then nothing more: the answer comes at once, so nothing waited for
    # (or read) the body
    with dbapi_process(sqlite_url, METADATA) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(f"POST /dbapi/v1/execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.token}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {10 ** 11}\r\n\r\n{{".encode())
            started = time.monotonic()
            answer = sock.recv(65536)
            assert time.monotonic() - started < 5
        assert answer.startswith(b"HTTP/1.1 413") and b'"body_too_large"' in answer
