"""What a rebuilt statement reads, writes and names, down to the column: deny by default.

The decoder's :class:`StatementInfo` names tables and functions; a per-column policy needs more:
which columns are *read* anywhere (select list, WHERE, ORDER BY, join ON, subqueries, CTEs,
EXISTS, RETURNING - a WHERE clause leaks data as surely as a select list does), through aliases
too, which columns an INSERT or UPDATE *writes* (those of its VALUES / SET, told apart from the
columns it reads), which statements nested in it write (a data-modifying CTE), and which names
reach the database *unqualified*, to be resolved by the database's own rules (a bare
``column("x")``, a label rendered by name in ORDER BY / GROUP BY, a textual label reference).

**Exhaustive by construction.** The walk dispatches on the exact class of every element it meets
(:data:`ELEMENT_RULES`); each class the decoder can build has a rule saying where it may stand
(FROM, select list, expression, ...) and what it reads, and an element of any other class, or one
standing where its rule does not allow it, is refused. Statements (SELECT, compound SELECT,
INSERT / UPDATE / DELETE, CTE) are walked attribute by attribute: every attribute SQLAlchemy
traverses is either walked in a named position or declared inert, and one that is neither but
holds something refuses the statement. ``dbapi_server._node_rules`` ties each node type of the
wire grammar to these rules; a test walks the grammar and fails on a node type without one.

The result depends only on the statement, so it is cached on it (the decode cache hands back the
same statement object for the same document).
"""

from __future__ import annotations

import functools
import re
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.sql import annotation, dml, elements, functions, selectable

from .refusals import PolicyViolation

__all__ = ["Access", "ELEMENT_RULES", "base_table", "scan"]


@dataclass(frozen=True)
class Access:
    """Everything a statement touches, by table and column *name*."""

    kind: str  # "select", "insert", "update", "delete" or "other" (savepoints)
    target: sa.Table | None  # the table an INSERT / UPDATE / DELETE writes
    tables: frozenset[sa.Table]  # every table read anywhere, aliases resolved
    columns: frozenset[tuple[sa.Table, str]]  # every (table, column name) read anywhere
    bare_names: frozenset[str]  # names the database resolves unqualified (see module doc)
    value_columns: frozenset[str]  # target columns the statement's own VALUES / SET writes
    returned: frozenset[str]  # target columns an INSERT's top-level RETURNING hands back
    bind_keys: frozenset[str]  # explicit bind parameter names
    upsert_columns: frozenset[str] | None = None  # what ON CONFLICT DO UPDATE sets in an existing row
    scope_names: frozenset[str] = frozenset()  # names of the FROM items: tables, aliases, subqueries, CTEs
    output_names: frozenset[str] = frozenset()  # labels and derived tables' columns: harmless for a bare name
    nested_writes: tuple[Access, ...] = ()  # INSERT / UPDATE / DELETE inside CTEs, each its own access


def base_table(from_: Any) -> sa.Table | None:
    """The table behind *from_* (itself, or what an ``Alias`` of it renames), else None."""
    while isinstance(from_, selectable.Alias):
        from_ = from_.element
    return from_ if isinstance(from_, sa.Table) else None


def refuse(message: str, **extra: Any) -> PolicyViolation:
    return PolicyViolation(message + " (the DB-API's policy has no rule allowing it)", **extra)


# -- positions ------------------------------------------------------------------------------------
# Where an element stands decides what it means: a table in FROM is a source of rows, a table in
# the select list is all of its columns, a table inside an expression is a whole-row value.
TOP = "top"  # the statement itself
FROM = "from"  # FROM / JOIN items, a column's table (an implicit FROM), DELETE ... USING
COLUMNS = "columns"  # an item of a select list
EXPR = "expr"  # anywhere in an expression
CORRELATE = "correlate"  # Select.correlate(): names FROM items to leave out, reads nothing
CTE_BODY = "cte_body"  # the statement of a CTE: the one place a nested INSERT / UPDATE / DELETE may stand
EXISTS = "exists"  # the SELECT of EXISTS (...), whose select list may be ``*``
EXISTS_COLUMNS = "exists_columns"
COUNT_ARG = "count_arg"  # the argument of count(), which may be ``*``

_STAR_PLACES = (EXISTS_COLUMNS, COUNT_ARG)
DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also takes "²" and "١"
ASCII_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class _Walker:
    """One statement's walk: an explicit stack (no recursion limit), each (element, position,
    enclosing SELECT) seen once (a document's references make a DAG of shared elements)."""

    def __init__(self, dialect: str | None = None) -> None:
        self.dialect = dialect  # the server's dialect name: which prefixes render (None: all of them)
        self.tables: set[sa.Table] = set()
        self.columns: set[tuple[sa.Table, str]] = set()
        self.bare: set[str] = set()
        self.binds: set[str] = set()
        self.scopes: set[str] = set()
        self.outputs: set[str] = set()
        self.writes: list[Access] = []
        self._seen: set[tuple[int, str, int]] = set()
        self._stack: list[tuple[Any, str, Any]] = []

    def push(self, element: Any, where: str, select: Any) -> None:
        if element is None:
            return
        key = (id(element), where, id(select))
        if key not in self._seen:
            self._seen.add(key)
            self._stack.append((element, where, select))

    def push_all(self, items: Iterable[Any], where: str, select: Any) -> None:
        for item in items or ():
            self.push(item, where, select)

    def run(self) -> None:
        while self._stack:
            element, where, select = self._stack.pop()
            rule = rule_for(element)
            if rule is None:
                raise refuse(f"The statement holds a {type(element).__name__} element",
                             element=type(element).__name__)
            rule.walk(self, element, where, select)

    def read_all_columns(self, from_: Any) -> None:
        table = base_table(from_)
        if table is not None:
            self.tables.add(table)
            self.columns.update((table, c.name) for c in table.c)

    def named_output(self, name: Any) -> None:
        if isinstance(name, str):
            self.outputs.add(name)

    def named(self, name: Any) -> None:
        """A FROM item's name: a bare name equal to it is a whole-row reference on PostgreSQL."""
        if isinstance(name, str) and not isinstance(name, elements._anonymous_label):
            self.scopes.add(name)


# -- rules ----------------------------------------------------------------------------------------
Walk = Callable[[_Walker, Any, str, Any], None]


@dataclass(frozen=True)
class ElementRule:
    """What one SQLAlchemy element class may do: where it may stand, what it reads and names.

    ``attributes``: for the classes walked attribute by attribute, every attribute SQLAlchemy
    traverses, each walked or inert (a test compares them with ``_traverse_internals``).
    """

    walk: Walk
    reads: str
    names: str = "nothing"
    attributes: frozenset[str] | None = None


def _expression(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where not in (EXPR, COLUMNS, COUNT_ARG, EXISTS_COLUMNS):
        raise refuse(f"A {type(element).__name__} may not stand in a {where} position")
    inner = COUNT_ARG if where == COUNT_ARG and isinstance(element, (elements.Grouping, elements.ClauseList)) \
        else EXPR
    w.push_all(element.get_children(), inner, select)


def _function(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where not in (EXPR, COLUMNS, EXISTS_COLUMNS):
        raise refuse(f"A function may not stand in a {where} position")
    arg = COUNT_ARG if str(element.name).lower() == "count" else EXPR
    for child in element.get_children():
        w.push(child, arg if child is element.clause_expr else EXPR, select)


def _constant(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where not in (EXPR, COLUMNS, EXISTS_COLUMNS, COUNT_ARG):
        raise refuse(f"A {type(element).__name__} may not stand in a {where} position")


def _bind(w: _Walker, element: Any, where: str, select: Any) -> None:
    _constant(w, element, where, select)
    if not isinstance(element.key, elements._anonymous_label):
        w.binds.add(str(element.key))


def _literal_text(text: str, where: str) -> None:
    """Raw SQL the policy let through (bare integers, ``*``): ``*`` only as count(*) and EXISTS."""
    if DIGITS.fullmatch(text):
        return
    if text == "*" and where in _STAR_PLACES:
        return
    if text == "*":
        raise refuse("Raw SQL ``*`` is allowed only as count(*) and in EXISTS (SELECT * ...); elsewhere it "
                     "reads every column", raw_sql=True)
    raise refuse("Raw SQL text in the statement", raw_sql=True)


def _text(w: _Walker, element: Any, where: str, select: Any) -> None:
    _literal_text(element.text, where)
    w.push_all(element.get_children(), EXPR, select)  # its bind parameters


def _column(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where not in (EXPR, COLUMNS, COUNT_ARG, EXISTS_COLUMNS):
        raise refuse(f"A column may not stand in a {where} position")
    if element.is_literal:
        _literal_text(element.name, where)
        return
    name = element.name
    if element.table is None:
        w.bare.add(name)
        return
    from_ = element.table
    known = {c.name for c in from_.c} if hasattr(from_, "c") else set()
    if name not in known:
        # PostgreSQL reads ``t.f`` as ``f(t)`` when t has no column f (``variable.text`` is the
        # whole row as text); other names differing in case only resolve to a column elsewhere
        raise refuse("A qualified column name its table or subquery does not have (exact name)")
    table = base_table(from_)
    if table is not None:
        w.tables.add(table)
        w.columns.add((table, name))
    w.push(from_, FROM, select)  # the column's FROM item (implicitly added to FROM when missing)


def _label(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where not in (EXPR, COLUMNS, EXISTS_COLUMNS):
        raise refuse(f"A label may not stand in a {where} position")
    w.named_output(element.name)
    w.push(element.element, EXPR, select)


def _label_reference(w: _Walker, element: Any, where: str, select: Any) -> None:
    """ORDER BY / GROUP BY / DISTINCT ON an expression: a label of the select list renders by
    its bare name, which PostgreSQL and MariaDB resolve *first* against the FROM columns in
    GROUP BY - so the name counts as a bare name."""
    if where != EXPR:
        raise refuse(f"A label reference may not stand in a {where} position")
    label = element.element._order_by_label_element
    if label is not None:
        w.bare.add(label.name)
    w.push(element.element, EXPR, select)


def _textual_label_reference(w: _Walker, element: Any, where: str, select: Any) -> None:
    """``order_by("name")``: SQLAlchemy resolves it against the select list, then any FROM column
    (rendered qualified: a hidden column). Allowed only when it names the enclosing SELECT's own
    select list, outside that list."""
    name = element.element
    if where != EXPR or not isinstance(select, (selectable.Select, selectable.CompoundSelect)) \
            or name not in _own_select_list(select):
        raise refuse("A name used by name (ORDER BY / GROUP BY / DISTINCT ON / WHERE) that does not name an "
                     "item of its SELECT's own select list, outside that list")
    w.bare.add(name)


def _own_select_list(select: Any) -> set[str]:
    """The names SQLAlchemy resolves against the select list (labels, keys): its own items."""
    if isinstance(select, selectable.CompoundSelect):
        return {str(c.key) for c in select.selected_columns}
    names: set[str] = set()
    for c in select._all_selected_columns:
        if c._allow_label_resolve:
            names.update(n for n in (c._tq_label, c.key) if isinstance(n, str))
    return names


def _table(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where == COLUMNS or where == EXISTS_COLUMNS:
        w.read_all_columns(element)
    elif where == CORRELATE:
        return
    elif where != FROM:
        # in an expression a table's name is a whole-row value (PostgreSQL): every column
        raise refuse(f"The table {element.name!r} may not stand in a {where} position", table=element.name)
    w.tables.add(element)
    w.named(element.name)


def _alias(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where == CORRELATE:
        return
    if where not in (FROM, COLUMNS, EXISTS_COLUMNS):
        raise refuse(f"A {type(element).__name__} may not stand in a {where} position")
    w.named(element.name)
    inner = element.element
    if isinstance(inner, dml.UpdateBase):
        raise refuse("An INSERT / UPDATE / DELETE nested outside a CTE")
    if base_table(element) is not None:
        w.push(inner, where, select)  # an alias of a table: its rows (FROM) or all its columns
    else:
        w.outputs.update(c.name for c in element.c)
        w.push(inner, FROM, None)


def _cte(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where == CORRELATE:
        return
    if where not in (FROM, COLUMNS, EXISTS_COLUMNS):
        raise refuse(f"A CTE may not stand in a {where} position")
    _walk_hints(w, element)
    w.named(element.name)
    w.outputs.update(c.name for c in element.c)
    inner = element.element
    w.push(inner, CTE_BODY if isinstance(inner, dml.UpdateBase) else FROM, None)
    w.push(element._cte_alias, FROM, None)
    w.push(element._restates, FROM, None)


def _join(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where not in (FROM, CORRELATE):
        raise refuse(f"A JOIN may not stand in a {where} position")
    w.push(element.left, where, select)
    w.push(element.right, where, select)
    if where == FROM:
        w.push(element.onclause, EXPR, select)


def _from_grouping(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where not in (FROM, CORRELATE):
        raise refuse(f"A FROM grouping may not stand in a {where} position")
    w.push(element.element, where, select)


def _select_wrapper(w: _Walker, element: Any, where: str, select: Any) -> None:
    """A SELECT in an expression or a grouping (scalar subquery, IN (SELECT ...), EXISTS)."""
    inner = element.element
    if isinstance(inner, dml.UpdateBase):
        raise refuse("An INSERT / UPDATE / DELETE nested outside a CTE")
    w.push(inner, EXISTS if where == EXISTS else FROM, None)


def _exists(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where not in (EXPR, COLUMNS, EXISTS_COLUMNS):
        raise refuse(f"EXISTS may not stand in a {where} position")
    w.push(element.element, EXISTS, None)


def _for_update(w: _Walker, element: Any, where: str, select: Any) -> None:
    for item in element.of or ():
        w.push(item, FROM if isinstance(item, selectable.FromClause) else EXPR, select)


def _frame(w: _Walker, element: Any, where: str, select: Any) -> None:
    _expression(w, element, where, select)


def _raw_statement(w: _Walker, element: Any, where: str, select: Any) -> None:
    raise refuse("A raw SQL statement (text().columns())", raw_sql=True)


def _statement_only(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where != TOP:
        raise refuse(f"A {type(element).__name__} nested in a statement")


# Select / CompoundSelect / DML: every traversed attribute, walked in a position or inert
_INERT = frozenset({"_annotations", "_with_options", "_compile_state_funcs", "_propagate_attrs", "_params",
                    "dialect_options", "_label_style", "_distinct", "_correlate_mode", "_fetch_clause_options",
                    "_independent_ctes_opts", "keyword", "_inline", "_maintain_values_ordering",
                    "_sort_by_parameter_order", "include_insert_from_select_defaults", "_return_defaults",
                    "_select_names", "name", "recursive", "nesting"})
_MUST_BE_EMPTY = frozenset({"_memoized_select_entities", "_post_select_clause", "_post_criteria_clause",
                            "_post_body_clause"})
# hints and prefixes: their texts are judged by the decoder (raw SQL, or a validated MySQL index
# hint); a prefix's or suffix's clause that renders on this dialect is walked as an expression, a
# hinted FROM item names a FROM item and reads nothing
_HINT_ATTRIBUTES = frozenset({"_prefixes", "_suffixes", "_hints", "_statement_hints"})

_SELECT_POSITIONS = {
    "_raw_columns": COLUMNS, "_from_obj": FROM, "_where_criteria": EXPR, "_having_criteria": EXPR,
    "_order_by_clauses": EXPR, "_group_by_clauses": EXPR, "_distinct_on": EXPR, "_correlate": CORRELATE,
    "_correlate_except": CORRELATE, "_limit_clause": EXPR, "_offset_clause": EXPR, "_fetch_clause": EXPR,
    "_for_update_arg": EXPR, "_independent_ctes": FROM, "_pre_columns_clause": EXPR,
    "_setup_joins": FROM,
}
_COMPOUND_POSITIONS = {
    "selects": FROM, "_limit_clause": EXPR, "_offset_clause": EXPR, "_fetch_clause": EXPR,
    "_order_by_clauses": EXPR, "_group_by_clauses": EXPR, "_for_update_arg": EXPR, "_independent_ctes": FROM,
}


def _walk_hints(w: _Walker, element: Any) -> None:
    for attr in ("_prefixes", "_suffixes"):
        for clause, dialect in getattr(element, attr, None) or ():
            if w.dialect is None or dialect in (None, "*", w.dialect):
                w.push(clause, EXPR, element)
    for from_, _dialect in getattr(element, "_hints", None) or {}:
        w.push(from_, CORRELATE, element)


def _check_attributes(element: Any, walked: Iterable[str]) -> None:
    known = _INERT | _HINT_ATTRIBUTES | set(walked)
    for name, _ in type(element)._traverse_internals:
        if name in known:
            continue
        if name in _MUST_BE_EMPTY:
            if getattr(element, name, None):
                raise refuse(f"The statement's {name.strip('_')} clause")
            continue
        raise refuse(f"The statement's {name.strip('_')} attribute")


def _select(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where in (CORRELATE,):
        raise refuse("A SELECT may not stand in a correlate position")
    _check_attributes(element, _SELECT_POSITIONS)
    _walk_hints(w, element)
    for name, position in _SELECT_POSITIONS.items():
        value = getattr(element, name, None)
        if name == "_raw_columns" and where == EXISTS:
            position = EXISTS_COLUMNS
        if name == "_setup_joins":
            for target, onclause, from_, _flags in value or ():
                w.push(target, FROM, element)
                w.push(onclause, EXPR, element)
                w.push(from_, FROM, element)
        elif isinstance(value, (list, tuple)):
            w.push_all(value, position, element)
        else:
            w.push(value, position, element)


def _compound(w: _Walker, element: Any, where: str, select: Any) -> None:
    if where in (CORRELATE,):
        raise refuse("A compound SELECT may not stand in a correlate position")
    _check_attributes(element, _COMPOUND_POSITIONS)
    _walk_hints(w, element)
    for name, position in _COMPOUND_POSITIONS.items():
        value = getattr(element, name, None)
        if isinstance(value, (list, tuple)):
            w.push_all(value, EXISTS if name == "selects" and where == EXISTS else position, element)
        else:
            w.push(value, position, element)


def _nested_dml(w: _Walker, element: Any, where: str, select: Any) -> None:
    """INSERT / UPDATE / DELETE inside a CTE: a write of its own, judged as a statement."""
    if where != CTE_BODY:
        raise refuse("An INSERT / UPDATE / DELETE nested outside a CTE")
    access = _scan(element, w.dialect)
    w.writes.append(access)
    w.tables |= access.tables
    w.columns |= access.columns
    w.bare |= access.bare_names
    w.binds |= access.bind_keys
    w.scopes |= access.scope_names
    w.outputs |= access.output_names
    w.writes.extend(access.nested_writes)


def _on_conflict(w: _Walker, element: Any, where: str, select: Any) -> None:
    """ON CONFLICT (...) DO NOTHING / DO UPDATE: its SET values and WHERE are reads; index
    elements given as strings are column names the database resolves."""
    for item in element.inferred_target_elements or ():
        if isinstance(item, str):
            w.bare.add(item)
        else:
            w.push(item, EXPR, select)
    w.push(element.inferred_target_whereclause, EXPR, select)
    to_set = getattr(element, "update_values_to_set", None) or ()
    for _key, value in (to_set.items() if isinstance(to_set, dict) else to_set):
        if isinstance(value, elements.ClauseElement):
            w.push(value, EXPR, select)
    w.push(getattr(element, "update_whereclause", None), EXPR, select)


_EXPRESSIONS = (
    elements.BinaryExpression, elements.IndexExpression, elements.UnaryExpression, elements.CollectionAggregate,
    elements.AsBoolean, elements.ClauseList, elements.BooleanClauseList, elements.ExpressionClauseList,
    elements.Grouping, elements.Cast, elements.TypeCoerce, elements.Case, elements.Over, elements.FunctionFilter,
    elements.WithinGroup, elements.Extract, elements.Tuple, functions.FunctionAsBinary,
)
_FRAMES = tuple(c for c in (getattr(elements, "FrameClause", None), getattr(elements, "_FrameClause", None)) if c)
_CONSTANTS = (elements.Null, elements.True_, elements.False_)
_INSERTS = (dml.Insert, postgresql.Insert, sqlite.Insert, mysql.Insert)
_UPSERTS = (postgresql.dml.OnConflictDoNothing, postgresql.dml.OnConflictDoUpdate,
            sqlite.dml.OnConflictDoNothing, sqlite.dml.OnConflictDoUpdate)


def _savepoint_classes() -> tuple[type, ...]:
    from sqlalchemy.sql import expression as sql_expr

    return (sql_expr.SavepointClause, sql_expr.RollbackToSavepointClause, sql_expr.ReleaseSavepointClause)


def _distinct_on_classes() -> tuple[type, ...]:
    try:
        from sqlalchemy.dialects.postgresql.ext import DistinctOnClause
    except ImportError:  # SQLAlchemy 2.0
        return ()
    return (DistinctOnClause,)


ELEMENT_RULES: dict[type, ElementRule] = {
    **{cls: ElementRule(_expression, "what its operands read") for cls in _EXPRESSIONS},
    **{cls: ElementRule(_frame, "nothing (window frame bounds)") for cls in _FRAMES},
    **{cls: ElementRule(_expression, "what its expressions read (PostgreSQL DISTINCT ON)")
       for cls in _distinct_on_classes()},
    **{cls: ElementRule(_constant, "nothing") for cls in _CONSTANTS},
    elements.BindParameter: ElementRule(_bind, "nothing (a value)", "its parameter name (reserved prefix refused)"),
    selectable._OffsetLimitParam: ElementRule(_bind, "nothing (a value)", "its parameter name"),
    functions.Function: ElementRule(_function, "what its arguments read",
                                    "the function's name (the role's function allowlist)"),
    selectable.TextualSelect: ElementRule(_raw_statement, "refused: raw SQL (roles allowed raw SQL are not "
                                          "walked)"),
    elements.TextClause: ElementRule(_text, "nothing: only bare integers, ``*`` in count(*) / EXISTS",
                                     "nothing"),
    elements.ColumnClause: ElementRule(
        _column, "its column; a literal: nothing (bare integers, ``*`` in count(*) / EXISTS)",
        "unqualified: the database resolves it against every FROM item and label (case and quoting rules)"),
    sa.Column: ElementRule(_column, "its column", "table-qualified: exactly that column"),
    elements.Label: ElementRule(_label, "what its expression reads", "defines an output name"),
    elements._label_reference: ElementRule(_label_reference, "what its expression reads",
                                           "a select-list label rendered by bare name"),
    elements._textual_label_reference: ElementRule(_textual_label_reference, "nothing of its own",
                                                   "a bare name: must be its own SELECT's select list"),
    sa.Table: ElementRule(_table, "FROM: its rows; select list: every column; expression: refused",
                          "its own name"),
    selectable.Alias: ElementRule(_alias, "what it renames", "its alias name"),
    selectable.Subquery: ElementRule(_alias, "what its SELECT reads", "its name and its columns' names"),
    selectable.Lateral: ElementRule(_alias, "what its SELECT reads", "its name and its columns' names"),
    selectable.CTE: ElementRule(_cte, "what its statement reads; a DML statement also writes",
                                "its name and its columns' names", frozenset(
                                    {"element", "name", "_cte_alias", "_restates", "recursive", "nesting",
                                     "_prefixes", "_suffixes"})),
    selectable.Join: ElementRule(_join, "what its sides and ON clause read"),
    selectable.FromGrouping: ElementRule(_from_grouping, "what its FROM item reads"),
    selectable.SelectStatementGrouping: ElementRule(_select_wrapper, "what its SELECT reads"),
    selectable.ScalarSelect: ElementRule(_select_wrapper, "what its SELECT reads"),
    selectable.Exists: ElementRule(_exists, "what its SELECT reads (its select list may be ``*``)"),
    selectable.ForUpdateArg: ElementRule(_for_update, "the tables and columns of OF"),
    selectable.Select: ElementRule(_select, "every clause's reads", "its select list's labels",
                                   frozenset(_SELECT_POSITIONS) | _INERT | _MUST_BE_EMPTY | _HINT_ATTRIBUTES),
    selectable.CompoundSelect: ElementRule(_compound, "every SELECT's reads", "its first SELECT's names",
                                           frozenset(_COMPOUND_POSITIONS) | _INERT | _MUST_BE_EMPTY |
                                           _HINT_ATTRIBUTES),
    **{cls: ElementRule(_nested_dml, "its WHERE, values, RETURNING (writes: its target, judged by the "
                                     "write rules)", "its target") for cls in (*_INSERTS, dml.Update, dml.Delete)},
    **{cls: ElementRule(_on_conflict, "its SET values and WHERE", "its conflict target's column names")
       for cls in _UPSERTS},
    **{cls: ElementRule(_statement_only, "nothing", "the savepoint's name (quoted)") for cls in _savepoint_classes()},
}


def rule_for(element: Any) -> ElementRule | None:
    """The rule of *element*'s exact class; functions by the registry SQLAlchemy's ``func`` uses."""
    cls: type = type(element)
    if issubclass(cls, annotation.Annotated):  # ORM-annotated copies (a statement built in this process)
        cls = next(c for c in cls.__mro__ if not issubclass(c, annotation.Annotated))
    rule = ELEMENT_RULES.get(cls)
    if rule is None and issubclass(cls, functions.FunctionElement) and _is_registered_function(cls):
        rule = ELEMENT_RULES[functions.Function]
    return rule


def _is_registered_function(cls: type) -> bool:
    # keyed by the registry's size: a GenericFunction subclass defined later registers itself
    return cls in _registered_functions(sum(len(package) for package in functions._registry.values()))


@functools.lru_cache(maxsize=4)
def _registered_functions(size: int) -> frozenset[type]:
    return frozenset(registered for package in functions._registry.values() for registered in package.values())


# -- the scan -------------------------------------------------------------------------------------
_cache: weakref.WeakKeyDictionary[Any, dict[str | None, Access]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def scan(statement: Any, dialect: str | None = None) -> Access:
    """What *statement* reads and writes on *dialect* (the server's dialect name; ``None``: every
    prefix renders), cached per statement object; refuses what no rule allows."""
    with _lock:
        hit = _cache.get(statement, {}).get(dialect)
    if hit is not None:
        return hit
    access = _scan(statement, dialect)
    with _lock:
        _cache.setdefault(statement, {})[dialect] = access
    return access


_DML_KINDS = ((dml.Insert, "insert"), (dml.Update, "update"), (dml.Delete, "delete"))
_RETURNING_ATTRS = ("_returning", "_return_defaults_columns", "_supplemental_returning")
_DML_POSITIONS = {"_where_criteria": EXPR, "_extra_froms": FROM, "select": FROM, "_post_values_clause": EXPR,
                  "_independent_ctes": FROM}
_DML_SPECIAL = frozenset({"table", "_values", "_multi_values", *_RETURNING_ATTRS})


def _scan(statement: Any, dialect: str | None = None) -> Access:
    w = _Walker(dialect)
    target: sa.Table | None = None
    value_columns: set[str] = set()
    returned: set[str] = set()
    upsert_columns: frozenset[str] | None = None
    if isinstance(statement, dml.UpdateBase):
        if type(statement) not in ELEMENT_RULES:
            raise refuse(f"The statement is a {type(statement).__name__}")
        kind = next((name for cls, name in _DML_KINDS if isinstance(statement, cls)), "other")
        _check_attributes(statement, _DML_SPECIAL | set(_DML_POSITIONS))
        _walk_hints(w, statement)
        target = base_table(statement.table)
        if target is None:
            raise refuse("The target of an INSERT / UPDATE / DELETE must be a table")
        w.named(target.name)
        if statement.table is not target:
            w.named(getattr(statement.table, "name", None))
        for key, value in _set_pairs(statement):
            value_columns.add(_column_name(target, key))
            _push_value(w, value, statement)
        if kind == "insert":
            for name in getattr(statement, "_select_names", None) or ():
                value_columns.add(_column_name(target, name))
            for batch in getattr(statement, "_multi_values", ()) or ():
                for row in batch:  # each VALUES (...) of the batch: a dict, or values by position
                    for key, value in _row_pairs(target, row):
                        value_columns.add(_column_name(target, key))
                        _push_value(w, value, statement)
            returned = _split_returning(statement, target, w)
            upsert_columns = _upsert_columns(statement, target)
        else:
            for attr in _RETURNING_ATTRS:
                w.push_all(getattr(statement, attr, None) or (), COLUMNS, statement)
        for name, position in _DML_POSITIONS.items():
            value = getattr(statement, name, None)
            if isinstance(value, (list, tuple)):
                w.push_all(value, position, statement)
            else:
                w.push(value, position, statement)
    elif isinstance(statement, (selectable.Select, selectable.CompoundSelect)):
        kind = "select"
        w.push(statement, FROM, None)
    else:
        kind = "other"
        if rule_for(statement) is None:
            raise refuse(f"The statement is a {type(statement).__name__}")
        w.push(statement, TOP, None)
    w.run()
    return Access(kind=kind, target=target, tables=frozenset(w.tables), columns=frozenset(w.columns),
                  bare_names=frozenset(w.bare), value_columns=frozenset(value_columns),
                  returned=frozenset(returned), bind_keys=frozenset(w.binds), upsert_columns=upsert_columns,
                  scope_names=frozenset(w.scopes), output_names=frozenset(w.outputs),
                  nested_writes=tuple(w.writes))


def _push_value(w: _Walker, value: Any, statement: Any) -> None:
    """A VALUES / SET value: an SQL expression is walked; a plain value (multi-row VALUES keeps
    them as given, SQLAlchemy binds them when compiling) reads nothing."""
    if isinstance(value, elements.ClauseElement):
        w.push(value, EXPR, statement)


def _upsert_columns(statement: Any, target: sa.Table | None) -> frozenset[str] | None:
    """The columns an ``ON CONFLICT DO UPDATE`` sets in the row it collides with, else None.

    Its SET and WHERE are also walked as reads, so the columns it names need a read grant as well.
    """
    to_set = getattr(getattr(statement, "_post_values_clause", None), "update_values_to_set", None)
    if to_set is None:
        return None
    pairs = to_set.items() if isinstance(to_set, dict) else to_set
    return frozenset(_column_name(target, key) for key, _ in pairs)


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


def _split_returning(statement: Any, target: sa.Table | None, w: _Walker) -> set[str]:
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
                w.push(item, COLUMNS, statement)
    return returned
