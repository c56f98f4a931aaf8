"""The example's named methods: work that must be one transaction on the server.

Both sides import this module: the worker to call the methods, the DB-API to serve them
(``DBAPI_METHODS=examples.methods``, ``create_app(methods=["examples.methods"])``).
``dbapi-server methods --import examples.methods`` lists them.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from dbsession import register_safe_exception, server_method
from examples.models import DagRun, RunState, TaskDependency, TaskInstance, TaskState

__all__ = ["TaskStateError", "latest_successful_task_instances", "mark_success_and_schedule_downstream"]


@register_safe_exception
class TaskStateError(ValueError):
    """The task instance is missing, or not in a state that allows the change (sent to the caller)."""


@server_method(version=1)
def mark_success_and_schedule_downstream(session: Session, dag_id: str, run_id: str, task_id: str,
                                         map_index: int = -1) -> list[TaskInstance]:
    """Mark a running task instance successful and schedule the downstream tasks it unblocks.

    Airflow's "mini scheduler": a downstream task instance without a state becomes scheduled
    when every one of its upstream task instances in the run has succeeded. Returns the task
    instances it scheduled. One transaction: the row locks taken here hold until the caller
    commits, so two finishing upstream tasks cannot both miss their common downstream task.
    """
    ti = session.get(TaskInstance, (dag_id, run_id, task_id, map_index), with_for_update=True)
    if ti is None:
        raise TaskStateError(f"No task instance {dag_id}.{task_id} in run {run_id}.")
    if ti.state is not TaskState.RUNNING:
        raise TaskStateError(f"Task instance {dag_id}.{task_id} is {_name(ti.state)}, not running.")
    ti.state, ti.end_date = TaskState.SUCCESS, datetime.now(UTC)
    session.flush()
    downstream = session.scalars(
        sa.select(TaskDependency.task_id)
        .where(TaskDependency.dag_id == dag_id, TaskDependency.upstream_task_id == task_id)).all()
    scheduled = []
    for candidate in session.scalars(
            sa.select(TaskInstance)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id,
                   TaskInstance.task_id.in_(downstream), TaskInstance.state.is_(None))
            .order_by(TaskInstance.task_id).with_for_update()):
        if _upstreams_succeeded(session, candidate):
            candidate.state = TaskState.SCHEDULED
            scheduled.append(candidate)
    return scheduled


def _upstreams_succeeded(session: Session, ti: TaskInstance) -> bool:
    upstream = aliased(TaskInstance)
    unfinished = session.scalar(
        sa.select(sa.func.count())
        .select_from(TaskDependency)
        .join(upstream, sa.and_(upstream.dag_id == TaskDependency.dag_id,
                                upstream.task_id == TaskDependency.upstream_task_id,
                                upstream.run_id == ti.run_id))
        .where(TaskDependency.dag_id == ti.dag_id, TaskDependency.task_id == ti.task_id,
               sa.or_(upstream.state.is_(None), upstream.state != TaskState.SUCCESS)))
    return unfinished == 0


def _name(state: TaskState | None) -> str:
    return "without a state" if state is None else state.value


@server_method
def latest_successful_task_instances(session: Session, dag_id: str) -> list[TaskInstance]:
    """The latest successful task instance of each task of a DAG (by the run's logical date).

    The proposal's example of a method that exposes less than a generic query would: the
    caller learns these rows, without read access to every run of the DAG.
    """
    ranked = (
        sa.select(TaskInstance.task_id, TaskInstance.run_id,
                  sa.func.row_number().over(partition_by=TaskInstance.task_id,
                                            order_by=DagRun.logical_date.desc()).label("rank"))
        .join(DagRun, sa.and_(DagRun.dag_id == TaskInstance.dag_id, DagRun.run_id == TaskInstance.run_id))
        .where(TaskInstance.dag_id == dag_id, TaskInstance.state == TaskState.SUCCESS)
        .subquery())
    return list(session.scalars(
        sa.select(TaskInstance)
        .join(ranked, sa.and_(ranked.c.task_id == TaskInstance.task_id, ranked.c.run_id == TaskInstance.run_id))
        .where(TaskInstance.dag_id == dag_id, ranked.c.rank == 1)
        .order_by(TaskInstance.task_id)))


@server_method
def finished_runs(session: Session, dag_id: str) -> dict[str, RunState]:
    """run_id -> state of every run of *dag_id* that is no longer queued or running."""
    rows = session.execute(sa.select(DagRun.run_id, DagRun.state).where(
        DagRun.dag_id == dag_id, DagRun.state.in_([RunState.SUCCESS, RunState.FAILED])))
    return {run_id: state for run_id, state in rows}
