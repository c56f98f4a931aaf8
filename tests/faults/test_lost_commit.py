"""A commit (or statement) whose request or answer is lost: the client learns the true outcome.

A real TCP proxy sits between the client and a real ``dbapi-server serve`` process. The client's
transport retries; the server's transaction ids, sequence numbers and remembered outcomes must
turn every retry into the original answer: the work is applied exactly once and a committed
transaction is never reported as failed. When the DB-API stays out of reach after a commit's
answer was lost, the commit keeps asking until ``commit_retry_deadline``; past it, or when the
DB-API that answers no longer knows the transaction, the client says the outcome is unknown
(``CommitOutcomeUnknownError``) - never "failed".
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbsession import CommitOutcomeUnknownError, DBSession
from dbsession._dbapi import DisconnectError
from dbsession.auth import TokenSource
from dbsession.exceptions import ServerError
from dbsession.transport import ServerUnreachable, Transport

from .conftest import entries, isolated
from .models import Entry
from .processes import ServerProcess, token, wait_for
from .proxy import FaultProxy

pytestmark = pytest.mark.postgresql


@pytest.fixture(scope="module")
def server(database: sa.Engine, pg_url: sa.URL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with database.begin() as conn:  # commits of rows noted 'slow' take half a second
        conn.exec_driver_sql("""
            CREATE FUNCTION fault_slow_commit() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$""")
        conn.exec_driver_sql("""
            CREATE CONSTRAINT TRIGGER fault_slow_commit AFTER INSERT OR UPDATE ON fault_entries
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.note = 'slow')
            EXECUTE FUNCTION fault_slow_commit()""")
    server = ServerProcess.start(pg_url, tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[FaultProxy]:
    proxy = FaultProxy(("127.0.0.1", server.port))
    yield proxy
    proxy.close()


@pytest.fixture
def account(database: sa.Engine, ref: str) -> str:
    with database.begin() as conn:
        conn.execute(sa.insert(Entry).values(ref=ref, amount=100))
    return ref


def credit(session: DBSession, ref: str, amount: int, note: str = "") -> None:
    """Not idempotent on purpose: applied twice, the balance shows it."""
    session.execute(sa.update(Entry).where(Entry.ref == ref).values(amount=Entry.amount + amount, note=note))


@pytest.mark.parametrize("fault", ["request", "response"])
@pytest.mark.parametrize("target", ["/commit", "/execute"])
def test_lost_request_or_answer_is_applied_exactly_once(
        proxy: FaultProxy, clients: list[DBSession], database: sa.Engine, account: str,
        fault: str, target: str) -> None:
    session = isolated(clients, proxy.url)
    credit(session, account, 5)  # opens the server transaction
    proxy.arm(fault, target)
    credit(session, account, 7)
    session.commit()  # returns: the client was told the truth, "committed"
    assert [f for f, _ in proxy.fired] == [fault]
    assert target in proxy.fired[0][1]
    assert entries(database, account) == [(account, 112)]


def test_cut_while_the_server_is_still_committing(
        proxy: FaultProxy, clients: list[DBSession], database: sa.Engine, account: str,
        server: ServerProcess) -> None:
    """The retry arrives while the first commit is still running (it takes 0.5 s here)."""
    session = isolated(clients, proxy.url)
    credit(session, account, 5, note="slow")
    proxy.arm("cut", "/commit")
    session.commit()  # the retry waits for the running commit and answers its outcome
    assert proxy.fired and proxy.fired[0][0] == "cut"
    assert entries(database, account) == [(account, 105)]
    assert "Traceback" not in server.log.read_text()


def test_new_rows_of_a_lost_commit_exist_once(
        proxy: FaultProxy, clients: list[DBSession], database: sa.Engine, ref: str) -> None:
    session = isolated(clients, proxy.url)
    session.add_all([Entry(ref=f"{ref}-a", amount=1), Entry(ref=f"{ref}-b", amount=2)])
    proxy.arm("response", "/commit")
    session.commit()
    assert entries(database, ref) == [(f"{ref}-a", 1), (f"{ref}-b", 2)]
    assert session.get(Entry, session.scalars(sa.select(Entry.id).where(Entry.ref == f"{ref}-a")).one()).amount == 1


def modify(session: DBSession, ref: str, amount: int, note: str = "") -> None:
    """get + modify: the commit's flush sends this UPDATE with the COMMIT (``POST /batch``)."""
    entry = session.scalars(sa.select(Entry).where(Entry.ref == ref)).one()
    entry.amount += amount
    entry.note = note


@pytest.mark.parametrize("fault", ["request", "response", "cut"])
def test_a_lost_committing_batch_is_applied_exactly_once(
        proxy: FaultProxy, clients: list[DBSession], database: sa.Engine, account: str, fault: str) -> None:
    """Lost on the way, lost on the way back, or cut while the COMMIT still runs (0.5 s): the retry
    (same sequence number) is answered from memory or from the remembered outcome."""
    session = isolated(clients, proxy.url)
    modify(session, account, 5, note="slow" if fault == "cut" else "")
    proxy.arm(fault, "/batch")
    session.commit()  # returns: committed, once
    assert [f for f, _ in proxy.fired] == [fault]
    assert len(forwarded(proxy, "/transactions/")) == 0  # the COMMIT travelled in the batch
    assert entries(database, account) == [(account, 105)]


def test_a_committing_batch_whose_answer_stays_lost_raises_outcome_unknown_from_the_commit(
        proxy: FaultProxy, clients: list[DBSession], database: sa.Engine, account: str) -> None:
    """As a lost COMMIT: the flush succeeded, ``commit()`` says the outcome is unknown (it committed)."""
    session = isolated(clients, proxy.url, commit_retry_deadline=SHORT_DEADLINE)
    modify(session, account, 5)
    proxy.arm("response", "/batch", then_down=math.inf)
    started = time.monotonic()
    with pytest.raises(CommitOutcomeUnknownError) as unknown:
        session.commit()
    assert SHORT_DEADLINE <= time.monotonic() - started < SHORT_DEADLINE + 5
    assert "may have succeeded" in str(unknown.value)
    proxy.up()
    assert entries(database, account) == [(account, 105)]
    session.rollback()
    modify(session, account, 1)  # the same session works again
    session.commit()
    assert entries(database, account) == [(account, 106)]


# -- the DB-API out of reach for longer than the ordinary retries -------------------------------
OUTAGE = 2.0  # longer than the transport's ordinary retries: 4 attempts over about 1 s
SHORT_DEADLINE = 1.5


def forwarded(proxy: FaultProxy, path: str) -> list[str]:
    """The requests for *path* that reached the DB-API."""
    return [line for line in proxy.forwarded if path in line]


def txn_of(request_line: str) -> str:
    found = re.search(r"/transactions/([\w-]+)/commit", request_line)
    assert found, request_line
    return found.group(1)


@pytest.mark.parametrize("down_as", ["refuse", "503"])
def test_commit_answer_lost_then_the_api_unreachable_for_seconds(
        proxy: FaultProxy, clients: list[DBSession], database: sa.Engine, account: str, down_as: str) -> None:
    """The committed answer is lost, then connections are refused (or a load balancer answers 503)
    for longer than the ordinary retries: the commit keeps asking and learns "committed"."""
    session = isolated(clients, proxy.url)  # the default deadline, 30 s
    credit(session, account, 5)
    credit(session, account, 7)
    proxy.arm("response", "/commit", then_down=OUTAGE, down_as=down_as)
    started = time.monotonic()
    session.commit()  # returns normally: the client was told the truth, "committed"
    assert time.monotonic() - started >= OUTAGE  # its answer came from after the outage
    assert len(forwarded(proxy, "/commit")) == 2  # the lost one and the retry that learned the outcome
    assert entries(database, account) == [(account, 112)]  # once, not twice


@pytest.mark.parametrize(("fault", "configured"), [("response", "argument"), ("request", "url")])
def test_commit_outcome_unknown_past_the_deadline(
        proxy: FaultProxy, clients: list[DBSession], database: sa.Engine, account: str,
        fault: str, configured: str) -> None:
    """The DB-API stays out of reach past ``commit_retry_deadline``: the client cannot learn the
    outcome and says so - "may have succeeded", with the transaction id. Whether the answer was
    lost (it committed) or the request (it did not) cannot be told apart from the client: both are
    "unknown", and the database shows why that is the only true report."""
    engine = None
    if configured == "argument":
        session = isolated(clients, proxy.url, commit_retry_deadline=SHORT_DEADLINE)
    else:  # ?commit_retry_deadline= on the engine URL
        engine = sa.create_engine(f"dbsession://127.0.0.1:{proxy.port}?commit_retry_deadline={SHORT_DEADLINE}",
                                  connect_args={"token": token()})
        session = isolated(clients, proxy.url, bind=engine)
    try:
        credit(session, account, 5)
        proxy.arm(fault, "/commit", then_down=math.inf)
        started = time.monotonic()
        with pytest.raises(CommitOutcomeUnknownError) as unknown:
            session.commit()
        elapsed = time.monotonic() - started

        txn = txn_of(proxy.fired[0][1])
        error = unknown.value
        assert error.txn_id == txn
        assert f"The commit of transaction {txn} may have succeeded" in str(error)
        assert "check whether its changes are in the database" in str(error)
        assert "commit_retry_deadline" in str(error)
        # what a direct session raises for a connection lost at COMMIT, so existing handlers catch it
        assert isinstance(error, sa.exc.OperationalError) and error.connection_invalidated
        assert isinstance(error.orig, DisconnectError)
        assert SHORT_DEADLINE <= elapsed < SHORT_DEADLINE + 10
        assert entries(database, account) == [(account, 105 if fault == "response" else 100)]

        proxy.up()  # the same session works again after the rollback the ORM asks for
        session.rollback()
        session.add(Entry(ref=f"{account}-after", amount=1))
        session.commit()
        assert entries(database, account)[1:] == [(f"{account}-after", 1)]
    finally:
        if engine is not None:
            session.close()
            engine.dispose()


@pytest.mark.parametrize("outcomes", ["table", "memory"])
def test_the_api_that_committed_is_gone_before_answering(
        database: sa.Engine, pg_url: sa.URL, workdir: Path, clients: list[DBSession], account: str,
        outcomes: str) -> None:
    """The DB-API restarts between committing and answering, so the outcome it remembered in
    memory is gone. With the outcome table (the default on PostgreSQL) the new process reads it
    there and the commit returns: "committed", once. With outcomes in memory only
    (``DBAPI_COMMIT_OUTCOMES=memory``) the new process answers "unknown transaction" at once: the
    client reports the outcome as unknown, not as a failure - it did commit - and does not wait
    out its deadline."""
    env = {"DBAPI_COMMIT_OUTCOMES": outcomes}
    server = ServerProcess.start(pg_url, workdir, env=env)
    replacement: list[ServerProcess] = []
    proxy = FaultProxy(("127.0.0.1", server.port))

    def restart_the_api() -> None:
        wait_for(lambda: proxy.is_down, "the commit's answer to be lost")
        server.kill()
        replacement.append(ServerProcess.start(pg_url, workdir, port=server.port, env=env))
        proxy.up()

    try:
        session = isolated(clients, proxy.url, commit_retry_deadline=600)
        credit(session, account, 5)
        proxy.arm("response", "/commit", then_down=math.inf)
        with ThreadPoolExecutor(1) as pool:
            restarted = pool.submit(restart_the_api)
            if outcomes == "table":
                session.commit()  # the truth, from the table: committed
            else:
                with pytest.raises(CommitOutcomeUnknownError, match="unknown to this DB-API instance") as unknown:
                    session.commit()
                assert unknown.value.txn_id == txn_of(proxy.fired[0][1])
            restarted.result()
        assert len(forwarded(proxy, "/commit")) == 2
        assert entries(database, account) == [(account, 105)]  # it had committed, once
    finally:
        proxy.close()
        for process in [server, *replacement]:
            process.kill()


def test_a_commit_that_never_reached_the_api_fails_at_once(
        proxy: FaultProxy, clients: list[DBSession], database: sa.Engine, account: str) -> None:
    """Connections refused from the start: no attempt reached the DB-API, so the outcome is known -
    nothing committed. A plain disconnect after the ordinary retries, not a 30 s wait."""
    session = isolated(clients, proxy.url)
    credit(session, account, 5)
    proxy.down()
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError, match="Cannot reach the DB-API .* after 4 attempts") as failed:
        session.commit()
    assert not isinstance(failed.value, CommitOutcomeUnknownError)
    assert failed.value.connection_invalidated
    assert time.monotonic() - started < 10
    assert forwarded(proxy, "/commit") == []
    assert entries(database, account) == [(account, 100)]


@pytest.mark.parametrize("in_transaction", [False, True], ids=["one-shot read", "in a transaction"])
def test_a_statement_does_not_wait_for_the_commit_deadline(
        proxy: FaultProxy, clients: list[DBSession], account: str, in_transaction: bool) -> None:
    """Only a commit waits: a statement whose answer is lost gets the ordinary retries, then a
    disconnect (nothing it did can be committed any more)."""
    session = isolated(clients, proxy.url)
    if in_transaction:
        credit(session, account, 5)
    proxy.arm("response", "/execute", then_down=math.inf)
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError, match="Cannot reach the DB-API .* after 4 attempts") as failed:
        session.scalar(sa.select(Entry.amount).where(Entry.ref == account))
    assert not isinstance(failed.value, CommitOutcomeUnknownError)
    assert time.monotonic() - started < 10
    assert len(proxy.fired) == 1 and len(forwarded(proxy, "/execute")) == 1 + in_transaction


def test_a_request_that_is_not_replay_safe_is_not_retried(proxy: FaultProxy, server: ServerProcess) -> None:
    """The client sends every request replay-safe today (reads; transactional requests, which the
    server de-duplicates); the transport still never repeats one that is not after it may have run,
    whatever its deadline, nor a proxy's 503 for it."""
    transport = Transport(proxy.url, TokenSource(token()))
    path = f"/transactions/{uuid.uuid4().hex}/rollback"  # harmless: an unknown transaction is "rolled back"
    try:
        proxy.arm("response", "/rollback")
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match="not retried because it may have run"):
            transport.post(path, {"seq": 1}, replay_safe=False, deadline=30)
        assert time.monotonic() - started < 5
        assert len(forwarded(proxy, "/rollback")) == 1

        proxy.arm("response", "/rollback")  # the same request, replay-safe: asked again
        assert transport.post(path, {"seq": 1}, replay_safe=True) == {"outcome": "rolled_back"}
        assert len(forwarded(proxy, "/rollback")) == 3

        proxy.down(down_as="503")
        with pytest.raises(ServerError, match="HTTP 503 without an error envelope"):
            transport.post(path, {"seq": 1}, replay_safe=False)
        assert len(forwarded(proxy, "/rollback")) == 3
    finally:
        transport.close()
