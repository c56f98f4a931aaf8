"""Corpus operations - types at the edges: extreme values written and read back, a non-idempotent
``TypeDecorator`` (``surface_item.secret``), ``cast`` / ``type_coerce`` variants, JSON paths."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy import bindparam, cast, func, literal, select, type_coerce, update
from sqlalchemy.orm import Session

from ..models import Connection, Dag, DagRun, Log, Variable, XCom
from ..models_surface import EncText, SurfaceItem
from ..seed import IST, NST, UTC
from ._helpers import TI, TI_KEY, new_dag, new_run
from ._registry import op


def _digest(v: object) -> list:
    """Type, length and SHA-256 of a large str / bytes value (the value itself would flood a diff)."""
    if v is None:
        return [None]
    raw = v.encode() if isinstance(v, str) else bytes(v)  # type: ignore[arg-type]
    return [type(v).__name__, len(v), hashlib.sha256(raw).hexdigest()]  # type: ignore[arg-type]


def _item(label: str, **kw: object) -> SurfaceItem:
    return SurfaceItem(label=label, **kw)


# --- Decimal -------------------------------------------------------------------------------------


@op("types.decimal_max_scale_roundtrip", writes=True)
def _(s: Session):
    # log.amount is Numeric(12, 4): eight integer digits, four at the maximum scale
    values = [
        Decimal("99999999.9999"),
        Decimal("-99999999.9999"),
        Decimal("0.0001"),
        Decimal("-0.0001"),
        Decimal("1E+2"),
        Decimal("7"),
        Decimal("0.10"),
    ]
    logs = [Log(event="dec_edge", amount=v) for v in values]
    s.add_all(logs)
    s.commit()
    return s.execute(select(Log.id, Log.amount).where(Log.event == "dec_edge").order_by(Log.id)).all()


@op("types.decimal_max_scale_filter_and_sum", writes=True)
def _(s: Session):
    s.add_all([Log(event="dec_sum", amount=Decimal(v)) for v in ("99999999.9999", "-0.0001", "0.0002")])
    s.commit()
    return [
        s.scalars(
            select(Log.id).where(Log.amount == Decimal("99999999.9999")).order_by(Log.id)
        ).all(),
        s.scalar(select(func.sum(Log.amount)).where(Log.event == "dec_sum")),
        s.scalar(select(func.max(Log.amount)).where(Log.event == "dec_sum")),
    ]


@op("types.decimal_wide_scale_roundtrip", writes=True)
def _(s: Session):
    # Numeric(20, 10); SQLite goes through float (lossy, but identically on both sides)
    values = ["1234567890.0123456789", "0.0000000001", "-9999999999.9999999999", "0E-10"]
    s.add_all([_item(f"dec{i}", amount=Decimal(v)) for i, v in enumerate(values)])
    s.commit()
    return s.execute(select(SurfaceItem.label, SurfaceItem.amount).order_by(SurfaceItem.id)).all()


# --- date / time -----------------------------------------------------------------------------------


@op("types.microseconds_roundtrip", writes=True)
def _(s: Session):
    stamps = [
        dt.datetime(2024, 5, 6, 7, 8, 9, 1, tzinfo=UTC),
        dt.datetime(2024, 5, 6, 7, 8, 9, 999999, tzinfo=IST),
        dt.datetime(2024, 5, 6, 7, 8, 9, 500000, tzinfo=NST),
    ]
    times = [dt.time(0, 0, 0, 1), dt.time(23, 59, 59, 999999), dt.time(12, 0, 0, 500000)]
    s.add_all([_item(f"us{i}", ts=t, at_time=tm) for i, (t, tm) in enumerate(zip(stamps, times))])
    s.commit()
    s.expire_all()
    return s.execute(
        select(SurfaceItem.label, SurfaceItem.ts, SurfaceItem.at_time).order_by(SurfaceItem.id)
    ).all()


@op("types.microseconds_filter_exact", writes=True)
def _(s: Session):
    t = dt.datetime(2024, 5, 6, 7, 8, 9, 123457, tzinfo=UTC)
    s.add_all([_item("a", ts=t), _item("b", ts=t.replace(microsecond=123456))])
    s.commit()
    return [
        s.scalars(select(SurfaceItem.label).where(SurfaceItem.ts == t)).all(),
        s.scalars(select(SurfaceItem.label).where(SurfaceItem.ts < t).order_by(SurfaceItem.id)).all(),
    ]


@op("types.far_past_future_dates", writes=True)
def _(s: Session):
    days = [dt.date(1000, 1, 1), dt.date(9999, 12, 31), dt.date(1970, 1, 1), dt.date(2000, 2, 29)]
    logs = [Log(event="far_day", day=d) for d in days]
    s.add_all(logs)
    s.commit()
    return [
        s.execute(select(Log.id, Log.day).where(Log.event == "far_day").order_by(Log.id)).all(),
        s.execute(select(func.min(Log.day), func.max(Log.day))).one(),
    ]


@op("types.far_past_future_datetimes", writes=True)
def _(s: Session):
    stamps = [
        dt.datetime(1000, 1, 2, 0, 0, 0, 0, tzinfo=UTC),
        dt.datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC),
        dt.datetime(1000, 1, 2, 3, 4, 5, 6, tzinfo=IST),
        dt.datetime(9999, 12, 30, 1, 2, 3, 4, tzinfo=NST),
    ]
    s.add_all([_item(f"far{i}", ts=t) for i, t in enumerate(stamps)])
    s.commit()
    return s.execute(select(SurfaceItem.label, SurfaceItem.ts).order_by(SurfaceItem.id)).all()


@op("types.far_naive_datetimes", writes=True)
def _(s: Session):
    r1 = new_run("tutorial", "far_past", data_interval_start=dt.datetime(1000, 1, 1, 0, 0, 0, 1))
    r2 = new_run("tutorial", "far_future", data_interval_start=dt.datetime(9999, 12, 31, 23, 59, 59))
    s.add_all([r1, r2])
    s.commit()
    return s.execute(
        select(DagRun.run_id, DagRun.data_interval_start)
        .where(DagRun.run_id.in_(["far_past", "far_future"]))
        .order_by(DagRun.id)
    ).all()


@op("types.offsets_written_and_read_back", writes=True)
def _(s: Session):
    d1 = new_dag("off_ist", created_at=dt.datetime(2024, 3, 10, 23, 45, 0, 250000, tzinfo=IST))
    d2 = new_dag("off_nst", created_at=dt.datetime(2024, 3, 10, 0, 15, 0, 750000, tzinfo=NST))
    d3 = new_dag("off_odd", created_at=dt.datetime(2024, 3, 10, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=14))))
    s.add_all([d1, d2, d3])
    s.commit()
    s.expire_all()
    return [
        [d.created_at for d in (d1, d2, d3)],
        s.execute(
            select(Dag.dag_id, Dag.created_at).where(Dag.dag_id.startswith("off_")).order_by(Dag.dag_id)
        ).all(),
    ]


@op("types.offset_update_statement", writes=True)
def _(s: Session):
    s.execute(
        update(TI)
        .where(TI.dag_id == "tutorial")
        .values(start_date=dt.datetime(2024, 8, 1, 5, 30, 0, 1, tzinfo=IST))
        .execution_options(synchronize_session=False)
    )
    ti = s.get(TI, TI_KEY)
    ti.end_date = dt.datetime(2024, 8, 1, 1, 0, 0, 2, tzinfo=NST)
    s.commit()
    return s.execute(select(TI.start_date, TI.end_date).where(TI.dag_id == "tutorial").order_by(
        TI.run_id, TI.task_id, TI.map_index)).all()


@op("types.offset_filter_same_instant")
def _(s: Session):
    # example_python.created_at is 2024-01-02 10:30:15.123456+05:30 == 05:00:15.123456 UTC
    ist = dt.datetime(2024, 1, 2, 10, 30, 15, 123456, tzinfo=IST)
    utc = ist.astimezone(UTC)
    return [
        s.scalars(select(Dag.dag_id).where(Dag.created_at == ist)).all(),
        s.scalars(select(Dag.dag_id).where(Dag.created_at == utc)).all(),
        s.scalars(select(Dag.dag_id).where(Dag.created_at >= utc).order_by(Dag.dag_id)).all(),
    ]


# --- bytes / text / json ---------------------------------------------------------------------------


@op("types.bytes_empty_and_1mib", writes=True)
def _(s: Session):
    big = bytes(range(256)) * 4096  # 1 MiB
    s.add_all([_item("empty", blob=b""), _item("big", blob=big), _item("none", blob=None)])
    s.commit()
    s.expire_all()
    rows = s.execute(select(SurfaceItem.label, SurfaceItem.blob).order_by(SurfaceItem.id)).all()
    return [
        [(label, _digest(blob)) for label, blob in rows],
        s.scalars(select(SurfaceItem.label).where(SurfaceItem.blob == b"")).all(),
        s.scalar(select(func.length(SurfaceItem.blob)).where(SurfaceItem.label == "big")),
    ]


@op("types.bytes_1mib_update_and_filter", writes=True)
def _(s: Session):
    big = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB, not periodic in 256
    item = _item("b", blob=b"\x00")
    s.add(item)
    s.flush()
    item.blob = big
    s.commit()
    return [
        _digest(s.scalar(select(SurfaceItem.blob).where(SurfaceItem.blob == big))),
        item.version,
    ]


@op("types.bytes_xcom_nul_and_high", writes=True)
def _(s: Session):
    x = s.get(XCom, 1)
    x.value = b"\x00" * 1000 + b"\xff" * 1000
    s.commit()
    s.expire_all()
    return _digest(s.get(XCom, 1).value)


@op("types.text_20000_chars", writes=True)
def _(s: Session):
    text = ("aé日" * 6667)[:20000]  # 1-, 2- and 3-byte UTF-8 characters
    v = Variable(key="big_text", val=text)
    s.add(v)
    s.commit()
    s.expire_all()
    return [
        _digest(s.get(Variable, v.id).val),
        s.scalar(select(func.count()).select_from(Variable).where(Variable.val == text)),
        s.scalar(select(func.substr(Variable.val, 19998, 3)).where(Variable.key == "big_text")),
    ]


@op("types.text_astral_long", writes=True)
def _(s: Session):
    text = "\U0001f680x" * 10000  # 20,000 characters, half of them outside the BMP
    s.add(_item("astral", body=text))
    s.commit()
    s.expire_all()
    return [
        _digest(s.scalar(select(SurfaceItem.body))),
        s.scalar(select(func.count()).select_from(SurfaceItem).where(SurfaceItem.body == text)),
    ]


@op("types.json_unicode_keys", writes=True)
def _(s: Session):
    extra = {"ключ": "значение", "日本": [1, None, "二"], "emoji \U0001f680": {"ñ": None}, "": "empty key"}
    s.add(Connection(conn_id="uni_json", conn_type="x", extra=extra))
    s.commit()
    s.expire_all()
    return [
        s.scalar(select(Connection.extra).where(Connection.conn_id == "uni_json")),
        s.scalar(select(Connection.extra["ключ"].as_string()).where(Connection.conn_id == "uni_json")),
        s.scalar(select(Connection.extra["日本"]).where(Connection.conn_id == "uni_json")),
    ]


@op("types.json_null_and_nested_arrays", writes=True)
def _(s: Session):
    payloads = [
        [None, [1, [2, [3, None]]], {"a": []}],
        {"k": None, "arr": [[], [[]], [None, {"x": [None]}]]},
        None,  # JSON null (log.payload has none_as_null=False)
        [],
        {"n": [1.5, -0.0, 10**18, True, False, "s"]},
    ]
    logs = [Log(event="json_edge", payload=p) for p in payloads]
    s.add_all(logs)
    s.commit()
    s.expire_all()
    return s.execute(
        select(Log.id, Log.payload, Log.payload.is_(None)).where(Log.event == "json_edge").order_by(Log.id)
    ).all()


@op("types.json_deep_nesting", writes=True)
def _(s: Session):
    doc: object = "leaf"
    for i in range(14):  # 28 levels of nesting: MariaDB's JSON_VALID stops at 32
        doc = {f"level{i}": [doc, i]}
    s.add(_item("deep", doc=doc))
    s.commit()
    s.expire_all()
    return s.scalar(select(SurfaceItem.doc))


@op("types.json_path_index")
def _(s: Session):
    # run 3 (index 2 in _CONFS): {"nested": {"list": [1, 2.5, "three", None, False]}, ...}
    return s.execute(
        select(DagRun.conf[("nested", "list", 1)], DagRun.conf[("nested", "list", 2)]).where(DagRun.id == 3)
    ).one()


@op("types.json_typed_accessors")
def _(s: Session):
    return s.execute(
        select(
            DagRun.conf["param"].as_integer(),
            DagRun.conf["flag"].as_boolean(),
            DagRun.conf["param"].as_float(),
        ).where(DagRun.id == 1)
    ).one()


@op("types.json_as_numeric")
def _(s: Session):
    return s.scalar(select(Connection.extra["timeout"].as_numeric(10, 2)).where(Connection.conn_id == "http_default"))


@op("types.uuid_extremes", writes=True)
def _(s: Session):
    ti = s.get(TI, TI_KEY)
    ti.external_executor_id = uuid.UUID(int=0)
    other = s.get(TI, ("tutorial", "load", TI_KEY[2], -1))
    other.external_executor_id = uuid.UUID(int=2**128 - 1)
    s.commit()
    return [
        s.scalars(
            select(TI.external_executor_id).where(TI.dag_id == "tutorial", TI.run_id == TI_KEY[2])
            .order_by(TI.task_id, TI.map_index)
        ).all(),
        s.scalars(select(TI.task_id).where(TI.external_executor_id == uuid.UUID(int=0))).all(),
    ]


@op("types.double_extremes", writes=True)
def _(s: Session):
    values = [1.7976931348623157e308, 2.2250738585072014e-308, 0.1 + 0.2, -1e-300, 123456789.12345679]
    s.add_all([Log(event="dbl", ratio=v) for v in values])
    s.commit()
    s.expire_all()
    return s.scalars(select(Log.ratio).where(Log.event == "dbl").order_by(Log.id)).all()


# --- a TypeDecorator processed exactly once -------------------------------------------------------


@op("types.typedecorator_roundtrip", writes=True)
def _(s: Session):
    item = _item("td", secret="s3cret")
    s.add(item)
    s.commit()
    s.expire_all()
    return [
        item.secret,
        s.scalar(select(SurfaceItem.secret).where(SurfaceItem.secret == "s3cret")),
        s.scalar(select(type_coerce(SurfaceItem.secret, sa.String))),  # the stored, encoded value
    ]


@op("types.typedecorator_executemany", writes=True)
def _(s: Session):
    s.execute(sa.insert(SurfaceItem), [{"label": f"m{i}", "secret": f"v{i}", "version": 1} for i in range(4)])
    s.commit()
    return [
        s.execute(select(SurfaceItem.label, SurfaceItem.secret).order_by(SurfaceItem.id)).all(),
        s.scalars(select(type_coerce(SurfaceItem.secret, sa.String)).order_by(SurfaceItem.id)).all(),
    ]


@op("types.typedecorator_update_in_and_null", writes=True)
def _(s: Session):
    s.add_all([_item("u1", secret="a"), _item("u2", secret="b"), _item("u3", secret=None)])
    s.commit()
    n = s.execute(
        update(SurfaceItem)
        .where(SurfaceItem.secret.in_(["a", "zz"]))
        .values(secret="changed")
        .execution_options(synchronize_session="fetch")
    ).rowcount
    s.commit()
    return [
        n,
        s.execute(select(SurfaceItem.label, SurfaceItem.secret).order_by(SurfaceItem.id)).all(),
        s.scalars(select(SurfaceItem.label).where(SurfaceItem.secret.is_(None))).all(),
    ]


@op("types.typedecorator_orm_update_flush", writes=True)
def _(s: Session):
    item = _item("f", secret="one")
    s.add(item)
    s.flush()
    item.secret = "two"
    s.flush()
    s.refresh(item)
    out = [item.secret, item.version]
    s.commit()
    return [out, s.scalar(select(type_coerce(SurfaceItem.secret, sa.String)))]


@op("types.typedecorator_insert_returning", writes=True)
def _(s: Session):
    stmt = sa.insert(SurfaceItem).values(label="r", secret="ret", version=1)
    if s.get_bind().dialect.insert_returning:
        got = s.execute(stmt.returning(SurfaceItem.secret, SurfaceItem.label)).all()
    else:
        s.execute(stmt)
        got = None
    s.commit()
    return [got, s.execute(select(SurfaceItem.label, SurfaceItem.secret)).all()]


@op("types.typedecorator_literal")
def _(s: Session):
    # the bound literal is encoded once; the lower()ed string is decoded once (not a bind: type_coerce
    # on a bound value would re-type the bind itself)
    return s.execute(select(literal("lit", EncText()), type_coerce(func.lower(literal("ENC:RAW")), EncText()))).one()


@op("types.typedecorator_bindparam")
def _(s: Session):
    stmt = select(type_coerce(bindparam("p", type_=EncText()), sa.String))
    return s.scalar(stmt, {"p": "bound"})


# --- cast / type_coerce variants --------------------------------------------------------------------


@op("types.cast_string_to_date", backends={"postgresql", "mysql"})
def _(s: Session):
    return s.scalar(select(cast(literal("2024-02-29"), sa.Date)))


@op("types.cast_string_to_numeric")
def _(s: Session):
    return s.execute(
        select(cast(literal("12.50"), sa.Numeric(10, 2)), cast(literal("-0.125"), sa.Numeric(10, 3)))
    ).one()


@op("types.cast_decimal_to_integer")
def _(s: Session):
    return s.scalars(
        select(cast(Log.amount, sa.Integer)).where(Log.amount.is_not(None)).order_by(Log.id)
    ).all()


@op("types.cast_int_to_string_len")
def _(s: Session):
    return s.scalars(select(cast(DagRun.id, sa.String(10)) + "#").order_by(DagRun.id)).all()


@op("types.cast_float_to_integer")
def _(s: Session):
    return s.scalars(
        select(cast(TI.duration, sa.Integer)).where(TI.duration.is_not(None)).order_by(*(
            TI.dag_id, TI.run_id, TI.task_id, TI.map_index))
    ).all()


@op("types.cast_in_where")
def _(s: Session):
    return s.scalars(
        select(DagRun.id).where(cast(DagRun.id, sa.String(10)).in_(["1", "10", "11"])).order_by(DagRun.id)
    ).all()


@op("types.type_coerce_int_to_boolean")
def _(s: Session):
    return s.scalars(
        select(type_coerce(TI.try_number > 1, sa.Boolean)).order_by(
            TI.dag_id, TI.run_id, TI.task_id, TI.map_index).limit(6)
    ).all()


@op("types.type_coerce_string_to_json_where", writes=True)
def _(s: Session):
    s.add(Variable(key="jt", val='{"k": [1, null]}'))
    s.commit()
    return s.scalar(select(type_coerce(Variable.val, sa.JSON)).where(Variable.key == "jt"))


@op("types.type_coerce_datetime_to_string", backends={"sqlite"})
def _(s: Session):
    # SQLite stores datetimes as strings: coercing shows the stored form
    return s.scalars(select(type_coerce(Dag.created_at, sa.String)).order_by(Dag.dag_id)).all()


@op("types.type_coerce_bind_to_numeric")
def _(s: Session):
    # type_coerce() around a bound value: SQLAlchemy clones the unique bind, re-keyed from its
    # base name - the rebuilt bind must be re-keyed the same way
    return s.execute(
        select(type_coerce(literal(5), sa.Numeric(10, 2)), type_coerce(literal("7"), sa.String))
    ).one()
