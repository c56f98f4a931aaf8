"""Corpus operations - types (SQL functions): functions, CASE, arithmetic, window functions, set operations, CTEs, tuples."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import case, func, literal, select, tuple_
from sqlalchemy.orm import Session

from ..models import Dag, DagRun, Log, TaskState
from ..seed import run_id_for
from ._helpers import TI, TUT_R1, ti_order
from ._registry import op


@op("types.coalesce")
def _(s: Session):
    return s.scalars(select(func.coalesce(Dag.description, "(none)")).order_by(Dag.dag_id)).all()


@op("types.lower_upper")
def _(s: Session):
    return s.execute(select(func.lower(Dag.dag_id), func.upper(Dag.owner)).order_by(Dag.dag_id)).all()


@op("types.length")
def _(s: Session):
    return s.execute(select(Dag.dag_id, func.length(Dag.description)).order_by(Dag.dag_id)).all()


@op("types.case_searched")
def _(s: Session):
    c = case(
        (TI.state == TaskState.SUCCESS, "ok"),
        (TI.state.is_(None), "none"),
        else_="other",
    )
    return s.scalars(select(c).order_by(*ti_order()).limit(10)).all()


@op("types.case_value")
def _(s: Session):
    c = case({"alice": 1, "bob": 2}, value=Dag.owner, else_=0)
    return s.execute(select(Dag.dag_id, c).order_by(Dag.dag_id)).all()


@op("types.abs_round")
def _(s: Session):
    return s.execute(
        select(func.abs(Log.amount), func.round(Log.amount, 2))
        .where(Log.amount.is_not(None))
        .order_by(Log.id)
    ).all()


@op("types.arithmetic_mixed")
def _(s: Session):
    stmt = (
        select(Log.amount * 2, Log.ratio * 2, TI.priority_weight * 1.5)
        .join(TI, TI.dag_id == Log.dag_id)
        .where(TI.task_id == "extract", Log.amount.is_not(None), func.abs(Log.ratio) < 1e10)
        .order_by(Log.id, *ti_order())
        .limit(5)
    )
    return s.execute(stmt).all()


@op("types.integer_division_modulo")
def _(s: Session):
    stmt = (
        select(TI.priority_weight / 2, TI.priority_weight // 2, TI.priority_weight % 3)
        .order_by(*ti_order())
        .limit(6)
    )
    return s.execute(stmt).all()


@op("types.string_concat")
def _(s: Session):
    return s.scalars(select(Dag.owner + ":" + Dag.dag_id).order_by(Dag.dag_id)).all()


@op("types.extract_year")
def _(s: Session):
    return s.scalars(select(sa.extract("year", Log.day)).where(Log.day.is_not(None)).order_by(Log.id)).all()


@op("types.window_count_over")
def _(s: Session):
    stmt = select(TI.dag_id, TI.task_id, func.count().over(partition_by=TI.dag_id)).order_by(*ti_order())
    return s.execute(stmt).all()


@op("types.window_row_number")
def _(s: Session):
    rn = func.row_number().over(partition_by=DagRun.dag_id, order_by=DagRun.id.desc())
    return s.execute(select(DagRun.id, rn).order_by(DagRun.id)).all()


@op("types.window_running_sum")
def _(s: Session):
    total = func.sum(TI.priority_weight).over(order_by=list(ti_order()))
    return s.scalars(select(total).where(TI.dag_id == "tutorial").order_by(*ti_order())).all()


@op("types.window_rank")
def _(s: Session):
    rk = func.rank().over(order_by=TI.priority_weight.desc())
    return s.execute(select(TI.priority_weight, rk).order_by(rk, *ti_order()).limit(10)).all()


@op("types.union")
def _(s: Session):
    s1 = select(Dag.dag_id)
    s2 = select(Log.dag_id).where(Log.dag_id.is_not(None))
    return s.execute(sa.union(s1, s2).order_by(s1.selected_columns.dag_id)).all()


@op("types.union_all")
def _(s: Session):
    s1 = select(Dag.owner.label("who"))
    s2 = select(Log.owner.label("who")).where(Log.owner.is_not(None))
    u = sa.union_all(s1, s2).subquery()
    return s.execute(select(u.c.who, func.count()).group_by(u.c.who).order_by(u.c.who)).all()


@op("types.intersect_except")
def _(s: Session):
    a = select(Dag.dag_id)
    b = select(DagRun.dag_id)
    return [
        s.scalars(sa.intersect(a, b).order_by(a.selected_columns.dag_id)).all(),
        s.scalars(sa.except_(a, b).order_by(a.selected_columns.dag_id)).all(),
    ]


@op("types.cte")
def _(s: Session):
    last = select(DagRun.dag_id, func.max(DagRun.id).label("last")).group_by(DagRun.dag_id).cte("last_runs")
    return s.scalars(select(DagRun).join(last, DagRun.id == last.c.last).order_by(DagRun.id)).all()


@op("types.cte_recursive")
def _(s: Session):
    nums = select(literal(1).label("n")).cte("nums", recursive=True)
    nums = nums.union_all(select(nums.c.n + 1).where(nums.c.n < 10))
    return s.scalars(select(nums.c.n).order_by(nums.c.n)).all()


@op("types.tuple_in")
def _(s: Session):
    keys = [("tutorial", TUT_R1), ("etl_daily", run_id_for("etl_daily", 0))]
    stmt = select(TI.dag_id, TI.task_id).where(tuple_(TI.dag_id, TI.run_id).in_(keys)).order_by(*ti_order())
    return s.execute(stmt).all()


@op("types.tuple_in_empty")
def _(s: Session):
    return s.scalars(select(TI.task_id).where(tuple_(TI.dag_id, TI.run_id).in_([]))).all()


@op("types.distinct_function")
def _(s: Session):
    return s.execute(select(func.count(sa.distinct(TI.pool)), func.count(sa.distinct(TI.hostname)))).one()


@op("types.now_type")
def _(s: Session):
    # the value differs between the two databases, its type must not
    return [
        type(s.scalar(select(func.now()))),
        type(s.scalar(select(func.current_date()))),
    ]
