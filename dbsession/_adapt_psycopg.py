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
  wrapper's ``dumps`` or the engine's ``json_serializer`` (``set_json_dumps``), else ``json.dumps``;
* a ``list`` (an ``ARRAY``): ONE text-format dumper for every item, chosen from the items'
  classes (``BaseListDumper._find_list_element``): items of several classes must dump with the
  same oid (else ``DataError``); exact ``int`` items pick the width of the largest, anything else
  the dumper of the last item - so an ``IntEnum`` array whose last member is small is sent as
  ``int2[]`` and PostgreSQL refuses the larger members (the items travel wrapped in that width).

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

_UTC = dt.UTC
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


_NULL_OID, _BOOL, _BYTEA, _INT8, _INT2, _INT4, _FLOAT8 = 0, 16, 17, 20, 21, 23, 701
_DATE, _TIME, _TIMESTAMP, _TIMESTAMPTZ, _INTERVAL, _NUMERIC, _TIMETZ, _UUID = 1082, 1083, 1114, 1184, 1186, 1700, 1266, 2950
_JSON, _JSONB = 114, 3802
_INT16, _INT32, _INT64 = (-(2**15), 2**15 - 1), (-(2**31), 2**31 - 1), (-(2**63), 2**63 - 1)


def _programming_error(cls: type) -> _dbapi.ProgrammingError:
    return _dbapi.ProgrammingError(f"cannot adapt type {cls.__name__!r} using placeholder '%s' (format: AUTO)")


def _exact_str(value: Any) -> str:
    return str.__str__(value)


def _buffer(value: Any) -> bytes:
    view = memoryview(value)
    if not view.c_contiguous:  # PyObject_GetBuffer(PyBUF_SIMPLE) refuses it, as the dumper does
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    return view.tobytes()


def _int_oid(value: Any) -> int:
    number = int.__int__(value)
    if _INT16[0] <= number <= _INT16[1]:
        return _INT2
    if _INT32[0] <= number <= _INT32[1]:
        return _INT4
    return _INT8 if _INT64[0] <= number <= _INT64[1] else _NUMERIC


def _datetime_as(aware: bool) -> Callable[[Any], dt.datetime]:
    # the dump is `obj - epoch` in microseconds, the epoch aware or naive as the dumper is
    epoch = _EPOCH_TZ if aware else _EPOCH

    def convert(value: Any) -> dt.datetime:
        delta = value - epoch
        return epoch + dt.timedelta(days=_DAYS(delta), seconds=_SECONDS(delta), microseconds=_MICROSECONDS(delta))
    return convert


def _time_as(aware: bool) -> Callable[[Any], dt.time]:
    def convert(value: Any) -> dt.time:
        plain = dt.time(value.hour, value.minute, value.second, value.microsecond)  # the C struct's fields
        if not aware:
            return plain
        offset = dt.time.utcoffset(value)
        if offset is None:
            raise _dbapi.DataError(f"cannot calculate the offset of tzinfo '{value.tzinfo}' without a date")
        return plain.replace(tzinfo=dt.timezone(dt.timedelta(seconds=int(offset.total_seconds()))))
    return convert


def _timedelta(value: dt.timedelta) -> dt.timedelta:
    return dt.timedelta(days=_DAYS(value), seconds=_SECONDS(value), microseconds=_MICROSECONDS(value))


def _decimal(value: decimal.Decimal) -> decimal.Decimal:
    text = str(value)  # the text dumper: str(obj), sNaN as NaN
    if text.startswith("s"):
        return decimal.Decimal("NaN")
    if type(value) is decimal.Decimal:
        return value
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


class _Dumper:
    """What one psycopg dumper does with a value: the builtin it in effect sends, and its oid.

    ``in_list(chosen)`` is the text-format dumper a list uses for all its items when *chosen*
    decided it (``ListDumper.upgrade``), as a conversion of each item.
    """

    def __init__(self, convert: Callable[[Any], Any], oid: int | Callable[[Any], int],
                 in_list: Callable[[Any], Callable[[Any], Any]] | None = None) -> None:
        self.convert = convert
        self._oid = oid
        self._in_list = in_list

    def oid(self, value: Any) -> int:
        return self._oid(value) if callable(self._oid) else self._oid

    def in_list(self, chosen: Any) -> Callable[[Any], Any]:
        return self._in_list(chosen) if self._in_list is not None else self.convert


_INT_KINDS = {_INT2: "int2", _INT4: "int4", _INT8: "int8", _NUMERIC: "numeric"}


def _int_text_as(chosen: Any) -> Callable[[Any], Any]:
    """``Int2Dumper`` & co. (text): each item's digits under the width *chosen* picked.

    PostgreSQL parses the array with that width (and refuses a larger item, or a cast of the
    array): the items travel wrapped in the width, which the server's psycopg keeps.
    """
    kind = _INT_KINDS[_int_oid(chosen)]

    def convert(item: Any) -> Any:
        if not isinstance(item, int):
            raise _dbapi.DataError(f"integer expected, got {type(item).__name__!r}")
        number = int.__int__(item)
        if not _INT64[0] <= number <= _INT64[1] and str(item) != int.__repr__(item):
            # beyond int64 the dumper writes str(item): an int-mixin Enum's name, which PostgreSQL refuses
            raise _dbapi.DataError(f'invalid input syntax for type numeric: "{item}"')
        return Wrapped(kind, number)
    return convert


def _time_text_as(chosen: Any) -> Callable[[Any], dt.time]:
    """``TimeTzDumper`` (text) checks every item's offset; ``TimeDumper`` sends ``str(item)``."""
    if not chosen.tzinfo:
        return lambda item: _time_as(bool(item.tzinfo))(item)
    return _time_as(True)


_DATETIME = _Dumper(lambda v: _datetime_as(bool(v.tzinfo))(v), lambda v: _TIMESTAMPTZ if v.tzinfo else _TIMESTAMP,
                    lambda chosen: lambda item: _datetime_as(bool(item.tzinfo))(item))  # text: str(item)
_TIME_DUMPER = _Dumper(lambda v: _time_as(bool(v.tzinfo))(v), lambda v: _TIMETZ if v.tzinfo else _TIME,
                       _time_text_as)


class PsycopgAdapter:
    """Turns a processed bound value into what psycopg 3 would send for it."""

    Binary = Binary

    def __init__(self, dialect: Any) -> None:
        self._dumps: Callable[[Any], str | bytes] = getattr(dialect, "_json_serializer", None) or json.dumps
        refuse_ip = _Dumper(_refuse("IP address"), _NULL_OID)
        numpy = _Dumper(lambda v: self.adapt(v.item()), lambda v: self._dumper(type(v.item())).oid(v.item()))
        self._by_class: dict[Any, _Dumper] = {
            type(None): _Dumper(lambda v: None, _NULL_OID), bool: _Dumper(lambda v: v, _BOOL),
            str: _Dumper(_exact_str, _NULL_OID),
            int: _Dumper(int.__int__, _int_oid, _int_text_as), float: _Dumper(float.__float__, _FLOAT8),
            bytes: _Dumper(_buffer, _BYTEA), bytearray: _Dumper(_buffer, _BYTEA), memoryview: _Dumper(_buffer, _BYTEA),
            list: _Dumper(self._list, _NULL_OID), tuple: _Dumper(self._tuple, _NULL_OID),
            Json: _Dumper(self._json, _JSON), Jsonb: _Dumper(self._json, _JSONB), Binary: _Dumper(self._binary, _BYTEA),
            Range: _Dumper(_refuse("PostgreSQL range"), _NULL_OID),
            Multirange: _Dumper(_refuse("PostgreSQL multirange"), _NULL_OID),
        }
        if getattr(dialect, "_has_native_hstore", False):  # SQLAlchemy registered psycopg's for dict
            self._by_class[dict] = _Dumper(self._hstore, -1)
        self._by_name: dict[str, _Dumper] = {
            "datetime.date": _Dumper(lambda v: dt.date.fromordinal(dt.date.toordinal(v)), _DATE),
            "datetime.time": _TIME_DUMPER, "datetime.datetime": _DATETIME,
            "datetime.timedelta": _Dumper(_timedelta, _INTERVAL), "decimal.Decimal": _Dumper(_decimal, _NUMERIC),
            "uuid.UUID": _Dumper(_uuid, _UUID), "enum.Enum": _Dumper(lambda v: _exact_str(v.name), _NULL_OID),
            "psycopg.types.json.Json": _Dumper(self._json, _JSON), "psycopg.types.json.Jsonb": _Dumper(self._json, _JSONB),
            "psycopg.dbapi20.Binary": _Dumper(self._binary, _BYTEA),
            **{f"ipaddress.{n}": refuse_ip for n in ("IPv4Address", "IPv6Address", "IPv4Interface",
                                                      "IPv6Interface", "IPv4Network", "IPv6Network")},
            **{f"numpy.{n}": numpy for n in ("int8", "int16", "int32", "int64", "longlong", "uint8", "uint16",
                                             "uint32", "uint64", "ulonglong", "float16", "float32", "float64",
                                             "bool", "bool_")},
        }
        self._resolved: dict[type, _Dumper] = {}

    def adapt(self, value: Any) -> Any:
        cls = type(value)
        if cls is str or cls is int or value is None or cls is float or cls is bool:
            return value
        return self._dumper(cls).convert(value)

    def _dumper(self, cls: type) -> _Dumper:
        found = self._resolved.get(cls)
        if found is None:
            found = self._resolved[cls] = self._resolve(cls)
        return found

    def _resolve(self, cls: type) -> _Dumper:
        """``AdaptersMap.get_dumper``: the first class of the MRO with a dumper, by class or name."""
        for base in cls.__mro__:
            found = self._by_class.get(base) or self._by_name.get(f"{base.__module__}.{base.__qualname__}")
            if found is not None:
                return found

        def unadaptable(value: Any) -> Any:
            raise _programming_error(cls)
        return _Dumper(unadaptable, unadaptable)

    def _list(self, value: list[Any]) -> list[Any]:
        """``ListDumper``: one item dumper for the whole (possibly nested) list."""
        items = list(_flat(value, set()))
        if not items:
            return _rebuild(value, lambda item: item)
        by_type = {type(item): item for item in items}
        if len(by_type) == 1:
            kind, chosen = type(items[-1]), items[-1]
        elif len({self._dumper(t).oid(item) for t, item in by_type.items()}) == 1:
            kind, chosen = by_type.popitem()
        else:
            names = ", ".join(sorted(t.__name__ for t in by_type))
            raise _dbapi.DataError(f"cannot dump lists of mixed types; got: {names}")
        if kind is int:  # exact ints: the width of the largest, so every item fits
            biggest, smallest = max(items), min(items)
            chosen = biggest if smallest >= 0 else max(biggest, -smallest - 1)
        return _rebuild(value, self._dumper(type(chosen)).in_list(chosen))

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

    def _hstore(self, value: dict[Any, Any]) -> dict[str, str | None]:
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


def _flat(value: list[Any], seen: set[int]) -> Any:
    """``BaseListDumper._flatiter``: the non-null items of a nested list."""
    if id(value) in seen:
        raise _dbapi.DataError("cannot dump a recursive list")
    seen.add(id(value))
    for item in value:
        if isinstance(item, list):
            yield from _flat(item, seen)
        elif item is not None:
            yield item


def _rebuild(value: list[Any], convert: Callable[[Any], Any]) -> list[Any]:
    return [None if item is None else _rebuild(item, convert) if isinstance(item, list) else convert(item)
            for item in value]
