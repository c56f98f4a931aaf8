"""pytest plugin for SQLAlchemy's own test suite run through the isolation path.

Loaded by ``tools/sa_suite.py`` (``-p tools.sa_suite_plugin``) into the pytest process that runs
the suite with ``--dburi sqlite+dbsession://127.0.0.1:PORT/``. Before the suite configures its
engines, it starts a real DB-API server (Flask under waitress, real EdDSA tokens, loopback) for
a scratch database, with ``DefaultPolicy.for_testing()`` (DDL and raw SQL allowed).

The server's metadata. A deployed DB-API serves the application's own models, which the client
imports too, so both sides hold identical table definitions. The suite defines its tables on the
fly (dozens of different ``users`` tables), so this harness keeps the server's metadata in step
with the client's: every table the client creates (``CREATE TABLE`` through the isolation engine,
or any table of a ``create_all``) is registered, as the very same ``Table`` object, in the
server's ``MetaData``. That is the harness's stand-in for "deploy the same models"; everything
else - wire encoding, HTTP, token checks, decoding against that metadata, policy, fingerprint
check, server-side transactions - runs exactly as in production. The server runs in this process
(on its own threads) only so that it can see those ``Table`` objects.

Environment (set by ``tools/sa_suite.py``):
``SA_SUITE_SERVER_DB``  the database URL the server serves (scratch file / scratch database)
``SA_SUITE_PORT``       the loopback port of the server
"""

from __future__ import annotations

import logging
import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.sql import compiler as sql_compiler

from dbapi_server import DefaultPolicy, JWTAuthenticator, create_app, mint_token
from dbapi_server.keys import generate_keypair
from dbapi_server.serving import start_background
from dbsession import guard

_server: Any = None
_state: Any = None
TOKEN_TTL = 6 * 3600.0  # one suite run; the key pair exists only in this process (the server accepts it)

SERVER_METADATA = sa.MetaData()


def _is_isolated(connection: Any) -> bool:
    return bool(getattr(getattr(connection, "dialect", None), "is_dbsession", False))


def register_tables(tables: Any) -> None:
    """Make *tables* (the client's ``Table`` objects) the server's definitions of those names."""
    changed = False
    for table in tables:
        if SERVER_METADATA.tables.get(table.key) is not table:
            SERVER_METADATA._add_table(table.name, table.schema, table)
            changed = True
    if changed and _state is not None:
        _state.executor.schema_changed()


def _metadata_before_create(target: sa.MetaData, connection: Any, tables: Any = None, **kw: Any) -> None:
    if _is_isolated(connection):
        register_tables(tables if tables is not None else target.sorted_tables)


def _table_before_create(target: sa.Table, connection: Any, **kw: Any) -> None:
    if _is_isolated(connection):
        register_tables([target])


def _before_cursor_execute(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any,
                           executemany: bool) -> None:
    if not _is_isolated(conn):
        return
    compiled = getattr(context, "compiled", None)
    if isinstance(compiled, sql_compiler.DDLCompiler):
        element = getattr(compiled.statement, "element", None)
        if isinstance(compiled.statement, sa.schema.CreateTable) and isinstance(element, sa.Table):
            register_tables([element])
    elif isinstance(compiled, sql_compiler.SQLCompiler) and compiled.statement is not None:
        # a Table the suite maps or queries without creating it through this engine (a second
        # Table object for an existing table, e.g. with other column keys)
        register_tables(_tables_of(compiled))


def _tables_of(compiled: Any) -> list[sa.Table]:
    found = getattr(compiled, "_sa_suite_tables", None)
    if found is None:
        seen: dict[int, sa.Table] = {}
        for element in sa.sql.visitors.iterate(compiled.statement):
            table = element if isinstance(element, sa.Table) else getattr(element, "table", None)
            if isinstance(table, sa.Table):
                original = table._deannotate()
                if isinstance(original, sa.Table):
                    seen.setdefault(id(original), original)
        found = compiled._sa_suite_tables = list(seen.values())
    return found


def _start_server() -> None:
    global _server, _state
    url = os.environ["SA_SUITE_SERVER_DB"]
    port = int(os.environ["SA_SUITE_PORT"])
    # the server's engine logs under its own name, kept out of the "sqlalchemy.engine" records
    # the suite captures and asserts on (a separate server process would not share them)
    engine = sa.create_engine(url, logging_name="sa_suite_server")
    logging.getLogger("sqlalchemy.engine.Engine.sa_suite_server").propagate = False
    if engine.dialect.name == "sqlite":
        # what SQLAlchemy's SQLite provisioning does for its test engines, here on the server's
        # connections (the client's stand-in connections have no SQLite connection to attach to)
        attach = os.path.join(os.path.dirname(engine.url.database or ".") or ".", "server_test_schema.db")

        @event.listens_for(engine, "connect")
        def _attach(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.execute(f'ATTACH DATABASE "{attach}" AS test_schema')
    guard.exempt(engine)
    private, public = generate_keypair()
    app = create_app(engine=engine, metadata=SERVER_METADATA, policy=DefaultPolicy.for_testing(),
                     authenticator=JWTAuthenticator(public, algorithms=["EdDSA"], max_lifetime=TOKEN_TTL),
                     idle_timeout=600)
    _state = app.extensions["dbapi_server"]
    _server = start_background(app, port=port)
    os.environ["DATABASE_API_TOKEN"] = mint_token(private, subject="sa-suite", ttl=TOKEN_TTL)


def _patch_provisioning() -> None:
    """SQLite's test provisioning attaches a schema on each *driver* connection; ours has none."""
    import importlib

    from sqlalchemy.testing import provision

    # load the backend's provisioning now, so that patching it here is not undone by its import
    importlib.import_module(f"sqlalchemy.dialects.{sa.make_url(os.environ['SA_SUITE_SERVER_DB']).get_backend_name()}.provision")
    original = provision.post_configure_engine.fns.get("sqlite")

    def post_configure_engine(url: Any, engine: Any, follower_ident: Any) -> None:
        if getattr(engine.dialect, "is_dbsession", False):
            return
        if original is not None:
            original(url, engine, follower_ident)

    provision.post_configure_engine.fns["sqlite"] = post_configure_engine

    # The suite's SQLite provisioning deletes the database file after every test class (the
    # engine's dispose), so each class starts from an empty database. The server's file stays;
    # empty it at the same moment, or a table a test leaves behind meets the next class.
    original_stop = provision.stop_test_class_outside_fixtures.fns.get("sqlite")

    def stop_test_class_outside_fixtures(config: Any, db: Any, cls: Any) -> None:
        if original_stop is not None:
            original_stop(config, db, cls)
        if getattr(db.dialect, "is_dbsession", False) and _state is not None:
            _empty_sqlite_database(_state.engine)

    provision.stop_test_class_outside_fixtures.fns["sqlite"] = stop_test_class_outside_fixtures


def _empty_sqlite_database(engine: sa.Engine) -> None:
    with guard.trusted(), engine.begin() as conn:
        for schema in ("main", "test_schema"):
            rows = conn.exec_driver_sql(
                f"SELECT type, name FROM {schema}.sqlite_master "
                "WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'").all()
            for kind, name in rows:
                conn.exec_driver_sql(f'DROP {kind.upper()} IF EXISTS {schema}."{name}"')


def pytest_configure(config: Any) -> None:
    if _server is None:
        _start_server()
        _patch_provisioning()
        event.listen(sa.MetaData, "before_create", _metadata_before_create)
        event.listen(sa.Table, "before_create", _table_before_create)
        event.listen(sa.engine.Engine, "before_cursor_execute", _before_cursor_execute)


def pytest_unconfigure(config: Any) -> None:
    if _server is not None:
        _server.stop()
        _state.close()
