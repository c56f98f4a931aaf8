"""Fixtures of the differential conformance corpus.

Two identically seeded databases per backend: database A is always used
through a plain ``sqlalchemy.orm.Session`` (the reference), database B through
the session factory returned by :func:`isolated_sessionmaker` (the side under
test).  Backends:

* ``sqlite``: two files in a temporary directory (``PRAGMA foreign_keys=ON``
  on every connection).
* ``postgresql``: two freshly created databases with random names on
  ``$DBSESSION_TEST_PG_URL`` (default ``postgresql+psycopg://root@127.0.0.1:5432/postgres``),
  dropped ``WITH (FORCE)`` at teardown.  Unreachable: the tests fail when
  ``$CI`` is set, and are skipped (with the reason) otherwise.
* ``mysql`` (MariaDB): two fresh databases on ``$DBSESSION_TEST_MYSQL_URL`` (default
  ``mysql+pymysql://root@127.0.0.1:3306/``); unreachable: fail under ``$CI``, skip otherwise, as
  for PostgreSQL. ``DBSESSION_TEST_MYSQL=0`` leaves it out.

Read-only operations share the seeded state; after a write operation (or a
read operation that changed something) both databases are reset and re-seeded
before the next test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from .canonical import diff_fingerprints, fingerprint
from .models import metadata
from .seed import seed

PG_DEFAULT_URL = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
MYSQL_DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/"


def _backend_params() -> list:
    params = [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    ]
    if os.environ.get("DBSESSION_TEST_MYSQL", "1") != "0":
        params.append(pytest.param("mysql", id="mysql", marks=pytest.mark.mysql))
    return params


BACKENDS = [p.values[0] for p in _backend_params()]


@dataclass
class Database:
    """One of the two databases of a pair."""

    backend: str
    label: str  # "A" (reference) or "B" (under test)
    url: sa.URL  # full SQLAlchemy URL of this database (what a DB-API server would connect to)
    engine: sa.Engine


@dataclass
class DatabasePair:
    backend: str
    a: Database
    b: Database
    reset: Callable[[sa.Engine], None]
    baseline: tuple = field(default=(), repr=False)  # fingerprint of the seeded state
    dirty: bool = False
    resets: int = field(default=0)

    def reseed(self) -> None:
        for db in (self.a, self.b):
            self.reset(db.engine)
            with Session(db.engine) as s:
                seed(s)
        self.baseline = fingerprint(self.a.engine)
        diff = diff_fingerprints(self.baseline, fingerprint(self.b.engine))
        if diff:  # the seed itself is not deterministic: every comparison would be meaningless
            raise RuntimeError("databases A and B differ right after seeding:\n  " + "\n  ".join(diff))
        self.dirty = False
        self.resets += 1


def _unreachable(backend: str, what: str, exc: BaseException) -> None:
    """Fail in CI (``$CI`` set), otherwise skip loudly: the database service is missing."""
    reason = f"{what} is unreachable ({type(exc).__name__}: {str(exc).strip()[:300]})"
    if os.environ.get("CI"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(f"!!! SKIPPING the {backend} conformance tests: {reason}")


def _trusted_engine(url: str | sa.URL, **kw: Any) -> sa.Engine:
    """A plain engine for the test's trusted side (reference database, seeding, fingerprints).

    Once an isolated ``DBSession`` exists, ``dbsession.guard`` refuses direct database
    access through any non-exempt engine; these engines are legitimately direct, so
    they are exempted up front (a no-op while the guard is not installed).
    """
    engine = sa.create_engine(url, **kw)
    try:
        from dbsession import guard
    except ImportError:  # the package under test is not importable: plain sessions only
        return engine
    return guard.exempt(engine)


# --- SQLite -----------------------------------------------------------------


def _sqlite_engine(path: str) -> sa.Engine:
    engine = _trusted_engine(f"sqlite:///{path}")

    @sa.event.listens_for(engine, "connect")
    def _fk_on(dbapi_conn, _record):  # SQLite enforces FKs only when asked, per connection
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


def _sqlite_reset(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
        # tables have no AUTOINCREMENT keyword, so emptying them restarts rowids at 1;
        # clear sqlite_sequence anyway in case one ever gets it
        has_seq = conn.exec_driver_sql(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'"
        ).scalar()
        if has_seq:
            conn.exec_driver_sql("DELETE FROM sqlite_sequence")


@pytest.fixture(scope="session")
def _sqlite_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabasePair]:
    tmp = tmp_path_factory.mktemp("conformance_sqlite")
    dbs = []
    for label in ("A", "B"):
        path = str(tmp / f"db_{label.lower()}.sqlite")
        engine = _sqlite_engine(path)
        dbs.append(Database("sqlite", label, engine.url, engine))
    pair = DatabasePair("sqlite", dbs[0], dbs[1], _sqlite_reset)
    yield pair
    for db in dbs:
        db.engine.dispose()


# --- server databases (PostgreSQL, MariaDB) ------------------------------------


def _server_pair(backend: str, base_url: str, what: str) -> Iterator[DatabasePair]:
    base = sa.make_url(base_url)
    if backend == "postgresql" and not base.database:
        base = base.set(database="postgres")  # CREATE / DROP DATABASE run from the maintenance db
    admin = _trusted_engine(base, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        admin.dispose()
        _unreachable(backend, what, exc)
    token = secrets.token_hex(4)
    dbs: list[Database] = []
    created: list[str] = []
    try:
        for label in ("A", "B"):
            name = f"dbs_conf_{token}_{label.lower()}"
            with admin.connect() as conn:
                if backend == "mysql":
                    conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
                else:
                    conn.exec_driver_sql(f"CREATE DATABASE {name}")
            created.append(name)
            url = base.set(database=name)
            dbs.append(Database(backend, label, url, _trusted_engine(url)))
        yield DatabasePair(
            backend,
            dbs[0],
            dbs[1],
            _pg_reset if backend == "postgresql" else _mysql_reset,
        )
    finally:
        for db in dbs:
            db.engine.dispose()
        with admin.connect() as conn:
            for name in created:
                if backend == "postgresql":
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                else:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


def _pg_reset(engine: sa.Engine) -> None:
    # DELETE + restarting the serial sequences is several times faster than
    # TRUNCATE ... RESTART IDENTITY on tables this small, and takes weaker locks
    restarts = [
        f"setval(pg_get_serial_sequence('{t.name}', '{t.autoincrement_column.name}'), 1, false)"
        for t in metadata.sorted_tables
        if t.autoincrement_column is not None
    ]
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
        conn.exec_driver_sql("SELECT " + ", ".join(restarts))


def _mysql_reset(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
        for table in reversed(metadata.sorted_tables):
            conn.exec_driver_sql(f"TRUNCATE TABLE {table.name}")  # also resets AUTO_INCREMENT
        conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS=1")


@pytest.fixture(scope="session")
def _postgresql_pair() -> Iterator[DatabasePair]:
    url = os.environ.get("DBSESSION_TEST_PG_URL", PG_DEFAULT_URL)
    yield from _server_pair("postgresql", url, f"PostgreSQL at {sa.make_url(url).render_as_string()}")


@pytest.fixture(scope="session")
def _mysql_pair() -> Iterator[DatabasePair]:
    url = os.environ.get("DBSESSION_TEST_MYSQL_URL", MYSQL_DEFAULT_URL)
    yield from _server_pair("mysql", url, f"MariaDB at {sa.make_url(url).render_as_string()}")


# --- public fixtures ----------------------------------------------------------


@pytest.fixture(scope="session", params=_backend_params())
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def db_pair(backend: str, request: pytest.FixtureRequest) -> DatabasePair:
    """Both databases of ``backend``, schema created and seeded."""
    pair: DatabasePair = request.getfixturevalue(f"_{backend}_pair")
    if not pair.baseline:
        for db in (pair.a, pair.b):
            metadata.drop_all(db.engine)
            metadata.create_all(db.engine)
        pair.reseed()
    return pair


@pytest.fixture(scope="session")
def db_a(db_pair: DatabasePair) -> Database:
    """Database A: the reference, always used through a plain Session."""
    return db_pair.a


@pytest.fixture(scope="session")
def db_b(db_pair: DatabasePair) -> Database:
    """Database B: the side under test (see ``isolated_sessionmaker``)."""
    return db_pair.b


@pytest.fixture(scope="session")
def reference_sessionmaker(db_a: Database) -> Callable[[], Session]:
    """Plain ``Session`` factory for database A."""
    return sessionmaker(bind=db_a.engine)


@pytest.fixture(scope="session")
def isolated_sessionmaker(backend: str, db_a: Database, db_b: Database) -> Iterator[Callable[[], Session]]:
    """THE SEAM: the session factory under test, producing sessions for database B.

    Every corpus operation is run once through ``reference_sessionmaker``
    (plain Session, database A) and once through the callable returned here
    (database B); results, exception classes and database state must match.

    Here: isolated ``DBSession`` s talking over a real loopback socket, with a real EdDSA token,
    to a real DB-API server whose database is B, running in a process of its own
    (``dbapi-server serve``, with a ``PYTHONHASHSEED`` other than this process's), as in
    production: anything the client and the server compile differently because of
    process-local state (set or ``id()`` order, import order) shows here. The engines of the
    fixtures (A, B, the reset and fingerprint code) are exempted from the isolation guard
    explicitly: they are the trusted side.
    """
    from dbsession import DBSession, guard
    from tests.servers import dbapi_process

    guard.exempt(db_a.engine)
    policy, token = _scanned_policy()
    with dbapi_process(db_b.url, "tests.conformance.dbapi_metadata:metadata", policy=policy) as server:
        yield sessionmaker(class_=DBSession, database_access_isolation=True,
                           database_api_host=server.url, token=server.mint(**token) if token else server.token)
    guard.uninstall()


def _scanned_policy() -> tuple[str | None, dict[str, Any]]:
    """With ``DBSESSION_CONFORMANCE_SCANNED=1``: a policy file granting every table in full *by name*
    (not the open preset, which skips the column-level walk) and the claims of its role, so every
    corpus statement meets the statement check's rules - a rule refusing what plain SQLAlchemy
    emits fails the corpus. Raw SQL and DDL stay refused, as the open preset refuses them."""
    if os.environ.get("DBSESSION_CONFORMANCE_SCANNED") != "1":
        return None, {}
    from tests.conformance.dbapi_metadata import metadata

    tables = "".join(f'[roles.app.tables."{name}"]\nread = "*"\ninsert = "*"\nupdate = "*"\ndelete = true\n'
                     for name in metadata.tables)
    return '[roles.app]\nfunctions = "*"\nmethods = "*"\n' + tables, {"role": "app"}


# --- async mode (test_corpus_async.py) -------------------------------------------

# the async twin of each backend's sync driver: the same driver semantics (aiosqlite wraps
# sqlite3, psycopg has an async connection, aiomysql is PyMySQL's protocol code)
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg", "mysql": "mysql+aiomysql"}


@pytest.fixture(scope="session")
def async_runner() -> Iterator[asyncio.Runner]:
    """The event loop of the async corpus: one for the whole run, as an application has one."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="session")
def reference_async_sessionmaker(backend: str, db_a: Database,
                                 async_runner: asyncio.Runner) -> Iterator[Callable[[], Any]]:
    """Plain ``AsyncSession`` factory for database A, over the async twin of its driver."""
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    url = db_a.url.set(drivername=_ASYNC_DRIVERS[backend])
    if backend == "mysql":
        url = url.update_query_dict({"charset": "utf8mb4"})  # PyMySQL's default, which aiomysql lacks
    engine = create_async_engine(url)
    try:
        from dbsession import guard

        guard.exempt(engine.sync_engine)
    except ImportError:
        pass
    if backend == "sqlite":
        @sa.event.listens_for(engine.sync_engine, "connect")
        def _fk_on(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    yield async_sessionmaker(engine, class_=AsyncSession)
    async_runner.run(engine.dispose())  # its connections belong to the runner's loop


@pytest.fixture(scope="session")
def isolated_async_sessionmaker(backend: str, db_a: Database, db_b: Database) -> Iterator[Callable[[], Any]]:
    """The side under test in async mode: ``AsyncDBSession`` factories for database B, through the
    DB-API in its own process (``dbapi-server serve``, another hash seed), as in production."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from dbsession import AsyncDBSession, guard
    from tests.servers import dbapi_process

    guard.exempt(db_a.engine)
    with dbapi_process(db_b.url, "tests.conformance.dbapi_metadata:metadata") as server:
        yield async_sessionmaker(class_=AsyncDBSession, database_access_isolation=True,
                                 database_api_host=server.url, token=server.token)
    guard.uninstall()


@pytest.fixture
def conformance_dbs(db_pair: DatabasePair) -> DatabasePair:
    """``db_pair``, re-seeded first if the previous operation wrote."""
    if db_pair.dirty:
        db_pair.reseed()
    return db_pair


# --- terminal summary ------------------------------------------------------------

# nodeid -> backend, for the corpus tests (test_corpus.py::test_op) only
_BACKEND_OF: dict[str, str] = {}
# nodeid -> "passed" | "failed" | "skipped"
_OUTCOME_OF: dict[str, str] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    _BACKEND_OF.clear()
    for item in session.items:  # after deselection (-k, -m)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "op_name" in callspec.params and "backend" in callspec.params:
            mode = "async " if "test_corpus_async" in item.nodeid else ""
            _BACKEND_OF[item.nodeid] = mode + callspec.params["backend"]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _BACKEND_OF:
        return
    previous = _OUTCOME_OF.get(report.nodeid)
    if report.failed:
        _OUTCOME_OF[report.nodeid] = "failed"
    elif report.skipped and previous != "failed":
        _OUTCOME_OF[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and previous is None:
        _OUTCOME_OF[report.nodeid] = "passed"


def _is_refused(nodeid: str) -> bool:
    from .corpus import OPS

    name = nodeid.rsplit("-", 1)[-1].rstrip("]")
    return name in OPS and OPS[name].refused is not None


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _BACKEND_OF:
        return
    terminalreporter.write_sep("=", "differential conformance")
    names = [f"{mode}{b}" for mode in ("", "async ") for b in ("sqlite", "postgresql", "mysql")]
    for name in [n for n in names if n in _BACKEND_OF.values()]:
        nodeids = [n for n, b in _BACKEND_OF.items() if b == name]
        got = [_OUTCOME_OF.get(n) for n in nodeids]
        passed, failed, skipped = (
            got.count("passed"),
            got.count("failed"),
            got.count("skipped"),
        )
        ran = passed + failed
        not_run = len(nodeids) - ran - skipped
        refused = sum(1 for n in nodeids if _OUTCOME_OF.get(n) == "passed" and _is_refused(n))
        line = (
            f"conformance {name}: {passed}/{ran} identical "
            f"({passed} passed, {failed} failed, {skipped} skipped"
            + (f", {not_run} not run" if not_run else "")
            + ")"
            + (f"; {refused} of the identical are documented policy refusals" if refused else "")
        )
        terminalreporter.write_line(line, red=bool(failed), green=not failed and ran > 0)
