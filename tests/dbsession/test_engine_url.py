"""``sqlite+dbsession://`` / ``postgresql+dbsession://`` / ``mysql+dbsession://`` as a general-purpose engine.

The connection-level API a program (or SQLAlchemy's own test suite) uses on an ordinary engine,
through a real DB-API server: transactions, savepoints, driver SQL, DDL, cursor metadata,
reflection, events, dispose - and the policy that keeps refusing DDL and raw SQL by default.

The DB-API runs in a process of its own (``dbapi-server serve``, another ``PYTHONHASHSEED``), as a
user runs it: one under the testing preset and one under the default (open) preset per database,
for the module. Each test starts from an empty database (its tables are dropped afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from dbapi_server import DefaultPolicy
from dbsession import guard
from dbsession.exceptions import PolicyViolationError
from tests.servers import DBAPIProcess, dbapi_process

from ._engine_url_models import MD, THINGS

# the application's tables (``MD``): the server knows them, as a deployed DB-API knows the
# models; the client creates them through the DB-API (DDL under the testing preset)
METADATA = "tests.dbsession._engine_url_models:MD"
TESTING = 'preset = "testing"\n'


def _engine(server: DBAPIProcess, backend: str, **kw: Any) -> sa.Engine:
    return sa.create_engine(f"{backend}+dbsession://127.0.0.1:{server.port}/",
                            connect_args={"token": server.token}, **kw)


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mysql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, sa.URL]:
    """The served database of one backend, for the module."""
    if request.param == "sqlite":
        return "sqlite", sa.make_url(f"sqlite:///{tmp_path_factory.mktemp('engine_url') / 'engine_url.db'}")
    if request.param == "postgresql":
        return "postgresql", request.getfixturevalue("pg_url")
    return "mysql", request.getfixturevalue("mariadb_url")


@pytest.fixture
def backend(database: tuple[str, sa.URL]) -> Iterator[tuple[str, sa.Engine]]:
    """The backend's name and a direct (trusted) engine; the test's tables are dropped afterwards."""
    name, url = database
    direct = guard.exempt(sa.create_engine(url))
    yield name, direct
    with guard.trusted():
        MD.drop_all(direct)
        sa.Table("other", sa.MetaData()).drop(direct, checkfirst=True)
    direct.dispose()


@pytest.fixture(scope="module")
def _testing_server(database: tuple[str, sa.URL]) -> Iterator[DBAPIProcess]:
    with dbapi_process(database[1], METADATA, policy=TESTING) as server:
        yield server


@pytest.fixture(scope="module")
def _default_server(database: tuple[str, sa.URL]) -> Iterator[DBAPIProcess]:
    with dbapi_process(database[1], METADATA) as server:
        yield server


@pytest.fixture
def testing_server(backend: tuple[str, sa.Engine], _testing_server: DBAPIProcess) -> tuple[str, DBAPIProcess]:
    return backend[0], _testing_server


@pytest.fixture
def engine(testing_server: tuple[str, DBAPIProcess]) -> Iterator[sa.Engine]:
    name, server = testing_server
    eng = _engine(server, name)
    yield eng
    eng.dispose()


def _ddl(engine: sa.Engine) -> sa.Table:
    MD.create_all(engine)
    return THINGS


def test_dialect_is_the_servers(engine: sa.Engine, testing_server: tuple[str, DBAPIProcess]) -> None:
    assert engine.dialect.name == testing_server[0]
    assert getattr(engine.dialect, "is_dbsession", False)


def test_driver_module_shows_the_servers_driver_versions(engine: sa.Engine) -> None:
    from dbsession import _dbapi

    dbapi = engine.dialect.dbapi
    assert dbapi is not None and dbapi.Error is _dbapi.Error and dbapi.connect is _dbapi.connect
    if engine.dialect.name == "sqlite":
        import sqlite3

        assert dbapi.sqlite_version_info == sqlite3.sqlite_version_info
    elif engine.dialect.name == "postgresql":
        import psycopg

        assert dbapi.__version__ == psycopg.__version__
    else:
        import pymysql

        assert dbapi.__version__ == pymysql.__version__


def test_ddl_and_reflection_through_the_test_policy(engine: sa.Engine) -> None:
    _ddl(engine)
    inspector = sa.inspect(engine)
    assert "things" in inspector.get_table_names()
    assert {c["name"] for c in inspector.get_columns("things")} == {"id", "name"}
    assert [i["name"] for i in inspector.get_indexes("things")] == ["ix_things_name"]
    assert inspector.get_pk_constraint("things")["constrained_columns"] == ["id"]
    sa.MetaData().reflect(engine)  # whole-schema reflection works too
    sa.Table("things", sa.MetaData()).drop(engine)
    assert not sa.inspect(engine).has_table("things")


def test_driver_sql_rows_description_rowcount(engine: sa.Engine, backend: tuple[str, sa.Engine]) -> None:
    _ddl(engine)
    mark = "?" if backend[0] == "sqlite" else "%s"
    with engine.begin() as conn:
        result = conn.exec_driver_sql(f"INSERT INTO things (id, name) VALUES ({mark}, {mark})",
                                      [(1, "a"), (2, "b"), (3, "c")])
        assert result.rowcount == 3
        concat = "CONCAT(name, 'x')" if backend[0] == "mysql" else "name || 'x'"
        result = conn.exec_driver_sql(f"UPDATE things SET name = {concat} WHERE id > {mark}", (1,))
        assert result.rowcount == 2
    with engine.connect() as conn:
        result = conn.exec_driver_sql("SELECT id, name FROM things ORDER BY id")
        assert [d[0] for d in result.cursor.description] == ["id", "name"]
        assert result.all() == [(1, "a"), (2, "bx"), (3, "cx")]


def test_core_insert_lastrowid_and_returning(engine: sa.Engine) -> None:
    t = _ddl(engine)
    with engine.begin() as conn:
        result = conn.execute(t.insert().values(name="a"))
        assert result.inserted_primary_key == (1,)
        if engine.dialect.name == "sqlite":
            assert result.lastrowid == 1
        result = conn.execute(t.insert().returning(t.c.id, t.c.name), [{"name": "b"}, {"name": "c"}])
        assert result.all() == [(2, "b"), (3, "c")]
        assert conn.execute(t.update().where(t.c.id >= 2).values(name="z")).rowcount == 2


def test_transactions_savepoints_and_rollback(engine: sa.Engine) -> None:
    t = _ddl(engine)
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(t.insert(), {"id": 1, "name": "kept"})
            nested = conn.begin_nested()
            conn.execute(t.insert(), {"id": 2, "name": "undone"})
            nested.rollback()
            nested = conn.begin_nested()
            conn.execute(t.insert(), {"id": 3, "name": "released"})
            nested.commit()
        trans = conn.begin()
        conn.execute(t.insert(), {"id": 4, "name": "rolled back"})
        trans.rollback()
        assert conn.execute(sa.select(t.c.id).order_by(t.c.id)).scalars().all() == [1, 3]


def test_integrity_error_is_typed(engine: sa.Engine, backend: tuple[str, sa.Engine]) -> None:
    t = _ddl(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), {"id": 1, "name": "a"})
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(t.insert(), {"id": 1, "name": "dup"})
    with pytest.raises(sa.exc.DBAPIError) as direct, guard.trusted(), backend[1].connect() as conn:
        conn.exec_driver_sql("SELECT nope FROM things")
    with pytest.raises(sa.exc.DBAPIError) as isolated, engine.connect() as conn:
        conn.exec_driver_sql("SELECT nope FROM things")
    # the class a direct connection raises (psycopg: ProgrammingError, sqlite3 and PyMySQL:
    # OperationalError)
    assert type(isolated.value) is type(direct.value)


def test_engine_events_and_dispose(engine: sa.Engine) -> None:
    t = _ddl(engine)
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *a: seen.append(statement.split()[0]))
    sa.event.listen(engine, "commit", lambda conn: seen.append("commit"))
    with engine.begin() as conn:
        conn.execute(t.insert(), {"id": 1, "name": "a"})
    assert seen == ["INSERT", "commit"]
    engine.dispose()
    with engine.connect() as conn:  # a disposed engine reconnects, as any engine does
        assert conn.scalar(sa.select(sa.func.count()).select_from(t)) == 1


def test_text_with_binds_through_the_test_policy(engine: sa.Engine) -> None:
    _ddl(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO things (id, name) VALUES (:id, :name)"), {"id": 7, "name": "t"})
        assert conn.execute(sa.text("SELECT name FROM things WHERE id = :id"), {"id": 7}).scalar() == "t"


@pytest.fixture
def default_policy_engine(backend: tuple[str, sa.Engine], _default_server: DBAPIProcess) -> Iterator[sa.Engine]:
    name, direct = backend
    with guard.trusted():
        with direct.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE things (id INTEGER PRIMARY KEY, name VARCHAR(30))")
    eng = _engine(_default_server, name)
    yield eng
    eng.dispose()


def test_default_policy_refuses_ddl_and_driver_sql(default_policy_engine: sa.Engine) -> None:
    md = sa.MetaData()
    sa.Table("other", md, sa.Column("id", sa.Integer, primary_key=True))
    with pytest.raises(PolicyViolationError, match="DDL .* not allowed"):
        md.create_all(default_policy_engine, checkfirst=False)
    with pytest.raises(PolicyViolationError, match="Raw SQL strings .* not allowed"), \
            default_policy_engine.connect() as conn:
        conn.exec_driver_sql("SELECT * FROM things")
    with pytest.raises(PolicyViolationError, match="DDL .* not allowed"), default_policy_engine.begin() as conn:
        conn.execute(sa.schema.DropTable(sa.Table("things", sa.MetaData())))
    with pytest.raises(PolicyViolationError, match="not allowed"), default_policy_engine.connect() as conn:
        conn.execute(sa.text("SELECT * FROM things"))


@pytest.mark.parametrize("policy,kind,allowed", [
    (DefaultPolicy(allow_ddl=True), "ddl", True), (DefaultPolicy(allow_ddl=True), "driver_sql", False),
    (DefaultPolicy(allow_raw_sql=True), "ddl", False), (DefaultPolicy(allow_raw_sql=True), "driver_sql", True),
    (DefaultPolicy(), "ddl", False), (DefaultPolicy(), "driver_sql", False),
])
def test_ddl_and_raw_sql_are_separate_permissions(policy: DefaultPolicy, kind: str, allowed: bool) -> None:
    from dbapi_server import PolicyViolation
    from dbapi_server.auth import Principal
    from query_translation import StatementInfo

    info = StatementInfo(kind=kind, literal_sql=["CREATE TABLE x (y INT)"])
    principal = Principal("t", {})
    if allowed:
        policy.check(info, principal)
    else:
        with pytest.raises(PolicyViolation):
            policy.check(info, principal)


def test_sql_rewritten_by_an_event_travels_as_that_sql(engine: sa.Engine) -> None:
    # a before_cursor_execute listener with retval=True changes what the driver receives; the
    # isolation path must run the rewritten SQL (or refuse it), never the original structure
    t = _ddl(engine)

    @sa.event.listens_for(engine, "before_cursor_execute", retval=True)
    def rewrite(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> Any:
        return statement.replace("things.name", "upper(things.name) AS name"), parameters

    with engine.begin() as conn:
        conn.execute(t.insert(), {"id": 1, "name": "abc"})
        assert conn.execute(sa.select(t.c.name)).scalar() == "ABC"


def test_rewritten_sql_is_refused_by_the_default_policy(default_policy_engine: sa.Engine) -> None:
    @sa.event.listens_for(default_policy_engine, "before_cursor_execute", retval=True)
    def rewrite(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> Any:
        return statement + " ", parameters

    with pytest.raises(PolicyViolationError, match="Raw SQL strings"), default_policy_engine.connect() as conn:
        conn.execute(sa.select(THINGS.c.id))


def test_test_provisioning_is_the_server_dialects(engine: sa.Engine) -> None:
    # sqlalchemy.testing finds a backend's provisioning (upsert, temp tables...) through the
    # dialect class's load_provisioning(); ours is the server dialect's
    from sqlalchemy.testing import provision

    type(engine.dialect).load_provisioning()
    assert engine.dialect.name in provision.temp_table_keyword_args.fns


def test_a_locking_subquery_runs_in_a_transaction(engine: sa.Engine) -> None:
    # found by SQLAlchemy's test suite (test_lockmode test_join_w_subquery): FOR UPDATE inside a
    # subquery made the server demand a transaction the client had not opened for a "read"
    t = _ddl(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), {"id": 1, "name": "a"})
    locked = sa.select(t).with_for_update().subquery()
    with engine.connect() as conn:
        assert conn.execute(sa.select(locked.c.name)).scalars().all() == ["a"]


def test_sequence_pre_execution_runs_the_dialects_own_sql(engine: sa.Engine) -> None:
    # found by SQLAlchemy's test suite on PostgreSQL (13 tests): executing a Sequence runs the
    # dialect's own "select nextval(...)" on the statement's cursor; that SQL is not the compiled
    # statement, so it travels as driver SQL (the test policy allows it)
    if engine.dialect.name != "postgresql":
        pytest.skip("sequences: PostgreSQL")
    seq = sa.Sequence("engine_url_seq", metadata=sa.MetaData())
    seq.create(engine)
    try:
        with engine.begin() as conn:
            assert [conn.scalar(seq), conn.scalar(seq)] == [1, 2]
    finally:
        seq.drop(engine)


def test_two_servers_of_one_dialect_keep_their_own_state(database: tuple[str, sa.URL]) -> None:
    # found by running the corpus and these tests in one process: the client dialect class was
    # cached per dialect and driver with the first server's state, so a second MariaDB DB-API
    # (another database: another default schema) was reflected as the first one's database
    name, url = database
    if name != "mysql":
        pytest.skip("MariaDB: the default schema is the database's name")
    from tests.conftest import MYSQL_ADMIN_URL, fresh_database

    other = fresh_database(MYSQL_ADMIN_URL, "MariaDB")
    other_url = next(other)
    try:
        with dbapi_process(url, METADATA, policy=TESTING) as first, \
                dbapi_process(other_url, METADATA, policy=TESTING) as second:
            engines = [_engine(first, name), _engine(second, name)]
            MD.create_all(engines[1])
            # (the DB-API keeps tables of its own there too, e.g. its commit outcomes)
            assert ["things" in sa.inspect(e).get_table_names() for e in engines] == [False, True]
            assert [e.dialect.default_schema_name for e in engines] == [url.database, other_url.database]
            for e in engines:
                e.dispose()
    finally:
        next(other, None)  # drops the second database
