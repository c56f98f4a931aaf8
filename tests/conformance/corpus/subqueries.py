"""Corpus operations - subq: subqueries, EXISTS, relationship any() / has()."""

from __future__ import annotations

from sqlalchemy import exists, func, select, true
from sqlalchemy.orm import Session, aliased

from ..models import Dag, DagRun, Log, TaskState, XCom
from ._helpers import TI
from ._registry import op


@op("subq.subquery_join")
def _(s: Session):
    sq = select(DagRun.dag_id, func.count().label("n")).group_by(DagRun.dag_id).subquery()
    return s.execute(
        select(Dag.dag_id, sq.c.n).join(sq, sq.c.dag_id == Dag.dag_id).order_by(Dag.dag_id)
    ).all()


@op("subq.scalar_subquery_column")
def _(s: Session):
    n = select(func.count(DagRun.id)).where(DagRun.dag_id == Dag.dag_id).scalar_subquery()
    return s.execute(select(Dag.dag_id, n.label("runs")).order_by(Dag.dag_id)).all()


@op("subq.scalar_subquery_where")
def _(s: Session):
    avg = select(func.avg(Log.amount)).scalar_subquery()
    return s.scalars(select(Log.id).where(Log.amount > avg).order_by(Log.id)).all()


@op("subq.in_select")
def _(s: Session):
    failed = select(DagRun.dag_id).where(DagRun.state == "failed")
    return s.scalars(select(Dag).where(Dag.dag_id.in_(failed)).order_by(Dag.dag_id)).all()


@op("subq.not_in_select")
def _(s: Session):
    logged = select(Log.dag_id).where(Log.dag_id.is_not(None))
    return s.scalars(select(Dag.dag_id).where(Dag.dag_id.not_in(logged)).order_by(Dag.dag_id)).all()


@op("subq.exists_correlated")
def _(s: Session):
    cond = exists().where(DagRun.dag_id == Dag.dag_id, DagRun.state == "running")
    return s.scalars(select(Dag.dag_id).where(cond).order_by(Dag.dag_id)).all()


@op("subq.not_exists")
def _(s: Session):
    cond = exists().where(XCom.dag_id == TI.dag_id, XCom.task_id == TI.task_id, XCom.run_id == TI.run_id)
    return s.scalar(select(func.count()).select_from(TI).where(~cond))


@op("subq.exists_scalar")
def _(s: Session):
    return [
        s.scalar(select(exists().where(Log.event == "paused"))),
        s.scalar(select(exists().where(Log.event == "nope"))),
    ]


@op("subq.any")
def _(s: Session):
    return s.query(Dag).filter(Dag.runs.any()).order_by(Dag.dag_id).all()


@op("subq.any_criteria")
def _(s: Session):
    return s.scalars(
        select(Dag.dag_id).where(Dag.runs.any(DagRun.state == "queued")).order_by(Dag.dag_id)
    ).all()


@op("subq.not_any")
def _(s: Session):
    return s.scalars(select(Dag.dag_id).where(~Dag.runs.any())).all()


@op("subq.has")
def _(s: Session):
    return s.query(DagRun).filter(DagRun.dag.has(Dag.is_paused.is_(True))).order_by(DagRun.id).all()


@op("subq.has_composite")
def _(s: Session):
    return s.scalars(
        select(XCom.id).where(XCom.task_instance.has(TI.state == TaskState.FAILED)).order_by(XCom.id)
    ).all()


@op("subq.any_nested")
def _(s: Session):
    cond = Dag.runs.any(DagRun.task_instances.any(TI.state == TaskState.UP_FOR_RETRY))
    return s.scalars(select(Dag.dag_id).where(cond).order_by(Dag.dag_id)).all()


@op("subq.aliased_subquery_entity")
def _(s: Session):
    sq = select(DagRun).where(DagRun.state == "success").subquery()
    ar = aliased(DagRun, sq)
    return s.scalars(select(ar).order_by(ar.id)).all()


@op("subq.max_per_group")
def _(s: Session):
    r2 = aliased(DagRun)
    latest = select(func.max(r2.id)).where(r2.dag_id == DagRun.dag_id).scalar_subquery()
    return s.scalars(select(DagRun).where(DagRun.id == latest).order_by(DagRun.id)).all()


@op("subq.lateral", backends={"postgresql"})
def _(s: Session):
    lat = (
        select(DagRun.id, DagRun.state)
        .where(DagRun.dag_id == Dag.dag_id)
        .order_by(DagRun.id.desc())
        .limit(1)
        .lateral("last_run")
    )
    return s.execute(select(Dag.dag_id, lat.c.id, lat.c.state).join(lat, true()).order_by(Dag.dag_id)).all()
