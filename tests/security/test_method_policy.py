"""Named methods under a per-role policy, end to end: real server, real tokens carrying ``role``.

(a) A policy - a TOML file as deployed, or the same thing as a ``Policy`` object - allows a method
for one role and denies it for another: the denied caller gets ``PolicyViolationError`` naming the
method, and the method never ran (no call recorded, no write). (b) On PostgreSQL, a role with a
``statement_timeout`` whose method runs longer (``pg_sleep`` inside the method: the method body is
trusted server code) gets the error class a direct connection gets on that timeout; a role without
one completes the same call. The server applies the timeout with
``enforcement.apply_statement_timeout`` before the method's statements.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from dbapi_server import Limits, Policy, RolePolicy, TableGrant
from dbsession import MethodRegistry, PolicyViolationError, guard, server_method

from ._policy_support import Backend, TaskInstance, make_engine, serve

SERVED = MethodRegistry()
CALLS: list[str] = []  # what the methods ran, in this process (the server runs in threads here)
TIMEOUT = 0.5


@server_method(registry=SERVED)
def claim_task(session: Session, task_id: int, hostname: str) -> str:
    """Mark a task instance as taken by *hostname* (a write the caller's commit keeps)."""
    CALLS.append(f"claim_task {task_id} {hostname}")
    ti = session.get(TaskInstance, task_id)
    assert ti is not None
    ti.hostname = hostname
    return ti.task_id


@server_method(registry=SERVED)
def count_tasks(session: Session) -> int:
    CALLS.append("count_tasks")
    return session.scalar(sa.select(sa.func.count()).select_from(TaskInstance)) or 0


@server_method(registry=SERVED)
def sleep_for(session: Session, seconds: float) -> float:
    """Sleeps in the database (``pg_sleep`` - refused in any client statement, fine in a method)."""
    CALLS.append(f"sleep_for {seconds}")
    session.execute(sa.select(sa.func.pg_sleep(seconds)))
    return seconds


POLICY_TOML = f"""
[roles.scheduler]
methods = ["claim_task", "sleep_for"]
[roles.scheduler.tables.task_instance]
read = "*"

[roles.worker]                # may read its task instances, may not claim them
methods = ["sleep_for"]
[roles.worker.tables.task_instance]
read = "*"

[roles.limited]
methods = ["sleep_for", "count_tasks"]
[roles.limited.limits]
statement_timeout = {TIMEOUT}
"""

POLICY_OBJECT = Policy({
    "scheduler": RolePolicy(tables={"task_instance": TableGrant(read="*")},
                            methods=frozenset({"claim_task", "sleep_for"})),
    "worker": RolePolicy(tables={"task_instance": TableGrant(read="*")}, methods=frozenset({"sleep_for"})),
    "limited": RolePolicy(methods=frozenset({"sleep_for", "count_tasks"}), limits=Limits(statement_timeout=TIMEOUT)),
})


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    engine = make_engine(request.param, request, tmp_path_factory)
    yield engine
    engine.dispose()


@pytest.fixture(params=["file", "object"])
def served(request: pytest.FixtureRequest, engine: sa.Engine, tmp_path: Path) -> Iterator[Backend]:
    """The methods served under the policy, loaded from a TOML file or given as an object."""
    with _serving(request.param, engine, tmp_path) as backend:
        yield backend


@pytest.fixture
def postgresql(served: Backend) -> Backend:
    assert served.name == "postgresql"  # the tests using it are parametrized so (ON_POSTGRESQL)
    return served


ON_POSTGRESQL = pytest.mark.parametrize(  # pg_sleep, statement_timeout: the engine on PostgreSQL only
    "engine", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True)


@contextmanager
def _serving(form: str, engine: sa.Engine, tmp_path: Path) -> Iterator[Backend]:
    policy: Any = POLICY_OBJECT
    if form == "file":
        policy = tmp_path / "methods-policy.toml"
        policy.write_text(POLICY_TOML)
    with serve(engine, policy=policy, name=engine.dialect.name, methods=SERVED) as backend:
        yield backend


def hostname(engine: sa.Engine, task_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.scalar(sa.select(TaskInstance.hostname).where(TaskInstance.id == task_id))


def test_a_method_allowed_for_one_role_is_refused_for_another(served: Backend) -> None:
    CALLS.clear()
    with served.session(role="worker") as s:
        assert s.get(TaskInstance, 1) is not None  # the worker's session works...
        with pytest.raises(PolicyViolationError, match="named method 'claim_task' is not allowed") as refused:
            claim_task(s, 1, "worker-host")  # ...but may not call this method
        assert (refused.value.method, refused.value.status) == ("claim_task", 403)
        s.commit()
    assert CALLS == [] and hostname(served.engine, 1) is None  # nothing ran

    with served.session(role="scheduler") as s:
        assert claim_task(s, 1, "scheduler-host") == "extract"
        s.commit()
    assert CALLS == ["claim_task 1 scheduler-host"] and hostname(served.engine, 1) == "scheduler-host"
    with served.direct() as direct, direct.begin():
        direct.execute(sa.update(TaskInstance).values(hostname=None))


def test_a_role_the_policy_does_not_list_may_call_nothing(served: Backend) -> None:
    CALLS.clear()
    with served.session(role="stranger") as s, pytest.raises(PolicyViolationError, match="'stranger'"):
        claim_task(s, 1, "stranger-host")
    assert CALLS == [] and hostname(served.engine, 1) is None


# -- statement timeouts inside methods (PostgreSQL: pg_sleep) -------------------------------------
def _direct_timeout_error(engine: sa.Engine) -> type[BaseException]:
    """What a direct connection with the same statement_timeout raises for the same sleep."""
    direct = guard.exempt(sa.create_engine(engine.url))
    try:
        with direct.connect() as conn:
            conn.exec_driver_sql(f"SET statement_timeout = {int(TIMEOUT * 1000)}")
            with pytest.raises(sa.exc.DBAPIError) as failed:
                conn.execute(sa.select(sa.func.pg_sleep(5 * TIMEOUT)))
        return type(failed.value)
    finally:
        direct.dispose()


@ON_POSTGRESQL
def test_a_method_running_past_the_roles_timeout_fails_like_a_direct_statement(postgresql: Backend) -> None:
    expected = _direct_timeout_error(postgresql.engine)
    assert expected is sa.exc.OperationalError
    with postgresql.session(role="limited") as s:
        started = time.monotonic()
        with pytest.raises(sa.exc.DBAPIError) as failed:
            sleep_for(s, 10 * TIMEOUT)
        assert time.monotonic() - started < 6 * TIMEOUT  # cut off, not slept through
        assert type(failed.value) is expected
        assert "statement timeout" in str(failed.value.orig)
        s.rollback()
        assert sleep_for(s, TIMEOUT / 5) == TIMEOUT / 5  # a short call afterwards still runs


@ON_POSTGRESQL
def test_a_role_without_a_timeout_completes_the_same_call(postgresql: Backend) -> None:
    with postgresql.session(role="limited") as s:  # a limited call first: the pooled connection
        with pytest.raises(sa.exc.OperationalError):  # must not carry its timeout over
            sleep_for(s, 10 * TIMEOUT)
    for role in ("scheduler", "worker"):
        with postgresql.session(role=role) as s:
            started = time.monotonic()
            assert sleep_for(s, 3 * TIMEOUT) == 3 * TIMEOUT
            assert time.monotonic() - started >= 3 * TIMEOUT
            s.commit()


@ON_POSTGRESQL
def test_the_timeout_also_holds_for_a_method_after_statements_in_the_transaction(postgresql: Backend) -> None:
    with postgresql.session(role="scheduler") as s:  # no timeout: a long method first
        assert sleep_for(s, 2 * TIMEOUT) == 2 * TIMEOUT
        s.commit()
    with postgresql.session(role="limited") as s:
        s.execute(sa.select(sa.literal(1)))  # the transaction already began with a statement
        with pytest.raises(sa.exc.OperationalError):
            sleep_for(s, 10 * TIMEOUT)
        s.rollback()


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_a_methods_timeout_ends_with_the_method(served: Backend) -> None:
    """The limit covers the method's statements, not what runs on the connection after it (a
    commit's checks, a cursor's later pages, the server's own statements): SQLite's progress
    handler (a deadline, unlike PostgreSQL's per-statement setting) must not outlive the call."""
    heavy = sa.text("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 300000) "
                    "SELECT count(*) FROM n")  # well over the timeout's worth of VM steps
    with served.session(role="limited") as s:
        assert count_tasks(s) == 6  # a method under the role's timeout, in a server transaction
        time.sleep(2 * TIMEOUT)  # past the method's deadline
        txn_id = s.connection().connection.dbapi_connection.txn  # type: ignore[union-attr]
        server_side = served.server.state.transactions.get(txn_id, "test-worker").connection
        assert server_side.execute(heavy).scalar() == 300000  # not interrupted
        s.rollback()
