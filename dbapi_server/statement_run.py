"""One execution of one client statement: the statement-run object.

A :class:`StatementRun` is made for each statement the policy allowed (``enforcement.execute_plan``)
and owns, for that one execution, everything that used to be spread over the view, the policy's
enforcement and engine hooks:

* **the statement timeout** - set on the connection before the statement (only when the policy
  uses timeouts: every caller then gets its role's value or none) and, on SQLite, ended after it;
* **the fingerprint check, once** - :meth:`StatementRun.verify`, called at exactly one point: on
  the compile of the statement the client sent. For a statement without row filters that is the
  compile the executor runs (checked right after ``_compile_w_cache``, before the execution
  context is even made); for a row-filtered one it is the *original*'s compile, before the
  rewritten statement runs; for SQL text, the text. A mismatch answers ``statement_mismatch`` and
  nothing was executed;
* **raw-row capture** - the execution context's ``post_exec`` hands the driver cursor to the run
  (:meth:`StatementRun.executed`), which wraps it so every row fetched from it is kept raw, even
  rows SQLAlchemy consumes itself (``return_defaults()``), and takes rowcount and the statement's
  own last row id. The wrapper also computes the driver's cursor description once for SQLAlchemy
  and the answer (psycopg builds it anew at each access: ~1 µs a column);
* **the row limit** - the role's ``max_rows``: counted by :meth:`StatementRun.take_rows` for a
  whole answer, a streamed first page and every later page of a server-side cursor (the run stays
  with the open cursor, :mod:`dbapi_server.cursors`).

How the run reaches the execution context: SQLAlchemy makes the context itself inside
``Connection._execute_context`` from a constructor it is handed; the executor hands it one that
sets a single attribute, ``_dbs_run``, on the context it made (:func:`run_context_constructor`).
SQLAlchemy offers no other hook that runs between the cursor's execution and the result's set-up
(where ``return_defaults()`` consumes rows) for one statement only - engine events are global and
would cost every statement, the server's own included. Nothing else travels on the context, and
no result travels in a context variable: the answer is built from the run.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import compiler as sql_compiler

from query_translation import encode_result_row, encode_value, result_row_encoder
from query_translation.fingerprint import sql_fingerprint

from .errors import APIError
from .refusals import LimitExceeded

__all__ = ["StatementMismatch", "StatementRun", "end_timeout", "set_timeout"]


class StatementMismatch(APIError):
    code = "statement_mismatch"


_MISMATCH = ("The statement rebuilt on the server does not compile to the SQL the client compiled; client "
             "and server disagree about the schema or the library version. Nothing was executed.")


class StatementRun:
    """One execution of one allowed statement (see the module docstring).

    *connection* runs it; *plan* is the policy's (what to run, the role's limits, row filters);
    *params* the client's values as the driver binds them; *sql_hash* the client's fingerprint.
    """

    __slots__ = ("connection", "plan", "params", "many", "sql_hash", "options", "column_keys", "max_rows",
                 "rows_taken", "streamed", "cursor", "rowcount", "lastrowid", "_timeouts", "_verified")

    def __init__(self, connection: sa.Connection, plan: Any, params: list[dict[str, Any]], *, many: bool,
                 sql_hash: str | None, options: Mapping[str, Any] | None = None,
                 column_keys: list[str] | None = None, uses_timeouts: bool = False) -> None:
        self.connection = connection
        self.plan = plan
        self.params = params
        self.many = many
        self.sql_hash = sql_hash
        self.options = options
        self.column_keys = column_keys
        self.max_rows: int | None = plan.limits.max_rows
        self.rows_taken = 0
        self.streamed = False
        self.cursor: RecordingCursor | None = None
        self.rowcount = -1
        self.lastrowid: Any = None
        self._timeouts = uses_timeouts
        self._verified = sql_hash is None  # None: the caller verified the SQL already

    # -- the statement timeout -------------------------------------------------------------------
    def begin(self) -> None:
        """Before the statement: the role's timeout; a row-filtered statement's original verified
        and the filter values added to every parameter set (after the client's: never overridden)."""
        if self._timeouts:
            set_timeout(self.connection, self.plan.limits.statement_timeout)
        original = self.plan.original
        if original is not None:
            self.verify(sql_fingerprint(self._compile_original(original)))
            for param_set in self.params:
                param_set.update(self.plan.filter_params)

    def end(self) -> None:
        """After the statement (and its first page): SQLite's progress handler would interrupt
        whatever runs next on the connection - a commit, a later page, the server's own work."""
        if self._timeouts:
            end_timeout(self.connection)

    # -- the one fingerprint check ---------------------------------------------------------------
    def verify(self, fingerprint: str) -> None:
        """The client's SQL fingerprint against the server's compile of the client's statement;
        called once per run, before anything is executed."""
        if self._verified:
            return
        if fingerprint != self.sql_hash:
            raise StatementMismatch(_MISMATCH)
        self._verified = True

    def _compile_original(self, statement: Any) -> Any:
        """The original of a row-filtered statement, compiled as ``Connection.execute`` would
        (same dialect, column keys and executemany flag; the engine's compiled cache keeps it)."""
        conn: Any = self.connection
        dialect = conn.dialect
        params, keys = self.params, self.column_keys
        keys = sorted(keys) if keys is not None else sorted(params[0]) if params else []
        return statement._compile_w_cache(
            dialect=dialect, compiled_cache=conn.engine._compiled_cache, column_keys=keys,
            for_executemany=self.many and len(params) > 1, schema_translate_map=None,
            linting=dialect.compiler_linting | sql_compiler.WARN_LINTING)[0]

    # -- raw rows ---------------------------------------------------------------------------------
    def executed(self, context: Any) -> None:
        """The execution context's ``post_exec``: the cursor ran. Take rowcount and last row id,
        and record the cursor raw from here on (a streamed one is taken page by page, never kept)."""
        cursor = context.cursor
        self.rowcount = cursor.rowcount
        self.lastrowid = _own_lastrowid(cursor, context)
        self.cursor = context.cursor = RecordingCursor(cursor, record=not self.streamed)

    def description(self, context: Any) -> list[list[Any]] | None:
        """The cursor description as JSON (cached on the compiled statement), or None."""
        cursor = self.cursor
        if cursor is None:
            return None
        cached = getattr(getattr(context, "compiled", None), "_dbs_description", None)
        if cached is not None and cursor.width() == len(cached):
            return cached  # type: ignore[no-any-return]
        description = cursor.description
        if description is None:
            return None
        return _encoded_description(context, description)

    # -- the row limit ----------------------------------------------------------------------------
    def take_rows(self, count: int) -> None:
        """*count* more rows go to the client: refused beyond the role's ``max_rows``, counted
        across all pages of a streamed result."""
        self.rows_taken += count
        if self.max_rows is not None and self.rows_taken > self.max_rows:
            if self.streamed:
                raise LimitExceeded(f"The result has more than the {self.max_rows} rows this role may fetch; "
                                    "narrow the query.", limit="result_rows", maximum=self.max_rows)
            raise LimitExceeded(f"The result has more than the {self.max_rows} rows this role may fetch at "
                                "once; narrow the query, or page it (LIMIT / yield_per).", limit="result_rows",
                                maximum=self.max_rows)

    # -- answers ----------------------------------------------------------------------------------
    def reply(self, result: sa.CursorResult[Any]) -> dict[str, Any]:
        """The whole answer of a run that was not streamed: rowcount, last row id, description
        and every raw row (at most ``max_rows``: one row more tells "too many")."""
        context: Any = result.context
        reply: dict[str, Any] = {"rowcount": self.rowcount}
        if self.lastrowid is not None:
            reply["lastrowid"] = encode_value(self.lastrowid)
        description = self.description(context)  # before the cursor closes
        imv_rows = getattr(context, "_insertmanyvalues_rows", None)
        if isinstance(result, RawRows):  # a SELECT: the rows straight from the driver
            try:
                if self.max_rows is None:
                    result.cursor.fetchall()
                else:
                    result.cursor.fetchmany(self.max_rows + 1)
            except BaseException as exc:  # wrapped as SQLAlchemy's result would (SQLite steps here)
                context.root_connection._handle_dbapi_exception(exc, None, None, result.cursor, context)
        elif result.returns_rows:
            max_rows = self.max_rows
            if max_rows is None:
                result.cursor_strategy.fetchall(result, result.cursor)  # drain through the recorder
            else:
                result.cursor_strategy.fetchmany(result, result.cursor, max_rows + 1)
        result.close()
        if imv_rows is not None:
            raw = imv_rows  # insertmanyvalues: the batches' RETURNING rows, raw and in order
        elif self.cursor is not None:
            raw = self.cursor.rows
        else:
            raw = []
        self.take_rows(len(raw))
        if description is not None:
            reply["description"] = description
            reply["rows"] = encode_rows(context, raw)
        return reply

    def first_page(self, result: sa.CursorResult[Any], page_size: int) -> tuple[dict[str, Any], bool]:
        """A streamed run's answer with its first page, and whether more rows may follow."""
        if not result.returns_rows:
            return self.reply(result), False
        description = self.description(result.context)
        try:
            rows, more = self.page(result, page_size)
        except BaseException:
            result.close()
            raise
        return {"rowcount": self.rowcount, "description": description, "rows": rows, "more": more}, more

    def page(self, result: sa.CursorResult[Any], size: int) -> tuple[list[list[Any]], bool]:
        """The next *size* raw rows of a streamed result (counted against the limit), and whether
        more may follow; the result is closed once exhausted."""
        raw = result.cursor_strategy.fetchmany(result, result.cursor, size)
        more = len(raw) == size
        if not more:
            result.close()
        self.take_rows(len(raw))
        return encode_rows(result.context, raw), more


class RecordingCursor:
    """The driver cursor after execution: keeps every row fetched from it, raw (unless streamed),
    and computes its description once (SQLAlchemy's result and the answer share it)."""

    __slots__ = ("_cursor", "rows", "_record", "_description")

    def __init__(self, cursor: Any, record: bool = True) -> None:
        self._cursor = cursor
        self.rows: list[Any] = []
        self._record = record
        self._description: Any = _UNSET

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    @property
    def description(self) -> Any:
        description = self._description
        if description is _UNSET:
            description = self._description = self._cursor.description
        return description

    def width(self) -> int | None:
        """The number of columns in the description (None: no description), without building it
        when the driver is psycopg (its result knows the count)."""
        if self._description is _UNSET:
            result = getattr(self._cursor, "pgresult", None)
            if result is not None and result.status == _TUPLES_OK and result.nfields:
                return int(result.nfields)
        description = self.description
        return None if description is None else len(description)

    def fetchone(self) -> Any:
        row = self._cursor.fetchone()
        if row is not None and self._record:
            self.rows.append(row)
        return row

    def fetchmany(self, *args: Any) -> Any:
        rows = self._cursor.fetchmany(*args)
        if self._record:
            self.rows.extend(rows)
        return rows

    def fetchall(self) -> Any:
        rows = self._cursor.fetchall()
        if self._record:
            self.rows.extend(rows)
        return rows


_UNSET: Any = object()
_TUPLES_OK = 2  # libpq's PGRES_TUPLES_OK (psycopg.pq.ExecStatus.TUPLES_OK): psycopg then describes nfields columns


class RawRows:
    """A plain SELECT's result, straight from the recorded driver cursor.

    SQLAlchemy's result set-up (``CursorResult``, its metadata adapted to the statement, the
    cursor description it needs for that) serves result processing, which the server never does:
    the client processes the raw rows. ``_RunContextMixin._setup_result_proxy`` answers with this
    instead for a SELECT that is not streamed, on a connection without execute events.
    """

    __slots__ = ("context", "cursor")
    returns_rows = True

    def __init__(self, context: Any) -> None:
        self.context = context
        self.cursor = context.cursor

    def close(self) -> None:
        self.cursor.close()


def encode_rows(context: Any, raw: list[Any]) -> list[list[Any]]:
    """Raw rows for the answer (``values.encode_result_row``), with the row encoder of the compiled
    statement: made from the rows the second time the statement answers rows of that width
    (a statement answered once keeps the general encoder), then kept on the compiled statement."""
    if not raw:
        return []
    compiled = getattr(context, "compiled", None)
    if compiled is None:
        return [encode_result_row(row) for row in raw]
    width = len(raw[0])
    found = getattr(compiled, "_dbs_row_encoder", None)
    if found is not None and found[0] == width and found[1] is not None:
        encode = found[1]
    else:
        encode = encode_result_row
        compiled._dbs_row_encoder = (width, None if found is None else result_row_encoder(raw))
    return [encode(row) for row in raw]


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
    """The execution context of a client statement (mixed in front of the dialect's own): after
    the cursor ran (``post_exec``, before SQLAlchemy sets up the result and may consume rows
    itself, as ``return_defaults()`` does) it hands the cursor to its run. Only client statements
    run with it (the executor passes its constructor to ``_execute_context``); the server's own
    statements keep the dialect's context and no engine event runs for any statement."""

    _dbs_run: StatementRun  # the one attribute: set by run_context_constructor

    is_crud: bool
    is_text: bool
    isddl: bool
    compiled: Any
    execution_options: Any
    root_connection: Any

    def post_exec(self) -> None:
        super().post_exec()  # type: ignore[misc]
        self._dbs_run.executed(self)

    def _setup_result_proxy(self) -> Any:
        """A plain SELECT (returning rows, not streamed, no out parameters, no execute events to see a result):
        the raw rows, without SQLAlchemy's result set-up (:class:`RawRows`)."""
        run = self._dbs_run
        connection = self.root_connection
        compiled = self.compiled
        if (not run.streamed and not self.is_crud and not self.is_text and not self.isddl and compiled is not None
                and compiled.statement.is_select and not compiled.has_out_parameters and not connection._has_events
                and not connection.engine._has_events and run.cursor is not None):
            return RawRows(self)
        return super()._setup_result_proxy()  # type: ignore[misc]


_run_contexts: dict[type, type] = {}


def _run_context(dialect: Any) -> Any:
    """The run context class for *dialect*'s execution context class (made once per class)."""
    base = dialect.execution_ctx_cls
    found = _run_contexts.get(base)
    if found is None:
        found = _run_contexts[base] = type(f"DBAPIRun{base.__name__}", (_RunContextMixin, base), {})
    return found


def run_context_constructor(dialect: Any, run: StatementRun | None, init: str) -> Any:
    """What ``Connection._execute_context`` makes the execution context with: the run context's
    *init* (``_init_compiled`` / ``_init_statement``), which then carries *run*. Without a run,
    the dialect's own context."""
    if run is None:
        return getattr(dialect.execution_ctx_cls, init)
    made = getattr(_run_context(dialect), init)

    def construct(*args: Any, **kw: Any) -> Any:
        context = made(*args, **kw)
        context._dbs_run = run
        return context

    return construct


# -- statement timeouts ---------------------------------------------------------------------------
_TIMEOUT_SET = "dbs_statement_timeout"  # connection.info key: (value the session holds, scope)


def _AUTOCOMMIT() -> str:
    return "autocommit"


def set_timeout(connection: sa.Connection, seconds: float | None) -> None:
    """The database's own statement timeout for what runs next on *connection* (None: none).

    PostgreSQL ``SET statement_timeout``, MariaDB ``SET max_statement_time``, MySQL ``SET
    max_execution_time``, SQLite a progress handler that interrupts.
    """
    dialect = connection.dialect
    if dialect.name == "sqlite":
        raw: Any = connection.connection.dbapi_connection
        if seconds is None:
            raw.set_progress_handler(None, 0)
        else:
            deadline = time.monotonic() + seconds
            raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        return
    # A session setting outlives the statement: remember what the pooled connection holds. On an
    # autocommit connection (one-shot reads) it holds until changed; inside a transaction only
    # until that transaction ends, since a rollback may restore an older value - so the memo is
    # tied to the transaction object, and each transaction sets it once.
    scope = "autocommit" if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT" \
        else connection.get_transaction()
    held = connection.info.get(_TIMEOUT_SET)
    if held is not None and held[0] == seconds and held[1]() == scope:
        return
    if dialect.name == "postgresql":
        connection.exec_driver_sql(f"SET statement_timeout = {int((seconds or 0) * 1000)}")
    elif dialect.name in ("mysql", "mariadb"):
        if getattr(dialect, "is_mariadb", False):
            connection.exec_driver_sql(f"SET SESSION max_statement_time = {float(seconds or 0):.3f}")
        else:
            connection.exec_driver_sql(f"SET SESSION max_execution_time = {int((seconds or 0) * 1000)}")
    else:
        return
    if scope is None or (scope != "autocommit" and held is not None and held[1]() == scope):
        # no transaction yet (this SET began one), or a second value in one transaction (a
        # ROLLBACK TO SAVEPOINT could undo this SET): set it before every statement
        connection.info[_TIMEOUT_SET] = None
        return
    connection.info[_TIMEOUT_SET] = (seconds, _AUTOCOMMIT if scope == "autocommit" else weakref.ref(scope))


def end_timeout(connection: sa.Connection) -> None:
    """SQLite's handler would also interrupt later page fetches: the limit is per statement."""
    if connection.dialect.name == "sqlite" and not connection.closed:
        raw: Any = connection.connection.dbapi_connection
        if raw is not None:
            raw.set_progress_handler(None, 0)
