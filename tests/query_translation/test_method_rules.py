"""The rules a named method call follows in both modes: arguments and results are checked the
same way, and the function may not end its caller's transaction.

Direct mode and the DB-API both run calls through these ``Method`` methods; the end-to-end
parity of the two modes is tested in ``tests/dbsession/test_method_rules.py``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from query_translation import (
    MethodArgumentsError,
    MethodRegistry,
    MethodResultError,
    MethodTransactionError,
    encode_value,
)
from query_translation._method_guard import transaction_kept


class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Shade(enum.Enum):
    DARK = 1
    LIGHT = 2


class Lamp(Base):
    __tablename__ = "lamps"
    id: Mapped[int] = mapped_column(primary_key=True)
    shade: Mapped[Shade] = mapped_column(sa.Enum(Shade))


@pytest.fixture
def registry() -> MethodRegistry:
    return MethodRegistry()


def shine(session: Session, lamp_id: int, shade: Shade, when: datetime | None = None) -> list[Lamp]:
    return []


def every_type(session: Session, a: str, b: int, c: float, d: bool, e: Decimal, f: datetime, g: date,
               h: time, i: timedelta, j: uuid.UUID, k: bytes, m: Shade, n: int | None,
               o: list[dict[str, tuple[int, ...]]], p: tuple[str, Shade]) -> None:
    return None


# -- arguments ------------------------------------------------------------------------------------
class Tone(enum.StrEnum):
    WARM = "warm"


class Moment(datetime):
    """A datetime subclass (as pendulum's): an instance of the annotation, but not a codec type."""


@pytest.mark.parametrize(("args", "message"), [
    (("5", Shade.DARK), "argument 'lamp_id' must be int, got str"),
    ((5, "DARK"), "argument 'shade' must be Shade, got str"),
    ((5, Shade.DARK, Tone.WARM), "argument 'when' must be datetime | None, got Tone"),
    ((5, Shade.DARK, Moment(2024, 1, 1)), "argument 'when' cannot travel: cannot send a value of type "),
])
def test_arguments_are_checked_before_they_are_sent(registry: MethodRegistry, args: tuple[Any, ...],
                                                   message: str) -> None:
    with pytest.raises(MethodArgumentsError, match=message):
        registry.register(shine).encode_arguments(args, {})


def label(session: Session, text: str) -> str:
    return text


def test_a_str_enum_member_is_no_str_argument(registry: MethodRegistry) -> None:
    # on the wire it stays a Tone, which the server cannot decode for a str parameter
    with pytest.raises(MethodArgumentsError, match="argument 'text' must be str, got Tone"):
        registry.register(label).call_arguments((Tone.WARM,), {})


def test_call_arguments_are_the_values_after_the_round_trip(registry: MethodRegistry) -> None:
    method = registry.register(every_type)
    when, listed = datetime(2024, 1, 1, 12), [{"k": (1, 2)}]
    values = ("a", 1, 2, True, Decimal("1.50"), when, date(2024, 1, 2), time(1), timedelta(1),
              uuid.UUID(int=1), b"x", Shade.DARK, None, listed, ("p", Shade.LIGHT))
    wire, arguments = method.call_arguments(values, {})
    assert wire == method.encode_arguments(values, {})
    assert list(arguments.values()) == list(values)
    assert arguments["o"] is not listed and arguments["o"][0] is not listed[0]  # copies, as on the server
    assert str(arguments["e"]) == "1.50" and type(arguments["c"]) is int


# -- results --------------------------------------------------------------------------------------
def returns_moment(session: Session) -> datetime:
    return Moment(2024, 1, 1)


def test_a_result_that_cannot_travel_is_refused_by_the_check_too(registry: MethodRegistry) -> None:
    method = registry.register(returns_moment)
    for check in (method.check_result, method.encode_result):
        with pytest.raises(MethodResultError, match="returns_moment\\(\\) returned a value that cannot "
                                                    "travel: cannot send a value of type .*Moment"):
            check(Moment(2024, 1, 1))
    method.check_result(datetime(2024, 1, 1))


def test_checking_a_result_loads_nothing(registry: MethodRegistry) -> None:
    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    method = registry.register(shine)
    with Session(engine) as session:
        session.add(Lamp(id=1, shade=Shade.DARK))
        session.commit()  # expires the lamp: encoding it would load its columns
        lamp = session.get(Lamp, 1, populate_existing=True)
        session.expire(lamp)
        statements: list[str] = []
        sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        method.check_result([lamp])
        assert statements == []
        assert method.encode_result([lamp]) == [{"$orm": {"class": f"{__name__}:Lamp", "values": {
            "id": 1, "shade": encode_value(Shade.DARK)}}}]
        assert len(statements) == 1


# -- the transaction rule -------------------------------------------------------------------------
def commits(session: Session) -> None:
    session.commit()


def commits_the_connection(session: Session) -> None:
    session.connection().commit()


def test_the_guard_refuses_while_the_function_runs_and_a_nested_guard_restores_it(
        registry: MethodRegistry) -> None:
    outer, inner = registry.register(commits), registry.register(commits_the_connection)
    engine = sa.create_engine("sqlite://")
    with Session(engine) as session:
        session.begin()
        conn = session.connection()
        with transaction_kept(session, "outer"):
            with pytest.raises(MethodTransactionError, match="commits_the_connection called "
                                                             "session.connection\\(\\).commit\\(\\)"):
                inner.invoke(session, {})
            with pytest.raises(MethodTransactionError, match="outer called session.rollback\\(\\)"):
                session.rollback()  # the outer guard again, not nothing
            session.begin_nested().rollback()  # Session.begin_nested() is begin(nested=True)
            session.begin(nested=True).commit()
            with pytest.raises(MethodTransactionError, match="outer called session.begin\\(\\)"):
                session.begin()
        with pytest.raises(MethodTransactionError, match="The named method commits called session.commit"):
            outer.invoke(session, {})
        assert session.in_transaction() and conn.in_transaction()
        assert not {"commit", "rollback", "close"} & (vars(session).keys() | vars(conn).keys())
        session.commit()  # the session's own methods again
        assert not session.in_transaction()
