"""Running a statement the policy allowed: row-filtered SQL, statement timeouts, row limits.

Each allowed statement runs as one :class:`~dbapi_server.statement_run.StatementRun`, which owns
the statement timeout, the single fingerprint check, raw-row capture and the row limit.

**Fingerprint of a filtered statement.** The server refuses to execute unless the SQL it compiled
fingerprints as the client's. A row-filtered statement compiles differently by design, so the
check is made, unweakened, on the *original* statement's compile (same dialect, column keys and
executemany flag as ``Connection.execute`` would use; SQLAlchemy's compiled cache keeps it); on a
mismatch nothing runs. Only then does the rewritten statement run, with the filter values added to
every parameter set. Statements without filters are checked on the compile that runs.

**Statement timeout.** The database's own: PostgreSQL ``SET statement_timeout`` (the client sees
``OperationalError`` / SQLSTATE 57014 ``QueryCanceled``), MariaDB ``SET max_statement_time``
(``OperationalError`` 1969), MySQL ``SET max_execution_time`` (SELECTs only; error 3024), SQLite a
progress handler that interrupts (``OperationalError: interrupted``). Set before each statement
only when the policy configures a timeout somewhere (every caller then gets its role's value or
none), so a server without timeouts pays nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from .auth import Principal
from .executor import StatementExecutor
from .policy import Plan, Policy
from .statement_run import StatementRun, end_timeout, set_timeout

__all__ = ["apply_statement_timeout", "end_statement_timeout", "execute_plan", "execute_plan_streamed",
           "start_run"]


def start_run(policy: Policy, connection: sa.Connection, plan: Plan, params: list[dict[str, Any]], *,
              many: bool, sql_hash: str, options: Mapping[str, Any] | None,
              column_keys: list[str] | None) -> StatementRun:
    """The run of an allowed statement on *connection*."""
    return StatementRun(connection, plan, params, many=many, sql_hash=sql_hash, options=options,
                        column_keys=column_keys, uses_timeouts=policy.uses_timeouts)


def execute_plan(policy: Policy, executor: StatementExecutor, connection: sa.Connection, plan: Plan,
                 params: list[dict[str, Any]], *, many: bool, sql_hash: str,
                 options: Mapping[str, Any] | None, column_keys: list[str] | None) -> dict[str, Any]:
    """Run an allowed statement and answer with its rows (at most the role's ``max_rows``)."""
    run = start_run(policy, connection, plan, params, many=many, sql_hash=sql_hash, options=options,
                    column_keys=column_keys)
    try:
        run.begin()
        return run.reply(executor.run(run))
    finally:
        run.end()


def execute_plan_streamed(policy: Policy, executor: StatementExecutor, connection: sa.Connection, plan: Plan,
                          params: list[dict[str, Any]], *, sql_hash: str, page_size: int,
                          options: Mapping[str, Any] | None) -> tuple[dict[str, Any], sa.CursorResult[Any] | None]:
    """Run an allowed statement with a server-side cursor; the first page, and the open result
    (its run - ``result.context._dbs_run`` - counts the later pages against the row limit)."""
    run = start_run(policy, connection, plan, params, many=False, sql_hash=sql_hash, options=options,
                    column_keys=None)
    try:
        run.begin()
        result = executor.run(run, stream=page_size)
        reply, more = run.first_page(result, page_size)
        return reply, (result if more else None)
    finally:
        run.end()


def apply_statement_timeout(policy: Policy, connection: sa.Connection, principal: Principal) -> None:
    """Give *connection* the caller's statement timeout (for work outside ``execute_plan``, such
    as named methods): pooled connections keep the last caller's setting otherwise."""
    if policy.uses_timeouts:
        set_timeout(connection, policy.limits_for(principal).statement_timeout)


def end_statement_timeout(policy: Policy, connection: sa.Connection) -> None:
    """After the work ``apply_statement_timeout`` limited: SQLite's progress handler, whose
    deadline then passes, would interrupt whatever runs next on the connection (a commit's
    constraint checks, a cursor's later pages, the server's own statements)."""
    if policy.uses_timeouts:
        end_timeout(connection)
