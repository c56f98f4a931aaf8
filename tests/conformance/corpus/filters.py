"""Corpus operations - filter: comparison operators, IN, LIKE, NULL, BETWEEN, boolean logic."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy import and_, cast, not_, null, or_, select, true
from sqlalchemy.orm import Session

from ..models import Dag, DagRun, Log, TaskState, Variable, XCom
from ..seed import IST, UTC, fixed_uuid
from ._helpers import TI, ti_order
from ._registry import op


@op("filter.eq")
def _(s: Session):
    return s.query(Dag).filter(Dag.dag_id == "example_bash").all()


@op("filter.ne")
def _(s: Session):
    return s.query(Dag).filter(Dag.owner != "airflow").order_by(Dag.dag_id).all()


@op("filter.ne_nullable_column")
def _(s: Session):
    # NULL descriptions are excluded by SQL three-valued logic
    return s.scalars(select(Dag.dag_id).where(Dag.description != "Bash example").order_by(Dag.dag_id)).all()


@op("filter.lt")
def _(s: Session):
    return s.query(DagRun).filter(DagRun.id < 5).order_by(DagRun.id).all()


@op("filter.le")
def _(s: Session):
    return s.query(TI).filter(TI.priority_weight <= 3).order_by(*ti_order()).all()


@op("filter.gt_decimal")
def _(s: Session):
    return s.scalars(select(Log.id).where(Log.amount > Decimal(1)).order_by(Log.id)).all()


@op("filter.ge_date")
def _(s: Session):
    return s.execute(select(Log.id, Log.day).where(Log.day >= dt.date(2000, 1, 1)).order_by(Log.id)).all()


@op("filter.lt_time")
def _(s: Session):
    return s.execute(select(Log.id, Log.at_time).where(Log.at_time < dt.time(12, 0)).order_by(Log.id)).all()


@op("filter.gt_bigint")
def _(s: Session):
    return s.execute(select(Log.id, Log.big).where(Log.big > 2**31 - 1).order_by(Log.id)).all()


@op("filter.bool_is_true")
def _(s: Session):
    return s.query(Dag).filter(Dag.is_paused.is_(True)).order_by(Dag.dag_id).all()


@op("filter.bool_eq_true_const")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(Dag.is_paused == true()).order_by(Dag.dag_id)).all()


@op("filter.bool_column_direct")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(Dag.is_paused).order_by(Dag.dag_id)).all()


@op("filter.bool_negated")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(~Dag.is_paused).order_by(Dag.dag_id)).all()


@op("filter.eq_enum")
def _(s: Session):
    return s.query(TI).filter(TI.state == TaskState.SUCCESS).order_by(*ti_order()).all()


@op("filter.ne_enum")
def _(s: Session):
    return s.execute(
        select(TI.task_id, TI.state).where(TI.state != TaskState.SUCCESS).order_by(*ti_order())
    ).all()


@op("filter.eq_string_enum")
def _(s: Session):
    return s.query(DagRun).filter(DagRun.state == "running").order_by(DagRun.id).all()


@op("filter.ge_aware_datetime")
def _(s: Session):
    cutoff = dt.datetime(2024, 1, 2, 0, 0, tzinfo=UTC)
    return s.scalars(select(DagRun.id).where(DagRun.execution_date >= cutoff).order_by(DagRun.id)).all()


@op("filter.lt_naive_datetime")
def _(s: Session):
    cutoff = dt.datetime(2023, 12, 30, 12, 0)
    return s.execute(
        select(DagRun.id, DagRun.data_interval_start)
        .where(DagRun.data_interval_start < cutoff)
        .order_by(DagRun.id)
    ).all()


@op("filter.eq_uuid")
def _(s: Session):
    return s.query(TI).filter(TI.external_executor_id == fixed_uuid(4)).all()


@op("filter.eq_decimal")
def _(s: Session):
    return s.execute(select(Log.id, Log.amount).where(Log.amount == Decimal("0.0100")).order_by(Log.id)).all()


@op("filter.eq_float")
def _(s: Session):
    return s.execute(select(TI.task_id, TI.duration).where(TI.duration == 1.5).order_by(*ti_order())).all()


@op("filter.eq_empty_bytes")
def _(s: Session):
    return s.query(XCom).filter(XCom.value == b"").order_by(XCom.id).all()


@op("filter.eq_extreme_date")
def _(s: Session):
    return s.scalars(
        select(Log.id)
        .where(or_(Log.day == dt.date(1, 1, 2), Log.day == dt.date(9999, 12, 30)))
        .order_by(Log.id)
    ).all()


@op("filter.in_strings")
def _(s: Session):
    return s.query(DagRun).filter(DagRun.state.in_(["queued", "running"])).order_by(DagRun.id).all()


@op("filter.in_empty")
def _(s: Session):
    return s.query(Dag).filter(Dag.dag_id.in_([])).all()


@op("filter.not_in")
def _(s: Session):
    return s.scalars(
        select(Dag.dag_id).where(Dag.dag_id.not_in(["tutorial", "etl_daily"])).order_by(Dag.dag_id)
    ).all()


@op("filter.not_in_empty")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(Dag.dag_id.not_in([])).order_by(Dag.dag_id)).all()


@op("filter.in_ints")
def _(s: Session):
    return s.scalars(select(DagRun).where(DagRun.id.in_([1, 3, 5, 99])).order_by(DagRun.id)).all()


@op("filter.in_enums")
def _(s: Session):
    return s.execute(
        select(TI.dag_id, TI.task_id, TI.state)
        .where(TI.state.in_([TaskState.FAILED, TaskState.UP_FOR_RETRY]))
        .order_by(*ti_order())
    ).all()


@op("filter.like")
def _(s: Session):
    return s.query(Dag).filter(Dag.dag_id.like("example_%")).order_by(Dag.dag_id).all()


@op("filter.ilike")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(Dag.description.ilike("%EXAMPLE%")).order_by(Dag.dag_id)).all()


@op("filter.ilike_unicode")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(Dag.description.ilike("%日本%")).order_by(Dag.dag_id)).all()


@op("filter.not_like")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(Dag.dag_id.not_like("example%")).order_by(Dag.dag_id)).all()


@op("filter.notlike_legacy_name")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(Dag.fileloc.notlike("%/etl/%")).order_by(Dag.dag_id)).all()


@op("filter.not_ilike")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(Dag.owner.not_ilike("ALICE")).order_by(Dag.dag_id)).all()


@op("filter.startswith")
def _(s: Session):
    return s.scalars(select(DagRun.id).where(DagRun.run_id.startswith("manual__")).order_by(DagRun.id)).all()


@op("filter.endswith")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(Dag.fileloc.endswith("daily.py")).order_by(Dag.dag_id)).all()


@op("filter.contains")
def _(s: Session):
    return s.scalars(
        select(Variable.key).where(Variable.val.contains("example")).order_by(Variable.key)
    ).all()


@op("filter.contains_autoescape")
def _(s: Session):
    # "%" and "_" must be matched literally
    return s.scalars(
        select(Variable.key).where(Variable.val.contains("100% _", autoescape=True)).order_by(Variable.key)
    ).all()


@op("filter.like_explicit_escape")
def _(s: Session):
    return s.scalars(
        select(Dag.dag_id).where(Dag.description.like("%unused/_", escape="/")).order_by(Dag.dag_id)
    ).all()


@op("filter.is_none")
def _(s: Session):
    return s.query(Dag).filter(Dag.description.is_(None)).all()


@op("filter.is_not_none")
def _(s: Session):
    return s.scalars(select(TI.task_id).where(TI.hostname.is_not(None)).order_by(*ti_order())).all()


@op("filter.eq_null_const")
def _(s: Session):
    return s.scalars(select(Variable.key).where(Variable.val == null()).order_by(Variable.key)).all()


@op("filter.ne_null_const")
def _(s: Session):
    return s.scalars(select(Variable.id).where(Variable.description != null()).order_by(Variable.id)).all()


@op("filter.between_ints")
def _(s: Session):
    return s.scalars(select(DagRun.id).where(DagRun.id.between(3, 7)).order_by(DagRun.id)).all()


@op("filter.between_datetimes")
def _(s: Session):
    lo = dt.datetime(2024, 1, 5, tzinfo=UTC)
    hi = dt.datetime(2024, 1, 15, 12, 0, tzinfo=IST)
    return s.execute(
        select(TI.dag_id, TI.task_id, TI.start_date)
        .where(TI.start_date.between(lo, hi))
        .order_by(*ti_order())
    ).all()


@op("filter.not_between")
def _(s: Session):
    return s.scalars(
        select(Log.id).where(not_(Log.amount.between(Decimal(-1), Decimal(1)))).order_by(Log.id)
    ).all()


@op("filter.and")
def _(s: Session):
    return s.query(TI).filter(and_(TI.dag_id == "tutorial", TI.map_index >= 0)).order_by(*ti_order()).all()


@op("filter.or")
def _(s: Session):
    return s.scalars(
        select(DagRun.id)
        .where(or_(DagRun.state == "failed", DagRun.run_type == "manual"))
        .order_by(DagRun.id)
    ).all()


@op("filter.not")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(not_(Dag.owner == "airflow")).order_by(Dag.dag_id)).all()


@op("filter.nested_logic")
def _(s: Session):
    cond = or_(
        and_(TI.state == TaskState.SUCCESS, TI.try_number > 1),
        and_(TI.state.is_(None), not_(TI.pool == "etl_pool")),
    )
    return s.execute(
        select(TI.dag_id, TI.task_id, TI.run_id, TI.map_index).where(cond).order_by(*ti_order())
    ).all()


@op("filter.multiple_args_and_chain")
def _(s: Session):
    return (
        s.query(TI)
        .filter(TI.dag_id == "example_bash", TI.task_id == "mapped")
        .filter(TI.map_index == 1)
        .order_by(*ti_order())
        .all()
    )


@op("filter.filter_by")
def _(s: Session):
    return s.query(Dag).filter_by(owner="alice", is_paused=False).all()


@op("filter.column_vs_column")
def _(s: Session):
    return s.scalars(select(TI.task_id).where(TI.end_date > TI.start_date).order_by(*ti_order())).all()


@op("filter.arithmetic")
def _(s: Session):
    return s.execute(
        select(TI.task_id, TI.try_number + TI.priority_weight)
        .where(TI.try_number + TI.priority_weight > 10)
        .order_by(*ti_order())
    ).all()


@op("filter.string_concat")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(Dag.owner + "/" + Dag.dag_id == "alice/tutorial")).all()


@op("filter.regexp_match")
def _(s: Session):
    return s.scalars(
        select(Dag.dag_id).where(Dag.dag_id.regexp_match("^ex.*_(bash|py)")).order_by(Dag.dag_id)
    ).all()


@op("filter.json_element")
def _(s: Session):
    return s.scalars(select(Log.id).where(Log.payload["a"].as_integer() == 2).order_by(Log.id)).all()


@op("filter.json_sql_null_vs_json_null")
def _(s: Session):
    sql_null = s.scalars(select(Log.id).where(Log.payload.is_(None)).order_by(Log.id)).all()
    json_null = s.scalars(select(Log.id).where(cast(Log.payload, sa.Text) == "null").order_by(Log.id)).all()
    return {"sql_null": sql_null, "json_null": json_null}
