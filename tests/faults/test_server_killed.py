"""The DB-API process is SIGKILLed while clients hold open write transactions.

Nothing may be committed (the database rolls the server's transactions back when its connections
die); each client's next statement or commit raises SQLAlchemy's ``OperationalError`` with
``connection_invalidated`` - a disconnect, as when a direct database connection dies - whose
message names the DB-API; and once a server is back, the same sessions work again after a rollback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from dbsession import DBSession
from dbsession._dbapi import DisconnectError

from .conftest import entries, isolated
from .models import Entry
from .processes import ServerProcess, wait_for

pytestmark = pytest.mark.postgresql

UNREACHABLE = r"Cannot reach the DB-API at http://127\.0\.0\.1:\d+ .*Is the server running\?"


def open_transactions(engine: sa.Engine) -> int:
    """Server connections of this database that are inside a transaction."""
    with engine.connect() as conn:
        return int(conn.scalar(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")) or 0)


def test_killed_server_commits_nothing_and_clients_get_a_disconnect(
        database: sa.Engine, pg_url: sa.URL, workdir: Path, clients: list[DBSession], ref: str) -> None:
    server = ServerProcess.start(pg_url, workdir)
    try:
        writer, committer = isolated(clients, server.url), isolated(clients, server.url)
        writer.add(Entry(ref=f"{ref}-w", amount=1))
        writer.flush()
        committer.add(Entry(ref=f"{ref}-c", amount=2))
        committer.flush()
        assert open_transactions(database) == 2

        server.kill()

        with pytest.raises(sa.exc.OperationalError, match=UNREACHABLE) as statement_failed:
            writer.execute(sa.select(Entry.id))
        with pytest.raises(sa.exc.OperationalError, match=UNREACHABLE) as commit_failed:
            committer.commit()
        for failure in (statement_failed.value, commit_failed.value):
            assert failure.connection_invalidated
            assert isinstance(failure.orig, DisconnectError)

        wait_for(lambda: open_transactions(database) == 0, "PostgreSQL to end the dead server's sessions")
        assert entries(database, ref) == []
        with database.begin() as conn:  # no lock or uniqueness claim survives either
            conn.execute(sa.insert(Entry).values(ref=f"{ref}-w", amount=10))
            conn.execute(sa.delete(Entry).where(Entry.ref == f"{ref}-w"))

        server = ServerProcess.start(pg_url, workdir, port=server.port)  # back on the same address
        writer.rollback()
        writer.add(Entry(ref=f"{ref}-w", amount=3))
        writer.commit()
        committer.rollback()
        assert committer.scalar(sa.select(Entry.amount).where(Entry.ref == f"{ref}-w")) == 3
        assert entries(database, ref) == [(f"{ref}-w", 3)]
    finally:
        server.kill()
