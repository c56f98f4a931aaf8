"""The request bodies of ``POST /execute`` and ``POST /batch``, declared once.

Each body is a :class:`Shape`: its :class:`Field` s, each with its JSON type and its bounds. The
same declaration is

* the validator: :meth:`Shape.validate` checks a parsed body and returns the fields' values (the
  request pipeline, :mod:`dbapi_server.pipeline`, builds its parsed request objects from them), and
* the OpenAPI source: :meth:`Shape.openapi` renders the JSON Schema that
  :mod:`dbapi_server.openapi` serves as ``ExecuteRequest`` and ``BatchRequest``.

What the declaration checks is the request's own shape; the statement document (``stmt``) and the
values (``params``) are validated where they are decoded (``query_translation``), so a field may
carry the OpenAPI description of that deeper validation in ``schema``. A JSON ``null`` is the same
as an absent field (a client may send either). Error answers: ``400 malformed_request``, with the
messages clients and tests know (``The request needs the field 'sql'.``...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import APIError
from .executor import _FORWARDED_OPTIONS

__all__ = ["BATCH_ITEM", "BATCH_REQUEST", "EXECUTE_REQUEST", "FINISH_REQUEST", "MAX_BATCH_STATEMENTS",
           "MAX_PAGE_ROWS", "Field", "Shape"]

MAX_PAGE_ROWS = 100_000  # the largest page of a streamed result (``stream``)
MAX_BATCH_STATEMENTS = 1000

# JSON type name of each Python type a field may hold (bool is not an integer here)
_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", bool: "boolean", list: "array", dict: "object"}


@dataclass(frozen=True)
class Field:
    """One member of a request body."""

    name: str
    kind: type  # str, int, bool, list or dict
    required: bool = False
    required_message: str | None = None  # the refusal when it is missing (default: "needs the field")
    required_unless: str | None = None  # required unless this field (declared before it) is given
    description: str | None = None
    pattern: str | None = None  # strings: the whole value matches it
    pattern_message: str | None = None  # the refusal when it does not
    minimum: int | None = None  # integers
    maximum: int | None = None
    bounds_message: str | None = None  # the refusal of a value out of [minimum, maximum]
    items: type | None = None  # arrays: each item's type, checked
    items_message: str | None = None
    min_items: int | None = None  # arrays: length bounds, checked
    max_items: int | None = None
    length_message: str | None = None
    nullable: bool = False  # said so in the OpenAPI document (``null`` is accepted for every field)
    schema: Mapping[str, Any] | None = None  # OpenAPI detail validated elsewhere (items, properties)
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _plain: bool = field(default=True, init=False, repr=False, compare=False)  # a type, no bounds

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_regex", re.compile(self.pattern))
        bounds = (self.pattern, self.minimum, self.maximum, self.items, self.min_items, self.max_items)
        object.__setattr__(self, "_plain", all(bound is None for bound in bounds))

    def check(self, value: Any) -> Any:
        """*value* if it fits (None: absent), else ``APIError`` (400 malformed_request)."""
        if value is None:
            if self.required:
                raise APIError(self.required_message or f"The request needs the field {self.name!r}.",
                               code="malformed_request")
            return None
        kind = self.kind
        if type(value) is not kind and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise APIError(f"The field {self.name!r} has the wrong type.", code="malformed_request")
        return value if self._plain else self._check_bounds(value)

    def _check_bounds(self, value: Any) -> Any:
        if self._regex is not None and not self._regex.fullmatch(value):
            raise APIError(self.pattern_message or f"The field {self.name!r} has the wrong form.",
                           code="malformed_request")
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise APIError(self.bounds_message or f"The field {self.name!r} is out of bounds.",
                           code="malformed_request")
        if (self.min_items is not None and len(value) < self.min_items) or (
                self.max_items is not None and len(value) > self.max_items):
            raise APIError(self.length_message or f"The field {self.name!r} has the wrong length.",
                           code="malformed_request")
        if self.items is not None and not all(isinstance(item, self.items) for item in value):
            raise APIError(self.items_message or f"The field {self.name!r} holds an item of the wrong type.",
                           code="malformed_request")
        return value

    def openapi(self) -> dict[str, Any]:
        if self.schema is not None and "$ref" in self.schema:
            return dict(self.schema)
        json_type: Any = _JSON_TYPES[self.kind]
        out: dict[str, Any] = {"type": [json_type, "null"] if self.nullable else json_type}
        if self.pattern is not None:
            out["pattern"] = f"^{self.pattern}$"
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.items is not None:
            out["items"] = {"type": _JSON_TYPES[self.items]}
        if self.min_items is not None:
            out["minItems"] = self.min_items
        if self.max_items is not None:
            out["maxItems"] = self.max_items
        out.update(self.schema or {})
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Shape:
    """A request body: a JSON object of :class:`Field` s (others are ignored: later versions add some)."""

    name: str  # its OpenAPI component's name
    fields: tuple[Field, ...]

    def validate(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The fields' values by name (None for absent), in declaration order; or ``APIError``."""
        get = body.get
        values: dict[str, Any] = {}
        for item in self.fields:
            value = get(item.name)
            if value is None and item.required_unless is not None and values[item.required_unless] is None:
                raise APIError(f"The request needs the field {item.name!r}.", code="malformed_request")
            values[item.name] = item.check(value)
        return values

    def __getitem__(self, name: str) -> Field:
        for item in self.fields:
            if item.name == name:
                return item
        raise KeyError(name)

    def openapi(self) -> dict[str, Any]:
        """The body's JSON Schema (OpenAPI 3.1)."""
        own: dict[str, Any] = {"type": "object", "properties": {f.name: f.openapi() for f in self.fields},
                               "required": [f.name for f in self.fields if f.required],
                               "additionalProperties": True}
        either = [(f.name, f.required_unless) for f in self.fields if f.required_unless is not None]
        if either:
            own["anyOf"] = [{"required": [name]} for pair in either for name in pair]
        return own


#: a transaction id: what the commit URL, the balancer's hash and the outcome table key exactly
TXN_ID = r"[A-Za-z0-9_-]{1,128}"
TXN_ID_RE = re.compile(TXN_ID)
_TXN_MESSAGE = "'txn' must be 1 to 128 letters, digits, '-' or '_' (a random UUID is best)."

# what one statement of a request carries (``/execute``'s body, an item of a batch)
_STATEMENT = (
    Field("stmt_hash", str, pattern="[0-9a-f]{64}",
          pattern_message="'stmt_hash' is the statement document's SHA-256, in lowercase hex.",
          description="SHA-256 of the document; alone, it names a document the server holds "
                      "(409 unknown_statement if it does not)"),
    Field("stmt", dict, required_unless="stmt_hash", schema={"$ref": "#/components/schemas/StatementDocument"}),
    Field("sql", str, required=True, description="fingerprint of the SQL the client compiled"),
    Field("params", list, description="parameter sets: bind name -> value",
          schema={"items": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Value"}}}),
    Field("many", bool),
    Field("options", dict, description="execution options; only the listed ones are honoured",
          schema={"properties": {k: {} for k in _FORWARDED_OPTIONS}}),
    Field("keys", list, items=str, items_message="'keys' must be a list of column key strings."),
)

EXECUTE_REQUEST = Shape("ExecuteRequest", (
    *_STATEMENT,
    Field("txn", str, pattern=TXN_ID, pattern_message=_TXN_MESSAGE),
    Field("seq", int, description="required with txn"),
    Field("begin", bool),
    Field("stream", int, minimum=1, maximum=MAX_PAGE_ROWS,
          bounds_message=f"'stream' is a page size from 1 to {MAX_PAGE_ROWS}, for single executions."),
))

# an item of a batch: a statement (never streamed; a transaction's fields are the batch's)
BATCH_ITEM = Shape("BatchStatement", (
    *_STATEMENT,
    Field("expect", int, nullable=True, description="the row count the statement must match, or null for no check"),
))

BATCH_REQUEST = Shape("BatchRequest", (
    Field("txn", str, required=True, required_message="A batch runs in a transaction: send 'txn' and 'seq'.",
          pattern=TXN_ID, pattern_message=_TXN_MESSAGE),
    Field("seq", int, required=True),
    Field("begin", bool),
    Field("commit", bool),
    Field("statements", list, required=True, items=dict, items_message="Each batch statement is a JSON object.",
          min_items=1, max_items=MAX_BATCH_STATEMENTS,
          length_message=f"'statements' holds 1 to {MAX_BATCH_STATEMENTS} statements.",
          schema={"items": BATCH_ITEM.openapi()}),
))

# ``POST /transactions/<id>/commit`` (or ``rollback``): the body is optional
FINISH_REQUEST = Shape("FinishRequest", (
    Field("seq", int, description="the number of this request in the transaction; a commit that does not "
                                  "follow the last request held here is refused (409 out_of_order)"),
))
