"""Make direct database access fail loudly while the process is in isolation mode.

Installed by the first ``DBSession`` created while isolation is the *process* setting
(``DATABASE_ACCESS_ISOLATION`` or ``dbsession.configure()``; a single session isolated by argument
leaves the process alone). From then on, for any dialect other than the DB-API's:

* ``create_engine()`` raises (through ``Dialect.engine_created``, the hook SQLAlchemy calls for
  every new engine just before returning it);
* an engine created earlier refuses to open a DBAPI connection or to execute.

The errors name the setting. Engines that legitimately reach the database from the same process -
an in-process DB-API server in a test, a fixture that seeds data - are created inside
:func:`trusted` or exempted explicitly with :func:`exempt`; code running inside :func:`trusted`
may use any engine. The guard is a tripwire for code that still touches the database directly;
the security boundary is that the untrusted process holds no credentials.

Observers (:func:`observe`) hear of every refusal before it is raised, so a test harness can
report direct access even when the code under test swallows the exception (the pytest plugin,
:mod:`dbsession.pytest_plugin`, does).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine.interfaces import Dialect

from .exceptions import DirectDatabaseAccessError

__all__ = ["exempt", "install", "is_installed", "observe", "refuse", "trusted", "uninstall"]

_lock = threading.Lock()
_installed = False
_exempt: weakref.WeakSet[Any] = weakref.WeakSet()
_trusted: ContextVar[bool] = ContextVar("dbsession_guard_trusted", default=False)
_original_engine_created: Any = None
_observers: list[Callable[[DirectDatabaseAccessError], object]] = []

_MESSAGE = (
    "Direct database access through {what} ({url}) while database_access_isolation is on. "
    "In isolation mode every database operation must go through DBSession and the DB-API at "
    "database_api_host; if this engine is trusted (a test fixture or an in-process server), "
    "create it inside dbsession.guard.trusted() or exempt it with dbsession.guard.exempt(engine)."
)


def _allowed(dialect: Any) -> bool:
    return getattr(dialect, "is_dbsession", False) or dialect in _exempt or _trusted.get()


def refuse(message: str) -> DirectDatabaseAccessError:
    """The error for a direct access, after telling every observer about it; the caller raises it."""
    error = DirectDatabaseAccessError(message)
    for callback in list(_observers):
        callback(error)
    return error


def observe(callback: Callable[[DirectDatabaseAccessError], object]) -> Callable[[], None]:
    """Call *callback* (in the offending thread) for every refusal; returns the function that stops it."""
    _observers.append(callback)

    def stop() -> None:
        if callback in _observers:
            _observers.remove(callback)

    return stop


def _on_connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> None:
    if not _allowed(dialect):
        raise refuse(_MESSAGE.format(what="a new connection", url=dialect.name))


def _on_execute(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any,
                executemany: bool) -> None:
    if not _allowed(conn.dialect):
        raise refuse(_MESSAGE.format(what="a statement", url=conn.engine.url))


def _on_engine_created(cls: Any, engine: sa.Engine) -> None:
    if _trusted.get():
        exempt(engine)
    elif not _allowed(engine.dialect):
        raise refuse(_MESSAGE.format(what="create_engine()", url=engine.url))
    _original_engine_created.__func__(cls, engine)


@contextmanager
def trusted() -> Iterator[None]:
    """Code inside this block may reach the database directly; engines created here stay exempt."""
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


def exempt(engine: sa.Engine) -> sa.Engine:
    """Allow *engine* to reach its database even while isolation is on; returns it."""
    _exempt.add(engine.dialect)
    return engine


def install() -> None:
    global _installed, _original_engine_created
    with _lock:
        if not _installed:
            event.listen(sa.Engine, "do_connect", _on_connect)
            event.listen(sa.Engine, "before_cursor_execute", _on_execute)
            _original_engine_created = Dialect.__dict__["engine_created"]
            Dialect.engine_created = classmethod(_on_engine_created)  # type: ignore[method-assign,assignment]
            _installed = True


def uninstall() -> None:
    global _installed
    with _lock:
        if _installed:
            event.remove(sa.Engine, "do_connect", _on_connect)
            event.remove(sa.Engine, "before_cursor_execute", _on_execute)
            Dialect.engine_created = _original_engine_created  # type: ignore[method-assign]
            _installed = False


def is_installed() -> bool:
    return _installed
