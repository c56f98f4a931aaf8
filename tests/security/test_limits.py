"""Limits: statement depth (400), request body (413), result rows (413, streamed pages counted) and
the database's own statement timeout (the same error class a direct connection raises).

Role ``limited`` has every limit; role ``relaxed`` has none - both on one server, so a connection
one role leaves behind carries no setting into the other's statements.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from dbapi_server import Limits, Policy, RolePolicy, TableGrant
from dbsession import LimitExceededError

from ._policy_support import Backend, TaskInstance, Variable, XCom, make_engine, serve

TI = TaskInstance
TIMEOUT = 0.5
POLICY = Policy({
    "limited": RolePolicy(any_table=TableGrant.full(), functions=None, limits=Limits(
        max_depth=14, max_body_bytes=6000, max_rows=3, statement_timeout=TIMEOUT)),
    "relaxed": RolePolicy(any_table=TableGrant.full(), functions=None),
})


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql),
                                        pytest.param("mariadb", marks=pytest.mark.mysql)])
def limited(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    engine = make_engine(request.param, request, tmp_path_factory)
    try:
        with serve(engine, policy=POLICY, name=request.param) as backend:
            yield backend
    finally:
        engine.dispose()


def _numbers(name: str, k: int) -> Any:
    numbers = sa.select(sa.literal(1).label("n")).cte(name, recursive=True)
    return numbers.union_all(sa.select(numbers.c.n + 1).where(numbers.c.n < k))


def _chain(k: int, copies: int) -> Any:
    """count(*) of n0 <= n1 <= ... over *copies* recursive CTEs of 1..k (MariaDB caps recursion at
    1000): C(k + copies - 1, copies) rows to count, all computed in the database."""
    ctes = [_numbers(f"n{i}", k) for i in range(copies)]
    stmt = sa.select(sa.func.count()).select_from(ctes[0])
    for before, after in zip(ctes, ctes[1:], strict=False):
        stmt = stmt.join(after, after.c.n >= before.c.n)
    return stmt


def _slow() -> Any:
    """Runs for hours on every database."""
    return _chain(1000, 4)


# -- depth ------------------------------------------------------------------------------------------
def test_statement_depth(limited: Backend) -> None:
    with limited.session(role="limited") as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(TI).where(TI.id > 0)) == 6
        deep = sa.select(TI.id)
        for _ in range(5):  # 16 levels
            deep = sa.select(TI.id).where(TI.id.in_(deep))
        with pytest.raises(LimitExceededError, match="levels deep") as refused:
            s.execute(deep).all()
        assert (refused.value.limit, refused.value.maximum, refused.value.status) == ("statement_depth", 14, 400)
    with limited.session(role="relaxed") as s:
        assert len(s.execute(deep).all()) == 6


# -- body ---------------------------------------------------------------------------------------
def test_request_body(limited: Backend) -> None:
    rows = [{"id": 500 + i, "ti_id": 1, "dag_id": "etl", "run_id": "r1", "key": f"k{i}", "value": "v" * 150}
            for i in range(60)]
    with limited.session(role="limited") as s:
        with pytest.raises(LimitExceededError, match="bytes") as refused:
            s.execute(sa.insert(XCom), rows)
        assert (refused.value.limit, refused.value.status) == ("body_bytes", 413)
        assert refused.value.txn_state is None  # refused before the request reached the transaction
        assert limited.server.state.transactions.open_count == 0  # ... so the server never began one
        s.execute(sa.insert(XCom), rows[:2])  # a small one goes through, in the same session
        s.rollback()
    with limited.session(role="relaxed") as s:
        s.execute(sa.insert(XCom), rows)
        s.rollback()


# -- rows -----------------------------------------------------------------------------------------
def test_result_rows(limited: Backend) -> None:
    with limited.session(role="limited") as s:
        assert len(s.scalars(sa.select(TI).limit(3)).all()) == 3
        with pytest.raises(LimitExceededError, match="3 rows") as refused:
            s.scalars(sa.select(TI)).all()
        assert (refused.value.limit, refused.value.maximum, refused.value.status) == ("result_rows", 3, 413)
    with limited.session(role="relaxed") as s:
        assert len(s.scalars(sa.select(TI)).all()) == 6


def test_result_rows_are_counted_across_streamed_pages(limited: Backend) -> None:
    with limited.session(role="limited") as s:
        seen: list[int] = []
        with pytest.raises(LimitExceededError, match="3 rows"):
            for ti in s.scalars(sa.select(TI).order_by(TI.id).execution_options(yield_per=2)):
                seen.append(ti.id)
        assert seen == [1, 2]  # the first page arrived; the page crossing the limit did not
        s.rollback()


def test_row_limit_inside_a_transaction_leaves_it_open(limited: Backend) -> None:
    with limited.session(role="limited") as s:
        s.add(Variable(id=50, key="added", val="x"))
        s.flush()
        with pytest.raises(LimitExceededError) as refused:
            s.scalars(sa.select(TI)).all()
        assert refused.value.txn_state == "open"
        assert s.scalar(sa.select(Variable.val).where(Variable.id == 50)) == "x"  # still in the transaction
        s.rollback()


def test_returning_dml_refused_for_its_rows_has_changed_them_until_rolled_back(limited: Backend) -> None:
    """The documented exception: the row limit is checked while the result is read, after the
    DELETE ... RETURNING ran. Its changes are in the (still open) transaction; a rollback ends them."""
    xcom = XCom.__table__
    with limited.session(role="limited") as s:
        with pytest.raises(LimitExceededError, match="3 rows") as refused:
            s.execute(sa.delete(xcom).returning(xcom.c.id))  # all 6 xcom rows
        assert (refused.value.limit, refused.value.txn_state) == ("result_rows", "open")
        assert s.scalar(sa.select(sa.func.count()).select_from(xcom)) == 0  # already deleted, in the transaction
        s.rollback()
        assert s.scalar(sa.select(sa.func.count()).select_from(xcom)) == 6
    with limited.direct() as d:
        assert d.scalar(sa.select(sa.func.count()).select_from(xcom)) == 6


# -- statement timeout -------------------------------------------------------------------------------
def _direct_timeout_error(backend: Backend) -> type[BaseException]:
    """What a direct connection raises when its statement timeout cuts the same statement off."""
    engine = sa.create_engine(backend.engine.url)
    from dbsession import guard

    guard.exempt(engine)
    if backend.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _interrupt(dbapi_conn: Any, _: Any) -> None:
            deadline = time.monotonic() + TIMEOUT
            dbapi_conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    setting = {"postgresql": f"SET statement_timeout = {int(TIMEOUT * 1000)}",
               "mariadb": f"SET SESSION max_statement_time = {TIMEOUT}"}.get(backend.name)
    try:
        with engine.connect() as conn:
            if setting:
                conn.exec_driver_sql(setting)
            with pytest.raises(sa.exc.DBAPIError) as failed:
                conn.execute(_slow())
        return type(failed.value)
    finally:
        engine.dispose()


def test_statement_timeout(limited: Backend) -> None:
    expected = _direct_timeout_error(limited)
    with limited.session(role="limited") as s:
        started = time.monotonic()
        with pytest.raises(sa.exc.DBAPIError) as failed:
            s.execute(_slow())
        assert time.monotonic() - started < 20 * TIMEOUT
        assert type(failed.value) is expected and expected is sa.exc.OperationalError
    with limited.session(role="limited") as s:  # the next statement is not affected
        assert s.scalar(sa.select(sa.func.count()).select_from(TI)) == 6


def test_timeouts_do_not_leak_to_roles_without_one(limited: Backend) -> None:
    with limited.session(role="limited") as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(TI)) == 6
    with limited.session(role="relaxed") as s:
        # a relaxed statement longer than the limited role's timeout still completes (~1-2 s)
        started = time.monotonic()
        assert s.scalar(_chain(500, 3)) == math.comb(502, 3)
        assert time.monotonic() - started > TIMEOUT  # else this test showed nothing: raise k


def test_statement_timeout_inside_a_transaction(limited: Backend) -> None:
    with limited.session(role="limited") as s:
        s.add(Variable(id=60, key="in-txn", val="x"))
        s.flush()  # the session now holds a server transaction
        with pytest.raises(sa.exc.OperationalError):
            s.execute(_slow())
        s.rollback()
        assert s.scalar(sa.select(sa.func.count()).select_from(Variable).where(Variable.id == 60)) == 0
        s.add(Variable(id=61, key="after", val="y"))
        s.flush()
        assert s.scalar(sa.select(Variable.val).where(Variable.id == 61)) == "y"  # the timeout applies again, not stuck
        s.rollback()


def test_timeout_survives_rolled_back_transactions_and_other_roles(limited: Backend) -> None:
    """The server remembers what each pooled connection holds; rollbacks and other roles' values
    must never leave a limited statement running unbounded."""
    for _ in range(2):
        with limited.session(role="relaxed") as s:
            s.add(Variable(id=70, key="relaxed", val="x"))
            s.flush()
            s.rollback()
        with limited.session(role="limited") as s:
            s.add(Variable(id=71, key="limited", val="x"))
            s.flush()
            s.rollback()
            started = time.monotonic()
            with pytest.raises(sa.exc.OperationalError):
                s.execute(_slow())
            assert time.monotonic() - started < 20 * TIMEOUT


def test_apply_statement_timeout_for_work_outside_statements(limited: Backend) -> None:
    """Named methods run their own statements: they get the caller's timeout through this call."""
    from dbapi_server import Principal
    from dbapi_server.enforcement import apply_statement_timeout

    state = limited.server.state
    with state.engine.connect() as conn:
        apply_statement_timeout(state.policy, conn, Principal("m", {"role": "limited"}))
        with pytest.raises(sa.exc.OperationalError):
            conn.execute(_slow())
        conn.rollback()
        apply_statement_timeout(state.policy, conn, Principal("m", {"role": "relaxed"}))
        assert conn.scalar(_chain(30, 2)) == math.comb(31, 2)
