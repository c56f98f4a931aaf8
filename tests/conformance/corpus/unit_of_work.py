"""Corpus operations - write (unit of work): add / delete / modify, flush, commit, rollback, savepoints, merge."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from sqlalchemy import func, null, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from ..models import Connection, Dag, DagRun, Log, TaskState, Variable, XCom
from ..seed import IST, UTC
from ._helpers import TI, TI_KEY, counts, lifecycle, new_dag, new_run, new_ti
from ._registry import op


@op("write.add_commit", writes=True)
def _(s: Session):
    d = new_dag("new_dag")
    s.add(d)
    states = [lifecycle(d)]
    s.commit()
    states.append(lifecycle(d))
    return [states, s.get(Dag, "new_dag"), counts(s)]


@op("write.add_flush_autoincrement", writes=True)
def _(s: Session):
    r = new_run("tutorial", "manual__new")
    s.add(r)
    s.flush()
    rid = r.id
    s.commit()
    return [rid, s.get(DagRun, rid)]


@op("write.add_rollback", writes=True)
def _(s: Session):
    v = Variable(key="temp", val="x")
    s.add(v)
    s.flush()
    vid = v.id
    s.rollback()
    return [vid, lifecycle(v), s.scalar(select(func.count()).select_from(Variable))]


@op("write.add_no_flush_rollback", writes=True)
def _(s: Session):
    v = Variable(key="temp", val="x")
    s.add(v)
    pending = v in s.new
    s.rollback()
    return [
        pending,
        lifecycle(v),
        v in s,
        s.scalar(select(func.count()).select_from(Variable)),
    ]


@op("write.add_all_commit", writes=True)
def _(s: Session):
    objs = [Variable(key=f"k{i}", val=f"v{i}", is_encrypted=bool(i % 2)) for i in range(5)]
    s.add_all(objs)
    s.commit()
    return [
        [o.id for o in objs],
        s.scalars(select(Variable).order_by(Variable.id)).all(),
    ]


@op("write.lifecycle_states", writes=True)
def _(s: Session):
    c = Connection(conn_id="new_conn", conn_type="http")
    states = [lifecycle(c)]
    s.add(c)
    states.append(lifecycle(c))
    s.flush()
    states.append(lifecycle(c))
    s.delete(c)
    s.flush()
    states.append(lifecycle(c))
    s.commit()
    states.append(lifecycle(c))
    return states


@op("write.object_graph_insert", writes=True)
def _(s: Session):
    d = new_dag("graph_dag")
    r = new_run("graph_dag", "r1")
    d.runs.append(r)
    ti = new_ti("graph_dag", "r1", "only")
    r.task_instances.append(ti)
    ti.xcoms.append(
        XCom(
            key="return_value",
            value=b"\x01\x02",
            timestamp=dt.datetime(2025, 1, 1, tzinfo=UTC),
        )
    )
    s.add(d)
    s.commit()
    return [counts(s), s.get(TI, ("graph_dag", "only", "r1", -1)).xcoms]


@op("write.delete_cascade", writes=True)
def _(s: Session):
    s.delete(s.get(Dag, "example_bash"))
    s.commit()
    return counts(s)


@op("write.delete_rollback", writes=True)
def _(s: Session):
    d = s.get(Dag, "example_python")
    s.delete(d)
    s.flush()
    during = counts(s)
    s.rollback()
    return [during, counts(s), lifecycle(d)]


@op("write.delete_orphan", writes=True)
def _(s: Session):
    d = s.get(Dag, "tutorial")
    removed = d.runs.pop(0)
    s.commit()
    return [lifecycle(removed), counts(s), [r.id for r in d.runs]]


@op("write.collection_append", writes=True)
def _(s: Session):
    d = s.get(Dag, "zz_unused")
    d.runs.append(new_run("zz_unused", "first_run"))
    s.commit()
    return [d.runs, counts(s)]


@op("write.modify_commit", writes=True)
def _(s: Session):
    d = s.get(Dag, "etl_daily")
    d.owner = "carol"
    d.description = None
    d.is_paused = True
    s.commit()
    s.refresh(d)
    return d


@op("write.modify_rollback", writes=True)
def _(s: Session):
    d = s.get(Dag, "etl_daily")
    d.owner = "carol"
    s.flush()
    s.rollback()
    return d.owner


@op("write.dirty_tracking", writes=True)
def _(s: Session):
    d = s.get(Dag, "tutorial")
    out = [s.is_modified(d), d in s.dirty]
    d.owner = "zed"
    out += [s.is_modified(d), d in s.dirty]
    d.owner = "alice"  # back to the loaded value
    out += [s.is_modified(d), d in s.dirty]
    s.commit()
    return out


@op("write.flush_query_rollback", writes=True)
def _(s: Session):
    s.add(Variable(key="flushed", val="y"))
    s.flush()
    seen = s.scalars(select(Variable.key).where(Variable.key == "flushed")).all()
    s.rollback()
    after = s.scalars(select(Variable.key).where(Variable.key == "flushed")).all()
    return [seen, after]


@op("write.autoflush_on_query", writes=True)
def _(s: Session):
    s.add(Variable(key="autoflushed", val="y"))
    seen = s.scalar(select(func.count()).select_from(Variable).where(Variable.key == "autoflushed"))
    s.rollback()
    return seen


@op("write.no_autoflush", writes=True)
def _(s: Session):
    with s.no_autoflush:
        s.add(Variable(key="not_flushed", val="y"))
        seen = s.scalar(select(func.count()).select_from(Variable).where(Variable.key == "not_flushed"))
    s.rollback()
    return seen


@op("write.server_defaults", writes=True)
def _(s: Session):
    log = Log(event="server_default")  # dttm and event_seq come from the server
    s.add(log)
    s.flush()
    unloaded = sorted({"dttm", "event_seq"} & sa_inspect(log).unloaded)
    out = [unloaded, log.id, log.event_seq, log.dttm is not None]
    s.commit()
    return out


@op("write.json_null_vs_sql_null", writes=True)
def _(s: Session):
    a = Log(event="json_none", payload=None)  # JSON 'null'
    b = Log(event="sql_null", payload=null())  # SQL NULL
    c = Log(event="omitted")  # SQL NULL
    d = new_run("tutorial", "conf_none", conf=None)  # conf has none_as_null=True: SQL NULL
    s.add_all([a, b, c, d])
    s.commit()
    ids = [a.id, b.id, c.id]
    return [
        s.scalars(select(Log.id).where(Log.id.in_(ids), Log.payload.is_(None)).order_by(Log.id)).all(),
        s.scalars(select(Log.payload).where(Log.id.in_(ids)).order_by(Log.id)).all(),
        s.scalar(select(DagRun.conf.is_(None)).where(DagRun.run_id == "conf_none")),
    ]


@op("write.json_in_place_mutation", writes=True)
def _(s: Session):
    r = s.get(DagRun, 1)
    r.conf["param"] = 999  # plain JSON is not mutation-tracked
    tracked = s.is_modified(r)
    s.commit()
    s.refresh(r)
    before = r.conf
    r.conf = {**r.conf, "param": 1000}
    s.commit()
    s.refresh(r)
    return [tracked, before, r.conf]


@op("write.special_floats", writes=True, backends={"sqlite", "postgresql"})
def _(s: Session):
    logs = [Log(event="f", ratio=v) for v in (float("inf"), float("-inf"), float("nan"), -0.0, 5e-324)]
    s.add_all(logs)
    s.commit()
    return s.execute(select(Log.id, Log.ratio).where(Log.event == "f").order_by(Log.id)).all()


@op("write.decimal_rounding", writes=True)
def _(s: Session):
    log = Log(event="decimal", amount=Decimal("1.23456"))
    s.add(log)
    s.commit()
    return s.execute(select(Log.amount).where(Log.id == log.id)).scalar_one()


@op("write.datetime_roundtrip", writes=True)
def _(s: Session):
    r = new_run(
        "tutorial",
        "dt_run",
        execution_date=dt.datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=IST),
        data_interval_start=dt.datetime(1999, 1, 1, 0, 0, 0, 1),
    )
    s.add(r)
    s.commit()
    s.refresh(r)
    return [r.execution_date, r.data_interval_start]


@op("write.date_time_bigint_roundtrip", writes=True)
def _(s: Session):
    log = Log(
        event="edge",
        day=dt.date(1, 1, 1),
        at_time=dt.time(23, 59, 59, 999999),
        big=-(2**63),
        amount=Decimal("-0.0000"),
        extra="\u2028\u0085 ünïcödé",
    )
    s.add(log)
    s.commit()
    return s.execute(
        select(Log.day, Log.at_time, Log.big, Log.amount, Log.extra).where(Log.id == log.id)
    ).one()


@op("write.uuid_enum_bytes_update", writes=True)
def _(s: Session):
    ti = s.get(TI, TI_KEY)
    ti.external_executor_id = uuid.UUID("00000000-0000-4000-8000-000000000001")
    ti.state = TaskState.SKIPPED
    ti.duration = None
    x = s.get(XCom, 2)
    x.value = bytes(range(255, -1, -1))
    s.commit()
    s.refresh(ti)
    s.refresh(x)
    return [ti, x]


@op("write.merge_existing", writes=True)
def _(s: Session):
    merged = s.merge(new_dag("tutorial", owner="merged", is_paused=True))
    s.commit()
    return [merged, counts(s)]


@op("write.merge_new", writes=True)
def _(s: Session):
    merged = s.merge(Variable(key="merged", val="m"))
    s.commit()
    return merged


@op("write.savepoint_rollback", writes=True)
def _(s: Session):
    s.add(Variable(key="outer", val="o"))
    nested = s.begin_nested()
    s.add(Variable(key="inner", val="i"))
    s.flush()
    nested.rollback()
    s.commit()
    return s.scalars(select(Variable.key).order_by(Variable.key)).all()


@op("write.savepoint_commit", writes=True)
def _(s: Session):
    with s.begin_nested():
        s.add(Variable(key="inner", val="i"))
    s.commit()
    return s.scalar(select(func.count()).select_from(Variable))


@op("write.begin_context_manager", writes=True)
def _(s: Session):
    with s.begin():
        s.add(Connection(conn_id="ctx", conn_type="x"))
    return [
        s.in_transaction(),
        s.scalar(select(Connection.conn_type).where(Connection.conn_id == "ctx")),
    ]


@op("write.expunge", writes=True)
def _(s: Session):
    d = s.get(Dag, "tutorial")
    s.expunge(d)
    d.owner = "not saved"
    s.commit()
    return [lifecycle(d), s.get(Dag, "tutorial").owner]


@op("write.change_int_pk", writes=True)
def _(s: Session):
    v = s.get(Variable, 10)
    v.id = 100
    s.commit()
    return [s.get(Variable, 10), s.get(Variable, 100)]


@op("write.delete_then_reinsert", writes=True)
def _(s: Session):
    v = s.scalars(select(Variable).where(Variable.key == "api_url")).one()
    s.delete(v)
    s.flush()
    s.add(Variable(key="api_url", val="again"))
    s.commit()
    return s.scalars(select(Variable).where(Variable.key == "api_url")).one()
