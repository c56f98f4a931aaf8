"""Autocommit connections for one-shot reads, kept between requests.

A read outside a client transaction runs on an ``AUTOCOMMIT`` connection (one database round
trip, no ``BEGIN`` / ``ROLLBACK``). Checking one out of the pool for every request, switching it
to autocommit and back, and checking it in again cost more CPU than the statement itself
(PostgreSQL, a select by key: ~0.15 ms of ~0.35 ms; the switch alone runs SQLAlchemy's isolation
level machinery twice and four psycopg round trips through its lock). So a read connection that
finished is *kept*, still checked out and still in autocommit, and the next read takes it.

What stays exactly as with a checkout per request:

* **The pool's size and overflow.** Kept connections are the pool's own connections, checked
  out. A finished read's connection is kept only while every connection out (kept ones included)
  fits in the pool's *size* - never in its overflow - and a checkout that finds the pool's queue
  empty first gives the kept ones back (the pool's ``_do_get``, wrapped), so nobody waits for, or
  opens a connection beside, an idle kept one. ``pool.checkedout()`` (the readiness probe, the
  metrics) counts only connections in use: kept ones are idle.
* **A connection the database dropped** (a restart, ``idle_session_timeout``) is found before it is
  used, as ``pool_pre_ping`` finds it at checkout: its socket is readable while idle
  (:mod:`dbapi_server._liveness`); such a connection is closed and the read checks a fresh one out
  of the pool, whose pre-ping does the rest. Connections past ``pool_recycle``, or older than an
  invalidation of the pool (after a disconnect anywhere), are given back likewise; a read that
  failed in any way gives its connection back (the pool resets it).
* **Statement timeouts**: set per statement by the statement run, remembered per connection
  (``connection.info``), so every caller gets its role's value on a kept connection too.
* **Shutdown and a new pool**: :meth:`ReadConnections.close` gives every kept connection back
  (``ServerState.close``, before the pool is disposed); after ``engine.dispose()`` the kept
  connections of the old pool are closed at the next read.

Only for a ``QueuePool`` (what SQLAlchemy uses for PostgreSQL, MariaDB and SQLite files) and
without the database wall (whose role switch happens at checkout, :mod:`dbapi_server.db_wall`):
otherwise every read checks a connection out, as before.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import QueuePool

from ._liveness import _readable, _socket_of

__all__ = ["ReadConnections"]


class ReadConnections:
    """The autocommit read connections of one engine (see the module docstring)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        # one-shot reads run in autocommit: a single SELECT is then one database round trip
        # instead of BEGIN + SELECT + ROLLBACK, with the same visibility
        self.read_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._idle: list[sa.Connection] = []
        self._lock = threading.Lock()
        self._pool: Any = None
        self._checkedout: Callable[[], int] = lambda: 0
        self._closed = False
        self._install(engine.pool)

    @property
    def kept(self) -> int:
        """Idle connections kept for the next read."""
        return len(self._idle)

    @contextlib.contextmanager
    def connection(self) -> Iterator[sa.Connection]:
        """An autocommit connection for one read; kept for the next one when the read went well."""
        if self._pool is None or self._pool is not self.engine.pool:
            if not self._install(self.engine.pool):
                with self.read_engine.connect() as conn:
                    yield conn
                return
        conn = self._take()
        try:
            yield conn
        except BaseException:
            conn.close()  # whatever state it is in, the pool's reset deals with it
            raise
        self._keep(conn)

    def close(self) -> None:
        """Give every kept connection back to the pool (shutdown; keeps nothing from now on)."""
        self._closed = True
        self._uninstall()

    # -- internals ----------------------------------------------------------------------------
    def _install(self, pool: Any) -> bool:
        """Wrap *pool* (the engine's current one) once; False when it is not a ``QueuePool``."""
        self._uninstall()
        if self._closed or not isinstance(pool, QueuePool):
            return False
        other = getattr(pool, "_dbs_reads", None)
        if other is not None:  # another application's, on the same engine (tests): this one's now
            other._uninstall()
        real_do_get, real_checkedout = pool._do_get, pool.checkedout

        def _do_get() -> Any:
            # an empty queue: kept idle read connections go back first, so no checkout waits for
            # one of them or opens a connection beside it
            if self._idle and pool._pool.empty():
                self._release_one()
            return real_do_get()

        def checkedout() -> int:
            return int(real_checkedout()) - len(self._idle)

        target: Any = pool
        target._do_get = _do_get
        target.checkedout = checkedout
        target._dbs_reads = self
        self._checkedout = real_checkedout
        self._pool = pool
        return True

    def _uninstall(self) -> None:
        """Give the kept connections back and unwrap the pool."""
        pool, self._pool = self._pool, None
        # a pool the engine replaced (``dispose()``) is gone: its connections are closed, not
        # returned to it
        self._release_all(discard=pool is not None and pool is not self.engine.pool)
        if pool is not None and getattr(pool, "_dbs_reads", None) is self:
            for name in ("_do_get", "checkedout", "_dbs_reads"):
                pool.__dict__.pop(name, None)

    def _take(self) -> sa.Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                # not read_engine.connect(): an engine with execution options has an engine_connect
                # listener, and a connection of an engine with listeners runs the execute events'
                # machinery for every statement; the option set on the connection is reset at checkin
                return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if self._usable(conn):
                return conn
            conn.close()

    def _usable(self, conn: sa.Connection) -> bool:
        """What the pool checks at checkout: recycle age, pool invalidation, liveness."""
        if conn.closed or conn.invalidated:
            return False
        pool = self._pool
        fairy: Any = conn.connection
        record = fairy._connection_record
        if record is None or fairy.dbapi_connection is None:
            return False
        start = record.starttime
        if (pool._recycle > -1 and time.time() - start > pool._recycle) or pool._invalidate_time > start \
                or record._soft_invalidate_time > start:
            return False
        if pool._pre_ping:
            dbapi_connection = fairy.dbapi_connection
            fd = _socket_of(dbapi_connection)
            if fd is None:
                try:
                    return bool(conn.dialect.do_ping(dbapi_connection))
                except Exception:
                    return False
            return not _readable(fd)
        return True

    def _keep(self, conn: sa.Connection) -> None:
        if conn.closed or conn.invalidated or self._closed or self._pool is not self.engine.pool:
            if not conn.closed and self._pool is not self.engine.pool:
                conn.invalidate()  # its pool was replaced
            conn.close()
            return
        pool: Any = self._pool
        with self._lock:
            # every connection out, this one and the kept ones included, within the pool's size
            if self._checkedout() <= pool.size():
                self._idle.append(conn)
                return
        conn.close()

    def _release_one(self) -> None:
        with self._lock:
            conn = self._idle.pop(0) if self._idle else None
        if conn is not None:
            conn.close()

    def _release_all(self, discard: bool = False) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            try:
                if discard:
                    conn.invalidate()
                conn.close()
            except Exception:  # a connection that cannot be given back cleanly is the pool's to drop
                pass
