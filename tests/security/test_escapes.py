"""Policy escapes: a forbidden table or column reached by any route is refused before anything runs.

The worker may not read ``dag_code`` at all, nor ``variable.description`` / ``dag_run.conf``. Each
route below tries anyway - joins, subqueries, CTEs, relationship loads, EXISTS, function calls,
labels, RETURNING, ORDER BY, unions, unqualified names - and must be refused naming what it hit,
while the same shape over allowed columns works.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import aliased

from dbsession import PolicyViolationError

from ._policy_support import DESCRIPTION, Backend, DagCode, DagRun, TaskInstance, Variable, XCom

TI = TaskInstance
Stmt = Callable[[], Any]


def _code() -> Any:
    return sa.select(DagCode.source).scalar_subquery()


FORBIDDEN_TABLE: dict[str, Stmt] = {
    "plain": lambda: sa.select(DagCode.id),
    "count-star": lambda: sa.select(sa.func.count()).select_from(DagCode),
    "join": lambda: sa.select(TI.id).join(DagCode, DagCode.fileloc == TI.dag_id),
    "outer-join": lambda: sa.select(TI.id).outerjoin(DagCode, DagCode.fileloc == TI.dag_id),
    "subquery": lambda: sa.select(sa.select(DagCode.id).subquery().c.id),
    "scalar-subquery": lambda: sa.select(TI.id, _code()),
    "where-in": lambda: sa.select(TI.id).where(TI.dag_id.in_(sa.select(DagCode.fileloc))),
    "cte": lambda: sa.select(sa.select(DagCode.fileloc).cte("c").c.fileloc),
    "exists": lambda: sa.select(TI.id).where(sa.exists().where(DagCode.fileloc == TI.dag_id)),
    "function-call": lambda: sa.select(sa.func.coalesce(_code(), "x")),
    "label": lambda: sa.select(_code().label("harmless")),
    "alias": lambda: sa.select(aliased(DagCode).id),
    "union": lambda: sa.union(sa.select(Variable.val), sa.select(DagCode.source)),
    "order-by": lambda: sa.select(TI.id).order_by(_code()),
    "insert-returning": lambda: sa.insert(XCom).values(id=900, ti_id=1, dag_id="etl", run_id="r1", key="k")
    .returning(XCom.id, _code()),
    "delete-returning": lambda: sa.delete(XCom).where(XCom.id == 1).returning(_code()),
    "update-value": lambda: sa.update(TI).where(TI.id == 1).values(state=_code()),
    "insert-from-select": lambda: sa.insert(XCom).from_select(
        ["id", "ti_id", "dag_id", "run_id", "key", "value"],
        sa.select(DagCode.id + 900, sa.literal(1), sa.literal("etl"), sa.literal("r1"), sa.literal("k"),
                  DagCode.source)),
    "delete-where": lambda: sa.delete(XCom).where(XCom.value.in_(sa.select(DagCode.source))),
}

FORBIDDEN_COLUMN: dict[str, Stmt] = {
    "select-list": lambda: sa.select(Variable.description),
    "entity": lambda: sa.select(Variable),
    "where": lambda: sa.select(Variable.key).where(Variable.description.like("SECRET%")),
    "order-by": lambda: sa.select(Variable.key).order_by(Variable.description),
    "group-by-having": lambda: sa.select(sa.func.count()).select_from(Variable)
    .group_by(Variable.description).having(sa.func.max(Variable.description) > "a"),
    "join-on": lambda: sa.select(TI.id).join(Variable, Variable.description == TI.hostname),
    "subquery": lambda: sa.select(sa.select(Variable.description).subquery().c.description),
    "cte": lambda: sa.select(sa.select(Variable.id).where(Variable.description != "").cte("c").c.id),
    "exists": lambda: sa.select(Variable.key).where(
        sa.exists().where(Variable.description == "x")),
    "function-call": lambda: sa.select(sa.func.length(Variable.description)),
    "label": lambda: sa.select(Variable.description.label("val")),
    "alias": lambda: sa.select(aliased(Variable).description),
    "unqualified-name": lambda: sa.select(Variable.key).where(sa.column("description") == "x"),
    "relationship-columns": lambda: sa.select(DagRun).where(DagRun.id == 1),
    "returning": lambda: sa.delete(XCom).where(XCom.id == 1).returning(
        sa.select(Variable.description).limit(1).scalar_subquery()),
    "update-where": lambda: sa.update(TI).where(TI.hostname == sa.select(Variable.description)
                                                 .limit(1).scalar_subquery()).values(state="x"),
}

ALLOWED: dict[str, Stmt] = {
    "label-named-like-a-secret": lambda: sa.select(Variable.val.label("description")),
    "join-allowed": lambda: sa.select(TI.id).join(XCom, XCom.ti_id == TI.id),
    "function-allowed": lambda: sa.select(sa.func.length(Variable.val)),
    "insert-returning-own": lambda: sa.insert(XCom).values(id=901, ti_id=1, dag_id="etl", run_id="r1", key="k")
    .returning(XCom.id),
}


def _run(backend: Backend, stmt: Any) -> Any:
    with backend.worker() as s:
        try:
            result = s.execute(stmt)
            if isinstance(stmt, sa.Select) or getattr(stmt, "_returning", None):
                return result.all()
            return result.rowcount  # type: ignore[attr-defined]
        finally:
            s.rollback()


@pytest.mark.parametrize("route", FORBIDDEN_TABLE)
def test_forbidden_table_by_every_route(backend: Backend, route: str) -> None:
    with pytest.raises(PolicyViolationError, match="dag_code") as refused:
        _run(backend, FORBIDDEN_TABLE[route]())
    assert refused.value.table == "dag_code" and refused.value.status == 403
    assert "SECRET" not in str(refused.value)


@pytest.mark.parametrize("route", FORBIDDEN_COLUMN)
def test_forbidden_column_by_every_route(backend: Backend, route: str) -> None:
    with pytest.raises(PolicyViolationError, match=r"(description|conf)") as refused:
        _run(backend, FORBIDDEN_COLUMN[route]())
    assert (refused.value.table, refused.value.column) in {("variable", "description"), ("dag_run", "conf")}


@pytest.mark.parametrize("route", ALLOWED)
def test_the_same_shapes_over_allowed_columns_work(backend: Backend, route: str) -> None:
    result = _run(backend, ALLOWED[route]())
    assert result not in (None, [], 0)
    assert DESCRIPTION not in repr(result)


def test_relationship_load_toward_a_forbidden_table(backend: Backend) -> None:
    with backend.worker() as s:
        ti = s.get(TI, 1)
        assert ti is not None
        with pytest.raises(PolicyViolationError, match="dag_code"):
            ti.code  # noqa: B018  (the lazy load is the point)


def test_relationship_load_of_a_forbidden_column(backend: Backend) -> None:
    with backend.worker() as s:
        ti = s.get(TI, 1)
        assert ti is not None
        with pytest.raises(PolicyViolationError, match="conf") as refused:
            ti.dag_run  # noqa: B018
        assert refused.value.column == "conf"


def test_nothing_ran_after_a_refused_write(backend: Backend) -> None:
    with backend.worker() as s:
        with pytest.raises(PolicyViolationError):
            s.execute(FORBIDDEN_TABLE["insert-from-select"]())
        s.commit()
    with backend.direct() as d:
        assert d.scalar(sa.select(sa.func.count()).select_from(XCom).where(XCom.id >= 900)) == 0
