"""Named methods from the caller's side: the same call, direct and isolated, on SQLite and PostgreSQL.

Every parity test runs the call through a direct ``DBSession`` and through an isolated one (a real
DB-API server on loopback, real tokens) and checks the same outcome: values and their types, ORM
objects persistent in the caller's session, exception classes, database error classes, and the
method's writes following the caller's transaction.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dbapi_server.policy import DefaultPolicy
from dbsession import (
    DBSession,
    MethodNotFoundError,
    MethodRegistry,
    PolicyViolationError,
    RemoteMethodError,
    cli,
    guard,
    register_safe_exception,
    server_method,
)
from tests.servers import RunningServer, running_dbapi


class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Part(Base):
    __tablename__ = "parts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(60), unique=True)
    price: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))
    colour: Mapped[Colour] = mapped_column(sa.Enum(Colour, name="colour"))
    made: Mapped[datetime] = mapped_column(sa.DateTime)
    notes: Mapped[str | None] = mapped_column(sa.Text, deferred=True)


@register_safe_exception
class OutOfStock(Exception):
    """Registered: travels with its class and arguments."""


class Unregistered(Exception):
    """Not registered: an isolated caller sees a RemoteMethodError."""


SERVED = MethodRegistry()
MADE = datetime(2024, 3, 31, 1, 30, 15, 123456)  # naive: SQLite keeps no offset


@server_method(registry=SERVED)
def echo_values(session: Session, price: Decimal, when: datetime, day: date, at: time, span: timedelta,
                key: uuid.UUID, blob: bytes, colour: Colour, ratio: float, maybe: int | None,
                tags: list[str], pair: tuple[str, int], counts: dict[str, int]) -> tuple[
                    Decimal, datetime, date, time, timedelta, uuid.UUID, bytes, Colour, float,
                    int | None, list[str], tuple[str, int], dict[str, int]]:
    return price, when, day, at, span, key, blob, colour, ratio, maybe, tags, pair, counts


@server_method(registry=SERVED)
def parts_named(session: Session, prefix: str) -> list[Part]:
    return list(session.scalars(sa.select(Part).where(Part.name.startswith(prefix)).order_by(Part.name)))


@server_method(registry=SERVED)
def reprice(session: Session, name: str, price: Decimal) -> Part | None:
    part = session.scalars(sa.select(Part).where(Part.name == name)).one_or_none()
    if part is not None:
        part.price = price
    return part


@server_method(registry=SERVED)
def reprice_quietly(session: Session, name: str, price: Decimal) -> None:
    session.execute(sa.update(Part).where(Part.name == name).values(price=price))


@server_method(registry=SERVED)
def add_part(session: Session, name: str) -> Part:
    part = Part(name=name, price=Decimal("1.00"), colour=Colour.RED, made=MADE)
    session.add(part)
    return part


@server_method(registry=SERVED)
def count_parts(session: Session, prefix: str) -> int:
    return int(session.scalar(sa.select(sa.func.count()).where(Part.name.startswith(prefix))) or 0)


@server_method(registry=SERVED)
def add_then_raise(session: Session, name: str, kind: str) -> None:
    session.add(Part(name=name, price=Decimal("2.00"), colour=Colour.BLUE, made=MADE))
    session.flush()
    if kind == "safe":
        raise OutOfStock(name, 3)
    if kind == "builtin":
        raise KeyError(name)
    if kind == "no-result":
        session.scalars(sa.select(Part).where(Part.name == "no such part")).one()
    raise Unregistered(f"secret detail about {name}")


@server_method(registry=SERVED)
def denied(session: Session) -> int:
    return 1


@server_method(name="renamed", version=2, registry=SERVED)
def versioned(session: Session) -> str:
    return "v2"


# what a client of another version or another deployment would call
CLIENT_ONLY = MethodRegistry()


@server_method(name="renamed", version=1, registry=CLIENT_ONLY)
def renamed_v1(session: Session) -> str:
    return "v1"


@server_method(registry=CLIENT_ONLY)
def not_served(session: Session) -> int:
    return 0


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url: str | sa.URL = f"sqlite:///{tmp_path_factory.mktemp('methods') / 'methods.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = guard.exempt(sa.create_engine(url))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def server(engine: sa.Engine) -> Iterator[RunningServer]:
    with running_dbapi(engine, Base.metadata, methods=SERVED,
                       policy=DefaultPolicy(denied_methods=frozenset({"denied"}))) as server:
        yield server


@pytest.fixture
def open_session(mode: str, engine: sa.Engine, server: RunningServer) -> Iterator[Any]:
    """``open_session()``: a new session of the mode under test (closed at the end)."""
    made: list[DBSession] = []

    def make() -> DBSession:
        if mode == "direct":
            session = DBSession(bind=engine)
        else:
            session = DBSession(database_access_isolation=True, database_api_host=server.url,
                                token=server.token)
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


@pytest.fixture
def session(open_session: Any) -> DBSession:
    return open_session()  # type: ignore[no-any-return]


@pytest.fixture
def name(mode: str) -> str:
    return f"{mode}-{uuid.uuid4().hex[:8]}"


def committed(engine: sa.Engine, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(Part).where(*where)) or 0)


def seed(engine: sa.Engine, *names: str) -> None:
    with Session(engine) as s:
        s.add_all([Part(name=n, price=Decimal("9.90"), colour=Colour.BLUE, made=MADE, notes="n")
                   for n in names])
        s.commit()


# -- values ---------------------------------------------------------------------------------------
def test_values_come_back_equal_and_of_the_same_types(session: DBSession) -> None:
    args: tuple[Any, ...] = (
        Decimal("12.50"), datetime(2024, 3, 31, 2, 30, tzinfo=UTC), date(2024, 2, 29), time(23, 59, 1),
        timedelta(days=-1, seconds=5), uuid.UUID(int=7), b"\x00\xff", Colour.BLUE, 2, None,
        ["a", "b"], ("x", 1), {"k": 3})
    result = echo_values(session, *args)
    assert result == args
    assert [type(v) for v in result] == [type(v) for v in args]
    assert str(result[0]) == "12.50"


# -- ORM results ----------------------------------------------------------------------------------
def test_orm_results_are_persistent_clean_and_need_no_sql(session: DBSession, engine: sa.Engine,
                                                           name: str) -> None:
    seed(engine, f"{name}-a", f"{name}-b")
    parts = parts_named(session, name)
    assert [p.name for p in parts] == [f"{name}-a", f"{name}-b"]
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statements.append(statement)

    bind = session.get_bind()
    sa.event.listen(bind, "before_cursor_execute", record)
    try:
        for part in parts:
            state = sa.inspect(part)
            assert state.persistent and not state.modified and part in session
            assert session.get(Part, part.id) is part  # from the identity map
            assert (type(part.price), part.price, part.colour, part.made) == (Decimal, Decimal("9.90"),
                                                                            Colour.BLUE, MADE)
        assert statements == []
    finally:
        sa.event.remove(bind, "before_cursor_execute", record)
    assert parts[0].notes == "n"  # a deferred column loads on access, as it would directly
    parts[0].price = Decimal("1.25")
    session.commit()
    assert committed(engine, Part.name == f"{name}-a", Part.price == Decimal("1.25")) == 1


def test_a_returned_object_already_loaded_is_the_same_object_updated(session: DBSession, engine: sa.Engine,
                                                                    name: str) -> None:
    seed(engine, name)
    part = session.scalars(sa.select(Part).where(Part.name == name)).one()
    returned = reprice(session, name, Decimal("3.30"))
    assert returned is part
    assert part.price == Decimal("3.30") and not sa.inspect(part).modified
    session.commit()
    assert committed(engine, Part.name == name, Part.price == Decimal("3.30")) == 1


def test_objects_changed_by_the_method_show_the_change(session: DBSession, engine: sa.Engine, name: str) -> None:
    seed(engine, name)
    part = session.scalars(sa.select(Part).where(Part.name == name)).one()
    assert reprice(session, "no such part", Decimal("1")) is None
    assert add_part(session, f"{name}-new").id > part.id
    reprice_quietly(session, name, Decimal("4.40"))  # not returned: the caller's copy is refreshed
    assert part.price == Decimal("4.40")


def test_a_new_object_the_method_adds_is_persistent_for_the_caller(session: DBSession, engine: sa.Engine,
                                                                   name: str) -> None:
    part = add_part(session, name)
    assert sa.inspect(part).persistent and part.id is not None and part.made == MADE
    session.commit()
    assert committed(engine, Part.name == name) == 1


# -- transactions ---------------------------------------------------------------------------------
def test_the_method_sees_the_callers_pending_changes(session: DBSession, name: str) -> None:
    session.add(Part(name=name, price=Decimal("1"), colour=Colour.RED, made=MADE))
    assert count_parts(session, name) == 1


def test_the_methods_writes_commit_and_roll_back_with_the_caller(open_session: Any, engine: sa.Engine,
                                                                 name: str) -> None:
    with open_session() as session:
        add_part(session, f"{name}-rolled")
        session.rollback()
    with open_session() as session:
        add_part(session, f"{name}-kept")
        assert committed(engine, Part.name == f"{name}-kept") == 0  # not before the caller commits
        session.commit()
    assert committed(engine, Part.name == f"{name}-rolled") == 0
    assert committed(engine, Part.name == f"{name}-kept") == 1


# -- exceptions -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "cls", "args"), [
    ("safe", OutOfStock, lambda n: (n, 3)),
    ("builtin", KeyError, lambda n: (n,)),
    ("no-result", sa.exc.NoResultFound, lambda n: ("No row was found when one was required",)),
])
def test_a_safe_exception_keeps_its_class_and_the_method_writes_are_undone(
        session: DBSession, engine: sa.Engine, name: str, kind: str, cls: type[Exception], args: Any) -> None:
    session.add(Part(name=f"{name}-caller", price=Decimal("1"), colour=Colour.RED, made=MADE))
    with pytest.raises(cls) as raised:
        add_then_raise(session, f"{name}-method", kind)
    assert type(raised.value) is cls and raised.value.args == args(f"{name}-method")
    session.commit()  # the caller's transaction is intact; only the method's savepoint rolled back
    assert committed(engine, Part.name == f"{name}-caller") == 1
    assert committed(engine, Part.name == f"{name}-method") == 0


def test_another_exception_is_a_remote_error_with_the_servers_error_id(
        session: DBSession, engine: sa.Engine, mode: str, name: str) -> None:
    expected: type[Exception] = Unregistered if mode == "direct" else RemoteMethodError
    with pytest.raises(expected) as raised:
        add_then_raise(session, name, "unsafe")
    if mode == "isolated":
        error = raised.value
        assert isinstance(error, RemoteMethodError)
        assert error.error_id and error.code == "method_failed" and error.status == 500
        assert "secret detail" not in str(error) and error.error_id in str(error)
    session.commit()
    assert committed(engine, Part.name == name) == 0


def test_a_database_error_raises_the_same_sqlalchemy_class(session: DBSession, engine: sa.Engine,
                                                          name: str) -> None:
    seed(engine, name)
    session.add(Part(name=f"{name}-caller", price=Decimal("1"), colour=Colour.RED, made=MADE))
    with pytest.raises(sa.exc.IntegrityError):
        add_part(session, name)
    session.commit()
    assert committed(engine, Part.name == f"{name}-caller") == 1


# -- what only isolation can refuse ---------------------------------------------------------------
@pytest.fixture
def isolated(server: RunningServer) -> Iterator[DBSession]:
    with DBSession(database_access_isolation=True, database_api_host=server.url, token=server.token) as s:
        yield s


def test_a_method_the_server_does_not_have_is_named(isolated: DBSession) -> None:
    with pytest.raises(MethodNotFoundError, match="'not_served' is not registered") as raised:
        not_served(isolated)
    assert raised.value.status == 404


def test_another_version_is_refused_with_both_versions_named(isolated: DBSession) -> None:
    with pytest.raises(MethodNotFoundError, match="registered in version 2, but version 1"):
        renamed_v1(isolated)
    assert versioned(isolated) == "v2"


def test_the_servers_policy_can_deny_a_method(isolated: DBSession) -> None:
    with pytest.raises(PolicyViolationError, match="named method 'denied' is not allowed"):
        denied(isolated)


def test_the_client_command_lists_what_the_server_serves(server: RunningServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_API_TOKEN", server.token)
    result = CliRunner().invoke(cli.main, ["methods", "--host", server.url])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == sorted(m.name for m in SERVED)
    assert "parts_named  v1  parts_named(prefix: str) -> list[Part]" in lines
    assert "renamed  v2  renamed() -> str" in lines


def test_the_client_command_needs_a_token(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_API_TOKEN", raising=False)
    monkeypatch.delenv("DATABASE_API_TOKEN_FILE", raising=False)
    result = CliRunner().invoke(cli.main, ["methods", "--host", server.url])
    assert result.exit_code == 1 and "token" in result.output.lower()


def test_a_refused_call_leaves_the_session_usable(isolated: DBSession, engine: sa.Engine) -> None:
    name = f"after-refusal-{uuid.uuid4().hex[:8]}"
    isolated.add(Part(name=name, price=Decimal("1"), colour=Colour.RED, made=MADE))
    with pytest.raises(PolicyViolationError):
        denied(isolated)
    isolated.commit()
    assert committed(engine, Part.name == name) == 1
