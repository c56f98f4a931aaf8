"""Settings statements an application sends as SQL text, judged as settings, not as raw SQL.

Two kinds, both whole statements matched by a strict grammar:

* PostgreSQL ``SET LOCAL <name> = <duration>`` for the names in
  :data:`dbapi_server.policy.DEFAULT_SETTINGS` (``lock_timeout``...): transaction-scoped, so it
  runs as sent (Airflow's ``with_db_lock_timeout``).
* SQLite ``PRAGMA <name> = <value>`` for :data:`SQLITE_PRAGMAS` (MLflow opens every session with
  ``foreign_keys = ON``, ``busy_timeout = 20000``, ``case_sensitive_like = true``). A pragma is
  connection-wide state: run on a pooled DB-API connection it would outlive the request and
  change other callers' statements. So it never runs. The DB-API reads the connection's own
  setting instead: equal to what the client asks, the statement is answered as done (it would
  change nothing); different, it is refused, naming the value the DB-API runs with - the operator
  configures pragmas for every connection (``DBAPI_SQLITE_PRAGMAS`` / ``--sqlite-pragma``,
  :mod:`dbapi_server.engine_options`).
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from query_translation.decode import StatementInfo

from .refusals import PolicyViolation

__all__ = ["SQLITE_PRAGMAS", "answer_pragma", "sqlite_pragma"]

_PRAGMA = re.compile(r"\s*PRAGMA\s+([A-Za-z_]{1,63})\s*=\s*'?([A-Za-z0-9_]{1,32})'?\s*;?\s*", re.IGNORECASE)
_TRUE, _FALSE = {"on", "true", "yes", "1"}, {"off", "false", "no", "0"}

# name -> how to read the connection's current value (case_sensitive_like cannot be read back:
# what LIKE does tells it)
SQLITE_PRAGMAS: dict[str, str] = {
    "foreign_keys": "PRAGMA foreign_keys",
    "busy_timeout": "PRAGMA busy_timeout",
    "case_sensitive_like": "SELECT 'a' NOT LIKE 'A'",
    "recursive_triggers": "PRAGMA recursive_triggers",
}


def sqlite_pragma(info: StatementInfo) -> tuple[str, int] | None:
    """``(name, value)`` when the statement is exactly one known ``PRAGMA name = value``."""
    if info.kind != "text" or len(info.literal_sql) != 1 or info.read_tables or info.functions:
        return None
    found = _PRAGMA.fullmatch(info.literal_sql[0])
    if found is None or found.group(1).lower() not in SQLITE_PRAGMAS:
        return None
    value = _number(found.group(2))
    return (found.group(1).lower(), value) if value is not None else None


def _number(text: str) -> int | None:
    lowered = text.lower()
    if lowered in _TRUE:
        return 1
    if lowered in _FALSE:
        return 0
    return int(text) if text.isdigit() and len(text) <= 9 else None


def answer_pragma(connection: sa.Connection, name: str, value: int) -> dict[str, Any]:
    """The reply to ``PRAGMA name = value`` when the connection already has it; else refused."""
    if connection.dialect.name != "sqlite":
        raise PolicyViolation("PRAGMA statements are SQLite's; this DB-API serves another database.",
                              raw_sql=True)
    current = connection.exec_driver_sql(SQLITE_PRAGMAS[name]).scalar()
    if current is None or int(current) != value:
        raise PolicyViolation(
            f"PRAGMA {name} is connection-wide state the DB-API does not let a client change; its "
            f"connections run with {name} = {current}. Configure the DB-API's pragmas "
            "(DBAPI_SQLITE_PRAGMAS) to match the application.", raw_sql=True)
    return {"rowcount": -1}  # what sqlite3 answers for a PRAGMA that sets a value: no rows
