"""Corpus operations - types: round trips of every typed column, casts, literals, bind parameters."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy import cast, literal, literal_column, null, select, type_coerce
from sqlalchemy.orm import Session

from dbsession import PolicyViolationError

from ..models import Connection, Dag, DagRun, Log, TaskState, Variable, XCom
from ..seed import IST
from ._helpers import TI, ti_order
from ._registry import op


@op("types.aware_datetimes")
def _(s: Session):
    return s.execute(select(Dag.dag_id, Dag.created_at).order_by(Dag.dag_id)).all()


@op("types.run_datetimes")
def _(s: Session):
    return s.execute(
        select(DagRun.id, DagRun.execution_date, DagRun.data_interval_start).order_by(DagRun.id)
    ).all()


@op("types.json_conf_none_as_null")
def _(s: Session):
    return s.execute(select(DagRun.id, DagRun.conf, DagRun.conf.is_(None)).order_by(DagRun.id)).all()


@op("types.task_instance_columns")
def _(s: Session):
    stmt = select(
        TI.state,
        TI.duration,
        TI.external_executor_id,
        TI.queued_dttm,
        TI.end_date,
        TI.note,
    ).order_by(*ti_order())
    return s.execute(stmt).all()


@op("types.bytes")
def _(s: Session):
    return s.execute(select(XCom.id, XCom.value, XCom.timestamp).order_by(XCom.id)).all()


@op("types.variables_text_bool")
def _(s: Session):
    return s.scalars(select(Variable).order_by(Variable.id)).all()


@op("types.connection_json_int")
def _(s: Session):
    return s.scalars(select(Connection).order_by(Connection.id)).all()


@op("types.log_rows")
def _(s: Session):
    return s.scalars(select(Log).order_by(Log.id)).all()


@op("types.decimal_scale")
def _(s: Session):
    return s.scalars(select(Log.amount).order_by(Log.id)).all()


@op("types.date_and_time")
def _(s: Session):
    return s.execute(select(Log.day, Log.at_time).order_by(Log.id)).all()


@op("types.float_and_bigint")
def _(s: Session):
    return s.execute(select(Log.ratio, Log.big).order_by(Log.id)).all()


@op("types.json_payload")
def _(s: Session):
    return s.execute(select(Log.id, Log.payload, Log.payload.is_(None)).order_by(Log.id)).all()


@op("types.special_floats_read", backends={"sqlite", "postgresql"})
def _(s: Session):
    return s.execute(select(Log.id, Log.ratio).where(Log.event == "special_float").order_by(Log.id)).all()


@op("types.special_float_compare", backends={"sqlite", "postgresql"})
def _(s: Session):
    return s.scalars(select(Log.id).where(Log.ratio == float("inf"))).all()


@op("types.cast_decimal_to_string")
def _(s: Session):
    return s.scalars(
        select(cast(Log.amount, sa.String)).where(Log.amount.is_not(None)).order_by(Log.id)
    ).all()


@op("types.cast_int_to_float")
def _(s: Session):
    return s.scalars(select(cast(TI.try_number, sa.Float)).order_by(*ti_order()).limit(6)).all()


@op("types.cast_bool_to_int")
def _(s: Session):
    return s.scalars(select(cast(Dag.is_paused, sa.Integer)).order_by(Dag.dag_id)).all()


@op("types.cast_string_to_int")
def _(s: Session):
    return s.scalar(select(cast(literal("42"), sa.Integer)))


@op("types.cast_float_to_numeric")
def _(s: Session):
    return s.scalars(
        select(cast(TI.duration, sa.Numeric(10, 2))).where(TI.duration.is_not(None)).order_by(*ti_order())
    ).all()


@op("types.cast_datetime_to_date", backends={"postgresql", "mysql"})
def _(s: Session):
    return s.scalars(select(cast(DagRun.execution_date, sa.Date)).order_by(DagRun.id)).all()


@op("types.type_coerce_json")
def _(s: Session):
    return s.scalar(select(type_coerce(Variable.val, sa.JSON)).where(Variable.key == "json_text"))


@op("types.type_coerce_string")
def _(s: Session):
    return s.scalars(select(type_coerce(DagRun.id, sa.String)).order_by(DagRun.id).limit(3)).all()


@op("types.literals")
def _(s: Session):
    return s.execute(
        select(
            literal(1),
            literal("s"),
            literal(Decimal("1.50")),
            literal(True),
            literal(1.5),
            literal(dt.date(2024, 2, 29)),
        )
    ).one()


@op("types.literal_datetimes")
def _(s: Session):
    aware = dt.datetime(2024, 7, 1, 12, 30, 45, 123456, tzinfo=IST)
    naive = dt.datetime(2024, 7, 1, 12, 30, 45, 123456)
    return s.execute(select(literal(aware, sa.DateTime(timezone=True)), literal(naive, sa.DateTime()))).one()


# MariaDB returns a bound TIME parameter as a string, which SQLAlchemy's MySQL
# TIME result processor cannot handle (AttributeError): not a useful comparison.
@op("types.literal_time", backends={"sqlite", "postgresql"})
def _(s: Session):
    return s.scalar(select(literal(dt.time(1, 2, 3, 4), sa.Time())))


# Interval on MariaDB is emulated with DATETIME arithmetic and a bound value
# comes back as a string: SQLAlchemy itself fails (TypeError), so skip it there.
@op("types.literal_interval", backends={"sqlite", "postgresql"})
def _(s: Session):
    return s.scalar(select(literal(dt.timedelta(days=1, seconds=5, microseconds=7), sa.Interval())))


@op("types.literal_bytes_uuid")
def _(s: Session):
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    return s.execute(select(literal(b"\x00\xffabc", sa.LargeBinary()), literal(u, sa.Uuid()))).one()


@op("types.literal_enum")
def _(s: Session):
    return s.scalar(select(literal(TaskState.UP_FOR_RETRY, sa.Enum(TaskState, name="task_state"))))


@op("types.literal_null")
def _(s: Session):
    return s.execute(select(null(), literal(None, sa.Integer), literal(None))).one()


@op("types.literal_column", refused=PolicyViolationError)
def _(s: Session):
    return s.execute(select(literal_column("1") + 1, literal_column("'x'"))).one()


@op("types.unicode_and_quotes_bind")
def _(s: Session):
    return s.execute(
        select(
            literal("日本語 ✓ \U0001f680"),
            literal("a'b\"c\\d"),
            literal(""),
            literal("%_"),
        )
    ).one()


@op("types.numeric_arithmetic")
def _(s: Session):
    a = literal(Decimal("0.1"), sa.Numeric(10, 4))
    b = literal(Decimal("0.2"), sa.Numeric(10, 4))
    return s.scalar(select(a + b))


@op("types.json_element_select")
def _(s: Session):
    return s.execute(select(Log.id, Log.payload["a"]).order_by(Log.id)).all()


@op("types.json_as_string")
def _(s: Session):
    return s.scalars(select(Connection.extra["sslmode"].as_string()).order_by(Connection.id)).all()


@op("types.empty_string_vs_null")
def _(s: Session):
    return s.execute(
        select(Dag.dag_id, Dag.description == "", Dag.description.is_(None)).order_by(Dag.dag_id)
    ).all()


@op("types.large_text")
def _(s: Session):
    v = s.scalar(select(Variable.val).where(Variable.key == "long"))
    return [len(v), v[:10]]
