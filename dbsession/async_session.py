"""``AsyncDBSession``: a drop-in ``sqlalchemy.ext.asyncio.AsyncSession`` that can run without credentials.

Direct mode (the default) *is* a plain ``AsyncSession``: only the constructor is overridden, and
it changes nothing. Isolation mode (``database_access_isolation``, the same settings as
:class:`~dbsession.DBSession`) binds the session to the isolated async engine of the DB-API at
``database_api_host`` (:mod:`dbsession._async_dialect`): every statement - ``execute``,
``stream``, ``get``, lazy loads through ``awaitable_attrs``, ``run_sync`` - goes through the same
dialect, wire format, transaction rules and transport logic as the sync session, awaited instead
of blocking. Needs ``pip install 'dbsession[async]'`` (aiohttp, greenlet). See ``docs/async.md``.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from .config import Settings
from .dialect import isolated_url
from .session import on_release, resolve_bind

__all__ = ["AsyncDBSession", "create_isolated_async_engine", "isolated_async_engine"]

_engines_lock = threading.Lock()
_engines: dict[tuple[str, str | None, str | None, float], AsyncEngine] = {}


def create_isolated_async_engine(api_host: str, *, token: str | None = None, token_file: str | None = None,
                                 **kw: Any) -> AsyncEngine:
    """An async engine whose every statement goes to the DB-API at *api_host* (``http://host:port``)."""
    connect_args = dict(kw.pop("connect_args", {}))
    if token is not None or token_file is not None:
        connect_args.update(token=token, token_file=token_file)
    url = isolated_url(api_host).set(drivername="dbsession_async")
    return create_async_engine(url, connect_args=connect_args, **kw)


def isolated_async_engine(settings: Settings) -> AsyncEngine:
    """The process-wide async engine for the DB-API named by *settings* (created once).

    Its connections are not bound to an event loop (the HTTP pools underneath are per loop), so
    one engine serves every loop of the process, as the sync one serves every thread.
    """
    assert settings.database_api_host is not None
    key = (settings.database_api_host, settings.token, settings.token_file, settings.commit_retry_deadline)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = create_isolated_async_engine(
                settings.database_api_host, token=settings.token, token_file=settings.token_file,
                connect_args={"commit_retry_deadline": settings.commit_retry_deadline},
                pool_size=10, max_overflow=20)
        return engine


def _release(database_api_host: str) -> None:
    with _engines_lock:
        engines = [_engines.pop(key) for key in [k for k in _engines if k[0] == database_api_host]]
    for engine in engines:
        engine.sync_engine.dispose()  # pooled connections hold no server state: nothing to await
    try:
        from ._async_transport import discard_hosts
    except ImportError:  # aiohttp is not installed: no async transport was ever made
        return
    discard_hosts(database_api_host)


on_release(_release)


class AsyncDBSession(AsyncSession):
    """An ``AsyncSession`` that, when ``database_access_isolation`` is on, talks to the DB-API."""

    isolated: bool

    def __init__(self, bind: Any = None, *, database_access_isolation: bool | None = None,
                 database_api_host: str | None = None, token: str | None = None,
                 token_file: str | None = None, commit_retry_deadline: float | None = None,
                 **kw: Any) -> None:
        self.isolated, bind = resolve_bind(
            "AsyncDBSession", bind, kw, isolated_async_engine,
            database_access_isolation=database_access_isolation, database_api_host=database_api_host,
            token=token, token_file=token_file, commit_retry_deadline=commit_retry_deadline)
        super().__init__(bind=bind, **kw)
