"""Several ``dbapi-server serve`` instances behind a real HAProxy (Debian's package) on loopback.

Routing is an ordinary load balancer's: ``balance hdr(X-DBSession-Route)`` + ``hash-type
consistent`` (``docs/deployment.md``). Every request of a transaction carries its id in that
header, so it reaches the instance that holds the transaction; one-shot reads carry none and are
spread round robin. When the balancer's view changes under an open transaction (its instance
leaves the hash ring and the balancer lost its stick-table entry), the next request reaches
another instance: that answers a typed error, never a
result, and the client recovers as from a lost database connection - ``OperationalError`` with
``connection_invalidated``, roll back, do the work again. A commit that reaches another instance
is answered from the commit outcome table, which fences the transaction: it can no longer commit
anywhere.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from dbsession import CommitOutcomeUnknownError, DBSession
from dbsession._dbapi import DisconnectError
from tests.faults.conftest import entries
from tests.faults.models import Entry

from .conftest import Cluster, cluster

pytestmark = pytest.mark.postgresql


@pytest.fixture(scope="module")
def three(pg_url: sa.URL, database: sa.Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(pg_url, tmp_path_factory.mktemp("cluster"), size=3) as running:
        yield running


@pytest.fixture
def ref() -> str:
    return f"lb-{uuid.uuid4().hex[:10]}"


def metric(instance_url: str, name: str, labels: str = "") -> float:
    """One sample of an instance's Prometheus metrics (0 if absent)."""
    with urllib.request.urlopen(f"{instance_url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(?:{{{re.escape(labels)}}})? ([0-9.e+-]+)$", re.M)
    found = pattern.search(text)
    return float(found.group(1)) if found else 0.0


def open_transactions(three: Cluster) -> dict[str, float]:
    return {name: metric(p.url, "dbapi_open_transactions") for name, p in three.instances.items()}


def holder_of(three: Cluster, before: dict[str, float]) -> str:
    """The instance that has one more open transaction than *before*."""
    now = open_transactions(three)
    holding = [name for name in now if now[name] == before[name] + 1]
    assert len(holding) == 1, (before, now)
    return holding[0]


def test_reads_spread_and_transactions_stay_on_their_instance(
        three: Cluster, clients: list[DBSession], database: sa.Engine, ref: str) -> None:
    before = three.lb.requests()
    reader = three.session(clients)
    for _ in range(30):
        reader.scalar(sa.select(sa.func.count()).select_from(Entry))
    reader.rollback()
    reads = {name: n - before[name] for name, n in three.lb.requests().items()}
    assert sum(reads.values()) >= 30
    assert sum(1 for n in reads.values() if n) >= 2, reads  # round robin: not all on one instance

    committed_before = {name: metric(p.url, "dbapi_transactions_ended_total", 'outcome="committed"')
                        for name, p in three.instances.items()}
    failures: list[BaseException] = []

    def worker(w: int) -> None:
        session = three.session(clients, subject=f"worker-{w}")
        try:
            for t in range(5):
                key = f"{ref}-{w}-{t}"
                session.add(Entry(ref=key, amount=1))
                session.flush()  # begins the server transaction
                row = session.scalars(sa.select(Entry).where(Entry.ref == key).with_for_update()).one()
                try:
                    with session.begin_nested():
                        session.add(Entry(ref=key, amount=99))  # duplicate ref: the savepoint rolls back
                        session.flush()
                except sa.exc.IntegrityError:
                    pass
                row.amount += 1
                session.commit()
        except BaseException as exc:  # reported below, with its traceback
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if failures:
        raise failures[0]
    assert entries(database, ref) == sorted((f"{ref}-{w}-{t}", 2) for w in range(8) for t in range(5))
    committed = {name: metric(p.url, "dbapi_transactions_ended_total", 'outcome="committed"')
                 - committed_before[name] for name, p in three.instances.items()}
    assert sum(committed.values()) == 40  # each transaction committed once, on one instance
    assert sum(1 for n in committed.values() if n) >= 2, committed  # hashed over the instances
    for name, p in three.instances.items():
        assert metric(p.url, "dbapi_refusals_total", 'code="transaction_not_here"') == 0, name
        assert metric(p.url, "dbapi_open_transactions") == 0, name


def _taken_out(three: Cluster, name: str) -> None:
    three.lb.command(f"disable server dbapi/{name}")


@contextlib.contextmanager
def misrouted(three: Cluster, holder: str, txn_id: str) -> Iterator[None]:
    """The balancer's view changes under an open transaction: its instance gets weight 0 and its
    stick-table entry is gone (a restarted balancer, a replica without the entry), so its next
    request hashes to another instance."""
    three.lb.command(f"set weight dbapi/{holder} 0")
    three.lb.command(f"clear table dbapi key {txn_id}")
    try:
        yield
    finally:
        three.lb.command(f"set weight dbapi/{holder} 1")


def txn_of(session: DBSession) -> tuple[str, int]:
    raw = session.connection().connection.driver_connection
    return raw.txn, raw.seq  # type: ignore[union-attr]


def test_a_statement_that_reaches_another_instance_is_a_lost_connection(
        three: Cluster, clients: list[DBSession], database: sa.Engine, ref: str) -> None:
    session = three.session(clients)
    before = open_transactions(three)
    session.add(Entry(ref=f"{ref}-a", amount=1))
    session.flush()  # the server transaction is open on one instance
    holder = holder_of(three, before)
    with misrouted(three, holder, txn_of(session)[0]):
        with pytest.raises(sa.exc.OperationalError, match="not open on this DB-API instance") as lost:
            session.execute(sa.select(Entry.amount).where(Entry.ref == f"{ref}-a"))
        assert lost.value.connection_invalidated
        assert isinstance(lost.value.orig, DisconnectError)
        session.rollback()  # as after a lost database connection
        session.add(Entry(ref=f"{ref}-b", amount=2))
        session.commit()  # a new transaction, on an instance in service
    assert entries(database, ref) == [(f"{ref}-b", 2)]  # nothing of the lost transaction


def test_a_commit_that_reaches_another_instance_is_fenced(
        three: Cluster, clients: list[DBSession], database: sa.Engine, ref: str) -> None:
    """The other instance answers "not committed" from the outcome table - and makes it true: the
    instance that still holds the transaction can no longer commit it."""
    session = three.session(clients)
    before = open_transactions(three)
    session.add(Entry(ref=f"{ref}-a", amount=1))
    session.flush()
    txn_id, seq = txn_of(session)
    holder = holder_of(three, before)
    with misrouted(three, holder, txn_id):
        with pytest.raises(sa.exc.OperationalError, match="it was not committed") as lost:
            session.commit()
        assert lost.value.connection_invalidated
        assert not isinstance(lost.value, CommitOutcomeUnknownError)  # a definite answer
        # the holder is asked directly to commit the transaction it still holds: it refuses
        request = urllib.request.Request(
            f"{three.instances[holder].url}/dbapi/v1/transactions/{txn_id}/commit",
            data=orjson.dumps({"seq": seq + 1}), method="POST",
            headers={"Authorization": f"Bearer {three.token()}", "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        envelope = orjson.loads(refused.value.read())["error"]
        assert (refused.value.code, envelope["outcome"]) == (410, "rolled_back"), envelope
        assert open_transactions(three)[holder] == before[holder]  # it ended there, rolled back
    assert entries(database, ref) == []


def test_health_checks_take_a_stopped_instance_out(
        three: Cluster, clients: list[DBSession], database: sa.Engine, ref: str, tmp_path: Path) -> None:
    """An instance whose /ready fails leaves the rotation; work goes on through the others."""
    name = "dbapi3"
    _taken_out(three, name)
    try:
        states = three.lb.states()
        assert states[name].startswith("MAINT"), states
        session = three.session(clients)
        for i in range(6):
            session.add(Entry(ref=f"{ref}-{i}", amount=i))
            session.commit()
    finally:
        three.lb.command(f"enable server dbapi/{name}")
        three.lb.wait_until_up()
    assert len(entries(database, ref)) == 6


def test_transactions_stay_put_when_an_instance_rejoins(
        three: Cluster, clients: list[DBSession], database: sa.Engine, ref: str) -> None:
    """Consistent hashing alone would hand about a third of the open transactions' ids to an
    instance that comes back; the stick table keeps each where it began."""
    misrouted = {name: metric(p.url, "dbapi_refusals_total", 'code="transaction_not_here"')
                 for name, p in three.instances.items()}
    _taken_out(three, "dbapi3")
    try:
        sessions = [three.session(clients) for _ in range(12)]  # within one pool (15) even if all hash alike
        for i, session in enumerate(sessions):
            session.add(Entry(ref=f"{ref}-{i:02}", amount=i))
            session.flush()  # open on dbapi1 or dbapi2
    finally:
        three.lb.command("enable server dbapi/dbapi3")
        three.lb.wait_until_up()
    for session in sessions:
        session.add(Entry(ref=f"{ref}-{sessions.index(session):02}-more", amount=0))
        session.commit()  # every request still reaches the instance holding its transaction
    assert len(entries(database, ref)) == 24
    for name, p in three.instances.items():
        assert metric(p.url, "dbapi_refusals_total", 'code="transaction_not_here"') == misrouted[name], name


def test_sigterm_an_instance_its_open_transaction_finishes_through_the_balancer(
        pg_url: sa.URL, database: sa.Engine, clients: list[DBSession], ref: str,
        tmp_path: Path) -> None:
    """Graceful shutdown behind HAProxy: the draining instance's /ready fails and HAProxy takes it
    out of rotation (new work goes elsewhere), but the transaction it holds still reaches it
    (``option persist``), commits, and then the instance exits."""
    with cluster(pg_url, tmp_path, size=2, env={"DBAPI_SHUTDOWN_GRACE": "30"}) as two:
        session = two.session(clients)
        before = open_transactions(two)
        session.add(Entry(ref=f"{ref}-held", amount=1))
        session.flush()
        name = holder_of(two, before)
        draining = two.instances[name]
        draining.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not two.lb.states()[name].startswith("DOWN"):
            assert time.monotonic() < deadline, two.lb.states()
            time.sleep(0.05)
        other = two.session(clients)  # new work: the instance in service
        other.add(Entry(ref=f"{ref}-new", amount=2))
        other.commit()
        session.add(Entry(ref=f"{ref}-held-2", amount=3))
        session.commit()  # still reaches the draining instance, which holds the transaction
        assert draining.process.wait(timeout=30) == 0  # nothing open any more: it exits
        draining.stopped = True
    assert entries(database, ref) == [(f"{ref}-held", 1), (f"{ref}-held-2", 3), (f"{ref}-new", 2)]


def test_async_sessions_keep_their_transactions_on_one_instance(
        three: Cluster, database: sa.Engine, ref: str) -> None:
    """``AsyncDBSession`` (aiohttp) sends the routing header too: concurrent async transactions,
    several requests each, all commit through the balancer, hashed over the instances."""
    import asyncio

    from dbsession import AsyncDBSession

    committed_before = {name: metric(p.url, "dbapi_transactions_ended_total", 'outcome="committed"')
                        for name, p in three.instances.items()}

    async def one(i: int) -> None:
        session = AsyncDBSession(database_access_isolation=True, database_api_host=three.lb.url,
                                 token=three.token(f"async-{i}"))
        try:
            session.add(Entry(ref=f"{ref}-{i:02}", amount=i))
            await session.flush()
            row = (await session.scalars(sa.select(Entry).where(Entry.ref == f"{ref}-{i:02}").with_for_update())).one()
            row.amount += 100
            await session.commit()
        finally:
            await session.close()

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(16)))

    asyncio.run(main())
    assert entries(database, ref) == [(f"{ref}-{i:02}", i + 100) for i in range(16)]
    committed = {name: metric(p.url, "dbapi_transactions_ended_total", 'outcome="committed"') - committed_before[name]
                 for name, p in three.instances.items()}
    assert sum(committed.values()) == 16
    assert sum(1 for n in committed.values() if n) >= 2, committed


def test_a_streamed_result_outside_a_transaction_pages_from_its_instance(
        three: Cluster, clients: list[DBSession], database: sa.Engine, ref: str) -> None:
    """A streamed read holds a cursor on one instance: its page requests carry the key its first
    request carried, so round robin does not scatter them (they would find no cursor)."""
    with database.begin() as conn:
        conn.execute(sa.insert(Entry), [{"ref": f"{ref}-{i:03}", "amount": i} for i in range(60)])
    session = three.session(clients)
    for _ in range(3):  # several streams, so they start on different instances
        seen = [row.amount for row in session.scalars(
            sa.select(Entry).where(Entry.ref.startswith(ref)).order_by(Entry.ref).execution_options(yield_per=7))]
        assert seen == list(range(60))
        session.rollback()
