"""HTTP routes of the DB-API (blueprint ``dbapi``, mounted at ``/dbapi/v1``).

======  ===================================  ==================================================
GET     ``/info``                            handshake: dialect, driver, versions, dialect state
GET     ``/live``, ``/ready``, ``/health``     probes: :mod:`dbapi_server.probes`
GET     ``/openapi.json``                    the OpenAPI 3.1 description of these routes
POST    ``/execute``                         run one statement (optionally in a transaction)
POST    ``/batch``                           statements of a transaction, each with its row count;
                                             optionally committing if and only if all matched
POST    ``/cursors/<id>/fetch``              next page of a streamed result (numbered, replayable)
POST    ``/cursors/<id>/close``              end a streamed result early
POST    ``/transactions/<id>/commit``        commit; asking again returns the same outcome
POST    ``/transactions/<id>/rollback``      roll back
POST    ``/catalog/has_table``               whether a served table exists (``dialect.has_table``)
POST    ``/catalog/reflect``                 a dialect reflection method on served tables
======  ===================================  ==================================================

The request and answer formats are documented in ``docs/wire-format.md``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request

from query_translation import count_values, measure_document
from query_translation.decode import StatementInfo
from query_translation.size import DocumentSize

from .auth import Principal
from .connection_settings import answer_pragma, sqlite_pragma
from .cursors import CursorGone
from .enforcement import execute_plan, execute_plan_streamed
from .errors import APIError, envelope_for_exception
from .executor import fetch_page
from .openapi import openapi_document
from .policy import Plan
from .reflection import reflect as run_reflection
from .refusals import LimitExceeded
from .state import ServerState
from .telemetry import label, statement_kind
from .transactions import Transaction

__all__ = ["api"]

api = Blueprint("dbapi", __name__, url_prefix="/dbapi/v1")

_JSON = "application/json"
MAX_PAGE_ROWS = 100_000
_TXN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_DOC_HASH = re.compile(r"[0-9a-f]{64}")


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


@dataclass(frozen=True)
class StatementRequest:
    """One statement as a request carries it: ``POST /execute``'s body, or an item of a batch."""

    document: Mapping[str, Any] | None  # None: referred to by ``doc_hash`` alone
    doc_hash: str | None
    sql_hash: str
    raw_params: list[Any] | None
    many: bool
    options: Mapping[str, Any] | None
    column_keys: list[str] | None
    stream: int | None
    size: DocumentSize | None  # the document's, measured (or kept with the statement sent by hash)
    decoded: tuple[Any, StatementInfo] | None = None  # resolved by hash before the transaction

    @classmethod
    def parse(cls, state: ServerState, principal: Principal, body: Mapping[str, Any], *,
              streams: bool = True) -> StatementRequest:
        """Check the fields and the statement's size; a statement sent by hash alone is looked up
        now. Both before any transaction is touched: a refusal, or ``unknown_statement``, uses no
        sequence number."""
        doc_hash = _field(body, "stmt_hash", str)
        if doc_hash is not None and not _DOC_HASH.fullmatch(doc_hash):
            raise APIError("'stmt_hash' is the statement document's SHA-256, in lowercase hex.",
                           code="malformed_request")
        document = _field(body, "stmt", dict, required=doc_hash is None)
        sql_hash = _field(body, "sql", str, required=True)
        raw_params = _field(body, "params", list)
        many = bool(_field(body, "many", bool))
        options = _field(body, "options", dict)
        column_keys = _field(body, "keys", list)
        if column_keys is not None and not all(isinstance(k, str) for k in column_keys):
            raise APIError("'keys' must be a list of column key strings.", code="malformed_request")
        stream = _field(body, "stream", int) if streams else None
        if stream is not None and not (1 <= stream <= MAX_PAGE_ROWS) or (stream and many):
            raise APIError(f"'stream' is a page size from 1 to {MAX_PAGE_ROWS}, for single executions.",
                           code="malformed_request")
        if many and not raw_params:  # checked before decoding, which turns "no params" into [{}]
            raise APIError("An executemany request needs at least one parameter set.", code="malformed_request")
        decoded: tuple[Any, StatementInfo] | None = None
        if document is None:
            assert doc_hash is not None
            statement, info, size = state.executor.lookup(doc_hash)
            decoded = statement, info
        else:
            size = measure_document(document)
        if size is not None:
            # the statement's size, refused before anything expensive (validation, decoding,
            # checks, compiling) - references expanded, so a small body cannot stand for an
            # exponential statement; per role, also for a statement named by its hash
            state.policy.check_size(size, count_values(raw_params), principal)
        return cls(document, doc_hash, sql_hash, raw_params, many, options, column_keys, stream, size, decoded)

    @property
    def kind(self) -> str:
        if self.document is not None:
            return statement_kind(self.document)
        assert self.decoded is not None
        return statement_kind({"statement": {"t": self.decoded[1].kind}})

    def prepare(self, state: ServerState, principal: Principal) -> tuple[Plan, Any, list[dict[str, Any]]]:
        """Decoded (cached by structure), its values decoded, and judged by the policy."""
        if self.decoded is not None:
            statement, stmt_info = self.decoded
        else:
            assert self.document is not None
            statement, stmt_info = state.executor.decode(self.document, self.doc_hash, self.size)
        params = state.executor.decode_params(self.raw_params)
        plan = state.policy.plan(statement, stmt_info, principal, params=params, column_keys=self.column_keys,
                                 dialect=state.engine.dialect)
        return plan, stmt_info, params

    def run(self, state: ServerState, principal: Principal, conn: sa.Connection, txn_id: str | None,
            release: Callable[[], None] = lambda: None) -> dict[str, Any]:
        plan, stmt_info, params = self.prepare(state, principal)
        pragma = sqlite_pragma(stmt_info)
        if pragma is not None:  # connection-wide: checked against the connection, never run
            return answer_pragma(conn, *pragma)
        if self.stream:
            return _streamed(state, principal, conn, plan, params, self.sql_hash, self.stream, self.options,
                             txn_id, release)
        return execute_plan(state.policy, state.executor, conn, plan, params, many=self.many,
                            sql_hash=self.sql_hash, options=self.options, column_keys=self.column_keys)


@api.post("/execute")
def execute() -> Response:
    state = _state()
    principal = _principal()
    body = _body(principal)
    req = StatementRequest.parse(state, principal, body)
    label(kind=req.kind)
    txn_id = _txn_field(body)

    if txn_id is not None:
        # inside the transaction even a refusal consumes its sequence number and leaves the
        # transaction open - and, never reaching the database, never aborted (docs/security.md)
        seq = _field(body, "seq", int, required=True)
        return _in_transaction(state, principal, txn_id, seq, bool(body.get("begin")),
                               lambda conn: req.run(state, principal, conn, txn_id))
    plan, stmt_info, params = req.prepare(state, principal)
    if not stmt_info.is_read_only:
        raise APIError("Writes, locking reads and savepoints must run in a transaction "
                       "(send 'txn' and 'seq').", code="transaction_required")
    if req.stream:
        # a streamed read keeps its connection until the cursor ends; it needs a transaction of
        # its own (PostgreSQL server-side cursors live in one)
        conn = state.engine.connect()
        try:
            return _json(req.run(state, principal, conn, None, release=conn.close))
        except BaseException:
            conn.close()
            raise
    with state.read_connection() as conn:
        return _json(execute_plan(state.policy, state.executor, conn, plan, params, many=req.many,
                                  sql_hash=req.sql_hash, options=req.options, column_keys=req.column_keys))


MAX_BATCH_STATEMENTS = 1000


@api.post("/batch")
def batch() -> Response:
    """Statements of one transaction in one request, each with the row count it must match;
    with ``commit``, the transaction commits if and only if every statement ran and matched.

    The statements run in order. The first that fails or matches another row count than its
    ``expect`` stops the batch: nothing after it runs, nothing is committed, the transaction
    stays open (as after a failed ``/execute``) and the answer says which statement it was - an
    error envelope with ``index``, or ``{"failed": {"index", "rowcount"}}``. A commit that fails
    after every statement matched answers ``{"commit_error": <envelope>}`` (the statements' part
    succeeded; the transaction is over, outcome ``failed``). Retrying a committing batch after
    its transaction ended answers from the remembered outcome, like a retried commit.
    """
    state = _state()
    principal = _principal()
    body = _body(principal)
    txn_id = _txn_field(body)
    if txn_id is None:
        raise APIError("A batch runs in a transaction: send 'txn' and 'seq'.", code="malformed_request")
    seq = _field(body, "seq", int, required=True)
    commit = bool(_field(body, "commit", bool))
    items = _field(body, "statements", list, required=True)
    if not 1 <= len(items) <= MAX_BATCH_STATEMENTS:
        raise APIError(f"'statements' holds 1 to {MAX_BATCH_STATEMENTS} statements.", code="malformed_request")
    requests: list[tuple[StatementRequest, int | None]] = []
    for item in items:
        if not isinstance(item, dict):
            raise APIError("Each batch statement is a JSON object.", code="malformed_request")
        expect = _field(item, "expect", int)
        requests.append((StatementRequest.parse(state, principal, item, streams=False), expect))
    label(kind="batch_commit" if commit else "batch")
    begin = bool(body.get("begin"))
    if commit and (state.transactions.outcome(txn_id) is not None
                   or (not begin and not state.transactions.is_open(txn_id))):
        # asked again after the transaction ended (here, or - with the outcome table - anywhere):
        # answered as a retried commit is, from its outcome; nothing runs
        return _json({"outcome": state.transactions.finished(txn_id, "commit", principal.subject)})

    def run(conn: sa.Connection) -> dict[str, Any] | None:
        for index, (req, expect) in enumerate(requests):
            try:
                reply = req.run(state, principal, conn, txn_id)
            except Exception as exc:
                exc.batch_index = index  # type: ignore[attr-defined]
                raise
            if expect is not None and reply.get("rowcount") != expect:
                return {"failed": {"index": index, "rowcount": reply.get("rowcount")}}
        return None

    def then_commit(txn: Transaction) -> dict[str, Any]:
        try:
            return {"outcome": state.transactions.end_locked(txn, "commit")}
        except Exception as exc:
            _, envelope = envelope_for_exception(exc)
            return {"commit_error": envelope["error"]}

    return _in_transaction(state, principal, txn_id, seq, begin, run, then=then_commit if commit else None)


def _streamed(state: ServerState, principal: Principal, conn: sa.Connection, plan: Plan,
              params: list[dict[str, Any]], sql_hash: str, page_size: int, options: Any,
              txn_id: str | None, release: Callable[[], None]) -> dict[str, Any]:
    # the row limit is the statement run's: a first page over it is refused there (result closed)
    reply, result = execute_plan_streamed(state.policy, state.executor, conn, plan, params, sql_hash=sql_hash,
                                          page_size=page_size, options=options)
    if result is None:
        release()
    else:
        cursor = state.cursors.open(principal.subject, result, page_size, txn_id, release)
        reply["cursor"] = cursor.id
    return reply


def _in_transaction(state: ServerState, principal: Principal, txn_id: str, seq: int, begin: bool,
                    run: Callable[[sa.Connection], dict[str, Any] | None],
                    then: Callable[[Transaction], dict[str, Any]] | None = None) -> Response:
    """Run *run* as request *seq* of the transaction (a retry is answered as before).

    *then*, if given, runs after *run* answered ``None`` (every statement of a batch matched),
    still holding the transaction's lock: a committing batch commits there, so no other request
    of the transaction can come between its statements and its commit.
    """
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
            if then is not None:  # a committing batch asked again of a transaction that has ended
                return _json({"outcome": state.transactions.finished(txn_id, "commit", principal.subject)})
            state.transactions.get(txn_id, principal.subject)  # raises 410 with the reason
        if seq != txn.last_seq + 1:
            raise APIError(f"Request {seq} of transaction {txn_id} arrived out of order "
                           f"(expected {txn.last_seq + 1}).", status=409, code="out_of_order")
        answer: dict[str, Any] | None
        try:
            if state.wall is not None:
                state.wall.enter(txn.connection, principal)
            answer = run(txn.connection)
        except Exception as exc:  # answered in the envelope; the transaction stays open...
            status, envelope = envelope_for_exception(exc)
            # ...unless its database connection was lost (the database restarted): then the
            # transaction is gone, as a direct connection's would be; it ends here at once (its
            # connection back to the pool) and the client raises a disconnect
            lost = isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
            envelope["error"]["txn_state"] = "lost" if lost else "open"
            index = getattr(exc, "batch_index", None)
            if index is not None:  # which statement of a batch
                envelope["error"]["index"] = index
            payload = orjson.dumps(envelope)
            if lost:
                state.cursors.close_for_transaction(txn_id, principal.subject)
                state.transactions.lose(txn)
        else:
            if answer is None and then is not None:
                answer = then(txn)  # the transaction may be over now (committed)
            status, payload = 200, orjson.dumps(answer if answer is not None else {})
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


@api.post("/transactions/<txn_id>/<verb>")
def finish_transaction(txn_id: str, verb: str) -> Response:
    if verb not in ("commit", "rollback"):
        raise APIError(f"Unknown transaction action {verb!r}; use commit or rollback.",
                       status=404, code="not_found")
    if not _TXN_ID.fullmatch(txn_id):  # as in /execute: what the outcome table can key exactly
        raise APIError("A transaction id is 1 to 128 letters, digits, '-' or '_'.", code="malformed_request")
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
    with state.read_engine.connect() as conn:
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
