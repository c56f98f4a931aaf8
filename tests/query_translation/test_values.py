"""Contract tests for the typed value codec: every type survives orjson exactly."""

from __future__ import annotations

import decimal
import enum
import math
import sys
import uuid
from array import array
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from sqlalchemy.types import JSON
from sqlalchemy.util import symbol

from query_translation import exceptions as exc
from query_translation import values
from query_translation.values import (
    decode_params,
    decode_rows,
    decode_value,
    encode_params,
    encode_result_row,
    encode_row,
    encode_value,
    enum_path,
    enum_resolver_for,
)


class Color(enum.Enum):
    RED = "red"
    GREEN = 2


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mode(enum.StrEnum):
    READ = "r"
    WRITE = "w"


class Perm(enum.Flag):
    R = 4
    W = 2


RESOLVER = enum_resolver_for([Color, Priority, Mode, Perm])
BERLIN = ZoneInfo("Europe/Berlin")
IST = timezone(timedelta(hours=5, minutes=30))
NST = timezone(timedelta(hours=-3, minutes=-30))
MIB = bytes(range(256)) * 4096

CASES: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "str-empty": "",
    "str-unicode": "zaż\u00f3\u0142\u0107 \U0001f600 \x00",
    "str-20000": "ab\u00e9" * 6667,
    "int-zero": 0,
    "int64-max": 2**63 - 1,
    "int64-min": -(2**63),
    "int-2**63": 2**63,
    "int-below-int64": -(2**63) - 1,
    "int-huge": 10**40,
    "float-one": 1.0,
    "float-tenth": 0.1,
    "float-neg-zero": -0.0,
    "float-big": 1e300,
    "float-denormal": 5e-324,
    "float-nan": math.nan,
    "float-inf": math.inf,
    "float-neg-inf": -math.inf,
    "dec-scale": Decimal("1.50"),
    "dec-28-digit-scale": Decimal("0." + "0" * 27 + "1"),
    "dec-zero-scale": Decimal("0E-10"),
    "dec-neg-zero": Decimal("-0"),
    "dec-exponent": Decimal("1E+3"),
    "dec-50-digits": Decimal("1234567890" * 5 + ".5"),
    "dec-nan": Decimal("NaN"),
    "dec-snan": Decimal("sNaN"),
    "dec-inf": Decimal("Infinity"),
    "dec-neg-inf": Decimal("-Infinity"),
    "dt-naive": datetime(2024, 2, 29, 13, 14, 15),
    "dt-micro-max": datetime(2024, 1, 2, 3, 4, 5, 999999),
    "dt-min": datetime.min,
    "dt-max": datetime.max,
    "dt-utc": datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    "dt-plus-0530": datetime(2024, 1, 2, 3, 4, 5, 999999, tzinfo=IST),
    "dt-minus-0330": datetime(1, 1, 1, 12, tzinfo=NST),
    "dt-year-9999-offset": datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=IST),
    "dt-second-offset": datetime(2024, 1, 2, tzinfo=timezone(timedelta(seconds=30))),
    "dtz-berlin": datetime(2024, 7, 1, 12, 0, 0, 123456, tzinfo=BERLIN),
    "dtz-ambiguous-fold0": datetime(2021, 10, 31, 2, 30, tzinfo=BERLIN),
    "dtz-ambiguous-fold1": datetime(2021, 10, 31, 2, 30, tzinfo=BERLIN, fold=1),
    "dtz-gap-fold0": datetime(2021, 3, 28, 2, 30, tzinfo=BERLIN),
    "dtz-gap-fold1": datetime(2021, 3, 28, 2, 30, tzinfo=BERLIN, fold=1),
    "dtz-st-johns": datetime(2024, 1, 2, 3, 4, tzinfo=ZoneInfo("America/St_Johns")),
    "dtz-utc-zone": datetime(2024, 1, 2, tzinfo=ZoneInfo("UTC")),
    "date": date(2024, 2, 29),
    "date-min": date(1, 1, 1),
    "date-max": date(9999, 12, 31),
    "time-naive": time(13, 14, 15),
    "time-micro-max": time(23, 59, 59, 999999),
    "time-plus-0530": time(1, 2, 3, 4, tzinfo=IST),
    "time-minus-0330": time(1, 2, tzinfo=NST),
    "time-utc": time(0, 0, tzinfo=UTC),
    "td-zero": timedelta(0),
    "td-neg-micro": timedelta(days=-1, microseconds=1),
    "td-max": timedelta.max,
    "td-min": timedelta.min,
    "bytes-empty": b"",
    "bytes-binary": b"\x00\xff\x80",
    "bytes-1mib": MIB,
    "bytearray": bytearray(b"\x00abc\xff"),
    "bytearray-empty": bytearray(),
    "memoryview": memoryview(b"\x01\x02"),
    "memoryview-of-bytearray": memoryview(bytearray(b"xyz")),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "uuid-nil": uuid.UUID(int=0),
    "dict-empty": {},
    "dict-unicode-keys": {"kl\u00fcssel": "\u0437\u043d\u0430\u0447", "\U0001f511": 1},
    "dict-tag-like-keys": {"$f": "nan", "$o": {"$i": 1}},
    "dict-json-nested": {"a": [1, None, {"b": None}], "c": True, "d": 1.5, "e": "x"},
    "dict-typed-values": {
        "when": datetime(2024, 1, 1, tzinfo=IST),
        "n": Decimal("2.0"),
    },
    "list-empty": [],
    "list-mixed": [1, "a", None, True, 2.5, [None, [None]]],
    "list-typed": [Decimal("1.0"), (1, 2), {"k": b"v"}],
    "tuple-empty": (),
    "tuple-nested": (1, (2, "3"), [None]),
    "set-empty": set(),
    "set-str": {"a", "b", "\u00e9"},
    "enum": Color.RED,
    "enum-int-value": Color.GREEN,
    "intenum": Priority.HIGH,
    "strenum": Mode.WRITE,
    "flag": Perm.R,
    "json-null": JSON.NULL,
    "wrapped-json": values.Wrapped("json", '{"a": [1]}'),
    "wrapped-jsonb-bytes": values.Wrapped("jsonb", b'{"a": 1}'),
    "wrapped-int2": values.Wrapped("int2", 70000),
}


def _json_round_trip(data: Any) -> Any:
    return orjson.loads(orjson.dumps(data))


def _via_value(value: Any) -> Any:
    return decode_value(_json_round_trip(encode_value(value)), enum_resolver=RESOLVER)


def _via_row(value: Any) -> Any:
    wire = _json_round_trip([encode_row(["pad", value])])
    ((pad, out),) = decode_rows(wire, enum_resolver=RESOLVER)
    assert pad == "pad"
    return out


def _via_params(value: Any) -> Any:
    wire = _json_round_trip(encode_params([{"p": value}]))
    ((name, out),) = decode_params(wire, enum_resolver=RESOLVER)[0].items()
    assert name == "p"
    return out


CHANNELS: dict[str, Callable[[Any], Any]] = {
    "value": _via_value,
    "row": _via_row,
    "params": _via_params,
}


def assert_same(out: Any, expected: Any) -> None:
    """Assert exact type and value, including what ``==`` ignores."""
    assert type(out) is type(expected), (out, expected)
    if isinstance(expected, float):
        assert math.isnan(out) if math.isnan(expected) else out == expected
        assert math.copysign(1, out) == math.copysign(1, expected)
    elif isinstance(expected, Decimal):
        assert str(out) == str(expected)
    elif isinstance(expected, datetime | time):
        assert out.replace(tzinfo=None) == expected.replace(tzinfo=None)  # wall time
        assert out.utcoffset() == expected.utcoffset()
        assert type(out.tzinfo) is type(expected.tzinfo)
        assert out.tzinfo == expected.tzinfo
        assert out.fold == expected.fold
    elif isinstance(expected, list | tuple):
        assert len(out) == len(expected)
        for item, expected_item in zip(out, expected, strict=True):
            assert_same(item, expected_item)
    elif isinstance(expected, dict):
        assert list(out) == list(expected)
        for key in expected:
            assert_same(out[key], expected[key])
    elif isinstance(expected, enum.Enum | symbol):
        assert out is expected
    else:
        assert out == expected


@pytest.mark.parametrize("channel", CHANNELS.values(), ids=CHANNELS.keys())
@pytest.mark.parametrize("value", CASES.values(), ids=CASES.keys())
def test_round_trip_keeps_exact_type_and_value(
    value: Any, channel: Callable[[Any], Any]
) -> None:
    assert_same(channel(value), value)


def _tags_in(data: Any) -> set[str]:
    if isinstance(data, list):
        return set().union(*map(_tags_in, data))
    if isinstance(data, dict):
        ((tag, payload),) = data.items()
        inner = payload.values() if tag == "$o" else payload
        return {tag} | (_tags_in(list(inner)) if tag in ("$o", "$tu") else set())
    return set()


def test_round_trip_cases_cover_every_tag_and_type() -> None:
    used_tags = set().union(*(_tags_in(encode_value(v)) for v in CASES.values()))
    assert used_tags == set(values.DECODERS)
    used_types = {type(v) for v in CASES.values()}
    assert set(values.ENCODERS) <= used_types
    assert {"JSON_NULL"} == set(values.SYMBOLS)


def test_bool_is_not_int_on_the_wire() -> None:
    assert orjson.dumps(encode_row([True, 1, False, 0])) == b"[true,1,false,0]"
    assert decode_rows([[True, 1]])[0] == (True, 1)
    assert [type(v) for v in decode_rows([[True, 1]])[0]] == [bool, int]


def test_float_and_int_stay_apart() -> None:
    assert _json_round_trip(encode_row([1.0, 1])) == [1.0, 1]
    assert [type(v) for v in _via_value([1.0, 1])] == [float, int]


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (Decimal("1.50"), {"$dec": "1.50"}),
        (math.nan, {"$f": "nan"}),
        (-math.inf, {"$f": "-inf"}),
        (2**63, {"$i": "9223372036854775808"}),
        (
            datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=IST),
            {"$dt": "2024-01-02T03:04:05.000006+05:30"},
        ),
        (
            datetime(2024, 7, 1, 12, tzinfo=BERLIN),
            {"$dtz": ["2024-07-01T12:00:00+02:00", "Europe/Berlin"]},
        ),
        (date(2024, 1, 2), {"$d": "2024-01-02"}),
        (time(1, 2, tzinfo=NST), {"$t": "01:02:00-03:30"}),
        (timedelta(days=-1, microseconds=1), {"$td": [-1, 0, 1]}),
        (b"\x00\xff", {"$b": "AP8="}),
        (bytearray(b"a"), {"$ba": "YQ=="}),
        (memoryview(b"a"), {"$mv": "YQ=="}),
        (uuid.UUID(int=1), {"$u": "00000000-0000-0000-0000-000000000001"}),
        ({"$f": 1}, {"$o": {"$f": 1}}),
        ([1, (2,)], [1, {"$tu": [2]}]),
        ({"b", "a"}, {"$set": ["a", "b"]}),
        ({2, "a", 1}, {"$set": ["a", 1, 2]}),
        (Priority.HIGH, {"$e": [enum_path(Priority), "HIGH"]}),
        (JSON.NULL, {"$s": "JSON_NULL"}),
        (values.Wrapped("jsonb", "{}"), {"$w": ["jsonb", "{}"]}),
    ],
    ids=repr,
)
def test_wire_form_is_stable(value: Any, wire: Any) -> None:
    assert encode_value(value) == wire


def test_utc_stays_the_utc_singleton() -> None:
    out = _via_value(datetime(2024, 1, 1, tzinfo=UTC))
    assert out.tzinfo is UTC
    assert _via_value(datetime(2024, 1, 1, tzinfo=IST)).tzinfo == IST


def test_zoned_datetime_gets_zoneinfo_with_same_key() -> None:
    out = _via_value(datetime(2021, 10, 31, 2, 30, tzinfo=BERLIN, fold=1))
    assert out.tzinfo is ZoneInfo("Europe/Berlin")
    assert (out.fold, out.utcoffset()) == (1, timedelta(hours=1))


def test_fold_is_not_sent_where_it_has_no_meaning() -> None:
    # documented limitation: databases ignore fold on naive/fixed-offset values
    assert _via_value(datetime(2021, 10, 31, 2, 30, fold=1)).fold == 0
    assert _via_value(datetime(2024, 7, 1, tzinfo=BERLIN, fold=1)).fold == 0


def test_json_null_identity_survives() -> None:
    assert decode_value(_json_round_trip(encode_value(JSON.NULL))) is JSON.NULL
    assert _via_value({"a": JSON.NULL})["a"] is JSON.NULL


def test_params_keep_bind_names_and_order() -> None:
    params: list[dict[str, Any]] = [
        {"b": 1, "a": Decimal("2.5")},
        {"b": None, "a": Decimal("0E-10")},
    ]
    out = decode_params(_json_round_trip(encode_params(params)))
    assert_same(out, params)


def test_rows_decode_to_tuples() -> None:
    rows = [(1, "a", Decimal("1.0")), (2, None, (3,))]
    out = decode_rows(_json_round_trip([encode_row(r) for r in rows]))
    assert_same(out, rows)


def test_enum_path_and_resolver() -> None:
    assert enum_path(Color) == f"{Color.__module__}:Color"
    assert RESOLVER(enum_path(Mode)) is Mode


def test_decoding_never_imports_modules_named_on_the_wire() -> None:
    wire = {"$e": ["zz_never_imported_module:Evil", "X"]}
    with pytest.raises(exc.UnknownEnumError, match="zz_never_imported_module:Evil"):
        decode_value(wire, enum_resolver=RESOLVER)
    assert "zz_never_imported_module" not in sys.modules


# --- errors ----------------------------------------------------------------------


class _CustomTz(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=1)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "CUSTOM"


class _MyStr(str):
    __slots__ = ()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (object(), r"cannot send a value of type builtins\.object "),
        (frozenset({"a"}), r"type builtins\.frozenset "),
        (_MyStr("x"), r"\._MyStr to the database"),
        (complex(1, 2), r"builtins\.complex"),
        (
            datetime(2024, 1, 1, tzinfo=_CustomTz()),
            "with tzinfo _CustomTz; use datetime.timezone",
        ),
        (time(1, tzinfo=BERLIN), "with tzinfo ZoneInfo"),
        ({1: "a"}, r"builtins\.int as a dict key"),
        ({"a": {("t",): 1}}, r"builtins\.tuple as a dict key"),
        ([1, object()], r"builtins\.object"),
        (memoryview(array("i", [1])), "flat view of bytes"),
        (Perm.R | Perm.W, "only named members can be sent"),
        (symbol("SOME_OTHER_SYMBOL"), r"only values\.SYMBOLS can be sent"),
        pytest.param(10**5000, "send it as a Decimal", id="int-5000-digits"),
    ],
    ids=repr,
)
def test_unsupported_values_are_refused(value: Any, match: str) -> None:
    with pytest.raises(exc.UnsupportedValueError, match=match):
        encode_value(value)
    with pytest.raises(exc.UnsupportedValueError, match=match):
        encode_row([value])


def test_bind_names_must_be_str() -> None:
    with pytest.raises(exc.UnsupportedValueError, match="as a bind parameter name"):
        encode_params([{1: "x"}])  # type: ignore[dict-item]


def test_unknown_tag() -> None:
    with pytest.raises(exc.UnknownValueTagError, match=r"unknown value tag '\$zzz'"):
        decode_value({"$zzz": 1})
    with pytest.raises(
        exc.UnknownValueTagError, match="same query_translation version"
    ):
        decode_rows([[1, {"$x": None}]])


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        ({}, "exactly one '\\$tag' key"),
        ({"$f": "nan", "$i": "1"}, "exactly one '\\$tag' key"),
        ({"plain": 1}, "'plain' is not a '\\$tag'"),
        ({"$f": "NaN"}, "expected 'nan', 'inf' or '-inf'"),
        ({"$f": 1.5}, "expected a JSON string"),
        ({"$i": "12a"}, "expected decimal digits"),
        ({"$i": " 12"}, "expected decimal digits"),
        ({"$i": "1_000"}, "expected decimal digits"),
        ({"$i": "9" * 5000}, "malformed '\\$i' payload"),
        ({"$dec": 1.5}, "expected a JSON string"),
        ({"$dec": "one"}, "not a decimal number"),
        ({"$dt": "yesterday"}, "malformed '\\$dt' payload"),
        ({"$dt": 5}, "expected a JSON string"),
        ({"$dtz": "2024-01-01T00:00:00+01:00"}, "JSON array of 2 items"),
        ({"$dtz": ["2024-01-01T00:00:00", "Europe/Berlin"]}, "must carry a UTC offset"),
        (
            {"$dtz": ["2024-01-01T00:00:00+01:00", "Nowhere/City"]},
            "'Nowhere/City' is not known",
        ),
        (
            {"$dtz": ["2024-01-01T00:00:00+01:00", "../../etc/passwd"]},
            "is not known here",
        ),
        ({"$d": "2024-13-01"}, "malformed '\\$d' payload"),
        ({"$t": "25:00"}, "malformed '\\$t' payload"),
        ({"$td": [1, 2]}, "JSON array of 3 items"),
        ({"$td": [1.5, 0, 0]}, "as ints"),
        ({"$td": [10**10, 0, 0]}, "malformed '\\$td' payload"),
        ({"$b": "not base64!"}, "malformed '\\$b' payload"),
        ({"$ba": None}, "expected a JSON string"),
        ({"$u": "xyz"}, "malformed '\\$u' payload"),
        ({"$o": [1]}, "expected a JSON object"),
        ({"$o": {"a": {}}}, "exactly one '\\$tag' key"),
        ({"$tu": {"a": 1}}, "JSON array"),
        ({"$set": [{"$o": {}}]}, "unhashable"),
        ({"$s": "NOPE"}, "known symbols are \\['JSON_NULL'\\]"),
        ({"$e": ["a:B"]}, "JSON array of 2 items"),
        ({"$w": ["xml", "<a/>"]}, "unknown wrapper kind"),
        ({"$w": ["json", 1]}, "a wrapped JSON value is a string or bytes"),
        ({"$w": ["int2", "1"]}, "a wrapped integer an int"),
        ({"$w": ["json"]}, "JSON array of 2 items"),
    ],
    ids=repr,
)
def test_malformed_values(wire: Any, match: str) -> None:
    with pytest.raises(exc.MalformedValueError, match=match):
        decode_value(wire, enum_resolver=RESOLVER)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: decode_value((1, 2)), "cannot decode a tuple"),
        (lambda: decode_rows({"a": 1}), "rows as a JSON array"),  # type: ignore[arg-type]
        (lambda: decode_rows([[1], "ab"]), "a row as a JSON array"),  # type: ignore[list-item]
        (lambda: decode_params([[1]]), "array of objects"),  # type: ignore[list-item]
        (lambda: decode_params({"a": 1}), "array of objects"),  # type: ignore[arg-type]
    ],
    ids=["value-tuple", "rows-dict", "row-str", "params-list", "params-dict"],
)
def test_malformed_containers(call: Callable[[], Any], match: str) -> None:
    with pytest.raises(exc.MalformedValueError, match=match):
        call()


def test_enum_without_resolver_is_refused() -> None:
    wire = _json_round_trip(encode_value(Color.RED))
    with pytest.raises(
        exc.UnsupportedValueError, match="no enum classes are allowed here"
    ):
        decode_value(wire)


def test_unknown_enum_class_and_member() -> None:
    only_color = enum_resolver_for([Color])
    with pytest.raises(
        exc.UnknownEnumError, match=f"'{enum_path(Mode)}' is not allowed"
    ):
        decode_value(encode_value(Mode.READ), enum_resolver=only_color)
    with pytest.raises(exc.UnknownEnumError, match="has no member 'BLUE'"):
        decode_value({"$e": [enum_path(Color), "BLUE"]}, enum_resolver=only_color)


def test_resolver_lookup_errors_become_unknown_enum() -> None:
    def lookup(path: str) -> type[enum.Enum]:
        raise KeyError(path)

    with pytest.raises(exc.UnknownEnumError, match="is not allowed here"):
        decode_value(encode_value(Color.RED), enum_resolver=lookup)


def test_enum_resolver_for_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="expects enum classes"):
        enum_resolver_for([int])  # type: ignore[list-item]

    def make() -> type[enum.Enum]:
        class Twin(enum.Enum):
            A = 1

        return Twin

    with pytest.raises(ValueError, match="two enum classes share the name"):
        enum_resolver_for([make(), make()])


def test_exception_tree() -> None:
    value_errors = [
        exc.UnsupportedValueError,
        exc.UnknownValueTagError,
        exc.MalformedValueError,
        exc.UnknownEnumError,
    ]
    statement_errors = [
        exc.UnknownNodeError,
        exc.MalformedStatementError,
        exc.UnknownTableError,
        exc.UnknownColumnError,
        exc.UnsupportedStatementError,
        exc.WireVersionError,
    ]
    assert issubclass(exc.TranslationError, ValueError)
    assert all(issubclass(cls, exc.ValueCodecError) for cls in value_errors)
    assert all(issubclass(cls, exc.StatementCodecError) for cls in statement_errors)
    for cls in [exc.TranslationError, *value_errors, *statement_errors]:
        assert cls.__doc__
        assert cls.__name__ in exc.__doc__
    assert exc.UnknownNodeError("Foo").node_type == "Foo"
    error = exc.MalformedStatementError({"where.0": ["bad"]})
    assert error.errors == {"where.0": ["bad"]}
    assert "where.0" in str(error)


def test_decimal_context_does_not_round() -> None:
    with decimal.localcontext(prec=3):
        assert str(_via_value(Decimal("1.23456789"))) == "1.23456789"


# -- the server's result rows: orjson writes datetimes itself where that is exact -------------------

def _result_samples() -> list[Any]:
    zones: list[Any] = [None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-3)),
                        timezone(timedelta(seconds=30)), timezone(timedelta(minutes=1, microseconds=5)),
                        ZoneInfo("UTC"), ZoneInfo("Etc/UTC"), ZoneInfo("Europe/Amsterdam"), ZoneInfo("Africa/Monrovia"),
                        ZoneInfo("America/New_York")]
    walls = [datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999), datetime(999, 5, 5, 5, 5, 5, 50),
             datetime(1890, 1, 1, 12, 0, 0, 5), datetime(1937, 6, 30, 23, 59, 59, 1), datetime(2024, 10, 27, 2, 30),
             datetime(2024, 10, 27, 2, 30, fold=1), datetime(2024, 11, 3, 1, 30, 0, 99999, fold=1),
             datetime(2025, 1, 1, 4, 9, 42, 30648), datetime(2025, 1, 1, 0, 0, 0, 100000)]
    values: list[Any] = [w.replace(tzinfo=z) for z in zones for w in walls]
    return values + [None, "x", 1, 2**70, 1.5, float("nan"), True, {"a": [1, datetime(2025, 1, 1)]},
                     [datetime(2025, 1, 1, tzinfo=UTC)], time(1, 2, 3, 4), date(999, 1, 1)]


def test_encode_result_row_writes_the_same_json_as_encode_row() -> None:
    values = _result_samples()
    for value in values:
        assert orjson.dumps(encode_result_row(["pad", value])) == orjson.dumps(encode_row(["pad", value])), value
    assert orjson.dumps(encode_result_row(values)) == orjson.dumps(encode_row(values))


def test_encode_result_row_refuses_what_encode_row_refuses() -> None:
    class Sub(datetime):
        pass

    with pytest.raises(exc.UnsupportedValueError):
        encode_result_row([Sub(2025, 1, 1)])


def test_a_row_encoder_writes_what_encode_row_writes_for_any_value_in_any_column() -> None:
    samples = _result_samples()
    kinds = ["s", 1, 2**70, 1.5, float("inf"), True, None, {"a": 1}, [1], datetime(2025, 1, 1, tzinfo=ZoneInfo("UTC")),
             datetime(2025, 1, 1, tzinfo=ZoneInfo("Etc/UTC")), datetime(2025, 1, 1, tzinfo=UTC),
             datetime(2025, 1, 1, tzinfo=ZoneInfo("Europe/Berlin")), datetime(2025, 1, 1), Decimal("1.5"), b"x"]
    encode = values.result_row_encoder([[None] * len(kinds), kinds])
    assert orjson.dumps(encode(kinds)) == orjson.dumps(encode_row(kinds))
    for value in samples + kinds:
        row = [value] * len(kinds)
        assert orjson.dumps(encode(row)) == orjson.dumps(encode_row(row)), value
    assert values.result_row_encoder([list(kinds)]) is encode  # one per shape of row
    with pytest.raises(ValueError):
        encode(kinds[:-1])  # a row of another width: the caller keeps one encoder per width
    empty = values.result_row_encoder([[None, None]])  # a column of NULLs only: the general path
    for value in samples:
        assert orjson.dumps(empty([value, None])) == orjson.dumps(encode_row([value, None])), value
