"""The pytest plugin, run on small sample projects with pytest's own ``pytester``.

Each test writes a project (tables, application code, its tests), runs pytest on it in this
process, and checks the outcome and the report text in both modes.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

# imported here, not first inside a run: pytester's in-process runs drop the modules they imported,
# and native ones (cryptography's bindings) cannot be imported twice
import dbapi_server.keys
import dbapi_server.serving  # noqa: F401
import dbsession
from dbsession import guard

APP = '''
import os
import sqlalchemy as sa
from sqlalchemy.orm import Session
from dbsession import DBSession

metadata = sa.MetaData()
things = sa.Table("things", metadata, sa.Column("id", sa.Integer, primary_key=True),
                  sa.Column("name", sa.String(40)))

# created at import, long before any test: the guard must catch it when it is used
EARLY = sa.create_engine("sqlite:///" + os.path.join(os.path.dirname(__file__), "direct.sqlite"))
# ...and one whose pool already holds a connection: only executing on it can be caught
WARM = sa.create_engine("sqlite:///" + os.path.join(os.path.dirname(__file__), "warm.sqlite"))
with WARM.connect() as conn:
    conn.execute(sa.select(1))


def add(bind, name):
    with DBSession(bind=bind) as session, session.begin():
        session.execute(things.insert().values(name=name))


def names(bind):
    with DBSession(bind=bind) as session:
        return sorted(session.scalars(sa.select(things.c.name)))


def make_engine():
    return sa.create_engine("sqlite://")


def connect_early():
    with EARLY.connect() as conn:
        conn.execute(sa.select(1))


def execute_warm():
    with WARM.connect() as conn:
        return conn.scalar(sa.select(2))


def plain_session():
    with Session(EARLY) as session:
        return session.scalar(sa.select(1))


def swallowing(action):
    try:
        action()
    except Exception:
        pass  # the code under test hides the failure; the plugin must still report it
'''

CONFTEST = '''
import pytest
import app


@pytest.fixture(scope="session")
def db_metadata():
    return app.metadata
'''

GOOD_TESTS = '''
import sqlalchemy as sa
import app


def test_add_and_read(dbsession_bind, trusted_engine):
    app.add(dbsession_bind, "a")
    app.add(dbsession_bind, "b")
    assert app.names(dbsession_bind) == ["a", "b"]
    with trusted_engine.connect() as conn:  # inspecting through the trusted engine is fine
        assert conn.scalar(sa.select(sa.func.count()).select_from(app.things)) == 2
'''


# in-process runs see this package already imported: pytest cannot rewrite its asserts (and says so)
INI = "[pytest]\naddopts = -p no:cacheprovider -W ignore::pytest.PytestAssertRewriteWarning\n"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(app=APP)
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    return pytester


def assert_plugin_left_nothing(before: set[threading.Thread]) -> None:
    """No thread the run started is still alive, no guard installed, no isolation setting left."""
    deadline = time.monotonic() + 10
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(threading.enumerate()) - before
    assert not guard.is_installed()
    assert not dbsession.get_settings().database_access_isolation


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_inprocess(*args)


MODES = pytest.mark.parametrize("mode", [[], ["--db-isolation"]], ids=["direct", "isolation"])


@MODES
def test_good_code_passes_in_both_modes(project: pytest.Pytester, mode: list[str]) -> None:
    project.makepyfile(test_good=GOOD_TESTS)
    run(project, *mode).assert_outcomes(passed=1)


BAD = {  # what the code under test does -> (its line in app.py, what the guard names)
    "make_engine": ('return sa.create_engine("sqlite://")', "create_engine()"),
    "connect_early": ("with EARLY.connect() as conn:", "a new connection"),
    "plain_session": ("return session.scalar(sa.select(1))", "a new connection"),
    "execute_warm": ("return conn.scalar(sa.select(2))", "a statement"),
}


@pytest.mark.parametrize("action", sorted(BAD))
def test_swallowed_direct_access_fails_the_test_with_its_stack(project: pytest.Pytester, action: str) -> None:
    project.makepyfile(test_bad=f'''
import app

def test_code_under_test(dbsession_bind):
    app.swallowing(app.{action})
''')
    result = run(project, "--db-isolation")
    result.assert_outcomes(failed=1)
    line, what = BAD[action]
    result.stdout.fnmatch_lines([
        "*1 direct database access(es) in isolation mode during call*",
        f"*DirectDatabaseAccessError: Direct database access through {what}*",
        "*test_bad.py*, line 4, in test_code_under_test",
        "*app.swallowing(app.*",
        f"*app.py*, in {action}",
        f"*{line}*",
        "*1 DB-API server(s) started, 1 test phase(s) with direct database access*",
    ])
    run(project).assert_outcomes(passed=1)  # direct mode: the same code is simply direct


def test_unswallowed_direct_access_fails_and_is_described(project: pytest.Pytester) -> None:
    project.makepyfile(test_bad='''
import app

def test_code_under_test(dbsession_bind):
    app.connect_early()
''')
    result = run(project, "--db-isolation")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*dbsession: direct database access (call)*", "*in connect_early*"])


def test_direct_access_in_a_fixture_is_an_error_of_the_test(project: pytest.Pytester) -> None:
    project.makepyfile(test_bad='''
import pytest
import app

@pytest.fixture
def careless():
    app.swallowing(app.make_engine)

def test_uses_it(careless):
    pass
''')
    result = run(project, "--db-isolation")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*during setup*", "*in careless*", "*in make_engine*"])


def test_trusted_marker_and_trusted_fixtures_are_not_reported(project: pytest.Pytester) -> None:
    project.makepyfile(test_trusted='''
import pytest
import sqlalchemy as sa
import app
from dbsession import guard


@pytest.fixture
def seeded(trusted_engine):
    with trusted_engine.begin() as conn:
        conn.execute(app.things.delete())
        conn.execute(app.things.insert().values(name="seeded"))


@pytest.fixture
def own_engine():
    with guard.trusted():  # a fixture says explicitly that it is trusted
        engine = sa.create_engine("sqlite://")
    yield engine
    engine.dispose()


def test_seeded_through_the_trusted_engine(seeded, dbsession_bind):
    assert app.names(dbsession_bind) == ["seeded"]


def test_fixture_made_its_own_engine(own_engine):
    with own_engine.connect() as conn:
        assert conn.scalar(sa.select(1)) == 1


@pytest.fixture
def direct_fixture():
    app.connect_early()  # trusted only because the test using it is marked


@pytest.mark.trusted
def test_marked_trusted_may_go_direct(direct_fixture):
    app.connect_early()
    assert app.plain_session() == 1
    app.make_engine().dispose()


def test_not_marked_is_still_caught():
    app.swallowing(app.plain_session)
''')
    result = run(project, "--db-isolation")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_trusted.py::test_not_marked_is_still_caught*"])


def test_one_server_for_the_session_and_everything_cleaned_up(project: pytest.Pytester) -> None:
    record = project.path / "seen.txt"
    for module in ("test_one", "test_two"):
        project.makepyfile(**{module: f'''
import dbsession
import app

def test_record(dbsession_bind, trusted_engine):
    app.add(dbsession_bind, "{module}")
    with open({str(record)!r}, "a") as out:
        out.write(dbsession.get_settings().database_api_host + " " + trusted_engine.url.database + "\\n")
'''})
    before = set(threading.enumerate())
    result = run(project, "--db-isolation")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*1 DB-API server(s) started*"])
    seen = {tuple(line.split(" ")) for line in record.read_text().splitlines()}
    assert len(seen) == 1  # both modules: the same server, the same database
    ((api_host, database),) = seen

    assert not Path(database).exists() and not Path(database).parent.exists()
    port = int(api_host.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert_plugin_left_nothing(before)
    assert not any(key[0] == api_host for key in dbsession.session._engines)


def test_tables_of_an_existing_database_are_kept_when_creation_is_off(
        project: pytest.Pytester) -> None:
    path = project.path / "migrated.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE things (id INTEGER PRIMARY KEY, name VARCHAR(40))")
            conn.exec_driver_sql("INSERT INTO things (name) VALUES ('migrated')")
        project.makeini(INI + "db_create_tables = false\n")
        project.makepyfile(test_existing='''
import app

def test_sees_existing_rows(dbsession_bind):
    assert app.names(dbsession_bind) == ["migrated"]
''')
        for mode in ([], ["--db-isolation"]):
            run(project, "--db-url", f"sqlite:///{path}", *mode).assert_outcomes(passed=1)
        assert sa.inspect(engine).get_table_names() == ["things"]  # not dropped: not ours
    finally:
        engine.dispose()


def test_ini_option_switches_isolation_on(project: pytest.Pytester) -> None:
    project.makeini(INI + "db_isolation = true\n")
    project.makepyfile(test_ini='''
import dbsession

def test_isolated(dbsession_bind):
    assert dbsession.get_settings().database_access_isolation
    assert dbsession_bind.dialect.is_dbsession
''')
    result = run(project)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dbsession: isolation mode*"])


def test_direct_mode_leaves_tests_alone(project: pytest.Pytester) -> None:
    project.makepyfile(test_plain='''
import dbsession
from dbsession import guard

def test_nothing_configured():
    assert not dbsession.get_settings().database_access_isolation
    assert not guard.is_installed()
''')
    result = run(project, "--setup-show")
    result.assert_outcomes(passed=1)
    assert "_dbsession" not in result.stdout.str() and "isolation mode" not in result.stdout.str()
    isolated = run(project, "--setup-show", "--db-isolation")
    isolated.assert_outcomes(failed=1)  # now the process is isolated, for every test
    isolated.stdout.fnmatch_lines(["*SETUP    F _dbsession_isolated*"])


# Two packages with a db_metadata of their own beside the root conftest's: the same table name
# "things" with other columns in each, so a test that reached another metadata's database (or
# server) would fail on the columns, and the rows each test finds prove nothing leaked across.
OWN_METADATA = """
import pytest, sqlalchemy as sa

metadata = sa.MetaData()
things = sa.Table("things", metadata, sa.Column("id", sa.Integer, primary_key=True),
                  sa.Column("{column}", sa.String(40)))


@pytest.fixture(scope="session")
def db_metadata():
    return metadata
"""

RECORDING_TEST = """
import dbsession
import sqlalchemy as sa
from dbsession import DBSession
from {package}conftest import things


def test_{name}(dbsession_bind, trusted_engine):
    with DBSession(bind=dbsession_bind) as session, session.begin():
        session.execute(things.insert().values({column}="{name}"))
    if dbsession.get_settings().database_access_isolation:
        with DBSession() as session:  # the process setting points at this metadata's server
            assert session.bind.url == dbsession_bind.url
            assert sorted(session.scalars(sa.select(things.c.{column}))) == {expected}
    with trusted_engine.connect() as conn:
        assert sorted(conn.scalars(sa.select(things.c.{column}))) == {expected}
    with open({record!r}, "a") as out:
        out.write(" ".join(["{name}", str(dbsession_bind.url), str(trusted_engine.url)]) + "\\n")
"""


ORDER = ("test_1_root.py", "alpha", "beta", "test_9_root.py")  # switching away and back


def two_metadata_project(project: pytest.Pytester) -> Path:
    """Root tests (app.metadata: things.name), alpha (things.a), beta (things.b), then root again."""
    record = project.path / "seen.txt"
    (project.path / "conftest.py").write_text(CONFTEST + "\nthings = app.things\n")
    layout = [("", "name", "test_1_root", ["test_1_root"]),
              ("alpha", "a", "test_alpha", ["test_alpha"]),
              ("beta", "b", "test_beta", ["test_beta"]),
              ("", "name", "test_9_root", ["test_1_root", "test_9_root"])]  # the root's rows persist
    for package, column, name, expected in layout:
        if package and not (project.path / package).exists():
            project.mkpydir(package)
            (project.path / package / "conftest.py").write_text(OWN_METADATA.format(column=column))
        (project.path / package / f"{name}.py").write_text(RECORDING_TEST.format(
            package=f"{package}." if package else "", name=name, column=column, expected=expected,
            record=str(record)))
    return record


@MODES
def test_several_db_metadata_overrides_each_get_their_own_database(project: pytest.Pytester,
                                                                   mode: list[str]) -> None:
    record = two_metadata_project(project)
    before = set(threading.enumerate())
    result = run(project, *mode, *ORDER)
    result.assert_outcomes(passed=4)
    seen = {name: (bind, trusted) for name, bind, trusted in
            (line.split(" ") for line in record.read_text().splitlines())}
    assert list(seen) == ["test_1_root", "test_alpha", "test_beta", "test_9_root"]
    assert seen["test_9_root"] == seen["test_1_root"]  # back to the first metadata: the same ones
    databases = {trusted for _, trusted in seen.values()}
    binds = {bind for bind, _ in seen.values()}
    assert len(databases) == 3 and len(binds) == 3
    if mode:
        assert all(bind.startswith("dbsession://127.0.0.1:") for bind in binds)
        result.stdout.fnmatch_lines(["*3 DB-API server(s) started, 0 test phase(s) with direct database access*"])
        for bind in binds:  # every server stopped
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", sa.make_url(bind).port), timeout=5).close()
    else:
        assert binds == databases  # direct mode: the bind is a direct engine on the same database
    for url in databases:  # every SQLite file, and the temporary directory, removed
        path = Path(sa.make_url(url).database or "")
        assert not path.exists() and not path.parent.exists()
    assert_plugin_left_nothing(before)


@pytest.mark.postgresql
@MODES
def test_several_db_metadata_overrides_on_postgresql(project: pytest.Pytester, pg_url: sa.URL,
                                                     mode: list[str]) -> None:
    """The further databases are created beside --db-url's and dropped at the end."""
    record = two_metadata_project(project)
    admin = guard.exempt(sa.create_engine(pg_url))
    try:
        def databases() -> set[str]:
            # only the ones named after this test's database: other test runs on the same
            # cluster create and drop their own databases meanwhile
            with admin.connect() as conn:
                names = conn.scalars(sa.text("SELECT datname FROM pg_database"))
                return {name for name in names if name.startswith(f"{pg_url.database}_")}

        before = databases()
        run(project, *mode, *ORDER, "--db-url",
            pg_url.render_as_string(hide_password=False)).assert_outcomes(passed=4)
        used = {sa.make_url(line.split(" ")[2]).database for line in record.read_text().splitlines()}
        assert len(used) == 3 and pg_url.database in used
        assert all(name.startswith(f"{pg_url.database}_") for name in used - {pg_url.database})
        assert databases() == before  # the two made for alpha and beta are gone
        assert sa.inspect(admin).get_table_names() == []  # the root's tables dropped too
    finally:
        admin.dispose()


def test_db_methods_overrides_get_servers_of_their_own(project: pytest.Pytester) -> None:
    """One metadata, two db_methods overrides: the second gets a server that imported its modules."""
    project.makepyfile(methods_one="from dbsession import server_method\n\n"
                                   "@server_method\ndef one(session) -> int:\n    return 1\n")
    project.mkpydir("served")
    (project.path / "served" / "conftest.py").write_text(
        "import pytest\n\n@pytest.fixture(scope='session')\ndef db_methods():\n    return ['methods_one']\n")
    (project.path / "served" / "test_served.py").write_text(
        "import sys\nfrom dbsession import DBSession\n\n"
        "def test_served(dbsession_bind):\n"
        "    assert 'methods_one' in sys.modules  # imported by this override's server\n"
        "    import methods_one\n"
        "    with DBSession(bind=dbsession_bind) as session:\n"
        "        assert methods_one.one(session) == 1\n")
    project.makepyfile(test_unserved="import sys\n\n"
                                     "def test_unserved(dbsession_bind):\n"
                                     "    assert 'methods_one' not in sys.modules\n")
    result = run(project, "--db-isolation", "test_unserved.py", "served")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*2 DB-API server(s) started*"])


def test_missing_db_metadata_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(trusted_engine):\n    pass\n")
    pytester.makeini(INI)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a session-scoped fixture `db_metadata` in conftest.py*"])


def test_in_memory_sqlite_is_refused(project: pytest.Pytester) -> None:
    project.makepyfile(test_good=GOOD_TESTS)
    result = run(project, "--db-url", "sqlite://")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*in-memory SQLite database*name a file*"])


@pytest.mark.postgresql
def test_postgresql_database_tables_created_and_dropped(project: pytest.Pytester, pg_url: sa.URL) -> None:
    project.makepyfile(test_good=GOOD_TESTS)
    url = pg_url.render_as_string(hide_password=False)
    run(project, "--db-isolation", "--db-url", url).assert_outcomes(passed=1)
    engine = guard.exempt(sa.create_engine(pg_url))
    try:
        assert sa.inspect(engine).get_table_names() == []  # created for the session, dropped after
    finally:
        engine.dispose()
    run(project, "--db-url", url).assert_outcomes(passed=1)  # and directly, on a fresh schema


def test_db_methods_reach_the_server(project: pytest.Pytester) -> None:
    """The module names go to create_app(methods=...): it imports them (here: fails to)."""
    project.makepyfile(test_m='''
import pytest

@pytest.fixture(scope="session")
def db_methods():
    return ["no_such_methods_module"]

def test_m(dbsession_bind):
    pass
''')
    result = run(project, "--db-isolation")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*No module named*no_such_methods_module*"])
    run(project).assert_outcomes(passed=1)  # direct mode: methods run locally, nothing to serve


def test_isolation_without_the_server_installed_says_what_to_install(pytester: pytest.Pytester) -> None:
    """A client-only environment (``pip install dbsession``): the plugin is there, the DB-API is not."""
    pytester.makeconftest("import sys\nsys.modules['dbapi_server'] = None  # as if not installed\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    direct = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    direct.assert_outcomes(passed=1)  # without --db-isolation the plugin needs no server
    isolated = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--db-isolation")
    assert isolated.ret == pytest.ExitCode.USAGE_ERROR
    message = isolated.stderr.str()
    assert "the DB-API is not installed here: pip install 'dbsession[server]'" in message, message


# -- async code: AsyncDBSession, async_dbsession_bind, direct async engines ----------------------
ASYNC_APP = '''
import os
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool
from dbsession import AsyncDBSession
import app

PATH = os.path.join(os.path.dirname(__file__), "direct_async.sqlite")
# at import: caught when used (NullPool: its connections must not outlive a test's event loop)
EARLY = create_async_engine("sqlite+aiosqlite:///" + PATH, poolclass=NullPool)


async def add(bind, name):
    async with AsyncDBSession(bind) as session, session.begin():
        await session.execute(app.things.insert().values(name=name))


async def names(bind=None):
    async with (AsyncDBSession(bind) if bind is not None else AsyncDBSession()) as session:
        return sorted(await session.scalars(sa.select(app.things.c.name)))


async def make_async_engine():
    engine = create_async_engine("sqlite+aiosqlite:///" + PATH)
    await engine.dispose()


async def connect_early():
    async with EARLY.connect() as conn:
        await conn.execute(sa.select(1))


async def plain_async_session():
    async with AsyncSession(EARLY) as session:
        return await session.scalar(sa.select(1))


async def swallowing(action):
    try:
        await action()
    except Exception:
        pass
'''

ASYNC_BAD = {
    "make_async_engine": ('engine = create_async_engine("sqlite+aiosqlite:///" + PATH)', "create_engine()"),
    "connect_early": ("async with EARLY.connect() as conn:", "a new connection"),
    "plain_async_session": ("return await session.scalar(sa.select(1))", "a new connection"),
}


@MODES
def test_async_code_passes_in_both_modes(project: pytest.Pytester, mode: list[str]) -> None:
    project.makepyfile(app_async=ASYNC_APP, test_async='''
import asyncio
import dbsession
import app_async


def test_add_and_read(async_dbsession_bind, dbsession_bind, trusted_engine):
    asyncio.run(app_async.add(async_dbsession_bind, "a"))
    asyncio.run(app_async.add(async_dbsession_bind, "b"))
    assert asyncio.run(app_async.names(async_dbsession_bind)) == ["a", "b"]
    assert async_dbsession_bind.dialect.is_async
    if dbsession.get_settings().database_access_isolation:
        assert async_dbsession_bind.dialect.is_dbsession
        assert asyncio.run(app_async.names()) == ["a", "b"]  # AsyncDBSession() without a bind
''')
    run(project, *mode).assert_outcomes(passed=1)


@pytest.mark.parametrize("action", sorted(ASYNC_BAD))
def test_swallowed_direct_async_access_fails_the_test_with_its_stack(project: pytest.Pytester,
                                                                     action: str) -> None:
    project.makepyfile(app_async=ASYNC_APP, test_bad=f'''
import asyncio
import app_async

def test_code_under_test(async_dbsession_bind):
    asyncio.run(app_async.swallowing(app_async.{action}))
''')
    result = run(project, "--db-isolation")
    result.assert_outcomes(failed=1)
    line, what = ASYNC_BAD[action]
    result.stdout.fnmatch_lines([
        "*1 direct database access(es) in isolation mode during call*",
        f"*DirectDatabaseAccessError: Direct database access through {what}*",
        "*test_bad.py*, line 5, in test_code_under_test",
        f"*app_async.py*, in {action}",
        f"*{line}*",
    ])
    run(project).assert_outcomes(passed=1)  # direct mode: the same code is simply direct


def test_a_trusted_async_test_may_go_direct(project: pytest.Pytester) -> None:
    project.makepyfile(app_async=ASYNC_APP, test_trusted='''
import asyncio
import pytest
import app_async

@pytest.mark.trusted
def test_marked(async_dbsession_bind):
    assert asyncio.run(app_async.plain_async_session()) == 1  # trust reaches SQLAlchemy's greenlet

def test_not_marked(async_dbsession_bind):
    asyncio.run(app_async.swallowing(app_async.plain_async_session))
''')
    result = run(project, "--db-isolation")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_trusted.py::test_not_marked*"])
