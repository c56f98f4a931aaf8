"""Running a statement the policy allowed: row-filtered SQL, statement timeouts, row limits.

**Fingerprint of a filtered statement.** The server refuses to execute unless the SQL it compiled
fingerprints as the client's (``executor._RunContextMixin.pre_exec``). A row-filtered statement compiles
differently by design, so the check moves, unweakened, in front of execution: the *original*
statement is compiled (same dialect, column keys and executemany flag as ``Connection.execute``
would use; SQLAlchemy's compiled cache keeps it) and its fingerprint compared with the client's;
on a mismatch nothing runs. Only then does the rewritten statement run, with the filter values
added to every parameter set. Statements without filters take the unchanged path (the check at
the cursor).

**Statement timeout.** The database's own: PostgreSQL ``SET statement_timeout`` (the client sees
``OperationalError`` / SQLSTATE 57014 ``QueryCanceled``), MariaDB ``SET max_statement_time``
(``OperationalError`` 1969), MySQL ``SET max_execution_time`` (SELECTs only; error 3024), SQLite a
progress handler that interrupts (``OperationalError: interrupted``). Set before each statement
only when the policy configures a timeout somewhere (every caller then gets its role's value or
none), so a server without timeouts pays nothing.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import compiler as sql_compiler

from query_translation.fingerprint import sql_fingerprint

from .auth import Principal
from .executor import StatementExecutor, StatementMismatch
from .policy import Plan, Policy

__all__ = ["apply_statement_timeout", "end_statement_timeout", "execute_plan", "execute_plan_streamed"]


def execute_plan(policy: Policy, executor: StatementExecutor, connection: sa.Connection, plan: Plan,
                 params: list[dict[str, Any]], *, many: bool, sql_hash: str,
                 options: Mapping[str, Any] | None, column_keys: list[str] | None) -> dict[str, Any]:
    """Run an allowed statement and answer with its rows (at most the role's ``max_rows``)."""
    expected = _prepare(policy, connection, plan, params, many, sql_hash, column_keys)
    try:
        return executor.execute(connection, plan.statement, params, many=many, sql_hash=expected,
                                options=options, column_keys=column_keys, max_rows=plan.limits.max_rows)
    finally:
        _after(policy, connection)


def execute_plan_streamed(policy: Policy, executor: StatementExecutor, connection: sa.Connection, plan: Plan,
                          params: list[dict[str, Any]], *, sql_hash: str, page_size: int,
                          options: Mapping[str, Any] | None) -> tuple[dict[str, Any], sa.CursorResult[Any] | None]:
    """Run an allowed statement with a server-side cursor; the first page, and the open result."""
    expected = _prepare(policy, connection, plan, params, False, sql_hash, None)
    try:
        return executor.execute_streamed(connection, plan.statement, params, sql_hash=expected,
                                         page_size=page_size, options=options)
    finally:
        _after(policy, connection)


def apply_statement_timeout(policy: Policy, connection: sa.Connection, principal: Principal) -> None:
    """Give *connection* the caller's statement timeout (for work outside ``execute_plan``, such
    as named methods): pooled connections keep the last caller's setting otherwise."""
    if policy.uses_timeouts:
        _set_timeout(connection, policy.limits_for(principal).statement_timeout)


def end_statement_timeout(policy: Policy, connection: sa.Connection) -> None:
    """After the work ``apply_statement_timeout`` limited: SQLite's progress handler, whose
    deadline then passes, would interrupt whatever runs next on the connection (a commit's
    constraint checks, a cursor's later pages, the server's own statements)."""
    _after(policy, connection)


def _prepare(policy: Policy, connection: sa.Connection, plan: Plan, params: list[dict[str, Any]],
             many: bool, sql_hash: str, column_keys: list[str] | None) -> str | None:
    """Timeout set, original verified; returns the fingerprint the cursor check still needs."""
    if policy.uses_timeouts:
        _set_timeout(connection, plan.limits.statement_timeout)
    if plan.original is None:
        return sql_hash
    if _fingerprint(connection, plan.original, params, many, column_keys) != sql_hash:
        raise StatementMismatch(
            "The statement rebuilt on the server does not compile to the SQL the client "
            "compiled; client and server disagree about the schema or the library version. "
            "Nothing was executed.")
    for param_set in params:
        param_set.update(plan.filter_params)  # after the client's: a client value never wins
    return None


def _fingerprint(connection: sa.Connection, statement: Any, params: list[dict[str, Any]], many: bool,
                 column_keys: list[str] | None) -> str:
    """The fingerprint ``Connection.execute`` would have checked for *statement* (cached compile)."""
    conn: Any = connection
    dialect = conn.dialect
    keys = sorted(column_keys) if column_keys is not None else sorted(params[0]) if params else []
    compiled = statement._compile_w_cache(
        dialect=dialect, compiled_cache=conn.engine._compiled_cache, column_keys=keys,
        for_executemany=many and len(params) > 1, schema_translate_map=None,
        linting=dialect.compiler_linting | sql_compiler.WARN_LINTING)[0]
    return sql_fingerprint(compiled)


_TIMEOUT_SET = "dbs_statement_timeout"  # connection.info key: (value the session holds, scope)


def _AUTOCOMMIT() -> str:
    return "autocommit"


def _set_timeout(connection: sa.Connection, seconds: float | None) -> None:
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


def _after(policy: Policy, connection: sa.Connection) -> None:
    """SQLite's handler would also interrupt later page fetches: the limit is per statement."""
    if policy.uses_timeouts and connection.dialect.name == "sqlite" and not connection.closed:
        raw: Any = connection.connection.dbapi_connection
        if raw is not None:
            raw.set_progress_handler(None, 0)
