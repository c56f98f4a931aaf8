"""Typed value codec: Python values <-> JSON that survives ``orjson`` exactly.

Bound parameters and result rows cross HTTP as JSON, and the other side must get
back the *same type and value*: ``Decimal("1.50")`` is not ``1.5``, ``True`` is
not ``1``, an aware datetime keeps its offset.

* ``None``, ``bool``, ``str``, int64 ints and finite floats are plain JSON
  (orjson always writes a float with ``.`` or an exponent).
* Everything else is a tagged object ``{"$tag": payload}`` (``ENCODERS`` and
  ``DECODERS``).  Dicts are always wrapped in ``{"$o": ...}``, so user data can
  never be mistaken for a tag.
* Enum members travel by name; decoding needs an allowlist resolver
  (``enum_resolver_for``) - modules named on the wire are never imported.
* :class:`Wrapped` values name a driver wrapper the server builds itself around JSON text or an
  integer (``{"$w": [kind, payload]}``); bound parameters arrive driver-level (``dbsession._binds``).
* ``fold`` is kept where it changes the value's meaning (repeated or skipped wall
  times in a ``ZoneInfo`` zone, recovered from the UTC offset); it is not sent for
  naive or fixed-offset datetimes and times, where databases ignore it.
"""

from __future__ import annotations

import base64
import decimal
import enum
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.types import JSON
from sqlalchemy.util import symbol

from .exceptions import (
    MalformedValueError,
    UnknownEnumError,
    UnknownValueTagError,
    UnsupportedValueError,
    ValueCodecError,
)

__all__ = [
    "DECODERS",
    "ENCODERS",
    "SYMBOLS",
    "WRAPPED_KINDS",
    "EnumResolver",
    "JSONable",
    "Wrapped",
    "decode_params",
    "decode_rows",
    "decode_value",
    "encode_params",
    "encode_result_row",
    "encode_row",
    "encode_value",
    "enum_path",
    "enum_resolver_for",
    "result_row_encoder",
]

JSONable: TypeAlias = (
    "None | bool | int | float | str | list[JSONable] | dict[str, JSONable]"
)
EnumResolver: TypeAlias = Callable[[str], type[enum.Enum]]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT_RE = re.compile(r"-?[0-9]+")
_CONTAINERS = frozenset({dict, list})  # the only JSON values that need decoding
_FLOAT_SPECIALS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

#: Sentinels allowed on the wire as ``{"$s": name}``; identity round-trips.
SYMBOLS: dict[str, object] = {"JSON_NULL": JSON.NULL}

#: Kinds of driver wrapper a :class:`Wrapped` value may name: JSON text, and integers the driver
#: must send with one width (psycopg's ``Int2`` ... ``IntNumeric``).
WRAPPED_KINDS = frozenset({"json", "jsonb", "int2", "int4", "int8", "numeric"})
_WRAPPED_JSON = frozenset({"json", "jsonb"})


@dataclass(frozen=True)
class Wrapped:
    """A value the server hands its driver inside a wrapper the server builds itself.

    psycopg dumps JSON only from its ``Json`` / ``Jsonb`` wrappers; the client serializes the
    document (with the application's serializer, where psycopg would call it) and sends the text
    as ``Wrapped("json", text)``; the server wraps it with an identity ``dumps``. An array item
    psycopg would send with a width its class chose (an ``IntEnum`` array) travels as
    ``Wrapped("int2", 5)``. ``kind`` is one of :data:`WRAPPED_KINDS`; ``value`` is ``str`` or
    ``bytes`` for JSON, an ``int`` otherwise.
    """

    kind: str
    value: str | bytes | int


# --- encoding ------------------------------------------------------------------


def _unsupported(value: Any, hint: str) -> UnsupportedValueError:
    kind = type(value)
    return UnsupportedValueError(
        f"cannot send a value of type {kind.__module__}.{kind.__qualname__} {hint}"
    )


def _check_str(items: Iterable[Any], where: str) -> None:
    for item in items:
        if type(item) is not str:
            raise _unsupported(item, f"{where}; only str is allowed there.")


def _encode_int(value: int) -> JSONable:
    if _INT64_MIN <= value <= _INT64_MAX:
        return value
    try:
        return {"$i": str(value)}
    except ValueError:  # more digits than sys.get_int_max_str_digits()
        raise _unsupported(value, "this large; send it as a Decimal.") from None


def _encode_float(value: float) -> JSONable:
    if value - value == 0.0:  # finite: inf - inf and nan - nan are nan
        return value
    return {"$f": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}


def _unsupported_tz(value: datetime | time) -> UnsupportedValueError:
    return _unsupported(
        value,
        f"with tzinfo {type(value.tzinfo).__qualname__}; use datetime.timezone "
        "or zoneinfo.ZoneInfo (for times: datetime.timezone only).",
    )


def _encode_datetime(value: datetime) -> JSONable:
    tz = value.tzinfo
    if tz is None or type(tz) is timezone:
        return {"$dt": value.isoformat()}
    if type(tz) is ZoneInfo and tz.key is not None:
        return {"$dtz": [value.isoformat(), tz.key]}
    raise _unsupported_tz(value)


def _encode_time(value: time) -> JSONable:
    if value.tzinfo is None or type(value.tzinfo) is timezone:
        return {"$t": value.isoformat()}
    raise _unsupported_tz(value)


def _b64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(data).decode("ascii")


def _encode_memoryview(value: memoryview) -> JSONable:
    if value.format != "B" or value.ndim != 1:
        raise _unsupported(value, "unless it is a flat view of bytes (format 'B').")
    return {"$mv": _b64(value)}


def _encode_dict(value: dict[Any, Any]) -> JSONable:
    _check_str(value, "as a dict key")
    return {"$o": {  # plain items as in encode_row, without encode_value's call (JSON documents hold many)
        key: item
        if (t := type(item)) is str
        or item is None
        or (t is int and _INT64_MIN <= item <= _INT64_MAX)
        or (t is float and item - item == 0.0)
        else encode_value(item)
        for key, item in value.items()
    }}


def _encode_set(value: set[Any]) -> JSONable:
    """A set (MySQL SET values; or inside JSON, where the server's serializer refuses it exactly
    as a direct session's would). Sorted by repr so the document is deterministic."""
    return {"$set": [encode_value(v) for v in sorted(value, key=repr)]}


def _encode_symbol(value: symbol) -> JSONable:
    if SYMBOLS.get(value.name) is not value:
        raise _unsupported(value, f"({value!r}); only values.SYMBOLS can be sent.")
    return {"$s": value.name}


def _encode_enum(value: enum.Enum) -> JSONable:
    cls = type(value)
    if cls.__members__.get(value.name) is not value:
        raise _unsupported(value, f"({value!r}); only named members can be sent.")
    return {"$e": [enum_path(cls), value.name]}


def _wrapped_value_fits(kind: str, value: Any) -> bool:
    return type(value) in ((str, bytes) if kind in _WRAPPED_JSON else (int,))


def _encode_wrapped(value: Wrapped) -> JSONable:
    if value.kind not in WRAPPED_KINDS or not _wrapped_value_fits(value.kind, value.value):
        raise _unsupported(value, f"({value.kind!r}); wrapped values are {sorted(WRAPPED_KINDS)}: JSON text "
                           "as str or bytes, integers as int.")
    return {"$w": [value.kind, encode_value(value.value)]}


#: Exact Python type -> encoder.  Subclasses are refused (their type would be
#: lost), except enum members, which ``encode_value`` handles itself.
ENCODERS: dict[type, Callable[[Any], JSONable]] = {
    type(None): lambda v: v,
    bool: lambda v: v,
    str: lambda v: v,
    int: _encode_int,
    float: _encode_float,
    decimal.Decimal: lambda v: {"$dec": str(v)},
    datetime: _encode_datetime,
    date: lambda v: {"$d": v.isoformat()},
    time: _encode_time,
    timedelta: lambda v: {"$td": [v.days, v.seconds, v.microseconds]},
    bytes: lambda v: {"$b": _b64(v)},
    bytearray: lambda v: {"$ba": _b64(v)},
    memoryview: _encode_memoryview,
    uuid.UUID: lambda v: {"$u": str(v)},
    dict: _encode_dict,
    list: lambda v: [encode_value(item) for item in v],
    tuple: lambda v: {"$tu": [encode_value(item) for item in v]},
    set: _encode_set,
    symbol: _encode_symbol,
    Wrapped: _encode_wrapped,
}


def encode_value(value: Any) -> JSONable:
    """Encode one value to JSON-able data that ``decode_value`` turns back into it."""
    encoder = ENCODERS.get(type(value))
    if encoder is not None:
        return encoder(value)
    if isinstance(value, enum.Enum):
        return _encode_enum(value)
    raise _unsupported(value, "to the database; convert it to a supported type first.")


def encode_row(row: Iterable[Any]) -> list[JSONable]:
    """Encode a result row; common plain values skip the registry (hot path)."""
    return [
        v
        if (t := type(v)) is str
        or v is None
        or (t is int and _INT64_MIN <= v <= _INT64_MAX)
        or (t is float and v - v == 0.0)
        else encode_value(v)
        for v in row
    ]


_UTC = UTC
#: tzinfo -> the ``$dt`` / ``$dtz`` tag orjson may write its datetimes under, or None (isoformat()).
_native_zones: dict[Any, tuple[str, str | None] | None] = {}
_UNKNOWN: Any = object()
#: The UTC ZoneInfo zones among them -> their key: encode_result_row's inline path.
_utc_zone_keys: dict[ZoneInfo, str] = {}
_NATIVE_ZONES_MAX = 1024  # zones come from the driver and the database's data: a bounded number is kept


def _native_zone(tz: Any) -> tuple[str, str | None] | None:
    """Whether orjson writes datetimes in *tz* exactly as ``isoformat()`` does, and under which tag.

    orjson writes a datetime as RFC 3339, which is ``isoformat()``'s text except for UTC offsets
    with seconds (orjson rounds them to minutes): safe are naive datetimes, fixed offsets of whole
    minutes, and ``ZoneInfo`` zones whose offset is 0 at every instant (UTC; the usual session zone
    of a database). Other zones keep ``isoformat()`` (their offsets in old years have seconds).
    """
    if tz in _native_zones:
        return _native_zones[tz]
    native: tuple[str, str | None] | None = None
    if type(tz) is timezone:
        offset = tz.utcoffset(None)
        if offset.seconds % 60 == 0 and not offset.microseconds:
            native = ("$dt", None)
    elif type(tz) is ZoneInfo and tz.key is not None and tz.key in _UTC_KEYS and _keeps_offset_zero(tz):
        native = ("$dtz", tz.key)
    if len(_native_zones) < _NATIVE_ZONES_MAX:
        _native_zones[tz] = native
        if native is not None and native[1] is not None:
            _utc_zone_keys[tz] = native[1]
    return native


def _encode_result_value(value: Any) -> Any:
    """:func:`encode_value` for a value of a result row, with the datetime itself in its tag where
    orjson writes it exactly as ``isoformat()`` would (at a fifth of the cost)."""
    if type(value) is datetime:
        tz = value.tzinfo
        if tz is None or tz is _UTC:
            return {"$dt": value}
        if type(tz) is timezone or type(tz) is ZoneInfo:  # hashable, and the only ones orjson may write
            native = _native_zones.get(tz, _UNKNOWN)
            if native is _UNKNOWN:
                native = _native_zone(tz)
            if native is not None:
                key = native[1]
                return {"$dt": value} if key is None else {"$dtz": [value, key]}
    return encode_value(value)


def encode_result_row(row: Iterable[Any]) -> list[Any]:
    """Encode a result row for ``orjson.dumps`` (without options): the same JSON text as
    ``orjson.dumps(encode_row(row))``, but datetimes are left to orjson where it writes them
    exactly as ``isoformat()`` does. Only for data that goes straight to ``orjson.dumps`` (the
    server's answers); Python code that reads the encoded row needs :func:`encode_row`."""
    return [
        v
        if (t := type(v)) is str
        or v is None
        or (t is int and _INT64_MIN <= v <= _INT64_MAX)
        or (t is float and v - v == 0.0)
        else {"$dtz": [v, key]}  # a timestamp of a UTC-zoned column (PostgreSQL's timestamptz), inline
        if t is datetime and type(tz := v.tzinfo) is ZoneInfo and (key := _utc_zone_keys.get(tz)) is not None
        else _encode_result_value(v)
        for v in row
    ]


def _encode_result_one(v: Any) -> Any:
    """One value as :func:`encode_result_row` encodes it (a row encoder's fallback)."""
    if (t := type(v)) is str or v is None or (t is int and _INT64_MIN <= v <= _INT64_MAX) or (
            t is float and v - v == 0.0):
        return v
    return _encode_result_value(v)


def result_row_encoder(rows: Sequence[Sequence[Any]]) -> Callable[[Any], list[Any]]:
    """A row encoder for rows like *rows* (one result's, all of one width): the same output as
    :func:`encode_result_row` for every row of that width, with each column's check chosen from
    the column's first value that is not None (its exact type; a UTC zone by identity) instead of a
    chain of checks per value. A value of any other type, in any column, takes the general path.
    Cache it per compiled statement and width (a column's type comes from the statement and the
    driver).
    """
    columns = []
    namespace: dict[str, Any] = {"_any": _encode_result_one, "_dict": _encode_dict, "_dt": datetime,
                                 "_MIN": _INT64_MIN, "_MAX": _INT64_MAX}
    for i in range(len(rows[0]) if rows else 0):
        v: Any = next((row[i] for row in rows if row[i] is not None), None)
        t = type(v)
        if t is str:
            columns.append(f"v{i} if type(v{i}) is str or v{i} is None else _any(v{i})")
        elif t is int and _INT64_MIN <= v <= _INT64_MAX:
            columns.append(f"v{i} if (type(v{i}) is int and _MIN <= v{i} <= _MAX) or v{i} is None else _any(v{i})")
        elif t is float and v - v == 0.0:
            columns.append(f"v{i} if (type(v{i}) is float and v{i} - v{i} == 0.0) or v{i} is None else _any(v{i})")
        elif t is datetime and type(v.tzinfo) is ZoneInfo and (_native_zone(v.tzinfo) or ("", None))[1] is not None \
                and v.tzinfo in _utc_zone_keys:
            namespace[f"z{i}"], namespace[f"k{i}"] = v.tzinfo, _utc_zone_keys[v.tzinfo]
            columns.append(f'{{"$dtz": [v{i}, k{i}]}} if type(v{i}) is _dt and v{i}.tzinfo is z{i} '
                           f'else v{i} if v{i} is None else _any(v{i})')
        elif t is bool:
            columns.append(f"v{i} if type(v{i}) is bool or v{i} is None else _any(v{i})")
        elif t is dict:  # a JSON column's object
            columns.append(f"_dict(v{i}) if type(v{i}) is dict else v{i} if v{i} is None else _any(v{i})")
        else:
            columns.append(f"v{i} if v{i} is None else _any(v{i})")
    if not columns:
        return encode_result_row
    key = (*columns, *(namespace[k] for k in namespace if k[0] == "z"))
    encode = _row_encoders.get(key)
    if encode is None:
        names = ", ".join(f"v{i}" for i in range(len(columns)))
        source = f"def encode(row):\n    {names}, = row\n    return [\n        " + ",\n        ".join(columns) + "]\n"
        exec(source, namespace)  # the source holds column numbers only; values are in namespace
        encode = namespace["encode"]
        if len(_row_encoders) < _ROW_ENCODERS_MAX:
            _row_encoders[key] = encode
    return encode


#: Row encoders by their columns' checks (and zones): made once per shape of row.
_row_encoders: dict[tuple[Any, ...], Callable[[Any], list[Any]]] = {}
_ROW_ENCODERS_MAX = 512


def encode_params(params: Iterable[Mapping[str, Any]]) -> list[dict[str, JSONable]]:
    """Encode bound-parameter sets (bind name -> value, one dict per execution).

    Names may be ``str`` subclasses (SQLAlchemy's quoted / truncated labels); they travel as
    plain strings. Anything else as a name is refused.
    """
    out = []
    for param_set in params:
        keys = list(param_set)
        if any(type(k) is not str for k in keys):
            _check_str_like(keys)
            keys = [str(k) for k in keys]
        out.append(dict(zip(keys, encode_row(param_set.values()), strict=True)))
    return out


def _check_str_like(keys: Iterable[Any]) -> None:
    for key in keys:
        if not isinstance(key, str):
            raise _unsupported(key, "as a bind parameter name; only str is allowed there")


# --- decoding ------------------------------------------------------------------


def _str(payload: Any) -> str:
    if type(payload) is not str:
        raise TypeError(f"expected a JSON string, got {type(payload).__name__}")
    return payload


def _array(payload: Any, length: int | None = None) -> list[Any]:
    if type(payload) is not list or length not in (None, len(payload)):
        raise TypeError(f"expected a JSON array of {length or 'any number of'} items")
    return payload


def _decode_float(payload: Any, _: EnumResolver | None = None) -> float:
    value = _FLOAT_SPECIALS.get(_str(payload))
    if value is None:
        raise ValueError("expected 'nan', 'inf' or '-inf'")
    return value


def _decode_int(payload: Any, _: EnumResolver | None = None) -> int:
    if not _INT_RE.fullmatch(_str(payload)):
        raise ValueError("expected decimal digits with an optional '-'")
    return int(payload)


def _decode_decimal(payload: Any, _: EnumResolver | None = None) -> decimal.Decimal:
    try:
        return decimal.Decimal(_str(payload))
    except decimal.InvalidOperation:
        raise ValueError("not a decimal number") from None


_zones: dict[str, ZoneInfo] = {}  # by key: a dictionary look-up instead of ZoneInfo's own cache
_ZONES_MAX = 1024  # keys come off the wire: a bounded number is remembered
# Zones whose offset is 0 at every instant (the database's and most applications' UTC): a wall
# time there is never repeated or skipped, so a decoded value needs no fold check.
_UTC_KEYS = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu",
                       "GMT", "Etc/GMT", "Etc/GMT0", "Etc/GMT+0", "Etc/GMT-0", "GMT0", "GMT+0", "GMT-0",
                       "Etc/Greenwich", "Greenwich"})
_constant_zones: set[str] = set()  # keys of _UTC_KEYS whose ZoneInfo was seen to keep offset 0


def _zone(key: str) -> ZoneInfo:
    zone = _zones.get(key)
    if zone is not None:
        return zone
    try:
        zone = ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise MalformedValueError(
            f"time zone {key!r} is not known here; install the tzdata package or "
            "send a datetime with a fixed-offset datetime.timezone."
        ) from exc
    if len(_zones) < _ZONES_MAX:
        _zones[key] = zone
        if key in _UTC_KEYS and _keeps_offset_zero(zone):
            _constant_zones.add(key)
    return zone


def _keeps_offset_zero(zone: ZoneInfo) -> bool:
    """Whether *zone* has offset 0 and no transitions (as its UTC name promises)."""
    if zone.utcoffset(None) not in (None, timedelta(0)):
        return False
    probes = (datetime(1, 1, 2), datetime(1900, 1, 1), datetime(1970, 1, 1), datetime(2000, 6, 1),
              datetime(2038, 1, 20), datetime(9999, 12, 30))
    return all(zone.utcoffset(p.replace(fold=f)) == timedelta(0) for p in probes for f in (0, 1)) and \
        not getattr(zone, "_trans_utc", ())


_fromisoformat = datetime.fromisoformat
_combine = datetime.combine


def _decode_zoned(payload: Any, _: EnumResolver | None = None) -> datetime:
    if type(payload) is list and len(payload) == 2 and type(payload[0]) is str and type(payload[1]) is str:
        iso, key = payload  # the usual shape, checked without the helpers' calls
    else:
        iso, key = map(_str, _array(payload, 2))
    parsed = datetime.fromisoformat(iso)
    if parsed.tzinfo is None:
        raise ValueError("the ISO string must carry a UTC offset")
    # parsed.replace(tzinfo=zone), at a third of its cost (keyword arguments are slow there)
    wall = datetime.combine(parsed.date(), parsed.time(), _zone(key))
    if key in _constant_zones:
        return wall  # offset 0 at every wall time: no fold to choose
    offset = parsed.utcoffset()
    if wall.utcoffset() != offset and wall.replace(fold=1).utcoffset() == offset:
        return wall.replace(fold=1)  # the later of a repeated or skipped wall time
    return wall


def _decode_timedelta(payload: Any, _: EnumResolver | None = None) -> timedelta:
    days, seconds, microseconds = _array(payload, 3)
    if not type(days) is type(seconds) is type(microseconds) is int:
        raise TypeError("expected [days, seconds, microseconds] as ints")
    return timedelta(days=days, seconds=seconds, microseconds=microseconds)


def _unb64(payload: Any) -> bytes:
    return base64.b64decode(_str(payload), validate=True)


def _decode_symbol(payload: Any, _: EnumResolver | None = None) -> object:
    if _str(payload) not in SYMBOLS:
        raise ValueError(f"unknown symbol; known symbols are {sorted(SYMBOLS)}")
    return SYMBOLS[payload]


def _decode_wrapped(payload: Any, _: EnumResolver | None = None) -> Wrapped:
    kind, data = _array(payload, 2)
    if _str(kind) not in WRAPPED_KINDS:
        raise ValueError(f"unknown wrapper kind; known kinds are {sorted(WRAPPED_KINDS)}")
    value = decode_value(data)
    if not _wrapped_value_fits(kind, value):
        raise TypeError("a wrapped JSON value is a string or bytes, a wrapped integer an int")
    return Wrapped(kind, value)


def _decode_enum(payload: Any, resolver: EnumResolver | None) -> enum.Enum:
    path, name = map(_str, _array(payload, 2))
    if resolver is None:
        raise UnsupportedValueError(
            f"cannot decode enum member {path}.{name}: no enum classes are allowed "
            "here; pass enum_resolver=enum_resolver_for([...]) with your enums."
        )
    try:
        cls = resolver(path)
    except LookupError as exc:  # e.g. a dict-based resolver's KeyError
        raise UnknownEnumError(f"enum class {path!r} is not allowed here.") from exc
    member = cls.__members__.get(name)
    if member is None:
        raise UnknownEnumError(
            f"enum {path!r} has no member {name!r}; make sure client and server "
            "use the same version of it."
        )
    return member


def _items(payload: Any, resolver: EnumResolver | None) -> list[Any]:
    return [decode_value(item, enum_resolver=resolver) for item in _array(payload)]


def _decode_set(payload: Any, resolver: EnumResolver | None) -> set[Any]:
    items = [decode_value(v, enum_resolver=resolver) for v in _array(payload)]
    try:
        return set(items)
    except TypeError:
        raise MalformedValueError("a '$set' payload holds an unhashable value") from None


def _decode_dict(payload: Any, resolver: EnumResolver | None) -> dict[str, Any]:
    if type(payload) is not dict:
        raise TypeError(f"expected a JSON object, got {type(payload).__name__}")
    return {
        key: decode_value(item, enum_resolver=resolver) for key, item in payload.items()
    }


#: Wire tag -> decoder(payload, enum_resolver).
DECODERS: dict[str, Callable[[Any, EnumResolver | None], Any]] = {
    "$f": _decode_float,
    "$i": _decode_int,
    "$dec": _decode_decimal,
    "$dt": lambda p, _: datetime.fromisoformat(_str(p)),
    "$dtz": _decode_zoned,
    "$d": lambda p, _: date.fromisoformat(_str(p)),
    "$t": lambda p, _: time.fromisoformat(_str(p)),
    "$td": _decode_timedelta,
    "$b": lambda p, _: _unb64(p),
    "$ba": lambda p, _: bytearray(_unb64(p)),
    "$mv": lambda p, _: memoryview(_unb64(p)),
    "$u": lambda p, _: uuid.UUID(_str(p)),
    "$o": _decode_dict,
    "$tu": lambda p, r: tuple(_items(p, r)),
    "$set": lambda p, r: _decode_set(p, r),
    "$s": _decode_symbol,
    "$e": _decode_enum,
    "$w": _decode_wrapped,
}


def _short(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."


def _decode_tagged(data: dict[str, Any], resolver: EnumResolver | None) -> Any:
    # The common case first: a timestamp of a UTC-zoned column (PostgreSQL's timestamptz on a
    # UTC session), decoded here without three further calls; exactly what _decode_zoned returns
    payload = data.get("$dtz")
    if type(payload) is list and len(data) == 1 and len(payload) == 2 and payload[1] in _constant_zones \
            and type(payload[0]) is str:
        try:
            parsed = _fromisoformat(payload[0])
        except ValueError:
            pass  # reported by the general path below
        else:
            if parsed.tzinfo is not None:
                return _combine(parsed.date(), parsed.time(), _zones[payload[1]])
    if len(data) != 1:
        raise MalformedValueError(
            f"a tagged value must be a JSON object with exactly one '$tag' key, got "
            f"{_short(data)}; encode values with encode_value()."
        )
    ((tag, payload),) = data.items()
    decoder = DECODERS.get(tag)
    if decoder is None and not str(tag).startswith("$"):
        raise MalformedValueError(
            f"JSON object key {tag!r} is not a '$tag'; encode values with encode_value()."
        )
    if decoder is None:
        raise UnknownValueTagError(
            f"unknown value tag {tag!r}; make sure client and server run the same "
            "query_translation version."
        )
    try:
        return decoder(payload, resolver)
    except ValueCodecError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise MalformedValueError(
            f"malformed {tag!r} payload {_short(payload)} ({exc}); encode values "
            "with encode_value()."
        ) from exc


def decode_value(data: Any, *, enum_resolver: EnumResolver | None = None) -> Any:
    """Decode data produced by ``encode_value`` (after a JSON round trip)."""
    kind = type(data)
    if kind is dict:
        return _decode_tagged(data, enum_resolver)
    if kind is list:
        return _items(data, enum_resolver)
    if data is None or kind is str or kind is int or kind is float or kind is bool:
        return data
    raise MalformedValueError(
        f"cannot decode a {kind.__qualname__}; pass data loaded from JSON."
    )


def _decode_plain(values: Iterable[Any], resolver: EnumResolver | None) -> list[Any]:
    # as decode_value() per item, with plain values passed through and tagged ones dispatched
    # without its extra call (a row of a wide table holds many)
    return [
        v if (t := type(v)) is not dict and t is not list
        else _decode_tagged(v, resolver) if t is dict
        else _items(v, resolver)
        for v in values
    ]


def decode_rows(
    rows: list[list[Any]], *, enum_resolver: EnumResolver | None = None
) -> list[tuple[Any, ...]]:
    """Decode result rows produced by ``encode_row``; plain values pass through."""
    if type(rows) is not list:
        raise MalformedValueError(f"expected rows as a JSON array, got {_short(rows)}.")
    out = []
    for row in rows:
        if type(row) is not list:
            raise MalformedValueError(
                f"expected a row as a JSON array, got {_short(row)}."
            )
        out.append(tuple(_decode_plain(row, enum_resolver)))
    return out


def decode_params(
    params: list[dict[str, Any]], *, enum_resolver: EnumResolver | None = None
) -> list[dict[str, Any]]:
    """Decode bound-parameter sets produced by ``encode_params``."""
    if type(params) is not list or any(type(p) is not dict for p in params):
        raise MalformedValueError(
            f"expected parameter sets as a JSON array of objects, got {_short(params)}."
        )
    return [
        dict(zip(p, _decode_plain(p.values(), enum_resolver), strict=True))
        for p in params
    ]


# --- enums ---------------------------------------------------------------------


def enum_path(cls: type[enum.Enum]) -> str:
    """Return the wire name ``"module:QualName"`` of an enum class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def enum_resolver_for(classes: Iterable[type[enum.Enum]]) -> EnumResolver:
    """Build a resolver that knows only ``classes``, so the wire never imports code."""
    allowed: dict[str, type[enum.Enum]] = {}
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
            raise TypeError(f"enum_resolver_for() expects enum classes, got {cls!r}")
        if allowed.setdefault(enum_path(cls), cls) is not cls:
            raise ValueError(f"two enum classes share the name {enum_path(cls)!r}")

    def resolve(path: str) -> type[enum.Enum]:
        if path not in allowed:
            raise UnknownEnumError(
                f"enum class {path!r} is not allowed here; add it to the classes "
                "passed to enum_resolver_for()."
            )
        return allowed[path]

    return resolve
