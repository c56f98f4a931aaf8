"""The untrusted side: ordinary ORM code, run with no database credentials at all.

Started by ``examples/demo.py`` with only ``DATABASE_ACCESS_ISOLATION=true``,
``DATABASE_API_HOST`` and ``DATABASE_API_TOKEN_FILE`` in its environment. Nothing below knows
about HTTP: it is the same SQLAlchemy code a trusted process would run against the database
directly. The optional argument is the database file's path, used only to show that opening it
directly is refused.

Exits non-zero if anything behaves differently from a direct session.
"""

from __future__ import annotations

import enum
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import selectinload, sessionmaker

import dbsession
from dbsession import DBSession
from examples.models import Dag, DagRun, RunState, TaskInstance, TaskState, Variable

LOGICAL = datetime(2024, 3, 31, 0, 30, tzinfo=UTC)


def say(text: str) -> None:
    print(f"  worker | {text}", flush=True)


def value(member: enum.Enum | None) -> Any:
    return None if member is None else member.value


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"worker: FAILED - {what}")


def create_dag(Session: sessionmaker[DBSession]) -> None:
    with Session() as session:
        dag = Dag(dag_id="etl_daily", fileloc="/dags/etl.py", last_parsed=LOGICAL)
        for day in range(2):
            run = DagRun(run_id=f"scheduled__{day}", state=RunState.RUNNING,
                         logical_date=LOGICAL + timedelta(days=day), conf={"day": day, "tags": ["etl"]})
            run.task_instances = [TaskInstance(task_id=t, state=TaskState.SCHEDULED)
                                  for t in ("extract", "transform", "load")]
            dag.runs.append(run)
        session.add(dag)
        session.add(Variable(key="retention_days", val="30"))
        session.commit()
        ids = [run.id for run in dag.runs]
    say(f"inserted dag etl_daily with 2 runs (ids {ids}) and 6 task instances; committed")


def query_runs(Session: sessionmaker[DBSession]) -> None:
    with Session() as session:
        stmt = (sa.select(DagRun).join(DagRun.dag)
                .where(Dag.is_paused.is_(False), DagRun.state == RunState.RUNNING,
                       DagRun.logical_date >= LOGICAL)
                .options(selectinload(DagRun.task_instances))
                .order_by(DagRun.logical_date))
        runs = session.scalars(stmt).all()
        check(len(runs) == 2, "two running runs expected")
        for run in runs:
            states = ", ".join(f"{ti.task_id}={value(ti.state)}" for ti in run.task_instances)
            say(f"run {run.run_id}: {run.state.value}, logical_date {run.logical_date.isoformat()}, "
                f"conf {run.conf} -> [{states}]")
        check(runs[0].logical_date == LOGICAL and runs[0].logical_date.tzinfo is not None,
              "aware datetimes come back aware and equal")
        count = session.scalar(sa.select(sa.func.count()).select_from(TaskInstance)
                               .where(TaskInstance.state == TaskState.SCHEDULED))
        say(f"select count(*) of scheduled task instances: {count}")
        check(count == 6, "six scheduled task instances expected")


def update_task(Session: sessionmaker[DBSession]) -> None:
    key = ("etl_daily", "scheduled__0", "extract", -1)
    with Session() as session:
        ti = session.get(TaskInstance, key)
        check(ti is not None, "session.get() by composite key")
        assert ti is not None
        say(f"session.get(TaskInstance, {key}) -> state {value(ti.state)}, try {ti.try_number}")
        ti.state, ti.try_number = TaskState.SUCCESS, ti.try_number + 1
        ti.start_date = LOGICAL + timedelta(minutes=1)
        ti.end_date = ti.start_date + timedelta(seconds=42)
        session.commit()
    with Session() as session:
        ti = session.get(TaskInstance, key)
        assert ti is not None
        check(ti.state is TaskState.SUCCESS and ti.end_date == LOGICAL + timedelta(minutes=1, seconds=42),
              "the committed update is visible to a new session")
        say(f"updated + committed: state {value(ti.state)}, end_date {ti.end_date}")


def roll_back(Session: sessionmaker[DBSession]) -> None:
    with Session() as session:
        session.add(Variable(key="scratch", val="never committed"))
        session.get(DagRun, 1).state = RunState.FAILED  # type: ignore[union-attr]
        session.flush()  # the INSERT and UPDATE really run, in a server-side transaction
        inside = session.scalar(sa.select(sa.func.count()).select_from(Variable))
        session.rollback()
        after = session.scalar(sa.select(sa.func.count()).select_from(Variable))
        state = session.scalar(sa.select(DagRun.state).where(DagRun.id == 1))
    say(f"flushed an insert and an update: {inside} variables inside the transaction; "
        f"after rollback: {after}, run 1 still {value(state)}")
    check(inside == 2 and after == 1 and state is RunState.RUNNING, "rollback undoes flushed changes")


def integrity_error(Session: sessionmaker[DBSession]) -> None:
    with Session() as session:
        session.add(Variable(key="retention_days", val="7"))
        try:
            session.commit()
        except sa.exc.IntegrityError as exc:
            session.rollback()
            say(f"duplicate key -> sqlalchemy.exc.IntegrityError: {exc.orig}")
        else:
            check(False, "a duplicate key must raise IntegrityError")


def bulk_update(Session: sessionmaker[DBSession]) -> None:
    with Session() as session:
        result = cast(sa.CursorResult[Any], session.execute(
            sa.update(TaskInstance)
            .where(TaskInstance.run_id == "scheduled__1", TaskInstance.state == TaskState.SCHEDULED)
            .values(state=TaskState.SKIPPED)))
        session.commit()
        say(f"bulk UPDATE ... WHERE run_id = 'scheduled__1': {result.rowcount} rows skipped; committed")
        check(result.rowcount == 3, "bulk update touches three rows")


def refused(Session: sessionmaker[DBSession], database_path: str | None) -> None:
    if database_path:
        try:
            sa.create_engine(f"sqlite:///{database_path}")
        except dbsession.DirectDatabaseAccessError:
            say(f"create_engine('sqlite:///{database_path}') -> DirectDatabaseAccessError")
        else:
            check(False, "a direct engine must be refused in isolation mode")
    with Session() as session:
        try:
            session.execute(sa.text("SELECT key, val FROM variable"))
        except dbsession.PolicyViolationError as exc:
            say(f"session.execute(text(...)) -> PolicyViolationError: {exc}")
        else:
            check(False, "raw SQL text must be refused by the policy")


def main() -> None:
    database_path = sys.argv[1] if len(sys.argv) > 1 else None
    settings = dbsession.get_settings()
    check(settings.database_access_isolation, "DATABASE_ACCESS_ISOLATION must be on")
    say(f"isolation on, DB-API at {settings.database_api_host}, no database URL in the environment")
    Session = sessionmaker(class_=DBSession)
    create_dag(Session)  # the first isolated DBSession also installs the direct-access guard
    query_runs(Session)
    update_task(Session)
    roll_back(Session)
    integrity_error(Session)
    bulk_update(Session)
    refused(Session, database_path)
    say("all done")


if __name__ == "__main__":
    main()
