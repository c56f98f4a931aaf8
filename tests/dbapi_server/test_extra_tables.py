"""Tables outside the application's metadata, served by configuration (``dbapi_server.extra_tables``).

Airflow and MLflow read their migration head before they work: alembic's ``MigrationContext``
asks ``dialect.has_table("alembic_version")`` and then selects from a ``Table`` it builds on the
fly, in a ``MetaData`` of its own. Here that is real alembic, through the isolation engine URL and
a ``DBSession``'s connection, against ``dbapi-server serve`` in its own process, compared with a
direct connection to the same database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext

from dbapi_server import ConfigError, Policy, create_app
from dbapi_server.extra_tables import ExtraTableError, parse_names
from dbsession import DBSession, guard
from dbsession.exceptions import BadRequestError, PolicyViolationError
from tests.dbapi_server._extra_tables_models import metadata, things
from tests.servers import DBAPIProcess, dbapi_process

METADATA = "tests.dbapi_server._extra_tables_models:metadata"
HEAD = "3f2a9c1b7d04"


def _version_table() -> sa.Table:
    """alembic's own definition of its version table (``DefaultImpl.version_table_impl``)."""
    with guard.trusted():
        context = MigrationContext.configure(dialect_name="sqlite")
    return context._version


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[sa.URL]:
    """A migrated database: the application's tables and alembic's version table at HEAD."""
    if request.param == "sqlite":
        url = sa.make_url(f"sqlite:///{tmp_path / 'app.db'}")
    else:
        url = request.getfixturevalue("pg_url")
    version = _version_table()
    with guard.trusted():
        direct = sa.create_engine(url)
        with direct.begin() as conn:
            metadata.create_all(conn)
            version.create(conn)
            conn.execute(version.insert().values(version_num=HEAD))
        direct.dispose()
    yield url
    with guard.trusted():
        direct = sa.create_engine(url)
        with direct.begin() as conn:
            metadata.drop_all(conn)
            version.drop(conn, checkfirst=True)
        direct.dispose()


def _engine(server: DBAPIProcess, url: sa.URL, token: str | None = None) -> sa.Engine:
    return sa.create_engine(f"{url.get_backend_name()}+dbsession://127.0.0.1:{server.port}/",
                            connect_args={"token": token or server.token})


def _direct_revision(url: sa.URL) -> tuple[str | None, tuple[str, ...]]:
    with guard.trusted():
        direct = sa.create_engine(url)
        try:
            with direct.connect() as conn:
                context = MigrationContext.configure(conn)
                return context.get_current_revision(), context.get_current_heads()
        finally:
            direct.dispose()


def test_alembic_reads_the_head_through_an_extra_table(database: sa.URL) -> None:
    direct = _direct_revision(database)
    assert direct == (HEAD, (HEAD,))
    with dbapi_process(database, METADATA, env={"DBAPI_EXTRA_TABLES": "alembic_version"}) as server:
        engine = _engine(server, database)
        try:
            # MLflow's _get_schema_version / Airflow's check_migrations: an engine connection
            with engine.connect() as conn:
                context = MigrationContext.configure(conn)
                assert (context.get_current_revision(), context.get_current_heads()) == direct
                assert conn.dialect.has_table(conn, "things") is True
                assert conn.dialect.has_table(conn, "no_such_table") is False
            # Airflow's _get_current_revision(session): the session's connection
            with DBSession(database_access_isolation=True, database_api_host=server.url,
                           token=server.token) as session:
                context = MigrationContext.configure(session.connection())
                assert context.get_current_revision() == HEAD
                assert session.query(things).count() == 0  # the application's own tables as before
        finally:
            engine.dispose()


def test_extra_tables_are_read_only_under_the_open_preset(database: sa.URL) -> None:
    version = _version_table()
    with dbapi_process(database, METADATA, env={"DBAPI_EXTRA_TABLES": "alembic_version"}) as server:
        engine = _engine(server, database)
        try:
            for statement in (version.update().values(version_num="0000"),
                              version.insert().values(version_num="0000"), version.delete()):
                with engine.connect() as conn, pytest.raises(PolicyViolationError, match="alembic_version"):
                    conn.execute(statement)
            with engine.begin() as conn:  # the application's tables stay writable
                conn.execute(things.insert().values(name="a"))
        finally:
            engine.dispose()
    assert _direct_revision(database)[0] == HEAD


def test_without_configuration_the_table_is_not_served(database: sa.URL) -> None:
    with dbapi_process(database, METADATA) as server:
        engine = _engine(server, database)
        try:
            with engine.connect() as conn:
                # not served: it does not exist for the client (a direct connection says HEAD)
                assert MigrationContext.configure(conn).get_current_revision() is None
                with pytest.raises(BadRequestError, match="not part of the server's metadata"):
                    conn.execute(sa.select(_version_table().c.version_num))
        finally:
            engine.dispose()


POLICY = """
extra_tables = ["alembic_version"]

[roles.migrator.tables.alembic_version]
read = "*"
update = "*"

[roles.migrator.tables.things]
read = "*"

[roles.worker.tables.things]
read = "*"
"""


def test_policy_file_grants_extra_tables_per_role(database: sa.URL) -> None:
    version = _version_table()
    with dbapi_process(database, METADATA, policy=POLICY) as server:
        worker = _engine(server, database, server.mint(role="worker"))
        migrator = _engine(server, database, server.mint(role="migrator"))
        try:
            with worker.connect() as conn:
                assert conn.dialect.has_table(conn, "alembic_version") is False  # not granted: hidden
                assert conn.dialect.has_table(conn, "things") is True
                assert MigrationContext.configure(conn).get_current_revision() is None
                with pytest.raises(PolicyViolationError, match="alembic_version"):
                    conn.execute(sa.select(version.c.version_num))
            with migrator.begin() as conn:
                assert MigrationContext.configure(conn).get_current_revision() == HEAD
                conn.execute(version.update().values(version_num="4b1e0d2c9a77"))
            with migrator.connect() as conn, pytest.raises(PolicyViolationError, match="alembic_version"):
                conn.execute(version.delete())  # update granted, delete not
        finally:
            worker.dispose()
            migrator.dispose()
    assert _direct_revision(database)[0] == "4b1e0d2c9a77"


def test_configuration_errors_stop_the_server(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with guard.trusted():
        engine = sa.create_engine(url)
        metadata.create_all(engine)
        try:
            with pytest.raises(ConfigError, match="'alembic_version' is not in the database"):
                create_app(engine=engine, metadata=metadata, extra_tables="alembic_version")
            with pytest.raises(ConfigError, match="already part of the application's metadata"):
                create_app(engine=engine, metadata=metadata, extra_tables=["things"])
            policy = Policy.from_dict({"extra_tables": ["alembic_version"],
                                       "roles": {"r": {"tables": {"alembic_version": {"read": "*"}}}}})
            with pytest.raises(ConfigError, match="'alembic_version' is not in the database"):
                create_app(engine=engine, metadata=metadata, policy=policy)
            # a grant on a table neither in the metadata nor served is refused as before
            with pytest.raises(ConfigError, match="not in the server's metadata"):
                create_app(engine=engine, metadata=metadata, policy=Policy.from_dict(
                    {"roles": {"r": {"tables": {"alembic_version": {"read": "*"}}}}}))
        finally:
            engine.dispose()
    assert set(metadata.tables) == {"things", "parts"}  # the application's metadata is never changed


def test_names_parse() -> None:
    assert parse_names(" alembic_version, audit.log ,") == {"alembic_version", "audit.log"}
    assert parse_names(None) == frozenset()
    for bad in ("a.b.c", ".x", "x."):
        with pytest.raises(ExtraTableError):
            parse_names(bad)
    with pytest.raises(ValueError, match="extra_tables"):
        Policy.from_dict({"extra_tables": "alembic_version"})
