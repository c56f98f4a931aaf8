"""Corpus operations - select: 2.0-style select() with Session.execute / scalars / scalar."""

from __future__ import annotations

from sqlalchemy import false, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.orm import exc as orm_exc

from dbsession import PolicyViolationError

from ..models import Connection, Dag, DagRun, Log, TaskState, Variable, XCom
from ._helpers import TI, ti_order
from ._registry import op


@op("select.scalars_all")
def _(s: Session):
    return s.scalars(select(Dag).order_by(Dag.dag_id)).all()


@op("select.execute_columns")
def _(s: Session):
    return s.execute(select(Dag.dag_id, Dag.owner, Dag.description).order_by(Dag.dag_id)).all()


@op("select.execute_entity_rows")
def _(s: Session):
    return s.execute(select(Connection).order_by(Connection.id)).all()


@op("select.scalar_count")
def _(s: Session):
    return s.scalar(select(func.count()).select_from(Log))


@op("select.scalar_none")
def _(s: Session):
    return s.scalar(select(Dag).where(false()))


@op("select.scalar_one")
def _(s: Session):
    return s.execute(select(Dag).where(Dag.dag_id == "etl_daily")).scalar_one()


@op("select.scalar_one_no_result", raises=orm_exc.NoResultFound)
def _(s: Session):
    return s.execute(select(Dag).where(Dag.dag_id == "missing")).scalar_one()


@op("select.scalar_one_multiple", raises=orm_exc.MultipleResultsFound)
def _(s: Session):
    return s.execute(select(Dag.dag_id)).scalar_one()


@op("select.scalar_one_or_none")
def _(s: Session):
    a = s.execute(select(Variable.val).where(Variable.key == "secret")).scalar_one_or_none()
    b = s.execute(select(Variable.val).where(Variable.key == "missing")).scalar_one_or_none()
    c = s.execute(select(Variable.val).where(Variable.key == "null_val")).scalar_one_or_none()
    return [a, b, c]


@op("select.one_row")
def _(s: Session):
    return s.execute(select(Connection.conn_id, Connection.port).where(Connection.conn_id == "sftp_x")).one()


@op("select.one_no_result", raises=orm_exc.NoResultFound)
def _(s: Session):
    return s.execute(select(Connection.conn_id).where(Connection.port == 1)).one()


@op("select.first_row")
def _(s: Session):
    return s.execute(select(Log.id, Log.event, Log.extra).order_by(Log.id.desc())).first()


@op("select.mappings_columns")
def _(s: Session):
    return s.execute(select(Dag.dag_id, Dag.owner).order_by(Dag.dag_id)).mappings().all()


@op("select.mappings_entity")
def _(s: Session):
    return s.execute(select(Dag).order_by(Dag.dag_id)).mappings().first()


@op("select.scalars_first")
def _(s: Session):
    return s.scalars(select(TI).where(TI.state == TaskState.RUNNING).order_by(*ti_order())).first()


@op("select.scalars_unique")
def _(s: Session):
    return s.scalars(select(DagRun.dag_id).order_by(DagRun.dag_id)).unique().all()


@op("select.where_multiple")
def _(s: Session):
    return s.scalars(
        select(TI)
        .where(TI.dag_id == "example_python", TI.map_index == -1, TI.try_number >= 1)
        .order_by(*ti_order())
    ).all()


@op("select.filter_by")
def _(s: Session):
    return s.scalars(select(Dag).filter_by(owner="alice").order_by(Dag.dag_id)).all()


@op("select.fetchmany")
def _(s: Session):
    r = s.execute(select(Variable.id, Variable.key).order_by(Variable.id))
    return [r.fetchmany(3), r.fetchone(), r.fetchmany(2), r.fetchall(), r.fetchone()]


@op("select.partitions")
def _(s: Session):
    r = s.execute(select(DagRun.id).order_by(DagRun.id))
    return [list(p) for p in r.partitions(5)]


@op("select.keys_and_unpacking")
def _(s: Session):
    r = s.execute(select(Dag.dag_id, Dag.owner.label("who")).order_by(Dag.dag_id))
    return [list(r.keys()), [(dag_id, who) for dag_id, who in r]]


@op("select.columns_reorder")
def _(s: Session):
    r = s.execute(select(Dag.dag_id, Dag.owner, Dag.is_paused).order_by(Dag.dag_id))
    return r.columns("is_paused", "dag_id").all()


@op("select.text_raw", refused=PolicyViolationError)
def _(s: Session):
    # no type information: raw driver types (e.g. SQLite booleans come back as int)
    return s.execute(text("SELECT dag_id, is_paused, owner FROM dag ORDER BY dag_id")).all()


@op("select.text_bind", refused=PolicyViolationError)
def _(s: Session):
    return s.execute(text("SELECT run_id, run_type FROM dag_run WHERE id = :id"), {"id": 3}).one()


@op("select.text_typed_columns", refused=PolicyViolationError)
def _(s: Session):
    stmt = text("SELECT dag_id, is_paused, created_at FROM dag ORDER BY dag_id").columns(
        Dag.dag_id, Dag.is_paused, Dag.created_at
    )
    return s.execute(stmt).all()


@op("select.from_statement", refused=PolicyViolationError)
def _(s: Session):
    stmt = select(Dag).from_statement(text("SELECT * FROM dag WHERE owner = :o ORDER BY dag_id"))
    return s.scalars(stmt, {"o": "alice"}).all()


@op("select.exec_driver_sql", refused=PolicyViolationError)
def _(s: Session):
    return s.connection().exec_driver_sql("SELECT count(*) FROM task_instance").scalar()


@op("select.limit")
def _(s: Session):
    return s.scalars(select(XCom).order_by(XCom.id).limit(3)).all()
