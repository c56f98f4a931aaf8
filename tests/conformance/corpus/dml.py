"""Corpus operations - write (statements): Query.update/delete, update()/delete()/insert() statements, bulk operations, text DML."""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from dbsession import PolicyViolationError

from ..models import Connection, Dag, DagRun, Log, TaskState, Variable, XCom
from ._helpers import TI, lifecycle, ti_order
from ._registry import op


@op("write.query_update_evaluate", writes=True)
def _(s: Session):
    runs = s.query(DagRun).filter(DagRun.dag_id == "tutorial").order_by(DagRun.id).all()
    n = (
        s.query(DagRun)
        .filter(DagRun.dag_id == "tutorial")
        .update({"state": "failed"}, synchronize_session="evaluate")
    )
    in_memory = [r.state for r in runs]
    s.commit()
    return [n, in_memory, s.scalars(select(DagRun.state).order_by(DagRun.id)).all()]


@op("write.query_update_fetch", writes=True)
def _(s: Session):
    tis = s.query(TI).filter(TI.dag_id == "etl_daily").order_by(*ti_order()).all()
    n = (
        s.query(TI)
        .filter(TI.try_number >= 2)
        .update({TI.try_number: TI.try_number + 10}, synchronize_session="fetch")
    )
    in_memory = [t.try_number for t in tis]
    s.commit()
    return [n, in_memory]


@op("write.query_update_no_sync", writes=True)
def _(s: Session):
    d = s.get(Dag, "tutorial")
    n = s.query(Dag).filter(Dag.owner == "alice").update({"is_paused": True}, synchronize_session=False)
    stale = d.is_paused
    s.commit()
    return [n, stale, d.is_paused]


@op("write.query_delete_evaluate", writes=True)
def _(s: Session):
    logs = s.query(Log).filter(Log.event == "paused").order_by(Log.id).all()
    n = s.query(Log).filter(Log.event == "paused").delete(synchronize_session="evaluate")
    states = [lifecycle(x) for x in logs]
    s.commit()
    return [n, states, s.scalar(select(func.count()).select_from(Log))]


@op("write.query_delete_fetch", writes=True)
def _(s: Session):
    x = s.get(XCom, 3)
    n = s.query(XCom).filter(XCom.key == "custom_key").delete(synchronize_session="fetch")
    s.commit()
    return [n, lifecycle(x), s.scalars(select(XCom.id).order_by(XCom.id)).all()]


@op("write.query_delete_no_sync", writes=True)
def _(s: Session):
    n = s.query(Variable).filter(Variable.is_encrypted.is_(True)).delete(synchronize_session=False)
    s.commit()
    return [n, s.scalars(select(Variable.key).order_by(Variable.key)).all()]


@op("write.update_statement", writes=True)
def _(s: Session):
    r = s.execute(update(Dag).where(Dag.owner == "alice").values(is_paused=True, description="updated"))
    n = r.rowcount
    s.commit()
    return [n, s.scalars(select(Dag).order_by(Dag.dag_id)).all()]


@op("write.update_statement_fetch_sync", writes=True)
def _(s: Session):
    d = s.get(Dag, "etl_daily")
    stmt = (
        update(Dag)
        .where(Dag.dag_id == "etl_daily")
        .values(owner="dave")
        .execution_options(synchronize_session="fetch")
    )
    s.execute(stmt)
    owner_in_memory = d.owner
    s.commit()
    return owner_in_memory


@op("write.update_returning", writes=True, backends={"sqlite", "postgresql"})
def _(s: Session):
    stmt = (
        update(DagRun)
        .where(DagRun.state == "queued")
        .values(state="running")
        .returning(DagRun.id, DagRun.state)
    )
    rows = s.execute(stmt).all()
    s.commit()
    return sorted(rows)


@op("write.delete_statement", writes=True)
def _(s: Session):
    n = s.execute(delete(XCom).where(XCom.key == "custom_key")).rowcount
    s.commit()
    return [n, s.scalar(select(func.count()).select_from(XCom))]


@op("write.delete_returning", writes=True, backends={"sqlite", "postgresql"})
def _(s: Session):
    rows = s.execute(delete(Log).where(Log.event == "failed").returning(Log.id, Log.amount)).all()
    s.commit()
    return sorted(rows)


@op("write.bulk_insert", writes=True)
def _(s: Session):
    s.execute(
        insert(Variable),
        [
            {
                "key": f"bulk_{i}",
                "val": f"v{i}",
                "is_encrypted": i == 1,
                "description": None,
            }
            for i in range(4)
        ],
    )
    s.commit()
    return s.scalars(select(Variable).where(Variable.key.startswith("bulk_")).order_by(Variable.id)).all()


@op("write.bulk_insert_returning", writes=True, backends={"sqlite", "postgresql"})
def _(s: Session):
    objs = s.scalars(
        insert(Variable).returning(Variable, sort_by_parameter_order=True),
        [{"key": f"ret_{i}", "val": str(i)} for i in range(3)],
    ).all()
    s.commit()
    return [[o.key for o in objs], [o.id for o in objs]]


@op("write.bulk_update_by_pk", writes=True)
def _(s: Session):
    s.execute(
        update(Variable),
        [
            {"id": 1, "val": "one"},
            {"id": 2, "val": None},
            {"id": 3, "is_encrypted": True},
        ],
    )
    s.commit()
    return s.scalars(select(Variable).order_by(Variable.id)).all()


@op("write.core_insert_values", writes=True)
def _(s: Session):
    r = s.execute(
        insert(Connection).values(conn_id="core", conn_type="ftp", port=21, extra={"passive": True})
    )
    pk = r.inserted_primary_key
    s.commit()
    return [tuple(pk), s.get(Connection, pk[0])]


@op("write.enum_to_null", writes=True)
def _(s: Session):
    n = s.execute(update(TI).where(TI.state == TaskState.FAILED).values(state=None)).rowcount
    s.commit()
    return [n, s.scalar(select(func.count()).select_from(TI).where(TI.state.is_(None)))]


@op("write.bulk_save_objects_legacy", writes=True)
def _(s: Session):
    s.bulk_save_objects([Variable(key=f"bso_{i}", val=None) for i in range(3)])
    s.commit()
    return s.scalars(select(Variable.key).order_by(Variable.id)).all()


@op("write.bulk_insert_mappings_legacy", writes=True)
def _(s: Session):
    s.bulk_insert_mappings(
        Connection,
        [{"conn_id": f"bim_{i}", "conn_type": "t", "port": i} for i in range(3)],
    )
    s.commit()
    return s.execute(select(Connection.id, Connection.conn_id, Connection.port).order_by(Connection.id)).all()


@op("write.bulk_update_mappings_legacy", writes=True)
def _(s: Session):
    s.bulk_update_mappings(Connection, [{"id": 1, "port": 6543}, {"id": 2, "host": None}])
    s.commit()
    return s.execute(select(Connection.id, Connection.host, Connection.port).order_by(Connection.id)).all()


@op("write.text_dml", writes=True, refused=PolicyViolationError)
def _(s: Session):
    r = s.execute(
        text("UPDATE connection SET host = :h WHERE conn_id = :c"),
        {"h": "new-host", "c": "http_default"},
    )
    n = r.rowcount
    s.commit()
    return [
        n,
        s.scalar(select(Connection.host).where(Connection.conn_id == "http_default")),
    ]


@op("write.text_executemany", writes=True, refused=PolicyViolationError)
def _(s: Session):
    s.execute(
        text("INSERT INTO connection (conn_id, conn_type, port) VALUES (:c, :t, :p)"),
        [{"c": "tm1", "t": "a", "p": 1}, {"c": "tm2", "t": "b", "p": None}],
    )
    s.commit()
    return s.execute(select(Connection.id, Connection.conn_id, Connection.port).order_by(Connection.id)).all()


def _dialect_insert(s: Session):
    """The dialect's own ``insert()`` (``sqlalchemy.dialects.<name>.insert``), the one with upserts."""
    import importlib

    return importlib.import_module(f"sqlalchemy.dialects.{s.get_bind().dialect.name}").insert


@op("write.upsert_do_nothing", writes=True, backends={"sqlite", "postgresql"})
def _(s: Session):
    ins = _dialect_insert(s)
    keys = s.scalars(select(Variable.key).order_by(Variable.id).limit(2)).all()
    rows = [{"key": keys[0], "val": "clash"}, {"key": "upsert_new", "val": "fresh"}]
    result = s.execute(ins(Variable).values(rows).on_conflict_do_nothing(index_elements=["key"]))
    s.commit()
    return [result.rowcount, s.execute(select(Variable.key, Variable.val).order_by(Variable.key)).all()]


@op("write.upsert_do_update_returning", writes=True, backends={"sqlite", "postgresql"})
def _(s: Session):
    ins = _dialect_insert(s)
    key = s.scalars(select(Variable.key).order_by(Variable.id).limit(1)).one()
    stmt = ins(Variable).values([{"key": key, "val": "v2"}, {"key": "upsert_other", "val": "v1"}])
    stmt = stmt.on_conflict_do_update(index_elements=["key"], set_={"val": stmt.excluded.val + "!"},
                                      where=Variable.is_encrypted.is_(False))
    returned = sorted(s.execute(stmt.returning(Variable.key, Variable.val)).all())
    s.commit()
    return [returned, s.execute(select(Variable.key, Variable.val).order_by(Variable.key)).all()]


@op("write.insert_multirow_python_default", writes=True)
def _(s: Session):
    # is_encrypted has a Python default: crud names the first row's default bind like the column
    # and the others "<key>_m<n>", from the column keys the statement was compiled with
    rows = [{"key": "mr1", "val": "a"}, {"key": "mr2", "val": "b", "is_encrypted": True}, {"key": "mr3", "val": None}]
    n = s.execute(insert(Variable).values(rows)).rowcount
    s.commit()
    return [n, s.execute(select(Variable.key, Variable.val, Variable.is_encrypted).order_by(Variable.key)).all()]


@op("write.delete_composite_pk_in_subquery_auto", writes=True)
def _(s: Session):
    # synchronize_session "auto" cannot evaluate IN (SELECT ...) in Python, so the ORM fetches the
    # deleted primary keys - with DELETE ... RETURNING where the database has it. SQLAlchemy puts
    # the RETURNING columns of a DELETE's return_defaults() in set order (by the columns' id()),
    # which differs between the client's and the DB-API's processes (issue 11)
    loaded = s.query(TI).filter(TI.dag_id == "tutorial").order_by(*ti_order()).all()
    s.execute(delete(XCom).where(XCom.dag_id.in_(select(Dag.dag_id).where(Dag.owner == "alice"))))
    n = s.execute(delete(TI).where(TI.dag_id.in_(select(Dag.dag_id).where(Dag.owner == "alice")))).rowcount
    gone = [lifecycle(t) for t in loaded]
    s.commit()
    return [n, gone, s.scalars(select(TI.dag_id).distinct().order_by(TI.dag_id)).all()]
