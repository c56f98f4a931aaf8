"""Corpus operations - agg: aggregates, GROUP BY, HAVING."""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..models import Dag, DagRun, Log
from ._helpers import TI
from ._registry import op


@op("agg.count")
def _(s: Session):
    return s.execute(select(func.count(), func.count(TI.hostname), func.count(TI.state))).one()


@op("agg.count_distinct")
def _(s: Session):
    return s.scalar(select(func.count(sa.distinct(TI.hostname))))


@op("agg.sum_int")
def _(s: Session):
    return s.scalar(select(func.sum(TI.priority_weight)))


@op("agg.sum_decimal")
def _(s: Session):
    return s.scalar(select(func.sum(Log.amount)))


@op("agg.avg_decimal")
def _(s: Session):
    return s.scalar(select(func.avg(Log.amount)).where(Log.amount > 0))


@op("agg.avg_int")
def _(s: Session):
    return s.scalar(select(func.avg(TI.try_number)))


@op("agg.sum_avg_float")
def _(s: Session):
    return s.execute(select(func.sum(TI.duration), func.avg(TI.duration), func.max(TI.duration))).one()


@op("agg.min_max_datetime")
def _(s: Session):
    return s.execute(select(func.min(DagRun.execution_date), func.max(DagRun.execution_date))).one()


@op("agg.min_max_string")
def _(s: Session):
    return s.execute(select(func.min(Dag.owner), func.max(Dag.fileloc))).one()


@op("agg.min_max_date_time")
def _(s: Session):
    return s.execute(
        select(
            func.min(Log.day),
            func.max(Log.day),
            func.min(Log.at_time),
            func.max(Log.at_time),
        )
    ).one()


@op("agg.group_by_having")
def _(s: Session):
    stmt = (
        select(TI.dag_id, func.count().label("n"), func.sum(TI.try_number))
        .group_by(TI.dag_id)
        .having(func.count() > 10)
        .order_by(TI.dag_id)
    )
    return s.execute(stmt).all()


@op("agg.group_by_multi")
def _(s: Session):
    stmt = (
        select(TI.dag_id, TI.pool, func.count(), func.max(TI.priority_weight))
        .group_by(TI.dag_id, TI.pool)
        .order_by(TI.dag_id, TI.pool)
    )
    return s.execute(stmt).all()


@op("agg.group_by_enum")
def _(s: Session):
    return s.execute(
        select(TI.state, func.count())
        .where(TI.state.is_not(None))
        .group_by(TI.state)
        .order_by(func.count().desc(), TI.state)
    ).all()


@op("agg.having_sum_decimal")
def _(s: Session):
    stmt = (
        select(Log.event, func.sum(Log.amount).label("total"))
        .group_by(Log.event)
        .having(func.sum(Log.amount) > Decimal(0))
        .order_by(Log.event)
    )
    return s.execute(stmt).all()


@op("agg.empty_set")
def _(s: Session):
    stmt = select(
        func.count(),
        func.sum(TI.try_number),
        func.max(TI.start_date),
        func.avg(TI.duration),
    )
    return s.execute(stmt.where(TI.dag_id == "zz_unused")).one()


@op("agg.aggregate_strings")
def _(s: Session):
    rows = s.execute(
        select(Dag.owner, func.aggregate_strings(Dag.dag_id, ",")).group_by(Dag.owner).order_by(Dag.owner)
    ).all()
    # the order inside the aggregate is not defined: compare the sorted parts
    return [(owner, type(joined).__name__, sorted(joined.split(","))) for owner, joined in rows]


@op("agg.legacy_query_aggregates")
def _(s: Session):
    return s.query(
        func.count(Log.id),
        func.min(Log.big),
        func.max(Log.big),
        func.sum(Log.event_seq),
    ).one()
