"""A cancelled task (``asyncio.timeout``, ``Task.cancel``) in isolation mode leaks nothing.

Against the real DB-API (waitress on loopback, PostgreSQL), through a real TCP proxy that holds a
chosen request or answer (``tests/faults/proxy.py``: ``slow_request``, ``slow_response``,
``half_response``) so the cancellation lands while that request is on the wire. After each
cancellation the server must hold no transaction and no result cursor - at once, not after its
idle timeout - the database must show the work either not done or done exactly once, and the
engine must go on working over its pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbsession import AsyncDBSession, guard
from dbsession.session import release_api_host
from tests.faults.proxy import FaultProxy
from tests.servers import RunningServer, running_dbapi

HOLD = 0.6  # how long the proxy holds a request or answer
CANCEL_AFTER = 0.15  # when the task is cancelled: while the proxy holds it


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(40))


ROWS = 50


@pytest.fixture(scope="module")
def engine(pg_url: sa.URL) -> Iterator[sa.Engine]:
    # the DB-API holds a database connection per open transaction: room for the 30 (pool_size 10
    # + max_overflow 20) one isolated engine may open at once
    engine = guard.exempt(sa.create_engine(pg_url, pool_size=35, max_overflow=5))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def server(engine: sa.Engine) -> Iterator[RunningServer]:
    # in this process: the tests count the server's open transactions and cursors (its state)
    with running_dbapi(engine, Base.metadata, idle_timeout=60) as server:
        yield server


@pytest.fixture
def proxy(server: RunningServer) -> Iterator[FaultProxy]:
    host, port = server.url.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port)))
    yield proxy
    release_api_host(proxy.url)
    proxy.close()


@pytest.fixture(autouse=True)
def seeded(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(Item))
        conn.execute(sa.insert(Item), [{"id": i, "name": f"item {i}"} for i in range(1, ROWS + 1)])


@pytest.fixture
def make(proxy: FaultProxy, server: RunningServer) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(class_=AsyncDBSession, database_access_isolation=True,
                              database_api_host=proxy.url, token=server.token)


def settled(server: RunningServer, proxy: FaultProxy, timeout: float = 5.0) -> tuple[int, int]:
    """(open transactions, open cursors) on the server, once both are 0 or *timeout* passed.

    Counted only after the proxy delivered whatever it held: a request held past the
    cancellation reaches the server late, and must not open anything then either.
    """
    proxy.wait_idle()
    deadline = time.monotonic() + timeout
    while True:
        counts = server.state.transactions.open_count, server.state.cursors.open_count
        if counts == (0, 0) or time.monotonic() > deadline:
            return counts
        time.sleep(0.02)


def names(engine: sa.Engine, *ids: int) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(Item.name).where(Item.id.in_(ids)).order_by(Item.id)))


async def still_works(make: async_sessionmaker[AsyncSession]) -> None:
    """The engine goes on working after the cancellation: a read and a committed write."""
    async with make() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Item)) is not None
        (await session.get(Item, 1)).name = "after"  # type: ignore[union-attr]
        await session.commit()


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


@pytest.mark.parametrize("fault", ["slow_request", "slow_response", "half_response"])
def test_cancelled_mid_statement_in_a_transaction(fault: str, make: async_sessionmaker[AsyncSession],
                                                  proxy: FaultProxy, server: RunningServer,
                                                  engine: sa.Engine) -> None:
    """The write's request is on the wire (not yet at the server, executed but unanswered, half
    answered) when the task times out: the server transaction is rolled back at once."""
    async def body() -> None:
        with pytest.raises(TimeoutError):
            async with make() as session:
                session.add(Item(id=1000, name="cancelled"))
                proxy.arm(fault, "/execute", hold=HOLD)
                async with asyncio.timeout(CANCEL_AFTER):
                    await session.flush()  # the first write: begins the server transaction
        assert proxy.fired, "the proxy never held the request: the test proved nothing"
        await still_works(make)

    run(body)
    assert settled(server, proxy) == (0, 0)
    assert names(engine, 1000) == []  # rolled back, never committed
    assert names(engine, 1) == ["after"]


def test_cancelled_later_in_a_transaction_rolls_back_the_earlier_writes(
        make: async_sessionmaker[AsyncSession], proxy: FaultProxy, server: RunningServer,
        engine: sa.Engine) -> None:
    async def body() -> None:
        async with make() as session:
            session.add(Item(id=1001, name="first"))
            await session.flush()
            assert server.state.transactions.open_count == 1
            proxy.arm("slow_response", "/execute", hold=HOLD)
            task = asyncio.ensure_future(session.execute(sa.select(Item).where(Item.id == 1001).with_for_update()))
            await asyncio.sleep(CANCEL_AFTER)
            task.cancel()
            task.cancel()  # twice: the connection's cleanup must not be cut short either
            with pytest.raises(asyncio.CancelledError):
                await task
        await still_works(make)

    run(body)
    assert settled(server, proxy) == (0, 0)
    assert names(engine, 1001) == []


@pytest.mark.parametrize("fault", ["slow_request", "slow_response"])
def test_cancelled_mid_commit_ends_the_transaction_exactly_once(fault: str, make: async_sessionmaker[AsyncSession],
                                                                proxy: FaultProxy, server: RunningServer,
                                                                engine: sa.Engine) -> None:
    """A commit that was sent completes on the server (as a COMMIT sent by a direct driver
    does); the caller only stops waiting for it. Nothing stays open, nothing commits twice."""
    async def body() -> None:
        with pytest.raises(TimeoutError):
            async with make() as session:
                session.add(Item(id=1002, name="committed while cancelled"))
                await session.flush()
                proxy.arm(fault, "/commit", hold=HOLD)
                async with asyncio.timeout(CANCEL_AFTER):
                    await session.commit()
        await still_works(make)

    run(body)
    assert settled(server, proxy) == (0, 0)
    assert names(engine, 1002) == ["committed while cancelled"]
    assert [line for _, line in proxy.fired] and sum("/commit" in f for f in proxy.forwarded) >= 1


@pytest.mark.parametrize("fault", ["slow_response", "half_response"])
def test_cancelled_mid_stream_closes_the_server_cursor(fault: str, make: async_sessionmaker[AsyncSession],
                                                       proxy: FaultProxy, server: RunningServer) -> None:
    async def body() -> None:
        async with make() as session:
            result = await session.stream(sa.select(Item).order_by(Item.id).execution_options(yield_per=5))
            first = await result.partitions().__anext__()
            assert len(first) == 5
            assert server.state.cursors.open_count == 1
            proxy.arm(fault, "/cursors/", hold=HOLD)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(CANCEL_AFTER):
                    async for _ in result:
                        pass
        await still_works(make)

    run(body)
    assert settled(server, proxy) == (0, 0)


def test_cancelled_before_the_stream_s_first_answer_closes_the_cursor_it_never_saw(
        make: async_sessionmaker[AsyncSession], proxy: FaultProxy, server: RunningServer) -> None:
    """The server opened the cursor, but the answer naming it reached no one: the connection
    closes it from the abandoned answer."""
    async def body() -> None:
        async with make() as session:
            proxy.arm("slow_response", "/execute", hold=HOLD)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(CANCEL_AFTER):
                    await session.stream(sa.select(Item).order_by(Item.id).execution_options(yield_per=5))
        await still_works(make)

    run(body)
    assert settled(server, proxy) == (0, 0)


def test_the_loop_runs_other_tasks_while_a_request_waits(make: async_sessionmaker[AsyncSession],
                                                        proxy: FaultProxy) -> None:
    """The I/O is awaited, not blocking: a ticker task runs all the time a statement is held."""
    async def body() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.ensure_future(ticker())
        async with make() as session:
            proxy.arm("slow_response", "/execute", hold=0.4)
            assert await session.scalar(sa.select(Item.name).where(Item.id == 2)) == "item 2"
        tick_task.cancel()
        return ticks

    assert run(body) >= 15  # 0.4 s of 10 ms ticks, with room for a loaded machine


def test_many_tasks_cancelled_at_random_points_leak_nothing(make: async_sessionmaker[AsyncSession],
                                                            proxy: FaultProxy, server: RunningServer,
                                                            engine: sa.Engine) -> None:
    """50 concurrent tasks doing read-modify-commit; every other one is cancelled somewhere."""
    async def worker(n: int) -> None:
        async with make() as session:
            item = await session.get(Item, n % ROWS + 1)
            assert item is not None
            item.name = f"worker {n}"
            await session.flush()
            await asyncio.sleep(0.001 * (n % 7))
            await session.commit()

    async def body() -> None:
        tasks = [asyncio.ensure_future(worker(n)) for n in range(50)]
        await asyncio.sleep(0.02)
        for n, task in enumerate(tasks):
            if n % 2:
                task.cancel()
                await asyncio.sleep(0.003)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        unexpected = [o for o in outcomes if o is not None and not isinstance(o, asyncio.CancelledError)]
        assert not unexpected
        await still_works(make)

    run(body)
    assert settled(server, proxy) == (0, 0)
