"""Value strategies: application-style values of many classes, each with a label naming its class.

Shared by the differential value test (``test_values_differential``) and the driver replica tests
(``tests/dbsession/test_adapt.py``).
"""

from __future__ import annotations

import collections
import datetime as dt
import zoneinfo
from typing import Any

import pendulum
import pytz
from dateutil import tz as dateutil_tz
from hypothesis import strategies as st
from sqlalchemy.ext.mutable import MutableDict

from . import values_models as vm

__all__ = ["VALUES"]


# -- values -----------------------------------------------------------------------------------------
def _labelled(label: str, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[str, Any]]:
    return strategy.map(lambda value: (label, value))


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
_INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_NAIVE = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 12, 31))
_ZONES = st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])
_DECIMALS = st.decimals(min_value=-(10**12), max_value=10**12, places=6, allow_nan=False)


def _pendulum_aware(naive: dt.datetime, zone: str) -> Any:
    return pendulum.instance(naive, tz=zone)


VALUES: st.SearchStrategy[tuple[str, Any]] = st.one_of(
    _labelled("None", st.none()),
    _labelled("str", _TEXT),
    _labelled("str subclass", _TEXT.map(vm.Text)),
    _labelled("str-mixin enum", st.sampled_from(vm.Shade)),
    _labelled("StrEnum", st.sampled_from(vm.Level)),
    _labelled("int", _INTS),
    _labelled("int subclass", _INTS.map(vm.Count)),
    _labelled("int-mixin enum", st.sampled_from(vm.Size)),
    _labelled("IntEnum", st.sampled_from(vm.Priority)),
    _labelled("IntFlag", st.sampled_from([vm.Perm.R, vm.Perm.R | vm.Perm.W, vm.Perm(0)])),
    _labelled("bool", st.booleans()),
    _labelled("float", st.floats(allow_nan=False, allow_infinity=False, width=32)),
    _labelled("float subclass", st.floats(-1e6, 1e6).map(vm.Ratio)),
    _labelled("Decimal", _DECIMALS),
    _labelled("Decimal subclass", _DECIMALS.map(vm.Money)),
    _labelled("datetime naive", _NAIVE),
    _labelled("datetime fixed offset", st.builds(lambda d, m: d.replace(tzinfo=dt.timezone(dt.timedelta(minutes=m))),
                                                 _NAIVE, st.integers(-14 * 60, 14 * 60))),
    _labelled("datetime ZoneInfo", st.builds(lambda d, z: d.replace(tzinfo=zoneinfo.ZoneInfo(z)), _NAIVE, _ZONES)),
    _labelled("datetime pytz", st.builds(lambda d, z: pytz.timezone(z).localize(d), _NAIVE, _ZONES)),
    _labelled("datetime dateutil", st.builds(lambda d, z: d.replace(tzinfo=dateutil_tz.gettz(z)), _NAIVE, _ZONES)),
    _labelled("datetime hand tzinfo", _NAIVE.map(lambda d: d.replace(tzinfo=vm.HandTZ()))),
    _labelled("datetime subclass", _NAIVE.map(lambda d: vm.Stamp(*d.timetuple()[:6], d.microsecond))),
    _labelled("pendulum DateTime aware", st.builds(_pendulum_aware, _NAIVE, _ZONES)),
    _labelled("pendulum DateTime naive", _NAIVE.map(
        lambda d: pendulum.naive(d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond))),
    _labelled("date", st.dates(dt.date(1900, 1, 1), dt.date(2200, 12, 31))),
    _labelled("pendulum Date", st.dates(dt.date(1900, 1, 1), dt.date(2200, 12, 31)).map(
        lambda d: pendulum.date(d.year, d.month, d.day))),
    _labelled("date subclass", st.dates(dt.date(1900, 1, 1), dt.date(2200, 12, 31)).map(
        lambda d: vm.Day(d.year, d.month, d.day))),
    _labelled("time", st.times()),
    _labelled("time fixed offset", st.times().map(lambda t: t.replace(tzinfo=dt.timezone(dt.timedelta(hours=-3))))),
    _labelled("pendulum Time", st.times().map(lambda t: pendulum.time(t.hour, t.minute, t.second, t.microsecond))),
    _labelled("timedelta", st.timedeltas(dt.timedelta(days=-3000), dt.timedelta(days=3000))),
    _labelled("pendulum Duration", st.integers(-10**6, 10**6).map(lambda s: pendulum.duration(seconds=s))),
    _labelled("bytes", st.binary(max_size=40)),
    _labelled("bytearray", st.binary(max_size=40).map(bytearray)),
    _labelled("memoryview", st.binary(max_size=40).map(memoryview)),
    _labelled("UUID", st.uuids()),
    _labelled("UUID subclass", st.uuids().map(lambda u: vm.Token(int=u.int))),
    _labelled("plain Enum", st.sampled_from(vm.Color)),
    _labelled("object()", st.just(None).map(lambda _: object())),
    _labelled("dict", st.dictionaries(_TEXT, st.one_of(st.none(), _INTS, _TEXT, st.booleans()), max_size=4)),
    _labelled("OrderedDict", st.lists(st.tuples(_TEXT, _INTS), max_size=4).map(collections.OrderedDict)),
    _labelled("MutableDict", st.dictionaries(_TEXT, _INTS, max_size=4).map(MutableDict)),
    _labelled("dict of enums and flags", st.tuples(st.sampled_from(vm.Shade), st.sampled_from(vm.Priority),
                                                   st.sampled_from(vm.Level)).map(
        lambda t: {"shade": t[0], "priority": t[1], "level": t[2], "perm": vm.Perm.R | vm.Perm.X})),
    _labelled("dict with a pendulum DateTime", _NAIVE.map(lambda d: {"at": pendulum.instance(d)})),
    _labelled("list", st.lists(st.one_of(_INTS, st.sampled_from(vm.Size), st.sampled_from(vm.Shade)), max_size=4)),
)
