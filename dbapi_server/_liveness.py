"""A pooled connection's liveness, checked at checkout without a database round trip when it can be.

``pool_pre_ping`` sends ``SELECT 1`` (psycopg: an empty query) every time a connection leaves the
pool: one database round trip per request. A connection the database closed - a restart, a
failover, ``idle_session_timeout`` / ``wait_timeout``, an administrator's terminate - has a socket
that is *readable while idle*: the server's FATAL message, its FIN or its RST are waiting in it. An
idle connection of a healthy database has nothing to read. So the check polls the socket (no wait,
no I/O): nothing readable - alive; something readable - the real ping decides (it also reads any
harmless asynchronous message, such as a notice). The failure behaviour is pre-ping's: the dropped
connection is found at checkout and replaced, so the first request after a restart succeeds
(``tests/faults/test_database_restart.py``). What neither check can see is a peer that vanished
without closing (a network partition): pre-ping's round trip would wait for the network timeout
at checkout, this check lets the statement wait for it instead - the same error, later.

Drivers whose connection exposes no socket (SQLite) keep the dialect's own ``do_ping``.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

__all__ = ["use_socket_liveness"]

_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL


def _socket_of(dbapi_connection: Any) -> int | None:
    """The file descriptor of a psycopg / PyMySQL / mysqlclient connection, or None."""
    fileno = getattr(dbapi_connection, "fileno", None)  # psycopg 3, psycopg2, mysqlclient
    if callable(fileno):
        try:
            fd = fileno()
        except Exception:  # closed, or not a socket-backed connection
            return None
        return fd if isinstance(fd, int) and fd >= 0 else None
    sock = getattr(dbapi_connection, "_sock", None)  # PyMySQL
    if sock is not None:
        try:
            fd = sock.fileno()
        except Exception:
            return None
        return fd if fd >= 0 else None
    return None


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, _READABLE)
    return bool(poller.poll(0))


def use_socket_liveness(engine: sa.Engine) -> None:
    """Make *engine*'s pre-ping a socket check, with the dialect's ping as the fallback."""
    dialect: Any = engine.dialect
    real_ping: Callable[[Any], bool] = dialect.do_ping

    def do_ping(dbapi_connection: Any) -> bool:
        fd = _socket_of(dbapi_connection)
        if fd is None or _readable(fd):
            return real_ping(dbapi_connection)
        return True

    dialect.do_ping = do_ping
