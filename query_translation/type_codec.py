"""SQL types on the wire.

A bound parameter's type decides how the server processes its value (date formatting on SQLite,
JSON serialisation, enum names, UUID storage, PostgreSQL bind casts), so it must arrive exactly.
Three forms, tried in order:

``{"col": [table, key]}``
    The type *is* the type of a column the statement touches - the usual case, since
    ``col == value`` and every ORM flush bind reuse the column's own type object. The server uses
    its own column's type, so custom ``TypeDecorator`` s and enums with callables need no encoding.
``{"n": "String", "k": {...}}``
    A SQLAlchemy type, by class name from an allowlist of SQLAlchemy's own type classes, with the
    constructor arguments that differ from their defaults.
``{"n": "myapp.types.UtcDateTime", "r": "UtcDateTime()", "impl": {...}}``
    Any other type: resolved on the server among the types its metadata already uses, by class
    path and ``repr``. Nothing named on the wire is ever imported. A ``TypeDecorator`` that
    renders no SQL of its own (no ``bind_expression`` / ``column_expression``) also carries the
    type it renders as (``load_dialect_impl``): the server, which no longer processes values of
    client statements, needs a type only to render SQL, so it uses that when its metadata does not
    have the decorator - the SQL fingerprint check proves the rendering the same. A bind rendered
    literally (``literal_execute``) is the exception: the decorator's literal processor renders
    it, on the server, so its type must be the server's own.
"""

from __future__ import annotations

import enum
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import types as sqltypes
from sqlalchemy.types import TypeEngine

from .exceptions import MalformedStatementError, UnknownEnumError, UnsupportedStatementError
from .values import decode_value, encode_value, enum_path

__all__ = ["TypeResolver", "encode_type"]

_SIMPLE = (str, int, float, bool, type(None))


def _is_sqlalchemy_type(cls: type) -> bool:
    return cls.__module__.startswith("sqlalchemy.")


def _init_kwargs(type_: TypeEngine[Any]) -> dict[str, Any]:
    """Constructor arguments of *type_* that differ from their defaults (like ``generic_repr``)."""
    init = type(type_).__init__
    if init is object.__init__:
        return {}
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(init).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if not hasattr(type_, name):
            continue
        value = getattr(type_, name)
        if param.default is not param.empty and _same(value, param.default):
            continue
        kwargs[name] = value
    return kwargs


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # pragma: no cover - exotic __eq__
        return a is b


def encode_type(type_: TypeEngine[Any], column_types: Mapping[int, tuple[str, str]],
                dialect: Any = None, *, exact: bool = False) -> dict[str, Any]:
    """Encode *type_*; *column_types* maps ``id(column.type)`` to ``(table name, column key)``.

    With the client's *dialect*, a custom ``TypeDecorator`` also carries the type it renders as
    (see the module docstring) unless *exact* (the type of a ``literal_execute`` bind).
    """
    ref = column_types.get(id(type_))
    if ref is not None:
        return {"col": list(ref)}
    cls = type(type_)
    if cls is sqltypes.NullType:
        return {"n": "NullType"}
    if not _is_sqlalchemy_type(cls):
        custom: dict[str, Any] = {"n": f"{cls.__module__}.{cls.__qualname__}", "r": repr(type_)}
        if (dialect is not None and not exact and isinstance(type_, sa.TypeDecorator)
                and not type_._has_bind_expression and not type_._has_column_expression):
            try:
                custom["impl"] = encode_type(type_.load_dialect_impl(dialect), column_types, dialect)
            except UnsupportedStatementError:
                pass  # its rendering type cannot travel either: the server's metadata must have it
        return custom
    if isinstance(type_, sa.Enum):
        return {"n": cls.__name__, "k": _enum_kwargs(type_)}
    if isinstance(type_, sqltypes.TupleType):
        return {"n": "TupleType", "types": [encode_type(t, column_types, dialect, exact=exact) for t in type_.types]}
    kwargs: dict[str, Any] = {}
    for name, value in _init_kwargs(type_).items():
        if isinstance(value, TypeEngine):
            kwargs[name] = {"type": encode_type(value, column_types, dialect, exact=exact)}
        elif isinstance(value, type) and issubclass(value, TypeEngine):
            kwargs[name] = {"type": encode_type(value(), column_types, dialect, exact=exact)}
        elif isinstance(value, _SIMPLE) or isinstance(value, (list, tuple)):
            kwargs[name] = encode_value(value)
        else:
            raise UnsupportedStatementError(
                f"The type {type_!r} has an argument {name}={value!r} that cannot be sent; "
                "use it only through a mapped column, whose type the server knows."
            )
    out: dict[str, Any] = {"n": cls.__name__}
    if kwargs:
        out["k"] = kwargs
    return out


def _enum_kwargs(type_: sa.Enum) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "name": type_.name,
        "native_enum": type_.native_enum,
        "length": type_.length,
        "validate_strings": type_.validate_strings,
        "create_constraint": type_.create_constraint,
    }
    if type_.enum_class is not None:
        if type_.values_callable is not None:
            raise UnsupportedStatementError(
                f"The enum type {type_!r} uses values_callable; use it through a mapped column."
            )
        kwargs["enum_class"] = enum_path(type_.enum_class)
    else:
        kwargs["enums"] = list(type_.enums)
    return kwargs


def _sqlalchemy_type_classes() -> dict[str, type[TypeEngine[Any]]]:
    found: dict[str, type[TypeEngine[Any]]] = {}
    pending: list[type] = [TypeEngine]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if _is_sqlalchemy_type(cls) and not cls.__name__.startswith("_"):
            # generic (sqlalchemy.sql.sqltypes) names win over dialect-specific ones
            if cls.__name__ not in found or cls.__module__ == "sqlalchemy.sql.sqltypes":
                found[cls.__name__] = cls
    return found


class TypeResolver:
    """Server side: turns encoded types back into type objects, from allowlists only."""

    def __init__(self, metadata: sa.MetaData, enum_classes: Iterable[type[enum.Enum]] = ()) -> None:
        self._metadata = metadata
        self._builtin = _sqlalchemy_type_classes()
        self._custom: dict[tuple[str, str], TypeEngine[Any]] = {}
        enums = {enum_path(e): e for e in enum_classes}
        for table in metadata.tables.values():
            for column in table.columns:
                t = column.type
                cls = type(t)
                self._custom.setdefault((f"{cls.__module__}.{cls.__qualname__}", repr(t)), t)
                if isinstance(t, sa.Enum) and t.enum_class is not None:
                    enums[enum_path(t.enum_class)] = t.enum_class
        self.enum_classes: Mapping[str, type[enum.Enum]] = enums

    def resolve_enum(self, path: str) -> type[enum.Enum]:
        try:
            return self.enum_classes[path]
        except KeyError:
            raise UnknownEnumError(
                f"The enum class {path!r} is not used by the server's metadata; only enums of "
                "mapped columns can be sent."
            ) from None

    def resolve(self, data: Mapping[str, Any]) -> TypeEngine[Any]:
        if "col" in data:
            table: str
            key: str
            table, key = data["col"]
            try:
                return self._metadata.tables[table].c[key].type
            except KeyError:
                raise MalformedStatementError({"type": ["unknown column"]}, f"Type reference to unknown column {table}.{key}.") from None
        name = data.get("n")
        if "r" in data:
            found = self._custom.get((name, data["r"]))  # type: ignore[arg-type]  # None just misses
            if found is None and isinstance(data.get("impl"), Mapping):
                return self.resolve(data["impl"])  # rendering only: the values arrive processed
            if found is None:
                raise UnsupportedStatementError(
                    f"The type {data['r']} ({name}) is not used by any column of the server's "
                    "metadata and renders SQL of its own (or is rendered literally), so the server "
                    "cannot render it."
                )
            return found
        if name == "NullType":
            return sqltypes.NULLTYPE
        cls = self._builtin.get(name)  # type: ignore[arg-type]
        if cls is None:
            raise UnsupportedStatementError(f"Unknown SQL type {name!r}.")
        if name == "TupleType":
            return sqltypes.TupleType(*[self.resolve(t) for t in data.get("types", [])])
        kwargs = dict(data.get("k", {}))
        for key, value in kwargs.items():
            if isinstance(value, dict) and "type" in value:
                kwargs[key] = self.resolve(value["type"])
            else:
                kwargs[key] = _checked_argument(name, key, decode_value(value))
        if issubclass(cls, sa.Enum):
            return self._build_enum(cls, kwargs)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise MalformedStatementError({"type": [str(exc)]}, f"Bad arguments for type {name}: {exc}") from None

    def _build_enum(self, cls: type[sa.Enum], kwargs: dict[str, Any]) -> TypeEngine[Any]:
        if "enum_class" in kwargs:
            args: list[Any] = [self.resolve_enum(kwargs.pop("enum_class"))]
        else:
            args = list(kwargs.pop("enums", []))
        return cls(*args, **kwargs)


# Type arguments end up inside SQL (CAST(x AS NUMERIC(10, 2)), COLLATE "..."): only plain numbers,
# flags and name-like tokens are accepted, never free text.
_TOKEN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_FREE_TEXT_ARGUMENTS = {"enums"}  # enum values are bound as parameters, never rendered


def _checked_argument(type_name: Any, key: str, value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if key == "enum_class" and isinstance(value, str):
        return value  # a path, resolved only against the metadata's own enum classes
    if isinstance(value, int) and 0 <= value <= 1_000_000:
        return value
    if key in _FREE_TEXT_ARGUMENTS and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, str) and _TOKEN.match(value):
        return value
    raise UnsupportedStatementError(  # the value itself is not echoed back
        f"The argument {key!r} of type {type_name} is not allowed: type arguments must be "
        "small non-negative integers, flags or plain names.")


def column_type_map(tables: Iterable[sa.Table]) -> dict[int, tuple[str, str]]:
    """``id(column.type) -> (table, key)`` for the columns of *tables* (first column wins)."""
    found: dict[int, tuple[str, str]] = {}
    for table in tables:
        for column in table.columns:
            found.setdefault(id(column.type), (table.fullname, column.key))
    return found


ResolveEnum = Callable[[str], type[enum.Enum]]
