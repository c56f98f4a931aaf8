"""Database access isolation for SQLAlchemy.

``DBSession`` is a drop-in ``Session``: direct mode is a plain session; with
``database_access_isolation`` on, every statement goes to the DB-API and behaves exactly as on a
direct connection. ``AsyncDBSession`` is the same for ``AsyncSession`` (``docs/async.md``). See
``README.md`` and ``docs/architecture.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import guard, methods
from ._dbapi import CommitOutcomeUnknownError
from .config import Settings, configure, get_settings, reset_configuration
from .dialect import DBSessionDialect, create_isolated_engine, isolated_url
from .exceptions import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    DBAPIRequestError,
    DBSessionError,
    DirectDatabaseAccessError,
    IncompatibleServerError,
    LimitExceededError,
    MethodNotFoundError,
    PolicyViolationError,
    RemoteArgumentsError,
    RemoteMethodError,
    ServerError,
    TransactionError,
)
from .methods import (
    MethodArgumentsError,
    MethodRegistry,
    MethodResultError,
    MethodTransactionError,
    call_method,
    register_safe_exception,
    server_method,
)
from .session import DBSession, isolated_engine

if TYPE_CHECKING:
    from .async_session import AsyncDBSession, create_isolated_async_engine, isolated_async_engine

# imported on first use: sqlalchemy.ext.asyncio needs greenlet (the async extra), which a sync-only
# install does not have
_ASYNC_NAMES = frozenset({"AsyncDBSession", "create_isolated_async_engine", "isolated_async_engine"})


def __getattr__(name: str) -> Any:
    if name in _ASYNC_NAMES:
        from . import async_session

        return getattr(async_session, name)
    raise AttributeError(f"module 'dbsession' has no attribute {name!r}")

__all__ = [
    "AsyncDBSession",
    "AuthenticationError",
    "BadRequestError",
    "CommitOutcomeUnknownError",
    "ConfigurationError",
    "DBAPIRequestError",
    "DBSession",
    "DBSessionDialect",
    "DBSessionError",
    "DirectDatabaseAccessError",
    "IncompatibleServerError",
    "LimitExceededError",
    "MethodArgumentsError",
    "MethodNotFoundError",
    "MethodRegistry",
    "MethodResultError",
    "MethodTransactionError",
    "PolicyViolationError",
    "RemoteArgumentsError",
    "RemoteMethodError",
    "ServerError",
    "Settings",
    "TransactionError",
    "call_method",
    "configure",
    "create_isolated_async_engine",
    "create_isolated_engine",
    "get_settings",
    "guard",
    "isolated_async_engine",
    "isolated_engine",
    "isolated_url",
    "methods",
    "register_safe_exception",
    "reset_configuration",
    "server_method",
]
