"""``dbapi-server serve`` as a user runs it, in its own process (through ``tests.servers.dbapi_process``)."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbsession import DBSession, guard
from tests.servers import client_hash_seed, dbapi_process

from ._support import items, make_engine, metadata

METADATA = "tests.dbapi_server._support:metadata"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    make_engine(url, metadata).dispose()
    return url


def _session(url: str, token: str) -> DBSession:
    return DBSession(database_access_isolation=True, database_api_host=url, token=token)


def test_serve_binds_a_free_port_reports_it_and_serves(sqlite_url: str) -> None:
    with dbapi_process(sqlite_url, METADATA) as server:
        assert re.search(rf"listening on http://127\.0\.0\.1:{server.port}\b", server.output())
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
        assert f"PYTHONHASHSEED={server.hash_seed}".encode() in environ
        assert server.hash_seed != client_hash_seed()
        with _session(server.url, server.token) as session:
            session.execute(items.insert().values(id=1, name="a"))
            session.commit()
            assert session.execute(sa.select(items.c.name)).scalars().all() == ["a"]
    assert server.process.returncode == 0


def test_sigterm_rolls_back_an_open_transaction_and_exits_cleanly(sqlite_url: str) -> None:
    with dbapi_process(sqlite_url, METADATA) as server:
        session = _session(server.url, server.token)
        session.execute(items.insert().values(id=2, name="never committed"))  # the server holds the txn
        assert server.stop() == 0
        with pytest.raises(sa.exc.OperationalError, match="Cannot reach the DB-API"):
            session.close()  # its rollback finds no server, as a direct session's finds no database
    with guard.trusted():
        engine = sa.create_engine(sqlite_url)
        with engine.connect() as conn:
            assert conn.execute(sa.select(items.c.id)).all() == []
        engine.dispose()


def test_a_server_that_cannot_start_says_why(sqlite_url: str) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 1 before listening.*package\.module:Base"), \
            dbapi_process(sqlite_url, "tests.dbapi_server._support"):
        pass


def test_an_exception_in_the_block_names_the_server_and_its_seed(sqlite_url: str) -> None:
    with pytest.raises(ZeroDivisionError) as caught, dbapi_process(sqlite_url, METADATA) as server:
        1 / 0  # noqa: B018
    assert any(f"PYTHONHASHSEED={server.hash_seed}" in note for note in caught.value.__notes__)


def test_waitress_serves_when_asked(sqlite_url: str) -> None:
    with dbapi_process(sqlite_url, METADATA, args=["--server", "waitress"]) as server:
        with _session(server.url, server.token) as session:
            assert session.execute(sa.select(items.c.id)).all() == []
    assert server.process.returncode == 0


def test_a_second_server_on_a_taken_port_is_refused(sqlite_url: str) -> None:
    """granian binds with SO_REUSEPORT: without the check, two servers would share the port and
    split a client's transactions between two memories."""
    with dbapi_process(sqlite_url, METADATA) as first:
        with pytest.raises(RuntimeError, match=r"(?s)exited with status 1 before listening.*Address already in use"), \
                dbapi_process(sqlite_url, METADATA, args=["--port", str(first.port)]):
            pass
        with _session(first.url, first.token) as session:  # the first one is untouched
            assert session.execute(sa.select(items.c.id)).all() == []


def test_a_killed_server_leaves_no_worker_serving(sqlite_url: str) -> None:
    """SIGKILL to the process a supervisor started (granian's main): its worker dies with it."""
    with dbapi_process(sqlite_url, METADATA) as server:
        server.kill()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "something still accepts connections on the killed server's port"
            time.sleep(0.05)
