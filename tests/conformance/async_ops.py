"""Async-only corpus operations: what ``AsyncSession`` code does that ``run_sync`` does not show.

Each operation is a coroutine function taking an ``AsyncSession``; it runs once on a plain
``AsyncSession`` over the async twin of the sync driver on database A (aiosqlite, psycopg's async
connection, aiomysql) and once on ``AsyncDBSession`` over database B, and the outcomes, exception
classes and database states must be identical (``test_corpus_async.py``). The registry and its
rules are the sync corpus's (:class:`corpus.Op`): declared ``raises``, ``writes``, ``backends``.
Results are materialised (lists, ORM objects) before the operation returns.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from sqlalchemy import delete, exc, func, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from .corpus import Op
from .corpus._helpers import BASH_R0, TI, TI_KEY, new_dag, new_run, ti_order
from .corpus._registry import ALL
from .models import Dag, DagRun, Log, TaskState, Variable, XCom

AsyncFn = Callable[[AsyncSession], Awaitable[Any]]
ASYNC_OPS: dict[str, Op] = {}


def aop(name: str, *, writes: bool = False, backends: Iterable[str] | None = None,
        raises: type[BaseException] | tuple[type[BaseException], ...] = ()) -> Callable[[AsyncFn], AsyncFn]:
    """Register an async operation (``async.<what>``); the sync corpus's ``@op`` rules."""
    bset = None if backends is None else frozenset(backends)
    assert bset is None or bset <= ALL

    def deco(fn: AsyncFn) -> AsyncFn:
        full = f"async.{name}"
        assert full not in ASYNC_OPS, full
        ASYNC_OPS[full] = Op(full, fn, writes, bset, raises if isinstance(raises, tuple) else (raises,))
        return fn

    return deco


# -- reads: execute, scalars, stream -------------------------------------------------------------
@aop("scalars_all")
async def _(s: AsyncSession) -> Any:
    return (await s.scalars(select(Dag).order_by(Dag.dag_id))).all()


@aop("scalars_first_and_one")
async def _(s: AsyncSession) -> Any:
    first = (await s.scalars(select(DagRun).order_by(DagRun.id))).first()
    one = (await s.scalars(select(Dag).where(Dag.dag_id == "tutorial"))).one()
    return [first, one, await s.scalar(select(func.count()).select_from(TI))]


@aop("scalar_one_missing", raises=exc.NoResultFound)
async def _(s: AsyncSession) -> Any:
    return (await s.execute(select(Dag).where(Dag.dag_id == "missing"))).scalar_one()


@aop("execute_rows_and_mappings")
async def _(s: AsyncSession) -> Any:
    rows = (await s.execute(select(TI.dag_id, TI.task_id, TI.state, TI.start_date).order_by(*ti_order()))).all()
    maps = (await s.execute(select(Variable.key, Variable.val).order_by(Variable.key))).mappings().all()
    return [rows, maps]


@aop("stream_rows")
async def _(s: AsyncSession) -> Any:
    result = await s.stream(select(DagRun).order_by(DagRun.id))
    return [row async for row in result]


@aop("stream_yield_per_partitions")
async def _(s: AsyncSession) -> Any:
    stmt = select(TI).order_by(*ti_order()).execution_options(yield_per=7)
    result = await s.stream(stmt)
    return [list(part) async for part in result.partitions()]


@aop("stream_scalars")
async def _(s: AsyncSession) -> Any:
    result = await s.stream_scalars(select(XCom).order_by(XCom.id).execution_options(yield_per=3))
    return [x async for x in result]


@aop("stream_mappings_and_columns")
async def _(s: AsyncSession) -> Any:
    mapped = await s.stream(select(Log.id, Log.amount, Log.day, Log.payload).order_by(Log.id))
    first = [m async for m in mapped.mappings()]
    cols = await s.stream(select(DagRun.id, DagRun.conf, DagRun.execution_date).order_by(DagRun.id))
    return [first, [c async for c in cols.columns(1, 2)]]


@aop("stream_fetchmany_then_close")
async def _(s: AsyncSession) -> Any:
    result = await s.stream(select(TI.task_id, TI.map_index).order_by(*ti_order()).execution_options(yield_per=4))
    page = await result.fetchmany(5)
    one = await result.fetchone()
    await result.close()  # early close: the rest stays unread
    return [page, one, await s.scalar(select(func.count()).select_from(Dag))]


@aop("stream_unique_joined")
async def _(s: AsyncSession) -> Any:
    from sqlalchemy.orm import joinedload

    result = await s.stream_scalars(select(Dag).options(joinedload(Dag.runs)).order_by(Dag.dag_id))
    return [d async for d in result.unique()]


@aop("stream_empty")
async def _(s: AsyncSession) -> Any:
    result = await s.stream(select(Dag).where(Dag.dag_id == "missing"))
    return [[r async for r in result], await s.scalar(select(func.count()).select_from(DagRun))]


# -- get, refresh, awaitable_attrs ----------------------------------------------------------
@aop("get_simple_composite_missing")
async def _(s: AsyncSession) -> Any:
    return [await s.get(Dag, "tutorial"), await s.get(TI, TI_KEY), await s.get(Dag, "missing")]


@aop("get_with_options")
async def _(s: AsyncSession) -> Any:
    dag = await s.get(Dag, "example_bash", options=[selectinload(Dag.runs).selectinload(DagRun.task_instances)])
    return [dag, "runs" in sa_inspect(dag).unloaded]


@aop("get_one_missing", raises=exc.NoResultFound)
async def _(s: AsyncSession) -> Any:
    return await s.get_one(Dag, "missing")


@aop("get_identity_map")
async def _(s: AsyncSession) -> Any:
    a = await s.get(DagRun, 2)
    b = (await s.scalars(select(DagRun).where(DagRun.id == 2))).one()
    return [a is b, len(s.identity_map), a]


@aop("refresh_discards_changes")
async def _(s: AsyncSession) -> Any:
    dag = await s.get(Dag, "etl_daily")
    assert dag is not None
    dag.owner = "changed"
    await s.refresh(dag)
    return [dag, s.dirty == set()]


@aop("refresh_attribute_names")
async def _(s: AsyncSession) -> Any:
    run = await s.get(DagRun, 3)
    assert run is not None
    run.state, run.run_type = "failed", "changed"
    await s.refresh(run, ["state"])
    return [run.state, run.run_type, run]


@aop("refresh_relationship")
async def _(s: AsyncSession) -> Any:
    dag = await s.get(Dag, "tutorial")
    assert dag is not None
    await s.refresh(dag, ["runs"])
    return [dag, [r.run_id for r in dag.runs]]


@aop("refresh_with_for_update", writes=True)
async def _(s: AsyncSession) -> Any:
    ti = await s.get(TI, TI_KEY)
    assert ti is not None
    await s.refresh(ti, with_for_update=True)  # locks the row: runs in a transaction
    ti.try_number += 1
    await s.commit()
    return await ti.awaitable_attrs.try_number  # expired by the commit: loaded again, awaited


@aop("expire_then_awaitable_column")
async def _(s: AsyncSession) -> Any:
    run = await s.get(DagRun, 4)
    assert run is not None
    s.expire(run, ["conf"])
    return [await run.awaitable_attrs.conf, run]


@aop("awaitable_attrs_many_to_one")
async def _(s: AsyncSession) -> Any:
    run = await s.get(DagRun, 5)
    assert run is not None
    dag = await run.awaitable_attrs.dag
    return [dag, dag is await s.get(Dag, run.dag_id)]


@aop("awaitable_attrs_collections")
async def _(s: AsyncSession) -> Any:
    dag = await s.get(Dag, "example_bash")
    assert dag is not None
    runs = await dag.awaitable_attrs.runs
    tis = await runs[0].awaitable_attrs.task_instances
    xcoms = await tis[0].awaitable_attrs.xcoms
    return [len(runs), tis, xcoms]


@aop("awaitable_attrs_composite_many_to_one")
async def _(s: AsyncSession) -> Any:
    ti = await s.get(TI, ("example_bash", "extract", BASH_R0, -1))
    assert ti is not None
    run = await ti.awaitable_attrs.dag_run
    return [run.run_id, await run.awaitable_attrs.dag]


# -- writes -----------------------------------------------------------------------------------
@aop("add_flush_commit", writes=True)
async def _(s: AsyncSession) -> Any:
    dag = new_dag("async_new")
    s.add(dag)
    await s.flush()
    s.add(new_run("async_new", "manual__async"))
    await s.commit()
    return [dag, await s.scalar(select(func.count()).select_from(DagRun).where(DagRun.dag_id == "async_new"))]


@aop("begin_context_and_nested_rollback", writes=True)
async def _(s: AsyncSession) -> Any:
    async with s.begin():
        s.add(Variable(key="async_kept", val="1"))
        nested = await s.begin_nested()
        s.add(Variable(key="async_undone", val="2"))
        await s.flush()
        await nested.rollback()
    return (await s.scalars(select(Variable.key).where(Variable.key.like("async_%")).order_by(Variable.key))).all()


@aop("bulk_update_delete_and_merge", writes=True)
async def _(s: AsyncSession) -> Any:
    updated = await s.execute(update(TI).where(TI.state == TaskState.FAILED).values(note="async bulk"))
    deleted = await s.execute(delete(XCom).where(XCom.key == "return_value"))
    merged = await s.merge(Variable(id=1, key="merged_async", val="m"))
    await s.commit()
    return [updated.rowcount, deleted.rowcount, merged]


@aop("delete_and_cascade", writes=True)
async def _(s: AsyncSession) -> Any:
    dag = await s.get(Dag, "etl_daily", options=[selectinload(Dag.runs).selectinload(DagRun.task_instances)
                                                  .selectinload(TI.xcoms)])
    await s.delete(dag)
    await s.commit()
    return [await s.scalar(select(func.count()).select_from(DagRun)), await s.get(Dag, "etl_daily")]


@aop("integrity_error_then_rollback", writes=True, raises=exc.IntegrityError)
async def _(s: AsyncSession) -> Any:
    s.add(new_dag("tutorial"))  # the primary key exists
    try:
        await s.flush()
    finally:
        await s.rollback()


@aop("rollback_discards_flushed", writes=True)
async def _(s: AsyncSession) -> Any:
    s.add(Log(event="async rollback", day=dt.date(2025, 1, 1)))
    await s.flush()
    seen = await s.scalar(select(func.count()).select_from(Log).where(Log.event == "async rollback"))
    await s.rollback()
    return [seen, await s.scalar(select(func.count()).select_from(Log).where(Log.event == "async rollback"))]


@aop("stream_inside_a_write_transaction", writes=True)
async def _(s: AsyncSession) -> Any:
    s.add(new_dag("async_streamed"))
    await s.flush()  # the transaction is open: the stream sees its own write
    result = await s.stream_scalars(select(Dag.dag_id).order_by(Dag.dag_id).execution_options(yield_per=2))
    ids = [d async for d in result]
    await s.commit()
    return ids


@aop("connection_and_run_sync", writes=True)
async def _(s: AsyncSession) -> Any:
    conn = await s.connection()
    count = (await conn.execute(select(func.count()).select_from(Variable))).scalar_one()

    def sync_part(session: Any) -> Any:
        var = session.get(Variable, 2)
        var.val = "from run_sync"
        session.flush()
        return [var, len(session.get(Dag, "example_python").runs)]

    synced = await s.run_sync(sync_part)
    await s.commit()
    return [count, synced]
