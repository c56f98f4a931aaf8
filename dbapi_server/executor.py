"""Rebuild, check and execute one client statement; answer with raw driver rows.

The hot path. Decoding (validation, rebuild, what-it-touches) is cached per distinct statement
structure - values travel separately, so an ORM application reuses a small set of structures.
Execution goes through a real SQLAlchemy ``Connection`` (insertmanyvalues and expanding IN happen
here). The client sent its values already processed and adapted for this server's driver
(``dbsession._binds``), so client statements are compiled into a compiled cache of their own whose
compiled objects are marked *pre-processed*: no bind processor and no Python-side default runs
again (the client evaluated those too). The server's own statements (named methods) use the
engine's normal cache and processing. Two guards make a rebuild mistake loud instead of subtly
wrong: every bound parameter is *required* (a missing value is an error, never NULL), and the SQL
the server compiles must hash to what the client compiled (checked at the cursor, for free).
Rows are taken from the cursor before result processing, so the client's own result processors
run exactly once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.sql import compiler as sql_compiler
from sqlalchemy.sql import sqltypes
from sqlalchemy.util import LRUCache

from query_translation import (
    MalformedStatementError,
    TranslationError,
    TypeResolver,
    decode_params,
    encode_row,
    encode_value,
    from_wire,
)
from query_translation.decode import StatementInfo
from query_translation.driver_sql import DriverSQL
from query_translation.fingerprint import MAX_HASHED_DOCUMENT, sql_fingerprint, text_fingerprint
from query_translation.size import DocumentSize

from ._driver_values import DriverValues
from .errors import APIError
from .refusals import LimitExceeded

__all__ = ["StatementExecutor", "StatementMismatch", "UnknownStatement", "execute_preprocessed",
           "mark_preprocessed"]

log = logging.getLogger("dbapi_server")

_EXPECTED_SQL = "dbs_expected_sql"  # execution option: the client's fingerprint, checked once per run

_FORWARDED_OPTIONS = ("preserve_rowcount", "insertmanyvalues_page_size")


class StatementMismatch(APIError):
    code = "statement_mismatch"


class UnknownStatement(APIError):
    """A statement referred to by hash that this instance does not hold: send its document again.

    Answered before anything runs or a transaction's sequence number is used, so the client
    resends the same request with the document (after a restart, an eviction, or on another
    instance behind a load balancer)."""

    status = 409
    code = "unknown_statement"


# the largest document the decode cache keeps: 4096 entries of up to 32 KiB, where ORM statements
# are a few KiB, instead of 4096 request bodies of up to 64 MiB. The client sends no hash for a
# larger document (it would not be kept under it): the same bound, shared.
MAX_CACHED_DOCUMENT = MAX_HASHED_DOCUMENT


class StatementExecutor:
    """Per application: the decode cache and the engine hooks."""

    def __init__(self, engine: sa.Engine, metadata: sa.MetaData, *, cache_size: int = 4096) -> None:
        self.engine = engine
        self.metadata = metadata
        self.types = TypeResolver(metadata)
        self._cache: OrderedDict[bytes | str, tuple[Any, StatementInfo, DocumentSize | None]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        # compiled client statements, marked pre-processed: never shared with the server's own
        self.compiled_cache: LRUCache[Any, Any] = LRUCache(cache_size)
        self.driver_values = DriverValues(engine.dialect)

    def decode(self, document: Mapping[str, Any], doc_hash: str | None = None,
               size: DocumentSize | None = None) -> tuple[Any, StatementInfo]:
        """The rebuilt statement and what it touches, cached per structure.

        With *doc_hash* (``stmt_hash`` on the wire) the entry is keyed by the hash received, once
        the document is checked against it, and keeps the document's *size*: a later request may
        name the statement by the hash alone (:meth:`lookup`). Without, the key is the document's
        JSON.
        """
        try:
            raw = orjson.dumps(document)
        except orjson.JSONEncodeError:  # nested deeper than orjson writes: validation refuses it
            return _rebuild(document, self.metadata, self.types, self.engine.dialect)
        if doc_hash is not None:
            # checked whenever both travel (a client sends the document once per host): a document
            # that is not the hash's is refused, never silently replaced by the one kept under it
            if hashlib.sha256(raw).hexdigest() != doc_hash:
                raise APIError("'stmt_hash' is not the hash of 'stmt'.", code="malformed_request")
            hit = self._get(doc_hash)
            if hit is not None:
                return hit[0], hit[1]
        if len(raw) > MAX_CACHED_DOCUMENT:  # the cache holds ORM-sized statements, not every large body
            return _rebuild(document, self.metadata, self.types, self.engine.dialect)
        key: bytes | str = doc_hash if doc_hash is not None else raw
        if doc_hash is None:
            hit = self._get(key)
            if hit is not None:
                return hit[0], hit[1]
        statement, info = _rebuild(document, self.metadata, self.types, self.engine.dialect)
        with self._lock:
            self._cache[key] = (statement, info, size)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return statement, info

    def lookup(self, doc_hash: str) -> tuple[Any, StatementInfo, DocumentSize | None]:
        """The statement kept under *doc_hash*, and its document's size; ``UnknownStatement`` if none."""
        hit = self._get(doc_hash)
        if hit is None:
            raise UnknownStatement("This DB-API instance does not hold the statement with this hash; "
                                   "send its document ('stmt').")
        return hit

    def _get(self, key: bytes | str) -> tuple[Any, StatementInfo, DocumentSize | None] | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def schema_changed(self) -> None:
        """Forget decoded statements and known types after the metadata's tables changed."""
        with self._lock:
            self._cache.clear()
            self.types = TypeResolver(self.metadata)

    def decode_params(self, params: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """The client's values, ready for this driver (wrapped JSON in the driver's wrapper).

        Enum members decode only for ``literal_execute`` binds (rendered from the Python value,
        see ``dbsession._binds``), and only of the enum classes the metadata's columns use.
        """
        return self.driver_values.wrap(decode_params(params or [{}], enum_resolver=self.types.resolve_enum))

    def execute(self, connection: sa.Connection, statement: Any, params: list[dict[str, Any]],
                *, many: bool, sql_hash: str | None, options: Mapping[str, Any] | None = None,
                column_keys: list[str] | None = None, max_rows: int | None = None) -> dict[str, Any]:
        """Execute and answer; ``sql_hash=None`` only when the caller verified the SQL already."""
        return _reply(_checked_execute(connection, statement, params, many=many, sql_hash=sql_hash,
                                       options=options, column_keys=column_keys, cache=self.compiled_cache),
                      max_rows)

    def execute_streamed(self, connection: sa.Connection, statement: Any, params: list[dict[str, Any]],
                         *, sql_hash: str | None, page_size: int, options: Mapping[str, Any] | None = None,
                         ) -> tuple[dict[str, Any], sa.CursorResult[Any] | None]:
        """Execute with a server-side cursor; answer the first page.

        Returns the reply and, when more rows remain, the open result to fetch them from later.
        """
        result = _checked_execute(connection, statement, params, many=False, sql_hash=sql_hash,
                                  options=options, stream=page_size, cache=self.compiled_cache)
        if not result.returns_rows:
            return _reply(result), None
        description, rowcount, _ = getattr(result.context, "_dbs_cursor", None) or (None, -1, None)
        rows, more = fetch_page(result, page_size)
        reply = {"rowcount": rowcount, "description": _encoded_description(result.context, description),
                 "rows": rows, "more": more}
        return reply, (result if more else None)


def _checked_execute(connection: sa.Connection, statement: Any, params: list[dict[str, Any]], *,
                     many: bool, sql_hash: str | None, options: Mapping[str, Any] | None,
                     column_keys: list[str] | None = None, stream: int | None = None,
                     cache: Any = None) -> Any:
    """Execute with the forwarded options, refusing at the cursor unless the SQL fingerprints as
    the client's (see ``_check_sql``)."""
    opts = {k: v for k, v in (options or {}).items() if k in _FORWARDED_OPTIONS}
    if isinstance(statement, DriverSQL):
        return _execute_text(connection, statement, params, many=many, sql_hash=sql_hash, options=opts,
                             stream=stream)
    if stream is not None:
        opts.update(stream_results=True, max_row_buffer=stream)
    if sql_hash is not None:
        opts[_EXPECTED_SQL] = sql_hash
    return execute_preprocessed(connection, statement, params if many else params[:1], opts, cache,
                                column_keys=column_keys)


def _execute_text(connection: sa.Connection, statement: DriverSQL, params: list[dict[str, Any]], *,
                  many: bool, sql_hash: str | None, options: dict[str, Any], stream: int | None) -> Any:
    """DDL / driver SQL (allowed by the policy already): the text, as the client's driver got it."""
    if sql_hash is None or text_fingerprint(statement.sql) != sql_hash:  # text is never rewritten
        raise StatementMismatch("The SQL text does not match its fingerprint. Nothing was executed.")
    if stream is not None:
        options.update(stream_results=True, max_row_buffer=stream)
    driver_params = statement.driver_params(params)
    # what ``exec_driver_sql`` does, with the run's execution context (raw rows recorded)
    distilled: list[Any] = list(driver_params) if many else (
        [driver_params[0]] if driver_params and driver_params[0] else [])
    conn: Any = connection
    exec_opts = conn._execution_options.merge_with(options or None)
    return conn._execute_context(conn.dialect, _run_context(conn.dialect)._init_statement, statement.sql, None,
                                 exec_opts, statement.sql, distilled)


def execute_preprocessed(connection: sa.Connection, statement: Any, params: list[dict[str, Any]],
                         options: Mapping[str, Any] | None, cache: Any, *,
                         column_keys: list[str] | None = None) -> Any:
    """``Connection.execute(statement, params)`` for values the client processed already.

    What ``Connection._execute_clauseelement`` does (the same in SQLAlchemy 2.0 and 2.1: events,
    column keys from the parameters, ``_compile_w_cache``, ``_execute_context``), except that the
    statement is compiled into *cache* - the client statements' own - and the compiled object is
    marked pre-processed before it runs (:func:`mark_preprocessed`). With *column_keys*, those
    decide crud's choices (which Python defaults an ``INSERT ... FROM SELECT`` adds to its SELECT,
    how multi-row VALUES binds are named) instead of the parameters' keys, which also carry the
    client's evaluated defaults. Private SQLAlchemy API; the fingerprint check catches any drift.
    """
    conn: Any = connection
    dialect = conn.dialect
    exec_opts = statement._execution_options.merge_with(conn._execution_options, options or None)
    has_events = conn._has_events or conn.engine._has_events
    if has_events:
        statement, params, event_multiparams, event_params = conn._invoke_before_exec_event(
            statement, params, exec_opts)
    keys = sorted(column_keys) if column_keys is not None else sorted(params[0]) if params else []
    compiled, extracted, *rest = statement._compile_w_cache(
        dialect=dialect, compiled_cache=cache, column_keys=keys, for_executemany=len(params) > 1,
        schema_translate_map=exec_opts.get("schema_translate_map"),
        linting=dialect.compiler_linting | sql_compiler.WARN_LINTING)
    mark_preprocessed(compiled)
    extra = {"cache_hit": rest[-1]}
    if len(rest) == 2:  # 2.1 also returns the collected parameters
        extra["param_dict"] = rest[0]
    result = conn._execute_context(dialect, _run_context(dialect)._init_compiled, compiled, params,
                                   exec_opts, compiled, params, statement, extracted, **extra)
    if has_events:
        conn.dispatch.after_execute(conn, statement, event_multiparams, event_params, exec_opts, result)
    return result


def mark_preprocessed(compiled: Any) -> None:
    """No bind processor and no Python-side default runs for this compiled statement.

    The client ran the dialect's processors on every value and evaluated the Python-side column
    defaults (their values travel as parameters), as a direct connection would have in its
    process. ``_bind_processors`` is a memoized property: the instance's own entry wins. Only
    compiled objects of the client statements' cache are marked - never one the server's own
    statements could share.
    """
    if not compiled.__dict__.get("_dbs_preprocessed"):
        compiled.__dict__["_bind_processors"] = {}
        compiled.insert_prefetch = compiled.update_prefetch = ()
        imv = getattr(compiled, "_insertmanyvalues", None)
        if imv is not None and imv.sentinel_columns:
            # insertmanyvalues matches RETURNING rows to parameter sets by sentinel value, the rows'
            # through the column's result processor - against Python-level parameters. Here both are
            # driver-level: the rows raw, the parameters processed by the client. (The columns serve
            # only their type's result processor there.)
            compiled._insertmanyvalues = imv._replace(
                sentinel_columns=[sa.column(c.name, sqltypes.NULLTYPE) for c in imv.sentinel_columns])
        compiled._dbs_preprocessed = True


def fetch_page(result: sa.CursorResult[Any], size: int) -> tuple[list[list[Any]], bool]:
    """The next *size* raw rows of a streamed result, and whether more may follow."""
    raw = result.cursor_strategy.fetchmany(result, result.cursor, size)
    more = len(raw) == size
    if not more:
        result.close()
    return [encode_row(row) for row in raw], more


def _rebuild(document: Mapping[str, Any], metadata: sa.MetaData, types: TypeResolver,
             dialect: sa.Dialect | None = None) -> tuple[Any, StatementInfo]:
    """``from_wire``, with any failure it was not written to expect answered as the client's fault.

    The document is untrusted input: whatever it makes the rebuild raise (a ``TypeError`` from
    nonsense options, a ``RecursionError``) is a malformed request, never a server error.
    """
    try:
        return from_wire(document, metadata, types, dialect=dialect)
    except TranslationError:
        raise
    except (RecursionError, TypeError, ValueError, LookupError, AttributeError, sa.exc.SQLAlchemyError) as exc:
        log.info("statement document not rebuildable: %r", exc)
        raise MalformedStatementError(
            {"statement": [f"cannot be rebuilt ({type(exc).__name__})"]},
            "The statement document is malformed: it cannot be rebuilt into a statement "
            f"({type(exc).__name__}); make sure client and server run the same versions.") from None


class _RecordingCursor:
    """Wraps the DBAPI cursor after execution and keeps every row fetched from it, raw.

    SQLAlchemy may consume rows itself before we see the result (``return_defaults()`` fetches
    and processes the RETURNING row); the raw rows are what the client needs.
    """

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
        self.rows: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def fetchone(self) -> Any:
        row = self._cursor.fetchone()
        if row is not None:
            self.rows.append(row)
        return row

    def fetchmany(self, *args: Any) -> Any:
        rows = self._cursor.fetchmany(*args)
        self.rows.extend(rows)
        return rows

    def fetchall(self) -> Any:
        rows = self._cursor.fetchall()
        self.rows.extend(rows)
        return rows


def _reply(result: sa.CursorResult[Any], max_rows: int | None = None) -> dict[str, Any]:
    context: Any = result.context
    description, rowcount, lastrowid = getattr(context, "_dbs_cursor", None) or (None, -1, None)
    reply: dict[str, Any] = {"rowcount": rowcount}
    if lastrowid is not None:
        reply["lastrowid"] = encode_value(lastrowid)
    imv_rows = getattr(context, "_insertmanyvalues_rows", None)
    if result.returns_rows:
        if max_rows is None:
            result.cursor_strategy.fetchall(result, result.cursor)  # drain through the recorder
        else:  # one row more than allowed tells "too many" without reading them all
            result.cursor_strategy.fetchmany(result, result.cursor, max_rows + 1)
    result.close()
    if imv_rows is not None:
        raw = imv_rows  # insertmanyvalues: the batches' RETURNING rows, raw and in order
    elif isinstance(context.cursor, _RecordingCursor):
        raw = context.cursor.rows
    else:
        raw = []
    if max_rows is not None and len(raw) > max_rows:
        raise LimitExceeded(f"The result has more than the {max_rows} rows this role may fetch at once; "
                            "narrow the query, or page it (LIMIT / yield_per).", limit="result_rows",
                            maximum=max_rows)
    if description is not None:
        reply["description"] = _encoded_description(context, description)
        reply["rows"] = [encode_row(row) for row in raw]
    return reply


def _encoded_description(context: Any, description: Any) -> list[list[Any]]:
    """The cursor description as JSON, cached on the compiled statement.

    Drivers compute the seven fields lazily (psycopg: ~5 µs a column); for one compiled
    statement they do not change, so the work is done once.
    """
    compiled = getattr(context, "compiled", None)
    cached = getattr(compiled, "_dbs_description", None)
    if cached is not None and len(cached) == len(description):
        return cached  # type: ignore[no-any-return]
    encoded = [[encode_value(x) for x in tuple(d)[:7]] for d in description]
    if compiled is not None:
        compiled._dbs_description = encoded
    return encoded


def _own_lastrowid(cursor: Any, context: Any) -> Any:
    """The driver's last row id when it is this statement's own, else None.

    SQLite's cursor reports the last row id inserted *on the connection* after any statement, and
    the pooled connections serve every caller: after a SELECT, UPDATE, DELETE or an INSERT that
    added no row it would be another caller's, possibly of a row its policy hides. SQL text keeps
    the driver's value, as on a direct connection: only a raw-SQL role, trusted with the
    connection, can send it.
    """
    compiled = getattr(context, "compiled", None)
    if compiled is not None and not isinstance(compiled.statement, sa.TextClause) and (
            not context.isinsert or cursor.rowcount == 0):
        return None
    try:
        return cursor.lastrowid
    except Exception:  # some drivers raise when there is no last row id
        return None


class _RunContextMixin:
    """The execution context of a client statement (mixed in front of the dialect's own).

    It checks the SQL fingerprint once - after the parameters are built, before the cursor runs
    anything, for every batch of an insertmanyvalues statement together - and records the cursor
    raw after execution (``post_exec``, before SQLAlchemy sets up the result and may consume rows
    itself, as ``return_defaults()`` does). Only client statements run with it (the executor passes
    its constructor to ``_execute_context``); the server's own statements keep the dialect's
    context and no engine event runs for any statement.
    """

    cursor: Any
    compiled: Any
    execution_options: Any

    def pre_exec(self) -> None:
        super().pre_exec()  # type: ignore[misc]
        expected = self.execution_options.get(_EXPECTED_SQL)
        if expected is not None and (self.compiled is None or sql_fingerprint(self.compiled) != expected):
            self.cursor.close()
            raise StatementMismatch(
                "The statement rebuilt on the server does not compile to the SQL the client "
                "compiled; client and server disagree about the schema or the library version. "
                "Nothing was executed.")

    def post_exec(self) -> None:
        super().post_exec()  # type: ignore[misc]
        cursor = self.cursor
        self._dbs_cursor = (cursor.description, cursor.rowcount, _own_lastrowid(cursor, self))  # encoded later
        if not self.execution_options.get("stream_results"):  # streamed: taken page by page, never all kept
            self.cursor = _RecordingCursor(cursor)


_run_contexts: dict[type, type] = {}


def _run_context(dialect: Any) -> Any:
    """The run context class for *dialect*'s execution context class (made once per class)."""
    base = dialect.execution_ctx_cls
    found = _run_contexts.get(base)
    if found is None:
        found = _run_contexts[base] = type(f"DBAPIRun{base.__name__}", (_RunContextMixin, base), {})
    return found
