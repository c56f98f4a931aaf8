"""Named methods on the server: ``POST /dbapi/v1/methods/<name>``, ``GET /dbapi/v1/methods``.

The served methods are exactly the registry's (``ServerState.methods``, the process-wide
``DEFAULT_REGISTRY`` unless ``create_app(methods=MethodRegistry())``), looked up at each call.
A call runs inside the caller's transaction when it names one (``txn`` / ``seq``, as
``/execute``) - so its writes commit or roll back with the caller's, exactly as a direct call
with the caller's session - and in a transaction of its own, committed at once, when it does
not. Either way the method runs in a savepoint of a server ``Session``: when it raises, its
writes are undone and the caller's earlier work in the transaction stays.

What the method raises: database errors answer as on ``/execute`` (the client raises the same
SQLAlchemy class); exceptions registered safe - among them ``MethodTransactionError`` (the
method tried to end the caller's transaction) and ``MethodResultError`` (its result does not fit
its annotation) - answer 422 ``method_error`` with their class and arguments, logged at INFO
under the error id; anything else is logged with its traceback and answers 500
``method_failed`` with the error id only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response
from sqlalchemy.orm import Session

from query_translation import (
    DEFAULT_REGISTRY,
    Method,
    MethodArgumentsError,
    MethodRegistry,
    UnknownMethodError,
    encode_exception,
)

from .enforcement import apply_statement_timeout, end_statement_timeout
from .errors import APIError, new_error_id
from .state import ServerState
from .telemetry import label
from .views import _body, _field, _in_transaction, _json, _principal, _state, _txn_field

__all__ = ["MethodFailed", "MethodRaised", "load_methods", "methods_api"]

log = logging.getLogger("dbapi_server.methods")

methods_api = Blueprint("dbapi_methods", __name__, url_prefix="/dbapi/v1/methods")


class MethodRaised(APIError):
    """The method raised an exception registered as safe: its class and arguments go back."""

    status = 422
    code = "method_error"


class MethodFailed(APIError):
    """The method raised anything else: only the error id goes back (the log has the rest)."""

    status = 500
    code = "method_failed"


def load_methods(methods: MethodRegistry | Iterable[str] | str | None) -> MethodRegistry:
    """The registry to serve: given, or the default one after importing the named modules."""
    import importlib

    if isinstance(methods, MethodRegistry):
        return methods
    if isinstance(methods, str):
        methods = methods.split(",")
    for module in methods or ():
        if module.strip():
            importlib.import_module(module.strip())
    return DEFAULT_REGISTRY


@methods_api.get("")
def list_methods() -> Response:
    _principal()
    return _json({"methods": [_description(m) for m in _state().methods]})


def _description(method: Method) -> dict[str, Any]:
    return {"name": method.name, "version": method.version, "signature": method.describe()}


@methods_api.post("/<name>")
def call_method(name: str) -> Response:
    label(kind="method")
    state, principal = _state(), _principal()
    body = _body(principal)  # the role's body limit holds for method arguments too
    version = _field(body, "version", int, required=True)
    arguments = _field(body, "args", dict) or {}
    try:
        method = state.methods.get(name, version)
    except UnknownMethodError as exc:
        raise APIError(str(exc), status=404, code="unknown_method", method=name) from None
    state.policy.check_method(name, principal)

    def run(conn: sa.Connection) -> dict[str, Any]:
        apply_statement_timeout(state.policy, conn, principal)  # the role's limit holds here too
        try:
            # trusted code: the login role, not the caller's database role (db_wall)
            with state.wall.server_work(conn) if state.wall is not None else nullcontext():
                return {"result": _run(state, method, conn, _arguments(method, arguments))}
        finally:
            end_statement_timeout(state.policy, conn)  # ...and ends with the method

    txn_id = _txn_field(body)
    if txn_id is not None:
        seq = _field(body, "seq", int, required=True)
        return _in_transaction(state, principal, txn_id, seq, bool(body.get("begin")), run)
    with state.wall.as_server() if state.wall is not None else nullcontext(), state.engine.begin() as conn:
        return _json(run(conn))  # no caller transaction: one of its own, committed now


def _arguments(method: Method, data: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return method.decode_arguments(data)
    except MethodArgumentsError as exc:
        raise APIError(str(exc), code="bad_arguments", method=method.name) from None


def _run(state: ServerState, method: Method, conn: sa.Connection, kwargs: dict[str, Any]) -> Any:
    _begin_for_real(conn)
    session = Session(bind=conn, join_transaction_mode="create_savepoint", autoflush=True)
    try:
        with session.begin():  # a savepoint: released on return, rolled back when it raises
            # invoke: the function may not end the caller's transaction (MethodTransactionError);
            # encode_result: MethodResultError for a result its annotation does not allow -
            # both registered safe, so the client raises them as direct mode does
            return method.encode_result(method.invoke(session, kwargs))
    except sa.exc.DBAPIError:
        raise  # answered as on /execute: the client raises the same SQLAlchemy class
    except Exception as exc:
        encoded = encode_exception(exc)
        if encoded is None:
            raise _failed(method, exc) from None
        error_id = new_error_id()
        log.info("named method %s raised %s, error id %s", method.name, type(exc).__name__, error_id)
        raise MethodRaised(f"The named method {method.name} raised {type(exc).__name__}: {exc}",
                           method=method.name, details=encoded, error_id=error_id) from None
    finally:
        session.close()


def _failed(method: Method, exc: Exception) -> MethodFailed:
    error_id = new_error_id()
    log.error("named method %s failed, error id %s", method.name, error_id, exc_info=exc)
    return MethodFailed(
        f"The named method {method.name} failed on the DB-API; its log has the details under "
        f"error id {error_id}.", method=method.name, error_id=error_id)


def _begin_for_real(conn: sa.Connection) -> None:
    """Make the database transaction real before the method's SAVEPOINT.

    pysqlite defers BEGIN to the first write, and a SAVEPOINT outside a transaction starts one
    that RELEASE then commits - the method's writes would commit ahead of the caller's.
    """
    raw = conn.connection.dbapi_connection
    if conn.dialect.name == "sqlite" and getattr(raw, "in_transaction", True) is False:
        conn.exec_driver_sql("BEGIN")

