"""Graceful shutdown: drain open transactions, then roll back what is left.

When the serving process is asked to stop (SIGTERM from a service manager or Kubernetes, SIGINT),
:meth:`Drain.run`:

1. stops taking NEW transactions: a request that would begin one answers 503 ``shutting_down``
   (``retryable``: nothing ran; the client retries, and behind a load balancer another instance
   takes it), and ``/dbapi/v1/ready`` answers 503 so the load balancer stops sending new work;
2. keeps serving everything else - the open transactions' statements, commits and rollbacks,
   result pages, one-shot reads - until no transaction and no streamed cursor is open, or
   ``grace`` seconds (``DBAPI_SHUTDOWN_GRACE``, default 30) have passed;
3. rolls back the transactions still open, logging each (id, owner, age), and closes the cursors.

The server then stops (:mod:`dbapi_server.serving` wires the signals to this, for granian's worker
process and for waitress). A second signal while draining changes nothing: the grace is the
deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .state import ServerState

__all__ = ["Drain"]

log = logging.getLogger("dbapi_server.shutdown")

_POLL = 0.05


class Drain:
    """The shutdown of one application's state; :meth:`run` is idempotent and thread-safe."""

    def __init__(self, state: ServerState, grace: float) -> None:
        self.state = state
        self.grace = grace
        self.started = threading.Event()
        self.done = threading.Event()
        self._lock = threading.Lock()

    @property
    def draining(self) -> bool:
        return self.started.is_set()

    def run(self) -> None:
        """Drain (see the module's description); returns when it is over. A concurrent or later
        call waits for the first one's end."""
        with self._lock:
            first = not self.started.is_set()
            self.started.set()
        if not first:
            self.done.wait()
            return
        try:
            self._drain()
        finally:
            self.done.set()

    def _drain(self) -> None:
        state = self.state
        state.transactions.refuse_new = True
        began = time.monotonic()
        deadline = began + self.grace
        log.info("shutting down: no new transactions; %d open transactions and %d open cursors may "
                 "finish within %gs", state.transactions.open_count, state.cursors.active_count, self.grace,
                 extra={"event": "drain_start", "open_transactions": state.transactions.open_count,
                        "open_cursors": state.cursors.active_count, "grace_s": self.grace})
        while time.monotonic() < deadline and (state.transactions.open_count or state.cursors.active_count):
            time.sleep(_POLL)
        rolled_back = state.transactions.roll_back_open()
        cursors = state.cursors.active_count
        state.cursors.close_all()
        log.info("drained in %.2fs: %d transactions rolled back, %d cursors closed",
                 time.monotonic() - began, len(rolled_back), cursors,
                 extra={"event": "drain_end", "rolled_back": len(rolled_back), "cursors_closed": cursors,
                        "elapsed_s": round(time.monotonic() - began, 3)})
