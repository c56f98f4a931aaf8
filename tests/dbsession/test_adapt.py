"""The driver replicas against the drivers themselves, value by value (no DB-API involved).

For any value, what the server's driver does with the replica's result - after the wire - must
be what the real driver does with the value itself: psycopg picks a dumper with the same oid and
format and dumps the same bytes; PyMySQL writes the same SQL literal; sqlite3 binds the same
value. Or both refuse it with the same exception class. The real drivers run against real
databases (the psycopg dumpers read the connection's settings), on the values of the differential
test plus hand-picked edge cases.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pendulum
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbapi_server._driver_values import DriverValues
from dbsession import _adapt_psycopg, _dbapi
from dbsession._adapt import adapter_for
from dbsession._adapt_sqlite import Unbindable
from query_translation import decode_params, encode_params
from tests.conformance import values_models as vm
from tests.conformance._values import VALUES

SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")

EDGE_CASES: list[Any] = [
    None, "", "x\x00y", vm.Text("a'b\\c"), vm.Shade.DARK, vm.Level.LOW, vm.Size.LARGE, vm.Priority.HIGH,
    vm.Perm.R | vm.Perm.W, vm.Perm(0), True, 2**63 - 1, 2**63, -(2**70), vm.Count(-5), 1.5, float("inf"),
    float("nan"), -0.0, vm.Ratio(2.25), decimal.Decimal("1.50"), decimal.Decimal("NaN"), decimal.Decimal("sNaN"),
    decimal.Decimal("-Infinity"), vm.Money("3.14159"), dt.datetime(2024, 1, 1), dt.datetime(1, 1, 1),
    dt.datetime(9999, 12, 31, 23, 59, 59, 999999), dt.datetime(2024, 7, 1, tzinfo=vm.HandTZ()),
    pendulum.datetime(2024, 3, 31, 2, 30, tz="Europe/Paris"), pendulum.naive(2024, 1, 2, 3, 4, 5, 6),
    pendulum.datetime(9000, 1, 1, 0, 0, 0, 1, tz="UTC"), vm.Stamp(2024, 1, 1, 0, 0, 0, 7),
    dt.date(2024, 2, 29), pendulum.date(2024, 2, 29), vm.Day(1, 1, 1), dt.time(12, 0), pendulum.time(1, 2, 3, 4),
    dt.time(1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2))), dt.time(1, 2, tzinfo=vm.HandTZ()),
    dt.timedelta(days=-1, seconds=5), pendulum.duration(days=2, hours=3), b"", b"\x00\xff",
    bytearray(b"ab"), memoryview(b"abc"), uuid.UUID(int=5), vm.Token(int=6), vm.Color.RED, object(),
    {"a": 1}, collections.OrderedDict(b=2), [1, vm.Shade.LIGHT], [[1, 2], [3, 4]], (1, "a"), {1, 2},
    frozenset({"x"}), dt.datetime(2024, 1, 1).timetuple(), [vm.Priority.HIGH, vm.Priority.LOW],
    [vm.Priority.LOW, vm.Priority.HIGH], [32768, vm.Size.SMALL], [[vm.Shade.DARK], ["x", None]],
    [dt.time(1, tzinfo=dt.UTC), dt.time(2)], [dt.time(1), dt.time(2, tzinfo=dt.UTC)],
    [pendulum.naive(2024, 1, 1), dt.datetime(2024, 1, 2, tzinfo=dt.UTC)], [vm.Color.RED, "red"],
]

VALUE_LIST = st.one_of(VALUES.map(lambda pair: pair[1]), st.sampled_from(EDGE_CASES))


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except _dbapi.Error as exc:  # the stand-in's PEP 249 class, as the real driver's
        return "raised", type(exc).__name__
    except Exception as exc:
        kind = type(exc)
        pep249 = next((c.__name__ for c in kind.__mro__ if c.__name__ in _dbapi.PEP249_ERRORS
                       and c.__module__ != "builtins"), None)
        return "raised", pep249 or kind.__name__


def _through_the_wire(value: Any, dialect: sa.Dialect) -> Any:
    """What the server's driver receives: encoded, decoded, driver wrappers built."""
    params = decode_params(encode_params([{"p": value}]))
    return DriverValues(dialect).wrap(params)[0]["p"]


# -- psycopg ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_engine(pg_url: sa.URL) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url)
    yield engine
    engine.dispose()


def _psycopg_dump(connection: Any, value: Any) -> Any:
    from psycopg.adapt import PyFormat, Transformer

    transformer = Transformer(connection)
    dumper = transformer.get_dumper(value, PyFormat.AUTO)
    data = dumper.dump(value)
    return dumper.oid, dumper.format, None if data is None else bytes(data)


@pytest.mark.postgresql
def test_psycopg_replica_dumps_what_psycopg_dumps(pg_engine: sa.Engine) -> None:
    raw = pg_engine.raw_connection()
    try:
        connection = raw.driver_connection
        connection.autocommit = True  # a refused statement leaves nothing to roll back
        adapter = adapter_for(pg_engine.dialect)

        def check(value: Any) -> None:
            direct = _outcome(lambda: _psycopg_dump(connection, value))
            isolated = _outcome(lambda: _psycopg_dump(
                connection, _through_the_wire(adapter.adapt(value), pg_engine.dialect)))
            if isolated != direct:  # the replica raised what PostgreSQL raises parsing what psycopg sent
                assert isolated == ("raised", "DataError"), value
                assert _outcome(lambda: connection.execute("SELECT %s", [value]).fetchall()) == isolated, value

        for value in EDGE_CASES:
            check(value)
        given(VALUE_LIST)(SETTINGS(check))()
    finally:
        raw.close()


@pytest.mark.postgresql
def test_psycopg_replica_serializes_json_where_psycopg_does(pg_engine: sa.Engine) -> None:
    from psycopg.types.json import Json, Jsonb

    raw = pg_engine.raw_connection()
    try:
        connection = raw.driver_connection
        adapter = adapter_for(pg_engine.dialect)

        def check(value: Any) -> None:
            for real, stand_in in ((Json, _adapt_psycopg.Json), (Jsonb, _adapt_psycopg.Jsonb)):
                direct = _outcome(lambda real=real: _psycopg_dump(connection, real(value)))
                isolated = _outcome(lambda stand_in=stand_in: _psycopg_dump(
                    connection, _through_the_wire(adapter.adapt(stand_in(value)), pg_engine.dialect)))
                assert isolated == direct, value

        for value in EDGE_CASES:
            check(value)
        given(VALUE_LIST)(SETTINGS(check))()
    finally:
        raw.close()


# -- PyMySQL ---------------------------------------------------------------------------------------------
@pytest.mark.mysql
def test_pymysql_replica_writes_the_literal_pymysql_writes(mariadb_url: sa.URL) -> None:
    engine = sa.create_engine(mariadb_url)
    raw = engine.raw_connection()
    try:
        connection = raw.driver_connection
        adapter = adapter_for(engine.dialect)

        def check(value: Any) -> None:
            direct = _outcome(lambda: _ADDRESS.sub("0x?", connection.escape(value)))
            isolated = _outcome(lambda: _ADDRESS.sub("0x?", connection.escape(
                _through_the_wire(adapter.adapt(value), engine.dialect))))
            assert isolated == direct, value

        for value in EDGE_CASES:
            check(value)
        given(VALUE_LIST)(SETTINGS(check))()
    finally:
        raw.close()
        engine.dispose()


# -- sqlite3 ---------------------------------------------------------------------------------------------
def _sqlite_bind(connection: sqlite3.Connection, value: Any) -> Any:
    return connection.execute("SELECT ?, typeof(?)", (value, value)).fetchone()


def test_sqlite_replica_binds_what_sqlite3_binds() -> None:
    engine = sa.create_engine("sqlite://")
    connection = sqlite3.connect(":memory:")
    adapter = adapter_for(engine.dialect)

    def replica(value: Any) -> Any:
        try:
            return _sqlite_bind(connection, _through_the_wire(adapter.adapt(value), engine.dialect))
        except Unbindable as exc:  # the caller words it with the position: "Error binding ..."
            raise sqlite3.ProgrammingError(
                f"Error binding parameter 1: type '{exc.type_name}' is not supported") from None

    def check(value: Any) -> None:
        assert _outcome(lambda: replica(value)) == _outcome(lambda: _sqlite_bind(connection, value)), value

    for value in EDGE_CASES:
        check(value)
    given(VALUE_LIST)(SETTINGS(check))()


def test_sqlite_replica_uses_the_applications_adapters_and_conform() -> None:
    class Celsius:
        def __init__(self, degrees: float) -> None:
            self.degrees = degrees

    class Kelvin:
        def __init__(self, degrees: float) -> None:
            self.degrees = degrees

        def __conform__(self, protocol: Any) -> Any:
            return self.degrees + 273.15 if protocol is sqlite3.PrepareProtocol else None

    adapter = adapter_for(sa.create_engine("sqlite://").dialect)
    sqlite3.register_adapter(Celsius, lambda c: f"{c.degrees}C")
    try:
        assert adapter.adapt(Celsius(21.5)) == "21.5C"
        assert adapter.adapt(Kelvin(1.0)) == 274.15
    finally:
        del sqlite3.adapters[(Celsius, sqlite3.PrepareProtocol)]
    with pytest.raises(Unbindable) as caught:
        adapter.adapt(Celsius(1.0))
    assert caught.value.type_name == "Celsius"
