"""Graceful shutdown of ``dbapi-server serve`` (granian and waitress), in real processes.

SIGTERM: the instance stops taking new transactions (503 ``shutting_down``; ``/ready`` 503, ``/live``
still 200), lets the open ones finish within ``DBAPI_SHUTDOWN_GRACE``, then rolls back what is
left, logging each (txn id, owner, age) as a JSON line, and exits 0.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dbsession import DBSession, guard
from tests.servers import DBAPIProcess, dbapi_process

from ._support import items, make_engine, metadata

METADATA = "tests.dbapi_server._support:metadata"
SERVERS = ["granian", "waitress"]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'shutdown.sqlite'}"
    make_engine(url, metadata).dispose()
    return url


def _session(server: DBAPIProcess) -> DBSession:
    return DBSession(database_access_isolation=True, database_api_host=server.url, token=server.token)


def _get(server: DBAPIProcess, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{server.url}/dbapi/v1{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _begin(server: DBAPIProcess) -> tuple[int, dict[str, Any]]:
    """A raw request that would begin a new transaction (the statement never runs if refused)."""
    document = {"version": 1, "statement": {"t": "ddl", "sql": "SELECT 1"}}
    body = json.dumps({"stmt": document, "sql": "0", "txn": "fresh-txn", "seq": 1, "begin": True}).encode()
    request = urllib.request.Request(f"{server.url}/dbapi/v1/execute", data=body, method="POST", headers={
        "Authorization": f"Bearer {server.token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait_for(condition: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _json_lines(server: DBAPIProcess) -> list[dict[str, Any]]:
    found = []
    for line in server.output().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def _rows(url: str) -> list[tuple[int, str]]:
    with guard.trusted():
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(sa.select(items.c.id, items.c.name).order_by(items.c.id))]
        finally:
            engine.dispose()


@pytest.mark.parametrize("server_name", SERVERS)
def test_an_open_transaction_commits_within_the_grace_and_new_ones_are_refused(
        sqlite_url: str, server_name: str) -> None:
    with dbapi_process(sqlite_url, METADATA, args=["--server", server_name],
                       env={"DBAPI_SHUTDOWN_GRACE": "20"}) as server:
        in_flight = _session(server)
        in_flight.execute(items.insert().values(id=1, name="before SIGTERM"))  # the server holds it open
        signalled = time.monotonic()
        server.stopped = True
        server.process.send_signal(signal.SIGTERM)

        _wait_for(lambda: _get(server, "/ready")[0] == 503, "readiness to fail")
        assert _get(server, "/ready")[1]["reason"] == "draining"
        assert _get(server, "/live") == (200, {"status": "alive"})
        status, refused = _begin(server)
        assert status == 503
        assert refused["error"]["code"] == "shutting_down" and refused["error"]["retryable"] is True
        # through the client: retried (nothing ran), then a disconnect, as from a database going down
        with _session(server) as newcomer, pytest.raises(sa.exc.OperationalError, match="shutting down"):
            newcomer.execute(items.insert().values(id=9, name="refused"))

        in_flight.execute(items.insert().values(id=2, name="after SIGTERM"))  # still served
        in_flight.commit()
        in_flight.close()
        assert server.process.wait(timeout=15) == 0
        assert time.monotonic() - signalled < 15  # it left when the transaction ended, not at the deadline
        events = {line.get("event"): line for line in _json_lines(server)}  # (the log goes with the block)
        assert events["drain_start"]["open_transactions"] == 1
        assert events["drain_end"]["rolled_back"] == 0

    assert _rows(sqlite_url) == [(1, "before SIGTERM"), (2, "after SIGTERM")]


@pytest.mark.parametrize("server_name", SERVERS)
def test_a_transaction_open_at_the_deadline_is_rolled_back_and_logged(sqlite_url: str, server_name: str) -> None:
    grace = 1.5
    with dbapi_process(sqlite_url, METADATA, args=["--server", server_name],
                       env={"DBAPI_SHUTDOWN_GRACE": str(grace)}) as server:
        idle = _session(server)
        idle.execute(items.insert().values(id=3, name="never committed"))
        txn_id = idle.connection().connection.dbapi_connection.txn  # type: ignore[union-attr]
        assert txn_id
        signalled = time.monotonic()
        server.stopped = True
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0
        elapsed = time.monotonic() - signalled
        assert grace <= elapsed < grace + 10
        with pytest.raises(sa.exc.OperationalError, match="Cannot reach the DB-API"):
            idle.commit()  # the instance is gone; the transaction was rolled back
        rolled_back = [line for line in _json_lines(server) if line.get("event") == "shutdown_rollback"]
        assert len(rolled_back) == 1, server.output()
        line = rolled_back[0]
        assert line["level"] == "WARNING" and line["logger"] == "dbapi_server.transactions"
        assert line["txn"] == txn_id and line["owner"] == "test-worker"
        assert line["age_s"] >= grace
        assert txn_id in line["message"]

    assert _rows(sqlite_url) == []
