"""Streamed results (``yield_per``, ``stream_results``, ``partitions``) through the DB-API.

The server keeps the driver's cursor and answers page by page, so neither side holds the whole
result: checked by the size of every answer. Results must equal a direct session's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import dbsession.transport as transport_module
from dbsession import DBSession, TransactionError, guard
from tests.servers import RunningServer, running_dbapi

ROWS = 5_000


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "event"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('stream') / 'stream.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = guard.exempt(sa.create_engine(url))
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Event), [{"id": i, "name": f"event {i}"} for i in range(1, ROWS + 1)])
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def server(engine: sa.Engine) -> Iterator[RunningServer]:
    # expiry is triggered explicitly in its test; a short timeout would race slow page consumers
    with running_dbapi(engine, Base.metadata, idle_timeout=60) as server:
        yield server


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every decoded answer the client receives."""
    seen: list[Any] = []
    original = transport_module.Transport._parse

    def parse(self: Any, response: Any, *args: Any) -> Any:
        data = original(self, response, *args)
        seen.append(data)
        return data

    monkeypatch.setattr(transport_module.Transport, "_parse", parse)
    return seen


def isolated(server: RunningServer) -> DBSession:
    return DBSession(database_access_isolation=True, database_api_host=server.url, token=server.token)


def rows_per_answer(answers: list[Any]) -> list[int]:
    return [len(a["rows"]) for a in answers if isinstance(a, dict) and "rows" in a]


def test_yield_per_gives_what_a_direct_session_gives_page_by_page(engine: sa.Engine, server: RunningServer,
                                                                  answers: list[Any]) -> None:
    stmt = sa.select(Event).order_by(Event.id).execution_options(yield_per=300)
    with Session(engine) as direct:
        expected = [(e.id, e.name) for e in direct.scalars(stmt)]
    with isolated(server) as s:
        got = [(e.id, e.name) for e in s.scalars(stmt)]
    assert got == expected and len(got) == ROWS
    pages = rows_per_answer(answers)
    assert max(pages) == 300  # never more than a page in one answer
    assert len(pages) == ROWS // 300 + 1


def test_partitions_and_stream_results(server: RunningServer) -> None:
    with isolated(server) as s:
        result = s.execute(sa.select(Event.id).order_by(Event.id).execution_options(
            stream_results=True, max_row_buffer=1000))
        sizes = [len(part) for part in result.partitions(1000)]
    assert sizes == [1000] * (ROWS // 1000)


def test_closing_early_frees_the_server_cursor(server: RunningServer) -> None:
    cursors = server.state.cursors
    before = cursors.open_count
    with isolated(server) as s:
        result = s.execute(sa.select(Event.id).order_by(Event.id).execution_options(yield_per=100))
        assert [r.id for r in result.fetchmany(3)] == [1, 2, 3]
        assert cursors.open_count == before + 1
        result.close()
        assert cursors.open_count == before


def test_streaming_inside_a_transaction_sees_its_own_writes(server: RunningServer) -> None:
    with isolated(server) as s:
        s.add(Event(id=ROWS + 1, name="flushed, not committed"))
        s.flush()
        names = [e.name for e in s.scalars(sa.select(Event).where(Event.id > ROWS - 2).order_by(Event.id)
                                           .execution_options(yield_per=1))]
        s.rollback()
    assert names == [f"event {ROWS - 1}", f"event {ROWS}", "flushed, not committed"]


def test_an_abandoned_cursor_expires(server: RunningServer) -> None:
    with isolated(server) as s:
        result = s.execute(sa.select(Event.id).order_by(Event.id).execution_options(yield_per=10))
        result.fetchmany(10)
        server.state.cursors.reap(now=float("inf"))  # as the reaper does after the idle timeout
        with pytest.raises(TransactionError, match="expired"):
            result.fetchall()
