"""``DBSession`` direct and isolated, the guard, and what a client sees when things go wrong."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dbsession
from dbsession import (
    AuthenticationError,
    ConfigurationError,
    DBSession,
    DirectDatabaseAccessError,
    PolicyViolationError,
    guard,
)
from tests.servers import RunningServer, running_dbapi


class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Gadget(Base):
    __tablename__ = "gadgets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40), unique=True)


@pytest.fixture(scope="module")
def server_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    path = tmp_path_factory.mktemp("session") / "session.sqlite"
    engine = guard.exempt(sa.create_engine(f"sqlite:///{path}"))
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([Gadget(name="lamp"), Gadget(name="clock")])
        s.commit()
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def db_path(server_engine: sa.Engine) -> Path:
    """The database file, for tests that open their own (non-exempt) engines on it."""
    return Path(server_engine.url.database or "")


@pytest.fixture(scope="module")
def server(server_engine: sa.Engine) -> Iterator[RunningServer]:
    with running_dbapi(server_engine, Base.metadata) as server:
        yield server


def isolated(server: RunningServer, **kw: object) -> DBSession:
    kw.setdefault("token", server.token)
    return DBSession(database_access_isolation=True, database_api_host=server.url, **kw)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- direct mode ----------------------------------------------------------------------------------
def test_direct_mode_is_a_plain_session(db_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{db_path}")
    with DBSession(bind=engine) as s:
        assert isinstance(s, Session)
        assert s.isolated is False
        assert s.get_bind() is engine
        assert not getattr(s.get_bind().dialect, "is_dbsession", False)
        assert s.scalar(sa.select(sa.func.count()).select_from(Gadget)) >= 2
    assert not guard.is_installed()
    engine.dispose()


def test_direct_mode_ignores_host_settings(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_API_HOST", "http://127.0.0.1:9")
    monkeypatch.setenv("DATABASE_ACCESS_ISOLATION", "false")
    engine = sa.create_engine(f"sqlite:///{db_path}")
    with DBSession(bind=engine) as s:
        assert s.get_bind() is engine and s.scalar(sa.select(Gadget.name).where(Gadget.name == "lamp")) == "lamp"
    engine.dispose()


# -- configuration --------------------------------------------------------------------------------
def test_isolation_without_host_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_API_HOST"):
        DBSession(database_access_isolation=True)


def test_isolation_from_environment_without_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_ACCESS_ISOLATION", "1")
    with pytest.raises(ConfigurationError, match="database_api_host is not set"):
        DBSession()


@pytest.mark.parametrize("how", ["bind", "binds"])
def test_isolated_session_refuses_a_direct_bind(db_path: Path, how: str) -> None:
    engine = sa.create_engine(f"sqlite:///{db_path}")
    kw = {"bind": engine} if how == "bind" else {"binds": {Gadget: engine}}
    with pytest.raises(DirectDatabaseAccessError, match="database_access_isolation"):
        DBSession(database_access_isolation=True, database_api_host="http://127.0.0.1:9", **kw)  # type: ignore[arg-type]
    engine.dispose()


def test_settings_precedence_reaches_the_server(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("DATABASE_ACCESS_ISOLATION", "true")
    monkeypatch.setenv("DATABASE_API_HOST", dead)
    monkeypatch.setenv("DATABASE_API_TOKEN", "env-token-is-garbage")
    dbsession.configure(database_api_host=server.url, token=server.token)  # configure() beats the env
    with DBSession() as s:
        assert s.isolated
        assert s.scalar(sa.select(Gadget.name).where(Gadget.name == "lamp")) == "lamp"
    dbsession.configure(database_api_host=dead)
    with DBSession(database_api_host=server.url) as s:  # arguments beat configure()
        assert s.scalar(sa.select(Gadget.name).where(Gadget.name == "clock")) == "clock"


# -- isolated mode --------------------------------------------------------------------------------
def test_isolated_session_reads_through_the_server(server: RunningServer) -> None:
    with isolated(server) as s:
        assert isinstance(s, Session) and s.isolated
        assert s.get_bind().dialect.is_dbsession
        assert s.get_bind().dialect.name == "sqlite"
        assert sorted(s.scalars(sa.select(Gadget.name)).all())[:2] == ["clock", "lamp"]
        assert s.get(Gadget, 1).name == "lamp"
    assert not guard.is_installed()  # isolated by argument: the process itself is not in isolation mode


def test_isolated_session_writes_through_the_server(server: RunningServer, server_engine: sa.Engine) -> None:
    with isolated(server) as s:
        s.add(Gadget(name="kettle"))
        s.commit()
    with Session(server_engine) as direct:
        assert direct.scalar(sa.select(sa.func.count()).where(Gadget.name == "kettle")) == 1
        direct.execute(sa.delete(Gadget).where(Gadget.name == "kettle"))
        direct.commit()


def test_isolated_url_carries_no_credentials(server: RunningServer) -> None:
    with isolated(server) as s:
        rendered = s.get_bind().url.render_as_string(hide_password=False)
        assert server.token not in rendered and "sqlite" not in rendered
        assert rendered.startswith("dbsession://127.0.0.1:")


def test_wrong_token_is_an_authentication_error(server: RunningServer) -> None:
    with isolated(server, token="not-a-jwt") as s:
        with pytest.raises(AuthenticationError, match="token") as caught:
            s.execute(sa.select(Gadget))
    assert caught.value.status == 401 and caught.value.code == "unauthenticated"


def test_expired_token_is_an_authentication_error(server: RunningServer) -> None:
    with isolated(server, token=server.mint(ttl=-100)) as s:
        with pytest.raises(AuthenticationError, match="expired"):
            s.scalars(sa.select(Gadget)).all()


def test_text_is_a_policy_violation(server: RunningServer) -> None:
    with isolated(server) as s:
        with pytest.raises(PolicyViolationError, match="Raw SQL") as caught:
            s.execute(sa.text("SELECT name FROM gadgets"))
        assert caught.value.status == 403
        assert s.scalar(sa.select(sa.func.count()).select_from(Gadget)) >= 2  # the session goes on


def test_driver_sql_is_refused(server: RunningServer) -> None:
    # it travels as a marked driver_sql document, and the server's default policy refuses it
    with isolated(server) as s:
        with pytest.raises(PolicyViolationError, match="Raw SQL strings"):
            s.connection().exec_driver_sql("SELECT 1")


def test_database_errors_keep_their_sqlalchemy_class(server: RunningServer) -> None:
    with isolated(server) as s:
        s.add(Gadget(name="lamp"))
        with pytest.raises(sa.exc.IntegrityError, match="UNIQUE"):
            s.flush()
        s.rollback()


# -- an unreachable server ------------------------------------------------------------------------
def test_dead_server_is_an_operational_error_naming_the_host() -> None:
    host = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(sa.exc.OperationalError, match=host.removeprefix("http://")):
        with DBSession(database_access_isolation=True, database_api_host=host, token="t") as s:
            s.execute(sa.select(Gadget))


def test_server_going_away_mid_session_is_an_operational_error(server_engine: sa.Engine) -> None:
    with running_dbapi(server_engine, Base.metadata) as brief:
        s = isolated(brief)
        assert s.scalar(sa.select(sa.func.count()).select_from(Gadget)) >= 2
        s.rollback()
    with pytest.raises(sa.exc.OperationalError, match=brief.url.removeprefix("http://")) as caught:
        s.scalar(sa.select(sa.func.count()).select_from(Gadget))
    assert caught.value.connection_invalidated
    s.close()


# -- the guard ------------------------------------------------------------------------------------
def process_isolated(server: RunningServer) -> DBSession:
    """A session of a process whose *setting* is isolation (as a worker's environment would say)."""
    dbsession.configure(database_access_isolation=True, database_api_host=server.url, token=server.token)
    return DBSession()


@pytest.fixture
def guarded(server: RunningServer) -> Iterator[None]:
    """The process is in isolation mode and a session exists: direct access must now fail."""
    with process_isolated(server) as s:
        s.execute(sa.select(Gadget.id))
    assert guard.is_installed()
    yield


def test_guard_refuses_creating_an_engine(guarded: None) -> None:
    with pytest.raises(DirectDatabaseAccessError, match="database_access_isolation") as caught:
        sa.create_engine("sqlite://")
    assert "guard.trusted" in str(caught.value)


def test_guard_refuses_an_engine_connected_before(db_path: Path, server: RunningServer) -> None:
    engine = sa.create_engine(f"sqlite:///{db_path}")
    with engine.connect() as conn:
        conn.execute(sa.select(1))  # a pooled connection exists before isolation starts
    with process_isolated(server) as s:
        s.execute(sa.select(Gadget.id))
    with pytest.raises(DirectDatabaseAccessError, match="database_access_isolation"):
        with engine.connect() as conn:
            conn.execute(sa.select(Gadget.id))
    engine.dispose()


def test_guard_refuses_a_plain_session(db_path: Path, server: RunningServer) -> None:
    engine = sa.create_engine(f"sqlite:///{db_path}")  # created before isolation started
    with process_isolated(server) as s:
        s.execute(sa.select(Gadget.id))
    with Session(engine) as s, pytest.raises(DirectDatabaseAccessError):
        s.scalars(sa.select(Gadget)).all()
    engine.dispose()


def test_guard_spares_trusted_engines_and_isolated_sessions(guarded: None, db_path: Path,
                                                            server: RunningServer) -> None:
    with guard.trusted():
        engine = sa.create_engine(f"sqlite:///{db_path}")
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Gadget)).scalar_one() >= 2
    with isolated(server) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Gadget)) >= 2
    engine.dispose()


def test_trust_exempts_engines_not_an_isolated_sessions_bind(guarded: None, db_path: Path) -> None:
    """Inside trusted() a direct engine works, but an isolated DBSession still refuses it as its bind."""
    with guard.trusted():
        engine = sa.create_engine(f"sqlite:///{db_path}")
        with pytest.raises(DirectDatabaseAccessError, match="leave bind unset"):
            DBSession(bind=engine)
        with Session(engine) as s:  # the documented way for trusted code: a plain Session
            assert s.scalar(sa.select(sa.func.count()).select_from(Gadget)) >= 2
    engine.dispose()


def test_session_isolated_by_argument_leaves_the_process_alone(server: RunningServer) -> None:
    with isolated(server) as s:
        s.execute(sa.select(Gadget.id))
    assert not guard.is_installed()
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        assert conn.execute(sa.select(1)).scalar_one() == 1
    engine.dispose()


def test_guard_is_gone_after_uninstall(guarded: None) -> None:
    guard.uninstall()
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        assert conn.execute(sa.select(1)).scalar_one() == 1
    engine.dispose()
