"""The rules of a named method call hold alike in direct and in isolation mode.

Each test makes the same call through a direct ``DBSession`` and through an isolated one (a real
DB-API on loopback, real tokens), on SQLite, PostgreSQL and MariaDB, and expects the same
outcome: a method may not end its caller's transaction (``MethodTransactionError``), arguments
and results must fit the annotations (``MethodArgumentsError`` / ``MethodResultError``, same
messages), and after a refusal the caller's transaction is intact and nothing is left open.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dbsession import (
    DBSession,
    MethodArgumentsError,
    MethodRegistry,
    MethodResultError,
    MethodTransactionError,
    guard,
    server_method,
)
from tests.servers import RunningServer, running_dbapi


class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Note(Base):
    __tablename__ = "rule_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(60), unique=True)


class Mood(enum.StrEnum):
    CALM = "calm"


class Moment(datetime):
    """A datetime subclass, as pendulum's: an instance of the annotation the codec cannot carry."""


class Shouting(str):
    """A str subclass: conforms to ``str`` but is no codec type."""


RULES = MethodRegistry()
ENDINGS = {
    "commit": lambda s: s.commit(),
    "rollback": lambda s: s.rollback(),
    "close": lambda s: s.close(),
    "begin": lambda s: s.begin(),
    "connection-commit": lambda s: s.connection().commit(),
    "connection-rollback": lambda s: s.connection().rollback(),
}


@server_method(registry=RULES)
def write_then_end(session: Session, text: str, ending: str) -> int:
    session.add(Note(text=text))
    session.flush()
    ENDINGS[ending](session)
    return 1


@server_method(registry=RULES)
def own_savepoints(session: Session, text: str) -> int:
    with session.begin_nested():
        session.add(Note(text=f"{text}-kept"))
    inner = session.begin_nested()
    session.add(Note(text=f"{text}-undone"))
    session.flush()
    inner.rollback()
    return int(session.scalar(sa.select(sa.func.count()).where(Note.text.startswith(text))) or 0)


@server_method(registry=RULES)
def note(session: Session, text: str, times: int = 1) -> int:
    session.add(Note(text=text))
    return times


@server_method(registry=RULES)
def count_and_extend(session: Session, tags: list[str]) -> int:
    tags.append("added by the method")
    return len(tags)


@server_method(registry=RULES)
def write_then_return(session: Session, text: str, kind: str) -> Note:
    session.add(Note(text=text))
    session.flush()
    returned: Any = {"str": "not a note", "moment": Moment(2024, 1, 1), "transient": Note(text="never added")}
    return returned[kind]  # type: ignore[no-any-return]


@server_method(registry=RULES)
def moment(session: Session) -> datetime:
    return Moment(2024, 1, 1)


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url: str | sa.URL = f"sqlite:///{tmp_path_factory.mktemp('rules') / 'rules.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "mariadb_url")
    engine = guard.exempt(sa.create_engine(url))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def server(engine: sa.Engine) -> Iterator[RunningServer]:
    with running_dbapi(engine, Base.metadata, methods=RULES) as server:
        yield server


@pytest.fixture
def session(mode: str, engine: sa.Engine, server: RunningServer) -> Iterator[DBSession]:
    """A session of the mode under test; afterwards no server transaction or connection is left."""
    open_before = server.state.transactions.open_count
    if mode == "direct":
        session = DBSession(bind=engine)
    else:
        session = DBSession(database_access_isolation=True, database_api_host=server.url, token=server.token)
    yield session
    session.close()
    assert server.state.transactions.open_count == open_before
    assert engine.pool.checkedout() == 0, "a database connection was left checked out"


@pytest.fixture
def text(mode: str) -> str:
    return f"{mode}-{uuid.uuid4().hex[:8]}"


def committed(engine: sa.Engine, prefix: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(Note.text).where(Note.text.startswith(prefix)).order_by(Note.text)))


def caller_note(session: DBSession, text: str) -> None:
    session.add(Note(text=f"{text}-caller"))


# -- the method runs inside the caller's transaction and must not end it --------------------------
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_ending_the_callers_transaction_is_refused_alike(session: DBSession, engine: sa.Engine, text: str,
                                                         ending: str) -> None:
    caller_note(session, text)
    call = "session.connection()." if ending.startswith("connection") else "session."
    expected = (f"The named method write_then_end called {call}{ending.rpartition('-')[2]}(): a named "
                "method runs inside its caller's transaction and must not begin, end or close it.")
    with pytest.raises(MethodTransactionError) as raised:
        write_then_end(session, f"{text}-method", ending)
    assert type(raised.value) is MethodTransactionError and isinstance(raised.value, sa.exc.InvalidRequestError)
    assert str(raised.value).startswith(expected)
    assert committed(engine, text) == []  # nothing committed: not the caller's work, not the method's
    assert session.in_transaction()
    assert note(session, f"{text}-after") == 1  # the session and its transaction are usable
    session.commit()
    assert committed(engine, text) == [f"{text}-after", f"{text}-caller"]  # the method's write undone


def test_a_method_may_use_savepoints_of_its_own(session: DBSession, engine: sa.Engine, text: str) -> None:
    assert own_savepoints(session, text) == 1
    session.commit()
    assert committed(engine, text) == [f"{text}-kept"]


# -- arguments and results fit the annotations in both modes ---------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    ((5,), "note(): argument 'text' must be str, got int"),
    (("x", True), "note(): argument 'times' must be int, got bool"),
    (("x", "2"), "note(): argument 'times' must be int, got str"),
    ((Mood.CALM,), "note(): argument 'text' must be str, got Mood"),
    ((), "note(): missing a required argument: 'text'"),
    (("x", 1, 2), "note(): too many positional arguments"),
])
def test_a_wrongly_typed_argument_is_refused_alike_before_the_method_runs(
        session: DBSession, engine: sa.Engine, text: str, args: tuple[Any, ...], message: str) -> None:
    caller_note(session, text)
    with pytest.raises(MethodArgumentsError) as raised:
        note(session, *args)
    assert type(raised.value) is MethodArgumentsError and str(raised.value).startswith(message)
    session.commit()
    assert committed(engine, text) == [f"{text}-caller"]
    assert committed(engine, "x") == []


def test_an_argument_that_cannot_travel_is_refused_alike(session: DBSession) -> None:
    with pytest.raises(MethodArgumentsError, match="note\\(\\): argument 'text' cannot travel: cannot send a "
                                                   "value of type .*Shouting"):
        note(session, Shouting("loud"))


def test_the_method_gets_copies_of_its_arguments_in_both_modes(session: DBSession) -> None:
    tags = ["a", "b"]
    assert count_and_extend(session, tags) == 3
    assert tags == ["a", "b"]  # in direct mode too: the function got the values after the round trip


@pytest.mark.parametrize(("kind", "message"), [
    ("str", "write_then_return() returned a str, not the Note its annotation promises."),
    ("moment", "write_then_return() returned a Moment, not the Note its annotation promises."),
    ("transient", "The returned Note is not in the database (transient or deleted)"),
])
def test_a_wrongly_typed_result_is_refused_alike_and_the_methods_writes_undone(
        session: DBSession, engine: sa.Engine, text: str, kind: str, message: str) -> None:
    caller_note(session, text)
    with pytest.raises(MethodResultError) as raised:
        write_then_return(session, f"{text}-method", kind)
    assert type(raised.value) is MethodResultError and str(raised.value).startswith(message)
    session.commit()
    assert committed(engine, text) == [f"{text}-caller"]


def test_a_result_that_cannot_travel_is_refused_alike(session: DBSession) -> None:
    with pytest.raises(MethodResultError, match="moment\\(\\) returned a value that cannot travel: cannot "
                                                "send a value of type .*Moment"):
        moment(session)
