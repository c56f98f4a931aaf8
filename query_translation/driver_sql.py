"""Statements that travel as SQL text: DDL and driver SQL (``exec_driver_sql``).

Everything the ORM and Core compile travels as structure. Two kinds of statement have no
structure to send: DDL (``CREATE TABLE``, ``CREATE INDEX``, ``DROP ...``: SQLAlchemy's DDL
constructs compile straight to a string) and SQL strings handed to the driver
(``Connection.exec_driver_sql``, and what the dialect's inspection runs that way, such as
SQLite's ``PRAGMA table_info``). They travel as their SQL under a node kind of their own, so the
server's policy can tell them apart and refuse each (the default policy refuses both)::

    {"version": 1, "statement": {"t": "ddl", "sql": "CREATE TABLE ..."}}
    {"version": 1, "statement": {"t": "driver_sql", "sql": "PRAGMA ...", "positional": true}}

Parameters (driver SQL only) travel like any others; positional parameter sets as objects keyed
``"0"``, ``"1"``, ... with ``"positional": true`` on the node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .exceptions import MalformedStatementError

__all__ = ["DRIVER_SQL_KINDS", "MAX_SQL_CHARS", "DriverSQL", "driver_sql_document", "driver_sql_params",
           "parse_driver_sql", "positional_params"]

DRIVER_SQL_KINDS = frozenset({"ddl", "driver_sql"})
MAX_SQL_CHARS = 1 << 20


@dataclass(frozen=True)
class DriverSQL:
    """A statement the server runs as text (``Connection.exec_driver_sql``)."""

    kind: str  # "ddl" or "driver_sql"
    sql: str
    positional: bool = False

    def driver_params(self, params: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The decoded parameter sets in the form the driver takes (tuples when positional)."""
        if not self.positional:
            return [dict(p) for p in params]
        return [tuple(p[str(i)] for i in range(len(p))) for p in params]


def driver_sql_document(kind: str, sql: str, *, positional: bool = False, version: int) -> dict[str, Any]:
    node: dict[str, Any] = {"t": kind, "sql": sql}
    if positional:
        node["positional"] = True
    return {"version": version, "statement": node}


def driver_sql_params(parameters: Sequence[Any]) -> tuple[list[dict[str, Any]], bool]:
    """Driver-ready parameter sets as mappings for :func:`~query_translation.encode_params`."""
    out: list[dict[str, Any]] = []
    positional = False
    for param_set in parameters:
        if isinstance(param_set, Mapping):
            out.append({str(k): _plain(v) for k, v in param_set.items()})
        else:
            positional = True
            out.append({str(i): _plain(v) for i, v in enumerate(param_set)})
    return out, positional


def _plain(value: Any) -> Any:
    """``str`` subclasses (SQLAlchemy's ``quoted_name``) reach a driver as the string they are."""
    return str(value) if isinstance(value, str) and type(value) is not str else value


def positional_params(params: Sequence[Mapping[str, Any]]) -> bool:
    return all(set(p) == {str(i) for i in range(len(p))} for p in params)


def parse_driver_sql(node: Mapping[str, Any]) -> DriverSQL:
    """Validate a ``ddl`` / ``driver_sql`` node."""
    kind, sql = node.get("t"), node.get("sql")
    extra = set(node) - {"t", "sql", "positional"}
    if kind not in DRIVER_SQL_KINDS or not isinstance(sql, str) or not sql.strip() or extra:
        raise MalformedStatementError({"statement": ["a ddl/driver_sql node has exactly 't', 'sql', 'positional'"]},
                                      "The statement document is malformed: a SQL text node needs "
                                      "a non-empty 'sql' string and nothing else.")
    if len(sql) > MAX_SQL_CHARS:
        raise MalformedStatementError({"statement": ["sql too long"]},
                                      f"The SQL text is longer than {MAX_SQL_CHARS} characters.")
    positional = node.get("positional", False)
    if not isinstance(positional, bool):
        raise MalformedStatementError({"statement": ["'positional' must be a boolean"]},
                                      "The statement document is malformed: 'positional' must be a boolean.")
    return DriverSQL(str(kind), sql, positional)
