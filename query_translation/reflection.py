"""Reflection results on the wire: what a dialect's inspection methods return, as JSON.

``Inspector`` / ``MetaData.reflect()`` call the dialect's reflection methods (``get_columns``,
``get_multi_indexes``, ``get_table_names``...). On the client those read the database's catalog,
which an isolated client cannot reach; the DB-API runs them with its own dialect and answers with
their results (``dbapi_server.reflection``). The results are lists and dicts of builtins, tuples
(index sorting, the ``(schema, name)`` keys of ``get_multi_*``) and SQL type objects: tuples travel
as ``{"$t": [...]}``, types as ``{"$type": "<module>.<class>", "k": {...}}`` - constructor
arguments that differ from their defaults, themselves encoded the same way. A type is rebuilt only
from SQLAlchemy's own type classes (found by walking ``TypeEngine``'s subclasses, never imported by
name); anything else becomes ``NullType``, as SQLAlchemy's own reflection does for a type it does
not know.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Mapping
from typing import Any

from sqlalchemy import types as sqltypes
from sqlalchemy.types import TypeEngine

from .exceptions import MalformedValueError
from .type_codec import _same

__all__ = ["REFLECTION_METHODS", "decode_reflected", "encode_reflected"]

# method name -> positional parameter names after the connection (all others are keywords)
REFLECTION_METHODS: Mapping[str, tuple[str, ...]] = {
    "get_table_names": ("schema",),
    "get_view_names": ("schema",),
    "has_index": ("table_name", "index_name", "schema"),
    **{name: ("table_name", "schema") for name in (
        "get_columns", "get_pk_constraint", "get_foreign_keys", "get_indexes", "get_unique_constraints",
        "get_check_constraints", "get_table_comment", "get_table_options")},
    **{name: () for name in (
        "get_multi_columns", "get_multi_pk_constraint", "get_multi_foreign_keys", "get_multi_indexes",
        "get_multi_unique_constraints", "get_multi_check_constraints", "get_multi_table_comment",
        "get_multi_table_options")},
}

_SIMPLE = (str, int, float, bool, type(None))
_MAX_DEPTH = 32


def encode_reflected(value: Any, _depth: int = 0) -> Any:
    """A reflection result as JSON-ready data."""
    if _depth > _MAX_DEPTH:
        raise MalformedValueError("A reflection result nests too deeply.")
    if isinstance(value, enum.Enum):
        return encode_reflected(value.value, _depth + 1)
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, TypeEngine):
        return _encode_type(value, _depth)
    if isinstance(value, type) and issubclass(value, TypeEngine):
        return _encode_type(value(), _depth)
    if isinstance(value, tuple):
        return {"$t": [encode_reflected(v, _depth + 1) for v in value]}
    if isinstance(value, list):
        return [encode_reflected(v, _depth + 1) for v in value]
    if isinstance(value, Mapping):
        return {"$d": [[encode_reflected(k, _depth + 1), encode_reflected(v, _depth + 1)] for k, v in value.items()]}
    return str(value)  # a server default or computed expression object: its SQL text


def _encode_type(type_: TypeEngine[Any], depth: int) -> dict[str, Any]:
    cls = type(type_)
    if not cls.__module__.startswith("sqlalchemy."):
        return {"$type": "sqlalchemy.sql.sqltypes.NullType"}
    kwargs: dict[str, Any] = {}
    if isinstance(type_, sqltypes.Enum):
        kwargs["enums"] = list(type_.enums)
        if type_.name is not None:
            kwargs["name"] = type_.name
    else:
        init = cls.__init__
        parameters = inspect.signature(init).parameters.items() if init is not object.__init__ else ()
        for name, param in parameters:
            if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or not hasattr(type_, name):
                continue
            current = getattr(type_, name)
            if param.default is not param.empty and _same(current, param.default):
                continue
            if isinstance(current, (TypeEngine, *_SIMPLE, tuple, list)) or (
                    isinstance(current, type) and issubclass(current, TypeEngine)):
                kwargs[name] = encode_reflected(current, depth + 1)
    node: dict[str, Any] = {"$type": f"{cls.__module__}.{cls.__qualname__}"}
    if kwargs:
        node["k"] = kwargs
    return node


def decode_reflected(data: Any, _depth: int = 0) -> Any:
    """The reflection result :func:`encode_reflected` encoded."""
    if _depth > _MAX_DEPTH:
        raise MalformedValueError("A reflection result nests too deeply.")
    if isinstance(data, _SIMPLE):
        return data
    if isinstance(data, list):
        return [decode_reflected(v, _depth + 1) for v in data]
    if isinstance(data, dict):
        if "$t" in data:
            return tuple(decode_reflected(v, _depth + 1) for v in data["$t"])
        if "$d" in data:
            return {_hashable(decode_reflected(k, _depth + 1)): decode_reflected(v, _depth + 1) for k, v in data["$d"]}
        if "$type" in data:
            return _decode_type(data, _depth)
    raise MalformedValueError("A reflection result has a part that is not understood.")


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(key)
    return key


def _decode_type(data: Mapping[str, Any], depth: int) -> TypeEngine[Any]:
    cls = _type_classes().get(data["$type"])
    if cls is None:
        return sqltypes.NULLTYPE
    kwargs = {k: decode_reflected(v, depth + 1) for k, v in (data.get("k") or {}).items()}
    try:
        if issubclass(cls, sqltypes.Enum):
            return cls(*kwargs.pop("enums", ()), **kwargs)
        return cls(**kwargs)
    except TypeError:
        return sqltypes.NULLTYPE


_CLASSES: dict[str, type[TypeEngine[Any]]] = {}


def _type_classes() -> dict[str, type[TypeEngine[Any]]]:
    """SQLAlchemy's own type classes by ``module.QualName`` (dialects' types included once loaded)."""
    pending: list[type[TypeEngine[Any]]] = [TypeEngine]
    seen: set[type] = set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("sqlalchemy."):
            _CLASSES.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    return _CLASSES
