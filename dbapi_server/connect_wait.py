"""Connecting waits a few seconds for a database that is restarting, instead of failing at once.

While PostgreSQL restarts (a fast shutdown and start: about a second) or fails over, new
connections are refused. A request that needs one - a one-shot read, the first statement of a
transaction, a commit outcome lookup - would fail although nothing of it ran and the database is
back a moment later. So the DB-API's own engine (``create_app`` from a URL) connects with a short
wait: on a refused connection it tries again, with backoff, for up to ``DBAPI_DB_CONNECT_WAIT``
seconds (default 5; 0 turns it off). Only *connecting* is retried - nothing has been sent to the
database - so no statement can run twice. Work that was in flight on a connection the restart
cut still fails, as on a direct connection.

The readiness probe does not wait (:func:`no_wait`): an instance whose database is down is not
ready now, and a probe must answer within its own timeout.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

__all__ = ["no_wait", "wait_for_connections"]

log = logging.getLogger("dbapi_server.connect_wait")

_WAIT: ContextVar[bool] = ContextVar("dbapi_connect_wait", default=True)


def wait_for_connections(engine: sa.Engine, seconds: float) -> None:
    """Make *engine* retry refused connections for up to *seconds* (a ``do_connect`` listener)."""
    if seconds <= 0 or engine.dialect.name == "sqlite":
        return
    dbapi = engine.dialect.loaded_dbapi

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
        give_up = time.monotonic() + (seconds if _WAIT.get() else 0.0)
        pause = 0.05
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dbapi.OperationalError as exc:
                if time.monotonic() + pause > give_up:
                    raise
                log.info("the database refused a connection (%s); trying again in %.2fs",
                         str(exc).splitlines()[0] if str(exc) else type(exc).__name__, pause)
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


@contextlib.contextmanager
def no_wait() -> Iterator[None]:
    """Connections made in the block fail at once when the database refuses them."""
    token = _WAIT.set(False)
    try:
        yield
    finally:
        _WAIT.reset(token)
