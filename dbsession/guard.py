"""Make direct database access fail loudly while isolation is on.

Installed by the first isolated ``DBSession``: any engine whose dialect is not the DB-API dialect
then refuses to open a DBAPI connection or execute, with an error naming the setting. Engines
that legitimately reach the database from the same process - an in-process DB-API server in a
test, a fixture that seeds data - must be exempted explicitly with :func:`exempt`.
SQLAlchemy offers no global hook on ``create_engine()`` itself, so creating an engine is allowed;
using it is not.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from .exceptions import DirectDatabaseAccessError

__all__ = ["exempt", "install", "is_installed", "uninstall"]

_lock = threading.Lock()
_installed = False
_exempt: weakref.WeakSet[Any] = weakref.WeakSet()

_MESSAGE = (
    "Direct database access through {what} ({url}) while database_access_isolation is on. "
    "In isolation mode every database operation must go through DBSession and the DB-API at "
    "database_api_host; if this engine is trusted (a test fixture or an in-process server), "
    "exempt it with dbsession.guard.exempt(engine)."
)


def _allowed(dialect: Any) -> bool:
    return getattr(dialect, "is_dbsession", False) or dialect in _exempt


def _on_connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> None:
    if not _allowed(dialect):
        raise DirectDatabaseAccessError(_MESSAGE.format(what="a new connection", url=dialect.name))


def _on_execute(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any,
                executemany: bool) -> None:
    if not _allowed(conn.dialect):
        raise DirectDatabaseAccessError(_MESSAGE.format(what="a statement", url=conn.engine.url))


def exempt(engine: sa.Engine) -> sa.Engine:
    """Allow *engine* to reach its database even while isolation is on; returns it."""
    _exempt.add(engine.dialect)
    return engine


def install() -> None:
    global _installed
    with _lock:
        if not _installed:
            event.listen(sa.Engine, "do_connect", _on_connect)
            event.listen(sa.Engine, "before_cursor_execute", _on_execute)
            _installed = True


def uninstall() -> None:
    global _installed
    with _lock:
        if _installed:
            event.remove(sa.Engine, "do_connect", _on_connect)
            event.remove(sa.Engine, "before_cursor_execute", _on_execute)
            _installed = False


def is_installed() -> bool:
    return _installed
