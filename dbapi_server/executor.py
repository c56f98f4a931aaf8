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
the server compiles must hash to what the client compiled (checked once, right after the compile,
before anything runs). Rows are taken from the cursor before result processing, so the client's
own result processors run exactly once. What belongs to one execution - timeout, fingerprint
check, raw rows, row limit - is the :class:`~dbapi_server.statement_run.StatementRun`'s.
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
    from_wire,
)
from query_translation.decode import StatementInfo
from query_translation.driver_sql import DriverSQL
from query_translation.fingerprint import MAX_HASHED_DOCUMENT, sql_fingerprint, text_fingerprint
from query_translation.size import DocumentSize

from ._driver_values import DriverValues
from .errors import APIError
from .statement_run import StatementMismatch, StatementRun, run_context_constructor

__all__ = ["StatementExecutor", "StatementMismatch", "UnknownStatement", "execute_preprocessed", "fetch_page",
           "mark_preprocessed"]

log = logging.getLogger("dbapi_server")

_FORWARDED_OPTIONS = ("preserve_rowcount", "insertmanyvalues_page_size")


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

    def run(self, run: StatementRun, *, stream: int | None = None) -> Any:
        """Execute *run*'s statement (its plan's), compiled in the client statements' cache; with
        *stream*, a server-side cursor buffering that many rows."""
        connection, statement, params = run.connection, run.plan.statement, run.params
        opts = {k: v for k, v in (run.options or {}).items() if k in _FORWARDED_OPTIONS}
        if stream is not None:
            run.streamed = True
            opts.update(stream_results=True, max_row_buffer=stream)
        if isinstance(statement, DriverSQL):
            return _execute_text(connection, statement, params, many=run.many, run=run, options=opts)
        return execute_preprocessed(connection, statement, params if run.many else params[:1], opts,
                                    self.compiled_cache, column_keys=run.column_keys, run=run)


def _execute_text(connection: sa.Connection, statement: DriverSQL, params: list[dict[str, Any]], *,
                  many: bool, run: StatementRun, options: dict[str, Any]) -> Any:
    """DDL / driver SQL (allowed by the policy already): the text, as the client's driver got it."""
    run.verify(text_fingerprint(statement.sql))  # text is never rewritten
    driver_params = statement.driver_params(params)
    # what ``exec_driver_sql`` does, with the run's execution context (raw rows recorded)
    distilled: list[Any] = list(driver_params) if many else (
        [driver_params[0]] if driver_params and driver_params[0] else [])
    conn: Any = connection
    exec_opts = conn._execution_options.merge_with(options or None)
    return conn._execute_context(conn.dialect, run_context_constructor(conn.dialect, run, "_init_statement"),
                                 statement.sql, None, exec_opts, statement.sql, distilled)


def execute_preprocessed(connection: sa.Connection, statement: Any, params: list[dict[str, Any]],
                         options: Mapping[str, Any] | None, cache: Any, *,
                         column_keys: list[str] | None = None, run: StatementRun | None = None) -> Any:
    """``Connection.execute(statement, params)`` for values the client processed already.

    What ``Connection._execute_clauseelement`` does (the same in SQLAlchemy 2.0 and 2.1: events,
    column keys from the parameters, ``_compile_w_cache``, ``_execute_context``), except that the
    statement is compiled into *cache* - the client statements' own - and the compiled object is
    marked pre-processed before it runs (:func:`mark_preprocessed`). With *column_keys*, those
    decide crud's choices (which Python defaults an ``INSERT ... FROM SELECT`` adds to its SELECT,
    how multi-row VALUES binds are named) instead of the parameters' keys, which also carry the
    client's evaluated defaults. With *run*, the compile is checked against the client's
    fingerprint before anything else happens (:meth:`StatementRun.verify`) and the execution
    context carries the run (raw rows). Private SQLAlchemy API; the fingerprint check catches any
    drift.
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
    if run is not None:
        run.verify(sql_fingerprint(compiled))
    mark_preprocessed(compiled)
    extra = {"cache_hit": rest[-1]}
    if len(rest) == 2:  # 2.1 also returns the collected parameters
        extra["param_dict"] = rest[0]
    result = conn._execute_context(dialect, run_context_constructor(dialect, run, "_init_compiled"), compiled,
                                   params, exec_opts, compiled, params, statement, extracted, **extra)
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
    """The next *size* raw rows of a streamed result, and whether more may follow: its run's
    :meth:`~dbapi_server.statement_run.StatementRun.page`, which counts them against the row
    limit (``LimitExceeded``) and closes the result once exhausted."""
    run: StatementRun = result.context._dbs_run  # type: ignore[attr-defined]
    return run.page(result, size)


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
