"""HTTP routes of the DB-API (blueprint ``dbapi``, mounted at ``/dbapi/v1``).

======  ===================================  ==================================================
GET     ``/info``                            handshake: dialect, driver, versions, dialect state
GET     ``/live``, ``/ready``, ``/health``     probes: :mod:`dbapi_server.probes`
GET     ``/openapi.json``                    the OpenAPI 3.1 description of these routes
POST    ``/execute``                         run one statement (optionally in a transaction)
POST    ``/cursors/<id>/fetch``              next page of a streamed result (numbered, replayable)
POST    ``/cursors/<id>/close``              end a streamed result early
POST    ``/transactions/<id>/commit``        commit; asking again returns the same outcome
POST    ``/transactions/<id>/rollback``      roll back
======  ===================================  ==================================================

The request and answer formats are documented in ``docs/wire-format.md``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request

from query_translation import count_values, measure_document

from .auth import Principal
from .cursors import CursorGone
from .enforcement import execute_plan, execute_plan_streamed
from .errors import APIError, envelope_for_exception
from .executor import fetch_page
from .openapi import openapi_document
from .policy import Plan
from .refusals import LimitExceeded
from .state import ServerState
from .telemetry import label, statement_kind

__all__ = ["api"]

api = Blueprint("dbapi", __name__, url_prefix="/dbapi/v1")

_JSON = "application/json"
MAX_PAGE_ROWS = 100_000
_TXN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


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
    _check_content_type()
    if principal is None:
        data = request.get_data(cache=False)  # the app's limit: MAX_CONTENT_LENGTH, by Content-Length first
    else:
        # the role's limit, judged by the Content-Length before one byte of the body is read; a
        # body without one (chunked) is read up to the limit and no further
        policy = _state().policy
        limit = policy.limits_for(principal).max_body_bytes
        if request.content_length is not None:
            policy.check_body_size(request.content_length, principal)
        data = request.get_data(cache=False) if limit is None else _read_at_most(limit + 1)
        policy.check_body_size(len(data), principal)
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise APIError(f"The request body is not valid JSON: {exc}.", code="malformed_json") from None
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object.", code="malformed_request")
    return body


def _read_at_most(size: int) -> bytes:
    """The body, or its first *size* bytes (a WSGI server may return less than asked per read)."""
    parts, total = [], 0
    while total < size:
        chunk = request.stream.read(min(1 << 16, size - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


def _check_content_type() -> None:
    """A body is JSON: another declared type is refused (415) before the body is read."""
    mimetype = request.mimetype
    if mimetype and mimetype != _JSON and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        raise APIError("The request body must be JSON (Content-Type: application/json).", status=415,
                       code="unsupported_media_type")


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
    txn_id: str | None = _field(body, "txn", str)
    if txn_id is not None and not _TXN_ID.fullmatch(txn_id):
        raise APIError("'txn' must be 1 to 128 letters, digits, '-' or '_' (a random UUID is best).",
                       code="malformed_request")
    label(txn=txn_id)
    return txn_id


@api.post("/execute")
def execute() -> Response:
    state = _state()
    principal = _principal()
    body = _body(principal)
    document = _field(body, "stmt", dict, required=True)
    label(kind=statement_kind(document))
    sql_hash = _field(body, "sql", str, required=True)
    raw_params = _field(body, "params", list)
    many = bool(_field(body, "many", bool))
    options = _field(body, "options", dict)
    txn_id = _txn_field(body)
    column_keys = _field(body, "keys", list)
    if column_keys is not None and not all(isinstance(k, str) for k in column_keys):
        raise APIError("'keys' must be a list of column key strings.", code="malformed_request")
    stream = _field(body, "stream", int)
    if stream is not None and not (1 <= stream <= MAX_PAGE_ROWS) or (stream and many):
        raise APIError(f"'stream' is a page size from 1 to {MAX_PAGE_ROWS}, for single executions.",
                       code="malformed_request")

    if many and not raw_params:  # checked before decoding, which turns "no params" into [{}]
        raise APIError("An executemany request needs at least one parameter set.", code="malformed_request")

    # the statement's size, refused before anything expensive (validation, decoding, checks,
    # compiling) - references expanded, so a small body cannot stand for an exponential statement
    state.policy.check_size(measure_document(document), count_values(raw_params), principal)

    def prepare() -> tuple[Plan, Any, list[dict[str, Any]]]:
        statement, stmt_info = state.executor.decode(document)
        params = state.executor.decode_params(raw_params)
        plan = state.policy.plan(statement, stmt_info, principal, params=params, column_keys=column_keys,
                                 dialect=state.engine.dialect)
        return plan, stmt_info, params

    def run(conn: sa.Connection, release: Callable[[], None] = lambda: None) -> dict[str, Any]:
        plan, _, params = prepare()
        if stream:
            return _streamed(state, principal, conn, plan, params, sql_hash, stream, options,
                             txn_id, release)
        return execute_plan(state.policy, state.executor, conn, plan, params, many=many, sql_hash=sql_hash,
                            options=options, column_keys=column_keys)

    if txn_id is not None:
        # inside the transaction even a refusal consumes its sequence number and leaves the
        # transaction open - and, never reaching the database, never aborted (docs/security.md)
        seq = _field(body, "seq", int, required=True)
        return _in_transaction(state, principal, txn_id, seq, bool(body.get("begin")), run)
    plan, stmt_info, params = prepare()
    if not stmt_info.is_read_only:
        raise APIError("Writes, locking reads and savepoints must run in a transaction "
                       "(send 'txn' and 'seq').", code="transaction_required")
    if stream:
        # a streamed read keeps its connection until the cursor ends; it needs a transaction of
        # its own (PostgreSQL server-side cursors live in one)
        conn = state.engine.connect()
        try:
            return _json(run(conn, release=conn.close))
        except BaseException:
            conn.close()
            raise
    with state.read_engine.connect() as conn:
        return _json(execute_plan(state.policy, state.executor, conn, plan, params, many=many,
                                  sql_hash=sql_hash, options=options, column_keys=column_keys))


def _streamed(state: ServerState, principal: Principal, conn: sa.Connection, plan: Plan,
              params: list[dict[str, Any]], sql_hash: str, page_size: int, options: Any,
              txn_id: str | None, release: Callable[[], None]) -> dict[str, Any]:
    reply, result = execute_plan_streamed(state.policy, state.executor, conn, plan, params, sql_hash=sql_hash,
                                          page_size=page_size, options=options)
    max_rows = plan.limits.max_rows
    if max_rows is not None and len(reply.get("rows", ())) > max_rows:
        if result is not None:
            result.close()
        release()
        raise _too_many_rows(max_rows)
    if result is None:
        release()
    else:
        cursor = state.cursors.open(principal.subject, result, page_size, txn_id, release)
        cursor.max_rows, cursor.rows_sent = max_rows, len(reply["rows"])
        reply["cursor"] = cursor.id
    return reply


def _too_many_rows(max_rows: int) -> LimitExceeded:
    return LimitExceeded(f"The result has more than the {max_rows} rows this role may fetch; narrow the "
                         "query.", limit="result_rows", maximum=max_rows)


def _in_transaction(state: ServerState, principal: Principal, txn_id: str, seq: int, begin: bool,
                    run: Any) -> Response:
    if begin:
        txn, _ = state.transactions.begin(txn_id, principal.subject)
    else:
        txn = state.transactions.get(txn_id, principal.subject)
    with txn.lock:
        if txn.last_reply is not None and seq == txn.last_seq:
            status, payload = txn.last_reply  # a retry: answer as before, run nothing
            label(replayed=True)
            return Response(payload, status=status, mimetype=_JSON)
        if txn.ended:  # committed, rolled back or reaped while this request waited for it
            state.transactions.get(txn_id, principal.subject)  # raises 410 with the reason
        if seq != txn.last_seq + 1:
            raise APIError(f"Request {seq} of transaction {txn_id} arrived out of order "
                           f"(expected {txn.last_seq + 1}).", status=409, code="out_of_order")
        try:
            if state.wall is not None:
                state.wall.enter(txn.connection, principal)
            status, payload = 200, orjson.dumps(run(txn.connection))
        except Exception as exc:  # answered in the envelope; the transaction stays open...
            status, envelope = envelope_for_exception(exc)
            # ...unless its database connection was lost (the database restarted): then the
            # transaction is gone, as a direct connection's would be; it ends here at once (its
            # connection back to the pool) and the client raises a disconnect
            lost = isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
            envelope["error"]["txn_state"] = "lost" if lost else "open"
            payload = orjson.dumps(envelope)
            if lost:
                state.cursors.close_for_transaction(txn_id, principal.subject)
                state.transactions.lose(txn)
        txn.last_seq, txn.last_reply, txn.last_used = seq, (status, payload), time.monotonic()
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
        rows, more = fetch_page(cursor.result, cursor.page_size)
        cursor.rows_sent += len(rows)
        if cursor.max_rows is not None and cursor.rows_sent > cursor.max_rows:
            state.cursors.close(cursor_id)  # counted across pages: this page and the rest refused
            raise _too_many_rows(cursor.max_rows)
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


@api.post("/transactions/<txn_id>/<verb>")
def finish_transaction(txn_id: str, verb: str) -> Response:
    if verb not in ("commit", "rollback"):
        raise APIError(f"Unknown transaction action {verb!r}; use commit or rollback.",
                       status=404, code="not_found")
    if not _TXN_ID.fullmatch(txn_id):  # as in /execute: what the outcome table and the logs can hold
        raise APIError("A transaction id is 1 to 128 letters, digits, '-' or '_'.", status=404, code="not_found")
    label(kind=verb, txn=txn_id)
    principal = _principal()
    seq = _field(_body(principal), "seq", int) if request.content_length else None
    state = _state()
    # the transaction's cursors end with it - but only once the caller is known to own it: a
    # stranger's commit is refused (403) before anything of the owner's is touched
    outcome = state.transactions.finish(
        txn_id, verb, principal.subject, seq,
        before_end=lambda: state.cursors.close_for_transaction(txn_id, principal.subject))
    return _json({"outcome": outcome})
