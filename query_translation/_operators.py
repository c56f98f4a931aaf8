"""The allowlisted registry of SQL operators, by name.

Operators cross the wire by their name in ``sqlalchemy.sql.operators``; the server maps a name
back to the operator object through this table only. Custom operators (``column.op("@>")``)
travel as their operator string and are subject to the server's policy.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.sql import operators

from .exceptions import MalformedStatementError


def _build() -> tuple[dict[str, Any], dict[int, str]]:
    by_name: dict[str, Any] = {}
    by_id: dict[int, str] = {}
    for name in sorted(vars(operators)):
        obj = getattr(operators, name)
        if name.startswith("_") or isinstance(obj, type) or not callable(obj):
            continue
        module = getattr(obj, "__module__", None)
        if module not in ("sqlalchemy.sql.operators", "_operator", "operator"):
            continue
        by_name[name] = obj
        # aliases (``isnot`` / ``is_not``): the longer, modern spelling wins
        current = by_id.get(id(obj))
        if current is None or len(name) > len(current):
            by_id[id(obj)] = name
    return by_name, by_id


OPERATORS_BY_NAME, _NAMES_BY_ID = _build()


def operator_name(op: Any) -> str | None:
    """Name of a registered operator, ``None`` for a custom one."""
    return _NAMES_BY_ID.get(id(op))


def operator_by_name(name: str) -> Any:
    try:
        return OPERATORS_BY_NAME[name]
    except KeyError:
        raise MalformedStatementError(
            {"op": [f"unknown operator {name!r}"]}, f"Unknown operator {name!r}."
        ) from None
