"""The access rule of every node type of the wire grammar: deny by default, by construction.

Each node type the decoder knows (``query_translation.decode.NODE_TYPES``) has one
:class:`NodeRule` here: what it reads, what it writes, which names it can make the database
resolve, and the SQLAlchemy classes it decodes to - each of which has an
:data:`~dbapi_server._statement_scan.ELEMENT_RULES` entry that the statement walk enforces. The
policy refuses a statement using a node type without a rule here (before anything else is
judged), and the walk refuses an element of a class without a rule; a test walks the grammar
and fails on a node type, a class, or a traversed attribute that has none. ``docs/security.md``
shows this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import dml, elements, functions, selectable
from sqlalchemy.sql import expression as sql_expr

__all__ = ["NODE_RULES", "NodeRule"]


@dataclass(frozen=True)
class NodeRule:
    reads: str
    writes: str
    names: str
    classes: tuple[type, ...]  # what the decoder builds from the node (functions: the registry too)


_NOTHING = "nothing"
_FRAME_CLASSES = tuple(c for c in (getattr(elements, "FrameClause", None), getattr(elements, "_FrameClause", None))
                       if isinstance(c, type))
_EXPR = "what its operands read"

_RULES: dict[str, NodeRule] = {
    "ref": NodeRule("what the referenced node reads (each element walked once per position)", _NOTHING,
                    _NOTHING, ()),
    "table": NodeRule("in FROM: its rows (a grant needed); in a select list: every column; in an expression "
                      "(a whole-row value): refused", _NOTHING, "its own name, from the server's metadata",
                      (sa.Table,)),
    "alias": NodeRule("what it renames (a table alias is the table)", _NOTHING, "its alias name (a FROM item)",
                      (selectable.Alias, selectable.Subquery)),
    "subquery": NodeRule("what its SELECT reads; a DML statement inside: refused", _NOTHING,
                         "its name and its columns' names", (selectable.Subquery,)),
    "lateral": NodeRule("what its SELECT reads", _NOTHING, "its name and its columns' names",
                        (selectable.Lateral,)),
    "cte": NodeRule("what its statement reads", "an INSERT / UPDATE / DELETE inside: its target, under the "
                    "policy's write rules (refused on a row-filtered table)",
                    "its name and its columns' names", (selectable.CTE,)),
    "join": NodeRule("what its sides and ON clause read", _NOTHING, _NOTHING, (selectable.Join,)),
    "select": NodeRule("every clause: select list, FROM, joins, WHERE, GROUP BY, HAVING, ORDER BY, DISTINCT ON, "
                       "LIMIT / OFFSET, FOR UPDATE OF, its CTEs", "what its CTEs write",
                       "its select list's labels; ``*`` only in EXISTS (SELECT * ...)", (selectable.Select,)),
    "compound_select": NodeRule("every SELECT's reads, ORDER BY / GROUP BY", "what its CTEs write",
                                "its first SELECT's column names", (selectable.CompoundSelect,)),
    "select_grouping": NodeRule("what its SELECT reads", _NOTHING, _NOTHING, (selectable.SelectStatementGrouping,)),
    "insert": NodeRule("its VALUES expressions, SELECT, RETURNING (beyond the row written), ON CONFLICT "
                       "SET / WHERE", "its target's columns: VALUES, parameter keys, from-SELECT names; "
                       "ON CONFLICT DO UPDATE: an update", "its target; ON CONFLICT column names",
                       (dml.Insert, postgresql.Insert, sqlite.Insert, postgresql.dml.OnConflictDoNothing,
                        postgresql.dml.OnConflictDoUpdate, sqlite.dml.OnConflictDoNothing,
                        sqlite.dml.OnConflictDoUpdate)),
    "update": NodeRule("its WHERE, SET expressions, RETURNING", "its target's SET columns and parameter keys",
                       "its target", (dml.Update,)),
    "delete": NodeRule("its WHERE, USING tables, RETURNING", "its target's rows", "its target", (dml.Delete,)),
    "savepoint": NodeRule(_NOTHING, _NOTHING, "the savepoint's name (quoted)", (sql_expr.SavepointClause,)),
    "rollback_to_savepoint": NodeRule(_NOTHING, _NOTHING, "the savepoint's name (quoted)",
                                      (sql_expr.RollbackToSavepointClause,)),
    "release_savepoint": NodeRule(_NOTHING, _NOTHING, "the savepoint's name (quoted)",
                                  (sql_expr.ReleaseSavepointClause,)),
    "text": NodeRule("raw SQL: refused unless the role allows raw SQL, except bare ASCII integers and ``*`` "
                     "in count(*) / EXISTS", _NOTHING, _NOTHING, (elements.TextClause,)),
    "textual_select": NodeRule("raw SQL: only for roles allowed raw SQL (refused otherwise)", _NOTHING,
                               _NOTHING, (selectable.TextualSelect,)),
    "col": NodeRule("its column, qualified by its table or subquery", _NOTHING,
                    "``<from>.<column>``: a column the FROM item has (exact name)", (sa.Column, elements.ColumnClause,
                                                                                    elements.Label)),
    "column_clause": NodeRule(
        "qualified: that column (it must exist, exact name); unqualified: every column of every table in the "
        "statement the database could resolve it to", _NOTHING,
        "unqualified: resolved by the database against FROM items (case-insensitively on SQLite and MariaDB), "
        "labels, and on PostgreSQL table and alias names (a whole row): every candidate must be readable, no "
        "FROM item may carry the name, and the name must match a column or label; literal: ASCII integers, "
        "``*`` in count(*) / EXISTS", (elements.ColumnClause,)),
    "bind": NodeRule(_NOTHING, _NOTHING, "a parameter name (the ``_dbs_`` prefix is reserved)",
                     (elements.BindParameter, selectable._OffsetLimitParam)),
    "label": NodeRule("what its expression reads", _NOTHING, "defines an output name", (elements.Label,)),
    "label_reference": NodeRule("what its expression reads", _NOTHING,
                                "a select-list label rendered by its bare name (ORDER BY / GROUP BY / DISTINCT ON): "
                                "a bare name", (elements._label_reference,)),
    "textual_label_reference": NodeRule(
        "nothing of its own", _NOTHING,
        "a bare name that SQLAlchemy resolves against the select list, then every FROM column: allowed only "
        "for its own SELECT's select list, outside it, and then a bare name", (elements._textual_label_reference,)),
    "binary": NodeRule(_EXPR, _NOTHING, "custom operators: the policy's operator allowlist",
                       (elements.BinaryExpression, elements.IndexExpression)),
    "function_as_binary": NodeRule(_EXPR, _NOTHING, _NOTHING, (functions.FunctionAsBinary,)),
    "unary": NodeRule(_EXPR, _NOTHING, "custom operators: the allowlist", (elements.UnaryExpression,)),
    "exists": NodeRule("what its SELECT reads (whose select list may be ``*``)", _NOTHING, _NOTHING,
                       (selectable.Exists,)),
    "collection": NodeRule(_EXPR, _NOTHING, _NOTHING, (elements.CollectionAggregate,)),
    "as_boolean": NodeRule(_EXPR, _NOTHING, _NOTHING, (elements.AsBoolean,)),
    "clause_list": NodeRule(_EXPR, _NOTHING, _NOTHING, (elements.ClauseList,)),
    "boolean_list": NodeRule(_EXPR, _NOTHING, _NOTHING, (elements.BooleanClauseList,)),
    "expression_list": NodeRule(_EXPR, _NOTHING, _NOTHING, (elements.ExpressionClauseList,)),
    "grouping": NodeRule(_EXPR, _NOTHING, _NOTHING, (elements.Grouping,)),
    "from_grouping": NodeRule("what its FROM item reads", _NOTHING, _NOTHING, (selectable.FromGrouping,)),
    "scalar_select": NodeRule("what its SELECT reads", _NOTHING, _NOTHING, (selectable.ScalarSelect,)),
    "cast": NodeRule(_EXPR, _NOTHING, "a type name (the type allowlist)", (elements.Cast,)),
    "type_coerce": NodeRule(_EXPR, _NOTHING, _NOTHING, (elements.TypeCoerce,)),
    "case": NodeRule(_EXPR, _NOTHING, _NOTHING, (elements.Case,)),
    "over": NodeRule("its function, PARTITION BY, ORDER BY", _NOTHING, "frame bounds: integers",
                     (elements.Over, *_FRAME_CLASSES)),
    "funcfilter": NodeRule("its function and FILTER (WHERE ...)", _NOTHING, _NOTHING, (elements.FunctionFilter,)),
    "within_group": NodeRule("its function and ORDER BY", _NOTHING, _NOTHING, (elements.WithinGroup,)),
    "extract": NodeRule(_EXPR, _NOTHING, "a field keyword (ASCII letters, rendered verbatim)", (elements.Extract,)),
    "function": NodeRule("what its arguments read (count's may be ``*``)", _NOTHING,
                         "a function name: the role's allowlist, never a dangerous one",
                         (functions.Function, elements.Grouping, elements.ClauseList)),  # (its argument list)
    "tuple": NodeRule(_EXPR, _NOTHING, _NOTHING, (elements.Tuple,)),
    "null": NodeRule(_NOTHING, _NOTHING, _NOTHING, (elements.Null,)),
    "true": NodeRule(_NOTHING, _NOTHING, _NOTHING, (elements.True_,)),
    "false": NodeRule(_NOTHING, _NOTHING, _NOTHING, (elements.False_,)),
}

NODE_RULES: Mapping[str, NodeRule] = MappingProxyType(_RULES)
