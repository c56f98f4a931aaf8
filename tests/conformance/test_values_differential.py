"""Differential, property-based: values of many classes x every column type, direct vs isolated.

Each example binds one value - drawn from application-style classes: pendulum, pytz and dateutil
datetimes, a hand-written tzinfo, subclasses of ``str`` / ``int`` / ``float`` / ``Decimal`` /
``datetime`` / ``date`` / ``UUID``, ``str`` and ``int`` mixin enums, ``StrEnum``, ``IntEnum``,
``IntFlag``, ``OrderedDict`` and ``MutableDict`` in JSON, ``object()``... - into one column of
``value_probe`` (``values_models.py``), on twin databases: through a plain ``Session`` on
database A and through an isolated ``DBSession`` on database B, served by a DB-API in its own
process (``dbapi-server serve``, another ``PYTHONHASHSEED``), as in production. Steps:
add + flush, commit, read the column back, filter by it (``WHERE column = value``). Both sides
must have the same outcome at every step (success, or the same exception class from the same
step), store the same raw row (read with a plain engine on each twin, no result processing) and
read back the same values with the same Python types.

The example count per database is printed (``values differential: ...``). Default 200 examples
per database, about a minute each on a busy machine; a long run: ``DBSESSION_VALUES_EXAMPLES=5000``.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import enum
import itertools
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pendulum
import pytest
import pytz
import sqlalchemy as sa
from dateutil import tz as dateutil_tz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.mutable import MutableDict
from sqlalchemy.orm import Session

from . import values_models as vm
from ._values import VALUES
from .conftest import MYSQL_DEFAULT_URL, PG_DEFAULT_URL, _backend_params, _server_pair, _sqlite_engine
from .values_models import Probe

EXAMPLES = int(os.environ.get("DBSESSION_VALUES_EXAMPLES", "200"))
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


# -- the two sides ------------------------------------------------------------------------------------
@dataclass
class Twin:
    """One database and how to reach it: the session factory and a plain engine for raw reads."""

    sessions: Callable[[], Session]
    engine: sa.Engine


@dataclass
class Twins:
    backend: str
    direct: Twin
    isolated: Twin
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    classes: set[str] = field(default_factory=set)


@contextmanager
def _database_pair(backend: str, tmp: Any) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    if backend == "sqlite":
        engines = [_sqlite_engine(str(tmp / f"values_{label}.sqlite")) for label in "ab"]
        try:
            yield engines[0], engines[1]
        finally:
            for engine in engines:
                engine.dispose()
        return
    url = os.environ.get("DBSESSION_TEST_PG_URL", PG_DEFAULT_URL) if backend == "postgresql" \
        else os.environ.get("DBSESSION_TEST_MYSQL_URL", MYSQL_DEFAULT_URL)
    pairs = _server_pair(backend, url, f"{backend} at {sa.make_url(url).render_as_string()}")
    pair = next(pairs)
    try:
        yield pair.a.engine, pair.b.engine
    finally:
        pairs.close()


@contextmanager
def values_dbapi(engine: sa.Engine) -> Iterator[tuple[str, str]]:
    """The DB-API serving database B: yields (URL, token).

    In its own process, started as a user starts it (``dbapi-server serve``, with a
    ``PYTHONHASHSEED`` other than this process's), importing this test's metadata module.
    """
    from tests.servers import dbapi_process

    with dbapi_process(engine.url, "tests.conformance.values_models:metadata") as server:
        yield server.url, server.token


@pytest.fixture(scope="module", params=_backend_params())
def twins(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    from sqlalchemy.orm import sessionmaker

    from dbsession import DBSession, guard

    backend = request.param
    with _database_pair(backend, tmp_path_factory.mktemp(f"values_{backend}")) as (engine_a, engine_b):
        for engine in (engine_a, engine_b):
            vm.metadata.drop_all(engine)
            vm.metadata.create_all(engine)
        with values_dbapi(engine_b) as (url, token):
            isolated = sessionmaker(class_=DBSession, database_access_isolation=True, database_api_host=url,
                                    token=token)
            yield Twins(backend, Twin(sessionmaker(bind=engine_a), engine_a), Twin(isolated, engine_b))
        guard.uninstall()
        for engine in (engine_a, engine_b):
            vm.metadata.drop_all(engine)


# -- one example ----------------------------------------------------------------------------------------
def _exception(exc: BaseException) -> tuple[str, ...]:
    """An exception's class, and for a wrapped one (StatementError) the class it wraps."""
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if isinstance(exc, sa.exc.StatementError) and not isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        return name, type(exc.orig).__qualname__
    return (name,)


def _plain(value: Any) -> Any:
    """A comparable form: exact type and value (object addresses masked, floats by repr)."""
    if isinstance(value, sa.Row):
        value = tuple(value)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_plain(v) for v in value))
    if isinstance(value, dict):
        return (type(value).__name__, tuple((_plain(k), _plain(v)) for k, v in value.items()))
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return (type(value).__name__, bytes(value))
    if isinstance(value, str):
        return (type(value).__name__, _ADDRESS.sub(" at 0x?", value))
    if isinstance(value, (dt.datetime, dt.time)):
        return (type(value).__name__, value.isoformat(), str(value.utcoffset()), type(value.tzinfo).__name__)
    if isinstance(value, enum.Enum):
        return (type(value).__qualname__, value.name)
    return (type(value).__name__, _ADDRESS.sub(" at 0x?", repr(value)))


def _run(twin: Twin, pk: int, column: str, value: Any) -> dict[str, Any]:
    """The example's steps on one side; each step's outcome."""
    out: dict[str, Any] = {}
    with twin.sessions() as session:
        try:
            session.add(Probe(id=pk, **{column: value}))
        except Exception as exc:  # refused by the attribute (MutableDict coerces): no row
            out["add"] = _exception(exc)
        try:
            session.flush()
        except Exception as exc:  # the outcome under test: recorded and compared
            out["flush"] = _exception(exc)
            session.rollback()
        else:
            out["flush"] = "ok"
            try:
                session.commit()
                out["commit"] = "ok"
            except Exception as exc:
                out["commit"] = _exception(exc)
                session.rollback()
    with twin.sessions() as session:
        try:
            out["read"] = _plain(session.execute(sa.select(getattr(Probe, column)).where(Probe.id == pk)).all())
        except Exception as exc:
            out["read"] = _exception(exc)
            session.rollback()
        try:
            found = session.execute(sa.select(Probe.id).where(getattr(Probe, column) == value)
                                    .where(Probe.id == pk)).all()
            out["filter"] = _plain(found)
        except Exception as exc:
            out["filter"] = _exception(exc)
            session.rollback()
    with twin.engine.connect() as conn:  # the stored row, raw: the driver's values, no processing
        raw = conn.exec_driver_sql(f"SELECT {column} FROM value_probe WHERE id = {pk}").all()
        out["stored"] = _plain([tuple(row) for row in raw])
    return out


def _check(twins: Twins, label: str, column: str, value: Any) -> None:
    pk = next(twins.ids)
    direct = _run(twins.direct, pk, column, value)
    isolated = _run(twins.isolated, pk, column, value)
    twins.counts["examples"] += 1
    twins.counts["stored" if direct.get("commit") == "ok" else "refused"] += 1
    twins.classes.add(label)
    assert isolated == direct, (
        f"[{twins.backend}] {label} {value!r} into {column}:\n  direct:   {direct}\n  isolated: {isolated}")


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def _differential(twins: Twins, data: st.DataObject) -> None:
    label, value = data.draw(VALUES, label="value")
    column = data.draw(st.sampled_from(vm.COLUMNS), label="column")
    _check(twins, label, column, value)


def test_values_behave_as_on_a_direct_connection(twins: Twins, capsys: pytest.CaptureFixture[str]) -> None:
    _differential(twins)
    summary = {"database": twins.backend, **twins.counts, "value_classes": len(twins.classes)}
    with capsys.disabled():
        print(f"\nvalues differential: {json.dumps(summary)}")
    assert twins.counts["examples"] >= min(EXAMPLES, 50)


# the issue's own cases, every column, every database: not left to chance
ISSUE_VALUES = [
    ("pendulum DateTime aware", pendulum.datetime(2024, 3, 31, 2, 30, tz="Europe/Paris")),
    ("pendulum DateTime naive", pendulum.naive(2024, 1, 2, 3, 4, 5, 6)),
    ("pendulum Date", pendulum.date(2024, 2, 29)),
    ("pendulum Time", pendulum.time(23, 59, 59, 999999)),
    ("datetime pytz", pytz.timezone("America/New_York").localize(dt.datetime(2024, 11, 3, 1, 30), is_dst=False)),
    ("datetime dateutil", dt.datetime(2024, 7, 1, 12, tzinfo=dateutil_tz.gettz("Asia/Kolkata"))),
    ("datetime hand tzinfo", dt.datetime(2024, 7, 1, 12, tzinfo=vm.HandTZ())),
    ("datetime subclass", vm.Stamp(2024, 7, 1, 12, 0, 0, 5)),
    ("str subclass", vm.Text("quoted'name")),
    ("int subclass", vm.Count(42)),
    ("Decimal subclass", vm.Money("12.3400")),
    ("str-mixin enum", vm.Shade.DARK),
    ("int-mixin enum", vm.Size.LARGE),
    ("StrEnum", vm.Level.HIGH),
    ("IntEnum", vm.Priority.HIGH),
    ("IntFlag", vm.Perm.R | vm.Perm.W),
    ("dict of enums and flags", {"shade": vm.Shade.LIGHT, "flag": vm.Perm.X, "n": vm.Priority.LOW}),
    ("OrderedDict", collections.OrderedDict([("b", 1), ("a", [1, 2])])),
    ("MutableDict", MutableDict({"k": "v"})),
    ("object()", object()),
    ("plain Enum", vm.Color.GREEN),
    ("float nan", math.nan),
    ("Decimal NaN", decimal.Decimal("NaN")),
    ("big int", 2**70),
    ("UUID", uuid.UUID(int=7)),
    ("list of IntEnum, last one small", [vm.Priority.HIGH, vm.Priority.LOW]),
    ("list of mixed int classes", [32768, vm.Size.SMALL]),
]


@pytest.mark.parametrize("column", vm.COLUMNS)
def test_the_issues_values_behave_as_on_a_direct_connection(twins: Twins, column: str) -> None:
    for label, value in ISSUE_VALUES:
        _check(twins, label, column, value)
