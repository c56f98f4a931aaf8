"""JSON Schema (2020-12) of the wire format, derived from the marshmallow schemas and value codec.

The OpenAPI description of the DB-API embeds these definitions. They are *built* from
``schemas.NODE_SPECS`` and ``values.DECODERS`` rather than written by hand, so a node kind, a node
field or a value tag added to the codec appears in the description without anyone remembering
to. The JSON Schema is a description, not the validator: validation stays with marshmallow,
which also checks what JSON Schema cannot say (operators, names resolved against metadata).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import fields, validate

from . import schemas
from .values import DECODERS

__all__ = ["wire_schema_definitions"]

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _validated(schema: dict[str, Any], field: fields.Field[Any]) -> dict[str, Any]:
    """*schema* narrowed by the field's Regexp / Range / Length validators."""
    for validator in field.validators:
        if isinstance(validator, validate.Regexp):
            schema["pattern"] = validator.regex.pattern
        elif isinstance(validator, validate.Range):
            if validator.min is not None:
                schema["minimum"] = validator.min
            if validator.max is not None:
                schema["maximum"] = validator.max
        elif isinstance(validator, validate.Length) and validator.equal is not None:
            schema["minItems"] = schema["maxItems"] = validator.equal
    return schema


def _field_schema(field: fields.Field[Any]) -> dict[str, Any]:
    """The JSON Schema of one marshmallow field of a node schema."""
    schema: dict[str, Any]
    if isinstance(field, schemas._Node):
        schema = _ref("Node")
    elif isinstance(field, schemas._Name):
        schema = _ref("Name")
    elif isinstance(field, schemas._Op):
        schema = _ref("Operator")
    elif isinstance(field, schemas._StrictBool):
        schema = {"type": "boolean"}
    elif isinstance(field, fields.Integer):
        schema = {"type": "integer"}
    elif isinstance(field, fields.String):
        schema = {"type": "string"}
    elif isinstance(field, fields.List):
        schema = {"type": "array", "items": _field_schema(field.inner)}
    elif isinstance(field, fields.Nested):  # an object of its own fields (an upsert, a hint, a prefix)
        schema = _object_schema(field.schema.fields)
    elif isinstance(field, fields.Dict):
        schema = {"type": "object"}
    else:  # fields.Raw: any JSON (a value or a node, told apart by the decoder)
        schema = {}
    schema = _validated(schema, field)
    if field.allow_none and schema:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def _object_schema(spec: Mapping[str, Any], properties: dict[str, Any] | None = None,
                   required: list[str] | None = None) -> dict[str, Any]:
    properties, required = dict(properties or {}), list(required or [])
    for name, field in spec.items():
        key = field.data_key or name
        properties[key] = _field_schema(field)
        if field.required:
            required.append(key)
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


def _node_schema(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _object_schema(spec, {"t": {"const": kind}, "@": {"type": "integer"}, "al": _ref("Name")},
                          ["t"] if kind != "ref" else ["t", "@"])


def _value_schema() -> dict[str, Any]:
    tagged = [{"type": "object", "required": [tag], "properties": {tag: {}},
               "additionalProperties": False} for tag in sorted(DECODERS)]
    return {"description": "A typed value: plain JSON for null, booleans, strings, int64 integers, "
                           "finite floats and lists; otherwise an object with exactly one '$tag' key.",
            "anyOf": [{"type": ["null", "boolean", "string", "number"]},
                      {"type": "array", "items": _ref("Value")}, *tagged]}


def wire_schema_definitions() -> dict[str, Any]:
    """Named JSON Schemas of the statement document, its nodes and typed values.

    References point into ``#/components/schemas/`` (the OpenAPI layout); one definition per node
    kind is named ``Node_<kind>``.
    """
    nodes = {f"Node_{kind}": _node_schema(kind, spec) for kind, spec in schemas.NODE_SPECS.items()}
    return {
        "StatementDocument": {
            "type": "object", "required": ["version", "statement"], "additionalProperties": False,
            "properties": {"version": {"type": "integer"}, "statement": _ref("Node")},
        },
        "Node": {"description": "A statement node; 't' names its kind (docs/wire-format.md, node catalogue).",
                 "oneOf": [_ref(name) for name in nodes],
                 "discriminator": {"propertyName": "t",
                                   "mapping": {name.removeprefix("Node_"): _REF + name for name in nodes}}},
        "Name": {"anyOf": [{"type": "string"},
                           {"type": "object", "required": ["anon", "n"], "additionalProperties": False,
                            "properties": {"anon": {"type": "string"},
                                           "n": {"type": "integer", "minimum": 1}}}]},
        "Operator": {"anyOf": [{"type": "string", "description": "a name in sqlalchemy.sql.operators"},
                               {"type": "object", "required": ["custom"],
                                "properties": {"custom": {"type": "string"}}}]},
        "Value": _value_schema(),
        **nodes,
    }

