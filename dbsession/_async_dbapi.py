"""The stand-in driver's connection for the async engine: ``_dbapi.Connection`` on an async transport.

Everything a statement, a commit or a streamed page does is :class:`dbsession._dbapi.Connection`'s
and its cursors' code, unchanged - the lazy server transaction, sequence numbers, the commit's
retry deadline and ``CommitOutcomeUnknownError``, the error mapping. It runs inside SQLAlchemy's
greenlet, and its transport (:class:`~dbsession._async_transport.AsyncTransport`) awaits the I/O.
What this subclass adds is what only async code needs: ending a connection after a cancellation
without cutting that short too.

After a cancellation (or a timeout) SQLAlchemy invalidates the connection and calls the
dialect's ``do_terminate`` - here :meth:`AsyncConnection.terminate`. Closing then means: wait
for the request the cancelled task left on the wire, close a streamed result left open on the
server (also one whose first answer the cancelled task never saw), and roll back the server
transaction. That runs as a task of its own, shielded: a second cancellation of the caller does
not stop it halfway, and a connection garbage-collected outside any greenlet is closed the same
way if its loop still runs (otherwise the DB-API's idle timeout ends what it held).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from sqlalchemy.util.concurrency import greenlet_spawn, in_greenlet

from . import _dbapi
from ._async_transport import AsyncTransport, host_clients, keep_alive, sa_await
from .config import get_settings

__all__ = ["AsyncConnection", "AsyncCursor", "AsyncStreamingCursor", "connect"]


class AsyncCursor(_dbapi.Cursor):
    """The buffered cursor: every row is here already when ``execute`` returns."""

    async def _async_soft_close(self) -> None:
        """What ``sqlalchemy.ext.asyncio`` calls before handing a buffered result to async code:
        a driver's cursor would be released here; this one holds no server resource."""


class AsyncStreamingCursor(_dbapi.StreamingCursor):
    """The streaming cursor, unchanged: its pages are fetched through the async transport."""


class AsyncConnection(_dbapi.Connection):
    """``_dbapi.Connection`` over an :class:`AsyncTransport`, with a cancellation-safe close."""

    transport: AsyncTransport

    def __init__(self, transport: AsyncTransport, **kw: Any) -> None:
        super().__init__(transport, **kw)
        self._streams: weakref.WeakSet[_dbapi.StreamingCursor] = weakref.WeakSet()
        self._closing = False

    def cursor(self, stream: bool = False) -> _dbapi.Cursor:
        if not stream:
            return AsyncCursor(self)
        cursor = AsyncStreamingCursor(self)
        self._streams.add(cursor)
        return cursor

    def close(self) -> None:
        """Close in the background if need be (see the module doc); never half-way."""
        if self.closed or self._closing:
            return
        self._closing = True
        if in_greenlet():
            sa_await(asyncio.shield(keep_alive(asyncio.ensure_future(greenlet_spawn(self._close_now)))))
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to do I/O in: the DB-API's idle timeout ends what it held
            self.closed, self.txn = True, None
            return
        keep_alive(loop.create_task(greenlet_spawn(self._close_now)))

    def terminate(self) -> None:
        self.close()

    def _close_now(self) -> None:
        sa_await(self.transport.settle())
        for answer in self.transport.take_abandoned():
            # a streamed result's first page that reached no one: its cursor is still open
            if isinstance(answer, dict) and answer.get("cursor") and answer.get("more"):
                orphan = AsyncStreamingCursor(self)
                orphan._cursor_id, orphan._more = answer["cursor"], True
                self._streams.add(orphan)
        for cursor in list(self._streams):
            cursor.close()  # only posts for a cursor with rows still waiting on the server
        super().close()


def connect(*, host: str, token: str | None = None, token_file: str | None = None,
            timeout: float | None = None, eager_transactions: bool = False,
            commit_retry_deadline: float | None = None, close_resets_rowcount: bool = False) -> AsyncConnection:
    """``_dbapi.connect()`` for the async engine: the same arguments and settings."""
    if token is None and token_file is None:
        settings = get_settings()
        token, token_file = settings.token, settings.token_file
        timeout = timeout or settings.timeout
        commit_retry_deadline = commit_retry_deadline or settings.commit_retry_deadline
    clients = host_clients(host, token, token_file, timeout or 30.0)
    return AsyncConnection(AsyncTransport(clients), eager_transactions=eager_transactions,
                           commit_retry_deadline=commit_retry_deadline or _dbapi.DEFAULT_COMMIT_RETRY_DEADLINE,
                           close_resets_rowcount=close_resets_rowcount)
