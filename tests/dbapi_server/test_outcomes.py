"""Commit outcomes in the database (``dbapi_server.outcomes``): written with the commit, read and
fenced by any instance, pruned; on PostgreSQL, MariaDB and SQLite.

Two ``TransactionManager`` objects on one database stand for two DB-API instances (the instances
behind a real load balancer are in ``tests/service``): what one commits, the other answers; what
the other fences, the first can no longer commit.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from dbapi_server import TransactionManager
from dbapi_server.errors import APIError
from dbapi_server.outcomes import CommitOutcomes
from dbsession import guard
from tests.servers import running_dbapi

from ._support import RawApi

metadata = sa.MetaData()
ledger = sa.Table("outcome_ledger", metadata, sa.Column("ref", sa.String(40), primary_key=True))


def _engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, kind: str) -> Iterator[sa.Engine]:
    if kind == "sqlite":
        url: str | sa.URL = f"sqlite:///{tmp_path_factory.mktemp('outcomes') / 'db.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url" if kind == "postgresql" else "mariadb_url")
    engine = guard.exempt(sa.create_engine(url, pool_pre_ping=True))
    metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    yield from _engine(request, tmp_path_factory, request.param)


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def networked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """The databases several instances share (SQLite keeps outcomes in memory by default)."""
    yield from _engine(request, tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def pg(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    yield from _engine(request, tmp_path_factory, "postgresql")


def instance(engine: sa.Engine) -> TransactionManager:
    """One "DB-API instance": its own memory, the database's outcome table."""
    outcomes = CommitOutcomes(engine, settle_timeout=3.0)
    outcomes.create()
    return TransactionManager(engine, outcomes=outcomes)


@pytest.fixture
def two(engine: sa.Engine) -> Iterator[tuple[TransactionManager, TransactionManager]]:
    a, b = instance(engine), instance(engine)
    yield a, b
    a.close()
    b.close()


def refs(engine: sa.Engine, prefix: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(ledger.c.ref).where(ledger.c.ref.startswith(prefix)).order_by(ledger.c.ref)))


def outcome_row(engine: sa.Engine, txn_id: str) -> tuple[str, ...] | None:
    table = CommitOutcomes(engine).table
    with engine.connect() as conn:
        row = conn.execute(sa.select(table.c.outcome, table.c.owner).where(table.c.txn_id == txn_id)).first()
    return tuple(row) if row else None


def new_id() -> str:
    return uuid.uuid4().hex


def test_the_outcome_row_commits_with_the_work(engine: sa.Engine, two: tuple[TransactionManager, ...]) -> None:
    a, _ = two
    committed, rolled_back, prefix = new_id(), new_id(), new_id()[:8]
    txn, _ = a.begin(committed, "owner")
    txn.connection.execute(sa.insert(ledger).values(ref=f"{prefix}-1"))
    assert a.finish(committed, "commit", "owner", seq=1) == "committed"
    txn, _ = a.begin(rolled_back, "owner")
    txn.connection.execute(sa.insert(ledger).values(ref=f"{prefix}-2"))
    assert a.finish(rolled_back, "rollback", "owner") == "rolled_back"
    assert refs(engine, prefix) == [f"{prefix}-1"]
    assert outcome_row(engine, committed)[0] == "committed"  # type: ignore[index]
    assert outcome_row(engine, committed)[1] != "owner"  # type: ignore[index]  # a hash, not the subject
    assert outcome_row(engine, rolled_back) is None  # a rollback writes nothing


def test_committing_an_aborted_transaction_rolls_back_as_directly(pg: sa.Engine) -> None:
    """PostgreSQL: a failed statement aborts the transaction, and COMMIT then rolls back without an
    error (psycopg raises nothing). The outcome row is not attempted (it would fail as "in failed
    transaction"), so the answer is as a direct connection's, and no row says "committed"."""
    a = instance(pg)
    txn_id, prefix = new_id(), new_id()[:8]
    txn, _ = a.begin(txn_id, "owner")
    txn.connection.execute(sa.insert(ledger).values(ref=prefix))
    with pytest.raises(sa.exc.DataError):
        txn.connection.exec_driver_sql("SELECT 1/0")
    assert a.finish(txn_id, "commit", "owner", seq=1) == "committed"  # what psycopg reports directly
    assert refs(pg, prefix) == []
    assert outcome_row(pg, txn_id) is None
    a.close()


def test_another_instance_answers_a_retried_commit(engine: sa.Engine, two: tuple[TransactionManager, ...]) -> None:
    a, b = two
    txn_id, prefix = new_id(), new_id()[:8]
    txn, _ = a.begin(txn_id, "owner")
    txn.connection.execute(sa.insert(ledger).values(ref=prefix))
    assert a.finish(txn_id, "commit", "owner", seq=1) == "committed"
    assert b.finish(txn_id, "commit", "owner", seq=1) == "committed"  # B never held it
    assert b.finish(txn_id, "commit", "owner", seq=1) == "committed"  # and remembers it
    with pytest.raises(APIError) as other:
        instance(engine).finish(txn_id, "commit", "someone else", seq=1)
    assert (other.value.status, other.value.code) == (403, "forbidden_transaction")
    assert refs(engine, prefix) == [prefix]


def test_an_unknown_transaction_is_fenced_and_can_no_longer_commit(
        engine: sa.Engine, two: tuple[TransactionManager, ...]) -> None:
    """B is asked to commit a transaction A still holds (a misrouted commit): B answers "not
    committed" and makes it so - A's commit of it fails on the outcome row."""
    a, b = two
    txn_id, prefix = new_id(), new_id()[:8]
    txn, _ = a.begin(txn_id, "owner")
    txn.connection.execute(sa.insert(ledger).values(ref=prefix))
    with pytest.raises(APIError) as fenced:
        if engine.dialect.name == "sqlite":
            _fence_beside(a, b, txn_id)
        else:
            b.finish(txn_id, "commit", "owner", seq=2)
    assert (fenced.value.status, fenced.value.code, fenced.value.extra["outcome"]) == (
        410, "transaction_not_here", "rolled_back")
    with pytest.raises(APIError) as refused:
        a.finish(txn_id, "commit", "owner", seq=1)
    assert (refused.value.status, refused.value.extra["outcome"]) == (410, "rolled_back")
    assert a.open_count == 0
    assert refs(engine, prefix) == []
    assert outcome_row(engine, txn_id)[0] == "rolled_back"  # type: ignore[index]


def _fence_beside(a: TransactionManager, b: TransactionManager, txn_id: str) -> str:
    """SQLite has one writer at a time: B's fence would wait for A's write lock (and answer 503
    ``commit_in_doubt`` after ``settle_timeout``), so A's transaction gives up its lock and begins
    again - still open, still listed - before B is asked."""
    txn = a._open[txn_id]
    txn.connection.rollback()  # releases SQLite's write lock; A still lists it as open
    txn.root = txn.connection.begin()
    return b.finish(txn_id, "commit", "owner", seq=2)


@pytest.mark.parametrize("commits", [True, False], ids=["commits", "rolls back"])
def test_the_fence_waits_for_a_commit_in_flight(networked: sa.Engine, commits: bool) -> None:
    """A has written its row and is still committing (the killed instance's last bytes, a slow
    commit) when B is asked: B's fence waits on the row and answers what A's COMMIT decided.
    (SQLite has one writer at a time: no commit is in flight beside another writer.)"""
    engine = networked
    a, b = instance(engine), instance(engine)
    txn_id, prefix = new_id(), new_id()[:8]
    txn, _ = a.begin(txn_id, "owner")
    txn.connection.execute(sa.insert(ledger).values(ref=prefix))
    assert a.outcomes is not None
    a.outcomes.record(txn.connection, txn_id, "owner")  # the row, not yet committed
    answers: list[object] = []

    def ask_b() -> None:
        try:
            answers.append(b.finish(txn_id, "commit", "owner", seq=2))
        except APIError as exc:
            answers.append(exc.extra.get("outcome"))

    asking = threading.Thread(target=ask_b)
    asking.start()
    asking.join(0.5)
    assert asking.is_alive()  # waiting on A's uncommitted row, not guessing
    if commits:
        txn.root.commit()
    else:
        txn.root.rollback()
    asking.join(10)
    a._open.pop(txn_id)  # ended by hand above
    txn.connection.close()
    a.close()
    b.close()
    assert answers == ["committed" if commits else "rolled_back"]
    assert refs(engine, prefix) == ([prefix] if commits else [])


def _broken_commit_is_settled(engine: sa.Engine, event: str, at_commit: Callable[[Any], bool]) -> None:
    """Kill the transaction's backend from the *event* listener on its connection, when
    *at_commit* says the commit is being sent; the instance must settle it from the table."""
    a = instance(engine)
    txn_id, prefix = new_id(), new_id()[:8]
    txn, _ = a.begin(txn_id, "owner")
    txn.connection.execute(sa.insert(ledger).values(ref=prefix))
    backend = txn.connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()

    def kill_backend(*args: Any) -> None:
        if at_commit(args):
            with engine.connect() as killer:
                killer.exec_driver_sql(f"SELECT pg_terminate_backend({int(backend)})")  # type: ignore[arg-type]
                time.sleep(0.2)

    sa.event.listen(txn.connection, event, kill_backend)
    with pytest.raises(sa.exc.OperationalError) as broken:
        a.finish(txn_id, "commit", "owner", seq=1)
    assert broken.value.connection_invalidated
    assert outcome_row(engine, txn_id)[0] == "rolled_back"  # type: ignore[index]  # settled, fenced
    assert refs(engine, prefix) == []
    a.close()


def test_a_broken_commit_is_settled_from_the_table(pg: sa.Engine) -> None:
    """The connection dies during COMMIT (PostgreSQL: its backend is terminated): the instance asks
    the table instead of guessing - here the database had not committed, so the answer is the
    database's error, and the transaction is fenced."""
    _broken_commit_is_settled(pg, "commit", lambda args: True)


def test_on_postgresql_the_row_travels_with_commit(pg: sa.Engine) -> None:
    """psycopg: the outcome row and COMMIT are one statement string, one round trip; the row and
    the work commit together, and a fenced transaction still fails at its row and commits nothing."""
    a, b = instance(pg), instance(pg)
    txn_id, prefix = new_id(), new_id()[:8]
    txn, _ = a.begin(txn_id, "owner")
    txn.connection.execute(sa.insert(ledger).values(ref=prefix))
    sent: list[str] = []
    sa.event.listen(txn.connection, "before_cursor_execute", lambda conn, cursor, sql, *args: sent.append(sql))
    assert a.finish(txn_id, "commit", "owner", seq=1) == "committed"
    assert len(sent) == 1 and sent[0].endswith("; COMMIT")
    assert refs(pg, prefix) == [prefix]
    assert outcome_row(pg, txn_id)[0] == "committed"  # type: ignore[index]
    fenced, prefix = new_id(), new_id()[:8]
    txn, _ = a.begin(fenced, "owner")
    txn.connection.execute(sa.insert(ledger).values(ref=prefix))
    with pytest.raises(APIError) as refused:  # b answers a retry first: not committed, fenced
        b.finish(fenced, "commit", "owner", seq=1)
    assert refused.value.extra.get("outcome") == "rolled_back"
    with pytest.raises(APIError) as late:
        a.finish(fenced, "commit", "owner", seq=1)
    assert late.value.extra.get("outcome") == "rolled_back"
    assert refs(pg, prefix) == []
    assert outcome_row(pg, fenced)[0] == "rolled_back"  # type: ignore[index]
    a.close()
    b.close()


def test_a_commit_that_fails_itself_is_not_taken_for_a_fence(pg: sa.Engine) -> None:
    """A deferred unique constraint fails at COMMIT, sent with the row: the database's
    IntegrityError, as a direct COMMIT raises it (no statement text), nothing committed, no row -
    not "another instance answered first"."""
    a = instance(pg)
    with pg.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS outcome_deferred (code integer, "
                             "CONSTRAINT outcome_deferred_code_key UNIQUE (code) DEFERRABLE INITIALLY DEFERRED)")
        conn.exec_driver_sql("DELETE FROM outcome_deferred")
    try:
        txn_id = new_id()
        txn, _ = a.begin(txn_id, "owner")
        txn.connection.exec_driver_sql("INSERT INTO outcome_deferred VALUES (1), (1)")
        with pytest.raises(sa.exc.IntegrityError) as failed:
            a.finish(txn_id, "commit", "owner", seq=1)
        assert failed.value.statement is None
        assert "outcome_deferred_code_key" in str(failed.value.orig)
        assert a.outcome(txn_id) == "failed"
        assert outcome_row(pg, txn_id) is None
        with pg.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM outcome_deferred").scalar() == 0
    finally:
        a.close()
        with pg.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS outcome_deferred")


def test_a_connection_broken_during_the_joined_commit_is_settled(pg: sa.Engine) -> None:
    """The connection dies as the row and COMMIT are sent together: whether COMMIT ran is unknown,
    so the instance asks the table, as for a broken COMMIT - here nothing committed, so the answer
    is the database's error, and the transaction is fenced."""
    _broken_commit_is_settled(pg, "before_cursor_execute", lambda args: args[2].endswith("; COMMIT"))


def test_old_rows_are_pruned(engine: sa.Engine) -> None:
    outcomes = CommitOutcomes(engine, ttl=3600)
    outcomes.create()
    old, recent = new_id(), new_id()
    with engine.begin() as conn:
        conn.execute(sa.insert(outcomes.table), [
            {"txn_id": old, "outcome": "committed", "owner": None, "decided_at": int(time.time()) - 7200},
            {"txn_id": recent, "outcome": "committed", "owner": None, "decided_at": int(time.time()) - 60}])
    assert outcomes.prune(every=0) >= 1
    assert outcome_row(engine, old) is None
    assert outcome_row(engine, recent) is not None
    assert outcomes.prune(every=3600) == 0  # at most once per interval


def test_clients_cannot_name_the_outcome_table(networked: sa.Engine) -> None:
    engine = networked
    with running_dbapi(engine, metadata) as server:
        assert server.state.transactions.outcomes is not None
        api = RawApi(server)
        stolen = CommitOutcomes(engine).table
        reply = api.execute(sa.select(stolen.c.txn_id))
        assert (reply.status, reply.error["code"]) == (400, "unknown_table")
        txn = api.transaction()
        reply = txn.execute(sa.delete(stolen))
        assert (reply.status, reply.error["code"]) == (400, "unknown_table")
        assert txn.rollback().status == 200


def test_a_login_that_may_not_create_tables_is_told_the_ddl(pg: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL 15 lets only the owner create tables in ``public``: a DB-API whose login is not
    the owner refuses to start with the DDL to run, and starts once a DBA has created the table
    (with privileges for that login only)."""
    engine = pg
    from dbapi_server import create_app
    from dbapi_server.app import ConfigError
    from tests.servers import _PUBLIC, JWTAuthenticator

    role = f"outcome_login_{uuid.uuid4().hex[:8]}"
    table = f"outcomes_{uuid.uuid4().hex[:8]}"
    database = engine.url.database
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"GRANT CONNECT ON DATABASE {database} TO {role}")
        conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON outcome_ledger TO {role}")
    login = guard.exempt(sa.create_engine(engine.url.set(username=role, password=None)))
    authenticator = JWTAuthenticator(_PUBLIC, algorithms=["EdDSA"])
    monkeypatch.setenv("DBAPI_COMMIT_OUTCOME_TABLE", table)
    try:
        with pytest.raises(ConfigError, match=f"CREATE TABLE dbapi.{table}") as refused:
            create_app(engine=login, metadata=metadata, authenticator=authenticator)
        assert "DBAPI_COMMIT_OUTCOMES=memory" in str(refused.value)
        ddl = CommitOutcomes(engine, table_name=table).ddl()
        with engine.begin() as conn:
            for statement in ddl.split(";"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
            conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA dbapi TO {role}")
            conn.exec_driver_sql(f"GRANT SELECT, INSERT, DELETE ON dbapi.{table} TO {role}")
        app = create_app(engine=login, metadata=metadata, authenticator=authenticator)
        manager = app.extensions["dbapi_server"].transactions
        txn, _ = manager.begin("granted", "owner")
        txn.connection.execute(sa.insert(ledger).values(ref=f"granted-{table}"))
        assert manager.finish("granted", "commit", "owner", seq=1) == "committed"
        assert outcome_row(engine, "granted") is None  # written to the configured table, not the default
        app.extensions["dbapi_server"].close()
    finally:
        login.dispose()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS dbapi.{table}")
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")


def test_ids_differing_in_case_are_two_transactions(networked: sa.Engine) -> None:
    """MariaDB compares strings without case by default: the id column compares bytes, so a commit
    of 'ABC...' is never answered with the outcome of 'abc...'."""
    a, b = instance(networked), instance(networked)
    lower = "case" + new_id()
    txn, _ = a.begin(lower, "owner")
    txn.connection.execute(sa.insert(ledger).values(ref=lower[:40]))
    assert a.finish(lower, "commit", "owner", seq=1) == "committed"
    with pytest.raises(APIError) as other:
        b.finish(lower.upper(), "commit", "owner", seq=1)
    assert (other.value.code, other.value.extra["outcome"]) == ("transaction_not_here", "rolled_back")
    assert b.finish(lower, "commit", "owner", seq=1) == "committed"
    a.close()
    b.close()


def test_a_transaction_id_outside_the_alphabet_is_refused_before_the_database(pg: sa.Engine) -> None:
    with running_dbapi(pg, metadata) as server:
        api = RawApi(server)
        for bad in ("x" * 129, "abc%20", "caf%C3%A9"):
            reply = api.post(f"/transactions/{bad}/commit", {"seq": 1})
            assert (reply.status, reply.error["code"]) == (400, "malformed_request"), bad
