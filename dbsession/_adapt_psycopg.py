"""psycopg 3's parameter adaptation, replicated where it calls into the value's class.

psycopg picks a dumper by walking the value's MRO (``AdaptersMap.get_dumper``: the class itself,
then its bases, each by class and by ``"module.QualName"``) and the dumper then reads the value.
Most dumpers read a builtin's C struct (``PyLong_AsLongLong``, ``PyFloat_AsDouble``, the UTF-8 of
a ``str``, a buffer), which a subclass cannot change; a few call into the value's class, and those
calls are made here, on the client, with the application's classes:

* ``datetime``: the binary dumper sends ``value - 2000-01-01`` (aware or naive epoch, chosen by
  ``bool(value.tzinfo)``) in microseconds: the value's own ``__sub__`` (pendulum's) decides;
* ``time``: ``time.utcoffset(value)`` (the tzinfo's ``utcoffset(None)``) when ``value.tzinfo``;
* ``Decimal``: the text dumper sends ``str(value)`` (``sNaN`` as ``NaN``);
* ``uuid.UUID``: ``value.bytes``; a plain ``Enum`` member: ``value.name`` (with the unknown oid);
* JSON: SQLAlchemy wraps the value in ``psycopg.types.json.Json`` / ``Jsonb``; the dumper calls the
  wrapper's ``dumps`` or the engine's ``json_serializer`` (``set_json_dumps``), else ``json.dumps``.

The result is the builtin psycopg would in effect send - the same dumper, bytes and oid on the
server's driver - or the driver's exception. JSON text travels serialized, tagged
(:class:`query_translation.Wrapped`), and the server wraps it in ``Json`` with an identity
``dumps``. psycopg itself is not needed here: SQLAlchemy's psycopg dialect gets the stand-in
wrappers below instead of psycopg's.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable
from typing import Any

from query_translation import UnsupportedValueError, Wrapped

from . import _dbapi

__all__ = ["Binary", "Json", "Jsonb", "Multirange", "PsycopgAdapter", "Range"]

_UTC = dt.timezone.utc
_EPOCH = dt.datetime(2000, 1, 1)
_EPOCH_TZ = dt.datetime(2000, 1, 1, tzinfo=_UTC)
_DAYS = dt.timedelta.days.__get__  # the C struct's fields, whatever a subclass's properties say
_SECONDS = dt.timedelta.seconds.__get__
_MICROSECONDS = dt.timedelta.microseconds.__get__


class Json:
    """Stands in for ``psycopg.types.json.Json`` (what SQLAlchemy's JSON bind processor returns)."""

    __slots__ = ("obj", "dumps")

    def __init__(self, obj: Any, dumps: Callable[[Any], str | bytes] | None = None) -> None:
        self.obj = obj
        self.dumps = dumps


class Jsonb(Json):
    """Stands in for ``psycopg.types.json.Jsonb``."""

    __slots__ = ()


class Binary:
    """Stands in for ``psycopg.Binary`` (what SQLAlchemy's ``LargeBinary`` bind processor returns)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj


class Range:
    """Stands in for ``psycopg.types.range.Range``: ranges cannot be sent yet (refused loudly)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.args = args


class Multirange(list[Any]):
    """Stands in for ``psycopg.types.multirange.Multirange``."""


def _programming_error(cls: type) -> _dbapi.ProgrammingError:
    return _dbapi.ProgrammingError(f"cannot adapt type {cls.__name__!r} using placeholder '%s' (format: AUTO)")


def _exact_str(value: Any) -> str:
    return str.__str__(value)


def _buffer(value: Any) -> bytes:
    view = memoryview(value)
    if not view.c_contiguous:  # PyObject_GetBuffer(PyBUF_SIMPLE) refuses it, as the dumper does
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    return view.tobytes()


def _datetime(value: dt.datetime) -> dt.datetime:
    # get_key / upgrade: `if obj.tzinfo` picks timestamptz; the dump is `obj - epoch` in microseconds
    if value.tzinfo:
        delta = value - _EPOCH_TZ
        base = _EPOCH_TZ
    else:
        delta = value - _EPOCH
        base = _EPOCH
    return base + dt.timedelta(days=_DAYS(delta), seconds=_SECONDS(delta), microseconds=_MICROSECONDS(delta))


def _time(value: dt.time) -> dt.time:
    plain = dt.time(value.hour, value.minute, value.second, value.microsecond)
    if not value.tzinfo:
        return plain
    offset = dt.time.utcoffset(value)
    if offset is None:
        raise _dbapi.DataError(f"cannot calculate the offset of tzinfo '{value.tzinfo}' without a date")
    seconds = int(offset.total_seconds())
    return plain.replace(tzinfo=dt.timezone(dt.timedelta(seconds=seconds)))


def _timedelta(value: dt.timedelta) -> dt.timedelta:
    return dt.timedelta(days=_DAYS(value), seconds=_SECONDS(value), microseconds=_MICROSECONDS(value))


def _decimal(value: decimal.Decimal) -> decimal.Decimal:
    if type(value) is decimal.Decimal:
        return value
    text = str(value)
    if text.startswith("s"):  # sNaN is sent as NaN
        return decimal.Decimal("NaN")
    try:
        return decimal.Decimal(text)
    except decimal.InvalidOperation:
        raise _dbapi.DataError(f'invalid input syntax for type numeric: "{text}"') from None


def _uuid(value: uuid.UUID) -> uuid.UUID:
    return value if type(value) is uuid.UUID else uuid.UUID(bytes=value.bytes)


def _refuse(what: str) -> Callable[[Any], Any]:
    def refuse(value: Any) -> Any:
        raise UnsupportedValueError(f"{what} values cannot be sent to the DB-API yet (docs/features.md).")
    return refuse


class PsycopgAdapter:
    """Turns a processed bound value into what psycopg 3 would send for it."""

    Binary = Binary

    def __init__(self, dialect: Any) -> None:
        self._dumps: Callable[[Any], str | bytes] = getattr(dialect, "_json_serializer", None) or json.dumps
        self._hstore = bool(getattr(dialect, "_has_native_hstore", False))
        self._by_class: dict[Any, Callable[[Any], Any]] = {
            type(None): lambda v: None, bool: lambda v: v, str: _exact_str,
            int: int.__int__, float: float.__float__,
            bytes: _buffer, bytearray: _buffer, memoryview: _buffer,
            list: self._list, tuple: self._tuple,
            Json: self._json, Jsonb: self._json, Binary: self._binary,
            Range: _refuse("PostgreSQL range"), Multirange: _refuse("PostgreSQL multirange"),
        }
        if self._hstore:  # SQLAlchemy registered psycopg's hstore dumper for dict on its adapters
            self._by_class[dict] = self._hstore_dict
        self._by_name: dict[str, Callable[[Any], Any]] = {
            "datetime.date": lambda v: dt.date.fromordinal(dt.date.toordinal(v)),
            "datetime.time": _time, "datetime.datetime": _datetime, "datetime.timedelta": _timedelta,
            "decimal.Decimal": _decimal, "uuid.UUID": _uuid, "enum.Enum": lambda v: _exact_str(v.name),
            "psycopg.types.json.Json": self._json, "psycopg.types.json.Jsonb": self._json,
            "psycopg.dbapi20.Binary": self._binary,
            **{f"ipaddress.{n}": _refuse("IP address") for n in (
                "IPv4Address", "IPv6Address", "IPv4Interface", "IPv6Interface", "IPv4Network", "IPv6Network")},
            **{f"numpy.{n}": lambda v: v.item() for n in (
                "int8", "int16", "int32", "int64", "longlong", "uint8", "uint16", "uint32", "uint64",
                "ulonglong", "float16", "float32", "float64", "bool", "bool_")},
        }
        self._resolved: dict[type, Callable[[Any], Any]] = {}

    def adapt(self, value: Any) -> Any:
        cls = type(value)
        if cls is str or cls is int or value is None or cls is float or cls is bool:
            return value
        convert = self._resolved.get(cls)
        if convert is None:
            convert = self._resolved[cls] = self._resolve(cls)
        return convert(value)

    def _resolve(self, cls: type) -> Callable[[Any], Any]:
        """``AdaptersMap.get_dumper``: the first class of the MRO with a dumper, by class or name."""
        for base in cls.__mro__:
            found = self._by_class.get(base) or self._by_name.get(f"{base.__module__}.{base.__qualname__}")
            if found is not None:
                return found

        def unadaptable(value: Any) -> Any:
            raise _programming_error(cls)
        return unadaptable

    def _list(self, value: list[Any]) -> list[Any]:
        return [self.adapt(item) for item in value]

    def _tuple(self, value: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(self.adapt(item) for item in value)

    def _json(self, value: Any) -> Wrapped:
        dumps = value.dumps or self._dumps
        kind = "jsonb" if type(value).__name__ == "Jsonb" else "json"
        data = dumps(value.obj)
        if not isinstance(data, (str, bytes)):
            raise TypeError(f"the JSON serializer returned {type(data).__name__}, not str or bytes")
        return Wrapped(kind, _exact_str(data) if isinstance(data, str) else bytes(data))

    def _binary(self, value: Any) -> bytes:
        return _buffer(value.obj)  # BinaryBinaryDumper: the bytes dumper on the wrapped object

    def _hstore_dict(self, value: dict[Any, Any]) -> dict[str, str | None]:
        # the binary hstore dumper: key.encode(), value.encode() (None for NULL)
        out: dict[str, str | None] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                key.encode("utf-8")  # raises AttributeError as the dumper does
                raise UnsupportedValueError(f"an hstore key of type {type(key).__name__} cannot be sent.")
            if item is not None and not isinstance(item, str):
                item.encode("utf-8")
                raise UnsupportedValueError(f"an hstore value of type {type(item).__name__} cannot be sent.")
            out[_exact_str(key)] = None if item is None else _exact_str(item)
        return out
