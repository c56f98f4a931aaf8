"""Corpus operations - error: database errors, client-side errors, session state after errors."""

from __future__ import annotations

from sqlalchemy import delete, func, literal, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.orm import exc as orm_exc

from dbsession import PolicyViolationError

from ..models import Connection, Dag, DagRun, Log, Variable
from ._helpers import TI, TI_KEY, TUT_R1, counts, exc_name, new_dag, new_run, new_ti
from ._registry import op


@op("error.duplicate_pk_at_commit", writes=True, raises=sa_exc.IntegrityError)
def _(s: Session):
    s.add(new_dag("tutorial"))
    s.commit()


@op("error.duplicate_pk_at_flush", writes=True, raises=sa_exc.IntegrityError)
def _(s: Session):
    s.add(new_dag("tutorial"))
    s.flush()


@op("error.duplicate_pk_caught", writes=True)
def _(s: Session):
    s.add(new_dag("tutorial"))
    try:
        s.flush()
    except sa_exc.IntegrityError as e:
        caught = exc_name(e)
    else:  # pragma: no cover
        caught = None
    active = s.is_active
    s.rollback()
    return [caught, active, s.is_active, counts(s)]


@op("error.pending_rollback", writes=True)
def _(s: Session):
    s.add(new_dag("tutorial"))
    out = []
    try:
        s.flush()
    except sa_exc.IntegrityError as e:
        out.append(exc_name(e))
    try:
        s.scalar(select(func.count()).select_from(Dag))
    except sa_exc.PendingRollbackError as e:
        out.append(exc_name(e))
    try:
        s.commit()
    except sa_exc.PendingRollbackError as e:
        out.append(exc_name(e))
    s.rollback()
    out.append(s.scalar(select(func.count()).select_from(Dag)))
    return out


@op("error.unique_violation", writes=True, raises=sa_exc.IntegrityError)
def _(s: Session):
    s.add(Variable(key="api_url", val="dup"))
    s.commit()


@op("error.unique_violation_on_update", writes=True, raises=sa_exc.IntegrityError)
def _(s: Session):
    v = s.get(Variable, 2)
    v.key = "api_url"
    s.commit()


@op("error.fk_violation", writes=True, raises=sa_exc.IntegrityError)
def _(s: Session):
    s.add(new_run("no_such_dag", "r"))
    s.commit()


@op("error.fk_violation_composite", writes=True, raises=sa_exc.IntegrityError)
def _(s: Session):
    s.add(new_ti("tutorial", "no_such_run", "t"))
    s.flush()


@op("error.fk_violation_core_delete", writes=True, raises=sa_exc.IntegrityError)
def _(s: Session):
    # a Core DELETE bypasses the ORM cascade: the database refuses
    s.execute(delete(Dag).where(Dag.dag_id == "tutorial"))
    s.commit()


@op("error.not_null_violation", writes=True, raises=sa_exc.IntegrityError)
def _(s: Session):
    s.add(new_dag("nn", owner=None))
    s.commit()


@op("error.not_null_update", writes=True, raises=sa_exc.IntegrityError)
def _(s: Session):
    s.execute(update(TI).where(TI.dag_id == "tutorial").values(pool=None))
    s.commit()


@op("error.rollback_then_query", writes=True)
def _(s: Session):
    s.add(Variable(key="api_url", val="dup"))
    try:
        s.commit()
    except sa_exc.IntegrityError as e:
        name = exc_name(e)
    s.rollback()
    return [name, s.scalars(select(Variable.key).order_by(Variable.id).limit(3)).all()]


@op("error.begin_block_rolls_back", writes=True)
def _(s: Session):
    try:
        with s.begin():
            s.add(Connection(conn_id="first", conn_type="a"))
            s.add(Connection(conn_id="postgres_default", conn_type="dup"))
    except sa_exc.IntegrityError as e:
        name = exc_name(e)
    return [
        name,
        s.in_transaction(),
        s.scalar(select(func.count()).select_from(Connection)),
    ]


@op("error.string_too_long", writes=True, raises=sa_exc.DBAPIError)
def _(s: Session):
    # PostgreSQL / MariaDB refuse, SQLite stores it
    s.add(new_dag("long", owner="x" * 200))
    s.commit()
    return s.get(Dag, "long").owner


@op("error.integer_out_of_range", writes=True, raises=sa_exc.DBAPIError)
def _(s: Session):
    s.add(new_ti("tutorial", TUT_R1, "huge", priority_weight=2**40))
    s.commit()
    return s.scalar(select(TI.priority_weight).where(TI.task_id == "huge"))


@op("error.bigint_overflow_bind", writes=True, raises=(sa_exc.DBAPIError, OverflowError))
def _(s: Session):
    # SQLite's driver raises a plain OverflowError, PostgreSQL a DataError
    s.add(Log(event="overflow", big=2**64))
    s.commit()


@op("error.invalid_enum_value", writes=True, raises=(sa_exc.StatementError, LookupError))
def _(s: Session):
    ti = s.get(TI, TI_KEY)
    ti.state = "bogus"  # type: ignore[assignment]
    s.commit()


@op("error.no_result_found", raises=orm_exc.NoResultFound)
def _(s: Session):
    return s.execute(select(Dag).where(Dag.dag_id == "nope")).scalar_one()


@op("error.multiple_results", raises=orm_exc.MultipleResultsFound)
def _(s: Session):
    return s.query(DagRun).filter(DagRun.dag_id == "tutorial").one()


@op("error.detached_lazy_load", raises=orm_exc.DetachedInstanceError)
def _(s: Session):
    d = s.get(Dag, "tutorial")
    s.close()
    return d.runs


@op("error.detached_expired_attribute", raises=orm_exc.DetachedInstanceError)
def _(s: Session):
    d = s.get(Dag, "tutorial")
    s.commit()  # expires d
    s.expunge(d)
    return d.owner


@op("error.delete_transient", raises=sa_exc.InvalidRequestError)
def _(s: Session):
    s.delete(new_dag("never_saved"))


@op("error.joined_collection_needs_unique", raises=sa_exc.InvalidRequestError)
def _(s: Session):
    return s.execute(select(Dag).options(joinedload(Dag.runs))).scalars().all()


@op("error.sql_syntax", raises=sa_exc.DBAPIError, refused=PolicyViolationError)
def _(s: Session):
    return s.execute(text("SELEC 1")).all()


@op("error.unknown_column", raises=sa_exc.DBAPIError, refused=PolicyViolationError)
def _(s: Session):
    return s.execute(text("SELECT no_such_column FROM dag")).all()


@op("error.unknown_table", raises=sa_exc.DBAPIError, refused=PolicyViolationError)
def _(s: Session):
    return s.execute(text("SELECT * FROM no_such_table")).all()


@op("error.error_then_same_session_works", raises=())
def _(s: Session):
    # a database error (duplicate primary key at flush), rollback, and the session works again
    try:
        s.add(Dag(dag_id=s.scalars(select(Dag.dag_id).order_by(Dag.dag_id)).first()))
        s.flush()
    except sa_exc.DBAPIError as e:
        name = exc_name(e)
    s.rollback()
    return [name, s.scalar(select(func.count()).select_from(Dag))]


@op("error.division_by_zero", raises=sa_exc.DBAPIError)
def _(s: Session):
    # PostgreSQL raises, SQLite returns NULL
    return s.scalar(select(literal(1) / literal(0)))


@op("error.bigint_arith_overflow", raises=sa_exc.DBAPIError)
def _(s: Session):
    # PostgreSQL raises "bigint out of range", SQLite converts to float
    return s.scalar(select(Log.big + 1).where(Log.id == 1))


@op("error.refresh_deleted_row", writes=True, raises=sa_exc.InvalidRequestError)
def _(s: Session):
    v = s.get(Variable, 5)
    s.execute(delete(Variable).where(Variable.id == 5))
    s.refresh(v)
