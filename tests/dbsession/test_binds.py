"""Bound values are processed once, on the client, in the phase a direct connection processes them.

Twin SQLite databases: a plain engine on one, an isolated engine (DB-API in this process, so a
processor the server ran would be counted too) on the other. SQLite's own processors (datetimes
as strings, enums by name) make a value processed twice, or not at all, visible.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Iterator
from typing import Any

import pendulum
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dbsession import BadRequestError, create_isolated_engine, guard
from tests.servers import running_dbapi

CALLS: dict[str, int] = {"bind": 0, "default": 0}


class Mood(enum.Enum):
    CALM = "calm"
    ANGRY = "angry"


class Counted(sa.TypeDecorator[str]):
    """Upper-cases on the way in and counts how often it ran; refuses the string "bad"."""

    impl = sa.String(40)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        CALLS["bind"] += 1
        if value == "bad":
            raise ValueError("bad is not allowed")
        return None if value is None else value.upper()


class Doubled(sa.TypeDecorator[int]):
    """Used only in expressions: no column of the server's metadata has it."""

    impl = sa.Integer
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else value * 2


class Lowered(sa.TypeDecorator[str]):
    """Renders SQL of its own (bind_expression): the server must have it to render it."""

    impl = sa.String
    cache_ok = True

    def bind_expression(self, bindvalue: Any) -> Any:
        return sa.func.lower(bindvalue)


def _counted_default() -> str:
    CALLS["default"] += 1
    return "from-default"


class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Entry(Base):
    __tablename__ = "bind_entries"
    id: Mapped[int] = mapped_column(primary_key=True)
    label = mapped_column(Counted, default=_counted_default)
    at = mapped_column(sa.DateTime)
    mood = mapped_column(sa.Enum(Mood))


class Marked(Base):
    """insertmanyvalues sorts RETURNING rows by a client-side sentinel (a UUID stored as text)."""

    __tablename__ = "bind_marked"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(20))
    sentinel = mapped_column(sa.Uuid(native_uuid=False), insert_sentinel=True, default=uuid.uuid4)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """(direct engine, isolated engine) on twin SQLite databases."""
    tmp = tmp_path_factory.mktemp("binds")
    direct = guard.exempt(sa.create_engine(f"sqlite:///{tmp / 'direct.sqlite'}"))
    served = guard.exempt(sa.create_engine(f"sqlite:///{tmp / 'served.sqlite'}"))
    for engine in (direct, served):
        Base.metadata.create_all(engine)
    with running_dbapi(served, Base.metadata) as server:
        isolated = create_isolated_engine(server.url, token=server.token)
        yield direct, isolated
        isolated.dispose()
    direct.dispose()
    served.dispose()


@pytest.fixture(autouse=True)
def _fresh(engines: tuple[sa.Engine, sa.Engine]) -> Iterator[None]:
    yield
    for engine in engines:
        with engine.begin() as conn:
            conn.execute(sa.delete(Entry))
            conn.execute(sa.delete(Marked))



def test_a_processor_runs_once_per_value_on_the_client(engines: tuple[sa.Engine, sa.Engine]) -> None:
    counts = []
    for engine in engines:
        CALLS["bind"] = 0
        with Session(engine) as session:
            session.add_all([Entry(id=1, label="a"), Entry(id=2, label="b")])
            session.commit()
            assert session.scalars(sa.select(Entry.label).order_by(Entry.id)).all() == ["A", "B"]
        counts.append(CALLS["bind"])
    assert counts[1] == counts[0] == 2  # the in-process server would have counted its own runs


def test_a_failing_processor_raises_what_a_direct_session_raises(engines: tuple[sa.Engine, sa.Engine]) -> None:
    raised = []
    for engine in engines:
        with Session(engine) as session:
            session.add(Entry(id=3, label="bad"))
            with pytest.raises(sa.exc.StatementError) as caught:
                session.flush()
            raised.append((type(caught.value), type(caught.value.orig), str(caught.value.orig)))
    assert raised[0] == raised[1] == (sa.exc.StatementError, ValueError, "bad is not allowed")


def test_python_defaults_are_evaluated_on_the_client_once(engines: tuple[sa.Engine, sa.Engine]) -> None:
    for engine in engines:
        CALLS["default"] = 0
        with engine.begin() as conn:
            conn.execute(sa.insert(Entry), [{"id": 10}, {"id": 11}])
            conn.execute(sa.insert(Entry).values([{"id": 12}, {"id": 13, "label": "x"}]))
            labels = conn.execute(sa.select(Entry.label).order_by(Entry.id)).scalars().all()
        assert labels == ["FROM-DEFAULT", "FROM-DEFAULT", "FROM-DEFAULT", "X"]
        assert CALLS["default"] == 3


def test_expanding_and_tuple_in_are_processed_per_element(engines: tuple[sa.Engine, sa.Engine]) -> None:
    when = [pendulum.datetime(2024, 1, 2, 3, 4, 5, tz="UTC").naive(), dt.datetime(2024, 5, 6, 7, 8, 9, 10)]
    results = []
    for engine in engines:
        with Session(engine) as session:
            session.add_all([Entry(id=20, label="p", at=when[0], mood=Mood.CALM),
                             Entry(id=21, label="q", at=when[1], mood=Mood.ANGRY)])
            session.commit()
            by_in = session.scalars(sa.select(Entry.id).where(Entry.at.in_(when)).order_by(Entry.id)).all()
            by_tuple = session.scalars(sa.select(Entry.id).where(
                sa.tuple_(Entry.at, Entry.mood, Entry.label).in_([(when[1], Mood.ANGRY, "q"), (when[0], Mood.ANGRY, "p")]))
            ).all()
            by_label = session.scalars(sa.select(Entry.id).where(Entry.label.in_(["p", "zz"]))).all()
            results.append((by_in, by_tuple, by_label))
    assert results[0] == results[1] == ([20, 21], [21], [20])


def test_listeners_see_processed_parameters(engines: tuple[sa.Engine, sa.Engine]) -> None:
    seen: list[Any] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.startswith("SELECT bind_entries.id"):
            seen.append(parameters)

    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            with engine.connect() as conn:
                conn.execute(sa.select(Entry.id).where(Entry.label.in_(["a", "b"]), Entry.mood == Mood.CALM,
                                                       Entry.at > dt.datetime(2024, 1, 1)))
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
    assert seen[0] == seen[1] == ("A", "B", "CALM", "2024-01-01 00:00:00.000000")


def test_a_type_only_the_client_knows_renders_as_its_impl(engines: tuple[sa.Engine, sa.Engine]) -> None:
    stmt = sa.select(sa.literal(21, Doubled()), sa.cast(sa.literal("7"), Doubled()), sa.bindparam("n", 4, Doubled()))
    rows = [engine.connect().execute(stmt).one() for engine in engines]
    assert rows[0] == rows[1] == (42, 7, 8)


def test_a_type_rendering_sql_of_its_own_must_be_the_servers(engines: tuple[sa.Engine, sa.Engine]) -> None:
    direct, isolated = engines
    stmt = sa.select(sa.literal("MiXeD", Lowered()))
    with direct.connect() as conn:
        assert conn.execute(stmt).scalar() == "mixed"
    with pytest.raises(BadRequestError, match="renders SQL of its own"), isolated.connect() as conn:
        conn.execute(stmt)


def test_literal_execute_binds_travel_as_python_values(engines: tuple[sa.Engine, sa.Engine]) -> None:
    results = []
    for engine in engines:
        with Session(engine) as session:
            session.add_all([Entry(id=30, label="r", mood=Mood.CALM), Entry(id=31, label="s", mood=Mood.ANGRY)])
            session.commit()
            stmt = sa.select(Entry.id).where(
                Entry.mood.in_(sa.bindparam("moods", [Mood.ANGRY], expanding=True, literal_execute=True)),
                Entry.label == sa.bindparam("label", "S", literal_execute=True))  # rendered as String
            results.append(session.scalars(stmt).all())
    assert results[0] == results[1] == [31]


def test_sentinel_sorted_returning_matches_processed_sentinels(engines: tuple[sa.Engine, sa.Engine]) -> None:
    # the server matches RETURNING rows (raw) with the sentinel values it was sent (processed)
    results = []
    for engine in engines:
        with Session(engine) as session:
            objects = [Marked(name=f"m{i}") for i in range(7)]
            session.add_all(objects)
            session.flush()
            results.append([(o.id, o.name) for o in objects])
            session.rollback()
    assert results[0] == results[1] and len({i for i, _ in results[0]}) == 7


def test_operators_on_a_decorated_column(engines: tuple[sa.Engine, sa.Engine]) -> None:
    # a TypeDecorator's comparator leaves its coerce_to_is_types classes in an arithmetic
    # expression's modifiers; only the expression's construction reads them
    results = []
    for engine in engines:
        with Session(engine) as session:
            session.add(Entry(id=40, label="ab"))
            session.commit()
            results.append(session.execute(sa.select(Entry.label + "c", Entry.label.concat("d"))
                                           .where(Entry.label + "c" == "ABc")).all())
    assert results[0] == results[1] == [("ABC", "ABD")]  # the literals are Counted too: upper-cased
