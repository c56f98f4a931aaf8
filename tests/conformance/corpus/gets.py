"""Corpus operations - get: Session.get and the identity map."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session, selectinload

from ..models import Dag, DagRun, Variable
from ._helpers import BASH_R0, MAPPED_KEY, TI, TI_KEY, TUT_R1
from ._registry import op


@op("get.simple")
def _(s: Session):
    return s.get(Dag, "tutorial")


@op("get.missing")
def _(s: Session):
    return s.get(Dag, "missing")


@op("get.int_pk")
def _(s: Session):
    return s.get(DagRun, 3)


@op("get.composite_tuple")
def _(s: Session):
    return s.get(TI, TI_KEY)


@op("get.composite_dict")
def _(s: Session):
    return s.get(
        TI,
        {
            "dag_id": "example_bash",
            "task_id": "mapped",
            "run_id": BASH_R0,
            "map_index": 1,
        },
    )


@op("get.composite_missing")
def _(s: Session):
    return s.get(TI, ("tutorial", "extract", TUT_R1, 99))


@op("get.identity_twice")
def _(s: Session):
    a = s.get(TI, MAPPED_KEY)
    b = s.get(TI, MAPPED_KEY)
    return [a is b, a]


@op("get.identity_query_then_get")
def _(s: Session):
    q = s.scalars(select(Dag).where(Dag.dag_id == "etl_daily")).one()
    g = s.get(Dag, "etl_daily")
    again = s.query(Dag).filter(Dag.owner == "bob").one()
    return [q is g, g is again, len(s.identity_map)]


@op("get.identity_key")
def _(s: Session):
    ti = s.get(TI, TI_KEY)
    return [sa_inspect(ti).identity, object_session(ti) is s, ti in s]


@op("get.after_expire")
def _(s: Session):
    d = s.get(Dag, "tutorial")
    s.expire(d)
    expired = "owner" in sa_inspect(d).unloaded
    return [expired, s.get(Dag, "tutorial") is d, d.owner]


@op("get.populate_existing")
def _(s: Session):
    d = s.get(Dag, "example_python")
    with s.no_autoflush:
        d.owner = "changed in memory"
        d2 = s.get(Dag, "example_python", populate_existing=True)
    return [d is d2, d.owner, s.is_modified(d)]


@op("get.wrong_pk_length", raises=sa_exc.InvalidRequestError)
def _(s: Session):
    return s.get(TI, ("tutorial", "extract"))


@op("get.pk_wrong_type", raises=sa_exc.DBAPIError)
def _(s: Session):
    # PostgreSQL refuses "varchar = integer"; SQLite just finds nothing
    return s.get(Dag, 12345)


@op("get.with_options")
def _(s: Session):
    return s.get(Dag, "tutorial", options=[selectinload(Dag.runs)])


@op("get.with_for_update")
def _(s: Session):
    return s.get(Variable, 4, with_for_update=True)


@op("get.refresh")
def _(s: Session):
    v = s.get(Variable, 6)
    s.refresh(v)
    return v
