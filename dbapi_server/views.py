"""HTTP routes of the DB-API (blueprint ``dbapi``, mounted at ``/dbapi/v1``).

======  ===================================  ==================================================
GET     ``/info``                            handshake: dialect, driver, versions, dialect state
GET     ``/live``, ``/ready``, ``/health``     probes: :mod:`dbapi_server.probes`
GET     ``/openapi.json``                    the OpenAPI 3.1 description of these routes
POST    ``/execute``                         run one statement (optionally in a transaction)   [1]
POST    ``/batch``                           statements of a transaction, each with its row count;
                                             optionally committing if and only if all matched  [1]
POST    ``/cursors/<id>/fetch``              next page of a streamed result (numbered, replayable)
POST    ``/cursors/<id>/close``              end a streamed result early
POST    ``/transactions/<id>/commit``        commit; asking again returns the same outcome     [1]
POST    ``/transactions/<id>/rollback``      roll back                                         [1]
POST    ``/catalog/has_table``               whether a served table exists (``dialect.has_table``)
POST    ``/catalog/reflect``                 a dialect reflection method on served tables
======  ===================================  ==================================================

[1] answered by the request pipeline of :mod:`dbapi_server.pipeline`, before Flask (no view here).

The request and answer formats are documented in ``docs/wire-format.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request

from ._request_schema import EXECUTE_REQUEST, MAX_PAGE_ROWS
from .auth import Principal
from .cursors import CursorGone
from .errors import APIError
from .executor import fetch_page
from .openapi import openapi_document
from .pipeline import check_content_type, parse_json_object, read_at_most, run_in_transaction
from .reflection import reflect as run_reflection
from .refusals import LimitExceeded
from .state import ServerState
from .telemetry import label

__all__ = ["MAX_PAGE_ROWS", "api"]

api = Blueprint("dbapi", __name__, url_prefix="/dbapi/v1")

_JSON = "application/json"


def _state() -> ServerState:
    return current_app.extensions["dbapi_server"]  # type: ignore[no-any-return]


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status=status, mimetype=_JSON)


def _principal() -> Principal:
    state = _state()
    principal = state.auth.authenticate(request.headers.get("Authorization"))
    label(subject=principal.subject)
    if state.wall is not None:  # from here on, connections checked out run under its database role
        state.wall.act_as(principal)
    return principal


def _body(principal: Principal | None = None) -> Mapping[str, Any]:
    check_content_type(request.environ.get("CONTENT_TYPE"))
    if principal is None:
        data = request.get_data(cache=False)  # the app's limit: MAX_CONTENT_LENGTH, by Content-Length first
    else:
        # the role's limit, judged by the Content-Length before one byte of the body is read; a
        # body without one (chunked) is read up to the limit and no further
        policy = _state().policy
        limit = policy.limits_for(principal).max_body_bytes
        if request.content_length is not None:
            policy.check_body_size(request.content_length, principal)
        data = request.get_data(cache=False) if limit is None else read_at_most(request.stream, limit + 1)
        policy.check_body_size(len(data), principal)
    return parse_json_object(data)


def _field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise APIError(f"The request needs the field {name!r}.", code="malformed_request")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise APIError(f"The field {name!r} has the wrong type.", code="malformed_request")
    return value


@api.get("/info")
def info() -> Response:
    return _json(_state().info)


@api.get("/openapi.json")
def openapi() -> Response:
    return _json(openapi_document(request.host_url))


def _txn_field(body: Mapping[str, Any]) -> str | None:
    """The request's transaction id, if any; it must fit in the commit URL."""
    txn_id: str | None = EXECUTE_REQUEST["txn"].check(body.get("txn"))  # as /execute checks it
    label(txn=txn_id)
    return txn_id


def _in_transaction(state: ServerState, principal: Principal, txn_id: str, seq: int, begin: bool,
                    run: Callable[[sa.Connection], dict[str, Any] | None]) -> Response:
    """*run* as request *seq* of the caller's transaction, for a Flask view (named methods): the
    replay protocol of ``TransactionManager.run_request``, as the hot routes run it."""
    status, payload = run_in_transaction(state, principal, txn_id, seq, begin, run)
    return Response(payload, status=status, mimetype=_JSON)


@api.post("/cursors/<cursor_id>/fetch")
def fetch_cursor(cursor_id: str) -> Response:
    label(kind="fetch")
    principal = _principal()
    page = _field(_body(), "page", int, required=True)
    state = _state()
    cursor = state.cursors.get(cursor_id, principal.subject)
    with cursor.lock:
        if cursor.last_reply is not None and page == cursor.page:
            label(replayed=True)
            return _json(cursor.last_reply)  # a retry: the same page again, no rows skipped
        if page != cursor.page + 1 or cursor.closed:
            raise APIError(f"Page {page} of cursor {cursor_id} cannot be fetched now (expected "
                           f"{cursor.page + 1}).", status=409, code="out_of_order")
        try:
            rows, more = fetch_page(cursor.result, cursor.page_size)  # counted by the statement's run
        except LimitExceeded:
            state.cursors.close(cursor_id)  # counted across pages: this page and the rest refused
            raise
        if not more:
            cursor.close()  # exhausted: connection freed now; the entry stays for a replay
        cursor.page, cursor.last_reply, cursor.last_used = page, {"rows": rows, "more": more}, time.monotonic()
        return _json(cursor.last_reply)


@api.post("/cursors/<cursor_id>/close")
def close_cursor(cursor_id: str) -> Response:
    label(kind="close")
    principal = _principal()
    state = _state()
    try:
        state.cursors.get(cursor_id, principal.subject)
    except CursorGone:
        return _json({"closed": True})
    state.cursors.close(cursor_id)
    return _json({"closed": True})


@api.post("/catalog/has_table")
def has_table() -> Response:
    """``Dialect.has_table`` for a client: what alembic's ``MigrationContext`` asks before it reads
    ``alembic_version``. Only tables the server serves and the caller's role may use are
    answered from the database; any other name is "no such table" (the catalog stays hidden)."""
    label(kind="has_table")
    principal = _principal()
    body = _body(principal)
    name: str = _field(body, "name", str, required=True)
    schema: str | None = _field(body, "schema", str)
    state = _state()
    key = f"{schema}.{name}" if schema else name
    role = state.policy.role_for(principal)
    if key == state.outcome_table or not role.raw_sql and (key not in state.metadata.tables
                                                          or role.grant(key) is None):
        return _json({"exists": False})  # a role allowed raw SQL could ask the catalog itself
    with state.read_connection() as conn:
        return _json({"exists": bool(state.engine.dialect.has_table(conn, name, schema))})


@api.post("/catalog/reflect")
def reflect() -> Response:
    """The dialect's reflection methods for a client (:mod:`dbapi_server.reflection`)."""
    label(kind="reflect")
    principal = _principal()
    body = _body(principal)
    method: str = _field(body, "method", str, required=True)
    args: Mapping[str, Any] = _field(body, "args", dict) or {}
    return _json(run_reflection(_state(), principal, method, args))
