"""Corpus operations - join: inner / outer joins, explicit onclauses, aliases."""

from __future__ import annotations

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, aliased

from ..models import Dag, DagRun, Log, TaskState, XCom
from ._helpers import TI, ti_order
from ._registry import op


@op("join.relationship")
def _(s: Session):
    return s.query(DagRun).join(DagRun.dag).filter(Dag.owner == "alice").order_by(DagRun.id).all()


@op("join.explicit_onclause_composite")
def _(s: Session):
    on = and_(DagRun.dag_id == TI.dag_id, DagRun.run_id == TI.run_id)
    stmt = select(TI).join(DagRun, on).where(DagRun.state == "failed").order_by(*ti_order())
    return s.scalars(stmt).all()


@op("join.outer_count")
def _(s: Session):
    stmt = (
        select(Dag.dag_id, func.count(DagRun.id))
        .outerjoin(Dag.runs)
        .group_by(Dag.dag_id)
        .order_by(Dag.dag_id)
    )
    return s.execute(stmt).all()


@op("join.outer_null_rows")
def _(s: Session):
    stmt = (
        select(Dag.dag_id, DagRun.id)
        .outerjoin(DagRun)
        .where(Dag.owner == "alice")
        .order_by(Dag.dag_id, DagRun.id)
    )
    return s.execute(stmt).all()


@op("join.entity_tuples")
def _(s: Session):
    stmt = select(Dag, DagRun).join(Dag.runs).where(DagRun.state == "running").order_by(DagRun.id)
    return s.execute(stmt).all()


@op("join.three_levels")
def _(s: Session):
    stmt = (
        select(XCom)
        .join(XCom.task_instance)
        .join(TI.dag_run)
        .join(DagRun.dag)
        .where(Dag.owner == "airflow")
        .order_by(XCom.id)
    )
    return s.scalars(stmt).all()


@op("join.aliased_self_join")
def _(s: Session):
    r1 = aliased(DagRun, name="r1")
    r2 = aliased(DagRun, name="r2")
    stmt = select(r1.id, r2.id).join(r2, and_(r1.dag_id == r2.dag_id, r1.id < r2.id)).order_by(r1.id, r2.id)
    return s.execute(stmt).all()


@op("join.aliased_entity")
def _(s: Session):
    d = aliased(Dag, name="d")
    stmt = select(d, DagRun.run_id).join(d.runs).where(d.is_paused.is_(True)).order_by(DagRun.id)
    return s.execute(stmt).all()


@op("join.select_from")
def _(s: Session):
    stmt = (
        select(func.count(TI.task_id))
        .select_from(Dag)
        .join(Dag.runs)
        .join(DagRun.task_instances)
        .where(Dag.dag_id == "tutorial")
    )
    return s.scalar(stmt)


@op("join.legacy_chain")
def _(s: Session):
    q = (
        s.query(Dag.dag_id, TI.task_id, TI.map_index)
        .join(Dag.runs)
        .join(DagRun.task_instances)
        .filter(TI.state == TaskState.FAILED)
        .order_by(Dag.dag_id, *ti_order())
    )
    return q.all()


@op("join.composite_fk_relationship")
def _(s: Session):
    return s.query(TI).join(TI.dag_run).filter(DagRun.run_type == "manual").order_by(*ti_order()).all()


@op("join.outer_entities")
def _(s: Session):
    q = s.query(TI, XCom).outerjoin(TI.xcoms).filter(TI.dag_id == "tutorial").order_by(*ti_order(), XCom.id)
    return q.all()


@op("join.full_outer", backends={"sqlite", "postgresql"})
def _(s: Session):
    stmt = (
        select(Dag.dag_id, Log.id).join(Log, Log.dag_id == Dag.dag_id, full=True).order_by(Log.id, Dag.dag_id)
    )
    return s.execute(stmt).all()


@op("join.non_fk_condition")
def _(s: Session):
    stmt = (
        select(Dag.dag_id, func.count(Log.id))
        .join(Log, and_(Log.dag_id == Dag.dag_id, Log.owner == Dag.owner))
        .group_by(Dag.dag_id)
        .order_by(Dag.dag_id)
    )
    return s.execute(stmt).all()
