"""Corpus operations - statements (wider surface): window functions, CTEs, set operations, CASE,
subqueries, row-value IN, functions, bind parameters reused, streaming several hundred rows,
multi-row INSERT ... RETURNING, bulk INSERT / UPDATE / DELETE with every synchronisation mode."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy import (
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, aliased

from ..models import Connection, Dag, DagRun, Log, TaskState, Variable, XCom
from ..seed import UTC, run_id_for
from ._helpers import TI, TUT_R1, lifecycle, ti_order
from ._registry import op


def _bulk_logs(s: Session, n: int) -> None:
    s.execute(
        insert(Log),
        [
            {
                "event": f"bulk_{i % 7}",
                "dttm": dt.datetime(2025, 1, 1, 0, i // 60 % 60, i % 60, tzinfo=UTC),
                "dag_id": None if i % 5 == 0 else f"dag{i % 11}",
                "amount": Decimal(i) / 100,
                "ratio": i / 8,
                "big": i * 10**12,
            }
            for i in range(n)
        ],
    )


# --- window functions -------------------------------------------------------------------------


@op("types.window_lag_lead")
def _(s: Session):
    w = {"partition_by": DagRun.dag_id, "order_by": DagRun.id}
    stmt = select(DagRun.id, func.lag(DagRun.id).over(**w), func.lead(DagRun.state).over(**w)).order_by(DagRun.id)
    return s.execute(stmt).all()


@op("types.window_dense_rank_ntile")
def _(s: Session):
    stmt = select(
        TI.priority_weight,
        func.dense_rank().over(order_by=TI.priority_weight),
        func.ntile(4).over(order_by=list(ti_order())),
    ).order_by(*ti_order())
    return s.execute(stmt).all()


@op("types.window_first_value_partition")
def _(s: Session):
    fv = func.first_value(DagRun.run_id).over(partition_by=DagRun.dag_id, order_by=DagRun.id.desc())
    return s.execute(select(DagRun.id, fv).order_by(DagRun.id)).all()


@op("types.window_aggregate_decimal_partition")
def _(s: Session):
    stmt = select(
        Log.id,
        func.sum(Log.amount).over(partition_by=Log.event),
        func.max(Log.amount).over(partition_by=Log.event),
    ).where(Log.amount.is_not(None)).order_by(Log.id)
    return s.execute(stmt).all()


@op("types.window_in_subquery_filter")
def _(s: Session):
    rn = func.row_number().over(partition_by=TI.run_id, order_by=TI.priority_weight.desc()).label("rn")
    sq = select(TI.dag_id, TI.run_id, TI.task_id, TI.map_index, rn).where(TI.dag_id == "example_bash").subquery()
    return s.execute(
        select(sq.c.run_id, sq.c.task_id, sq.c.map_index).where(sq.c.rn == 1).order_by(sq.c.run_id)
    ).all()


# --- CTEs ---------------------------------------------------------------------------------------


@op("types.cte_chained")
def _(s: Session):
    per_dag = select(DagRun.dag_id, func.count().label("n")).group_by(DagRun.dag_id).cte("per_dag")
    busy = select(per_dag.c.dag_id).where(per_dag.c.n >= 3).cte("busy")
    return s.execute(
        select(Dag.dag_id, Dag.owner).where(Dag.dag_id.in_(select(busy.c.dag_id))).order_by(Dag.dag_id)
    ).all()


@op("types.cte_recursive_join_table")
def _(s: Session):
    nums = select(literal(1).label("n")).cte("seq", recursive=True)
    nums = nums.union_all(select(nums.c.n + 1).where(nums.c.n < 14))
    stmt = select(nums.c.n, DagRun.state).outerjoin(DagRun, DagRun.id == nums.c.n).order_by(nums.c.n)
    return s.execute(stmt).all()


@op("types.cte_recursive_strings")
def _(s: Session):
    # the anchor fixes the column type on MariaDB: make it wide enough
    walk = select(literal(0).label("i"), sa.cast(literal("a"), sa.String(200)).label("path")).cte(
        "walk", recursive=True
    )
    walk = walk.union_all(
        select(walk.c.i + 1, sa.cast(walk.c.path + "/b", sa.String(200))).where(walk.c.i < 4)
    )
    return s.execute(select(walk.c.i, walk.c.path).order_by(walk.c.i)).all()


# MariaDB has no WITH ... UPDATE
@op("types.cte_in_update", writes=True, backends={"sqlite", "postgresql"})
def _(s: Session):
    failing = select(DagRun.dag_id).where(DagRun.state == "failed").distinct().cte("failing")
    n = s.execute(
        update(Dag)
        .where(Dag.dag_id.in_(select(failing.c.dag_id)))
        .values(description="has failures")
        .execution_options(synchronize_session=False)
    ).rowcount
    s.commit()
    return [n, s.execute(select(Dag.dag_id, Dag.description).order_by(Dag.dag_id)).all()]


# --- set operations / CASE ------------------------------------------------------------------------


@op("types.union_order_limit")
def _(s: Session):
    a = select(DagRun.id.label("x")).where(DagRun.state == "success")
    b = select(DagRun.id.label("x")).where(DagRun.run_type == "manual")
    u = sa.union(a, b)
    return s.scalars(u.order_by(u.selected_columns.x.desc()).limit(4).offset(1)).all()


@op("types.union_all_entity")
def _(s: Session):
    u = sa.union_all(
        select(Dag).where(Dag.owner == "alice"),
        select(Dag).where(Dag.is_paused.is_(True)),
    ).subquery()
    da = aliased(Dag, u)
    return s.scalars(select(da).order_by(da.dag_id, da.is_paused)).all()


@op("types.union_mixed_types")
def _(s: Session):
    a = select(Log.id.label("k"), Log.amount.label("v")).where(Log.amount.is_not(None))
    b = select(literal(1000).label("k"), literal(Decimal("1.5000"), sa.Numeric(12, 4)).label("v"))
    u = sa.union_all(a, b).subquery()
    return s.execute(select(u.c.k, u.c.v).order_by(u.c.k)).all()


@op("types.case_in_aggregate")
def _(s: Session):
    ok = func.sum(case((TI.state == TaskState.SUCCESS, 1), else_=0))
    failed = func.sum(case((TI.state == TaskState.FAILED, 1), else_=0))
    return s.execute(select(TI.dag_id, ok, failed).group_by(TI.dag_id).order_by(TI.dag_id)).all()


@op("types.case_returning_types")
def _(s: Session):
    c = case(
        (Log.amount > 0, Log.amount),
        (Log.amount < 0, -Log.amount),
        else_=literal(Decimal("0.0000"), sa.Numeric(12, 4)),
    )
    return s.execute(select(Log.id, c).where(Log.amount.is_not(None)).order_by(Log.id)).all()


@op("types.case_in_where_and_order")
def _(s: Session):
    rank = case((DagRun.state == "running", 0), (DagRun.state == "queued", 1), else_=2)
    return s.execute(
        select(DagRun.id, DagRun.state).where(case((DagRun.id > 6, True), else_=False)).order_by(rank, DagRun.id)
    ).all()


# --- subqueries ---------------------------------------------------------------------------------


@op("subq.correlated_order_limit")
def _(s: Session):
    last_state = (
        select(DagRun.state).where(DagRun.dag_id == Dag.dag_id).order_by(DagRun.id.desc()).limit(1).scalar_subquery()
    )
    return s.execute(select(Dag.dag_id, last_state).order_by(Dag.dag_id)).all()


@op("subq.exists_in_select_list")
def _(s: Session):
    has_failed = exists().where(DagRun.dag_id == Dag.dag_id, DagRun.state == "failed")
    return s.execute(select(Dag.dag_id, has_failed.label("has_failed")).order_by(Dag.dag_id)).all()


@op("subq.correlated_update_exists", writes=True)
def _(s: Session):
    cond = exists().where(DagRun.dag_id == Dag.dag_id, DagRun.state == "running")
    n = s.execute(update(Dag).values(is_paused=cond).execution_options(synchronize_session=False)).rowcount
    s.commit()
    return [n, s.execute(select(Dag.dag_id, Dag.is_paused).order_by(Dag.dag_id)).all()]


@op("subq.scalar_subquery_arithmetic")
def _(s: Session):
    total = select(func.count()).select_from(TI).scalar_subquery()
    stmt = select(TI.dag_id, func.count() * 100 / total).group_by(TI.dag_id).order_by(TI.dag_id)
    return s.execute(stmt).all()


@op("subq.derived_table_aggregate_of_aggregate")
def _(s: Session):
    per_run = select(TI.run_id, TI.dag_id, func.sum(TI.priority_weight).label("w")).group_by(TI.dag_id, TI.run_id)
    sq = per_run.subquery()
    return s.execute(
        select(sq.c.dag_id, func.max(sq.c.w), func.min(sq.c.w)).group_by(sq.c.dag_id).order_by(sq.c.dag_id)
    ).all()


# --- row values ---------------------------------------------------------------------------------


@op("types.tuple_in_three_columns")
def _(s: Session):
    keys = [("tutorial", "extract", -1), ("etl_daily", "mapped", 1), ("nope", "x", 0)]
    stmt = (
        select(TI.dag_id, TI.run_id, TI.task_id, TI.map_index)
        .where(tuple_(TI.dag_id, TI.task_id, TI.map_index).in_(keys))
        .order_by(*ti_order())
    )
    return s.execute(stmt).all()


@op("types.tuple_in_subquery")
def _(s: Session):
    sel = select(XCom.dag_id, XCom.run_id).where(XCom.key == "custom_key")
    stmt = select(DagRun.id).where(tuple_(DagRun.dag_id, DagRun.run_id).in_(sel)).order_by(DagRun.id)
    return s.scalars(stmt).all()


@op("types.tuple_not_in")
def _(s: Session):
    keys = [("tutorial", TUT_R1), ("etl_daily", run_id_for("etl_daily", 1))]
    return s.scalars(select(DagRun.id).where(tuple_(DagRun.dag_id, DagRun.run_id).not_in(keys)).order_by(DagRun.id)).all()


@op("types.tuple_comparison")
def _(s: Session):
    stmt = (
        select(TI.dag_id, TI.task_id, TI.map_index)
        .where(tuple_(TI.task_id, TI.map_index) > tuple_(literal("mapped"), literal(0)))
        .order_by(*ti_order())
        .limit(6)
    )
    return s.execute(stmt).all()


# --- functions ----------------------------------------------------------------------------------


@op("types.string_functions")
def _(s: Session):
    stmt = select(
        func.trim(literal("  padded  ")),
        func.substr(Dag.fileloc, 2, 4),
        func.replace(Dag.dag_id, "_", "-"),
        func.lower(func.coalesce(Dag.description, "NONE")),
    ).order_by(Dag.dag_id)
    return s.execute(stmt).all()


@op("types.coalesce_mixed_columns")
def _(s: Session):
    return s.execute(
        select(func.coalesce(TI.hostname, TI.pool), func.coalesce(TI.end_date, TI.start_date, TI.queued_dttm))
        .order_by(*ti_order())
        .limit(12)
    ).all()


@op("types.count_max_per_group_dates")
def _(s: Session):
    stmt = select(
        TI.dag_id,
        func.count(TI.end_date),
        func.max(TI.start_date),
        func.min(TI.queued_dttm),
    ).group_by(TI.dag_id).order_by(TI.dag_id)
    return s.execute(stmt).all()


@op("types.extract_datetime_fields", backends={"postgresql", "mysql"})
def _(s: Session):
    stmt = select(
        sa.extract("month", TI.start_date),
        sa.extract("day", TI.start_date),
        sa.extract("hour", TI.start_date),
    ).where(TI.start_date.is_not(None)).order_by(*ti_order()).limit(8)
    return s.execute(stmt).all()


@op("types.date_function_untyped")
def _(s: Session):
    # func.date has no SQLAlchemy return type: the driver's raw value comes through
    return s.execute(select(Log.id, func.date(Log.day)).where(Log.day.is_not(None)).order_by(Log.id)).all()


@op("types.date_arithmetic_postgresql", backends={"postgresql"})
def _(s: Session):
    stmt = select(
        func.date_trunc("day", DagRun.execution_date),
        DagRun.execution_date + dt.timedelta(days=1, microseconds=5),
        func.age(DagRun.data_interval_start, literal(dt.datetime(2023, 1, 1))),
    ).order_by(DagRun.id).limit(4)
    return s.execute(stmt).all()


@op("types.date_functions_mysql", backends={"mysql"})
def _(s: Session):
    stmt = select(
        func.date_format(Log.day, "%Y/%m/%d"),
        func.datediff(Log.day, literal(dt.date(2024, 1, 1))),
        func.dayofweek(Log.day),
    ).where(Log.day.is_not(None)).order_by(Log.id)
    return s.execute(stmt).all()


@op("types.date_functions_sqlite", backends={"sqlite"})
def _(s: Session):
    stmt = select(
        func.strftime("%Y/%m/%d", Log.day),
        func.julianday(Log.day) - func.julianday(literal("2024-01-01")),
        func.date(Log.day, "+1 day"),
    ).where(Log.day.is_not(None)).order_by(Log.id)
    return s.execute(stmt).all()


@op("types.aggregate_filter_clause", backends={"sqlite", "postgresql"})
def _(s: Session):
    stmt = select(
        TI.dag_id,
        func.count().filter(TI.state == TaskState.SUCCESS),
        func.sum(TI.priority_weight).filter(TI.map_index >= 0),
    ).group_by(TI.dag_id).order_by(TI.dag_id)
    return s.execute(stmt).all()


@op("types.greatest_least", backends={"postgresql", "mysql"})
def _(s: Session):
    return s.execute(
        select(func.greatest(TI.try_number, TI.priority_weight), func.least(TI.try_number, TI.priority_weight))
        .order_by(*ti_order())
        .limit(8)
    ).all()


@op("types.literal_typed_values")
def _(s: Session):
    return s.execute(
        select(
            literal(Decimal("1.2345678901"), sa.Numeric(20, 10)),
            literal(dt.date(9999, 12, 31)),
            literal({"a": [1, None], "ü": {}}, sa.JSON),
            literal(-(2**63), sa.BigInteger),
            literal(False),
        )
    ).one()


# --- bind parameters ---------------------------------------------------------------------------


@op("types.bindparam_used_twice_params")
def _(s: Session):
    p = bindparam("who")
    stmt = select(Dag.dag_id).where(or_(Dag.owner == p, Dag.description.contains(p))).order_by(Dag.dag_id)
    return [
        s.scalars(stmt.params(who="alice")).all(),
        s.scalars(stmt.params(who="bob")).all(),
        s.scalars(stmt, {"who": "airflow"}).all(),
    ]


@op("types.bindparam_expanding")
def _(s: Session):
    stmt = select(DagRun.id).where(DagRun.id.in_(bindparam("ids", expanding=True))).order_by(DagRun.id)
    return [s.scalars(stmt, {"ids": [3, 1, 12]}).all(), s.scalars(stmt, {"ids": []}).all()]


@op("types.bindparam_typed_reuse_in_select_list")
def _(s: Session):
    p = bindparam("d", type_=sa.Date)
    stmt = select(p, Log.id).where(Log.day < p).order_by(Log.id)
    return s.execute(stmt, {"d": dt.date(2024, 1, 1)}).all()


@op("types.bindparam_update_executemany", writes=True)
def _(s: Session):
    stmt = (
        sa.update(Variable.__table__)
        .where(Variable.__table__.c.key == bindparam("k"))
        .values(val=bindparam("v"))
    )
    r = s.execute(stmt, [{"k": "empty", "v": "filled"}, {"k": "null_val", "v": None}, {"k": "nope", "v": "x"}])
    n = r.rowcount
    s.commit()
    return [n, s.execute(select(Variable.key, Variable.val).order_by(Variable.id).limit(4)).all()]


# --- streaming ----------------------------------------------------------------------------------


@op("select.yield_per_several_hundred", writes=True)
def _(s: Session):
    _bulk_logs(s, 350)
    s.commit()
    r = s.execute(select(Log.id, Log.amount, Log.big).where(Log.event.startswith("bulk_")).order_by(Log.id)
                  .execution_options(yield_per=40))
    sizes = [len(p) for p in r.partitions()]
    return [sizes, sum(sizes)]


@op("select.stream_results_partitions", writes=True)
def _(s: Session):
    _bulk_logs(s, 300)
    s.commit()
    stmt = select(Log.id, Log.event).where(Log.event.startswith("bulk_")).order_by(Log.id)
    r = s.execute(stmt.execution_options(stream_results=True, max_row_buffer=64))
    parts = list(r.partitions(128))
    return [[len(p) for p in parts], parts[-1][-3:], parts[0][:2]]


@op("select.yield_per_orm_entities", writes=True)
def _(s: Session):
    _bulk_logs(s, 260)
    s.commit()
    s.expunge_all()
    stmt = select(Log).where(Log.event == "bulk_3").order_by(Log.id).execution_options(yield_per=9)
    seen = [(x.id, x.amount, x.ratio) for x in s.scalars(stmt)]
    return [len(seen), seen[:3], seen[-3:]]


@op("select.yield_per_fetchmany_and_close", writes=True)
def _(s: Session):
    _bulk_logs(s, 300)
    s.commit()
    r = s.execute(select(Log.id).where(Log.event.startswith("bulk_")).order_by(Log.id).execution_options(yield_per=50))
    first = r.fetchmany(7)
    more = r.fetchmany(100)
    r.close()
    return [first, len(more), more[-1], s.scalar(select(func.count()).select_from(Log))]


@op("query.yield_per_several_hundred", writes=True)
def _(s: Session):
    _bulk_logs(s, 320)
    s.commit()
    q = s.query(Log.id, Log.dag_id).filter(Log.event.startswith("bulk_")).order_by(Log.id).yield_per(33)
    rows = list(q)
    return [len(rows), rows[:2], rows[-2:]]


# --- INSERT -------------------------------------------------------------------------------------


@op("write.insert_values_multirow_returning", writes=True)
def _(s: Session):
    stmt = insert(Variable).values([
        {"key": "mv1", "val": "a", "is_encrypted": False},
        {"key": "mv2", "val": None, "is_encrypted": True},
        {"key": "mv3", "val": "ü", "is_encrypted": False},
    ])
    if s.get_bind().dialect.insert_returning:
        got = sorted(s.execute(stmt.returning(Variable.id, Variable.key, Variable.is_encrypted)).all())
    else:
        got = s.execute(stmt).rowcount
    s.commit()
    return [got, s.scalars(select(Variable).where(Variable.key.startswith("mv")).order_by(Variable.id)).all()]


@op("write.insert_returning_orm_entity", writes=True)
def _(s: Session):
    if not s.get_bind().dialect.insert_returning:
        return None
    v = s.scalars(insert(Variable).values(key="ret_entity", val="x").returning(Variable)).one()
    out = [v.key, v.id, lifecycle(v), v is s.get(Variable, v.id)]
    s.commit()
    return out


@op("write.bulk_insert_heterogeneous_dicts", writes=True)
def _(s: Session):
    s.execute(
        insert(Connection),
        [
            {"conn_id": "h1", "conn_type": "a"},
            {"conn_id": "h2", "conn_type": "b", "port": 1, "extra": {"x": None}},
            {"conn_id": "h3", "conn_type": "c", "host": "h"},
            {"conn_id": "h4", "conn_type": "d", "port": 2, "extra": [None]},
        ],
    )
    s.commit()
    return s.scalars(select(Connection).where(Connection.conn_id.startswith("h")).order_by(Connection.id)).all()


@op("write.bulk_insert_composite_pk", writes=True)
def _(s: Session):
    s.execute(
        insert(TI),
        [
            {
                "dag_id": "tutorial",
                "task_id": "bulk",
                "run_id": TUT_R1,
                "map_index": i,
                "state": (TaskState.SUCCESS, None, TaskState.FAILED)[i % 3],
                "try_number": i,
                "pool": "p",
                "priority_weight": 1,
                "note": "ü" * i,
            }
            for i in range(6)
        ],
    )
    s.commit()
    return s.execute(select(TI.map_index, TI.state, TI.note).where(TI.task_id == "bulk").order_by(TI.map_index)).all()


# --- UPDATE / DELETE ----------------------------------------------------------------------------


@op("write.update_stmt_sync_evaluate", writes=True)
def _(s: Session):
    tis = s.scalars(select(TI).where(TI.dag_id == "tutorial").order_by(*ti_order())).all()
    s.execute(
        update(TI)
        .where(TI.dag_id == "tutorial", TI.map_index >= 0)
        .values(try_number=TI.try_number + 5, hostname="evaluated")
        .execution_options(synchronize_session="evaluate")
    )
    mem = [(t.try_number, t.hostname) for t in tis]
    s.commit()
    return [mem, s.execute(select(TI.try_number, TI.hostname).where(TI.dag_id == "tutorial").order_by(*ti_order())).all()]


@op("write.update_stmt_sync_fetch_expression", writes=True)
def _(s: Session):
    runs = s.scalars(select(DagRun).order_by(DagRun.id)).all()
    r = s.execute(
        update(DagRun)
        .where(DagRun.state.in_(["queued", "running"]))
        .values(state="failed")
        .execution_options(synchronize_session="fetch")
    )
    n = r.rowcount
    mem = [x.state for x in runs]
    s.commit()
    return [n, mem]


@op("write.update_stmt_sync_false_stale", writes=True)
def _(s: Session):
    v = s.get(Variable, 1)
    s.execute(update(Variable).where(Variable.id == 1).values(val="new").execution_options(synchronize_session=False))
    stale = v.val
    s.expire(v)
    fresh = v.val
    s.commit()
    return [stale, fresh]


@op("write.update_join_criteria", writes=True)
def _(s: Session):
    stmt = (
        update(DagRun)
        .where(DagRun.dag_id == Dag.dag_id, Dag.owner == "alice")
        .values(state="success")
        .execution_options(synchronize_session=False)
    )
    n = s.execute(stmt).rowcount
    s.commit()
    return [n, s.execute(select(DagRun.id, DagRun.state).order_by(DagRun.id)).all()]


@op("write.update_returning_if_supported", writes=True)
def _(s: Session):
    stmt = update(Log).where(Log.event == "paused").values(owner="returned")
    if s.get_bind().dialect.update_returning:
        got = sorted(s.execute(stmt.returning(Log.id, Log.owner, Log.amount)).all())
    else:
        got = s.execute(stmt).rowcount
    s.commit()
    return [got, s.execute(select(Log.id, Log.owner).where(Log.event == "paused").order_by(Log.id)).all()]


@op("write.update_returning_entity", writes=True)
def _(s: Session):
    if not s.get_bind().dialect.update_returning:
        return None
    runs = s.scalars(
        update(DagRun).where(DagRun.dag_id == "etl_daily").values(run_type="backfill").returning(DagRun)
    ).all()
    out = sorted((r.id, r.run_type, lifecycle(r)) for r in runs)
    s.commit()
    return out


@op("write.delete_bulk_sync_fetch_states", writes=True)
def _(s: Session):
    xs = s.scalars(select(XCom).order_by(XCom.id)).all()
    n = s.execute(
        delete(XCom)
        .where(XCom.dag_id.in_(select(Dag.dag_id).where(Dag.owner == "alice")))
        .execution_options(synchronize_session="fetch")
    ).rowcount
    states = [lifecycle(x) for x in xs]
    s.commit()
    return [n, states, s.scalars(select(XCom.id).order_by(XCom.id)).all()]


@op("write.delete_bulk_sync_evaluate", writes=True)
def _(s: Session):
    vs = s.scalars(select(Variable).order_by(Variable.id)).all()
    n = s.execute(
        delete(Variable)
        .where(and_(Variable.is_encrypted.is_(False), Variable.description.is_(None)))
        .execution_options(synchronize_session="evaluate")
    ).rowcount
    states = [lifecycle(v) for v in vs]
    s.commit()
    return [n, states]


@op("write.delete_returning_if_supported", writes=True)
def _(s: Session):
    stmt = delete(XCom).where(XCom.key == "custom_key")
    if s.get_bind().dialect.delete_returning:
        got = sorted(s.execute(stmt.returning(XCom.id, XCom.value, XCom.timestamp, XCom.map_index)).all())
    else:
        got = s.execute(stmt).rowcount
    s.commit()
    return [got, s.scalar(select(func.count()).select_from(XCom))]


@op("write.delete_all_rows_core_table", writes=True)
def _(s: Session):
    n = s.execute(delete(Log.__table__)).rowcount
    s.commit()
    return [n, s.scalar(select(func.count()).select_from(Log))]


@op("write.insert_from_select", writes=True)
def _(s: Session):
    # crud adds the Python default of is_encrypted to the SELECT, decided by the column keys the
    # statement was compiled with - not by the parameters, which carry the evaluated default
    sel = select(literal("owner_") + Dag.dag_id, Dag.owner).where(Dag.is_paused.is_(False))
    s.execute(insert(Variable).from_select(["key", "val"], sel))
    s.commit()
    return s.execute(select(Variable.key, Variable.val, Variable.is_encrypted).where(
        Variable.key.startswith("owner_")).order_by(Variable.key)).all()
