"""pytest plugin: run a project's tests with ``DBSession`` in isolation mode and catch direct access.

Registered as the ``dbsession`` ``pytest11`` entry point. Without ``--db-isolation`` it only adds
its options, the ``trusted`` marker and a few session fixtures that do nothing until a test asks
for them. With ``--db-isolation`` (or ini ``db_isolation = true``) it

* starts one DB-API server for the test database in a background thread (once per session),
  with a freshly generated Ed25519 key and a real token;
* configures the process as an isolated worker would be (``dbsession.configure(...)``), so
  ``DBSession()`` without a bind talks to that server, and installs :mod:`dbsession.guard`;
* reports every direct database access by code under test - ``create_engine()``, ``connect()``,
  executing on a direct engine, a plain ``Session`` bound to one - as a failure of the test, with
  the stack where it happened, even when the code swallowed the exception.

Fixtures (all session-scoped): ``db_metadata`` (override it: your ``MetaData``), ``db_methods``
(module names of named methods the server serves), ``trusted_engine`` (a direct engine for seeding
and inspecting; exempt from the guard), ``dbsession_bind`` (the bind the code under test should
use: a direct engine, or in isolation mode the DB-API's isolated engine). Tests marked
``@pytest.mark.trusted`` may touch the database directly. See ``docs/testing-in-isolation.md``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import sqlalchemy as sa

    from .exceptions import DirectDatabaseAccessError

__all__ = ["IsolationMode", "TestDatabase"]

PLUGIN_NAME = "dbsession-isolation"
SECTION = "dbsession: direct database access"
TOKEN_TTL = 24 * 3600.0  # one test session; the key pair exists only in this process
_HARNESS = (f"{os.sep}_pytest{os.sep}", f"{os.sep}pluggy{os.sep}")
_HIDDEN_FRAMES = (f"{os.sep}sqlalchemy{os.sep}", os.path.join("dbsession", "guard.py"),
                  os.path.join("dbsession", "pytest_plugin.py"))


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
                  help="Create db_metadata's tables at session start and drop them at the end.")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "trusted: the test may touch the database directly even in isolation mode (dbsession)")
    if isolation_requested(config):
        config.pluginmanager.register(IsolationMode(), PLUGIN_NAME)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One pytest session serves one ``db_metadata``: refuse a run that mixes several, up front.

    The test database (and in isolation mode the DB-API) is made once, for the first override
    asked for; tests under another override would silently run against the wrong tables.
    """
    overrides: dict[Any, list[str]] = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)  # pytest's own record of the item's fixtures
        if info is None or "_dbsession_database" not in info.names_closure:
            continue
        definitions = info.name2fixturedefs.get("db_metadata") or ()
        if definitions:
            overrides.setdefault(definitions[-1], []).append(item.nodeid)
    if len(overrides) > 1:
        where = "; ".join(sorted(f"{_defined_where(d)} (e.g. {ids[0]})" for d, ids in overrides.items()))
        raise pytest.UsageError(
            f"These tests use different db_metadata overrides: {where}. One pytest session serves "
            "one MetaData (one test database, one DB-API): run each directory in its own pytest run.")


def _defined_where(definition: Any) -> str:
    if definition.baseid:
        return str(definition.baseid)
    return "the plugin's default" if definition.func.__module__ == __name__ else "the root conftest.py"


def isolation_requested(config: pytest.Config) -> bool:
    return bool(config.getoption("db_isolation") or config.getini("db_isolation"))


# -- the test database --------------------------------------------------------------------------
@dataclass
class TestDatabase:
    """The database the tests run against, with a trusted engine; tables created if asked."""

    __test__ = False  # not a test class, whatever its name says

    url: sa.URL
    engine: sa.Engine
    metadata: sa.MetaData
    created_tables: bool
    temp_dir: str | None = None

    @classmethod
    def open(cls, config: pytest.Config, metadata: sa.MetaData) -> TestDatabase:
        import sqlalchemy as sa

        from . import guard

        raw = config.getoption("db_url") or config.getini("db_url")
        temp_dir = None
        if not raw:
            temp_dir = tempfile.mkdtemp(prefix="dbsession-pytest-")
            raw = f"sqlite:///{Path(temp_dir) / 'test.sqlite'}"
        url = sa.make_url(raw)
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            pytest.fail(f"db_url {raw!r} is an in-memory SQLite database, which every connection "
                        "sees empty; name a file (sqlite:///path/test.sqlite).", pytrace=False)
        engine = guard.exempt(sa.create_engine(url))  # exempt: the guard may be installed later
        create = bool(config.getini("db_create_tables"))
        if create:
            metadata.create_all(engine)
        return cls(url, engine, metadata, create, temp_dir)

    def close(self) -> None:
        try:
            if self.created_tables:
                self.metadata.drop_all(self.engine)
        finally:
            self.engine.dispose()
            if self.temp_dir is not None:
                shutil.rmtree(self.temp_dir, ignore_errors=True)


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
def _dbsession_database(request: pytest.FixtureRequest, db_metadata: sa.MetaData) -> Iterator[TestDatabase]:
    database = TestDatabase.open(request.config, db_metadata)
    yield database
    database.close()


@pytest.fixture(scope="session")
def trusted_engine(_dbsession_database: TestDatabase) -> sa.Engine:
    """A direct engine on the test database for seeding and inspecting; never reported."""
    return _dbsession_database.engine


@pytest.fixture(scope="session")
def dbsession_bind(request: pytest.FixtureRequest, _dbsession_database: TestDatabase,
                   db_methods: list[str]) -> Iterator[sa.Engine]:
    """The bind for the code under test: direct engine, or the DB-API's isolated engine."""
    mode = request.config.pluginmanager.get_plugin(PLUGIN_NAME)
    if isinstance(mode, IsolationMode):
        with mode.serving(_dbsession_database, db_methods) as engine:
            yield engine
        return
    import sqlalchemy as sa

    engine = sa.create_engine(_dbsession_database.url)
    yield engine
    engine.dispose()


# -- isolation mode -----------------------------------------------------------------------------
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
    database: TestDatabase
    url: str
    token: str


class IsolationMode:
    """The plugin object registered for ``--db-isolation``: server, guard observer, reports."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.server_starts = 0
        self.phases_with_access = 0
        self.serving_: _Serving | None = None
        self._lock = threading.Lock()

    # -- the server --------------------------------------------------------------------------
    @contextmanager
    def serving(self, database: TestDatabase, methods: list[str]) -> Iterator[sa.Engine]:
        """Serve *database* over a DB-API in a thread; configure this process to use it."""
        import sqlalchemy as sa

        import dbsession
        from dbapi_server import JWTAuthenticator, create_app, mint_token
        from dbapi_server.keys import generate_keypair
        from dbapi_server.serving import start_background
        from dbsession import guard
        from dbsession.session import release_api_host

        server_engine = guard.exempt(sa.create_engine(database.url))
        private, public = generate_keypair()
        try:
            app = create_app(engine=server_engine, metadata=database.metadata,
                             authenticator=JWTAuthenticator(public, algorithms=["EdDSA"],
                                                            max_lifetime=TOKEN_TTL),
                             methods=list(methods))
        except BaseException:
            server_engine.dispose()
            raise
        background = start_background(app, threads=4)
        self.server_starts += 1
        self.serving_ = _Serving(database, background.url, mint_token(private, subject="pytest", ttl=TOKEN_TTL))
        stop_observing = guard.observe(self._record)
        try:
            self.configure_process()
            yield dbsession.isolated_engine(dbsession.get_settings())
        finally:
            stop_observing()
            self.serving_ = None
            guard.uninstall()
            dbsession.reset_configuration()
            release_api_host(background.url)
            background.stop()
            app.extensions["dbapi_server"].close()  # open transactions, the reaper, the engine

    def configure_process(self) -> None:
        """The process setting is isolation, as in a worker; the guard is on."""
        import dbsession
        from dbsession import guard

        assert self.serving_ is not None
        dbsession.configure(database_access_isolation=True, database_api_host=self.serving_.url,
                            token=self.serving_.token)
        guard.install()

    @pytest.fixture(autouse=True)
    def _dbsession_isolated(self, dbsession_bind: sa.Engine, db_metadata: sa.MetaData) -> None:
        """Every test runs isolated (even one that asks for no fixture), against one server."""
        assert self.serving_ is not None
        if db_metadata is not self.serving_.database.metadata:
            pytest.fail("db_metadata differs from the one this session's DB-API serves: one pytest "
                        "session serves one MetaData; run test directories with different "
                        "db_metadata in separate pytest runs.", pytrace=False)
        self.configure_process()  # again: a test before may have reset it

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
        stack = traceback.extract_stack()[:-1]
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

