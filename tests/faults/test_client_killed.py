"""A client is SIGKILLed while its transaction holds a row lock.

The DB-API cannot know the client is gone: the transaction stays open, holding the lock, until
the server's idle timeout rolls it back. Another client asking for the same row waits meanwhile
and then succeeds, and the dead client's uncommitted update is gone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbsession import DBSession

from .conftest import entries, isolated
from .models import Entry
from .processes import REPO, ServerProcess, clean_env, token

pytestmark = pytest.mark.postgresql

IDLE_TIMEOUT = 3.0  # short for the test; long enough that a loaded machine does not reap the survivor


def row_is_locked(engine: sa.Engine, ref: str) -> bool:
    with engine.connect() as conn:
        try:
            conn.execute(sa.select(Entry.id).where(Entry.ref == ref).with_for_update(nowait=True))
        except sa.exc.OperationalError as exc:
            assert "could not obtain lock" in str(exc)
            return True
        return False


def test_killed_clients_lock_is_released_after_the_idle_timeout(
        database: sa.Engine, pg_url: sa.URL, workdir: Path, clients: list[DBSession], ref: str) -> None:
    with database.begin() as conn:
        conn.execute(sa.insert(Entry).values(ref=ref, amount=1))
    server = ServerProcess.start(pg_url, workdir, idle_timeout=IDLE_TIMEOUT)
    holder = subprocess.Popen([sys.executable, "-m", "tests.faults.lock_holder", server.url, token("holder"), ref],
                              cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        said = holder.stdout.readline() if holder.stdout else b""
        assert said == b"locked\n", holder.stderr.read().decode() if holder.stderr else said
        assert row_is_locked(database, ref)
        holder.kill()
        assert holder.wait(timeout=30) == -9

        survivor = isolated(clients, server.url)
        row = survivor.scalars(sa.select(Entry).where(Entry.ref == ref).with_for_update()).one()  # waits
        assert row.amount == 1  # the dead client's update was rolled back with its transaction
        row.amount = 2
        survivor.commit()
        assert entries(database, ref) == [(ref, 2)]
        assert "rolling back transaction" in server.log.read_text()  # the reaper did it, not luck
    finally:
        holder.kill()
        holder.wait(timeout=30)
        for stream in (holder.stdout, holder.stderr):
            if stream:
                stream.close()
        server.stop()
