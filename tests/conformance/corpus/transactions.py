"""Corpus operations - txn: transaction and session state."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session, selectinload

from ..models import Connection, Dag, DagRun, Variable
from ._helpers import TI, lifecycle
from ._registry import op


@op("txn.in_transaction")
def _(s: Session):
    out = [s.in_transaction()]
    s.scalar(select(func.count()).select_from(Dag))
    out.append(s.in_transaction())
    s.commit()
    out.append(s.in_transaction())
    return out


@op("txn.commit_and_rollback_empty")
def _(s: Session):
    s.commit()
    s.rollback()
    s.commit()
    return [s.in_transaction(), s.is_active]


@op("txn.begin_twice", raises=sa_exc.InvalidRequestError)
def _(s: Session):
    s.begin()
    s.begin()


@op("txn.nested_read")
def _(s: Session):
    with s.begin_nested():
        n = s.scalar(select(func.count()).select_from(TI))
    nested = s.get_nested_transaction()
    s.rollback()
    return [n, nested]


@op("txn.expire_all")
def _(s: Session):
    objs = s.scalars(select(Variable).order_by(Variable.id).limit(3)).all()
    s.expire_all()
    unloaded = [sorted(sa_inspect(o).unloaded) for o in objs]
    vals = [o.val for o in objs]
    return [unloaded, vals]


@op("txn.expunge_all")
def _(s: Session):
    s.scalars(select(Dag)).all()
    before = len(s.identity_map)
    s.expunge_all()
    return [before, len(s.identity_map)]


@op("txn.close_and_reuse")
def _(s: Session):
    d = s.get(Dag, "tutorial")
    s.close()
    d2 = s.get(Dag, "tutorial")
    return [lifecycle(d), lifecycle(d2), d is d2]


@op("txn.connection_execute")
def _(s: Session):
    return s.connection().execute(select(Dag.dag_id, Dag.is_paused).order_by(Dag.dag_id)).all()


@op("txn.expired_after_commit")
def _(s: Session):
    objs = s.scalars(select(Connection).order_by(Connection.id)).all()
    s.commit()
    return objs


@op("txn.refresh_attribute_names")
def _(s: Session):
    d = s.get(Dag, "tutorial")
    s.expire(d)
    s.refresh(d, ["owner", "is_paused"])
    return d


@op("txn.identity_map_after_queries")
def _(s: Session):
    # keep strong references: the identity map is weak-referencing
    tis = s.scalars(select(TI).where(TI.dag_id == "tutorial")).all()
    runs = s.scalars(select(DagRun).options(selectinload(DagRun.task_instances))).all()
    keys = sorted((k[0].__name__, k[1]) for k in s.identity_map)
    return [len(tis), len(runs), len(keys), keys[:3], keys[-3:]]
