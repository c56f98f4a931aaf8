"""pytest plugin: run a project's tests with ``DBSession`` in isolation mode and catch direct access.

Registered as the ``dbsession`` ``pytest11`` entry point (of the client distribution). Without
``--db-isolation`` it only adds its options, the ``trusted`` marker and a few session fixtures that
do nothing until a test asks for them, and it never imports the server: the client package does
not depend on it. ``--db-isolation`` imports ``dbapi_server`` (``pip install 'dbsession[server]'``)
and says so when it is missing. With ``--db-isolation`` (or ini ``db_isolation = true``) it

* starts a DB-API server for each test database in a background thread (on first need, stopped
  at the session's end), with a freshly generated Ed25519 key and a real token;
* configures the process before each test as an isolated worker would be (``dbsession.configure(...)``),
  so ``DBSession()`` without a bind talks to the server of the test's ``db_metadata``, and
  installs :mod:`dbsession.guard`;
* reports every direct database access by code under test - ``create_engine()`` and
  ``create_async_engine()``, ``connect()``, executing on a direct engine, a plain ``Session`` or
  ``AsyncSession`` bound to one - as a failure of the test, with
  the stack where it happened, even when the code swallowed the exception.

Each distinct ``db_metadata`` (one per app's ``conftest.py``) gets its own test database and server.
Fixtures (all session-scoped, per ``db_metadata``): ``db_metadata`` (override it: your ``MetaData``), ``db_methods``
(module names of named methods the server serves), ``trusted_engine`` (a direct engine for seeding
and inspecting; exempt from the guard), ``dbsession_bind`` (the bind the code under test should
use: a direct engine, or in isolation mode the DB-API's isolated engine), ``async_dbsession_bind``
(the same for ``AsyncSession`` / ``AsyncDBSession`` code: a direct async engine, or the isolated
async engine on the same DB-API). Tests marked
``@pytest.mark.trusted`` may touch the database directly. See ``docs/testing-in-isolation.md``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from ._plugin_databases import TestDatabase, TestDatabases

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .exceptions import DirectDatabaseAccessError

__all__ = ["IsolationMode", "TestDatabase", "TestDatabases"]

PLUGIN_NAME = "dbsession-isolation"
SECTION = "dbsession: direct database access"
TOKEN_TTL = 24 * 3600.0  # one test session; the key pair exists only in this process
_HARNESS = (f"{os.sep}_pytest{os.sep}", f"{os.sep}pluggy{os.sep}")
_HIDDEN_FRAMES = (f"{os.sep}sqlalchemy{os.sep}", os.path.join("dbsession", "guard.py"),
                  os.path.join("dbsession", "pytest_plugin.py"), f"{os.sep}asyncio{os.sep}")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dbsession", "database access isolation (dbsession)")
    group.addoption("--db-isolation", action="store_true", default=False, dest="db_isolation",
                    help="Run the code under test with DBSession in isolation mode against a DB-API "
                         "server started for the test database; direct database access fails the test.")
    group.addoption("--db-url", default=None, dest="db_url",
                    help="The test database (default: ini db_url, else a SQLite file in a temp dir).")
    parser.addini("db_isolation", type="bool", default=False,
                  help="Same as --db-isolation.")
    parser.addini("db_url", default="", help="The test database, as a SQLAlchemy URL.")
    parser.addini("db_create_tables", type="bool", default=True,
                  help="Create db_metadata's tables when first needed and drop them at the end.")
    parser.addini("db_async_driver", default="",
                  help="The async driver async_dbsession_bind uses in direct mode (default: the async "
                       "twin of db_url's driver: aiosqlite, psycopg, asyncpg, aiomysql).")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "trusted: the test may touch the database directly even in isolation mode (dbsession)")
    if isolation_requested(config):
        if importlib.util.find_spec("dbapi_server") is None:
            raise pytest.UsageError(
                "--db-isolation runs your tests against a DB-API server it starts for the test database, "
                "and the DB-API is not installed here: pip install 'dbsession[server]' (the "
                "dbsession-server distribution) in the test environment. The client alone "
                "(pip install dbsession) is what an untrusted worker runs.")
        config.pluginmanager.register(IsolationMode(), PLUGIN_NAME)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before a test's fixtures: make the plugin's session fixtures follow its ``db_metadata``.

    pytest caches a session fixture once, whichever ``db_metadata`` override the test that first
    asked for it saw. When the next test sees another override (or another ``db_methods``), the
    plugin finishes ``_dbsession_database`` - and with it ``trusted_engine``, ``dbsession_bind``
    and every fixture built on them, as pytest does when a parametrized fixture changes its
    parameter - so they are set up again for this test's metadata. The databases and servers
    themselves live in :class:`TestDatabases` / :class:`IsolationMode` until the session ends.
    """
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of the item's fixtures
    if info is None or "_dbsession_database" not in info.names_closure:
        return
    definitions = info.name2fixturedefs
    database_def = definitions["_dbsession_database"][-1]
    key = tuple(definitions[name][-1] if definitions.get(name) else None for name in ("db_metadata", "db_methods"))
    active = item.config.stash.setdefault(_ACTIVE, {})
    if active.get(database_def, key) != key and database_def.cached_result is not None:
        database_def.finish(item._request)  # type: ignore[attr-defined]
    active[database_def] = key


_ACTIVE = pytest.StashKey[dict[Any, tuple[Any, ...]]]()


def isolation_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("db_isolation") or config.getini("db_isolation"))


# -- the test databases (one per distinct db_metadata) ----------------------------------------
@pytest.fixture(scope="session")
def db_metadata() -> sa.MetaData:
    """Your application's ``MetaData``: override this fixture in your ``conftest.py``."""
    pytest.fail("The dbsession pytest plugin needs your tables: define a session-scoped fixture "
                "`db_metadata` in conftest.py that returns your MetaData (e.g. Base.metadata).",
                pytrace=False)


@pytest.fixture(scope="session")
def db_methods() -> list[str]:
    """Modules whose named methods the DB-API serves in isolation mode (override to add some)."""
    return []


@pytest.fixture(scope="session")
def _dbsession_databases(request: pytest.FixtureRequest) -> Iterator[TestDatabases]:
    """Every test database (and in isolation mode every DB-API) of the session; closed at its end."""
    databases = TestDatabases(request.config)
    yield databases
    try:
        mode = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
        if isinstance(mode, IsolationMode):
            mode.stop_serving()
    finally:
        databases.close()


@pytest.fixture(scope="session")
def _dbsession_database(_dbsession_databases: TestDatabases, db_metadata: sa.MetaData) -> TestDatabase:
    """The test database of this test's ``db_metadata`` (see ``pytest_runtest_setup``)."""
    return _dbsession_databases.for_metadata(db_metadata)


@pytest.fixture(scope="session")
def trusted_engine(_dbsession_database: TestDatabase) -> sa.Engine:
    """A direct engine on the test database for seeding and inspecting; never reported."""
    return _dbsession_database.engine


@pytest.fixture(scope="session")
def dbsession_bind(request: pytest.FixtureRequest, _dbsession_databases: TestDatabases,
                   _dbsession_database: TestDatabase, db_methods: list[str]) -> sa.Engine:
    """The bind for the code under test: direct engine, or the DB-API's isolated engine."""
    mode = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
    if isinstance(mode, IsolationMode):
        return mode.bind_for(_dbsession_database, db_methods)
    engine = _dbsession_databases.direct_binds.get(id(_dbsession_database))
    if engine is None:
        import sqlalchemy as sa

        engine = _dbsession_databases.direct_binds[id(_dbsession_database)] = sa.create_engine(
            _dbsession_database.url)
    return engine


@pytest.fixture(scope="session")
def async_dbsession_bind(request: pytest.FixtureRequest, _dbsession_databases: TestDatabases,
                         _dbsession_database: TestDatabase, db_methods: list[str]) -> AsyncEngine:
    """``dbsession_bind`` for async code: a direct async engine, or the DB-API's isolated async engine.

    The direct one uses ``NullPool`` (a driver's async connection belongs to the event loop that
    opened it, and tests usually run one loop each); the isolated one serves every loop.
    """
    mode = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
    if isinstance(mode, IsolationMode):
        return mode.async_bind_for(_dbsession_database, db_methods)
    engine = _dbsession_databases.direct_async_binds.get(id(_dbsession_database))
    if engine is None:
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import NullPool

        from ._plugin_databases import async_url

        url = async_url(_dbsession_database.url, request.config.getini("db_async_driver") or None)
        engine = _dbsession_databases.direct_async_binds[id(_dbsession_database)] = create_async_engine(
            url, poolclass=NullPool)
    return engine


# -- isolation mode -----------------------------------------------------------------------------
def _awaiting_stack() -> list[traceback.FrameSummary]:
    """The frames that awaited SQLAlchemy's greenlet, when a refusal happens inside one.

    Async engines run their sync code in a greenlet (``greenlet_spawn``) whose own stack starts
    at SQLAlchemy; the application's coroutines - where the direct access was written - are on
    the stack of the greenlet that switched to it, suspended.
    """
    try:
        greenlet = importlib.import_module("greenlet")  # untyped; installed with the async extra
    except ImportError:  # no greenlet, no async engine
        return []
    frames: list[traceback.FrameSummary] = []
    current = greenlet.getcurrent()
    while getattr(current, "__sqlalchemy_greenlet_provider__", False) and current.parent is not None:
        current = current.parent
        if current.gr_frame is not None:
            frames = traceback.extract_stack(current.gr_frame) + frames
    return frames


@dataclass
class Violation:
    error: DirectDatabaseAccessError
    stack: list[traceback.FrameSummary]
    thread: str

    def describe(self, number: int) -> str:
        harness = [i for i, f in enumerate(self.stack) if any(p in f.filename for p in _HARNESS)]
        stack = self.stack[harness[-1] + 1:] if harness else self.stack  # from the test's own frame
        frames = [f for f in stack if not (f.filename.startswith("<sqlalchemy")
                                           or any(part in f.filename for part in _HIDDEN_FRAMES))]
        hidden = len(stack) - len(frames)
        where = "".join(traceback.format_list(frames)).rstrip()
        return (f"[{number}] {type(self.error).__name__}: {self.error}\n"
                f"    in thread {self.thread!r}, at (most recent call last; {hidden} library frames hidden):\n"
                f"{where}")


@dataclass
class _Serving:
    """One DB-API in this process: the database it serves, its address, a token for it."""

    database: TestDatabase
    url: str
    token: str
    engine: sa.Engine  # the isolated engine on it (dbsession_bind)
    stop: Callable[[], None]


class IsolationMode:
    """The plugin object registered for ``--db-isolation``: servers, guard observer, reports."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.server_starts = 0
        self.phases_with_access = 0
        self.servers: dict[tuple[int, tuple[str, ...]], _Serving] = {}  # by (database, methods)
        self._by_bind: dict[int, _Serving] = {}
        self._stop_observing: Callable[[], None] | None = None
        self._lock = threading.Lock()

    # -- the servers -------------------------------------------------------------------------
    def bind_for(self, database: TestDatabase, methods: list[str]) -> sa.Engine:
        """The isolated engine on the DB-API serving *database* (and *methods*), started on first use."""
        key = (id(database), tuple(methods))
        serving = self.servers.get(key)
        if serving is None:
            import dbsession

            url, token, stop = self._start(database, methods)
            self.configure_process(url, token)  # the engine DBSession() without a bind uses, too
            serving = _Serving(database, url, token, dbsession.isolated_engine(dbsession.get_settings()), stop)
            self.servers[key] = self._by_bind[id(serving.engine)] = serving
        return serving.engine

    def async_bind_for(self, database: TestDatabase, methods: list[str]) -> AsyncEngine:
        """The isolated async engine on the same DB-API (what ``AsyncDBSession()`` uses there)."""
        import dbsession

        self.bind_for(database, methods)
        serving = self.servers[(id(database), tuple(methods))]
        self.configure_process(serving.url, serving.token)
        return dbsession.isolated_async_engine(dbsession.get_settings())

    def _start(self, database: TestDatabase, methods: list[str]) -> tuple[str, str, Callable[[], None]]:
        """Serve *database* over a DB-API in a thread; the process is configured per test."""
        import sqlalchemy as sa

        from dbapi_server import JWTAuthenticator, create_app, mint_token
        from dbapi_server.keys import generate_keypair
        from dbapi_server.serving import start_background
        from dbsession import guard
        from dbsession.session import release_api_host

        with guard.trusted():  # the guard is on once a first DB-API serves; stays exempt after
            server_engine = guard.exempt(sa.create_engine(database.url))
        private, public = generate_keypair()
        try:
            app = create_app(engine=server_engine, metadata=database.metadata,
                             authenticator=JWTAuthenticator(public, algorithms=["EdDSA"],
                                                            max_lifetime=TOKEN_TTL),
                             methods=list(methods),
                             # one in-process DB-API per test database: outcomes need not outlive
                             # it, and the tests' databases get no table of the server's
                             commit_outcomes="memory")
        except BaseException:
            server_engine.dispose()
            raise
        background = start_background(app, threads=4)
        self.server_starts += 1
        if self._stop_observing is None:
            self._stop_observing = guard.observe(self._record)
        token = mint_token(private, subject="pytest", ttl=TOKEN_TTL)

        def stop() -> None:
            release_api_host(background.url)
            background.stop()
            app.extensions["dbapi_server"].close()  # open transactions, the reaper, the engine

        return background.url, token, stop

    def stop_serving(self) -> None:
        """At the session's end: every server stopped, the process no longer isolated."""
        import dbsession
        from dbsession import guard

        servers, self.servers, self._by_bind = list(self.servers.values()), {}, {}
        try:
            if self._stop_observing is not None:
                self._stop_observing()
                self._stop_observing = None
            guard.uninstall()
            dbsession.reset_configuration()
        finally:
            errors: list[BaseException] = []
            for serving in servers:
                try:
                    serving.stop()
                except BaseException as exc:  # stop the others all the same
                    errors.append(exc)
            if errors:
                raise errors[0]

    @staticmethod
    def configure_process(url: str, token: str) -> None:
        """The process setting is isolation on the DB-API at *url*, as in a worker; the guard is on."""
        import dbsession
        from dbsession import guard

        dbsession.configure(database_access_isolation=True, database_api_host=url, token=token)
        guard.install()

    @pytest.fixture(autouse=True)
    def _dbsession_isolated(self, dbsession_bind: sa.Engine, db_metadata: sa.MetaData) -> None:
        """Every test runs isolated (even one that asks for no fixture), on its metadata's server."""
        serving = self._by_bind.get(id(dbsession_bind))
        if serving is None or serving.database.metadata is not db_metadata:
            pytest.fail("dbsession_bind is not the DB-API of this test's db_metadata (is "
                        "dbsession_bind or _dbsession_database overridden?).", pytrace=False)
        self.configure_process(serving.url, serving.token)  # per test: a test before may have reset it, or used another

    # -- trusted tests ------------------------------------------------------------------------
    @staticmethod
    def _trusted_if_marked(item: pytest.Item) -> Any:
        from dbsession import guard

        return guard.trusted() if item.get_closest_marker("trusted") else nullcontext()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Iterator[None]:
        with self._trusted_if_marked(item):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        with self._trusted_if_marked(item):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Iterator[None]:
        with self._trusted_if_marked(item):
            return (yield)

    # -- reporting ----------------------------------------------------------------------------
    def _record(self, error: DirectDatabaseAccessError) -> None:
        stack = _awaiting_stack() + traceback.extract_stack()[:-1]
        with self._lock:
            self.violations.append(Violation(error, stack, threading.current_thread().name))

    def _drain(self) -> list[Violation]:
        with self._lock:
            found, self.violations = self.violations, []
        return found

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self) -> None:
        self._drain()  # whatever happened between tests belongs to no test

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item,
                                  call: pytest.CallInfo[None]) -> Iterator[None]:
        report: Any = yield
        found = self._drain()
        if found:
            text = (f"{len(found)} direct database access(es) in isolation mode during {call.when} "
                    f"(use DBSession / dbsession_bind, or mark the test @pytest.mark.trusted):\n\n"
                    + "\n\n".join(v.describe(n) for n, v in enumerate(found, 1)))
            report.sections.append((f"{SECTION} ({call.when})", text))
            if report.passed:
                report.outcome = "failed"
                report.longrepr = text
            self.phases_with_access += 1
        return report  # type: ignore[no-any-return]

    def pytest_report_header(self) -> str:
        return "dbsession: isolation mode (--db-isolation): direct database access fails the test"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_line(
            f"dbsession isolation mode: {self.server_starts} DB-API server(s) started, "
            f"{self.phases_with_access} test phase(s) with direct database access")

