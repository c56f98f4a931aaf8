"""Row filters bound to token claims, applied by rewriting the statement before it runs.

A role's row filter on a table (``dag_id = claim dag_id``) must hold for *every* row of that table
the statement can see, wherever the table appears: FROM, joins of any kind, subqueries, CTEs,
EXISTS, relationship loads, aliases. Rather than finding the right WHERE or ON clause for each
appearance (an outer join's nullable side needs its ON clause, a FULL OUTER JOIN has no correct
place at all), each *read* appearance of the table is replaced by a filtered derived table of the
same name::

    FROM task_instance            ->  FROM (SELECT task_instance.id, ... FROM task_instance
                                             WHERE task_instance.dag_id = :_dbs_rf_0) AS task_instance
    JOIN task_instance AS ti_1    ->  JOIN (SELECT ... WHERE ...) AS ti_1

so the statement sees exactly the filtered table, with every join type, correlation and column
name unchanged (the databases inline such derived tables; indexes still apply). The table an
UPDATE or DELETE writes cannot be a derived table: the filter joins its WHERE clause, and any
nested SELECT that names the target directly gets the same criterion in its own WHERE (correct
whether that SELECT correlates to the target row or reads the table on its own).

Filter values are bound parameters named ``_dbs_rf_<n>``, never SQL text; the rewritten statement
(a template) is cached per statement, role and claim shape, and the values travel as parameters.
The client's own statement may not use that prefix (refused before this runs).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import dml, elements, selectable, visitors

from ._statement_scan import base_table
from .refusals import PolicyViolation

__all__ = ["BIND_PREFIX", "FilterTemplate", "ROW_FILTER_BIND", "filtered_statement"]

BIND_PREFIX = "_dbs_"
ROW_FILTER_BIND = "_dbs_rf_{}"


@dataclass(frozen=True)
class FilterTemplate:
    """A rewritten statement; its filter values go to the ``_dbs_rf_<n>`` parameters."""

    statement: Any


# (table, ((column name, bind name, expanding), ...)) - what one table's filter compares
TableFilter = tuple[sa.Table, tuple[tuple[str, str, bool], ...]]

_cache: weakref.WeakKeyDictionary[Any, dict[Any, FilterTemplate]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def filtered_statement(statement: Any, filters: Sequence[TableFilter], cache_key: Any,
                       dialect: str | None = None,
                       readable: Mapping[sa.Table, frozenset[str] | None] | None = None) -> FilterTemplate:
    """*statement* with each table of *filters* seen through its filter (cached by *cache_key*).

    With the *dialect* name, each derived table is also an optimization fence (``OFFSET 0``): the
    database then cannot evaluate the statement's own conditions on rows the filter excludes - a
    failing ``CAST`` on a hidden row would otherwise quote that row's value in its error message.
    *readable* names, per table, the columns the role may read (``None``: all): the derived table
    selects only those, so it names no column the database's own grants (``db_roles``) withhold.
    """
    with _lock:
        hit = _cache.get(statement, {}).get((cache_key, dialect))
    if hit is not None:
        return hit
    template = FilterTemplate(_Rewriter(statement, dict(filters), _FENCES.get(dialect or ""), readable).rewrite())
    with _lock:
        _cache.setdefault(statement, {})[(cache_key, dialect)] = template
    return template


def _criterion(table: sa.Table, comparisons: tuple[tuple[str, str, bool], ...]) -> Any:
    parts: list[Any] = []
    for name, bind_name, expanding in comparisons:
        column = next(c for c in table.c if c.name == name)
        if expanding:
            parts.append(column.in_(sa.bindparam(bind_name, type_=column.type, expanding=True, required=True)))
        else:
            parts.append(column == sa.bindparam(bind_name, type_=column.type, required=True))
    return sa.and_(*parts)


def _offset_fence(select: Any) -> Any:
    return select.offset(sa.literal_column("0"))  # PostgreSQL: LIMIT ALL OFFSET 0; MySQL: LIMIT 0, <max>


def _sqlite_fence(select: Any) -> Any:
    return select.limit(sa.literal_column("-1")).offset(sa.literal_column("0"))  # no bound LIMIT


# per dialect: a derived table the planner neither flattens nor pushes outer conditions into,
# written with literals only (an anonymous bound LIMIT would renumber the client's parameters)
_FENCES: dict[str, Callable[[Any], Any]] = {
    "postgresql": _offset_fence, "mysql": _offset_fence, "mariadb": _offset_fence, "sqlite": _sqlite_fence,
}


class _Rewriter:
    def __init__(self, statement: Any, filters: Mapping[sa.Table, tuple[tuple[str, str, bool], ...]],
                 fence: Callable[[Any], Any] | None = None,
                 readable: Mapping[sa.Table, frozenset[str] | None] | None = None) -> None:
        self.statement = statement
        self.filters = filters
        self.fence = fence
        self.readable = readable or {}
        self.target = base_table(statement.table) if isinstance(statement, dml.UpdateBase) else None
        self.replaced: dict[int, Any] = {}

    def rewrite(self) -> Any:
        replace: Any = self._replace
        stmt: Any = visitors.replacement_traverse(self.statement, {}, replace)
        if self.target is not None and self.target in self.filters and isinstance(stmt, (dml.Update, dml.Delete)):
            stmt = _where_first(stmt, _criterion(self.target, self.filters[self.target]))
        return stmt

    def _replace(self, element: Any) -> Any:
        hit = self.replaced.get(id(element))
        if hit is not None:
            return hit
        new = self._replacement(element)
        if new is not None:
            self.replaced[id(element)] = new
        return new

    def _replacement(self, element: Any) -> Any:
        if isinstance(element, sa.Table):
            if element is self.target or element not in self.filters:
                return None
            return self._derived(element, element.name)
        if isinstance(element, selectable.Alias):
            table = base_table(element)
            if table is None or table not in self.filters:
                return None
            return self._derived(table, element.name)
        if isinstance(element, elements.ColumnClause) and not element.is_literal and element.table is not None:
            source = self._replace(element.table)
            if source is None:
                return None
            column = source.c.get(element.key)
            if column is None:
                column = next((c for c in source.c if c.name == element.name), None)
            if column is None:
                raise PolicyViolation(f"The column {element.name!r} is not part of the row-filtered table "
                                      f"{base_table(element.table).name!r}.", column=element.name)  # type: ignore[union-attr]
            return column
        if (self.target in self.filters and isinstance(element, selectable.Select)
                and element is not self.statement):
            return self._nested_select_of_target(element)
        return None

    def _derived(self, table: sa.Table, name: str) -> Any:
        names = self.readable.get(table)
        columns = [c for c in table.c if names is None or c.name in names]
        if not columns:  # read for the filter alone (the policy refuses any other use)
            filtered_by = {name for name, _, _ in self.filters[table]}
            columns = [c for c in table.c if c.name in filtered_by]
        select = sa.select(*columns).where(_criterion(table, self.filters[table]))
        if self.fence is not None:
            select = self.fence(select)
        return select.subquery(name)

    def _nested_select_of_target(self, select: Any) -> Any:
        """A SELECT inside an UPDATE / DELETE: other tables as usual, the target by WHERE."""
        assert self.target is not None
        froms = select.get_final_froms()
        if not any(_contains(f, self.target) for f in froms):
            return None
        if not any(f is self.target for f in froms):
            # the target inside a join of the nested SELECT: a WHERE criterion could be wrong there
            raise PolicyViolation(
                f"The row filter on {self.target.name!r} cannot be applied to a join inside an "
                "UPDATE or DELETE of that table; rewrite the condition without the join.",
                table=self.target.name)
        replace: Any = self._replace_nested(select)
        rewritten: Any = visitors.replacement_traverse(select, {}, replace)
        return _where_first(rewritten, _criterion(self.target, self.filters[self.target]))

    def _replace_nested(self, top: Any) -> Any:
        def replace(element: Any) -> Any:
            if element is top:
                return None
            return self._replace(element)
        return replace


def _where_first(statement: Any, criterion: Any) -> Any:
    """*statement* (a fresh clone) with *criterion* as the first WHERE condition.

    Databases evaluate conditions of equal cost in the order written: the filter then excludes a
    hidden row before the statement's own conditions (which might fail on it) are evaluated.
    """
    statement._where_criteria = (criterion, *statement._where_criteria)
    return statement


def _contains(from_: Any, table: sa.Table) -> bool:
    if from_ is table:
        return True
    return isinstance(from_, selectable.Join) and any(e is table for e in visitors.iterate(from_))
