"""``DBSession``: a drop-in ``sqlalchemy.orm.Session`` that can run without database credentials.

Direct mode (the default) *is* a plain ``Session``: nothing is overridden on any execution path.
Isolation mode (``database_access_isolation``) binds the session to an engine whose dialect sends
every statement to the DB-API at ``database_api_host`` (:mod:`dbsession.dialect`); the ORM above it
- identity map, unit of work, relationship loading, events - is SQLAlchemy's own, unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from . import _commit_batch, guard
from .config import Settings, get_settings
from .dialect import create_isolated_engine, forget_server_info
from .transport import discard_transports

__all__ = ["DBSession", "isolated_engine", "on_release", "release_api_host"]

_engines_lock = threading.Lock()
_engines: dict[tuple[str, str | None, str | None, float], sa.Engine] = {}
_release_hooks: list[Callable[[str], None]] = []


def on_release(hook: Callable[[str], None]) -> None:
    """Call *hook(database_api_host)* from :func:`release_api_host` (the async engines use it)."""
    _release_hooks.append(hook)


def isolated_engine(settings: Settings) -> sa.Engine:
    """The process-wide engine for the DB-API named by *settings* (created once)."""
    assert settings.database_api_host is not None
    key = (settings.database_api_host, settings.token, settings.token_file, settings.commit_retry_deadline)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = create_isolated_engine(
                settings.database_api_host, token=settings.token, token_file=settings.token_file,
                connect_args={"commit_retry_deadline": settings.commit_retry_deadline},
                pool_size=10, max_overflow=20)
        return engine


def release_api_host(database_api_host: str) -> None:
    """Dispose the engines, connection pools and handshake cached for a DB-API that went away.

    For harnesses that start and stop DB-API servers (the pytest plugin): the next session for
    that host connects afresh instead of reusing sockets to a server that no longer exists.
    """
    with _engines_lock:
        engines = [_engines.pop(key) for key in [k for k in _engines if k[0] == database_api_host]]
    for engine in engines:
        engine.dispose()
    for hook in _release_hooks:
        hook(database_api_host)
    for base in discard_transports(database_api_host):
        forget_server_info(base)


def _is_isolated_bind(bind: Any) -> bool:
    return bool(getattr(getattr(bind, "dialect", None), "is_dbsession", False))


def resolve_bind(kind: str, bind: Any, kw: dict[str, Any], make_engine: Callable[[Settings], Any],
                 **arguments: Any) -> tuple[bool, Any]:
    """(isolated, bind) for a ``DBSession`` or ``AsyncDBSession`` built with *arguments*.

    Isolated: a direct bind is refused loudly, no bind means the isolated engine
    (*make_engine*), and a process whose own settings say isolation gets the guard. Direct: the
    bind as given - the session is then a plain ``Session`` / ``AsyncSession``.
    """
    settings = get_settings(**arguments)
    if not settings.database_access_isolation:
        return False, bind
    for candidate in [bind, *(kw.get("binds") or {}).values()]:
        if candidate is not None and not _is_isolated_bind(candidate):
            raise guard.refuse(
                f"{kind} was given a direct database bind ({candidate!r}) while "
                "database_access_isolation is on; leave bind unset - the session talks "
                "to the DB-API at database_api_host.")
    if bind is None and not kw.get("binds"):
        bind = make_engine(settings)
    process = settings if all(a is None for a in arguments.values()) else get_settings()
    if process.database_access_isolation:
        guard.install()  # the process itself is in isolation mode, not just this session
    return True, bind


class DBSession(Session):
    """A ``Session`` that, when ``database_access_isolation`` is on, talks to the DB-API."""

    def __init__(self, bind: Any = None, *, database_access_isolation: bool | None = None,
                 database_api_host: str | None = None, token: str | None = None,
                 token_file: str | None = None, commit_retry_deadline: float | None = None,
                 **kw: Any) -> None:
        self.isolated, bind = resolve_bind(
            "DBSession", bind, kw, isolated_engine, database_access_isolation=database_access_isolation,
            database_api_host=database_api_host, token=token, token_file=token_file,
            commit_retry_deadline=commit_retry_deadline)
        super().__init__(bind=bind, **kw)

    def commit(self) -> None:
        """``Session.commit()``; isolated, its final flush may carry the COMMIT (``_commit_batch``)."""
        if not self.isolated:
            return super().commit()
        self._dbs_committing = True
        try:
            super().commit()
        finally:
            self._dbs_committing = False

    def flush(self, objects: Any = None) -> None:
        if objects is not None or not getattr(self, "_dbs_committing", False) or self._flushing:
            return super().flush(objects)
        plan = _commit_batch.commit_flush_for(self)
        if plan is None:
            return super().flush()
        with plan:
            super().flush()


_commit_batch.install(DBSession)
