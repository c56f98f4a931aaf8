"""The fuzzers' worker target: the example worker policy on ``_policy_support``'s Airflow-like schema.

What no answer to a worker may hold is written into the database first (:func:`hide_rows`), so the
``Recorder``'s text check sees any leak. Requests are mutated seeds (:data:`WORKER_SEEDS`, allowed
and refused ones) and well-formed reads composed over every table and column, granted or not
(:func:`worker_reads`). On SQLite a read the policy allows is also run directly on a copy holding
only what the worker may see (:func:`visible_copy`): the answers must be equal, row for row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from hypothesis import strategies as st

from dbsession import guard

from ._fuzzing import SeedStatements
from ._policy_support import (
    CONF,
    DAG_SOURCE,
    DESCRIPTION,
    MINE,
    PASSWORD,
    Base,
    Connection,
    DagCode,
    DagRun,
    TaskInstance,
    Variable,
    XCom,
)

__all__ = ["HIDDEN_VALUES", "WORKER_SEEDS", "fill_visible", "hide_rows", "visible_copy", "worker_reads"]

HIDDEN = "HIDDEN-ROW"  # in every readable text column of every row the worker's row filters hide
HIDDEN_IDS = "910000"  # the ids of a whole hidden dag run's rows start with this
HIDDEN_VALUES = (DAG_SOURCE, PASSWORD, DESCRIPTION, CONF, HIDDEN, HIDDEN_IDS)  # no answer may hold them
FILTERED = (DagRun, TaskInstance, XCom)  # row-filtered by dag_id, run_id
UNREADABLE = (DagCode, Connection)  # not granted at all


def _hidden(entity: Any) -> sa.ColumnElement[bool]:
    return sa.not_(sa.and_(entity.dag_id == MINE["dag_id"], entity.run_id == MINE["run_id"]))


def hide_rows(engine: sa.Engine) -> None:
    """Mark what the worker (``MINE``) may not see, so that a leak of it shows in an answer's text.

    Columns it may not read hold secrets already (``CONF``, ``DESCRIPTION``, ...); rows of other
    runs get the marker in every text column the worker may read, and one more dag run carries it
    everywhere, ids included.
    """
    dag_id, run_id = f"{HIDDEN}-dag", f"{HIDDEN}-run"
    with engine.begin() as conn:
        conn.execute(sa.update(TaskInstance).where(_hidden(TaskInstance)).values(
            task_id=f"{HIDDEN}-task", state=f"{HIDDEN}-ti", hostname=f"{HIDDEN}-host"))
        conn.execute(sa.update(XCom).where(_hidden(XCom)).values(key=f"{HIDDEN}-key", value=f"{HIDDEN}-value"))
        conn.execute(sa.update(DagRun).where(_hidden(DagRun)).values(state=f"{HIDDEN}-run"))
        conn.execute(sa.insert(DagRun).values(id=9100001, dag_id=dag_id, run_id=run_id, state=HIDDEN, conf=CONF))
        conn.execute(sa.insert(TaskInstance).values(id=9100002, dag_id=dag_id, run_id=run_id, task_id=HIDDEN,
                                                    state=HIDDEN, hostname=HIDDEN))
        conn.execute(sa.insert(XCom).values(id=9100003, ti_id=9100002, dag_id=dag_id, run_id=run_id, key=HIDDEN,
                                            value=HIDDEN))


def visible_copy(engine: sa.Engine, directory: Path) -> sa.Engine:
    """A SQLite database holding exactly what the worker may read: its own run's rows of the
    filtered tables, variables without descriptions, dag runs without conf, nothing else."""
    copy = guard.exempt(sa.create_engine(f"sqlite:///{directory / 'visible.sqlite'}"))
    fill_visible(engine, copy)
    return copy


def fill_visible(engine: sa.Engine, copy: sa.Engine) -> None:
    """Create the schema in *copy* (any database) and copy into it what the worker may read."""
    Base.metadata.create_all(copy)
    with engine.connect() as source, copy.begin() as target:
        for entity in (*FILTERED, Variable):
            table: sa.Table = entity.__table__  # type: ignore[attr-defined]
            query = sa.select(table)
            if entity in FILTERED:
                query = query.where(sa.not_(_hidden(entity)))
            rows = [dict(row._mapping) for row in source.execute(query)]
            for row in rows:
                row.pop("conf", None)
                row.pop("description", None)
            if rows:
                target.execute(sa.insert(table), rows)


def _worker_statements() -> SeedStatements:
    """What a worker's task sends under the policy (allowed), and what it may not send (refused as
    they are, and the raw material grafting puts into the allowed ones)."""
    ti, xcom, run, var = TaskInstance, XCom, DagRun, Variable
    return {
        "ti": (lambda: sa.select(ti).where(ti.state == "queued").order_by(ti.id), False),
        "ti_xcom_join": (lambda: sa.select(ti.id, ti.hostname, xcom.value).join(xcom, xcom.ti_id == ti.id), False),
        "variable_outer_join": (lambda: sa.select(var.key, var.val, ti.task_id)
                                .outerjoin(ti, ti.id <= var.id + 4).order_by(var.id), False),
        "dag_run_columns": (lambda: sa.select(run.id, run.run_id, run.state), False),
        "in_subquery": (lambda: sa.select(xcom).where(
            xcom.ti_id.in_(sa.select(ti.id).where(ti.task_id == "extract"))), False),
        "exists": (lambda: sa.select(run.id, run.state).where(sa.exists().where(ti.run_id == run.run_id)), False),
        "group_count": (lambda: sa.select(xcom.key, sa.func.count(), sa.func.max(xcom.value))
                        .group_by(xcom.key), False),
        "union": (lambda: sa.union(sa.select(ti.hostname), sa.select(xcom.value), sa.select(run.state)), False),
        "cte": (lambda: sa.select(sa.select(ti.id, ti.state).cte("mine").c.state), False),
        "for_update": (lambda: sa.select(ti).where(ti.id > 0).with_for_update(), True),
        "update": (lambda: sa.update(ti).where(ti.id == 1).values(state="running"), True),
        "update_all": (lambda: sa.update(ti).values(hostname="worker-1"), True),
        "insert": (lambda: sa.insert(xcom).values(id=500, ti_id=1, key="k", value="v", **MINE), True),
        "delete": (lambda: sa.delete(xcom).where(xcom.key == "return_value"), True),
        # refused: writes (no transaction needed - the policy refuses them first) and reads
        "insert_other_run": (lambda: sa.insert(xcom).values(id=501, ti_id=5, key="k", dag_id="report",
                                                            run_id="r1"), False),
        "update_dag_id": (lambda: sa.update(ti).where(ti.id == 1).values(dag_id="report"), False),
        "delete_ti": (lambda: sa.delete(ti).where(ti.id == 5), False),
        "update_variable": (lambda: sa.update(var).values(val="x"), False),
        "other_runs": (lambda: sa.select(ti.task_id).where(ti.dag_id != "etl"), False),
        "dag_code": (lambda: sa.select(DagCode.source).where(DagCode.fileloc == ti.dag_id), False),
        "connection": (lambda: sa.select(Connection.password, Connection.conn_id), False),
        "variable_description": (lambda: sa.select(var.description), False),
        "dag_run_conf": (lambda: sa.select(run.conf).where(run.id == 1), False),
    }


WORKER_SEEDS = _worker_statements()

# -- composed reads ---------------------------------------------------------------------------------
_TABLES: tuple[sa.Table, ...] = tuple(e.__table__ for e in (TaskInstance, XCom, DagRun, Variable, DagCode,  # type: ignore[attr-defined]
                                                             Connection))
_LITERALS: dict[type, tuple[Any, ...]] = {int: (0, 1, 2, 3, 5), str: ("etl", "r1", "r2", "report", "queued", "%")}
_SHAPES = ("plain", "join", "outer_join", "in", "exists", "scalar", "union", "cte", "group")


def _condition(draw: st.DrawFn, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    value = draw(st.sampled_from(_LITERALS[column.type.python_type]))
    op = draw(st.sampled_from(("eq", "ne", "gt", "in", "null", "or_true") + (("like",) if isinstance(value, str) else ())))
    return {"eq": lambda: column == value, "ne": lambda: column != value, "gt": lambda: column > value,
            "in": lambda: column.in_([value]), "null": lambda: column.is_(None),
            "or_true": lambda: sa.or_(column == value, sa.true()), "like": lambda: column.like(f"{value}%")}[op]()


@st.composite
def worker_reads(draw: st.DrawFn) -> Any:
    """A well-formed read over any tables and columns, granted or not, in one of the shapes a policy
    must see through: join, outer join, IN subquery, EXISTS, correlated scalar subquery, UNION,
    CTE, GROUP BY - with or without a condition (``OR TRUE`` included)."""
    first = draw(st.sampled_from(_TABLES))
    other = draw(st.sampled_from(_TABLES)).alias("o")
    picked = draw(st.lists(st.sampled_from(list(first.c)), min_size=1, max_size=3, unique_by=lambda c: c.name))
    theirs = draw(st.sampled_from(list(other.c)))
    mine_id, their_id = first.c.id, draw(st.sampled_from([c for c in other.c if c.type.python_type is int]))
    shape = draw(st.sampled_from(_SHAPES))
    where = [_condition(draw, draw(st.sampled_from(list(first.c))))] if draw(st.booleans()) else []
    if shape == "union":
        text = sa.String(200)
        return sa.union(sa.select(sa.cast(picked[0], text)).where(*where), sa.select(sa.cast(theirs, text)))
    if shape == "cte":
        return sa.select(*sa.select(*picked).where(*where).cte("c").c)
    stmt = {
        "plain": lambda: sa.select(*picked),
        "join": lambda: sa.select(*picked, theirs).join_from(first, other, mine_id == their_id),
        "outer_join": lambda: sa.select(*picked, theirs).join_from(first, other, mine_id == their_id, isouter=True),
        "in": lambda: sa.select(*picked).where(mine_id.in_(sa.select(their_id))),
        "exists": lambda: sa.select(*picked).where(sa.exists().where(their_id == mine_id)),
        "scalar": lambda: sa.select(*picked, sa.select(sa.func.max(theirs)).where(their_id == mine_id)
                                    .scalar_subquery()),
        "group": lambda: sa.select(picked[0], sa.func.count()).group_by(picked[0]),
    }[shape]()
    return stmt.where(*where)
