"""The async transport: the sync transport's rules over aiohttp, and what cancellation does to HTTP.

Against a real DB-API on loopback (SQLite behind it), through the fault proxy where a request or
an answer must be held or refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.util.concurrency import greenlet_spawn

from dbsession import guard
from dbsession._async_transport import AsyncTransport, HostClients, discard_hosts, host_clients
from dbsession.auth import TokenSource
from dbsession.transport import ServerUnreachable, Transport
from tests.faults.proxy import FaultProxy
from tests.servers import RunningServer, running_dbapi

BIG = "/openapi.json"  # a large answer (tens of KB): half of it is well inside the body


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"
    id: Mapped[int] = mapped_column(primary_key=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    engine = guard.exempt(sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('t') / 'db.sqlite'}"))
    Base.metadata.create_all(engine)
    # in this process: the transport's HTTP behaviour is under test, not the statements' results
    with running_dbapi(engine, Base.metadata) as server:
        yield server
    engine.dispose()


@pytest.fixture
def proxy(server: RunningServer) -> Iterator[FaultProxy]:
    host, port = server.url.removeprefix("http://").split(":")
    proxy = FaultProxy((host, int(port)))
    yield proxy
    discard_hosts(proxy.url)
    proxy.close()


def expected(proxy: FaultProxy, path: str) -> Any:
    """The answer as the sync transport gets it (through the proxy: the document names its host)."""
    transport = Transport(proxy.url, TokenSource())
    try:
        return transport.get(path)
    finally:
        transport.close()


def test_a_half_read_connection_is_discarded_by_the_pool(proxy: FaultProxy, server: RunningServer) -> None:
    """The exchange itself cancelled with half the answer read (what happens to an exchange still
    running when its loop shuts down): aiohttp must not hand that connection out again."""
    clients = HostClients(proxy.url, TokenSource(server.token), 30.0)
    url = f"{proxy.url}/dbapi/v1{BIG}"

    async def body() -> tuple[int, int, Any]:
        first = await clients.attempt("GET", f"{proxy.url}/dbapi/v1/info", None, {})
        assert first.status == 200
        before = proxy.connections
        proxy.arm("half_response", BIG, hold=1.0)
        exchange = asyncio.ensure_future(clients.attempt("GET", url, None, {}))
        while proxy.in_flight == 0 or not proxy.fired:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the first half is in the client's buffer now
        exchange.cancel()
        with pytest.raises(asyncio.CancelledError):
            await exchange
        after = await clients.attempt("GET", url, None, {})
        return before, proxy.connections, orjson.loads(after.data)

    before, after, answer = asyncio.run(body())
    assert after == before + 1  # a new connection: the half-read one was not reused
    assert answer == expected(proxy, BIG)


def test_a_cancelled_caller_leaves_the_connection_read_to_its_end(proxy: FaultProxy, server: RunningServer) -> None:
    """Through the transport (shielded exchanges), the caller cancelled mid-answer: the exchange
    still reads the whole answer, so the connection goes back to the pool intact and is reused."""
    clients = HostClients(proxy.url, TokenSource(server.token), 30.0)

    async def body() -> tuple[int, int, Any]:
        transport = AsyncTransport(clients)
        await greenlet_spawn(transport.get, "/info")
        before = proxy.connections
        proxy.arm("half_response", BIG, hold=0.5)
        call = asyncio.ensure_future(greenlet_spawn(transport.get, BIG))
        await asyncio.sleep(0.2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        answer = await greenlet_spawn(transport.get, BIG)  # waits for the abandoned one first
        return before, proxy.connections, answer

    before, after, answer = asyncio.run(body())
    assert after == before  # the same keep-alive connection
    assert answer == expected(proxy, BIG)


def test_refused_connections_get_the_sync_transport_s_retries_without_blocking_the_loop(
        proxy: FaultProxy) -> None:
    clients = host_clients(proxy.url, None, None, 30.0)
    proxy.down()

    async def body() -> tuple[int, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.ensure_future(ticker())
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match="after 4 attempts") as failed:
            await greenlet_spawn(AsyncTransport(clients).get, "/info")
        assert not failed.value.answer_lost  # nothing reached the server
        tick_task.cancel()
        return ticks, time.monotonic() - started

    ticks, elapsed = asyncio.run(body())
    assert 1.0 <= elapsed < 10  # waits of 0.05 + 0.2 + 0.8 s, as the sync transport's
    assert ticks >= 40  # the loop ran other tasks during the backoff


def test_each_loop_s_session_is_closed_when_the_loop_shuts_down(server: RunningServer) -> None:
    clients = HostClients(server.url, TokenSource(server.token), 30.0)
    sessions = []

    async def body() -> None:
        sessions.append(await clients.session())
        assert (await clients.attempt("GET", f"{server.url}/dbapi/v1/info", None, {})).status == 200

    asyncio.run(body())
    asyncio.run(body())
    assert len(sessions) == 2 and sessions[0] is not sessions[1]  # one per loop
    assert all(s.closed for s in sessions)  # asyncio.run closed them with its loop


def test_a_transport_shares_the_host_s_pool_and_token_source(server: RunningServer) -> None:
    first = host_clients(server.url, server.token, None, 30.0)
    assert host_clients(server.url, server.token, None, 30.0) is first
    assert host_clients(server.url, "another", None, 30.0) is not first
    discard_hosts(server.url)
    assert host_clients(server.url, server.token, None, 30.0) is not first
    discard_hosts(server.url)


def test_requests_carry_the_bearer_token(server: RunningServer) -> None:
    async def body(token: str | None) -> Any:
        return await greenlet_spawn(AsyncTransport(HostClients(server.url, TokenSource(token), 30.0)).post,
                                    f"/transactions/{'0' * 32}/rollback", {"seq": 1}, replay_safe=True)

    assert asyncio.run(body(server.token)) is not None
    with pytest.raises(Exception, match="token") as refused:
        asyncio.run(body(None))
    assert getattr(refused.value, "status", None) == 401


def test_requests_carry_the_request_id_the_db_api_echoes(server: RunningServer) -> None:
    """The sync transport's request id travels as the same header, and comes back."""
    async def body() -> Any:
        transport = AsyncTransport(HostClients(server.url, TokenSource(server.token), 30.0))
        return await greenlet_spawn(transport._attempt, "GET", "/info", None, "0123456789abcdef")

    answer = asyncio.run(body())
    assert answer.status == 200 and answer.headers.get("x-request-id") == "0123456789abcdef"
