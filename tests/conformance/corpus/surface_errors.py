"""Corpus operations - error (wider surface): constraint violations at flush *and* at commit, data
errors, ``StaleDataError``, detached / invalid requests, and the session's state after each error:
the failing call, then the next use of the session (``PendingRollbackError`` after a failed
flush), then ``rollback()`` and a successful write."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, load_only
from sqlalchemy.orm import exc as orm_exc

from ..models import Connection, Dag, DagRun, Log, Variable, XCom
from ..models_surface import SurfaceItem
from ..seed import UTC
from ._helpers import TI, TI_KEY, TUT_R1, counts, exc_name, lifecycle, new_dag, new_run
from ._registry import op


def _fail_then_recover(s: Session, fail: Callable[[], Any]) -> list:
    """Run ``fail``; record the exception, whether the session is usable, then recover."""
    out: list = []
    try:
        fail()
        out.append("no error")
    except Exception as e:  # the class is compared on both sides
        out.append(exc_name(e))
    out.append(s.is_active)
    try:
        s.scalar(select(func.count()).select_from(Dag))
        out.append("usable without rollback")
    except sa_exc.PendingRollbackError as e:
        out.append(exc_name(e))
    except sa_exc.DBAPIError as e:  # e.g. PostgreSQL's aborted transaction
        out.append(exc_name(e))
    s.rollback()
    out.append(s.is_active)
    s.add(Variable(key="after_error", val="ok"))
    s.commit()
    out.append(counts(s))
    return out


def _flush_with(s: Session, *objs: Any) -> Callable[[], None]:
    def go() -> None:
        s.add_all(objs)
        s.flush()

    return go


def _commit_with(s: Session, *objs: Any) -> Callable[[], None]:
    def go() -> None:
        s.add_all(objs)
        s.commit()

    return go


# --- constraint violations at flush and at commit, then the session's state ------------------------


@op("error.unique_at_flush_then_recover", writes=True)
def _(s: Session):
    return _fail_then_recover(s, _flush_with(s, Variable(key="secret", val="dup")))


@op("error.unique_at_commit_then_recover", writes=True)
def _(s: Session):
    return _fail_then_recover(s, _commit_with(s, Connection(conn_id="mysql_default", conn_type="dup")))


@op("error.unique_composite_at_flush", writes=True, raises=sa_exc.IntegrityError)
def _(s: Session):
    s.add(new_run("tutorial", TUT_R1))  # (dag_id, run_id) is unique
    s.flush()


@op("error.fk_at_flush_then_recover", writes=True)
def _(s: Session):
    return _fail_then_recover(s, _flush_with(s, new_run("missing_dag", "r1")))


@op("error.fk_at_commit_composite_then_recover", writes=True)
def _(s: Session):
    x = XCom(
        dag_id="tutorial",
        task_id="no_such_task",
        run_id=TUT_R1,
        map_index=-1,
        key="k",
        value=b"v",
        timestamp=dt.datetime(2025, 1, 1, tzinfo=UTC),
    )
    return _fail_then_recover(s, _commit_with(s, x))


@op("error.fk_on_pk_change_at_flush", writes=True, raises=sa_exc.IntegrityError)
def _(s: Session):
    r = s.get(DagRun, 8)  # its task instances reference (dag_id, run_id)
    r.run_id = "renamed"
    s.flush()


@op("error.fk_core_delete_then_recover", writes=True)
def _(s: Session):
    def go() -> None:
        s.execute(delete(DagRun).where(DagRun.id == 1).execution_options(synchronize_session=False))
        s.commit()

    return _fail_then_recover(s, go)


@op("error.not_null_at_flush_then_recover", writes=True)
def _(s: Session):
    return _fail_then_recover(s, _flush_with(s, Connection(conn_id="nn", conn_type=None)))


@op("error.not_null_at_commit_then_recover", writes=True)
def _(s: Session):
    def go() -> None:
        d = s.get(Dag, "tutorial")
        d.fileloc = None
        s.commit()

    return _fail_then_recover(s, go)


@op("error.data_too_long_then_recover", writes=True, backends={"postgresql", "mysql"})
def _(s: Session):
    # PostgreSQL and MariaDB (strict mode) refuse with DataError; SQLite would store it
    return _fail_then_recover(s, _flush_with(s, Variable(key="k" * 251, val="x")))


@op("error.data_too_long_mysql", writes=True, backends={"mysql"}, raises=sa_exc.DataError)
def _(s: Session):
    s.add(new_dag("too_long", fileloc="/" * 501))
    s.commit()


@op("error.numeric_overflow_then_recover", writes=True, backends={"postgresql", "mysql"})
def _(s: Session):
    return _fail_then_recover(s, _flush_with(s, Log(event="big", amount=Decimal("123456789.5"))))


@op("error.core_insert_error_then_next_statement", writes=True)
def _(s: Session):
    # not a flush: the session does not need a rollback, but PostgreSQL aborted the transaction
    out: list = []
    try:
        s.execute(insert(Variable).values(key="api_url", val="dup"))
    except sa_exc.IntegrityError as e:
        out.append(exc_name(e))
    try:
        out.append(s.scalar(select(func.count()).select_from(Variable)))
    except sa_exc.DBAPIError as e:
        out.append(exc_name(e))
    s.rollback()
    out.append(s.scalar(select(func.count()).select_from(Variable)))
    return out


@op("error.bulk_insert_unique_violation", writes=True)
def _(s: Session):
    def go() -> None:
        s.execute(insert(Variable), [{"key": "fresh1", "val": "a"}, {"key": "unicode", "val": "dup"}])
        s.commit()

    return _fail_then_recover(s, go)


@op("error.second_flush_without_rollback", writes=True)
def _(s: Session):
    s.add(Variable(key="api_url", val="dup"))
    out = []
    for step in (s.flush, s.flush, s.commit):  # the second flush has nothing left to do
        try:
            step()
            out.append("ok")
        except sa_exc.SQLAlchemyError as e:
            out.append(exc_name(e))
    s.rollback()
    return out


@op("error.failed_flush_object_states", writes=True)
def _(s: Session):
    d = s.get(Dag, "etl_daily")
    d.owner = "will be rolled back"
    v = Variable(key="api_url", val="dup")
    s.add(v)
    try:
        s.flush()
    except sa_exc.IntegrityError as e:
        name = exc_name(e)
    mid = [lifecycle(v), lifecycle(d)]
    s.rollback()
    return [name, mid, lifecycle(v), v in s, d.owner]


# --- bind-time errors -------------------------------------------------------------------------------


@op("error.json_not_serializable_then_recover", writes=True)
def _(s: Session):
    # a datetime inside a JSON value: json.dumps refuses it while binding
    bad = Log(event="bad_json", payload={"at": dt.datetime(2024, 1, 1, tzinfo=UTC)})
    return _fail_then_recover(s, _flush_with(s, bad))


@op("error.invalid_uuid_value", writes=True, raises=sa_exc.StatementError)
def _(s: Session):
    ti = s.get(TI, TI_KEY)
    ti.external_executor_id = "not-a-uuid"  # type: ignore[assignment]
    s.flush()
    return ti.external_executor_id


@op("error.bad_value_then_recover", writes=True)
def _(s: Session):
    def go() -> None:
        v = s.get(Variable, 1)
        v.is_encrypted = "maybe"  # type: ignore[assignment]
        s.flush()

    return _fail_then_recover(s, go)


# --- StaleDataError -------------------------------------------------------------------------------


def _versioned(s: Session) -> SurfaceItem:
    item = SurfaceItem(label="v", secret="x")
    s.add(item)
    s.commit()
    assert item.version == 1  # reloaded after the commit: the ORM now expects version 1
    # someone else bumps the version behind the ORM's back
    s.execute(update(SurfaceItem.__table__).values(version=SurfaceItem.__table__.c.version + 1))
    return item


@op("error.stale_version_update", writes=True, raises=orm_exc.StaleDataError)
def _(s: Session):
    item = _versioned(s)
    item.label = "changed"
    s.flush()


@op("error.stale_version_delete", writes=True, raises=orm_exc.StaleDataError)
def _(s: Session):
    item = _versioned(s)
    s.delete(item)
    s.flush()


@op("error.stale_version_then_recover", writes=True)
def _(s: Session):
    item = _versioned(s)

    def go() -> None:
        item.secret = "y"
        s.flush()

    out = _fail_then_recover(s, go)
    return [out, s.execute(select(SurfaceItem.version, SurfaceItem.secret)).all()]


@op("error.stale_update_deleted_row", writes=True, raises=orm_exc.StaleDataError)
def _(s: Session):
    v = s.get(Variable, 4)
    s.execute(delete(Variable.__table__).where(Variable.__table__.c.id == 4))
    v.val = "gone"
    s.flush()


# --- detached / invalid requests --------------------------------------------------------------------


@op("error.detached_many_to_one", raises=orm_exc.DetachedInstanceError)
def _(s: Session):
    r = s.get(DagRun, 3)
    s.close()
    return r.dag


@op("error.detached_deferred_column", raises=orm_exc.DetachedInstanceError)
def _(s: Session):
    d = s.scalars(select(Dag).options(load_only(Dag.owner)).where(Dag.dag_id == "tutorial")).one()
    s.expunge(d)
    return d.fileloc


@op("error.detached_after_commit_close", raises=orm_exc.DetachedInstanceError)
def _(s: Session):
    objs = s.scalars(select(Variable).order_by(Variable.id)).all()
    s.commit()
    s.close()
    return [o.key for o in objs]


@op("error.refresh_detached", raises=sa_exc.InvalidRequestError)
def _(s: Session):
    d = s.get(Dag, "tutorial")
    s.expunge(d)
    s.refresh(d)


@op("error.expire_transient", raises=sa_exc.InvalidRequestError)
def _(s: Session):
    s.expire(new_dag("never_added"))


@op("error.add_to_second_session", raises=sa_exc.InvalidRequestError)
def _(s: Session):
    d = s.get(Dag, "tutorial")
    other = Session()  # no bind: never touches a database
    try:
        other.add(d)
    finally:
        other.close()


@op("error.raiseload_then_session_usable")
def _(s: Session):
    from sqlalchemy.orm import raiseload

    d = s.scalars(select(Dag).options(raiseload(Dag.runs)).where(Dag.dag_id == "tutorial")).one()
    try:
        d.runs  # noqa: B018
    except sa_exc.InvalidRequestError as e:
        name = exc_name(e)
    return [name, s.is_active, s.scalar(select(func.count()).select_from(DagRun).where(DagRun.dag_id == "tutorial"))]


@op("error.get_unmapped_class", raises=sa_exc.InvalidRequestError)
def _(s: Session):
    return s.get(uuid.UUID, 1)  # type: ignore[type-var]


@op("error.no_result_then_session_usable")
def _(s: Session):
    try:
        s.execute(select(Dag).where(Dag.dag_id == "missing")).scalar_one()
    except orm_exc.NoResultFound as e:
        name = exc_name(e)
    return [name, s.in_transaction(), s.get(Dag, "tutorial").owner]


@op("error.json_not_serializable", writes=True, raises=(sa_exc.StatementError, TypeError))
def _(s: Session):
    # a set inside a JSON value reaches the server's JSON serialization, which refuses it exactly
    # as a direct session's does: SQLAlchemy's bind processor (StatementError) on sqlite and
    # MariaDB, psycopg itself (a raw TypeError) on PostgreSQL
    s.add(Log(event="bad_json", payload={"x": {1, 2}}))
    s.flush()


@op("error.lock_nowait_conflict", writes=True)
def _(s: Session):
    # a row locked FOR UPDATE by this session, and a second session on the same bind - on the
    # isolated side a second server transaction - asking for it with NOWAIT: a lock error on
    # PostgreSQL and MariaDB (SQLite has no row locks), and both sessions stay usable
    locked = s.scalars(select(Variable).order_by(Variable.id).limit(1).with_for_update()).one()
    outcome = None
    with Session(bind=s.get_bind()) as other:
        try:
            other.scalars(select(Variable).where(Variable.id == locked.id).with_for_update(nowait=True)).one()
        except sa_exc.OperationalError as e:
            outcome = exc_name(e)
        other.rollback()
        after = other.scalar(select(func.count()).select_from(Variable))
    if s.get_bind().dialect.name != "sqlite":  # the op proves nothing unless the conflict happened
        assert outcome is not None, "NOWAIT on a locked row must fail"
    s.rollback()
    return [outcome, after, s.scalar(select(func.count()).select_from(Variable))]
