"""An orchestrator-like worker: run one task instance - the same code in direct and isolation mode.

What a workflow worker does with the metadata database, shaped after Airflow's task runner:

1. fetch its task instance and mark it running (committed, so the scheduler sees it);
2. run the task, which reads variables and connections and pulls its upstream tasks' XComs;
3. push the task's return value as an XCom;
4. mark the task instance successful and schedule the downstream tasks it unblocks - one named
   method (:func:`examples.methods.mark_success_and_schedule_downstream`), so the check of every
   upstream's state and the scheduling happen in one server transaction - and commit.

Nothing here knows which mode it runs in: the session factory decides. ``DBSession()`` follows the
settings (``DATABASE_ACCESS_ISOLATION``...); tests pass ``sessionmaker(class_=DBSession, bind=...)``.
Run it alone with ``python -m examples.task_runner DAG_ID RUN_ID TASK_ID`` (isolation settings in
the environment, or ``--database-url`` for direct mode).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from dbsession import DBSession
from examples.methods import TaskStateError, mark_success_and_schedule_downstream
from examples.models import Connection, DagRun, TaskInstance, TaskState, Variable, XCom

__all__ = ["TASKS", "TaskContext", "run_task_instance"]

RETURN_VALUE = "return_value"


@dataclass
class TaskContext:
    """What a task's code may ask of the metadata database (Airflow's ``context``, much reduced)."""

    session: Session
    ti: TaskInstance

    def variable(self, key: str) -> str:
        return self.session.scalars(sa.select(Variable.val).where(Variable.key == key)).one()

    def connection(self, conn_id: str) -> Connection:
        return self.session.scalars(sa.select(Connection).where(Connection.conn_id == conn_id)).one()

    def xcom_pull(self, task_id: str, key: str = RETURN_VALUE) -> Any:
        return self.session.scalars(sa.select(XCom.value).where(
            XCom.dag_id == self.ti.dag_id, XCom.run_id == self.ti.run_id, XCom.task_id == task_id,
            XCom.key == key)).one_or_none()


def _extract(ctx: TaskContext) -> dict[str, Any]:
    warehouse = ctx.connection("warehouse")
    return {"source": f"{warehouse.conn_type}://{warehouse.host}:{warehouse.port}",
            "table": ctx.variable("source_table"), "rows": [3, 1, 2]}


def _transform(ctx: TaskContext) -> dict[str, Any]:
    extracted = ctx.xcom_pull("extract")
    return {"rows": sorted(extracted["rows"]), "table": extracted["table"]}


def _load(ctx: TaskContext) -> int:
    return len(ctx.xcom_pull("transform")["rows"])


def _audit(ctx: TaskContext) -> str:
    return f"audited {ctx.xcom_pull('extract')['table']}"


def _publish(ctx: TaskContext) -> str:
    return f"{ctx.xcom_pull('load')} rows; {ctx.xcom_pull('audit')}"


#: task_id -> the task's code (a real orchestrator imports it from the DAG file)
TASKS: dict[str, Callable[[TaskContext], Any]] = {
    "extract": _extract, "transform": _transform, "load": _load, "audit": _audit, "publish": _publish,
}


def run_task_instance(sessions: Callable[[], Session], dag_id: str, run_id: str, task_id: str,
                      map_index: int = -1) -> list[str]:
    """Run one scheduled task instance; return the ids of the downstream tasks now scheduled."""
    with sessions() as session:
        ti = session.get(TaskInstance, (dag_id, run_id, task_id, map_index))
        if ti is None or ti.state is not TaskState.SCHEDULED:
            raise TaskStateError(f"Task instance {dag_id}.{task_id} in run {run_id} is not scheduled.")
        ti.state, ti.try_number, ti.start_date = TaskState.RUNNING, ti.try_number + 1, datetime.now(UTC)
        session.commit()

        value = TASKS[task_id](TaskContext(session, ti))
        run = session.scalars(sa.select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one()
        session.add(XCom(dag_run_id=run, dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index,
                         key=RETURN_VALUE, value=value, timestamp=datetime.now(UTC)))
        scheduled = mark_success_and_schedule_downstream(session, dag_id, run_id, task_id, map_index)
        session.commit()
        return [downstream.task_id for downstream in scheduled]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dag_id")
    parser.add_argument("run_id")
    parser.add_argument("task_id")
    parser.add_argument("--database-url", help="direct mode only; isolation mode reads the environment")
    args = parser.parse_args(argv)
    bind = sa.create_engine(args.database_url) if args.database_url else None
    scheduled = run_task_instance(sessionmaker(class_=DBSession, bind=bind), args.dag_id, args.run_id,
                                  args.task_id)
    print(f"{args.task_id}: success; scheduled {', '.join(scheduled) or 'nothing'}")


if __name__ == "__main__":
    main()
