"""Fixed values and small helpers shared by the corpus modules."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from ..models import Connection, Dag, DagRun, Log, TaskInstance, TaskState, Variable, XCom
from ..seed import IST, NST, run_id_for

TI = TaskInstance


BASH_R0 = run_id_for("example_bash", 0)  # scheduled__2024-01-01T00:00:00+00:00
BASH_R2 = run_id_for("example_bash", 2)  # manual__2024-01-03T00:00:00+00:00
TUT_R1 = run_id_for("tutorial", 1)
TI_KEY = ("tutorial", "extract", TUT_R1, -1)
MAPPED_KEY = ("example_bash", "mapped", BASH_R0, 1)


def ti_order() -> tuple:
    return (TI.dag_id, TI.run_id, TI.task_id, TI.map_index)


def new_dag(dag_id: str, **kw: Any) -> Dag:
    values: dict[str, Any] = {
        "dag_id": dag_id,
        "is_paused": False,
        "description": f"new {dag_id}",
        "created_at": dt.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=IST),
        "fileloc": f"/opt/dags/{dag_id}.py",
        "owner": "carol",
    }
    values.update(kw)
    return Dag(**values)


def new_run(dag_id: str, run_id: str, **kw: Any) -> DagRun:
    values: dict[str, Any] = {
        "dag_id": dag_id,
        "run_id": run_id,
        "state": "queued",
        "execution_date": dt.datetime(2025, 3, 4, 5, 6, 7, 890, tzinfo=NST),
        "data_interval_start": dt.datetime(2025, 3, 3, 0, 0, 0, 1),
        "conf": {"new": True},
        "run_type": "manual",
    }
    values.update(kw)
    return DagRun(**values)


def new_ti(dag_id: str, run_id: str, task_id: str, map_index: int = -1, **kw: Any) -> TI:
    values: dict[str, Any] = {
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": run_id,
        "map_index": map_index,
        "state": TaskState.QUEUED,
        "try_number": 0,
        "pool": "default_pool",
        "priority_weight": 1,
    }
    values.update(kw)
    return TI(**values)


def counts(s: Session) -> dict[str, int]:
    return {
        model.__tablename__: s.scalar(select(func.count()).select_from(model))
        for model in (Dag, DagRun, TI, XCom, Variable, Connection, Log)
    }


def lifecycle(obj: Any) -> str:
    st = sa_inspect(obj)
    for flag in ("transient", "pending", "persistent", "deleted", "detached"):
        if getattr(st, flag):
            return flag
    return "unknown"


def exc_name(e: BaseException) -> str:
    return f"{type(e).__module__}.{type(e).__qualname__}"
