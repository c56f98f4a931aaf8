"""The request pipeline of the hot routes: ``POST /dbapi/v1/execute``, ``POST /dbapi/v1/batch`` and
``POST /dbapi/v1/transactions/<txn_id>/<verb>`` (commit, rollback).

:class:`HotRoutes` is a WSGI middleware inside ``app.wsgi_app`` (under the observability layer,
:class:`dbapi_server.observability.ObservedApp`, which wraps every request): it answers those
URLs itself - every method, every server (granian, waitress, ``flask run``, Flask's test client) -
and hands every other request to the Flask application, whose views serve the cold routes. There
is no second copy of these routes in Flask: this is the one path.

One request, in order (each step what the Flask path did, by the same functions)::

    header size (431) -> route label -> method (405; OPTIONS answered) -> token (401) -> the
    database wall's identity -> Content-Type (415) -> body size: the role's limit and the
    server's by Content-Length, then as read (413) -> JSON (400 malformed_json) -> the request
    schema (400 malformed_request, _request_schema.py) -> parsed request (statement by hash:
    409 unknown_statement; statement size: 400/413) -> in a transaction: the replay protocol
    (TransactionManager.run_request) -> the statement run (decode, policy plan, execute) ->
    answer; any exception: the error envelope (errors.envelope_for_exception), as Flask's error
    handler answered it -> the wall's identity reset.

Why not a Flask view: Flask and werkzeug cost about 0.17 ms of CPU per request (request
context, routing, the Request and Response objects, signals), half the whole budget of a
request, and these routes need none of it. The answer is the same, byte for byte, header for
header (``Content-Type: application/json``, ``Content-Length``; ``X-Request-Id`` from the
observability layer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES, parse_options_header
from werkzeug.sansio.utils import get_content_length
from werkzeug.wsgi import get_input_stream

from query_translation import count_values, measure_document
from query_translation.decode import StatementInfo
from query_translation.size import DocumentSize

from ._request_schema import (
    BATCH_ITEM,
    BATCH_REQUEST,
    EXECUTE_REQUEST,
    FINISH_REQUEST,
    MAX_PAGE_ROWS,
    TXN_ID_RE,
)
from .auth import Principal
from .connection_settings import answer_pragma, sqlite_pragma
from .db_wall import DatabaseWall
from .enforcement import execute_plan, execute_plan_streamed
from .errors import APIError, envelope_for_exception
from .policy import Plan
from .state import ServerState
from .telemetry import label, statement_kind
from .transactions import Answer, Transaction

__all__ = ["ROUTES", "HotRoutes", "StatementRequest", "check_headers", "error_answer"]

PREFIX = "/dbapi/v1"
_TRANSACTIONS = f"{PREFIX}/transactions/"
# the routes answered here (POST only), as Flask spells route templates (the metrics' route label)
ROUTES = (f"{PREFIX}/execute", f"{PREFIX}/batch", f"{_TRANSACTIONS}<txn_id>/<verb>")
_JSON = "application/json"
MAX_HEADER_BYTES = 64 << 10  # a token is about 1 KiB; the HTTP servers' own limits are higher
_WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_Route = tuple[str, Callable[..., "Answer"], tuple[str, ...]]  # template, handler, path arguments
_STATUS_LINES = {code: f"{code} {reason.upper()}" for code, reason in HTTP_STATUS_CODES.items()}
_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


# -- the WSGI layer -------------------------------------------------------------------------------
class HotRoutes:
    """Answers the hot routes (see the module's description); any other request goes to *app*."""

    def __init__(self, app: _WSGIApp, state: ServerState, config: Mapping[str, Any]) -> None:
        self.app = app
        self.state = state
        self.config = config  # the Flask app's: MAX_CONTENT_LENGTH, read per request as Flask does
        routes: dict[str, _Route] = {path: (path, handler, ()) for path, handler in (
            (f"{PREFIX}/execute", HotRoutes.execute), (f"{PREFIX}/batch", HotRoutes.batch))}
        # the Flask routes they replace matched with a trailing slash too (strict_slashes off)
        self.routes = {**routes, **{path + "/": route for path, route in routes.items()}}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        route = self.routes.get(path)
        if route is None and (not path.startswith(_TRANSACTIONS) or (route := _finish_route(path)) is None):
            return self.app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "")
        try:
            check_headers(environ)
            if method != "POST":
                if method == "OPTIONS":  # as Flask's automatic OPTIONS answer
                    label(route=route[0])
                    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                              ("Allow", "OPTIONS, POST"), ("Content-Length", "0")])
                    return []
                raise MethodNotAllowed()  # no route label: Flask matched no rule either
            label(route=route[0])
            status, payload = route[1](self, environ, *route[2])
        except Exception as exc:
            status, payload = error_answer(exc)
        finally:
            if self.state.wall is not None:
                DatabaseWall.end_request()
        start_response(_STATUS_LINES.get(status) or f"{status} UNKNOWN",
                       [("Content-Type", _JSON), ("Content-Length", str(len(payload)))])
        return [payload] if method != "HEAD" else []

    # -- the routes ---------------------------------------------------------------------------
    def execute(self, environ: dict[str, Any]) -> Answer:
        """``POST /execute``: one statement, in a transaction (``txn``, ``seq``) or a read alone."""
        state = self.state
        principal = self._principal(environ)
        values = EXECUTE_REQUEST.validate(self._body(environ, principal))
        txn_id: str | None = values["txn"]
        label(txn=txn_id)
        req = StatementRequest.parse(state, principal, values, streams=True)
        label(kind=req.kind)
        if txn_id is not None:
            # inside the transaction even a refusal consumes its sequence number and leaves the
            # transaction open - and, never reaching the database, never aborted (docs/security.md)
            seq = values["seq"]
            if seq is None:
                raise APIError("The request needs the field 'seq'.", code="malformed_request")
            return run_in_transaction(state, principal, txn_id, seq, bool(values["begin"]),
                                      lambda conn: req.run(state, principal, conn, txn_id))
        return 200, orjson.dumps(req.run_alone(state, principal))

    def batch(self, environ: dict[str, Any]) -> Answer:
        """``POST /batch``: statements of one transaction in one request, each with the row count it
        must match; with ``commit``, the transaction commits if and only if every statement ran
        and matched.

        The statements run in order. The first that fails or matches another row count than its
        ``expect`` stops the batch: nothing after it runs, nothing is committed, the transaction
        stays open (as after a failed ``/execute``) and the answer says which statement it was - an
        error envelope with ``index``, or ``{"failed": {"index", "rowcount"}}``. A commit that fails
        after every statement matched answers ``{"commit_error": <envelope>}`` (the statements' part
        succeeded; the transaction is over, outcome ``failed``). Retrying a committing batch after
        its transaction ended answers from the remembered outcome, like a retried commit.
        """
        state = self.state
        principal = self._principal(environ)
        values = BATCH_REQUEST.validate(self._body(environ, principal))
        txn_id: str = values["txn"]
        label(txn=txn_id)
        commit = bool(values["commit"])
        requests = [(StatementRequest.parse(state, principal, item, streams=False), item["expect"])
                    for item in map(BATCH_ITEM.validate, values["statements"])]
        label(kind="batch_commit" if commit else "batch")
        begin = bool(values["begin"])
        transactions = state.transactions
        if commit and (transactions.outcome(txn_id) is not None
                       or (not begin and not transactions.is_open(txn_id))):
            # asked again after the transaction ended (here, or - with the outcome table - anywhere):
            # answered as a retried commit is, from its outcome; nothing runs
            return 200, orjson.dumps({"outcome": transactions.finished(txn_id, "commit", principal.subject)})

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
                return {"outcome": transactions.end_locked(txn, "commit")}
            except Exception as exc:
                _, envelope = envelope_for_exception(exc)
                return {"commit_error": envelope["error"]}

        return run_in_transaction(state, principal, txn_id, values["seq"], begin, run,
                                  then=then_commit if commit else None)

    def finish(self, environ: dict[str, Any], txn_id: str, verb: str) -> Answer:
        """``POST /transactions/<txn_id>/<verb>``: commit or roll back; asking again answers the
        remembered outcome (``TransactionManager.finish``)."""
        if verb not in ("commit", "rollback"):
            raise APIError(f"Unknown transaction action {verb!r}; use commit or rollback.",
                           status=404, code="not_found")
        if not TXN_ID_RE.fullmatch(txn_id):  # as in /execute: what the outcome table can key exactly
            raise APIError("A transaction id is 1 to 128 letters, digits, '-' or '_'.", code="malformed_request")
        label(kind=verb, txn=txn_id)
        principal = self._principal(environ)
        seq = None  # the body is optional
        if get_content_length(environ.get("CONTENT_LENGTH"), environ.get("HTTP_TRANSFER_ENCODING")):
            seq = FINISH_REQUEST.validate(self._body(environ, principal))["seq"]
        state = self.state
        # the transaction's cursors end with it - but only once the caller is known to own it: a
        # stranger's commit is refused (403) before anything of the owner's is touched
        outcome = state.transactions.finish(
            txn_id, verb, principal.subject, seq,
            before_end=lambda: state.cursors.close_for_transaction(txn_id, principal.subject))
        return 200, orjson.dumps({"outcome": outcome})

    # -- the steps ----------------------------------------------------------------------------
    def _principal(self, environ: Mapping[str, Any]) -> Principal:
        """The verified caller (401 otherwise); from here on, connections run under its wall role."""
        state = self.state
        principal = state.auth.authenticate(environ.get("HTTP_AUTHORIZATION"))
        label(subject=principal.subject)
        if state.wall is not None:
            state.wall.act_as(principal)
        return principal

    def _body(self, environ: dict[str, Any], principal: Principal) -> Mapping[str, Any]:
        """The JSON object the request carries, read within the caller's and the server's limits."""
        check_content_type(environ.get("CONTENT_TYPE"))
        policy = self.state.policy
        # the role's limit, judged by the Content-Length before one byte of the body is read; a
        # body without one (chunked) is read up to the limit and no further
        limit = policy.limits_for(principal).max_body_bytes
        length = get_content_length(environ.get("CONTENT_LENGTH"), environ.get("HTTP_TRANSFER_ENCODING"))
        if length is not None:
            policy.check_body_size(length, principal)
        # the server's limit (DBAPI_MAX_BODY_BYTES), by Content-Length first: 413 before reading
        maximum = self.config["MAX_CONTENT_LENGTH"]
        if length is not None and "wsgi.input_terminated" in environ:
            # the common case, read at once: the server ends the stream at the body's end (granian,
            # waitress), and the length is within both limits - what werkzeug's stream, read in
            # 64 KiB steps through a wrapper, would return
            if maximum is not None and length > maximum:
                raise RequestEntityTooLarge()
            data = environ["wsgi.input"].read(length) if length else b""
        else:
            stream = get_input_stream(environ, max_content_length=maximum)
            data = stream.read() if limit is None else read_at_most(stream, limit + 1)
        policy.check_body_size(len(data), principal)
        return parse_json_object(data)


def _finish_route(path: str) -> _Route | None:
    """``<PREFIX>/transactions/<txn_id>/<verb>`` (a trailing slash allowed, as Flask matched it)."""
    parts = path[len(_TRANSACTIONS):].split("/")
    if len(parts) == 3 and parts[2] == "":
        parts.pop()
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None  # Flask's: 404
    if not path.isascii():  # the path as werkzeug decodes it (WSGI hands it over as latin-1)
        parts = [part.encode("latin-1").decode(errors="replace") for part in parts]
    return ROUTES[2], HotRoutes.finish, (parts[0], parts[1])


def run_in_transaction(state: ServerState, principal: Principal, txn_id: str, seq: int, begin: bool,
                       run: Callable[[sa.Connection], dict[str, Any] | None],
                       then: Callable[[Transaction], dict[str, Any]] | None = None) -> Answer:
    """*run* as request *seq* of the caller's transaction (:meth:`TransactionManager.run_request`),
    under the caller's database role, its cursors closed with it if its connection is lost."""
    wall = state.wall
    return state.transactions.run_request(
        txn_id, principal.subject, seq, begin=begin, run=run, then=then,
        enter=(lambda conn: wall.enter(conn, principal)) if wall is not None else None,
        on_lost=lambda: state.cursors.close_for_transaction(txn_id, principal.subject))


def check_headers(environ: Mapping[str, Any]) -> None:
    """Header fields over MAX_HEADER_BYTES: 431 in the JSON envelope (the HTTP servers' own 431,
    for still larger ones, is theirs: docs/security.md, "Errors"). Counted as werkzeug lists
    them: name, value and 4 bytes of each field."""
    size = 0
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        value = environ.get(name)
        if value:
            size += len(name) + len(value) + 4
    for key, value in environ.items():  # (granian's environ also holds the process environment)
        if key[:5] == "HTTP_" and key != "HTTP_CONTENT_TYPE" and key != "HTTP_CONTENT_LENGTH":
            # the name as werkzeug spells it; title-casing changes the length of a few non-ASCII letters
            size += (len(key) - 5 if key.isascii() else len(key[5:].replace("_", "-").title())) + len(value) + 4
    if size > MAX_HEADER_BYTES:
        raise APIError(f"The request's header fields ({size} bytes) are larger than the DB-API accepts "
                       f"({MAX_HEADER_BYTES} bytes).", status=431, code="headers_too_large")


def check_content_type(content_type: str | None) -> None:
    """A body is JSON: another declared type is refused (415) before the body is read."""
    if content_type == _JSON or not content_type:
        return
    mimetype = parse_options_header(content_type)[0].lower()
    if mimetype and mimetype != _JSON and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        raise APIError("The request body must be JSON (Content-Type: application/json).", status=415,
                       code="unsupported_media_type")


def parse_json_object(data: bytes) -> Mapping[str, Any]:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise APIError(f"The request body is not valid JSON: {exc}.", code="malformed_json") from None
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object.", code="malformed_request")
    return body


def read_at_most(stream: Any, size: int) -> bytes:
    """The body, or its first *size* bytes (a WSGI server may return less than asked per read)."""
    parts, total = [], 0
    while total < size:
        chunk = stream.read(min(1 << 16, size - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


def error_answer(exc: Exception) -> Answer:
    """The error answer to *exc*, raised while handling any request (the Flask views' too)."""
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = "The request body is larger than the DB-API accepts (DBAPI_MAX_BODY_BYTES)."
        body = {"error": {"code": _HTTP_ERROR_CODES.get(status, "http_error"), "message": message,
                          "error_id": None, "retryable": False}}
        return status, orjson.dumps(body)
    status, envelope = envelope_for_exception(exc)
    return status, orjson.dumps(envelope)


# -- the parsed request, and the database side ----------------------------------------------------
# Every call into the executor, the policy and enforcement the hot routes make is in this section.
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
    def parse(cls, state: ServerState, principal: Principal, values: Mapping[str, Any], *,
              streams: bool) -> StatementRequest:
        """From the request schema's *values* (``EXECUTE_REQUEST``, ``BATCH_ITEM``): the statement
        checked for size, and a statement sent by hash alone looked up, both before any
        transaction is touched: a refusal, or ``unknown_statement``, uses no sequence number."""
        doc_hash = values["stmt_hash"]
        document = values["stmt"]  # or the hash alone
        raw_params = values["params"]
        many = bool(values["many"])
        stream = values["stream"] if streams else None
        if stream and many:
            raise APIError(f"'stream' is a page size from 1 to {MAX_PAGE_ROWS}, for single executions.",
                           code="malformed_request")
        if many and not raw_params:  # checked before decoding, which turns "no params" into [{}]
            raise APIError("An executemany request needs at least one parameter set.", code="malformed_request")
        decoded: tuple[Any, StatementInfo] | None = None
        if document is None:
            statement, info, size = state.executor.lookup(doc_hash)
            decoded = statement, info
        else:
            size = measure_document(document)
        if size is not None:
            # the statement's size, refused before anything expensive (validation, decoding,
            # checks, compiling) - references expanded, so a small body cannot stand for an
            # exponential statement; per role, also for a statement named by its hash
            state.policy.check_size(size, count_values(raw_params), principal)
        return cls(document, doc_hash, values["sql"], raw_params, many, values["options"], values["keys"],
                   stream, size, decoded)

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
        """Run on *conn* (a transaction's); the answer."""
        plan, stmt_info, params = self.prepare(state, principal)
        pragma = sqlite_pragma(stmt_info)
        if pragma is not None:  # connection-wide: checked against the connection, never run
            return answer_pragma(conn, *pragma)
        if self.stream:
            return _streamed(state, principal, conn, plan, params, self.sql_hash, self.stream, self.options,
                             txn_id, release)
        return execute_plan(state.policy, state.executor, conn, plan, params, many=self.many,
                            sql_hash=self.sql_hash, options=self.options, column_keys=self.column_keys)

    def run_alone(self, state: ServerState, principal: Principal) -> dict[str, Any]:
        """Run outside any client transaction: only reads, on a connection of their own."""
        plan, stmt_info, params = self.prepare(state, principal)
        if not stmt_info.is_read_only:
            raise APIError("Writes, locking reads and savepoints must run in a transaction "
                           "(send 'txn' and 'seq').", code="transaction_required")
        if self.stream:
            # a streamed read keeps its connection until the cursor ends; it needs a transaction of
            # its own (PostgreSQL server-side cursors live in one)
            conn = state.engine.connect()
            try:
                return self.run(state, principal, conn, None, release=conn.close)
            except BaseException:
                conn.close()
                raise
        with state.read_connection() as conn:
            return execute_plan(state.policy, state.executor, conn, plan, params, many=self.many,
                                sql_hash=self.sql_hash, options=self.options, column_keys=self.column_keys)


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
