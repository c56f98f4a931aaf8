"""Corpus operations - order: ORDER BY, LIMIT / OFFSET, DISTINCT."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from ..models import Dag, DagRun, Log, Variable
from ._helpers import TI, ti_order
from ._registry import op


@op("order.asc")
def _(s: Session):
    return s.scalars(select(Variable.key).order_by(Variable.key.asc())).all()


@op("order.desc")
def _(s: Session):
    return s.scalars(select(DagRun.id).order_by(DagRun.execution_date.desc(), DagRun.id)).all()


@op("order.multi_column")
def _(s: Session):
    return s.execute(
        select(TI.pool, TI.priority_weight, TI.dag_id, TI.task_id).order_by(
            TI.pool.desc(), TI.priority_weight, *ti_order()
        )
    ).all()


@op("order.nulls_first", backends={"sqlite", "postgresql"})
def _(s: Session):
    return s.execute(select(Log.id, Log.amount).order_by(Log.amount.asc().nulls_first(), Log.id)).all()


@op("order.nulls_last", backends={"sqlite", "postgresql"})
def _(s: Session):
    return s.execute(select(Dag.dag_id, Dag.description).order_by(Dag.description.desc().nulls_last())).all()


@op("order.nullable_default")
def _(s: Session):
    # where NULLs sort by default is backend specific, but identical on both sides
    return s.scalars(select(TI.hostname).order_by(TI.hostname, *ti_order())).all()


@op("order.expression")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).order_by(func.length(Dag.dag_id).desc(), Dag.dag_id)).all()


@op("order.by_label")
def _(s: Session):
    n = func.count(DagRun.id).label("n")
    return s.execute(
        select(DagRun.dag_id, n).group_by(DagRun.dag_id).order_by(sa.desc("n"), DagRun.dag_id)
    ).all()


@op("order.offset_only")
def _(s: Session):
    return s.scalars(select(Log.id).order_by(Log.id).offset(20)).all()


@op("order.limit_offset")
def _(s: Session):
    return s.scalars(select(TI).order_by(TI.start_date.desc(), *ti_order()).limit(3).offset(2)).all()


@op("order.limit_zero")
def _(s: Session):
    return s.scalars(select(Dag).order_by(Dag.dag_id).limit(0)).all()


@op("order.distinct_column")
def _(s: Session):
    return s.scalars(select(TI.pool).distinct().order_by(TI.pool)).all()


@op("order.distinct_multi")
def _(s: Session):
    return s.execute(select(TI.task_id, TI.map_index).distinct().order_by(TI.task_id, TI.map_index)).all()


@op("order.distinct_on", backends={"postgresql"})
def _(s: Session):
    try:  # SQLAlchemy 2.1 spelling; 2.0 has only select().distinct(expr) (deprecated in 2.1)
        from sqlalchemy.dialects.postgresql import distinct_on
    except ImportError:
        stmt = select(DagRun).distinct(DagRun.dag_id)
    else:
        stmt = select(DagRun).ext(distinct_on(DagRun.dag_id))
    return s.scalars(stmt.order_by(DagRun.dag_id, DagRun.id.desc())).all()


@op("order.case_expression")
def _(s: Session):
    rank = case((Dag.owner == "bob", 0), (Dag.owner == "alice", 1), else_=2)
    return s.scalars(select(Dag.dag_id).order_by(rank, Dag.dag_id)).all()


@op("order.enum_column")
def _(s: Session):
    # PostgreSQL sorts native enums by declaration order, others by name
    return s.execute(select(TI.state, func.count()).group_by(TI.state).order_by(TI.state)).all()


@op("order.unicode_strings")
def _(s: Session):
    return s.scalars(
        select(Variable.val).where(Variable.val.is_not(None)).order_by(Variable.val, Variable.id)
    ).all()


@op("order.floats")
def _(s: Session):
    return s.execute(select(Log.id, Log.ratio).order_by(Log.ratio, Log.id)).all()
