"""Errors raised by ``dbsession``.

Database errors are *not* here: in isolation mode a failing statement raises the same SQLAlchemy
exception class (``IntegrityError``, ``OperationalError``, ...) that a direct session would raise.
An unreachable DB-API counts as a lost database connection and surfaces as SQLAlchemy's
``OperationalError``; when that happens to a commit that may have reached the DB-API, the
``OperationalError`` is ``dbsession.CommitOutcomeUnknownError`` (``txn_id``): the commit may have
succeeded (it lives in ``dbsession._dbapi``, being also the stand-in driver's disconnect error).
What remains are errors only isolation can cause::

    DBSessionError(Exception)
     +-- ConfigurationError          settings missing or contradictory
     +-- DirectDatabaseAccessError   a direct engine/connection used while isolation is on
     +-- DBAPIRequestError           the DB-API refused a request (carries code, error_id, status)
     |    +-- AuthenticationError    401: token missing, expired, forged
     |    +-- PolicyViolationError   403: the policy does not allow this statement
     |    +-- BadRequestError        400/413: malformed, unsupported or oversized request
     |    |    +-- LimitExceededError  a policy limit: statement depth, body size, result rows
     |    |    +-- RemoteArgumentsError  400 bad_arguments: the server's signature of a named
     |    |                              method refused the arguments (also a MethodArgumentsError)
     |    +-- TransactionError       409/410: transaction expired, unknown, misrouted, out of order
     |    +-- MethodNotFoundError    404: the DB-API does not serve that named method (or version)
     |    +-- ServerError            5xx: the DB-API failed (see its log under error_id)
     |         +-- RemoteMethodError a named method raised an exception not registered as safe
     +-- IncompatibleServerError     the DB-API speaks another wire version or dialect
"""

from __future__ import annotations

from typing import Any

from query_translation import MethodArgumentsError

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "DBAPIRequestError",
    "DBSessionError",
    "DirectDatabaseAccessError",
    "IncompatibleServerError",
    "LimitExceededError",
    "MethodNotFoundError",
    "PolicyViolationError",
    "RemoteArgumentsError",
    "RemoteMethodError",
    "ServerError",
    "TransactionError",
    "error_class_for",
]


class DBSessionError(Exception):
    """Base class of the errors only database access isolation can cause."""


class ConfigurationError(DBSessionError, RuntimeError):
    """The isolation settings are missing or contradict each other."""


class DirectDatabaseAccessError(DBSessionError, RuntimeError):
    """Code tried to reach the database directly while ``database_access_isolation`` is on."""


class IncompatibleServerError(DBSessionError):
    """The DB-API server speaks another wire version or database dialect than this client."""


class DBAPIRequestError(DBSessionError):
    """The DB-API answered a request with an error envelope."""

    def __init__(self, message: str, *, code: str = "error", error_id: str | None = None,
                 request_id: str | None = None, status: int | None = None, details: Any = None,
                 txn_state: str | None = None, outcome: str | None = None,
                 refused: dict[str, Any] | None = None) -> None:
        super().__init__(f"{message}{ids_suffix(error_id, request_id)}")
        self.code = code
        self.error_id = error_id  # the server's log has the details under it
        self.request_id = request_id  # the X-Request-Id the request carried (the server logs it)
        self.status = status
        self.details = details
        self.txn_state = txn_state  # "open": the request ran inside the server transaction
        self.outcome = outcome  # a finished transaction's remembered outcome (410 on commit)
        # True when this answered a retry after an earlier attempt's answer was lost
        self.answer_lost = False
        self.batch_index: int | None = None  # the statement of a batch (POST /batch) it answers
        refused = refused or {}
        # what a policy refusal names (None when it does not apply)
        self.role: str | None = refused.get("role")
        self.table: str | None = refused.get("table")
        self.column: str | None = refused.get("column")
        self.action: str | None = refused.get("action")  # "insert", "update", "delete"
        self.function: str | None = refused.get("function")
        self.method: str | None = refused.get("method")
        self.claim: str | None = refused.get("claim")
        self.limit: str | None = refused.get("limit")
        self.maximum: Any = refused.get("max")
        self.wall: str | None = refused.get("wall")  # "database": the database's own privileges refused it


class AuthenticationError(DBAPIRequestError):
    """The DB-API did not accept the token (HTTP 401)."""


class PolicyViolationError(DBAPIRequestError):
    """The DB-API's policy refused the statement (HTTP 403)."""


class BadRequestError(DBAPIRequestError):
    """The request was malformed, unsupported or too large (HTTP 400 / 413)."""


class LimitExceededError(BadRequestError):
    """A policy limit refused the request: ``limit`` names it (``statement_depth``, ``body_bytes``,
    ``result_rows``), ``maximum`` is its value."""


class RemoteArgumentsError(BadRequestError, MethodArgumentsError):
    """The DB-API refused a named method's arguments (400 ``bad_arguments``).

    This side checks arguments against its own signature before sending them, so this means the
    server's signature of the method differs (same name and version, another annotation): deploy
    the method's module to both sides together. It is also a ``MethodArgumentsError``, the error
    a call with arguments that do not fit raises in either mode.
    """


class TransactionError(DBAPIRequestError):
    """The server-side transaction is gone, unknown, on another instance, or out of order."""


class ServerError(DBAPIRequestError):
    """The DB-API failed while handling the request (HTTP 5xx)."""


class MethodNotFoundError(DBAPIRequestError):
    """The DB-API does not serve the named method, or serves another version of it."""


class RemoteMethodError(ServerError):
    """A named method raised, on the server, an exception not registered as safe to transmit.

    The server logged it with its traceback under ``error_id``; only that id comes back.
    """


_BY_STATUS: dict[int, type[DBAPIRequestError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PolicyViolationError,
    409: TransactionError,
    410: TransactionError,
    413: BadRequestError,
}


REFUSAL_FIELDS = ("role", "table", "column", "action", "function", "method", "claim", "limit", "max", "wall")


def ids_suffix(error_id: str | None, request_id: str | None) -> str:
    """`` (error id E, request id R)``: what finds the request's lines in the DB-API's log."""
    ids = [f"{name} {value}" for name, value in (("error id", error_id), ("request id", request_id)) if value]
    return f" ({', '.join(ids)})" if ids else ""


def error_class_for(status: int, code: str | None = None) -> type[DBAPIRequestError]:
    """The exception class for an HTTP error status (and envelope code) from the DB-API."""
    if code == "limit_exceeded":
        return LimitExceededError
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, DBAPIRequestError)
