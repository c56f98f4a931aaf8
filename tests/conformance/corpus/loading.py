"""Corpus operations - load: relationship loading strategies."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select
from sqlalchemy.orm import (
    Session,
    contains_eager,
    defer,
    immediateload,
    joinedload,
    lazyload,
    load_only,
    raiseload,
    selectinload,
    subqueryload,
    undefer,
    with_parent,
)

from ..models import Dag, DagRun, XCom
from ._helpers import BASH_R0, TI, ti_order
from ._registry import op


@op("load.lazy_collection")
def _(s: Session):
    d = s.get(Dag, "example_bash")
    before = "runs" in sa_inspect(d).unloaded
    runs = d.runs
    return [before, len(runs), d]


@op("load.lazy_many_to_one")
def _(s: Session):
    r = s.get(DagRun, 5)
    dag = r.dag
    return [r, dag is s.get(Dag, r.dag_id)]


@op("load.lazy_composite")
def _(s: Session):
    ti = s.get(TI, ("example_bash", "extract", BASH_R0, -1))
    return [ti.dag_run.run_id, [x.id for x in ti.xcoms], ti]


@op("load.joinedload")
def _(s: Session):
    return s.scalars(select(Dag).options(joinedload(Dag.runs)).order_by(Dag.dag_id)).unique().all()


@op("load.joinedload_legacy_query")
def _(s: Session):
    return s.query(Dag).options(joinedload(Dag.runs)).order_by(Dag.dag_id).all()


@op("load.selectinload")
def _(s: Session):
    return s.scalars(select(Dag).options(selectinload(Dag.runs)).order_by(Dag.dag_id)).all()


@op("load.subqueryload")
def _(s: Session):
    return s.scalars(select(Dag).options(subqueryload(Dag.runs)).order_by(Dag.dag_id)).all()


@op("load.immediateload")
def _(s: Session):
    return s.scalars(
        select(DagRun).options(immediateload(DagRun.dag)).where(DagRun.id < 4).order_by(DagRun.id)
    ).all()


@op("load.nested_joined")
def _(s: Session):
    opt = joinedload(Dag.runs).joinedload(DagRun.task_instances)
    return s.scalars(select(Dag).options(opt).where(Dag.owner == "alice").order_by(Dag.dag_id)).unique().all()


@op("load.nested_selectin_three_levels")
def _(s: Session):
    opt = selectinload(Dag.runs).selectinload(DagRun.task_instances).selectinload(TI.xcoms)
    return s.scalars(select(Dag).options(opt).order_by(Dag.dag_id)).all()


@op("load.nested_subquery")
def _(s: Session):
    opt = subqueryload(Dag.runs).subqueryload(DagRun.task_instances)
    return s.query(Dag).options(opt).filter(Dag.dag_id == "etl_daily").all()


@op("load.mixed_strategies")
def _(s: Session):
    opt = selectinload(Dag.runs).joinedload(DagRun.task_instances)
    return s.scalars(select(Dag).options(opt).where(Dag.dag_id == "example_python")).all()


@op("load.joinedload_many_to_one_chain")
def _(s: Session):
    opt = joinedload(TI.dag_run).joinedload(DagRun.dag)
    return s.scalars(select(TI).options(opt).where(TI.task_id == "load").order_by(*ti_order())).all()


@op("load.joinedload_innerjoin")
def _(s: Session):
    stmt = select(XCom).options(joinedload(XCom.task_instance, innerjoin=True)).order_by(XCom.id).limit(5)
    return s.scalars(stmt).all()


@op("load.selectinload_composite_fk")
def _(s: Session):
    stmt = select(TI).options(selectinload(TI.xcoms)).where(TI.dag_id == "tutorial").order_by(*ti_order())
    return s.scalars(stmt).all()


@op("load.selectinload_many_to_one")
def _(s: Session):
    return s.scalars(select(DagRun).options(selectinload(DagRun.dag)).order_by(DagRun.id)).all()


@op("load.contains_eager_many_to_one")
def _(s: Session):
    stmt = (
        select(DagRun)
        .join(DagRun.dag)
        .options(contains_eager(DagRun.dag))
        .where(Dag.owner == "alice")
        .order_by(DagRun.id)
    )
    return s.scalars(stmt).all()


@op("load.contains_eager_collection")
def _(s: Session):
    stmt = (
        select(Dag)
        .join(Dag.runs)
        .options(contains_eager(Dag.runs))
        .where(DagRun.state == "success")
        .order_by(Dag.dag_id, DagRun.id)
    )
    return s.scalars(stmt).unique().all()


@op("load.joinedload_with_limit")
def _(s: Session):
    stmt = select(Dag).options(joinedload(Dag.runs)).order_by(Dag.dag_id).limit(2)
    return s.scalars(stmt).unique().all()


@op("load.subqueryload_with_limit")
def _(s: Session):
    return s.query(Dag).options(subqueryload(Dag.runs)).order_by(Dag.dag_id.desc()).limit(2).all()


@op("load.load_only")
def _(s: Session):
    return s.scalars(select(Dag).options(load_only(Dag.owner)).order_by(Dag.dag_id)).all()


@op("load.defer_then_access")
def _(s: Session):
    d = s.scalars(select(Dag).options(defer(Dag.fileloc)).where(Dag.dag_id == "tutorial")).one()
    deferred = "fileloc" in sa_inspect(d).unloaded
    return [deferred, d.fileloc, d]


@op("load.undefer")
def _(s: Session):
    d = s.scalars(select(Dag).options(defer(Dag.fileloc)).where(Dag.dag_id == "tutorial")).one()
    stmt = select(Dag).options(undefer(Dag.fileloc)).where(Dag.dag_id == "tutorial")
    again = s.scalars(stmt.execution_options(populate_existing=True)).one()
    return [d is again, d]


@op("load.raiseload", raises=sa_exc.InvalidRequestError)
def _(s: Session):
    d = s.scalars(select(Dag).options(raiseload(Dag.runs)).where(Dag.dag_id == "tutorial")).one()
    return d.runs


@op("load.lazyload_option")
def _(s: Session):
    d = s.scalars(select(Dag).options(lazyload(Dag.runs)).where(Dag.dag_id == "etl_daily")).one()
    return [d.runs, d]


@op("load.with_parent")
def _(s: Session):
    d = s.get(Dag, "example_python")
    return s.scalars(select(DagRun).where(with_parent(d, Dag.runs)).order_by(DagRun.id)).all()


@op("load.expire_attribute")
def _(s: Session):
    d = s.get(Dag, "tutorial")
    s.expire(d, ["owner"])
    before = sorted(sa_inspect(d).unloaded)
    return [before, d.owner, sorted(sa_inspect(d).unloaded)]


@op("load.backref_population")
def _(s: Session):
    d = s.get(Dag, "tutorial")
    runs = d.runs
    return [[r.dag is d for r in runs], ["dag" in sa_inspect(r).unloaded for r in runs]]
