"""Reflection through the DB-API (``dbapi_server.reflection``), against a direct connection.

Applications reflect at start (Airflow's every command reflects ``log_template``); the catalog is
read with SQL text, which the open preset refuses, so the DB-API answers the dialect's reflection
methods itself. Real ``Inspector`` / ``MetaData.reflect()`` on both sides, ``dbapi-server serve``
in its own process, SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from dbsession import guard
from dbsession.exceptions import PolicyViolationError
from tests.dbapi_server._extra_tables_models import metadata
from tests.servers import DBAPIProcess, dbapi_process

METADATA = "tests.dbapi_server._extra_tables_models:metadata"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[sa.URL]:
    url = sa.make_url(f"sqlite:///{tmp_path / 'app.db'}") if request.param == "sqlite" \
        else request.getfixturevalue("pg_url")
    with guard.trusted():
        direct = sa.create_engine(url)
        metadata.create_all(direct)
        with direct.begin() as conn:  # a table the server does not serve
            conn.exec_driver_sql("CREATE TABLE secret_stuff (id INTEGER PRIMARY KEY)")
        direct.dispose()
    yield url
    with guard.trusted():
        direct = sa.create_engine(url)
        metadata.drop_all(direct)
        with direct.begin() as conn:
            conn.exec_driver_sql("DROP TABLE secret_stuff")
        direct.dispose()


@pytest.fixture
def server(database: sa.URL) -> Iterator[DBAPIProcess]:
    with dbapi_process(database, METADATA) as running:
        yield running


def _engine(server: DBAPIProcess, url: sa.URL, **connect_args: Any) -> sa.Engine:
    return sa.create_engine(f"{url.get_backend_name()}+dbsession://127.0.0.1:{server.port}/",
                            connect_args={"token": server.token, **connect_args})


QUESTIONS = ("get_columns", "get_pk_constraint", "get_foreign_keys", "get_indexes", "get_unique_constraints",
             "get_check_constraints")


def _comparable(value: Any) -> Any:
    """Reflection results with types as their repr and class (types compare by identity)."""
    if isinstance(value, sa.types.TypeEngine):
        return (type(value), repr(value))
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_comparable(v) for v in value)
    return value


def _described(table: sa.Table) -> dict[str, Any]:
    """Everything reflection found, comparable across two engines."""
    return {
        "columns": [(c.name, repr(c.type), c.nullable, c.primary_key, str(c.server_default.arg)
                     if c.server_default is not None else None, c.comment) for c in table.columns],
        "foreign_keys": sorted((fk.parent.name, fk.target_fullname, fk.ondelete) for fk in table.foreign_keys),
        "indexes": sorted((i.name, tuple(c.name for c in i.columns), i.unique) for i in table.indexes),
        "constraints": sorted((type(c).__name__, c.name) for c in table.constraints),
    }


def test_metadata_reflect_matches_the_direct_connection(database: sa.URL, server: DBAPIProcess) -> None:
    with guard.trusted():
        direct = sa.create_engine(database)
        expected = sa.MetaData()
        expected.reflect(direct, only=["things", "parts"])
        direct_inspector = sa.inspect(direct)
        direct_names = direct_inspector.get_table_names()
        direct_answers = {name: _comparable(getattr(direct_inspector, name)("parts")) for name in QUESTIONS}
        direct.dispose()
    isolated = _engine(server, database)
    try:
        found = sa.MetaData()
        found.reflect(isolated, only=["things", "parts"])  # Airflow's reflect_tables
        assert {name: _described(t) for name, t in found.tables.items()} == \
            {name: _described(t) for name, t in expected.tables.items()}
        inspector = sa.inspect(isolated)
        # only the served tables: the rest of the catalog stays hidden
        assert sorted(inspector.get_table_names()) == ["parts", "things"]
        assert "secret_stuff" in direct_names
        assert {name: _comparable(getattr(inspector, name)("parts")) for name in QUESTIONS} == direct_answers
        with pytest.raises(sa.exc.NoSuchTableError):
            inspector.get_columns("secret_stuff")
        with pytest.raises(sa.exc.NoSuchTableError):
            sa.Table("secret_stuff", sa.MetaData(), autoload_with=isolated)
        # a reflected table is usable: the server knows it as its own
        reflected = sa.Table("things", sa.MetaData(), autoload_with=isolated)
        with isolated.begin() as conn:
            conn.execute(reflected.insert().values(name="n"))
            assert conn.execute(sa.select(reflected.c.name)).scalars().all() == ["n"]
    finally:
        isolated.dispose()


def test_set_local_lock_timeout_is_allowed_and_nothing_else(pg_url: sa.URL) -> None:
    """PostgreSQL's transaction-scoped settings (``dbapi_server.policy.DEFAULT_SETTINGS``)."""
    with guard.trusted():
        direct = sa.create_engine(pg_url)
        metadata.create_all(direct)
        direct.dispose()
    with dbapi_process(pg_url, METADATA) as server:
        _check_settings(_engine(server, pg_url))


def _check_settings(isolated: sa.Engine) -> None:
    try:
        with isolated.begin() as conn:  # Airflow's with_db_lock_timeout
            conn.execute(sa.text("SET LOCAL lock_timeout = '30s'"))
            assert conn.execute(sa.select(sa.func.count()).select_from(metadata.tables["things"])).scalar() == 0
        for refused in ("SET LOCAL statement_timeout = '0'", "SET lock_timeout = '1s'",
                        "SET LOCAL lock_timeout = '1s'; SELECT 1"):
            with isolated.begin() as conn, pytest.raises(PolicyViolationError):
                conn.execute(sa.text(refused))
    finally:
        isolated.dispose()


def test_reflection_through_the_async_dialect(database: sa.URL, server: DBAPIProcess) -> None:
    """``AsyncEngine`` + ``run_sync(inspect)``: the same DB-API answers, awaited."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    async def reflect() -> tuple[list[str], list[str]]:
        engine = create_async_engine(f"{database.get_backend_name()}+dbsession_async://127.0.0.1:{server.port}/",
                                     connect_args={"token": server.token})
        try:
            async with engine.connect() as conn:
                names = await conn.run_sync(lambda c: sorted(sa.inspect(c).get_table_names()))
                columns = await conn.run_sync(lambda c: [col["name"] for col in sa.inspect(c).get_columns("parts")])
                return names, columns
        finally:
            await engine.dispose()

    assert asyncio.run(reflect()) == (["parts", "things"], [c.name for c in metadata.tables["parts"].columns])


def test_malformed_reflection_requests_are_400(database: sa.URL, server: DBAPIProcess) -> None:
    import urllib.error
    import urllib.request

    import orjson

    def post(body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(f"{server.url}/dbapi/v1/catalog/reflect", data=orjson.dumps(body),
                                         headers={"Authorization": f"Bearer {server.token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request) as answer:
                return answer.status, orjson.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read())

    for body in ({"method": "get_sequence_names"}, {"method": "get_columns", "args": {}},
                 {"method": "get_multi_columns", "args": {"kind": 10**6}},
                 {"method": "get_table_names", "args": {"kw": {"info_cache": "x"}}},
                 {"method": "get_table_names", "args": {"schema": 3}},
                 {"method": "has_index", "args": {"table_name": "parts", "index_name": 7}}):
        status, answer = post(body)
        assert (status, answer["error"]["code"]) == (400, "malformed_request"), (body, answer)
    assert post({"method": "has_index", "args": {"table_name": "parts", "index_name": "ix_parts_seen"}}) == \
        (200, {"result": True})
