"""Wire structure -> Core statement (``from_wire``), rebuilt against the server's own metadata.

Decoding never imports, evaluates or looks up anything named on the wire outside allowlists:
tables and columns come from the given ``MetaData``, operators from SQLAlchemy's operator module,
types from :class:`~query_translation.type_codec.TypeResolver`. While rebuilding, the decoder
records what the statement touches (:class:`StatementInfo`) so a policy can judge it without a
second walk. Structure is validated first by :mod:`query_translation.schemas`.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import elements, functions, operators, selectable
from sqlalchemy.sql import expression as sql_expr
from sqlalchemy.sql.base import Executable

from . import _operators
from ._hints import from_hint_renders, hint_renders, structured_from_hint
from .driver_sql import DRIVER_SQL_KINDS, parse_driver_sql
from .encode import WIRE_VERSION
from .exceptions import (
    MalformedStatementError,
    UnknownColumnError,
    UnknownNodeError,
    UnknownTableError,
    UnsupportedStatementError,
    WireVersionError,
)
from .schemas import validate_document
from .type_codec import TypeResolver
from .values import decode_value

__all__ = ["StatementDecoder", "StatementInfo", "from_wire"]

_Json = Mapping[str, Any]

READ_KINDS = {"select", "compound_select"}


@dataclass
class StatementInfo:
    """What a decoded statement touches, for the policy."""

    kind: str = ""
    read_tables: set[str] = field(default_factory=set)
    write_table: str | None = None
    columns: set[tuple[str, str]] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    custom_operators: set[str] = field(default_factory=set)
    literal_sql: list[str] = field(default_factory=list)
    # where each raw SQL fragment sits, by construct (never its text: answers do not echo SQL)
    literal_sql_origins: list[str] = field(default_factory=list)
    for_update: bool = False
    depth: int = 0
    node_types: set[str] = field(default_factory=set)  # every wire node type the document used

    def add_literal_sql(self, text: str, origin: str) -> None:
        """A raw SQL fragment (the raw-SQL policy decides) and the construct it came from."""
        self.literal_sql.append(text)
        self.literal_sql_origins.append(origin)

    def origin_of(self, index: int) -> str:
        """The construct of the *index*-th raw SQL fragment (``"raw SQL text"`` when not recorded)."""
        return self.literal_sql_origins[index] if index < len(self.literal_sql_origins) else "raw SQL text"

    @property
    def is_read_only(self) -> bool:
        # a SELECT can write through a data-modifying CTE (WITH x AS (INSERT ... RETURNING))
        return self.kind in READ_KINDS and not self.for_update and self.write_table is None




class StatementDecoder:
    """Rebuilds one statement; instances are single-use."""

    def __init__(self, metadata: sa.MetaData, types: TypeResolver, dialect: sa.Dialect | None = None) -> None:
        self._metadata = metadata
        self._dialect = dialect  # the server's: which hints and prefixes render (None: assume all)
        self._types = types
        self._refs: dict[int, Any] = {}
        self._definitions: dict[int, _Json] = {}
        self._building: set[int] = set()
        self._binds: dict[str, Any] = {}
        self._depth = 0
        self.info = StatementInfo()

    def name(self, name: Any) -> Any:
        """A wire name back to a name; anonymous ones keep the client's sameness (see encode)."""
        if isinstance(name, Mapping):
            return elements._anonymous_label.safe_construct(int(name["n"]), name["anon"])
        return name

    def decode(self, node: _Json) -> Any:
        self.info.kind = node["t"]
        self._definitions = _index_definitions(node)
        statement = self.visit(node)
        if not isinstance(statement, Executable):  # a column, a table, an expression: nothing to run
            raise MalformedStatementError({"statement": ["not an executable statement"]},
                                          f"The document's top node ({node['t']!r}) is not a statement.")
        return statement

    # -- dispatch -----------------------------------------------------------------------------
    def visit(self, node: _Json) -> Any:
        kind = node["t"] if isinstance(node, Mapping) else None
        if not isinstance(kind, str):  # where the schema lets raw values through (VALUES pairs)
            raise MalformedStatementError({"t": ["not a node"]}, "A statement node must be an object whose "
                                          "'t' is a node type name.")
        self.info.node_types.add(kind)
        if kind == "ref":
            return self._resolve(node["@"])
        if "@" in node and node["@"] in self._refs:
            return self._refs[node["@"]]  # already built on demand through a reference
        method = _DECODERS.get(kind)
        if method is None:
            raise UnknownNodeError(kind)
        self._depth += 1
        self.info.depth = max(self.info.depth, self._depth)
        try:
            result = method(self, node)
        finally:
            self._depth -= 1
        if "al" in node and kind not in ("col", "ref", "label", "table"):
            result.__dict__["_anon_name_label"] = self.name(node["al"])  # see encode: implicit labels
        if "@" in node:
            self._refs[node["@"]] = result
        return result

    def _resolve(self, ref: int) -> Any:
        """A referenced node, built now if its definition has not been reached yet."""
        if ref in self._refs:
            return self._refs[ref]
        definition = self._definitions.get(ref)
        if definition is None:
            raise MalformedStatementError({"@": [f"dangling reference @{ref}"]},
                                          f"Reference @{ref} has no definition in the statement.")
        if ref in self._building:
            raise MalformedStatementError({"@": [f"cyclic reference @{ref}"]},
                                          f"Node @{ref} refers to itself.")
        self._building.add(ref)
        try:
            return self.visit(definition)
        finally:
            self._building.discard(ref)

    def opt(self, node: _Json | None) -> Any:
        return None if node is None else self.visit(node)

    def all(self, nodes: list[_Json] | None) -> list[Any]:
        return [self.visit(n) for n in nodes or ()]

    def type(self, node: _Json | None) -> Any:
        return None if node is None else self._types.resolve(node)

    def _retype(self, element: Any, node: _Json) -> None:
        """Give *element* the node's type; without one it keeps the type its constructor gave it
        (assigning None would leave an element that crashes the compiler)."""
        if node.get("type") is not None:
            element.type = self._types.resolve(node["type"])

    # -- FROM clauses -------------------------------------------------------------------------
    def table(self, node: _Json) -> sa.Table:
        name = node["name"]
        key = f"{node['schema']}.{name}" if node.get("schema") else name
        table = self._metadata.tables.get(key)
        if table is None:
            raise UnknownTableError(f"The table {key!r} is not part of the server's metadata.")
        self.info.read_tables.add(key)
        return table

    def alias(self, node: _Json) -> Any:
        element = self.visit(node["element"])
        alias = element.alias()
        alias.name = self.name(node["name"])
        return alias

    def subquery(self, node: _Json) -> Any:
        element = _expect(self.visit(node["element"]), selectable.SelectBase, "subquery", "a SELECT")
        subq = element.subquery()
        subq.name = self.name(node["name"])
        return subq

    def cte(self, node: _Json) -> Any:
        if node.get("alias_of") is not None:
            # cte.alias(): rendered "FROM anon_2 AS anon_1", the WITH clause naming the original
            original = _expect(self.visit(node["alias_of"]), selectable.CTE, "cte", "a CTE")
            return original.alias(name=self.name(node["name"]))
        restates = self.opt(node.get("restates"))
        if restates is not None:
            _expect(restates, selectable.CTE, "cte", "a CTE")
        # a SELECT or an INSERT / UPDATE / DELETE: anything else (a table) crashes the compiler
        element = _expect(self.visit(node["element"]), selectable.HasCTE, "cte", "a SELECT or DML statement")
        return selectable.CTE._construct(
            element, name=self.name(node["name"]), recursive=node.get("recursive", False),
            nesting=node.get("nesting", False), _restates=restates)

    def lateral(self, node: _Json) -> Any:
        lateral = self.visit(node["element"]).lateral()
        lateral.name = self.name(node["name"])
        return lateral

    def join(self, node: _Json) -> Any:
        return sa.join(self.visit(node["left"]), self.visit(node["right"]), self.opt(node.get("on")),
                       isouter=node.get("outer", False), full=node.get("full", False))

    # -- statements ---------------------------------------------------------------------------
    def select(self, node: _Json) -> Any:
        stmt: sa.Select[Any] = sa.Select(*self.all(node["cols"]))
        if node.get("froms"):
            stmt = stmt.select_from(*self.all(node["froms"]))
        for join in node.get("joins", ()):
            target, on = self.visit(join["target"]), self.opt(join.get("on"))
            from_ = self.opt(join.get("from"))
            kw = {"isouter": join.get("outer", False), "full": join.get("full", False)}
            stmt = stmt.join_from(from_, target, on, **kw) if from_ is not None else stmt.join(target, on, **kw)
        if node.get("where"):
            stmt = stmt.where(*self.all(node["where"]))
        if node.get("group_by"):
            stmt = stmt.group_by(*self.all(node["group_by"]))
        if node.get("having"):
            stmt = stmt.having(*self.all(node["having"]))
        if node.get("order_by"):
            stmt = stmt.order_by(*self.all(node["order_by"]))
        if node.get("distinct"):
            stmt = stmt.distinct()
        if node.get("ext_distinct_on"):
            from sqlalchemy.dialects.postgresql import distinct_on  # 2.1+

            stmt = stmt.ext(distinct_on(*self.all(node["ext_distinct_on"])))
        if node.get("distinct_on"):
            stmt._distinct_on = tuple(self.all(node["distinct_on"]))
            stmt._distinct = True
        if node.get("correlate"):
            stmt = stmt.correlate(*self.all(node["correlate"]))
        if "correlate_except" in node:
            stmt = stmt.correlate_except(*self.all(node["correlate_except"]))
        for cte in self.all(node.get("ctes")):
            stmt = stmt.add_cte(cte)
        if "label_style" in node:
            stmt = stmt.set_label_style(_label_style(node["label_style"]))
        stmt = self._hints_and_prefixes(stmt, node)
        for suffix in node.get("suffixes", ()):
            stmt = stmt.suffix_with(self._prefix(suffix, "a suffix_with()"), dialect=suffix["dialect"] or "*")
        for hint in node.get("statement_hints", ()):
            if hint_renders(hint["dialect"], self._dialect):
                self.info.add_literal_sql(hint["text"], "a with_statement_hint()")
            stmt = stmt.with_statement_hint(hint["text"], dialect_name=hint["dialect"])
        return self._limits(stmt, node)

    def _hints_and_prefixes(self, stmt: Any, node: _Json) -> Any:
        """``with_hint()`` and ``prefix_with()`` of a SELECT, INSERT, UPDATE or DELETE.

        A hint that renders here is structure when it validates (MySQL index hints naming indexes
        of the metadata, PostgreSQL's ``ONLY``: see ``_hints``), raw SQL text otherwise.
        """
        for hint in node.get("hints", ()):
            from_, text, dialect_name = self.visit(hint["from"]), hint["text"], hint["dialect"]
            if from_hint_renders(dialect_name, self._dialect) and not structured_from_hint(
                    from_, text, self._dialect):
                self.info.add_literal_sql(text, f"the with_hint() on {_from_name(from_)} (not an index hint "
                                                "naming indexes the server's metadata has)")
            if isinstance(stmt, sa.Select):
                stmt = stmt.with_hint(from_, text, dialect_name=dialect_name)
            else:
                stmt = stmt.with_hint(text, selectable=from_, dialect_name=dialect_name)
        for prefix in node.get("prefixes", ()):
            stmt = stmt.prefix_with(self._prefix(prefix, "a prefix_with()"), dialect=prefix["dialect"] or "*")
        return stmt

    def _prefix(self, prefix: _Json, origin: str) -> Any:
        """A prefix's or suffix's clause; one for a dialect other than this one is inert."""
        count = len(self.info.literal_sql)
        clause = self.visit(prefix["clause"])
        if hint_renders(prefix["dialect"], self._dialect):
            self.info.literal_sql_origins[count:] = [origin] * (len(self.info.literal_sql) - count)
        else:  # it does not render: not raw SQL the server runs
            del self.info.literal_sql[count:], self.info.literal_sql_origins[count:]
        return clause

    def _limits(self, stmt: Any, node: _Json) -> Any:
        if "limit" in node:
            stmt = stmt.limit(self.visit(node["limit"]))
        if "offset" in node:
            stmt = stmt.offset(self.visit(node["offset"]))
        if "fetch" in node:
            fetch = dict(node["fetch"])
            stmt = stmt.fetch(self.visit(fetch.pop("clause")), **fetch)
        if node.get("for_update"):
            arg = dict(node["for_update"])
            arg["of"] = self.all(arg["of"]) if arg.get("of") else None
            stmt = stmt.with_for_update(**arg)
            self.info.for_update = True
        return stmt

    def compound_select(self, node: _Json) -> Any:
        keyword = _COMPOUND_KEYWORDS.get(node["keyword"])
        if keyword is None:
            raise MalformedStatementError({"keyword": ["unknown set operation"]},
                                          f"Unknown set operation {node['keyword']!r}.")
        stmt: selectable.CompoundSelect[Any] = selectable.CompoundSelect(keyword, *self.all(node["selects"]))
        if node.get("order_by"):
            stmt = stmt.order_by(*self.all(node["order_by"]))
        if node.get("group_by"):
            stmt = stmt.group_by(*self.all(node["group_by"]))
        return self._limits(stmt, node)

    def select_grouping(self, node: _Json) -> Any:
        return selectable.SelectStatementGrouping(self.visit(node["element"]))

    def _target(self, node: _Json) -> Any:
        table = self.visit(node["table"])
        base = table
        while isinstance(base, selectable.Alias):  # UPDATE documents AS documents_1 ...
            base = base.element
        if not isinstance(base, sa.Table):
            raise MalformedStatementError({"table": ["not a table"]},
                                          "The target of an INSERT / UPDATE / DELETE must be a table or its alias.")
        name = base.fullname
        if self.info.write_table not in (None, name):  # the policy judges one write target
            raise UnsupportedStatementError(
                f"The statement writes to {self.info.write_table} and {name}; the DB-API runs "
                "statements that write to one table only - send one statement per table.")
        self.info.write_table = name
        self.info.read_tables.discard(name)
        return table

    def _dml_common(self, stmt: Any, node: _Json) -> Any:
        if node.get("returning"):
            stmt = stmt.returning(*self.all(node["returning"]),
                                  sort_by_parameter_order=node.get("sort_by_parameter_order", False))
        if node.get("return_defaults"):
            stmt = stmt.return_defaults(
                *self.all(node.get("return_defaults_cols")),
                supplemental_cols=self.all(node.get("supplemental_returning")) or None,
                sort_by_parameter_order=node.get("sort_by_parameter_order", False))
        for cte in self.all(node.get("ctes")):
            stmt = stmt.add_cte(cte)
        if node.get("inline"):
            stmt = stmt.inline()
        return self._hints_and_prefixes(stmt, node)

    def _value(self, value: _Json) -> Any:
        if value.get("t") == "value":
            return decode_value(value["v"])  # a placeholder: the value travels processed in params
        return self.visit(value)

    def _values(self, pairs: list[list[Any]]) -> dict[Any, Any]:
        return {key if isinstance(key, str) else self.visit(key): self._value(value) for key, value in pairs}

    def _row(self, row: Any) -> Any:
        """A multi-VALUES row: ``{"pairs": [...]}`` (by column) or ``{"seq": [...]}`` (positional)."""
        if not isinstance(row, Mapping) or not ({"pairs"} == set(row) or {"seq"} == set(row)):
            raise MalformedStatementError({"multi_values": ["bad row"]},
                                          "A multi-VALUES row must be {'pairs': [...]} or {'seq': [...]}.")
        if "pairs" in row:
            return self._values(row["pairs"])
        return tuple(self._value(v) for v in row["seq"])

    def insert(self, node: _Json) -> Any:
        upserts = node.get("on_conflict") or ()
        if upserts:
            from sqlalchemy.dialects import postgresql, sqlite
            module = {"sqlite": sqlite, "postgresql": postgresql}[upserts[0]["dialect"]]
            stmt = module.insert(self._target(node))
        else:
            stmt = sa.insert(self._target(node))
        if node.get("values"):
            stmt = stmt.values(self._values(node["values"]))
        if node.get("multi_values"):
            for batch in node["multi_values"]:
                stmt = stmt.values([self._row(row) for row in batch])
        if "select" in node:
            stmt = stmt.from_select(node["select_names"], self.visit(node["select"]),
                                    include_defaults=node.get("include_defaults", True))
        for upsert in upserts:
            stmt = self._on_conflict(stmt, upsert)
        return self._dml_common(stmt, node)

    def _on_conflict(self, stmt: Any, node: _Json) -> Any:
        kw: dict[str, Any] = {}
        if node.get("index_elements") is not None:
            kw["index_elements"] = [e if isinstance(e, str) else self.visit(e) for e in node["index_elements"]]
        if node.get("index_where") is not None:
            kw["index_where"] = self.visit(node["index_where"])
        if node.get("constraint") is not None:
            kw["constraint"] = node["constraint"]
        if node["kind"] == "do_nothing":
            return stmt.on_conflict_do_nothing(**kw)
        kw["set_"] = self._values(node.get("set") or [])
        if node.get("where") is not None:
            kw["where"] = self.visit(node["where"])
        return stmt.on_conflict_do_update(**kw)

    def update(self, node: _Json) -> Any:
        stmt = sa.update(self._target(node))
        if node.get("values"):
            values = self._values(node["values"])
            stmt = stmt.ordered_values(*values.items()) if node.get("ordered") else stmt.values(values)
        if node.get("where"):
            stmt = stmt.where(*self.all(node["where"]))
        return self._dml_common(stmt, node)

    def delete(self, node: _Json) -> Any:
        stmt = sa.delete(self._target(node))
        if node.get("where"):
            stmt = stmt.where(*self.all(node["where"]))
        for extra in self.all(node.get("extra_froms")):
            stmt._extra_froms += (extra,)
        return self._dml_common(stmt, node)

    def savepoint(self, node: _Json) -> Any:
        return sql_expr.SavepointClause(node["name"])  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy

    def rollback_to_savepoint(self, node: _Json) -> Any:
        return sql_expr.RollbackToSavepointClause(node["name"])  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy

    def release_savepoint(self, node: _Json) -> Any:
        return sql_expr.ReleaseSavepointClause(node["name"])  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy

    def textual_select(self, node: _Json) -> Any:
        return self.visit(node["element"]).columns(*self.all(node["columns"]))

    def text(self, node: _Json) -> Any:
        self.info.add_literal_sql(node["text"], "a text() clause")
        clause = sa.text(node["text"])
        binds = [self.visit(b) for _, b in node.get("binds", ())]
        return clause.bindparams(*binds) if binds else clause

    # -- column expressions -------------------------------------------------------------------
    def col(self, node: _Json) -> Any:
        from_ = self.visit(node["from"])
        if "pos" in node:  # a column whose key is made from an anonymous name (see encode)
            columns = list(from_.c)
            if "key" in node or node["pos"] >= len(columns):
                raise MalformedStatementError({"pos": ["out of range, or given with 'key'"]},
                                              "A column reference names a position its FROM does not have.")
            return columns[node["pos"]]
        if "key" not in node:
            raise MalformedStatementError({"key": ["missing"]}, "A column reference needs 'key' or 'pos'.")
        column = from_.c.get(node["key"])
        if column is None:
            owner = from_.name if isinstance(from_, (sa.Table, selectable.NamedFromClause)) else "?"
            raise UnknownColumnError(f"{str(owner)!r} has no column {node['key']!r} in the server's metadata.")
        if isinstance(from_, sa.Table):
            self.info.columns.add((from_.fullname, node["key"]))
        return column

    def column_clause(self, node: _Json) -> Any:
        literal = node.get("literal", False)
        if literal:
            self.info.add_literal_sql(node["name"], "a literal_column()")
        column = sa.ColumnClause(node["name"], type_=self.type(node.get("type")), is_literal=literal)
        if "from" in node:
            column.table = self.visit(node["from"])
        return column

    def bind(self, node: _Json) -> Any:
        cls = selectable._OffsetLimitParam if node.get("offset_limit") else elements.BindParameter
        if "anon" not in node:
            return cls(node["key"], type_=self.type(node.get("type")), unique=False, required=True,
                       expanding=node.get("expanding", False),
                       literal_execute=node.get("literal_execute", False))
        key = self.name({"anon": node["anon"], "n": node["n"]})
        bind = self._binds.get(key)
        if bind is None:  # distinct client objects with one label are clones: one bind here
            bind = self._binds[key] = cls(key, type_=self.type(node.get("type")), unique=False,
                                          required=True, expanding=node.get("expanding", False),
                                          literal_execute=node.get("literal_execute", False))
            bind.unique = node.get("unique", False)  # set after: unique=True would re-key it
            bind._orig_key = node["anon"]  # a unique bind's clones are re-keyed from its base name
        return bind

    def label(self, node: _Json) -> Any:
        label = elements.Label(None, self.visit(node["element"]), type_=self.type(node.get("type")))
        label.name = self.name(node["name"])
        if not isinstance(node["name"], Mapping):
            label.key = label._tq_label = label._tq_key_label = node["name"]
        return label

    def label_reference(self, node: _Json) -> Any:
        return elements._label_reference(self.visit(node["element"]))

    def textual_label_reference(self, node: _Json) -> Any:
        return elements._textual_label_reference(node["name"])

    def _op(self, value: Any) -> Any:
        if isinstance(value, str):
            return _operators.operator_by_name(value)
        self.info.custom_operators.add(value["custom"])
        return operators.custom_op(
            value["custom"], precedence=value.get("precedence", 0),
            is_comparison=value.get("is_comparison", False),
            natural_self_precedent=value.get("natural_self_precedent", False),
            eager_grouping=value.get("eager_grouping", False),
            return_type=self.type(value.get("return_type")))

    def binary(self, node: _Json) -> Any:
        modifiers = {k: self.visit(v["expr"]) if isinstance(v, Mapping) and "expr" in v else decode_value(v)
                     for k, v in node.get("modifiers", {}).items()}
        cls = elements.IndexExpression if node.get("index") else elements.BinaryExpression
        return cls(self.visit(node["left"]), self.visit(node["right"]), self._op(node["op"]),
                   type_=self.type(node.get("type")),
                   negate=self._op(node["negate"]) if "negate" in node else None,
                   modifiers=modifiers or None)

    def function_as_binary(self, node: _Json) -> Any:
        function = self.visit(node["function"])
        if not isinstance(function, functions.FunctionElement):
            raise MalformedStatementError({"function": ["not a function"]},
                                          "function_as_binary needs a function node.")
        return function.as_comparison(node["left_index"], node["right_index"])

    def _unary_like(self, cls: builtins.type[elements.UnaryExpression[Any]], node: _Json) -> Any:
        obj = cls.__new__(cls)
        elements.UnaryExpression.__init__(
            obj, self.visit(node["element"]),
            operator=self._op(node["op"]) if "op" in node else None,
            modifier=self._op(node["modifier"]) if "modifier" in node else None,
            type_=self.type(node.get("type")))
        return obj

    def unary(self, node: _Json) -> Any:
        return self._unary_like(elements.UnaryExpression, node)

    def exists(self, node: _Json) -> Any:
        return self._unary_like(selectable.Exists, node)

    def collection(self, node: _Json) -> Any:
        return self._unary_like(elements.CollectionAggregate, node)

    def as_boolean(self, node: _Json) -> Any:
        return elements.AsBoolean(self.visit(node["element"]), self._op(node["op"]),  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy
                                  self._op(node["negate"]))

    def clause_list(self, node: _Json) -> Any:
        op = self._op(node["op"]) if "op" in node else operators.comma_op
        return elements.ClauseList(*self.all(node["clauses"]), operator=op,
                                   group=node.get("group", True),
                                   group_contents=node.get("group_contents", True))

    def boolean_list(self, node: _Json) -> Any:
        clauses = elements.BooleanClauseList._construct_raw(self._op(node["op"]), self.all(node["clauses"]))
        clauses.group = node.get("group", True)
        return clauses

    def expression_list(self, node: _Json) -> Any:
        clauses = elements.ExpressionClauseList(self._op(node["op"]), *self.all(node["clauses"]),
                                                type_=self.type(node.get("type")))
        clauses.group = node.get("group", True)
        return clauses

    def grouping(self, node: _Json) -> Any:
        return elements.Grouping(self.visit(node["element"]))

    def from_grouping(self, node: _Json) -> Any:
        return selectable.FromGrouping(self.visit(node["element"]))

    def scalar_select(self, node: _Json) -> Any:
        scalar = self.visit(node["element"]).scalar_subquery()
        self._retype(scalar, node)
        return scalar

    def cast(self, node: _Json) -> Any:
        return sa.cast(self.visit(node["element"]), self.type(node.get("type")))

    def type_coerce(self, node: _Json) -> Any:
        return sa.type_coerce(self.visit(node["element"]), self.type(node.get("type")))

    def case(self, node: _Json) -> Any:
        whens = [(self.visit(c), self.visit(r)) for c, r in node["whens"]]
        case = sa.case(*whens, value=self.opt(node.get("value")), else_=self.opt(node.get("else")))
        self._retype(case, node)
        return case

    def over(self, node: _Json) -> Any:
        frames: dict[str, Any] = {attr: tuple(node[key]) for key, attr in (("rows", "rows"), ("range", "range_"),
                                                           ("groups", "groups")) if key in node}
        return elements.Over(self.visit(node["element"]), partition_by=_items(self.opt(node.get("partition_by"))),
                             order_by=_items(self.opt(node.get("order_by"))), **frames)

    def funcfilter(self, node: _Json) -> Any:
        return elements.FunctionFilter(self.visit(node["func"]), self.visit(node["criterion"]))

    def within_group(self, node: _Json) -> Any:
        return elements.WithinGroup(self.visit(node["element"]), *_items(self.opt(node.get("order_by"))))

    def extract(self, node: _Json) -> Any:
        field = node["field"]
        if not (isinstance(field, str) and field.isidentifier() and len(field) <= 32):
            raise MalformedStatementError({"field": ["not a field name"]}, f"Bad EXTRACT field {field!r}.")
        return sa.extract(field, self.visit(node["expr"]))

    def function(self, node: _Json) -> Any:
        name = node["name"]
        packages = node.get("packages") or []
        self.info.functions.add(".".join([*packages, name]).lower())
        args = self.all(node["args"])
        # as sqlalchemy's func generator does it, but from the registry only: no attribute
        # lookups driven by the wire
        registered = functions._registry[packages[0] if packages else "_default"].get(name.lower())
        if registered is not None and len(packages) <= 1:
            fn = registered(*args)
        else:
            fn = functions.Function(name, *args, packagenames=tuple(packages))
        self._retype(fn, node)
        return fn

    def tuple(self, node: _Json) -> Any:
        tup = elements.Tuple(*self.all(node["clauses"]))
        self._retype(tup, node)
        return tup

    def null(self, _: _Json) -> Any:
        return sa.null()

    def true(self, _: _Json) -> Any:
        return sa.true()

    def false(self, _: _Json) -> Any:
        return sa.false()


def _items(clause: Any) -> list[Any]:
    """The members of a ClauseList the constructor will wrap again, or the single element."""
    if clause is None:
        return []
    if isinstance(clause, elements.ClauseList):
        return list(clause.clauses)
    return [clause]


def _expect(element: Any, kind: type | tuple[type, ...], node: str, what: str) -> Any:
    """*element* if it is of *kind*: a node built from another place of the grammar is refused
    here, instead of crashing SQLAlchemy's compiler later (a 500)."""
    if not isinstance(element, kind):
        raise MalformedStatementError({node: [f"needs {what}"]}, f"A {node!r} node needs {what} here.")
    return element


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _index_definitions(document: Any) -> dict[int, _Json]:
    """Every node that carries an ``"@"`` id, by id (references may precede definitions)."""
    found: dict[int, _Json] = {}
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            if "@" in value and not _is_id(value["@"]):
                raise MalformedStatementError({"@": ["not a node id"]}, "A node id must be an integer.")
            if "@" in value and value.get("t") != "ref":
                if value["@"] in found:  # the encoder defines each id once; a second one would be
                    # shadowed by the first wherever it is referenced
                    raise MalformedStatementError({"@": ["defined twice"]}, "A node id is defined twice.")
                found[value["@"]] = value
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return found


# names from the wire are looked up in explicit maps only, never with getattr (which would also
# find "__class__", methods and anything else the class happens to have)
_COMPOUND_KEYWORDS: dict[str, Any] = {kw.name: kw for kw in selectable._CompoundSelectKeyword}
_LABEL_STYLES: dict[str, selectable.SelectLabelStyle] = {style.name: style for style in selectable.SelectLabelStyle}


def _label_style(name: str) -> Any:
    style = _LABEL_STYLES.get(name) if isinstance(name, str) else None
    if style is None:
        raise MalformedStatementError({"label_style": ["unknown label style"]},
                                      f"Unknown label style {name!r}; known: {', '.join(sorted(_LABEL_STYLES))}.")
    return style


_DECODERS: dict[str, Callable[[StatementDecoder, _Json], Any]] = {
    name: getattr(StatementDecoder, name)
    for name in (
        "table", "alias", "subquery", "cte", "lateral", "join", "select", "compound_select",
        "select_grouping", "insert", "update", "delete", "savepoint", "rollback_to_savepoint",
        "release_savepoint", "text", "textual_select", "col", "column_clause", "bind", "label", "label_reference",
        "textual_label_reference", "binary", "function_as_binary", "unary", "exists", "collection", "as_boolean", "clause_list", "boolean_list",
        "expression_list", "grouping", "from_grouping", "scalar_select", "cast", "type_coerce",
        "case", "over", "funcfilter", "within_group", "extract", "function", "tuple", "null",
        "true", "false",
    )
}
NODE_TYPES = frozenset(_DECODERS) | {"ref"}


def _from_name(from_: Any) -> str:
    """How a refusal names a hinted FROM: its table's (or alias's) name."""
    name = getattr(from_, "fullname", None) or getattr(from_, "name", None)
    return repr(str(name)) if isinstance(name, str) else "a FROM"


def from_wire(document: _Json, metadata: sa.MetaData, types: TypeResolver | None = None,
              *, validate: bool = True, dialect: sa.Dialect | None = None) -> tuple[Any, StatementInfo]:
    """Validate and rebuild a wire document; returns the statement and what it touches.

    *dialect* is the server's: a hint or prefix that does not render there is no raw SQL for the
    policy (``None``: every hint and prefix counts).

    DDL and driver SQL (see :mod:`query_translation.driver_sql`) come back as a
    :class:`~query_translation.driver_sql.DriverSQL`, their ``StatementInfo.kind`` naming them.
    """
    node = document.get("statement") if isinstance(document, Mapping) else None
    if isinstance(node, Mapping) and node.get("t") in DRIVER_SQL_KINDS:
        if document.get("version") != WIRE_VERSION:
            raise WireVersionError(f"The statement uses wire version {document.get('version')!r}; this server speaks version {WIRE_VERSION}. Upgrade the older side.")
        text = parse_driver_sql(node)
        return text, StatementInfo(kind=text.kind, literal_sql=[text.sql], literal_sql_origins=[text.kind])
    if validate:
        validate_document(document)
    version = document.get("version")
    if version != WIRE_VERSION:
        raise WireVersionError(f"The statement uses wire version {version!r}; this server speaks version {WIRE_VERSION}. Upgrade the older side.")
    decoder = StatementDecoder(metadata, types or TypeResolver(metadata), dialect)
    statement = decoder.decode(document["statement"])
    return statement, decoder.info
