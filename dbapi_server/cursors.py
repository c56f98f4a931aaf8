"""Open result cursors of streamed queries.

A client asking for a streamed result (``yield_per``, ``stream_results``) gets the first page of
rows with the statement's answer; the rest stays in the database driver's cursor on the server
until the client fetches it page by page, closes it, or leaves it idle for ``idle_timeout``
seconds. The server holds at most one page of rows per cursor in memory. Pages are numbered: a
retried fetch (same number) is answered from the stored page instead of skipping rows.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .errors import APIError

__all__ = ["CursorRegistry", "OpenCursor"]


class CursorGone(APIError):
    status = 410
    code = "cursor_gone"


@dataclass
class OpenCursor:
    id: str
    owner: str | None
    result: sa.CursorResult[Any]
    page_size: int
    txn_id: str | None
    release: Callable[[], None]  # returns the connection a cursor outside a transaction holds
    lock: threading.Lock = field(default_factory=threading.Lock)
    page: int = 0
    last_reply: dict[str, Any] | None = None
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False

    def close(self) -> None:
        """Free the driver cursor and the connection it holds (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.result.close()
        finally:
            self.release()


class CursorRegistry:
    """Cursors by id; the transaction manager's reaper also expires idle ones."""

    def __init__(self, idle_timeout: float = 60.0) -> None:
        self.idle_timeout = idle_timeout
        self._open: dict[str, OpenCursor] = {}
        self._lock = threading.Lock()

    def open(self, owner: str | None, result: sa.CursorResult[Any], page_size: int,
             txn_id: str | None, release: Callable[[], None]) -> OpenCursor:
        cursor = OpenCursor(uuid.uuid4().hex, owner, result, page_size, txn_id, release)
        with self._lock:
            self._open[cursor.id] = cursor
        return cursor

    def get(self, cursor_id: str, owner: str | None) -> OpenCursor:
        with self._lock:
            cursor = self._open.get(cursor_id)
        if cursor is None:
            raise CursorGone(f"The result cursor {cursor_id} is closed, exhausted or expired "
                             f"(idle for more than {self.idle_timeout:g}s); run the query again.")
        if cursor.owner != owner:
            raise APIError("This result cursor belongs to another caller.", status=403,
                           code="forbidden_cursor")
        return cursor

    def close(self, cursor_id: str) -> None:
        with self._lock:
            cursor = self._open.pop(cursor_id, None)
        if cursor is not None:
            cursor.close()

    def close_for_transaction(self, txn_id: str, owner: str | None) -> None:
        """A transaction of *owner* ends: its cursors end with it (as on a direct connection).

        Only *owner*'s cursors: a transaction id is the caller's choice, so another caller's
        cursors under the same id are not this caller's to close.
        """
        with self._lock:
            ending = [c for c in self._open.values() if c.txn_id == txn_id and c.owner == owner]
            for cursor in ending:
                del self._open[cursor.id]
        for cursor in ending:
            cursor.close()

    def reap(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [c for c in self._open.values() if now - c.last_used > self.idle_timeout]
            for cursor in idle:
                del self._open[cursor.id]
        for cursor in idle:
            cursor.close()
        return len(idle)

    def close_all(self) -> None:
        with self._lock:
            cursors, self._open = list(self._open.values()), {}
        for cursor in cursors:
            cursor.close()

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def active_count(self) -> int:
        """Cursors still holding a database cursor (exhausted ones stay listed for a replay)."""
        with self._lock:
            return sum(1 for cursor in self._open.values() if not cursor.closed)
