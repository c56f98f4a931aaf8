"""Which Python types a named method's signature may use, and how its result travels.

Parameters and results use the value codec's types (``values.ENCODERS``): ``str``, ``int``,
``float``, ``bool``, ``None``, ``Decimal``, ``datetime``, ``date``, ``time``, ``timedelta``,
``UUID``, ``bytes``, enums, and ``list`` / ``tuple`` / ``dict[str, ...]`` / unions of them.
Results may also be mapped ORM classes (alone, optional, or inside those containers): an
instance travels as ``{"$orm": {"class", "values"}}`` - its loaded column values - and becomes a
persistent object in the caller's session.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import InstanceState, Mapper

from .exceptions import MalformedValueError, MethodArgumentsError, MethodDefinitionError, MethodResultError
from .values import JSONable, decode_value, encode_value, enum_resolver_for

ATOMS: tuple[type, ...] = (str, int, float, bool, decimal.Decimal, dt.datetime, dt.date, dt.time,
                           dt.timedelta, uuid.UUID, bytes, type(None))
_UNIONS = (typing.Union, types.UnionType)
_ALLOWED = ("str, int, float, bool, None, Decimal, datetime, date, time, timedelta, UUID, bytes, "
            "enums, and list[...], tuple[...], dict[str, ...] or unions of them")


def resolve_hints(function: Callable[..., Any], where: str, session: str) -> dict[str, Any]:
    """The resolved annotations, except the session parameter's (often imported for type
    checking only, and irrelevant to the wire)."""
    annotations = {k: v for k, v in getattr(function, "__annotations__", {}).items() if k != session}
    holder = types.SimpleNamespace(__annotations__=annotations,
                                   __globals__=getattr(function, "__globals__", {}))
    try:
        return typing.get_type_hints(holder)
    except Exception as exc:  # NameError for a name the module does not define (yet)
        raise MethodDefinitionError(
            f"The annotations of the {where} cannot be resolved ({exc}); import every type "
            "it names at module level, before the function.") from None


def _mapper(hint: Any) -> Mapper[Any] | None:
    if not isinstance(hint, type):
        return None
    found: Any = sa.inspect(hint, raiseerr=False)
    return found if isinstance(found, Mapper) else None


def _members(hint: Any) -> tuple[Any, ...] | None:
    """The member types of a container or union hint; None for anything else."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNIONS:
        return args
    if origin is list and len(args) == 1:
        return args
    if origin is tuple and args:
        return args[:1] if len(args) == 2 and args[1] is Ellipsis else args
    if origin is dict and len(args) == 2 and args[0] is str:
        return args[1:]
    return None


def check_type(hint: Any, where: str, *, orm: bool) -> None:
    """Raise ``MethodDefinitionError`` unless values of *hint* can travel."""
    if hint is None or hint in ATOMS or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return
    members = _members(hint)
    if members is not None:
        for member in members:
            check_type(member, where, orm=orm)
        return
    if _mapper(hint) is not None:
        if orm:
            return
        raise MethodDefinitionError(
            f"The type of {where} is the ORM class {hint.__name__}, which cannot be an argument; "
            "pass its primary key and load it inside the method.")
    raise MethodDefinitionError(
        f"The type of {where} is {type_name(hint)}, which cannot travel to the DB-API; use "
        f"{_ALLOWED}" + (", or mapped ORM classes." if orm else "."))


def type_name(hint: Any) -> str:
    """``list[TaskInstance]``, ``int | None``: how a signature listing spells a hint."""
    if hint is None or hint is type(None):
        return "None"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNIONS:
        return " | ".join(type_name(a) for a in args)
    if origin is not None and args:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{getattr(origin, '__name__', repr(origin))}[{inner}]"
    return hint.__name__ if isinstance(hint, type) else repr(hint)


def _walk(hints: Iterable[Any]) -> Iterator[Any]:
    for hint in hints:
        yield hint
        yield from _walk(_members(hint) or ())


def enums_in(hints: Iterable[Any]) -> list[type[enum.Enum]]:
    """Enum classes named by *hints*, and by the enum columns of the ORM classes they name."""
    found: dict[type[enum.Enum], None] = {}
    for hint in _walk(hints):
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            found[hint] = None
        mapper = _mapper(hint)
        for sub in mapper.self_and_descendants if mapper is not None else ():
            for prop in sub.column_attrs:
                for column in prop.columns:
                    enum_class = _enum_class(column.type)
                    if enum_class is not None:
                        found[enum_class] = None
    return list(found)


def _enum_class(type_: Any) -> type[enum.Enum] | None:
    while type_ is not None:
        enum_class = getattr(type_, "enum_class", None)
        if enum_class is not None:
            return enum_class  # type: ignore[no-any-return]
        type_ = getattr(type_, "impl_instance", None) if isinstance(type_, sa.TypeDecorator) else None
    return None


def conforms(value: Any, hint: Any) -> bool:
    """Whether *value* is of the (checked) type *hint*; ``int`` is accepted for ``float``, ``bool``
    for neither (the codec keeps it a ``bool``: sent for a number, it is a mistake)."""
    if hint is None or hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    if isinstance(value, enum.Enum) and not (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return False  # a StrEnum / IntEnum member travels as its enum, not as a str or an int
    if hint is float:
        return isinstance(value, (int, float))
    if isinstance(hint, type):
        return isinstance(value, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in _UNIONS:
        return any(conforms(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and conforms(v, args[1]) for k, v in value.items())
    if origin is tuple and isinstance(value, tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args, strict=True))
    return False


def check_argument(method: str, name: str, value: Any, hint: Any) -> None:
    if not conforms(value, hint):
        raise MethodArgumentsError(
            f"{method}(): argument {name!r} must be {type_name(hint)}, got {type(value).__name__}.")


def orm_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class ResultCodec:
    """Encodes a method's result, ORM instances included; decodes it with the same allowlist."""

    def __init__(self, returns: Any, enums: Iterable[type[enum.Enum]]) -> None:
        self._classes: dict[str, type] = {}
        for hint in _walk([returns]):
            mapper = _mapper(hint)
            for sub in mapper.self_and_descendants if mapper is not None else ():
                self._classes[orm_path(sub.class_)] = sub.class_
        self._resolver = enum_resolver_for(enums)

    def encode(self, value: Any, *, load: bool = True) -> JSONable:
        """*value* in the codec; ``load=False`` skips, rather than loads, expired ORM attributes
        (a check that emits no SQL: direct mode's ``Method.check_result``)."""
        kind = type(value)
        if kind is list:
            return [self.encode(v, load=load) for v in value]
        if kind is tuple:
            return {"$tu": [self.encode(v, load=load) for v in value]}
        if kind is dict:
            return {"$o": {k: self.encode(v, load=load) for k, v in value.items()}}
        state = sa.inspect(value, raiseerr=False) if self._classes else None
        if isinstance(state, InstanceState):
            return {"$orm": self._encode_instance(value, state, load)}
        return encode_value(value)

    def _encode_instance(self, instance: Any, state: InstanceState[Any], load: bool) -> JSONable:
        cls = state.mapper.class_
        if self._classes.get(orm_path(cls)) is not cls:
            raise MethodResultError(f"A {cls.__name__} cannot be returned: the return annotation "
                                    "does not name its class.")
        if state.key is None or state.deleted:
            raise MethodResultError(
                f"The returned {cls.__name__} is not in the database (transient or deleted); "
                "return objects the method's session has added or loaded.")
        values: dict[str, JSONable] = {}
        for prop in state.mapper.column_attrs:
            if prop.key in state.dict:
                values[prop.key] = encode_value(state.dict[prop.key])
            elif load and prop.key in state.expired_attributes:
                values[prop.key] = encode_value(getattr(instance, prop.key))  # refreshed by the flush
        return {"class": orm_path(cls), "values": values}

    def decode(self, data: Any, build: Callable[[type, dict[str, Any]], Any]) -> Any:
        if type(data) is list:
            return [self.decode(v, build) for v in data]
        if type(data) is dict and len(data) == 1:
            ((tag, payload),) = data.items()
            if tag == "$orm":
                return self._decode_instance(payload, build)
            if tag == "$tu" and type(payload) is list:
                return tuple(self.decode(v, build) for v in payload)
            if tag == "$o" and type(payload) is dict:
                return {k: self.decode(v, build) for k, v in payload.items()}
        return decode_value(data, enum_resolver=self._resolver)

    def _decode_instance(self, payload: Any, build: Callable[[type, dict[str, Any]], Any]) -> Any:
        if type(payload) is not dict or type(payload.get("values")) is not dict:
            raise MalformedValueError("An '$orm' result needs 'class' and 'values'.")
        cls = self._classes.get(payload.get("class", ""))
        if cls is None:
            raise MalformedValueError(f"The result names the class {payload.get('class')!r}, which "
                                      "the method's return annotation does not allow.")
        mapper: Mapper[Any] = sa.inspect(cls)
        columns = {prop.key for prop in mapper.column_attrs}
        unknown = set(payload["values"]) - columns
        if unknown:
            raise MalformedValueError(f"{cls.__name__} has no column attributes {sorted(unknown)}; "
                                      "client and server must use the same models.")
        values = {k: decode_value(v, enum_resolver=self._resolver) for k, v in payload["values"].items()}
        return build(cls, values)
