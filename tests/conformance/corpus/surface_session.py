"""Corpus operations - txn / get (wider surface): identity map, expire / refresh / expunge / merge,
autoflush, ``expire_on_commit=False``, object states, transaction flags, savepoints rolled back
alone, ``get()`` of an object deleted in the same transaction."""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session, joinedload, make_transient, make_transient_to_detached, selectinload

from ..models import Connection, Dag, DagRun, Variable
from ..models_surface import SurfaceItem
from ._helpers import TI, TI_KEY, counts, exc_name, lifecycle, new_dag, new_run
from ._registry import op


def _flags(s: Session) -> list:
    return [s.in_transaction(), s.in_nested_transaction(), s.get_nested_transaction() is not None]


# --- identity map ---------------------------------------------------------------------------------


@op("txn.identity_map_across_loading_paths")
def _(s: Session):
    r = s.get(DagRun, 4)
    via_join = s.scalars(select(Dag).options(joinedload(Dag.runs)).where(Dag.dag_id == "example_bash")).unique().one()
    via_select = s.scalars(select(DagRun).where(DagRun.run_id == r.run_id, DagRun.dag_id == r.dag_id)).one()
    via_legacy = s.query(DagRun).filter_by(id=4).one()
    return [r is via_select, r is via_legacy, r in via_join.runs, r.dag is via_join]


@op("txn.identity_map_composite_key")
def _(s: Session):
    ti = s.get(TI, TI_KEY)
    again = s.scalars(select(TI).where(TI.dag_id == TI_KEY[0], TI.task_id == TI_KEY[1])
                      .order_by(TI.run_id, TI.map_index)).all()
    key = sa_inspect(ti).identity_key
    return [any(x is ti for x in again), key[1], s.identity_map.get(key) is ti]


@op("txn.identity_map_row_and_entity")
def _(s: Session):
    rows = s.execute(select(DagRun, Dag).join(DagRun.dag).where(Dag.dag_id == "tutorial").order_by(DagRun.id)).all()
    dags = {id(d) for _r, d in rows}
    return [len(rows), len(dags), rows[0][1] is s.get(Dag, "tutorial")]


# --- expire / refresh / expunge / merge -----------------------------------------------------------


@op("txn.expire_discards_pending_change")
def _(s: Session):
    d = s.get(Dag, "tutorial")
    d.owner = "changed"
    dirty = d in s.dirty
    s.expire(d)
    return [dirty, d.owner, d in s.dirty, s.is_modified(d)]


@op("txn.refresh_discards_change_no_autoflush")
def _(s: Session):
    d = s.get(Dag, "etl_daily")
    with s.no_autoflush:
        d.is_paused = True
        s.refresh(d)
    return [d.is_paused, s.is_modified(d)]


@op("txn.refresh_relationship_only")
def _(s: Session):
    d = s.get(Dag, "example_python")
    s.refresh(d, ["runs"])
    loaded = "runs" not in sa_inspect(d).unloaded
    return [loaded, [r.id for r in d.runs]]


@op("txn.expunge_cascades_to_loaded_children")
def _(s: Session):
    d = s.scalars(select(Dag).options(selectinload(Dag.runs)).where(Dag.dag_id == "tutorial")).one()
    runs = list(d.runs)
    s.expunge(d)
    return [lifecycle(d), [lifecycle(r) for r in runs], d in s, any(r in s for r in runs)]


@op("txn.merge_detached_load")
def _(s: Session):
    d = s.get(Dag, "tutorial")
    s.expunge(d)
    d.owner = "merged owner"
    merged = s.merge(d)
    return [merged is d, lifecycle(d), lifecycle(merged), merged.owner, s.is_modified(merged)]


@op("txn.merge_load_false")
def _(s: Session):
    d = s.get(Dag, "etl_daily")
    s.expunge(d)
    merged = s.merge(d, load=False)
    return [merged is d, lifecycle(d), lifecycle(merged), merged.owner, s.is_modified(merged)]


@op("txn.merge_with_children", writes=True)
def _(s: Session):
    d = s.get(Dag, "zz_unused")
    s.expunge(d)
    detached = Dag(**{c: getattr(d, c) for c in ("dag_id", "is_paused", "created_at", "fileloc", "owner")})
    detached.description = "merged with children"
    detached.runs = [new_run("zz_unused", "m1"), new_run("zz_unused", "m2")]
    merged = s.merge(detached)
    s.commit()
    return [merged.description, [r.run_id for r in merged.runs], counts(s)]


@op("txn.make_transient_and_reinsert", writes=True)
def _(s: Session):
    v = s.get(Variable, 2)
    make_transient(v)
    state = lifecycle(v)
    v.id = None
    v.key = "copy_of_empty"
    s.add(v)
    s.commit()
    return [state, v.id, s.scalars(select(Variable.key).order_by(Variable.id)).all()]


@op("txn.make_transient_to_detached")
def _(s: Session):
    d = new_dag("tutorial")
    make_transient_to_detached(d)
    state = lifecycle(d)
    s.add(d)
    return [state, lifecycle(d), d is s.get(Dag, "tutorial")]


# --- autoflush ----------------------------------------------------------------------------------


@op("txn.autoflush_before_lazy_load", writes=True)
def _(s: Session):
    d = s.get(Dag, "zz_unused")
    s.add(new_run("zz_unused", "autoflushed"))  # not through the collection
    runs = [r.run_id for r in d.runs]  # the lazy load autoflushes first
    s.rollback()
    return runs


@op("txn.autoflush_attribute_off", writes=True)
def _(s: Session):
    s.autoflush = False
    s.add(Variable(key="af_off", val="1"))
    before = s.scalar(select(func.count()).select_from(Variable).where(Variable.key == "af_off"))
    s.flush()
    after = s.scalar(select(func.count()).select_from(Variable).where(Variable.key == "af_off"))
    s.rollback()
    return [before, after]


@op("txn.no_autoflush_modify_then_query", writes=True)
def _(s: Session):
    d = s.get(Dag, "tutorial")
    with s.no_autoflush:
        d.owner = "zed"
        inside = s.scalars(select(Dag.dag_id).where(Dag.owner == "zed")).all()
    outside = s.scalars(select(Dag.dag_id).where(Dag.owner == "zed")).all()
    s.rollback()
    return [inside, outside, d.owner]


@op("txn.autoflush_before_get_missing", writes=True)
def _(s: Session):
    c = Connection(conn_id="pending_conn", conn_type="x")
    s.add(c)
    found = s.scalars(select(Connection).where(Connection.conn_id == "pending_conn")).one()
    s.rollback()
    return [found is c, lifecycle(c)]


# --- expire_on_commit=False ------------------------------------------------------------------------


@op("txn.expire_on_commit_false")
def _(s: Session):
    s.expire_on_commit = False
    d = s.get(Dag, "tutorial")
    s.commit()
    unloaded = sorted(sa_inspect(d).unloaded)
    return [unloaded, d.owner, d]


@op("txn.expire_on_commit_false_detached_access")
def _(s: Session):
    s.expire_on_commit = False
    objs = s.scalars(select(Connection).order_by(Connection.id)).all()
    s.commit()
    s.close()
    return [[lifecycle(o) for o in objs], [o.conn_id for o in objs], objs[0]]


@op("txn.expire_on_commit_false_write", writes=True)
def _(s: Session):
    s.expire_on_commit = False
    v = Variable(key="eoc", val="kept")
    s.add(v)
    s.commit()
    s.execute(update(Variable).where(Variable.key == "eoc").values(val="db side").execution_options(
        synchronize_session=False))
    s.commit()
    stale = v.val
    s.refresh(v)
    return [stale, v.val, v.id]


# --- object states ------------------------------------------------------------------------------


@op("txn.inspect_states_and_history", writes=True)
def _(s: Session):
    v = Variable(key="insp", val="a")
    insp = sa_inspect(v)
    out = [[insp.transient, insp.pending, insp.persistent, insp.deleted, insp.detached, insp.has_identity]]
    s.add(v)
    out.append([insp.pending, insp.identity])
    s.flush()
    out.append([insp.persistent, insp.identity, insp.identity_key[1], insp.modified])
    v.val = "b"
    h = insp.attrs.val.history
    out.append([insp.modified, list(h.added), list(h.deleted), list(h.unchanged)])
    s.delete(v)
    s.flush()
    out.append([insp.deleted, insp.was_deleted, insp.persistent])
    s.commit()
    out.append([insp.detached, insp.was_deleted, insp.deleted])
    return out


@op("txn.inspect_deleted_then_rollback", writes=True)
def _(s: Session):
    d = s.get(Dag, "zz_unused")
    s.delete(d)
    states = [lifecycle(d), d in s.deleted]
    s.flush()
    states += [lifecycle(d), d in s.deleted]
    s.rollback()
    states += [lifecycle(d), d.owner]
    return states


@op("txn.session_collections")
def _(s: Session):
    d = s.get(Dag, "tutorial")
    v = Variable(key="new_one", val=None)
    s.add(v)
    with s.no_autoflush:
        d.owner = "x"
        e = s.get(Dag, "etl_daily")
        s.delete(e)
        out = [len(s.new), len(s.dirty), len(s.deleted), v in s.new, d in s.dirty, e in s.deleted]
    s.rollback()
    return out + [len(s.new), len(s.dirty), len(s.deleted)]


# --- transactions -------------------------------------------------------------------------------


@op("txn.flags_through_savepoints", writes=True)
def _(s: Session):
    out = [_flags(s)]
    s.scalar(select(func.count()).select_from(Dag))
    out.append(_flags(s))
    sp = s.begin_nested()
    out.append(_flags(s))
    s.add(Variable(key="sp", val="v"))
    s.flush()
    sp.rollback()
    out.append(_flags(s))
    s.commit()
    out.append(_flags(s))
    s.rollback()
    out.append(_flags(s))
    return out


@op("txn.savepoint_rollback_inner_only", writes=True)
def _(s: Session):
    s.add(Variable(key="outer_kept", val="o"))
    d = s.get(Dag, "tutorial")
    sp = s.begin_nested()
    d.owner = "inner change"
    gone = s.get(Connection, 5)
    s.delete(gone)
    inner = Variable(key="inner_dropped", val="i")
    s.add(inner)
    s.flush()
    sp.rollback()
    after = [d.owner, lifecycle(gone), lifecycle(inner), s.is_active]
    s.commit()
    return [after, counts(s), s.scalars(select(Variable.key).order_by(Variable.id)).all()]


@op("txn.savepoint_two_levels", writes=True)
def _(s: Session):
    s.add(Variable(key="lvl0", val="0"))
    sp1 = s.begin_nested()
    s.add(Variable(key="lvl1", val="1"))
    sp2 = s.begin_nested()
    s.add(Variable(key="lvl2", val="2"))
    s.flush()
    sp2.rollback()
    sp1.commit()
    s.commit()
    return s.scalars(select(Variable.key).where(Variable.key.startswith("lvl")).order_by(Variable.key)).all()


@op("txn.savepoint_context_manager_exception", writes=True)
def _(s: Session):
    s.add(Variable(key="before_sp", val="b"))
    try:
        with s.begin_nested():
            s.add(Variable(key="in_sp", val="x"))
            s.flush()
            raise ValueError("boom")
    except ValueError as e:
        caught = str(e)
    flags = _flags(s)
    s.commit()
    return [caught, flags, s.scalars(select(Variable.key).order_by(Variable.id)).all()]


@op("txn.savepoint_integrity_error_recovers", writes=True)
def _(s: Session):
    s.add(Connection(conn_id="kept_conn", conn_type="a"))
    s.flush()
    try:
        with s.begin_nested():
            s.add(Connection(conn_id="postgres_default", conn_type="dup"))
    except sa_exc.IntegrityError as e:
        caught = exc_name(e)
    active = s.is_active
    s.add(Connection(conn_id="after_error", conn_type="b"))
    s.commit()
    return [caught, active, s.scalars(select(Connection.conn_id).order_by(Connection.id)).all()]


@op("txn.savepoint_commit_then_outer_rollback", writes=True)
def _(s: Session):
    with s.begin_nested():
        s.add(Variable(key="sp_committed", val="x"))
    s.rollback()
    return s.scalar(select(func.count()).select_from(Variable).where(Variable.key == "sp_committed"))


@op("txn.begin_blocks_twice", writes=True)
def _(s: Session):
    with s.begin():
        s.add(Variable(key="blk1", val="1"))
    with s.begin():
        s.add(Variable(key="blk2", val="2"))
    return [s.in_transaction(), s.scalars(select(Variable.key).where(Variable.key.startswith("blk"))
                                          .order_by(Variable.key)).all()]


@op("txn.rollback_reverts_modified_attributes", writes=True)
def _(s: Session):
    d = s.get(Dag, "example_bash")
    d.owner = "temp"
    d.is_paused = True
    s.flush()
    s.rollback()
    return [d.owner, d.is_paused, sorted(sa_inspect(d).unloaded)]


@op("txn.dialect_capabilities")
def _(s: Session):
    d = s.get_bind().dialect
    return [
        d.name,
        d.insert_returning,
        d.update_returning,
        d.delete_returning,
        d.supports_multivalues_insert,
        d.supports_sane_rowcount,
        d.supports_sane_multi_rowcount,
        d.supports_native_decimal,
        d.supports_native_boolean,
    ]


# --- get() ----------------------------------------------------------------------------------------


@op("get.deleted_same_transaction", writes=True)
def _(s: Session):
    d = s.get(Dag, "zz_unused")
    s.delete(d)
    before_flush = s.get(Dag, "zz_unused")
    s.flush()
    after_flush = s.get(Dag, "zz_unused")
    s.rollback()
    return [before_flush is d, after_flush, s.get(Dag, "zz_unused") is d]


@op("get.after_core_delete_identity_map", writes=True)
def _(s: Session):
    v = s.get(Variable, 3)
    s.execute(delete(Variable).where(Variable.id == 3).execution_options(synchronize_session=False))
    stale = s.get(Variable, 3)
    fresh = s.get(Variable, 3, populate_existing=True)
    s.rollback()
    return [stale is v, fresh, lifecycle(v)]


@op("get.with_version_counter", writes=True)
def _(s: Session):
    item = SurfaceItem(label="versioned")
    s.add(item)
    s.flush()
    v1 = item.version
    item.label = "versioned2"
    s.flush()
    v2 = item.version
    s.commit()
    got = s.get(SurfaceItem, item.id)
    return [v1, v2, got.version, got.label]
