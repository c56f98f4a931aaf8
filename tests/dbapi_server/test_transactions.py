"""Server-side interactive transactions on PostgreSQL: begin, replay, order, commit safety, expiry."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.sql.expression import RollbackToSavepointClause, SavepointClause

from dbsession import guard
from query_translation import decode_rows
from tests.servers import RunningServer, running_dbapi

from ._support import RawApi, Txn, count_rows

pytestmark = pytest.mark.postgresql

metadata = sa.MetaData()
accounts = sa.Table(
    "accounts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(60), nullable=False, unique=True),
    sa.Column("balance", sa.Integer, nullable=False, server_default="0"),
)

DATABASE = "postgresql"


@pytest.fixture
def name() -> str:
    """A row name no other test uses."""
    return f"acct-{uuid.uuid4().hex[:8]}"


def named(name: str) -> sa.ColumnElement[bool]:
    return accounts.c.name == name


def insert(name: str, balance: int = 0) -> sa.Insert:
    return sa.insert(accounts).values(name=name, balance=balance)


def count_in(txn: Txn, name: str) -> int:
    reply = txn.execute(sa.select(sa.func.count()).select_from(accounts).where(named(name)))
    assert reply.status == 200, reply.body
    return int(decode_rows(reply.json["rows"])[0][0])


# -- begin ----------------------------------------------------------------------------------------
def test_first_write_begins_the_transaction(api: RawApi, engine: sa.Engine, server: RunningServer,
                                            name: str) -> None:
    open_before = server.state.transactions.open_count
    txn = api.transaction()
    reply = txn.execute(insert(name, 5))
    assert reply.status == 200, reply.body
    assert reply.json["rowcount"] == 1
    assert server.state.transactions.open_count == open_before + 1
    assert server.state.transactions.get(txn.id, "test-worker").last_seq == 1
    assert count_in(txn, name) == 1  # the transaction sees its own write...
    assert count_rows(engine, accounts, named(name)) == 0  # ...nobody else does yet
    assert api.execute(sa.select(accounts.c.id).where(named(name))).json["rows"] == []
    assert txn.commit().json == {"outcome": "committed"}
    assert server.state.transactions.open_count == open_before
    assert count_rows(engine, accounts, named(name), accounts.c.balance == 5) == 1


def test_statement_for_a_transaction_that_was_never_begun(api: RawApi) -> None:
    txn = api.transaction()
    txn.begun = True  # pretend: send seq 1 without "begin"
    reply = txn.execute(sa.select(accounts.c.id))
    assert (reply.status, reply.error["code"]) == (410, "transaction_not_here")


def test_returning_rows_come_back_in_the_transaction(api: RawApi, name: str) -> None:
    txn = api.transaction()
    reply = txn.execute(insert(name, 3).returning(accounts.c.id, accounts.c.balance))
    assert reply.status == 200, reply.body
    [(new_id, balance)] = decode_rows(reply.json["rows"])
    assert isinstance(new_id, int) and balance == 3
    assert txn.rollback().json == {"outcome": "rolled_back"}


# -- replay and order -----------------------------------------------------------------------------
def test_retried_request_gets_the_same_answer_and_runs_once(api: RawApi, engine: sa.Engine, name: str) -> None:
    txn = api.transaction()
    body = txn.next_payload(insert(name).returning(accounts.c.id))
    first = api.post("/execute", body)
    retry = api.post("/execute", body)  # the answer to the first was "lost"
    assert first.status == retry.status == 200
    assert retry.body == first.body
    assert count_in(txn, name) == 1
    assert txn.commit().json == {"outcome": "committed"}
    assert count_rows(engine, accounts, named(name)) == 1


def test_out_of_order_requests_are_refused(api: RawApi, engine: sa.Engine, name: str) -> None:
    txn = api.transaction()
    assert txn.execute(insert(name)).status == 200  # seq 1
    txn.seq += 1  # skip seq 2
    ahead = txn.execute(sa.update(accounts).where(named(name)).values(balance=99))  # seq 3
    assert (ahead.status, ahead.error["code"]) == (409, "out_of_order")
    assert "expected 2" in ahead.error["message"]
    txn.seq = 1
    assert txn.execute(sa.update(accounts).where(named(name)).values(balance=7)).status == 200  # seq 2
    stale = api.post("/execute", {**api.payload(sa.select(accounts.c.id)), "txn": txn.id, "seq": 1})
    assert (stale.status, stale.error["code"]) == (409, "out_of_order")
    assert txn.commit().json == {"outcome": "committed"}
    assert count_rows(engine, accounts, named(name), accounts.c.balance == 7) == 1


# -- commit and rollback --------------------------------------------------------------------------
def test_commit_is_safe_to_repeat(api: RawApi, engine: sa.Engine, name: str) -> None:
    txn = api.transaction()
    assert txn.execute(insert(name)).status == 200
    assert txn.commit().json == {"outcome": "committed"}
    assert txn.commit().json == {"outcome": "committed"}  # the first answer was "lost"
    txn.seq -= 1
    assert txn.commit().json == {"outcome": "committed"}  # an exact retry, same number
    assert txn.rollback().json == {"outcome": "committed"}  # never a false "rolled back"
    assert count_rows(engine, accounts, named(name)) == 1


def test_rollback_discards(api: RawApi, engine: sa.Engine, name: str) -> None:
    txn = api.transaction()
    assert txn.execute(insert(name)).status == 200
    assert txn.rollback().json == {"outcome": "rolled_back"}
    assert txn.rollback().json == {"outcome": "rolled_back"}
    late_commit = txn.commit()
    assert (late_commit.status, late_commit.error["code"]) == (410, "transaction_gone")
    assert late_commit.error["outcome"] == "rolled_back"
    assert count_rows(engine, accounts, named(name)) == 0


def test_committing_an_unknown_transaction(api: RawApi) -> None:
    """Settled from the outcome table: no row, so it is fenced as not committed - a definite answer."""
    reply = api.post(f"/transactions/{uuid.uuid4().hex}/commit", {"seq": 1})
    assert (reply.status, reply.error["code"], reply.error["outcome"]) == (410, "transaction_not_here", "rolled_back")


@pytest.mark.parametrize("txn_id", ["x" * 129, "a%20b", "%C3%A9t%C3%A9", "a.b"])
def test_a_malformed_transaction_id_is_refused_before_the_outcome_table(api: RawApi, txn_id: str) -> None:
    """The outcome table keys ids of 1-128 letters, digits, '-', '_' exactly; anything else (the
    worker fuzzer's mutations) made MariaDB's INSERT IGNORE store another key - a 500."""
    for verb in ("commit", "rollback"):
        reply = api.post(f"/transactions/{txn_id}/{verb}", {"seq": 1})
        assert (reply.status, reply.error["code"]) == (400, "malformed_request")


def test_rolling_back_an_unknown_transaction_is_harmless(api: RawApi) -> None:
    """Nothing of an unknown transaction can remain, so rolling it back cannot fail."""
    reply = api.post(f"/transactions/{uuid.uuid4().hex}/rollback", {"seq": 1})
    assert reply.json == {"outcome": "rolled_back"}


def test_an_ended_transaction_id_cannot_begin_again(api: RawApi, engine: sa.Engine, name: str) -> None:
    txn = api.transaction()
    assert txn.execute(insert(name)).status == 200
    assert txn.commit().status == 200
    again = Txn(api, txn.id)
    reply = again.execute(insert(name + "-again"))
    assert (reply.status, reply.error["code"]) == (409, "transaction_conflict")
    assert count_rows(engine, accounts, named(name + "-again")) == 0


def test_savepoint_rollback_keeps_the_outer_work(api: RawApi, engine: sa.Engine, name: str) -> None:
    txn = api.transaction()
    assert txn.execute(insert(name)).status == 200
    assert txn.execute(SavepointClause("sp_1")).status == 200
    assert txn.execute(insert(name + "-inner")).status == 200
    assert txn.execute(RollbackToSavepointClause("sp_1")).status == 200
    assert txn.commit().json == {"outcome": "committed"}
    assert count_rows(engine, accounts, named(name)) == 1
    assert count_rows(engine, accounts, named(name + "-inner")) == 0


def test_database_error_leaves_the_transaction_to_the_client(api: RawApi, engine: sa.Engine, name: str) -> None:
    txn = api.transaction()
    assert txn.execute(insert(name)).status == 200
    duplicate = txn.execute(insert(name))
    assert duplicate.status == 422
    assert duplicate.error["dbapi_class"] == "IntegrityError"
    assert duplicate.error["sqlstate"] == "23505"
    assert duplicate.error["txn_state"] == "open"
    aborted = txn.execute(sa.select(accounts.c.id))  # PostgreSQL: the transaction is aborted now
    assert aborted.status == 422
    assert aborted.error["sqlstate"] == "25P02"
    assert txn.rollback().json == {"outcome": "rolled_back"}
    assert count_rows(engine, accounts, named(name)) == 0


# -- locks ----------------------------------------------------------------------------------------
def test_row_lock_is_held_until_commit(api: RawApi, engine: sa.Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(insert(name))
    locked = sa.select(accounts.c.id).where(named(name))
    holder, contender = api.transaction(), api.transaction()
    assert holder.execute(locked.with_for_update()).status == 200
    refused = contender.execute(locked.with_for_update(nowait=True))
    assert refused.status == 422
    assert (refused.error["dbapi_class"], refused.error["sqlstate"]) == ("OperationalError", "55P03")
    assert contender.rollback().json == {"outcome": "rolled_back"}
    assert holder.commit().json == {"outcome": "committed"}
    after = api.transaction()
    assert after.execute(locked.with_for_update(nowait=True)).status == 200
    assert after.rollback().status == 200


# -- ownership ------------------------------------------------------------------------------------
def test_another_caller_cannot_use_the_transaction(api: RawApi, engine: sa.Engine, server: RunningServer,
                                                   name: str) -> None:
    txn = api.transaction()
    assert txn.execute(insert(name)).status == 200
    intruder = server.mint("intruder")
    body = {**api.payload(sa.delete(accounts).where(named(name))), "txn": txn.id, "seq": 2}
    for reply in (api.post("/execute", body, token=intruder),
                  api.post("/execute", {**body, "begin": True}, token=intruder),
                  api.post(f"/transactions/{txn.id}/commit", {"seq": 2}, token=intruder),
                  api.post(f"/transactions/{txn.id}/rollback", {"seq": 2}, token=intruder)):
        assert (reply.status, reply.error["code"]) == (403, "forbidden_transaction")
    assert count_in(txn, name) == 1  # the owner's transaction is untouched, its numbering too
    assert txn.commit().json == {"outcome": "committed"}
    assert count_rows(engine, accounts, named(name)) == 1


def test_another_callers_commit_leaves_the_owners_cursors_open(api: RawApi, server: RunningServer,
                                                               name: str) -> None:
    """Issue 12, finding 4: the refused stranger's commit used to close the owner's cursors first."""
    txn = api.transaction()
    for i in range(3):
        assert txn.execute(insert(f"{name}-{i}")).status == 200
    streamed = txn.execute(sa.select(accounts.c.name).where(accounts.c.name.like(f"{name}-%"))
                           .order_by(accounts.c.name), stream=1)
    assert streamed.status == 200, streamed.body
    cursor = streamed.json["cursor"]
    intruder = server.mint("intruder")
    for verb in ("commit", "rollback"):
        reply = api.post(f"/transactions/{txn.id}/{verb}", {}, token=intruder)
        assert (reply.status, reply.error["code"]) == (403, "forbidden_transaction")
    refused = api.post(f"/cursors/{cursor}/fetch", {"page": 1}, token=intruder)
    assert (refused.status, refused.error["code"]) == (403, "forbidden_cursor")
    page = api.post(f"/cursors/{cursor}/fetch", {"page": 1})
    assert page.status == 200, page.body  # was 410 cursor_gone
    assert decode_rows(page.json["rows"]) == [(f"{name}-1",)]
    assert txn.commit().json == {"outcome": "committed"}
    gone = api.post(f"/cursors/{cursor}/fetch", {"page": 2})  # the owner's commit does end them
    assert (gone.status, gone.error["code"]) == (410, "cursor_gone")


# -- expiry ---------------------------------------------------------------------------------------
def test_idle_transaction_is_rolled_back_and_its_lock_released(engine: sa.Engine, name: str,
                                                               raw_api: Callable[..., RawApi]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(name + "-locked"))
    with running_dbapi(engine, metadata, idle_timeout=1.0) as impatient:  # ample between two requests
        api = raw_api(impatient, secrets=[engine.url.render_as_string()])
        txn = api.transaction()
        assert txn.execute(insert(name)).status == 200
        locked = sa.select(accounts.c.id).where(named(name + "-locked")).with_for_update()
        assert txn.execute(locked).status == 200
        deadline = time.monotonic() + 15
        while impatient.state.transactions.open_count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert impatient.state.transactions.open_count == 0

        late = txn.execute(sa.select(accounts.c.id))
        assert (late.status, late.error["code"]) == (410, "transaction_gone")
        assert "idle" in late.error["message"]
        commit = txn.commit()
        assert (commit.status, commit.error["code"]) == (410, "transaction_gone")
        assert commit.error["outcome"] == "expired"

        other = api.transaction()
        assert other.execute(locked.with_for_update(nowait=True)).status == 200  # the lock is free
        assert other.rollback().status == 200
    assert count_rows(engine, accounts, named(name)) == 0


# -- races (the manager directly, made deterministic) ---------------------------------------------
def test_commit_retried_while_the_first_is_committing_answers_committed(engine: sa.Engine, name: str) -> None:
    """A retry that arrives mid-commit waits for it: never 'unknown', never a second commit."""
    import threading

    from dbapi_server import TransactionManager

    manager = TransactionManager(engine)
    txn, _ = manager.begin("racing-commit", "owner")
    txn.connection.execute(insert(name))
    committing, proceed = threading.Event(), threading.Event()

    def slow_commit(conn: sa.Connection) -> None:
        committing.set()
        proceed.wait(10)

    sa.event.listen(txn.connection, "commit", slow_commit)
    outcomes: list[str] = []
    first = threading.Thread(target=lambda: outcomes.append(manager.finish("racing-commit", "commit", "owner")))
    first.start()
    assert committing.wait(10)
    retry = threading.Thread(target=lambda: outcomes.append(manager.finish("racing-commit", "commit", "owner")))
    retry.start()
    retry.join(0.2)
    assert retry.is_alive()  # waiting for the running commit, not answering "unknown"
    proceed.set()
    first.join(10)
    retry.join(10)
    assert outcomes == ["committed", "committed"]
    assert count_rows(engine, accounts, named(name)) == 1
    manager.close()


def test_reaper_spares_a_transaction_whose_long_request_just_finished(engine: sa.Engine) -> None:
    """Idle by the reaper's first look, but a request (a long lock wait) ended just before it locks."""
    import threading

    from dbapi_server import TransactionManager

    manager = TransactionManager(engine, idle_timeout=1.0)
    txn, _ = manager.begin("long-request", "owner")
    txn.last_used -= 5  # the request started 5 s ago and has been running since

    class FinishingRequest:
        """The transaction's lock, released by a request that has just recorded its use."""

        def __init__(self) -> None:
            self.inner = threading.Lock()

        def acquire(self, blocking: bool = True) -> bool:
            txn.last_used = time.monotonic()
            return self.inner.acquire(blocking)

        def release(self) -> None:
            self.inner.release()

        def __enter__(self) -> None:
            self.inner.acquire()

        def __exit__(self, *exc: object) -> None:
            self.inner.release()

    txn.lock = FinishingRequest()  # type: ignore[assignment]
    assert manager.reap() == 0
    assert manager.open_count == 1
    assert manager.finish("long-request", "rollback", "owner") == "rolled_back"
    manager.close()


# -- a full pool ----------------------------------------------------------------------------------
def test_a_full_pool_answers_busy_and_never_stops_the_other_transactions(engine: sa.Engine, name: str,
                                                                        raw_api: Callable[..., RawApi]) -> None:
    # found by tests/security/test_fuzz.py: a begin waiting for a pooled connection held the
    # transaction manager's lock, so the rollback that would free one waited too (30 s), and the
    # pool's timeout then answered 500
    small = guard.exempt(sa.create_engine(engine.url, pool_size=1, max_overflow=0, pool_timeout=2))
    try:
        with running_dbapi(small, metadata) as server:
            api = raw_api(server, secrets=[engine.url.render_as_string()])
            first, waiting = api.transaction(), api.transaction()
            assert first.execute(insert(name)).status == 200
            with ThreadPoolExecutor(1) as pool:
                answer = pool.submit(waiting.execute, insert(name + "-2"))
                time.sleep(0.3)  # the second begin now waits for the only connection
                started = time.monotonic()
                assert first.rollback().json == {"outcome": "rolled_back"}
                assert time.monotonic() - started < 2
                assert answer.result().status == 200  # it got the connection the rollback freed
            busy = api.transaction().execute(insert(name + "-3"))  # while `waiting` holds it
            assert (busy.status, busy.error["code"], busy.error["retryable"]) == (503, "database_busy", True)
            assert api.get("/health").json == {"status": "unhealthy", "database": "busy"}
            assert waiting.rollback().status == 200
            assert api.get("/health").status == 200
    finally:
        small.dispose()
