"""Core statement -> wire structure (``to_wire``).

The encoder walks the *Core* statement that SQLAlchemy compiles - for ORM statements, the
``compile_state.statement`` the ORM produced - and describes each node by kind, tables and columns
by name, operators by registered name, and bound parameters by the name the client's compiler gave
them (their values travel separately, as the execution's parameters). Nodes reached more than once
(a label used in ORDER BY, a subquery referenced by its columns, a reused bind) are encoded once
and referenced by ``{"t": "ref", "@": n}``, so the server rebuilds the same object graph and
compiles the same SQL.

The node catalogue is documented in ``docs/wire-format.md``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql import dml as sql_dml
from sqlalchemy.sql import elements, functions, selectable
from sqlalchemy.sql.base import _NoArg
from sqlalchemy.sql.compiler import Compiled
from sqlalchemy.types import TypeEngine

from . import _operators
from .exceptions import UnsupportedStatementError
from .type_codec import encode_type
from .values import encode_value

__all__ = ["WIRE_VERSION", "StatementEncoder", "to_wire"]

WIRE_VERSION = 2

_ANON = re.compile(r"^%\((\S+) (.*)\)s$", re.S)

_Json = dict[str, Any]


def _base(element: Any) -> Any:
    """The element without ORM annotations."""
    if getattr(element, "_annotations", None):
        return element._deannotate()
    return element


def _identity(element: Any) -> Any:
    """What makes two encountered objects *the same node*.

    An ORM-annotated table, alias or column is the same FROM / column as its plain original, and
    must become the same node on the server. Anything else is identified by itself: an annotated
    *statement* may have been cloned and changed after annotation, and its original is stale.
    """
    if isinstance(element, (selectable.FromClause, sa.ColumnClause)):
        return _base(element)
    return element


# keyword arguments of an operator that SQLAlchemy keeps in a binary's modifiers although only the
# expression's construction reads them: a TypeDecorator's comparator passes its coerce_to_is_types
# classes (arithmetic on such a column keeps them); the compiler never renders them
_CONSTRUCTION_MODIFIERS = frozenset({"_python_is_types"})


def _anon_parts(name: str) -> tuple[str, str]:
    match = _ANON.match(name)
    if match is None:
        raise UnsupportedStatementError(f"Cannot send the composite anonymous name {name!r}.")
    return match.group(1), match.group(2).replace("%%", "%")


class StatementEncoder:
    """Encodes one statement; instances are single-use."""

    def __init__(self, bind_names: Mapping[Any, str] | None = None,
                 core_statements: Mapping[int, Any] | None = None, dialect: Any = None) -> None:
        self._bind_names = bind_names or {}
        self._dialect = dialect
        self._core = core_statements or {}
        self._memo: dict[int, tuple[Any, _Json]] = {}
        self._ctes: dict[str, list[Any]] = {}
        self._next_ref = 0
        self._types: list[tuple[_Json, str, TypeEngine[Any], bool]] = []
        self._tables: dict[str, sa.Table] = {}
        self._seeds: dict[str, int] = {}

    def name(self, name: Any) -> Any:
        """A plain name stays a string; an anonymous one becomes ``{"anon": base, "n": k}``.

        ``k`` numbers the client's distinct anonymous seeds in order of appearance: names that
        were the same label on the client (a CTE and its restatement, a bind and its clone) are
        the same label on the server, and the document stays the same for the same structure.
        """
        if name is None or name is _NoArg.NO_ARG:
            return None
        if isinstance(name, elements._anonymous_label):
            seed, base = _anon_parts(name)
            ordinal = self._seeds.setdefault(seed, len(self._seeds) + 1)
            return {"anon": base, "n": ordinal}
        return str(name)

    # -- entry points -------------------------------------------------------------------------
    def encode_statement(self, statement: Any) -> _Json:
        node = self.visit(statement)
        column_types: dict[int, tuple[str, str]] = {}
        for table in self._tables.values():
            for column in table.columns:
                column_types.setdefault(id(column.type), (table.fullname, column.key))
        for holder, field, type_, exact in self._types:
            holder[field] = encode_type(type_, column_types, self._dialect, exact=exact)
        return node

    # -- dispatch -----------------------------------------------------------------------------
    def visit(self, element: Any) -> _Json:
        if isinstance(element, selectable.CTE):
            element = self._same_cte(element)
        identity = _identity(element)
        seen = self._memo.get(id(identity))
        if seen is not None:
            node = seen[1]
            if "@" not in node:
                self._next_ref += 1
                node["@"] = self._next_ref
            return {"t": "ref", "@": node["@"]}
        node = _dispatch(type(element))(self, element)
        implicit = element.__dict__.get("_anon_name_label") if isinstance(element, sa.ColumnElement) else None
        if implicit is not None and node["t"] not in ("col", "ref", "label") and isinstance(
                implicit, elements._anonymous_label):
            # the implicit "AS count_1" label the compiler memoized; clones share it, and so
            # must the rebuilt expressions
            node["al"] = self.name(implicit)
        self._memo[id(identity)] = (identity, node)
        return node

    def _same_cte(self, cte: Any) -> Any:
        """An earlier CTE of the same name that the compiler renders as this one, if any.

        The ORM clones CTEs while adapting statements; SQLAlchemy's compiler treats a clone that
        compares equal (or an annotated copy) as the same CTE. Rebuilt on the server, the two
        would be unrelated objects of one name ("Multiple, unrelated CTEs"), so the clone
        travels as a reference to the CTE already sent.
        """
        if cte._cte_alias is not None:
            return cte
        earlier = self._ctes.setdefault(str(cte.name), [])
        for other in earlier:
            if other is cte:
                return cte
            if (other._restates is not cte and cte._restates is not other
                    and id(_identity(other)) in self._memo
                    and (hash(other) == hash(cte) or (
                        (cte._is_clone_of is not None or other._is_clone_of is not None)
                        and cte.compare(other)))):
                return other
        earlier.append(cte)
        return cte

    def visit_opt(self, element: Any) -> _Json | None:
        return None if element is None else self.visit(element)

    def visit_all(self, items: Sequence[Any] | None) -> list[_Json]:
        return [self.visit(i) for i in items or ()]

    def _typed(self, node: _Json, type_: TypeEngine[Any], field: str = "type", *, exact: bool = False) -> _Json:
        self._types.append((node, field, type_, exact))
        node[field] = None
        return node

    # -- FROM clauses -------------------------------------------------------------------------
    def visit_table(self, table: sa.TableClause) -> _Json:
        if isinstance(table, sa.Table):
            self._tables[table.fullname] = table
        node: _Json = {"t": "table", "name": table.name}
        if table.schema:
            node["schema"] = table.schema
        return node

    def visit_alias(self, alias: selectable.Alias) -> _Json:
        return {"t": "alias", "element": self.visit(alias.element), "name": self.name(alias.name)}

    def visit_subquery(self, subq: selectable.Subquery) -> _Json:
        return {"t": "subquery", "element": self.visit(subq.element), "name": self.name(subq.name)}

    def visit_cte(self, cte: selectable.CTE) -> _Json:
        node = {"t": "cte", "element": self.visit(cte.element), "name": self.name(cte.name)}
        if cte.recursive:
            node["recursive"] = True
        if cte.nesting:
            node["nesting"] = True
        if cte._cte_alias is not None:
            node["alias_of"] = self.visit(cte._cte_alias)
        if cte._restates is not None:
            node["restates"] = self.visit(cte._restates)
        return node

    def visit_lateral(self, lateral: selectable.Lateral) -> _Json:
        return {"t": "lateral", "element": self.visit(lateral.element), "name": self.name(lateral.name)}

    def visit_join(self, join: selectable.Join) -> _Json:
        node: _Json = {"t": "join", "left": self.visit(join.left), "right": self.visit(join.right),
                "on": self.visit_opt(join.onclause)}
        if join.isouter:
            node["outer"] = True
        if join.full:
            node["full"] = True
        return node

    # -- statements ---------------------------------------------------------------------------
    def visit_select(self, select: sa.Select[Any]) -> _Json:
        core = self._core.get(id(select))
        if core is not None and core is not select:
            return self.visit(core)
        distinct_on = _distinct_on_extension(select)
        self._refuse_extras(select, "_post_select_clause", "_post_criteria_clause", "_post_body_clause",
                            *(() if distinct_on is not None else ("_pre_columns_clause",)))
        node: _Json = {"t": "select", "cols": self.visit_all(select._raw_columns)}
        self._put_hints(node, select)
        self._put_prefixes(node, "prefixes", select._prefixes)
        self._put_prefixes(node, "suffixes", select._suffixes)
        if select._statement_hints:
            node["statement_hints"] = [{"dialect": d, "text": t} for d, t in select._statement_hints]
        if distinct_on is not None:  # 2.1: select(...).ext(postgresql.distinct_on(...))
            node["ext_distinct_on"] = self.visit_all(distinct_on)
        self._put_list(node, "froms", select._from_obj)
        self._put_list(node, "where", select._where_criteria)
        self._put_list(node, "group_by", select._group_by_clauses)
        self._put_list(node, "having", select._having_criteria)
        self._put_list(node, "order_by", select._order_by_clauses)
        self._put_list(node, "distinct_on", select._distinct_on)
        self._put_list(node, "correlate", select._correlate)
        self._put_list(node, "ctes", select._independent_ctes)
        if select._correlate_except is not None:
            node["correlate_except"] = self.visit_all(select._correlate_except)
        if select._distinct:
            node["distinct"] = True
        if select._setup_joins:
            node["joins"] = [self._setup_join(j) for j in select._setup_joins]
        self._put_limits(node, select)
        style = select._label_style
        if style is not selectable.LABEL_STYLE_DEFAULT:
            node["label_style"] = style.name
        return node

    def _setup_join(self, setup: tuple[Any, ...]) -> _Json:
        target, onclause, from_, flags = setup
        node: _Json = {"target": self.visit(target), "on": self.visit_opt(onclause),
                "from": self.visit_opt(from_)}
        node["outer"], node["full"] = bool(flags.get("isouter")), bool(flags.get("full"))
        return node

    def _put_limits(self, node: _Json, stmt: Any) -> None:
        if stmt._limit_clause is not None:
            node["limit"] = self.visit(stmt._limit_clause)
        if stmt._offset_clause is not None:
            node["offset"] = self.visit(stmt._offset_clause)
        if stmt._fetch_clause is not None:
            node["fetch"] = {"clause": self.visit(stmt._fetch_clause),
                             **stmt._fetch_clause_options}
        arg = stmt._for_update_arg
        if arg is not None:
            node["for_update"] = {"nowait": arg.nowait, "read": arg.read,
                                  "skip_locked": arg.skip_locked, "key_share": arg.key_share,
                                  "of": self.visit_all(arg.of) if arg.of else None}

    def _put_list(self, node: _Json, name: str, items: Sequence[Any] | None) -> None:
        if items:
            node[name] = self.visit_all(items)

    def _put_hints(self, node: _Json, stmt: Any) -> None:
        """``with_hint()``, keyed by the hinted FROM, each with the dialect it is for.

        All of them travel, those for other dialects too: what renders is the server's to judge
        (``_hints``), and leaving one out could change the SQL (an empty suffix list still adds a
        space), which the fingerprint check would refuse.
        """
        hints = [{"from": self.visit(from_), "dialect": dialect_name, "text": text}
                 for (from_, dialect_name), text in stmt._hints.items()]
        if hints:
            node["hints"] = hints

    def _put_prefixes(self, node: _Json, field: str, prefixes: Sequence[tuple[Any, str | None]]) -> None:
        """``prefix_with()`` / ``suffix_with()``: their clauses (text is raw SQL where it renders)."""
        if prefixes:
            node[field] = [{"clause": self.visit(clause), "dialect": dialect_name} for clause, dialect_name in prefixes]

    def _refuse_extras(self, stmt: Any, *attrs: str) -> None:
        for attr in attrs:
            value = getattr(stmt, attr, None)
            if value is not None and (not isinstance(value, (tuple, list, dict)) or len(value) > 0):
                raise UnsupportedStatementError(
                    f"{type(stmt).__name__} with {attr.strip('_')} (raw SQL fragments) "
                    "cannot be sent to the DB-API."
                )

    def visit_compound_select(self, compound: selectable.CompoundSelect[Any]) -> _Json:
        node: _Json = {"t": "compound_select", "keyword": compound.keyword.name,
                       "selects": self.visit_all(compound.selects)}
        self._put_list(node, "order_by", compound._order_by_clauses)
        self._put_list(node, "group_by", compound._group_by_clauses)
        self._put_limits(node, compound)
        return node

    def visit_select_statement_grouping(self, grouping: Any) -> _Json:
        return {"t": "select_grouping", "element": self.visit(grouping.element)}

    def _dml_common(self, node: _Json, stmt: Any) -> _Json:
        self._refuse_extras(stmt, "_post_criteria_clause",
                            *(() if "on_conflict" in node else ("_post_values_clause",)))
        self._put_hints(node, stmt)
        self._put_prefixes(node, "prefixes", stmt._prefixes)
        self._put_list(node, "returning", stmt._returning)
        if stmt._return_defaults:
            node["return_defaults"] = True
            self._put_list(node, "return_defaults_cols", stmt._return_defaults_columns)
        self._put_list(node, "supplemental_returning", stmt._supplemental_returning)
        self._put_list(node, "ctes", getattr(stmt, "_independent_ctes", ()))
        if getattr(stmt, "_sort_by_parameter_order", False):
            node["sort_by_parameter_order"] = True
        if getattr(stmt, "_inline", False):
            node["inline"] = True
        return node

    def _values(self, values: Mapping[Any, Any] | None) -> list[list[Any]] | None:
        if not values:
            return None
        return [[self._value_key(k), self._value(v)] for k, v in values.items()]

    def _value(self, value: Any) -> _Json:
        if isinstance(value, sa.ClauseElement):
            return self.visit(value)
        return {"t": "value", "v": encode_value(value)}

    def _row_value(self, value: Any) -> _Json:
        """A multi-row VALUES item: SQL stays structure; a plain value travels in ``params``.

        crud turns every plain value of a multi-row VALUES into a bind (``<key>_m<n>``) of the
        column's type, whatever the value, and the client sends it processed with the other
        parameters; the document carries only that a value is there.
        """
        if isinstance(value, sa.ClauseElement):
            return self.visit(value)
        return {"t": "value", "v": None}

    def _value_key(self, key: Any) -> Any:
        if isinstance(key, str):
            return key
        return self.visit(key)

    def visit_insert(self, insert: sql_dml.Insert) -> _Json:
        core = self._core.get(id(insert))
        if core is not None and core is not insert:
            return self.visit(core)
        node: _Json = {"t": "insert", "table": self.visit(insert.table)}
        values = self._values(insert._values)
        if values:
            node["values"] = values
        if insert._multi_values:
            node["multi_values"] = [[{"pairs": [[self._value_key(k), self._row_value(v)] for k, v in row.items()]}
                                     if isinstance(row, Mapping) else {"seq": [self._row_value(v) for v in row]}
                                     for row in batch]
                                    for batch in insert._multi_values]
        if insert.select is not None:
            node["select"] = self.visit(insert.select)
            node["select_names"] = list(insert._select_names or ())
            node["include_defaults"] = insert.include_insert_from_select_defaults
        post_values = getattr(insert, "_post_values_clause", None)
        if post_values is not None:
            clauses = list(post_values.clauses) if isinstance(post_values, elements.ClauseList) else [post_values]
            if all(type(c).__module__ in _UPSERT_MODULES for c in clauses):
                node["on_conflict"] = [self._on_conflict(c) for c in clauses]
            else:
                names = ", ".join(sorted({getattr(c, "__visit_name__", type(c).__name__) for c in clauses}))
                raise UnsupportedStatementError(
                    f"INSERT ... {names} cannot be sent to the DB-API yet; only the SQLite and "
                    "PostgreSQL upserts (on_conflict_do_nothing / on_conflict_do_update) travel. "
                    "Select the row first and update or insert it instead.")
        return self._dml_common(node, insert)

    def _on_conflict(self, clause: Any) -> _Json:
        """SQLite's / PostgreSQL's ``on_conflict_do_update()`` / ``on_conflict_do_nothing()``."""
        visit_name = clause.__visit_name__
        if visit_name not in ("on_conflict_do_update", "on_conflict_do_nothing"):
            raise UnsupportedStatementError(f"The INSERT clause {visit_name} cannot be sent to the DB-API yet.")
        node: _Json = {"dialect": _UPSERT_MODULES[type(clause).__module__],
                       "kind": visit_name.removeprefix("on_conflict_")}
        if clause.inferred_target_elements is not None:
            node["index_elements"] = [e if isinstance(e, str) else self.visit(e)
                                      for e in clause.inferred_target_elements]
        if clause.inferred_target_whereclause is not None:
            node["index_where"] = self.visit(clause.inferred_target_whereclause)
        if getattr(clause, "constraint_target", None) is not None:
            node["constraint"] = str(clause.constraint_target)
        if visit_name == "on_conflict_do_update":
            pairs = clause.update_values_to_set
            pairs = pairs.items() if isinstance(pairs, Mapping) else pairs
            node["set"] = [[self._value_key(k), self._value(v)] for k, v in pairs]
            if clause.update_whereclause is not None:
                node["where"] = self.visit(clause.update_whereclause)
        return node

    def visit_update(self, update: sql_dml.Update) -> _Json:
        core = self._core.get(id(update))
        if core is not None and core is not update:
            return self.visit(core)
        node: _Json = {"t": "update", "table": self.visit(update.table)}
        values = self._values(update._values)
        if values:
            node["values"] = values
            if getattr(update, "_maintain_values_ordering", False) or getattr(
                    update, "_preserve_parameter_order", False):
                node["ordered"] = True
        self._put_list(node, "where", update._where_criteria)
        return self._dml_common(node, update)

    def visit_delete(self, delete: sql_dml.Delete) -> _Json:
        core = self._core.get(id(delete))
        if core is not None and core is not delete:
            return self.visit(core)
        node: _Json = {"t": "delete", "table": self.visit(delete.table)}
        self._put_list(node, "where", delete._where_criteria)
        self._put_list(node, "extra_froms", getattr(delete, "_extra_froms", ()))  # 2.1+
        return self._dml_common(node, delete)

    def visit_savepoint(self, clause: Any) -> _Json:
        return {"t": clause.__visit_name__, "name": str(clause.ident)}

    def visit_text(self, clause: elements.TextClause) -> _Json:
        binds = [[k, self.visit(v)] for k, v in clause._bindparams.items()]
        return {"t": "text", "text": clause.text, "binds": binds}

    def visit_textual_select(self, select: selectable.TextualSelect) -> _Json:
        return {"t": "textual_select", "element": self.visit(select.element),
                "columns": self.visit_all(select.column_args)}

    # -- column expressions -------------------------------------------------------------------
    def visit_column(self, column: sa.ColumnClause[Any]) -> _Json:
        table = column.table
        if table is not None and not column.is_literal:
            key = _column_key(table, column)
            if key is not None:
                if "%(" in key or _orm_keys(table):
                    # a key made from an anonymous name (``anon_1_id`` of a subquery: its seed is
                    # this process's), or a column of a subquery of an ORM select, keyed by the
                    # ORM attribute ("uname") where the Core select the server rebuilds keys it
                    # by the column ("name"): the server finds the column by its position, and
                    # the fingerprint check proves it the same
                    return {"t": "col", "from": self.visit(table), "pos": list(table.c.keys()).index(key)}
                return {"t": "col", "from": self.visit(table), "key": key}
        node: _Json = {"t": "column_clause", "name": str(column.name)}
        if column.is_literal:
            node["literal"] = True
        if table is not None:
            node["from"] = self.visit(table)
        return self._typed(node, column.type)

    def visit_bindparam(self, bind: elements.BindParameter[Any]) -> _Json:
        anonymous = isinstance(bind.key, elements._anonymous_label)
        # the compiler may render a copy (crud names a values() bind after its column), so a
        # bind it did not see by identity keeps its own key; the fingerprint check on the
        # server proves the names came out the same
        label = self.name(bind.key)
        name = self._bind_names.get(bind) or (label["anon"] if anonymous else bind.key)
        node: _Json = {"t": "bind", "key": str(name)}
        if anonymous:
            # stays anonymous: the server's compiler then numbers it exactly as ours did, even
            # around binds a dialect creates while compiling (SQLite's "OFFSET 0")
            node["anon"], node["n"] = label["anon"], label["n"]
            if bind.unique:  # crud renames unique anonymous values() binds after their column
                node["unique"] = True
        if bind.expanding:
            node["expanding"] = True
        if bind.literal_execute:
            node["literal_execute"] = True
        if isinstance(bind, selectable._OffsetLimitParam):
            node["offset_limit"] = True
        # a literal_execute bind is rendered by its type's literal processor, on the server
        return self._typed(node, bind.type, exact=bool(bind.literal_execute))

    def visit_label(self, label: elements.Label[Any]) -> _Json:
        node = {"t": "label", "name": self.name(label.name), "element": self.visit(label.element)}
        return self._typed(node, label.type)

    def visit_label_reference(self, ref: Any) -> _Json:
        return {"t": "label_reference", "element": self.visit(ref.element)}

    def visit_textual_label_reference(self, ref: Any) -> _Json:
        # order_by("name"): resolved by the compiler against the statement's own labels and
        # refused by it otherwise - a name, not SQL text
        return {"t": "textual_label_reference", "name": str(ref.element)}

    def visit_binary(self, binary: elements.BinaryExpression[Any]) -> _Json:
        if isinstance(binary, functions.FunctionAsBinary):  # func.x(a, b).as_comparison(1, 2)
            return {"t": "function_as_binary", "function": self.visit(binary.sql_function),
                    "left_index": binary.left_index, "right_index": binary.right_index}
        node: _Json = {"t": "binary", "op": self._op(binary.operator),
                       "left": self.visit(binary.left), "right": self.visit(binary.right)}
        if binary.negate is not None:
            node["negate"] = self._op(binary.negate)
        modifiers = {k: v for k, v in binary.modifiers.items() if k not in _CONSTRUCTION_MODIFIERS}
        if modifiers:
            node["modifiers"] = {k: self._modifier(v) for k, v in modifiers.items()}
        if isinstance(binary, elements.IndexExpression):
            node["index"] = True
        return self._typed(node, binary.type)

    def _modifier(self, value: Any) -> Any:
        if isinstance(value, sa.ClauseElement):
            return {"expr": self.visit(value)}
        return encode_value(value)

    def _op(self, op: Any) -> Any:
        name = _operators.operator_name(op)
        if name is not None:
            return name
        if isinstance(op, sa.sql.operators.custom_op):
            node: _Json = {"custom": op.opstring, "precedence": op.precedence,
                           "is_comparison": op.is_comparison,
                           "natural_self_precedent": op.natural_self_precedent,
                           "eager_grouping": op.eager_grouping}
            if op.return_type is not None:
                self._typed(node, op.return_type, "return_type")
            return node
        raise UnsupportedStatementError(f"Cannot send the operator {op!r}.")

    def visit_unary(self, unary: elements.UnaryExpression[Any]) -> _Json:
        kind = {selectable.Exists: "exists", elements.CollectionAggregate: "collection",
                elements.AsBoolean: "as_boolean"}.get(type(unary), "unary")
        node: _Json = {"t": kind, "element": self.visit(unary.element)}
        if unary.operator is not None:
            node["op"] = self._op(unary.operator)
        if unary.modifier is not None:
            node["modifier"] = self._op(unary.modifier)
        if kind == "as_boolean":
            node["negate"] = self._op(unary.negate)
        return self._typed(node, unary.type)

    def visit_clauselist(self, clauses: elements.ClauseList) -> _Json:
        node: _Json = {"t": "clause_list", "clauses": self.visit_all(clauses.clauses)}
        if clauses.operator is not sa.sql.operators.comma_op:
            node["op"] = self._op(clauses.operator)
        if not clauses.group:
            node["group"] = False
        if not clauses.group_contents:
            node["group_contents"] = False
        return node

    def visit_expression_clauselist(self, clauses: Any) -> _Json:
        kind = "boolean_list" if isinstance(clauses, elements.BooleanClauseList) else "expression_list"
        node: _Json = {"t": kind, "op": self._op(clauses.operator),
                       "clauses": self.visit_all(clauses.clauses)}
        if not getattr(clauses, "group", True):
            node["group"] = False  # BETWEEN's "lower AND upper" renders without parentheses
        return self._typed(node, clauses.type)

    def visit_grouping(self, grouping: Any) -> _Json:
        if isinstance(grouping, selectable.ScalarSelect):
            return self._typed({"t": "scalar_select", "element": self.visit(grouping.element)},
                               grouping.type)
        if isinstance(grouping, selectable.FromGrouping):
            return {"t": "from_grouping", "element": self.visit(grouping.element)}
        return {"t": "grouping", "element": self.visit(grouping.element)}

    def visit_cast(self, cast: elements.Cast[Any]) -> _Json:
        return self._typed({"t": "cast", "element": self.visit(cast.clause)}, cast.type)

    def visit_type_coerce(self, coerce: elements.TypeCoerce[Any]) -> _Json:
        return self._typed({"t": "type_coerce", "element": self.visit(coerce.clause)}, coerce.type)

    def visit_case(self, case: elements.Case[Any]) -> _Json:
        node: _Json = {"t": "case", "whens": [[self.visit(c), self.visit(r)] for c, r in case.whens]}
        if case.value is not None:
            node["value"] = self.visit(case.value)
        if case.else_ is not None:
            node["else"] = self.visit(case.else_)
        return self._typed(node, case.type)

    def visit_over(self, over: elements.Over[Any]) -> _Json:
        node: _Json = {"t": "over", "element": self.visit(over.element),
                       "partition_by": self.visit_opt(over.partition_by),
                       "order_by": self.visit_opt(over.order_by)}
        for attr, key in (("rows", "rows"), ("range_", "range"), ("groups", "groups")):
            frame = getattr(over, attr, None)
            if frame is not None:
                node[key] = _frame_bounds(frame)
        if getattr(over, "exclude", None):
            raise UnsupportedStatementError("Window frame EXCLUDE clauses cannot be sent yet.")
        return node

    def visit_funcfilter(self, ff: elements.FunctionFilter[Any]) -> _Json:
        return {"t": "funcfilter", "func": self.visit(ff.func), "criterion": self.visit(ff.criterion)}

    def visit_withingroup(self, wg: elements.WithinGroup[Any]) -> _Json:
        return {"t": "within_group", "element": self.visit(wg.element),
                "order_by": self.visit_opt(wg.order_by)}

    def visit_extract(self, extract: elements.Extract) -> _Json:
        return {"t": "extract", "field": extract.field, "expr": self.visit(extract.expr)}

    def visit_function(self, fn: functions.FunctionElement[Any]) -> _Json:
        if type(fn) is functions.Function or isinstance(fn, functions.GenericFunction):
            node: _Json = {"t": "function", "name": fn.name,
                           "args": self.visit_all(cast("elements.ClauseList", fn.clause_expr.element).clauses)}
            packages = getattr(fn, "packagenames", ())
            if packages:
                node["packages"] = list(packages)
            return self._typed(node, fn.type)
        raise UnsupportedStatementError(f"The function construct {type(fn).__name__} cannot be sent yet.")

    def visit_tuple(self, tup: elements.Tuple) -> _Json:
        return self._typed({"t": "tuple", "clauses": self.visit_all(tup.clauses)}, tup.type)

    def visit_null(self, _: Any) -> _Json:
        return {"t": "null"}

    def visit_true(self, _: Any) -> _Json:
        return {"t": "true"}

    def visit_false(self, _: Any) -> _Json:
        return {"t": "false"}


def _frame_bound(kind: Any, bind: Any) -> int | None:
    name = getattr(kind, "name", str(kind))
    if "UNBOUNDED" in name:
        return None
    if "CURRENT" in name:
        return 0
    value = int(bind.value)
    return -value if "PRECEDING" in name else value


def _frame_bounds(frame: Any) -> list[int | None]:
    """A window frame as ``Over(rows=(lower, upper))`` spells it: None unbounded, 0 current row,
    negative preceding, positive following - from 2.1's FrameClause or 2.0's tuple."""
    if isinstance(frame, tuple):  # SQLAlchemy 2.0
        return [_frame_bound(b, None) if not isinstance(b, int) or isinstance(b, enum.Enum) else int(b)
                for b in frame]
    return [_frame_bound(frame.lower_type, frame.lower_bind),
            _frame_bound(frame.upper_type, frame.upper_bind)]


def _distinct_on_extension(select: Any) -> Sequence[Any] | None:
    """The expressions of a PostgreSQL ``distinct_on`` syntax extension, if that is all there is."""
    clause = getattr(select, "_pre_columns_clause", None)
    if clause is not None and type(clause).__name__ == "DistinctOnClause":
        return tuple(clause._distinct_on)
    return None


def _orm_keys(from_: Any) -> bool:
    """Whether *from_* is a subquery / CTE (or alias of one) of an ORM statement."""
    while isinstance(from_, selectable.Alias | selectable.CTE | selectable.Subquery):
        from_ = from_.element
    return bool(getattr(from_, "_propagate_attrs", {}).get("compile_state_plugin") == "orm")


_UPSERT_MODULES = {"sqlalchemy.dialects.sqlite.dml": "sqlite", "sqlalchemy.dialects.postgresql.dml": "postgresql"}


def _column_key(table: Any, column: Any) -> str | None:
    """The key under which *column* is found in ``table.c`` (by identity)."""
    base = _base(column)
    candidate = table.c.get(base.key)
    if candidate is not None and _base(candidate) is base:
        return str(base.key)
    for key, col in table.c.items():
        if _base(col) is base:
            return str(key)
    return None


_VISITORS: dict[type, Callable[[StatementEncoder, Any], _Json]] = {}

def _visit_override_binds(encoder: StatementEncoder, element: Any) -> _Json:
    """``_OverrideBinds`` (a cached expression reused with other values, as ORM loader options do)
    renders as the element it wraps; its values are already in the compiled parameters."""
    return encoder.visit(element.element)


def _visit_lambda(encoder: StatementEncoder, element: Any) -> _Json:
    """A ``lambda_stmt()`` element travels as the statement it resolved to; its tracked closure
    values are bound parameters like any other."""
    return encoder.visit(element._resolved)


_BY_VISIT_NAME = {
    "override_binds": _visit_override_binds,
    "lambda_element": _visit_lambda,
    "savepoint": StatementEncoder.visit_savepoint,
    "rollback_to_savepoint": StatementEncoder.visit_savepoint,
    "release_savepoint": StatementEncoder.visit_savepoint,
    "textclause": StatementEncoder.visit_text,
}


def _dispatch(cls: type) -> Callable[[StatementEncoder, Any], _Json]:
    found = _VISITORS.get(cls)
    if found is not None:
        return found
    visit_name = getattr(cls, "__visit_name__", None)
    method = _BY_VISIT_NAME.get(visit_name) or getattr(StatementEncoder, f"visit_{visit_name}", None)  # type: ignore[arg-type]  # None just misses
    if method is None:
        raise UnsupportedStatementError(
            f"The SQL construct {cls.__module__}.{cls.__qualname__} ({visit_name}) cannot be sent "
            "to the DB-API yet."
        )
    _VISITORS[cls] = method
    return method


def to_wire(statement: Any, *, compiled: Compiled | None = None,
            core_statements: Mapping[int, Any] | None = None) -> _Json:
    """Encode *statement* (a Core or ORM statement) as a versioned wire document.

    With *compiled*, bound parameters are named as that compilation named them, and ORM
    statements are replaced by the Core statements their compile states produced (recorded by
    the compiler into *core_statements*).
    """
    bind_names = getattr(compiled, "bind_names", None)
    encoder = StatementEncoder(bind_names, core_statements, getattr(compiled, "dialect", None))
    return {"version": WIRE_VERSION, "statement": encoder.encode_statement(statement)}
