"""Corpus operations - query: the legacy Query API."""

from __future__ import annotations

from sqlalchemy import func, text
from sqlalchemy.orm import Session
from sqlalchemy.orm import exc as orm_exc

from dbsession import PolicyViolationError

from ..models import Connection, Dag, DagRun, Variable
from ._helpers import TI, ti_order
from ._registry import op


@op("query.all")
def _(s: Session):
    return s.query(Dag).order_by(Dag.dag_id).all()


@op("query.first")
def _(s: Session):
    return s.query(DagRun).order_by(DagRun.id.desc()).first()


@op("query.first_none")
def _(s: Session):
    return s.query(DagRun).filter(DagRun.id > 1000).first()


@op("query.one")
def _(s: Session):
    return s.query(Variable).filter(Variable.key == "unicode").one()


@op("query.one_no_result", raises=orm_exc.NoResultFound)
def _(s: Session):
    return s.query(Variable).filter(Variable.key == "missing").one()


@op("query.one_multiple", raises=orm_exc.MultipleResultsFound)
def _(s: Session):
    return s.query(Variable).filter(Variable.is_encrypted.is_(False)).one()


@op("query.one_or_none_none")
def _(s: Session):
    return s.query(Variable).filter(Variable.key == "missing").one_or_none()


@op("query.one_or_none_one")
def _(s: Session):
    return s.query(Connection).filter(Connection.conn_id == "http_default").one_or_none()


@op("query.one_or_none_multiple", raises=orm_exc.MultipleResultsFound)
def _(s: Session):
    return s.query(Connection).one_or_none()


@op("query.scalar_value")
def _(s: Session):
    return s.query(Dag.owner).filter_by(dag_id="tutorial").scalar()


@op("query.scalar_none")
def _(s: Session):
    return s.query(Dag.owner).filter_by(dag_id="missing").scalar()


@op("query.scalar_multiple", raises=orm_exc.MultipleResultsFound)
def _(s: Session):
    return s.query(Dag.owner).scalar()


@op("query.count")
def _(s: Session):
    return s.query(TI).count()


@op("query.count_filtered_join")
def _(s: Session):
    return s.query(TI).join(TI.dag_run).filter(DagRun.state == "success").count()


@op("query.columns_rows")
def _(s: Session):
    return s.query(Dag.dag_id, Dag.is_paused, Dag.created_at).order_by(Dag.dag_id).all()


@op("query.entity_and_expression")
def _(s: Session):
    return s.query(Dag, func.length(Dag.fileloc).label("n")).order_by(Dag.dag_id).all()


@op("query.with_entities_label")
def _(s: Session):
    rows = s.query(Dag).with_entities(Dag.dag_id.label("ident"), Dag.owner).order_by(Dag.dag_id).all()
    return [(r.ident, r.owner, r._fields) for r in rows]


@op("query.slice")
def _(s: Session):
    return s.query(DagRun).order_by(DagRun.id).slice(2, 5).all()


@op("query.getitem_slice")
def _(s: Session):
    return s.query(Variable).order_by(Variable.id)[1:3]


@op("query.getitem_index")
def _(s: Session):
    return s.query(Variable).order_by(Variable.id)[4]


@op("query.limit_offset")
def _(s: Session):
    return s.query(TI).order_by(*ti_order()).limit(4).offset(10).all()


@op("query.exists_scalar")
def _(s: Session):
    q = s.query(Dag).filter(Dag.owner == "bob")
    q2 = s.query(Dag).filter(Dag.owner == "nobody")
    return [s.query(q.exists()).scalar(), s.query(q2.exists()).scalar()]


@op("query.iterate")
def _(s: Session):
    return [(c.conn_id, c.port) for c in s.query(Connection).order_by(Connection.id)]


@op("query.distinct")
def _(s: Session):
    return s.query(DagRun.dag_id).distinct().order_by(DagRun.dag_id).all()


@op("query.with_for_update")
def _(s: Session):
    return s.query(Dag).filter_by(dag_id="tutorial").with_for_update().one()


@op("query.yield_per")
def _(s: Session):
    return [ti.task_id for ti in s.query(TI).order_by(*ti_order()).yield_per(7)]


@op("query.group_by")
def _(s: Session):
    return s.query(DagRun.dag_id, func.count(DagRun.id)).group_by(DagRun.dag_id).order_by(DagRun.dag_id).all()


@op("query.union")
def _(s: Session):
    q1 = s.query(Dag).filter(Dag.owner == "alice")
    q2 = s.query(Dag).filter(Dag.is_paused.is_(True))
    return q1.union(q2).order_by(Dag.dag_id).all()


@op("query.text_filter_params", refused=PolicyViolationError)
def _(s: Session):
    return s.query(Dag).filter(text("dag_id = :d")).params(d="tutorial").all()


@op("query.statement_execute")
def _(s: Session):
    q = s.query(Connection.conn_id, Connection.extra).order_by(Connection.id)
    return s.execute(q.statement).all()
