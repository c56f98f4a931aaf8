"""marshmallow schemas for wire documents.

Every node kind has a schema listing exactly its fields (unknown keys are errors); node-valued
fields dispatch on the nested node's ``"t"``. Validation runs before decoding, reports every
problem at once keyed by path, and rejects an unknown node kind by name. Nesting depth is checked
iteratively first, so a hostile document cannot exhaust the interpreter's stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from .exceptions import MalformedStatementError, UnknownNodeError

__all__ = ["MAX_DEPTH", "NODE_SPECS", "validate_document"]

MAX_DEPTH = 100  # JSON levels; marshmallow needs ~6 frames a level


class _Node(fields.Field):  # type: ignore[type-arg]  # generic only in marshmallow 4
    """A nested node: dispatches on ``"t"`` to that kind's schema."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValidationError("Expected a node object.")
        kind = value.get("t")
        if not isinstance(kind, str):
            raise ValidationError("A node needs a string field 't'.")
        schema = _SCHEMAS.get(kind)
        if schema is None:
            raise UnknownNodeError(kind)
        return schema.load(value)


class _Name(fields.Field):  # type: ignore[type-arg]  # generic only in marshmallow 4
    """A plain name or ``{"anon": base}``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if (isinstance(value, Mapping) and set(value) == {"anon", "n"} and isinstance(value["anon"], str)
                and type(value["n"]) is int and value["n"] > 0):
            return value
        raise ValidationError("Expected a name: a string or {'anon': string, 'n': positive int}.")


class _Op(fields.Field):  # type: ignore[type-arg]  # generic only in marshmallow 4
    """An operator name or a custom operator object."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping) and isinstance(value.get("custom"), str):
            return value
        raise ValidationError("Expected an operator name or {'custom': opstring, ...}.")


class _StrictBool(fields.Field):  # type: ignore[type-arg]  # generic only in marshmallow 4
    """Exactly JSON true / false: no "false" strings or 1s that a decoder would read as true."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if type(value) is not bool:
            raise ValidationError("Expected true or false.")
        return value


def _bool() -> fields.Field[Any]:
    return _StrictBool()


def _int(**kw: Any) -> fields.Field[Any]:
    return fields.Int(strict=True, **kw)


def _frame() -> fields.Field[Any]:
    """A window frame ``[lower, upper]``: null (unbounded) or an integer offset (0: current row)."""
    return fields.List(_int(allow_none=True, validate=validate.Range(min=-1_000_000, max=1_000_000)),
                       validate=validate.Length(equal=2))


def _node(**kw: Any) -> fields.Field[Any]:
    return _Node(**kw)


def _nodes(**kw: Any) -> fields.Field[Any]:
    return fields.List(_Node(), **kw)


_TYPE = fields.Dict(allow_none=True, load_default=None)


def _dml(**spec: Any) -> dict[str, Any]:
    """Fields every INSERT / UPDATE / DELETE node may carry, plus *spec*."""
    return {"table": _node(required=True), "returning": _nodes(), "return_defaults": _bool(),
            "return_defaults_cols": _nodes(), "supplemental_returning": _nodes(), "ctes": _nodes(),
            "sort_by_parameter_order": _bool(), "inline": _bool(), **_HINTS, **spec}
_PAIRS = fields.List(fields.List(fields.Raw(), validate=validate.Length(equal=2)))

class _OnConflictSchema(Schema):
    """``INSERT ... ON CONFLICT`` of SQLite's / PostgreSQL's ``insert()`` (upsert)."""

    dialect = fields.Str(required=True, validate=validate.OneOf(["sqlite", "postgresql"]))
    kind = fields.Str(required=True, validate=validate.OneOf(["do_update", "do_nothing"]))
    index_elements = fields.List(fields.Raw())  # a column name (str) or a node
    index_where = _Node()
    constraint = fields.Str()
    set = _PAIRS
    where = _Node()

    class Meta:
        unknown = RAISE


class _ForUpdateSchema(Schema):
    """``FOR UPDATE`` options: flags, and the tables of ``OF`` (each becomes a keyword argument of
    ``with_for_update()``, so nothing else may arrive here)."""

    nowait = _bool()
    read = _bool()
    skip_locked = _bool()
    key_share = _bool()
    of = fields.List(_Node(), allow_none=True)

    class Meta:
        unknown = RAISE


class _FetchSchema(Schema):
    """``FETCH FIRST``: its count, and the two flags of ``fetch()``."""

    clause = _Node(required=True)
    percent = _bool()
    with_ties = _bool()

    class Meta:
        unknown = RAISE


class _JoinSchema(Schema):
    """One ``select().join()`` / ``join_from()`` of a SELECT."""

    target = _Node(required=True)
    on = _Node(allow_none=True)
    from_ = _Node(allow_none=True, data_key="from")
    outer = _bool()
    full = _bool()

    class Meta:
        unknown = RAISE


# only ever compared with the server dialect's name, never rendered
_DIALECT = fields.Str(required=True, allow_none=True, validate=validate.Length(max=100))


class _HintSchema(Schema):
    """``with_hint()``: the hinted FROM, the dialect it is for, its text (judged by the decoder)."""

    from_ = _Node(required=True, data_key="from")
    dialect = _DIALECT
    text = fields.Str(required=True, validate=validate.Length(max=10_000))

    class Meta:
        unknown = RAISE


class _StatementHintSchema(Schema):
    """``with_statement_hint()``: raw SQL text where it renders."""

    dialect = _DIALECT
    text = fields.Str(required=True, validate=validate.Length(max=10_000))

    class Meta:
        unknown = RAISE


class _PrefixSchema(Schema):
    """``prefix_with()`` / ``suffix_with()``: a clause (usually text) and the dialect it is for."""

    clause = _Node(required=True)
    dialect = _DIALECT

    class Meta:
        unknown = RAISE


_HINTS = {"hints": fields.List(fields.Nested(_HintSchema)), "prefixes": fields.List(fields.Nested(_PrefixSchema))}

# field specs per node kind; "t" and "@" are implied
NODE_SPECS: dict[str, dict[str, Any]] = {
    "ref": {},
    "table": {"name": fields.Str(required=True), "schema": fields.Str()},
    "alias": {"element": _node(required=True), "name": _Name(required=True)},
    "subquery": {"element": _node(required=True), "name": _Name(required=True)},
    "lateral": {"element": _node(required=True), "name": _Name(required=True)},
    "cte": {"element": _node(required=True), "name": _Name(required=True),
            "recursive": _bool(), "nesting": _bool(), "alias_of": _node(),
            "restates": _node()},
    "join": {"left": _node(required=True), "right": _node(required=True),
             "on": _node(allow_none=True), "outer": _bool(), "full": _bool()},
    "select": {"cols": _nodes(required=True), "froms": _nodes(), "where": _nodes(),
               "group_by": _nodes(), "having": _nodes(), "order_by": _nodes(),
               "distinct_on": _nodes(), "ext_distinct_on": _nodes(), "correlate": _nodes(), "correlate_except": _nodes(),
               "ctes": _nodes(), "distinct": _bool(), "joins": fields.List(fields.Nested(_JoinSchema)),
               "label_style": fields.Str(), "limit": _node(), "offset": _node(),
               "fetch": fields.Nested(_FetchSchema), "for_update": fields.Nested(_ForUpdateSchema), **_HINTS,
               "suffixes": fields.List(fields.Nested(_PrefixSchema)),
               "statement_hints": fields.List(fields.Nested(_StatementHintSchema))},
    "compound_select": {"keyword": fields.Str(required=True), "selects": _nodes(required=True),
                        "order_by": _nodes(), "group_by": _nodes(), "limit": _node(),
                        "offset": _node(), "fetch": fields.Nested(_FetchSchema), "for_update": fields.Nested(_ForUpdateSchema)},
    "select_grouping": {"element": _node(required=True)},
    "insert": _dml(values=_PAIRS, multi_values=fields.List(fields.List(fields.Raw())),
                   select=_node(), select_names=fields.List(fields.Str()), include_defaults=_bool(),
                   on_conflict=fields.List(fields.Nested(_OnConflictSchema))),
    "update": _dml(values=_PAIRS, ordered=_bool(), where=_nodes()),
    "delete": _dml(where=_nodes(), extra_froms=_nodes()),
    "savepoint": {"name": fields.Str(required=True)},
    "rollback_to_savepoint": {"name": fields.Str(required=True)},
    "release_savepoint": {"name": fields.Str(required=True)},
    "text": {"text": fields.Str(required=True), "binds": fields.List(fields.List(fields.Raw()))},
    "textual_select": {"element": _node(required=True), "columns": _nodes(required=True)},
    "col": {"from": _node(required=True), "key": fields.Str(), "pos": _int(validate=validate.Range(min=0, max=100_000))},
    "column_clause": {"name": fields.Str(required=True), "literal": _bool(), "from": _node(),
                      "type": _TYPE},
    "bind": {"key": fields.Str(required=True), "anon": fields.Str(), "n": _int(validate=validate.Range(min=1)),
             "unique": _bool(), "expanding": _bool(),
             "literal_execute": _bool(), "offset_limit": _bool(), "type": _TYPE},
    "label": {"name": _Name(required=True), "element": _node(required=True), "type": _TYPE},
    "label_reference": {"element": _node(required=True)},
    "textual_label_reference": {"name": fields.Str(required=True)},
    "binary": {"op": _Op(required=True), "left": _node(required=True), "right": _node(required=True),
               "negate": _Op(), "modifiers": fields.Dict(), "index": _bool(), "type": _TYPE},
    "function_as_binary": {"function": _node(required=True),
                           "left_index": _int(required=True, validate=validate.Range(min=1, max=1000)),
                           "right_index": _int(required=True, validate=validate.Range(min=1, max=1000))},
    "unary": {"element": _node(required=True), "op": _Op(), "modifier": _Op(), "type": _TYPE},
    "exists": {"element": _node(required=True), "op": _Op(), "modifier": _Op(), "type": _TYPE},
    "collection": {"element": _node(required=True), "op": _Op(), "modifier": _Op(), "type": _TYPE},
    "as_boolean": {"element": _node(required=True), "op": _Op(required=True),
                   "negate": _Op(required=True), "type": _TYPE},
    "clause_list": {"clauses": _nodes(required=True), "op": _Op(), "group": _bool(),
                    "group_contents": _bool()},
    "boolean_list": {"op": _Op(required=True), "clauses": _nodes(required=True), "group": _bool(),
                     "type": _TYPE},
    "expression_list": {"op": _Op(required=True), "clauses": _nodes(required=True), "group": _bool(),
                        "type": _TYPE},
    "grouping": {"element": _node(required=True)},
    "from_grouping": {"element": _node(required=True)},
    "scalar_select": {"element": _node(required=True), "type": _TYPE},
    "cast": {"element": _node(required=True), "type": _TYPE},
    "type_coerce": {"element": _node(required=True), "type": _TYPE},
    "case": {"whens": fields.List(fields.List(_Node(), validate=validate.Length(equal=2)), required=True),
             "value": _node(), "else": _node(), "type": _TYPE},
    "over": {"element": _node(required=True), "partition_by": _node(allow_none=True),
             "order_by": _node(allow_none=True), "rows": _frame(), "range": _frame(), "groups": _frame()},
    "funcfilter": {"func": _node(required=True), "criterion": _node(required=True)},
    "within_group": {"element": _node(required=True), "order_by": _node(allow_none=True)},
    # rendered verbatim by the compiler (EXTRACT(<field> FROM ...)): a bare word only
    "extract": {"field": fields.Str(required=True, validate=validate.Regexp(r"^[A-Za-z_]{1,32}$")),
                "expr": _node(required=True)},
    # identifiers only, and never underscore-led (no dunders reaching Python objects)
    "function": {"name": fields.Str(required=True, validate=validate.Regexp(r"^[A-Za-z][A-Za-z0-9_]*$")),
                 "packages": fields.List(fields.Str(validate=validate.Regexp(r"^[A-Za-z][A-Za-z0-9_]*$"))),
                 "args": _nodes(required=True), "type": _TYPE},
    "tuple": {"clauses": _nodes(required=True), "type": _TYPE},
    "null": {}, "true": {}, "false": {},
}


def _check_key_or_pos(self: Schema, data: Mapping[str, Any], **kw: Any) -> None:
    """A ``col`` names its column by ``key`` or (anonymous keys) by ``pos``: exactly one."""
    if "key" not in data and "pos" not in data:
        raise ValidationError({"key": ["Missing data for required field."]})
    if "key" in data and "pos" in data:
        raise ValidationError({"pos": ["Give 'key' or 'pos', not both."]})


def _schema_for(kind: str, spec: Mapping[str, Any]) -> Schema:
    attrs: dict[str, Any] = {"t": fields.Str(required=True, validate=validate.Equal(kind)),
                             "@": _int(data_key="@", attribute="ref_id"),
                             "al": _Name(data_key="al", attribute="implicit_label"),
                             **dict(spec)}

    class Meta:
        unknown = RAISE

    attrs["Meta"] = Meta
    if kind == "col":
        attrs["_one_of_key_pos"] = validates_schema(_check_key_or_pos)
    schema_cls = cast("type[Schema]", type(f"{kind.title().replace('_', '')}NodeSchema", (Schema,), attrs))
    return schema_cls()


_SCHEMAS: dict[str, Schema] = {kind: _schema_for(kind, spec) for kind, spec in NODE_SPECS.items()}
_SCHEMAS["ref"] = _schema_for("ref", {"@": _int(data_key="@", attribute="ref_id", required=True)})


class DocumentSchema(Schema):
    """The envelope: ``{"version": int, "statement": node}``."""

    version = _int(required=True)
    statement = _Node(required=True)

    class Meta:
        unknown = RAISE


_DOCUMENT = DocumentSchema()


def _depth(document: Any) -> int:
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                break
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return deepest


def validate_document(document: Any) -> None:
    """Raise :class:`MalformedStatementError` (all problems, by path) or :class:`UnknownNodeError`."""
    if _depth(document) > MAX_DEPTH:
        raise MalformedStatementError({"statement": ["too deep"]}, f"The statement is nested more than {MAX_DEPTH} levels deep.")
    try:
        _DOCUMENT.load(document)
    except ValidationError as exc:
        raise MalformedStatementError(exc.normalized_messages(), "The statement document is malformed.") from None  # type: ignore[no-untyped-call]  # untyped in marshmallow
