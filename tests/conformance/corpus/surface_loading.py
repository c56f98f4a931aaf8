"""Corpus operations - load (wider surface): loading after commit, eager loading with LIMIT, more
than 500 parents for ``selectinload``, ``raiseload`` / ``load_only`` / ``defer`` variants,
``with_parent``, cascades through modified collections, backrefs, ``populate_existing``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import event, func, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import (
    Session,
    aliased,
    contains_eager,
    defer,
    joinedload,
    load_only,
    raiseload,
    selectinload,
    subqueryload,
    with_parent,
)

from ..models import Dag, DagRun, TaskState, XCom
from ..seed import UTC
from ._helpers import BASH_R0, TI, TI_KEY, TUT_R1, counts, lifecycle, new_run, new_ti, ti_order
from ._registry import op


class _OrmCounter:
    """Counts the ORM-level executions of a session (client side: identical on both sides)."""

    def __init__(self, s: Session) -> None:
        self.s = s
        self.n = 0
        event.listen(s, "do_orm_execute", self._hit)

    def _hit(self, _state: Any) -> None:
        self.n += 1

    def close(self) -> int:
        event.remove(self.s, "do_orm_execute", self._hit)
        return self.n


def _bulk_dags(s: Session, n: int, prefix: str = "many") -> list[str]:
    ids = [f"{prefix}_{i:04d}" for i in range(n)]
    s.execute(
        insert(Dag),
        [
            {
                "dag_id": d,
                "is_paused": i % 2 == 0,
                "description": None,
                "created_at": dt.datetime(2025, 1, 1, 0, 0, i % 60, tzinfo=UTC),
                "fileloc": f"/f/{d}.py",
                "owner": "bulk",
            }
            for i, d in enumerate(ids)
        ],
    )
    return ids


# --- lazy loading after commit ----------------------------------------------------------------


@op("load.lazy_after_commit_expired")
def _(s: Session):
    d = s.get(Dag, "tutorial")
    first = [r.id for r in d.runs]
    s.commit()  # expires d, including the loaded collection
    expired = sorted(sa_inspect(d).unloaded)
    return [first, expired, [r.id for r in d.runs], d.owner, sorted(sa_inspect(d).unloaded)]


@op("load.lazy_after_commit_sees_new_rows", writes=True)
def _(s: Session):
    d = s.get(Dag, "etl_daily")
    before = [r.run_id for r in d.runs]
    s.add(new_run("etl_daily", "added_later"))  # not through the collection
    s.commit()
    return [before, [r.run_id for r in d.runs]]


@op("load.lazy_many_to_one_after_commit")
def _(s: Session):
    r = s.get(DagRun, 7)
    dag_before = r.dag
    s.commit()
    return [dag_before.dag_id, "dag" in sa_inspect(r).unloaded, r.dag is dag_before, r.dag.owner]


@op("load.many_to_one_from_identity_map_no_sql")
def _(s: Session):
    d = s.get(Dag, "tutorial")
    runs = s.scalars(select(DagRun).where(DagRun.dag_id == "tutorial").order_by(DagRun.id)).all()
    counter = _OrmCounter(s)
    same = [r.dag is d for r in runs]
    return [same, counter.close()]


# --- eager loading with LIMIT / filters ----------------------------------------------------------


@op("load.joinedload_limit_offset")
def _(s: Session):
    stmt = select(Dag).options(joinedload(Dag.runs)).order_by(Dag.dag_id).limit(2).offset(1)
    return s.scalars(stmt).unique().all()


@op("load.joinedload_first_legacy")
def _(s: Session):
    return s.query(Dag).options(joinedload(Dag.runs)).filter(Dag.owner == "airflow").order_by(Dag.dag_id).first()


@op("load.joinedload_limit_nested")
def _(s: Session):
    opt = joinedload(DagRun.task_instances).joinedload(TI.xcoms)
    stmt = select(DagRun).options(opt).order_by(DagRun.id.desc()).limit(3)
    return s.scalars(stmt).unique().all()


@op("load.joinedload_and_criteria")
def _(s: Session):
    stmt = (
        select(Dag)
        .options(joinedload(Dag.runs.and_(DagRun.state == "success")))
        .order_by(Dag.dag_id)
        .execution_options(populate_existing=True)
    )
    return [[r.id for r in d.runs] for d in s.scalars(stmt).unique().all()]


@op("load.selectinload_over_500_parents", writes=True)
def _(s: Session):
    ids = _bulk_dags(s, 620)
    s.execute(
        insert(DagRun),
        [
            {
                "dag_id": d,
                "run_id": f"r{k}",
                "state": "queued",
                "execution_date": dt.datetime(2025, 2, 1, k, tzinfo=UTC),
                "conf": None,
                "run_type": "manual",
            }
            for i, d in enumerate(ids)
            if i % 3 == 0
            for k in range(1 + i % 2)
        ],
    )
    s.commit()
    counter = _OrmCounter(s)
    dags = s.scalars(
        select(Dag).where(Dag.owner == "bulk").options(selectinload(Dag.runs)).order_by(Dag.dag_id)
    ).all()
    executions = counter.close()
    return [
        len(dags),
        executions,
        sum(len(d.runs) for d in dags),
        [(d.dag_id, [r.run_id for r in d.runs]) for d in dags[:4]],
        [(d.dag_id, [r.run_id for r in d.runs]) for d in dags[-4:]],
        ["runs" in sa_inspect(d).unloaded for d in dags].count(True),
    ]


@op("load.selectinload_many_to_one_over_500", writes=True)
def _(s: Session):
    ids = _bulk_dags(s, 540, prefix="m2o")
    s.execute(
        insert(DagRun),
        [
            {
                "dag_id": d,
                "run_id": "only",
                "state": "success",
                "execution_date": dt.datetime(2025, 3, 1, tzinfo=UTC),
                "run_type": "scheduled",
            }
            for d in ids
        ],
    )
    s.commit()
    s.expunge_all()
    runs = s.scalars(
        select(DagRun).where(DagRun.run_id == "only").options(selectinload(DagRun.dag)).order_by(DagRun.id)
    ).all()
    return [len(runs), len({r.dag.dag_id for r in runs}), runs[0].dag, runs[-1].dag]


@op("load.selectinload_composite_over_500", writes=True)
def _(s: Session):
    s.execute(
        insert(TI),
        [
            {
                "dag_id": "tutorial",
                "task_id": "fan",
                "run_id": TUT_R1,
                "map_index": i,
                "state": TaskState.SUCCESS if i % 2 else None,
                "try_number": 1,
                "pool": "p",
                "priority_weight": i % 5,
            }
            for i in range(530)
        ],
    )
    s.execute(
        insert(XCom),
        [
            {
                "dag_id": "tutorial",
                "task_id": "fan",
                "run_id": TUT_R1,
                "map_index": i,
                "key": "k",
                "value": bytes([i % 256]),
                "timestamp": dt.datetime(2025, 1, 1, tzinfo=UTC),
            }
            for i in range(0, 530, 7)
        ],
    )
    s.commit()
    tis = s.scalars(
        select(TI).where(TI.task_id == "fan").options(selectinload(TI.xcoms)).order_by(TI.map_index)
    ).all()
    return [
        len(tis),
        sum(len(t.xcoms) for t in tis),
        [(t.map_index, [x.value for x in t.xcoms]) for t in tis if t.xcoms][-3:],
    ]


@op("load.subqueryload_filtered_offset")
def _(s: Session):
    return (
        s.query(DagRun)
        .options(subqueryload(DagRun.task_instances))
        .filter(DagRun.state != "queued")
        .order_by(DagRun.id.desc())
        .offset(2)
        .limit(3)
        .all()
    )


@op("load.subqueryload_many_to_one_chain")
def _(s: Session):
    opt = subqueryload(XCom.task_instance).subqueryload(TI.dag_run)
    return s.scalars(select(XCom).options(opt).where(XCom.key == "custom_key").order_by(XCom.id)).all()


@op("load.contains_eager_outerjoin_and")
def _(s: Session):
    stmt = (
        select(Dag)
        .outerjoin(Dag.runs.and_(DagRun.state == "failed"))
        .options(contains_eager(Dag.runs))
        .order_by(Dag.dag_id, DagRun.id)
        .execution_options(populate_existing=True)
    )
    return [(d.dag_id, [r.id for r in d.runs]) for d in s.scalars(stmt).unique().all()]


@op("load.contains_eager_aliased")
def _(s: Session):
    ra = aliased(DagRun)
    stmt = (
        select(Dag)
        .join(Dag.runs.of_type(ra))
        .options(contains_eager(Dag.runs.of_type(ra)))
        .where(ra.run_type == "manual")
        .order_by(Dag.dag_id, ra.id)
    )
    return s.scalars(stmt).unique().all()


@op("load.contains_eager_two_levels")
def _(s: Session):
    stmt = (
        select(TI)
        .join(TI.dag_run)
        .join(DagRun.dag)
        .options(contains_eager(TI.dag_run).contains_eager(DagRun.dag))
        .where(Dag.owner == "bob", TI.map_index == -1)
        .order_by(*ti_order())
    )
    return s.scalars(stmt).all()


# --- raiseload / load_only / defer ----------------------------------------------------------------


@op("load.raiseload_many_to_one", raises=sa_exc.InvalidRequestError)
def _(s: Session):
    r = s.scalars(select(DagRun).options(raiseload(DagRun.dag)).where(DagRun.id == 2)).one()
    return r.dag


@op("load.raiseload_star_except_loaded")
def _(s: Session):
    d = s.scalars(
        select(Dag).options(selectinload(Dag.runs), raiseload("*")).where(Dag.dag_id == "etl_daily")
    ).one()
    out = [[r.id for r in d.runs]]
    try:
        d.runs[0].task_instances  # noqa: B018 - raiseload("*") reaches the second level
    except sa_exc.InvalidRequestError as e:
        out.append(type(e).__name__)
    return out


@op("load.raiseload_sql_only_identity_map")
def _(s: Session):
    d = s.get(Dag, "tutorial")
    r = s.scalars(select(DagRun).options(raiseload(DagRun.dag, sql_only=True)).where(DagRun.id == 8)).one()
    return r.dag is d  # many-to-one found in the identity map: no SQL, so no raise


@op("load.defer_raiseload", raises=sa_exc.InvalidRequestError)
def _(s: Session):
    d = s.scalars(select(Dag).options(defer(Dag.fileloc, raiseload=True)).where(Dag.dag_id == "tutorial")).one()
    return d.fileloc


@op("load.load_only_then_unloaded_access")
def _(s: Session):
    d = s.scalars(select(Dag).options(load_only(Dag.owner)).where(Dag.dag_id == "etl_daily")).one()
    before = sorted(sa_inspect(d).unloaded)
    return [before, d.fileloc, d.description, sorted(sa_inspect(d).unloaded)]


@op("load.load_only_on_related")
def _(s: Session):
    stmt = (
        select(DagRun)
        .options(load_only(DagRun.state), joinedload(DagRun.dag).load_only(Dag.owner))
        .where(DagRun.dag_id == "tutorial")
        .order_by(DagRun.id)
    )
    return s.scalars(stmt).all()


@op("load.defer_composite_pk_entity")
def _(s: Session):
    stmt = select(TI).options(defer(TI.note), defer(TI.hostname)).where(TI.dag_id == "etl_daily").order_by(*ti_order())
    tis = s.scalars(stmt).all()
    return [tis, [t.note for t in tis[:3]]]


# --- with_parent --------------------------------------------------------------------------------


@op("load.with_parent_composite")
def _(s: Session):
    ti = s.get(TI, ("example_bash", "extract", BASH_R0, -1))
    return s.scalars(select(XCom).where(with_parent(ti, TI.xcoms)).order_by(XCom.id)).all()


@op("load.with_parent_many_to_one")
def _(s: Session):
    r = s.get(DagRun, 9)
    return s.scalars(select(Dag).where(with_parent(r, DagRun.dag))).all()


@op("load.with_parent_legacy_query")
def _(s: Session):
    d = s.get(Dag, "example_bash")
    return s.query(DagRun.id, DagRun.state).filter(with_parent(d, Dag.runs)).order_by(DagRun.id).all()


# --- modified collections and cascades ------------------------------------------------------------


@op("load.collection_append_and_remove_flush", writes=True)
def _(s: Session):
    d = s.get(Dag, "example_python")
    removed = d.runs.pop()  # delete-orphan: the run, its task instances and their xcoms go
    r = new_run("example_python", "appended")
    r.task_instances.append(new_ti("example_python", "appended", "t1"))
    d.runs.append(r)
    s.flush()
    mid = [lifecycle(removed), lifecycle(r), counts(s)]
    s.commit()
    return [mid, [x.run_id for x in d.runs]]


@op("load.collection_remove_cascades_two_levels", writes=True)
def _(s: Session):
    ti = s.get(TI, ("example_bash", "extract", BASH_R0, -1))
    run = ti.dag_run
    xcoms = list(ti.xcoms)
    run.task_instances.remove(ti)
    s.commit()
    return [lifecycle(ti), [lifecycle(x) for x in xcoms], counts(s)]


@op("load.collection_replace", writes=True)
def _(s: Session):
    d = s.get(Dag, "etl_daily")
    old = list(d.runs)
    d.runs = [new_run("etl_daily", "replacement")]
    s.commit()
    return [[lifecycle(r) for r in old], [r.run_id for r in d.runs], counts(s)]


@op("load.collection_clear_rollback", writes=True)
def _(s: Session):
    d = s.get(Dag, "tutorial")
    d.runs.clear()
    s.flush()
    during = counts(s)
    s.rollback()
    return [during, [r.id for r in d.runs], counts(s)]


@op("load.backref_many_to_one_set", writes=True)
def _(s: Session):
    d = s.get(Dag, "zz_unused")
    runs = d.runs  # loaded (empty): the backref appends to it
    r = new_run("zz_unused", "via_backref")
    r.dag = d
    s.add(r)  # no save-update cascade along backrefs in 2.0
    before = [x.run_id for x in runs]
    s.commit()
    return [before, r in s, [x.run_id for x in d.runs]]


@op("load.backref_move_between_parents", writes=True)
def _(s: Session):
    a = s.get(Dag, "zz_unused")
    b = s.get(Dag, "etl_daily")
    r = new_run("zz_unused", "mover")
    a.runs.append(r)
    s.flush()
    b_runs = list(b.runs)
    r.dag = b  # backref: removed from a.runs, appended to b.runs
    moved = [[x.run_id for x in a.runs], [x.run_id for x in b.runs], len(b_runs)]
    s.commit()
    return [moved, s.scalar(select(DagRun.dag_id).where(DagRun.run_id == "mover"))]


@op("load.backref_pending_in_collection_query", writes=True)
def _(s: Session):
    d = s.get(Dag, "tutorial")
    r = new_run("tutorial", "pending_run")
    r.dag = d
    s.add(r)
    n = s.scalar(select(func.count()).select_from(DagRun).where(DagRun.dag_id == "tutorial"))  # autoflush
    s.rollback()
    return [n, lifecycle(r)]


# --- populate_existing -----------------------------------------------------------------------


@op("load.populate_existing_discards_unflushed", writes=True)
def _(s: Session):
    d = s.get(Dag, "tutorial")
    with s.no_autoflush:
        d.owner = "local change"
        again = s.scalars(
            select(Dag).where(Dag.dag_id == "tutorial").execution_options(populate_existing=True)
        ).one()
    return [again is d, d.owner, s.is_modified(d)]


@op("load.populate_existing_collection", writes=True)
def _(s: Session):
    d = s.get(Dag, "example_bash")
    with s.no_autoflush:
        d.runs.pop(0)
        n_local = len(d.runs)
        s.scalars(
            select(Dag)
            .where(Dag.dag_id == "example_bash")
            .options(selectinload(Dag.runs))
            .execution_options(populate_existing=True)
        ).one()
    s.rollback()
    return [n_local, [r.id for r in d.runs]]


@op("load.populate_existing_legacy_query")
def _(s: Session):
    runs = s.query(DagRun).filter(DagRun.dag_id == "tutorial").order_by(DagRun.id).all()
    for r in runs:
        s.expire(r, ["state"])
    again = s.query(DagRun).populate_existing().filter(DagRun.dag_id == "tutorial").order_by(DagRun.id).all()
    return [[a is b for a, b in zip(runs, again)], again]


# PyMySQL streams yield_per results unbuffered: the selectin query on the same connection cuts the
# stream short (plain SQLAlchemy returns 2 of the 5 rows there and warns), so not on MariaDB.
@op("load.yield_per_with_selectinload", backends={"sqlite", "postgresql"})
def _(s: Session):
    stmt = select(Dag).options(selectinload(Dag.runs)).order_by(Dag.dag_id).execution_options(yield_per=2)
    return [(d.dag_id, [r.id for r in d.runs]) for d in s.scalars(stmt)]


@op("load.joinedload_collection_yield_per_raises", raises=sa_exc.InvalidRequestError)
def _(s: Session):
    stmt = select(Dag).options(joinedload(Dag.runs)).order_by(Dag.dag_id).execution_options(yield_per=2)
    return s.scalars(stmt).unique().all()


@op("load.expired_collection_reload")
def _(s: Session):
    ti = s.get(TI, TI_KEY)
    first = [x.id for x in ti.xcoms]
    s.expire(ti, ["xcoms"])
    return [first, "xcoms" in sa_inspect(ti).unloaded, [x.id for x in ti.xcoms]]
