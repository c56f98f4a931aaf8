"""The pytest plugin's test databases: one per distinct ``db_metadata``, made lazily, closed at the end.

The first ``MetaData`` a run asks for gets the configured database (``--db-url`` / ini ``db_url``,
default a SQLite file in a temporary directory). Every further one gets a database of its own,
named after the first with a random suffix: a sibling SQLite file, or ``CREATE DATABASE`` on the
same PostgreSQL / MySQL / MariaDB server - dropped again at the end. With ``db_create_tables =
false`` (an already migrated database) every ``MetaData`` uses the configured database as it is.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["TestDatabase", "TestDatabases", "async_url"]

_SERVER_BACKENDS = ("postgresql", "mysql", "mariadb")
_MAX_NAME = 63  # PostgreSQL's identifier limit (MySQL/MariaDB: 64)


@dataclass
class TestDatabase:
    """The database the tests of one ``MetaData`` run against, with a trusted engine."""

    __test__ = False  # not a test class, whatever its name says

    url: sa.URL
    engine: sa.Engine
    metadata: sa.MetaData
    created_tables: bool
    temp_dir: str | None = None
    created_database: bool = False  # made for this run (a second MetaData's): removed at close

    def close(self, admin: sa.Engine | None) -> None:
        """Drop what was created; *admin* drops a created server database."""
        try:
            if self.created_tables:
                self.metadata.drop_all(self.engine)
        finally:
            self.engine.dispose()
            if self.created_database:
                _drop_database(self.url, admin)
            if self.temp_dir is not None:
                shutil.rmtree(self.temp_dir, ignore_errors=True)


@dataclass
class TestDatabases:
    """Every test database of one pytest session, by ``MetaData`` (identity)."""

    __test__ = False

    config: pytest.Config
    _by_metadata: dict[int, TestDatabase] = field(default_factory=dict)
    direct_binds: dict[int, sa.Engine] = field(default_factory=dict)  # direct mode's dbsession_bind, by database
    direct_async_binds: dict[int, AsyncEngine] = field(default_factory=dict)  # ... async_dbsession_bind

    @property
    def all(self) -> list[TestDatabase]:
        return list(self._by_metadata.values())

    def for_metadata(self, metadata: sa.MetaData) -> TestDatabase:
        found = self._by_metadata.get(id(metadata))
        if found is None:  # the dict holds the metadata (in the database): its id stays unique
            found = self._by_metadata[id(metadata)] = self._open(metadata)
        return found

    def _open(self, metadata: sa.MetaData) -> TestDatabase:
        import sqlalchemy as sa

        from . import guard

        create = bool(self.config.getini("db_create_tables"))
        first = next(iter(self._by_metadata.values()), None)
        temp_dir = created = None
        if first is None:
            raw = self.config.getoption("db_url") or self.config.getini("db_url")
            if not raw:
                temp_dir = tempfile.mkdtemp(prefix="dbsession-pytest-")
                raw = f"sqlite:///{Path(temp_dir) / 'test.sqlite'}"
            url = sa.make_url(raw)
            if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
                pytest.fail(f"db_url {raw!r} is an in-memory SQLite database, which every connection "
                            "sees empty; name a file (sqlite:///path/test.sqlite).", pytrace=False)
        elif not create:
            url = first.url  # a migrated database holds every MetaData's tables already
        else:
            url = _create_database(first.url, first.engine)
            created = True
        with guard.trusted():  # the guard is on once a first DB-API serves; stays exempt after
            engine = guard.exempt(sa.create_engine(url))
        database = TestDatabase(url, engine, metadata, create, temp_dir, bool(created))
        if create:
            try:
                metadata.create_all(engine)
            except BaseException:
                database.created_tables = False
                database.close(first.engine if first else None)
                raise
        return database

    def close(self) -> None:
        """Close every database, the first (the others' admin connection) last."""
        for engine in self.direct_binds.values():
            engine.dispose()
        for async_engine in self.direct_async_binds.values():
            async_engine.sync_engine.dispose()  # NullPool: no connection outlives its test's loop
        databases, self._by_metadata, self.direct_binds, self.direct_async_binds = self.all, {}, {}, {}
        admin = databases[0].engine if databases else None
        errors: list[BaseException] = []
        for database in reversed(databases):
            try:
                database.close(admin)
            except BaseException as exc:  # close the others all the same
                errors.append(exc)
        if errors:
            raise errors[0]


# the async driver for a sync one: the same driver family where there is one (aiosqlite wraps
# sqlite3, psycopg 3 has an async connection, aiomysql is PyMySQL's protocol code)
_ASYNC_DRIVERS = {"pysqlite": "aiosqlite", "psycopg": "psycopg", "psycopg2": "asyncpg", "pg8000": "asyncpg",
                  "pymysql": "aiomysql", "mysqldb": "aiomysql", "mariadbconnector": "aiomysql"}


def async_url(url: sa.URL, driver: str | None = None) -> sa.URL:
    """*url* with the async driver for its sync one (*driver*, ini ``db_async_driver``, wins)."""
    chosen = driver or _ASYNC_DRIVERS.get(url.get_driver_name())
    if chosen is None:
        pytest.fail(f"No async driver is known for {url.drivername!r} (db_url); name one with the ini "
                    "option db_async_driver (e.g. asyncpg, aiosqlite, aiomysql).", pytrace=False)
    found = url.set(drivername=f"{url.get_backend_name()}+{chosen}")
    if chosen == "aiomysql" and "charset" not in found.query:
        found = found.update_query_dict({"charset": "utf8mb4"})  # PyMySQL's default; aiomysql has none
    return found


def _create_database(base: sa.URL, admin: sa.Engine) -> sa.URL:
    """A new, empty database beside *base*: its URL."""
    backend = base.get_backend_name()
    suffix = secrets.token_hex(4)
    if backend == "sqlite":
        path = Path(base.database or "test.sqlite")
        return base.set(database=str(path.with_name(f"{path.stem}-{suffix}{path.suffix}")))
    if backend not in _SERVER_BACKENDS or not base.database:
        pytest.fail(f"A second db_metadata needs a test database of its own, and the dbsession plugin "
                    f"creates those on SQLite, PostgreSQL, MySQL and MariaDB only (db_url {base!r}); "
                    "or set db_create_tables = false to use one migrated database for all.", pytrace=False)
    name = f"{base.database[:_MAX_NAME - len(suffix) - 1]}_{suffix}"
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {admin.dialect.identifier_preparer.quote(name)}")
    return base.set(database=name)


def _drop_database(url: sa.URL, admin: sa.Engine | None) -> None:
    if url.get_backend_name() == "sqlite":
        Path(url.database or "").unlink(missing_ok=True)
        return
    assert admin is not None
    name = admin.dialect.identifier_preparer.quote(url.database or "")
    force = " WITH (FORCE)" if url.get_backend_name() == "postgresql" else ""
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
