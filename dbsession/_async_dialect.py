"""The isolated async engine: ``create_async_engine("postgresql+dbsession_async://host:port")``.

The async dialect is the sync isolated dialect (:mod:`dbsession.dialect`: the server's dialect
class with the DB-API seam) with SQLAlchemy's async flags, the way its own async drivers are
built: ``is_async`` (the engine's sync code then runs in a greenlet under ``AsyncEngine``), an
``AsyncAdaptedQueuePool``, and a stand-in driver connection whose I/O is awaited
(:mod:`dbsession._async_dbapi`). Compilation, wire documents, type handling, errors and the
transaction rules are the sync dialect's, inherited.

The handshake (``GET /dbapi/v1/info``, once per DB-API host and process) happens inside
``create_async_engine()``, which is a sync call: it uses the sync transport, a blocking round
trip the first time a host is named.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.engine.interfaces import Dialect

from . import _async_dbapi
from .dialect import DBSessionDialect

__all__ = ["DBSessionAsyncDialect", "async_dialect_class"]

_classes: dict[type[Dialect], type[Dialect]] = {}


class _AsyncDialectMixin:
    """Mixed in front of an isolated (sync) dialect class."""

    is_async = True
    has_terminate = True
    supports_statement_cache = True

    @classmethod
    def get_pool_class(cls, url: URL) -> type[sa.pool.Pool]:
        return sa.pool.AsyncAdaptedQueuePool

    def get_dialect_pool_class(self, url: URL) -> type[sa.pool.Pool]:
        return sa.pool.AsyncAdaptedQueuePool

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        return _async_dbapi.connect(**cparams)

    def do_terminate(self, dbapi_connection: Any) -> None:
        dbapi_connection.terminate()

    def get_driver_connection(self, connection: Any) -> Any:
        return connection


def async_dialect_class(sync_cls: type[Dialect]) -> type[Dialect]:
    """The async variant of an isolated dialect class (cached); an async class is returned as is."""
    if getattr(sync_cls, "is_async", False):
        return sync_cls
    cls = _classes.get(sync_cls)
    if cls is None:
        name = sync_cls.__name__.replace("DBSession", "DBSessionAsync", 1)
        cls = _classes[sync_cls] = type(name, (_AsyncDialectMixin, sync_cls), {"supports_statement_cache": True})
    return cls


class DBSessionAsyncDialect(DBSessionDialect):
    """Entry point for ``dbsession_async://`` and ``<backend>+dbsession_async://`` URLs."""

    driver = "dbsession_async"
    is_async = True

    @classmethod
    def get_dialect_cls(cls, url: URL) -> type[Dialect]:
        return async_dialect_class(super().get_dialect_cls(url))

    @classmethod
    def get_async_dialect_cls(cls, url: URL) -> type[Dialect]:
        return cls.get_dialect_cls(url)
