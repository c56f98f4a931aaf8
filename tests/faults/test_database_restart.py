"""The database restarts under a running DB-API: the server reconnects by itself.

A real restart of a PostgreSQL cluster of the test's own (``initdb`` in a temp dir, a free port;
the machine's shared PostgreSQL is never touched). The first request after the restart must
succeed - the server's pool checks a connection before handing it out (``pool_pre_ping``) -
and a transaction that was open across the restart fails with the database's own
``OperationalError``, after which the same session works again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbsession import DBSession, guard

from .conftest import entries, isolated
from .models import Base, Entry
from .processes import ServerProcess, ThrowawayPostgres

pytestmark = pytest.mark.postgresql


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayPostgres]:
    try:
        cluster = ThrowawayPostgres()
    except (FileNotFoundError, RuntimeError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI: cannot create a throwaway PostgreSQL cluster: {exc}", pytrace=False)
        pytest.skip(f"cannot create a throwaway PostgreSQL cluster: {exc}")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def restartable(cluster: ThrowawayPostgres) -> Iterator[sa.Engine]:
    engine = guard.exempt(sa.create_engine(cluster.url, pool_pre_ping=True))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def count(session: DBSession, ref: str) -> int:
    return int(session.scalar(sa.select(sa.func.count()).select_from(Entry).where(Entry.ref.startswith(ref))) or 0)


def test_server_reconnects_after_the_database_restarts(
        cluster: ThrowawayPostgres, restartable: sa.Engine, workdir: Path, clients: list[DBSession],
        ref: str) -> None:
    server = ServerProcess.start(cluster.url, workdir)
    try:
        across = isolated(clients, server.url)
        across.add(Entry(ref=f"{ref}-across", amount=2))
        across.flush()  # a server transaction open while the database goes down
        first, second = isolated(clients, server.url), isolated(clients, server.url)
        for number, session in enumerate((first, second)):  # two at once: two pooled connections
            session.add(Entry(ref=f"{ref}-before{number}", amount=1))
            session.flush()
        for session in (first, second):
            session.commit()

        cluster.restart()

        after = isolated(clients, server.url)
        assert count(after, ref) == 2  # the very first request after the restart: a read...
        after.add(Entry(ref=f"{ref}-after", amount=3))
        after.commit()  # ...and a write transaction, on the other pooled connection

        # the database's own words stay in the server log; the client hears the fixed sentence
        with pytest.raises(sa.exc.OperationalError, match="lost or could not open its database connection"):
            across.execute(sa.select(Entry.id))
        across.rollback()
        across.add(Entry(ref=f"{ref}-retried", amount=4))
        across.commit()
        assert entries(restartable, ref) == [
            (f"{ref}-after", 3), (f"{ref}-before0", 1), (f"{ref}-before1", 1), (f"{ref}-retried", 4)]
        assert "Traceback" not in server.log.read_text()
    finally:
        server.kill()


def test_a_transaction_whose_connection_died_is_a_disconnect_even_inside_a_savepoint(
        cluster: ThrowawayPostgres, restartable: sa.Engine, workdir: Path, clients: list[DBSession],
        ref: str) -> None:
    """As on a direct connection: the statement after the restart raises ``OperationalError`` with
    ``connection_invalidated``; the ORM's rollback of the savepoint does not reach the dead server
    transaction (which the server ended at once), and the session works again after a rollback."""
    server = ServerProcess.start(cluster.url, workdir)
    try:
        session = isolated(clients, server.url)
        session.add(Entry(ref=f"{ref}-outer", amount=1))
        session.flush()
        session.begin_nested()
        session.add(Entry(ref=f"{ref}-inner", amount=2))
        session.flush()

        cluster.restart()

        with pytest.raises(sa.exc.OperationalError, match="lost or could not open its database connection") as lost:
            session.add(Entry(ref=f"{ref}-more", amount=3))
            session.flush()
        assert lost.value.connection_invalidated
        session.rollback()
        session.add(Entry(ref=f"{ref}-again", amount=4))
        session.commit()
        assert entries(restartable, ref) == [(f"{ref}-again", 4)]
        assert "Traceback" not in server.log.read_text()
    finally:
        server.kill()


def test_requests_arriving_while_the_database_is_down_wait_for_it(
        cluster: ThrowawayPostgres, restartable: sa.Engine, workdir: Path, clients: list[DBSession],
        ref: str) -> None:
    """Connecting waits (``DBAPI_DB_CONNECT_WAIT``, 5 s): a one-shot read and a new transaction
    that arrive while PostgreSQL is down for about a second succeed once it is back - nothing of
    them had run - instead of failing."""
    import threading
    import time

    server = ServerProcess.start(cluster.url, workdir)
    try:
        session = isolated(clients, server.url)
        assert count(session, ref) == 0
        cluster._ctl("stop", "-m", "fast")
        back = threading.Timer(1.5, cluster.start)
        back.start()
        started = time.monotonic()
        try:
            assert count(session, ref) == 0  # waits for the database, then answers
            session.add(Entry(ref=f"{ref}-during", amount=1))
            session.commit()
        finally:
            back.join()
        assert time.monotonic() - started >= 1.0
        assert entries(restartable, ref) == [(f"{ref}-during", 1)]
        assert "Traceback" not in server.log.read_text()
    finally:
        server.kill()
