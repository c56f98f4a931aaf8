"""Reflection for isolated clients: the dialect's inspection methods, limited to served tables.

``Inspector`` and ``MetaData.reflect()`` read the database's catalog (``pg_catalog``, ``PRAGMA``,
``information_schema``) with SQL text, which an isolated client may not send. Applications reflect
at start - Airflow's every command reflects ``log_template`` (``synchronize_log_template``) - so
the DB-API answers the reflection methods itself (``POST /catalog/reflect``): it runs the server
dialect's own method on its own connection and sends the result back (codec:
``query_translation.reflection``).

What a caller sees is what it could use anyway: tables the server serves (its metadata and the
extra tables) that the caller's role has a grant on. Name lists leave every other table out, a
single-table question about any other table raises ``NoSuchTableError`` (what a missing table
raises on a direct connection), and ``get_multi_*`` answers for the visible tables only. A role
allowed raw SQL could read the whole catalog with SQL anyway: it gets the database's whole answer - except the DB-API's
own commit-outcome table, which is never the application's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.reflection import ObjectKind, ObjectScope

from query_translation.reflection import REFLECTION_METHODS, encode_reflected

from .auth import Principal
from .errors import APIError
from .state import ServerState

__all__ = ["reflect"]

_SIMPLE = (str, int, float, bool, type(None))


def reflect(state: ServerState, principal: Principal, method: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Run one reflection method for *principal*; the JSON answer."""
    if method not in REFLECTION_METHODS:
        raise APIError(f"Unknown reflection method {method!r}.", code="malformed_request")
    role = state.policy.role_for(principal)
    dialect = state.engine.dialect
    schema = _optional_str(args, "schema")

    def key(table_schema: str | None, name: str) -> str:
        if table_schema is None or table_schema == dialect.default_schema_name:
            return name
        return f"{table_schema}.{name}"

    def visible(table_schema: str | None, name: str) -> bool:
        found = key(table_schema, name)
        if found == state.outcome_table:  # the DB-API's own bookkeeping, never the application's
            return False
        if role.raw_sql:  # it may read the catalog with SQL anyway: the database's whole answer
            return True
        return found in state.metadata.tables and role.grant(found) is not None

    extra = args.get("kw") or {}
    # only the dialect's own reflection options (postgresql_ignore_search_path...), plain values
    prefix = f"{dialect.name}_"
    if not isinstance(extra, Mapping) or not all(isinstance(k, str) and k.startswith(prefix) and isinstance(v, _SIMPLE)
                                                 for k, v in extra.items()):
        raise APIError(f"'kw' may only carry {prefix}* options with plain values.", code="malformed_request")
    with state.read_connection() as conn:
        run = getattr(dialect, method)
        if method in ("get_table_names", "get_view_names"):
            listed = run(conn, schema=schema, **extra)
            return {"result": encode_reflected([n for n in listed if visible(schema, n)])}
        if method.startswith("get_multi_"):
            wanted = args.get("filter_names")
            if wanted is not None and (not isinstance(wanted, list) or not all(isinstance(n, str) for n in wanted)):
                raise APIError("'filter_names' must be a list of names.", code="malformed_request")
            names: list[str] | None = wanted
            if not role.raw_sql:
                names = sorted(n for n in _served_names(state, schema, dialect.default_schema_name)
                               if visible(schema, n) and (wanted is None or n in wanted))
                if not names:  # an empty filter would mean "every table" to the dialect
                    return {"result": encode_reflected([])}
            try:
                kind = ObjectKind(_int(args, "kind", ObjectKind.TABLE.value))
                scope = ObjectScope(_int(args, "scope", ObjectScope.DEFAULT.value))
            except ValueError:
                raise APIError("'kind' and 'scope' must be SQLAlchemy's ObjectKind / ObjectScope values.",
                               code="malformed_request") from None
            try:
                found = list(run(conn, schema=schema, filter_names=names, kind=kind, scope=scope, **extra))
            except NotImplementedError:  # the dialect has no such thing (SQLite's table comments)
                return {"raise": "NotImplementedError", "message": method}
            return {"result": encode_reflected([(k, v) for k, v in found if visible(k[0], k[1])])}
        table_name = _optional_str(args, "table_name")
        if table_name is None:
            raise APIError("The request needs the field 'table_name'.", code="malformed_request")
        if not visible(schema, table_name):
            return {"raise": "NoSuchTableError", "message": table_name}
        positional = [args.get(name) for name in REFLECTION_METHODS[method] if name not in ("table_name", "schema")]
        if not all(isinstance(v, str) for v in positional):
            raise APIError(f"{method} needs its arguments as names.", code="malformed_request")
        try:
            result = run(conn, table_name, *positional, schema=schema, **extra)
        except sa.exc.NoSuchTableError:  # served, granted, but not (yet) in the database
            return {"raise": "NoSuchTableError", "message": table_name}
        except NotImplementedError:
            return {"raise": "NotImplementedError", "message": method}
        return {"result": encode_reflected(result)}


def _served_names(state: ServerState, schema: str | None, default_schema: str | None) -> Iterable[str]:
    for table in state.metadata.tables.values():
        table_schema = table.schema if table.schema != default_schema else None
        wanted = schema if schema != default_schema else None
        if table_schema == wanted:
            yield table.name


def _optional_str(args: Mapping[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is not None and not isinstance(value, str):
        raise APIError(f"'{name}' must be a string.", code="malformed_request")
    return value


def _int(args: Mapping[str, Any], name: str, default: int) -> int:
    value = args.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise APIError(f"'{name}' must be a non-negative integer.", code="malformed_request")
    return value
