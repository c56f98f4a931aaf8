"""The lost-commit guarantees of ``test_lost_commit.py``, through ``AsyncDBSession``.

The async engine runs the sync stand-in driver's connection and the sync transport's retry loop
over awaited I/O, so a lost request or answer must end exactly as it does for ``DBSession``: the
work applied once, a commit that keeps asking until ``commit_retry_deadline``, then
``CommitOutcomeUnknownError`` (the same class, an ``OperationalError``) - never "failed". Same
real ``dbapi-server serve`` process, same TCP proxy.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from dbsession import AsyncDBSession, CommitOutcomeUnknownError
from dbsession._dbapi import DisconnectError
from dbsession.session import release_api_host

from .conftest import entries
from .models import Entry
from .processes import ServerProcess, token
from .proxy import FaultProxy

pytestmark = pytest.mark.postgresql

T = TypeVar("T")
OUTAGE = 2.0  # longer than the transport's ordinary retries: 4 attempts over about 1 s
SHORT_DEADLINE = 1.5


@pytest.fixture(scope="module")
def server(database: sa.Engine, pg_url: sa.URL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess.start(pg_url, tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[FaultProxy]:
    proxy = FaultProxy(("127.0.0.1", server.port))
    yield proxy
    release_api_host(proxy.url)
    proxy.close()


@pytest.fixture
def account(database: sa.Engine, ref: str) -> str:
    with database.begin() as conn:
        conn.execute(sa.insert(Entry).values(ref=ref, amount=100))
    return ref


def run(proxy: FaultProxy, body: Callable[[AsyncDBSession], Awaitable[T]], **settings: Any) -> T:
    """*body* with an isolated async session through *proxy*, in a fresh event loop."""
    async def main() -> T:
        session = AsyncDBSession(database_access_isolation=True, database_api_host=proxy.url,
                                 token=token(), **settings)
        try:
            return await body(session)
        finally:
            try:
                await session.close()
            except sa.exc.OperationalError:
                pass  # the proxy is still down: nothing left to roll back

    return asyncio.run(main())


async def credit(session: AsyncDBSession, ref: str, amount: int) -> None:
    """Not idempotent on purpose: applied twice, the balance shows it."""
    await session.execute(sa.update(Entry).where(Entry.ref == ref).values(amount=Entry.amount + amount))


@pytest.mark.parametrize("fault", ["request", "response"])
@pytest.mark.parametrize("target", ["/commit", "/execute"])
def test_lost_request_or_answer_is_applied_exactly_once(
        proxy: FaultProxy, database: sa.Engine, account: str, fault: str, target: str) -> None:
    async def body(session: AsyncDBSession) -> None:
        await credit(session, account, 5)  # opens the server transaction
        proxy.arm(fault, target)
        await credit(session, account, 7)
        await session.commit()  # returns: the client was told the truth, "committed"

    run(proxy, body)
    assert [f for f, _ in proxy.fired] == [fault] and target in proxy.fired[0][1]
    assert entries(database, account) == [(account, 112)]


def test_commit_answer_lost_then_the_api_unreachable_for_seconds(
        proxy: FaultProxy, database: sa.Engine, account: str) -> None:
    async def body(session: AsyncDBSession) -> float:
        await credit(session, account, 5)
        proxy.arm("response", "/commit", then_down=OUTAGE)
        started = time.monotonic()
        await session.commit()  # keeps asking (asyncio.sleep between attempts) and learns "committed"
        return time.monotonic() - started

    assert run(proxy, body) >= OUTAGE
    assert len([line for line in proxy.forwarded if "/commit" in line]) == 2
    assert entries(database, account) == [(account, 105)]  # once, not twice


@pytest.mark.parametrize("fault", ["response", "request"])
def test_commit_outcome_unknown_past_the_deadline(
        proxy: FaultProxy, database: sa.Engine, account: str, fault: str) -> None:
    async def body(session: AsyncDBSession) -> tuple[CommitOutcomeUnknownError, float]:
        await credit(session, account, 5)
        proxy.arm(fault, "/commit", then_down=math.inf)
        started = time.monotonic()
        with pytest.raises(CommitOutcomeUnknownError) as unknown:
            await session.commit()
        elapsed = time.monotonic() - started
        proxy.up()  # the same session works again after the rollback the ORM asks for
        await session.rollback()
        session.add(Entry(ref=f"{account}-after", amount=1))
        await session.commit()
        return unknown.value, elapsed

    error, elapsed = run(proxy, body, commit_retry_deadline=SHORT_DEADLINE)
    assert f"The commit of transaction {error.txn_id} may have succeeded" in str(error)
    assert isinstance(error, sa.exc.OperationalError) and error.connection_invalidated
    assert isinstance(error.orig, DisconnectError)
    assert SHORT_DEADLINE <= elapsed < SHORT_DEADLINE + 10
    assert entries(database, account) == [(account, 105 if fault == "response" else 100),
                                          (f"{account}-after", 1)]


def test_a_commit_that_never_reached_the_api_fails_at_once(
        proxy: FaultProxy, database: sa.Engine, account: str) -> None:
    async def body(session: AsyncDBSession) -> None:
        await credit(session, account, 5)
        proxy.down()
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError, match="Cannot reach the DB-API .* after 4 attempts") as failed:
            await session.commit()
        assert not isinstance(failed.value, CommitOutcomeUnknownError)
        assert failed.value.connection_invalidated
        assert time.monotonic() - started < 10

    run(proxy, body)
    assert entries(database, account) == [(account, 100)]


def test_a_statement_does_not_wait_for_the_commit_deadline(proxy: FaultProxy, account: str) -> None:
    async def body(session: AsyncDBSession) -> None:
        await credit(session, account, 5)
        proxy.arm("response", "/execute", then_down=math.inf)
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError, match="Cannot reach the DB-API .* after 4 attempts"):
            await session.scalar(sa.select(Entry.amount).where(Entry.ref == account))
        assert time.monotonic() - started < 10

    run(proxy, body)
