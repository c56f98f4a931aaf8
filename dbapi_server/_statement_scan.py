"""What a rebuilt statement reads and writes, down to the column, for the per-role policy.

The decoder's :class:`StatementInfo` names tables and functions; a per-column policy needs more:
which columns are *read* anywhere (select list, WHERE, ORDER BY, join ON, subqueries, CTEs,
EXISTS, RETURNING - a WHERE clause leaks data as surely as a select list does), through aliases
too, and which columns an INSERT or UPDATE *writes* (those of its VALUES / SET, told apart from
the columns it reads). One walk of the statement with SQLAlchemy's own traversal; the result
depends only on the statement, so it is cached on it (the decode cache hands back the same
statement object for the same document).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import dml, elements, selectable, visitors

__all__ = ["Access", "base_table", "scan"]


@dataclass(frozen=True)
class Access:
    """Everything a statement touches, by table and column *name*."""

    kind: str  # "select", "insert", "update", "delete" or "other" (savepoints, text)
    target: sa.Table | None  # the table an INSERT / UPDATE / DELETE writes
    tables: frozenset[sa.Table]  # every table read anywhere, aliases resolved
    columns: frozenset[tuple[sa.Table, str]]  # every (table, column name) read anywhere
    loose_names: frozenset[str]  # column names not qualified by any table (``column("x")``)
    value_columns: frozenset[str]  # target columns the statement's own VALUES / SET writes
    returned: frozenset[str]  # target columns an INSERT's top-level RETURNING hands back
    bind_keys: frozenset[str]  # explicit bind parameter names
    upsert_columns: frozenset[str] | None = None  # what ON CONFLICT DO UPDATE sets in an existing row


def base_table(from_: Any) -> sa.Table | None:
    """The table behind *from_* (itself, or what an ``Alias`` of it renames), else None."""
    while isinstance(from_, selectable.Alias):
        from_ = from_.element
    return from_ if isinstance(from_, sa.Table) else None


class _Collector:
    def __init__(self) -> None:
        self.tables: set[sa.Table] = set()
        self.columns: set[tuple[sa.Table, str]] = set()
        self.loose: set[str] = set()
        self.binds: set[str] = set()

    def walk(self, *roots: Any) -> None:
        for root in roots:
            if root is None or isinstance(root, str):
                continue
            for element in visitors.iterate(root):
                self._see(element)

    def _see(self, element: Any) -> None:
        if isinstance(element, sa.Table):
            self.tables.add(element)
        elif isinstance(element, selectable.Alias):
            table = base_table(element)
            if table is not None:
                self.tables.add(table)
        elif isinstance(element, elements.ColumnClause):
            if element.is_literal:
                return  # raw SQL: judged by the raw-SQL rule, never as a column
            table = base_table(element.table)
            if table is not None:
                self.tables.add(table)
                self.columns.add((table, element.name))
            elif element.table is None:
                self.loose.add(element.name)
        elif isinstance(element, elements.BindParameter) and not isinstance(element.key, elements._anonymous_label):
            self.binds.add(str(element.key))


_cache: weakref.WeakKeyDictionary[Any, Access] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def scan(statement: Any) -> Access:
    """What *statement* reads and writes (cached per statement object)."""
    with _lock:
        hit = _cache.get(statement)
    if hit is not None:
        return hit
    access = _scan(statement)
    with _lock:
        _cache[statement] = access
    return access


def _scan(statement: Any) -> Access:
    collector = _Collector()
    target: sa.Table | None = None
    value_columns: set[str] = set()
    returned: set[str] = set()
    upsert_columns: frozenset[str] | None = None
    if isinstance(statement, dml.UpdateBase):
        # isinstance: the dialects' upserts (sqlite / postgresql ``insert()``) are Insert subclasses
        kind = next((name for cls, name in _DML_KINDS if isinstance(statement, cls)), "other")
        target = base_table(statement.table)
        skip = {"table", "_values", "_ordered_values", "_multi_values"}  # keys: writes; values: walked below
        for key, value in _set_pairs(statement):
            value_columns.add(_column_name(target, key))
            collector.walk(value)
        if kind == "insert":
            for name in getattr(statement, "_select_names", None) or ():
                value_columns.add(_column_name(target, name))
            # _multi_values holds batches (one per .values([...]) call), each a list of rows
            for batch in getattr(statement, "_multi_values", ()) or ():
                for row in batch:
                    for key, value in _row_pairs(target, row):
                        value_columns.add(_column_name(target, key))
                        collector.walk(value)
            returned = _split_returning(statement, target, collector)
            skip |= set(_RETURNING_ATTRS)
            upsert_columns = _upsert_columns(statement, target)
        for name, _ in type(statement)._traverse_internals:
            if name not in skip:
                collector.walk(*_clauses(getattr(statement, name, None)))
    elif isinstance(statement, (selectable.Select, selectable.CompoundSelect, selectable.TextualSelect)):
        kind = "select"
        collector.walk(statement)
    else:
        kind = "other"
        collector.walk(statement)
    return Access(kind=kind, target=target, tables=frozenset(collector.tables),
                  columns=frozenset(collector.columns), loose_names=frozenset(collector.loose),
                  value_columns=frozenset(value_columns), returned=frozenset(returned),
                  bind_keys=frozenset(collector.binds), upsert_columns=upsert_columns)


_DML_KINDS = ((dml.Insert, "insert"), (dml.Update, "update"), (dml.Delete, "delete"))


def _upsert_columns(statement: Any, target: sa.Table | None) -> frozenset[str] | None:
    """The columns an ``ON CONFLICT DO UPDATE`` sets in the row it collides with, else None.

    Its SET and WHERE are also walked as reads (the clause is one of the statement's traversal
    attributes), so the columns it names need a read grant as well.
    """
    to_set = getattr(getattr(statement, "_post_values_clause", None), "update_values_to_set", None)
    if to_set is None:
        return None
    pairs = to_set.items() if isinstance(to_set, dict) else to_set
    return frozenset(_column_name(target, key) for key, _ in pairs)


_RETURNING_ATTRS = ("_returning", "_return_defaults_columns", "_supplemental_returning")


def _clauses(value: Any) -> list[Any]:
    """The clause elements inside one traversal attribute (an element, a sequence, a mapping)."""
    if isinstance(value, elements.ClauseElement):
        return [value]
    if isinstance(value, (list, tuple)):
        return [c for item in value for c in _clauses(item)]
    if isinstance(value, dict):
        return [c for k, v in value.items() for c in (*_clauses(k), *_clauses(v))]
    return []


def _set_pairs(statement: Any) -> list[tuple[Any, Any]]:
    """The (column, value) pairs of an INSERT's VALUES / an UPDATE's SET (2.0 and 2.1 layouts)."""
    pairs: list[tuple[Any, Any]] = list((getattr(statement, "_values", None) or {}).items())
    pairs += list(getattr(statement, "_ordered_values", None) or ())  # SQLAlchemy 2.0
    return pairs


def _row_pairs(target: sa.Table | None, row: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(row, dict):
        return row.items()
    columns = list(target.c) if target is not None else []
    return zip(columns, row, strict=False)


def _column_name(target: sa.Table | None, key: Any) -> str:
    """A VALUES / SET key (column object or key string) as the target's column name."""
    if isinstance(key, elements.ColumnClause):
        return str(key.name)
    name = str(key)
    if target is not None and name in target.c:
        return str(target.c[name].name)
    return name


def _split_returning(statement: Any, target: sa.Table | None, collector: _Collector) -> set[str]:
    """Take an INSERT's own target columns out of RETURNING: they hand back the row just written.

    Anything else in RETURNING (another table's column, a scalar subquery) stays a read.
    """
    returned: set[str] = set()
    for attr in _RETURNING_ATTRS:
        for item in getattr(statement, attr, None) or ():
            if isinstance(item, sa.Column) and item.table is target:
                returned.add(item.name)
            elif item is target and target is not None:
                returned.update(c.name for c in target.c)
            else:
                collector.walk(item)
    return returned
