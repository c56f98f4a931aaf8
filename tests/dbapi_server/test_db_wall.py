"""Each request under its role's database role, on a real DB-API over PostgreSQL.

What a request runs as is read back from the database itself: ``current_user`` and the claim
settings (``current_setting``, allowed for these tests' roles only) in statements the client
sends, and the rows row-level security lets through. The pool has one connection, so every
change of caller hands the same session over: the cache of what a session holds is exercised
on each request. Roles are made for a namespace unique to the run and dropped afterwards.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import RollbackToSavepointClause, SavepointClause

from dbapi_server import AllowAll, ConfigError, Policy, RolePolicy, TableGrant, create_app
from dbapi_server import _db_catalog as catalog
from dbapi_server.db_roles import DatabaseRoles
from dbapi_server.policy import DANGEROUS_FUNCTIONS, DEFAULT_FUNCTIONS
from dbsession import MethodRegistry, PolicyViolationError, server_method
from tests.security._policy_support import (
    DESCRIPTION,
    MINE,
    POLICY_FILE,
    Backend,
    Base,
    TaskInstance,
    Variable,
    XCom,
    make_engine,
    serve,
)

from ._support import RawApi

pytestmark = pytest.mark.postgresql

SERVED = MethodRegistry()


@server_method(registry=SERVED)
def whoami(session: Session) -> list[str]:
    """Trusted server code: runs as the login role, so it may read what the caller may not."""
    user = session.scalar(sa.select(sa.func.current_user()))
    description = session.scalar(sa.select(Variable.description).where(Variable.id == 1))
    return [str(user), str(description)]


_strict = Policy.from_file(POLICY_FILE, Base.metadata).roles["worker"]
_observe = DEFAULT_FUNCTIONS | {"current_user", "current_setting"}
POLICY = Policy({
    "worker": RolePolicy(tables=_strict.tables, functions=_observe, methods=frozenset({"whoami"})),
    "auditor": RolePolicy(tables={"variable": TableGrant(read="*")}, functions=_observe),
}, denied_functions=DANGEROUS_FUNCTIONS - {"current_setting"})

ME = sa.select(sa.func.current_user())
CLAIM = sa.select(sa.func.current_setting("dbsession.claim_run_id", True))


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    engine = make_engine("postgresql", request, tmp_path_factory)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def roles(engine: sa.Engine) -> Iterator[DatabaseRoles]:
    roles = DatabaseRoles.from_policy(POLICY, Base.metadata, namespace=f"t{secrets.token_hex(4)}")
    catalog.apply(engine, roles)
    yield roles
    catalog.drop(engine, roles)


@pytest.fixture(scope="module")
def backend(engine: sa.Engine, roles: DatabaseRoles) -> Iterator[Backend]:
    one = sa.create_engine(engine.url, pool_size=1, max_overflow=0, pool_pre_ping=True)
    try:
        with serve(one, policy=POLICY, name="postgresql", methods=SERVED, db_roles=roles) as backend:
            backend.engine = engine  # comparisons read through the trusted side's own engine
            yield backend
    finally:
        one.dispose()


def worker_role(roles: DatabaseRoles) -> str:
    return roles.roles["worker"].name


def test_a_one_shot_read_a_transaction_and_a_commit_run_under_the_role(backend: Backend, roles: DatabaseRoles) -> None:
    with backend.worker() as s:
        assert s.scalar(ME) == worker_role(roles)  # outside a transaction (autocommit read)
        assert s.scalar(CLAIM) == '["r1"]'
    with backend.worker() as s, s.begin():
        ti = s.get(TaskInstance, 1)
        assert ti is not None
        ti.hostname = "wall-host"
        s.flush()
        assert s.scalar(ME) == worker_role(roles)
    with backend.direct() as direct:
        assert direct.get(TaskInstance, 1).hostname == "wall-host"  # type: ignore[union-attr]


def test_callers_taking_turns_on_one_connection_each_get_their_own(backend: Backend, roles: DatabaseRoles) -> None:
    for _ in range(3):
        with backend.session(role="auditor") as s:
            assert s.scalar(ME) == roles.roles["auditor"].name
            assert s.scalar(sa.select(Variable.description).where(Variable.id == 1)) == DESCRIPTION
        with backend.session(role="worker", dag_id="etl", run_id="r2") as s:
            assert s.scalar(ME) == worker_role(roles) and s.scalar(CLAIM) == '["r2"]'
            assert {t.run_id for t in s.scalars(sa.select(TaskInstance))} == {"r2"}
        with backend.worker() as s:
            assert {t.run_id for t in s.scalars(sa.select(TaskInstance))} == {"r1"}


def test_a_rolled_back_savepoint_keeps_the_role(backend: Backend, roles: DatabaseRoles) -> None:
    with backend.worker() as s, s.begin():
        nested = s.begin_nested()
        s.add(XCom(id=800, ti_id=1, key="sp", value="v", **MINE))
        s.flush()
        nested.rollback()
        assert s.scalar(ME) == worker_role(roles)
        with pytest.raises(PolicyViolationError) as refused:
            s.execute(sa.select(Variable.description))
        assert refused.value.status == 403


def test_a_named_method_runs_as_the_login_role_and_the_caller_keeps_its_own(
        backend: Backend, roles: DatabaseRoles, engine: sa.Engine) -> None:
    with engine.connect() as conn:
        login = conn.scalar(sa.text("SELECT session_user"))
    with backend.worker() as s:
        assert whoami(s) == [login, DESCRIPTION]  # in a transaction of its own
    with backend.worker() as s, s.begin():
        assert s.scalar(ME) == worker_role(roles)
        assert whoami(s) == [login, DESCRIPTION]  # inside the caller's transaction
        assert s.scalar(ME) == worker_role(roles)
        assert s.scalar(CLAIM) == '["r1"]'


def test_a_streamed_read_runs_under_the_role(backend: Backend, roles: DatabaseRoles) -> None:
    streamed = sa.select(TaskInstance.id, sa.func.current_user()).execution_options(yield_per=1)
    with backend.worker() as s:  # outside a transaction, then inside one
        assert {user for _, user in s.execute(streamed)} == {worker_role(roles)}
        s.execute(sa.select(TaskInstance.id).with_for_update())
        assert {user for _, user in s.execute(streamed)} == {worker_role(roles)}


def test_the_trusted_side_gets_the_login_role_back(backend: Backend, roles: DatabaseRoles) -> None:
    with backend.worker() as s:
        assert s.scalar(ME) == worker_role(roles)
    pool_engine = backend.server.state.engine  # the server's one-connection engine, handed over
    with pool_engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT current_user")) == conn.scalar(sa.text("SELECT session_user"))


def test_a_caller_changing_its_role_inside_a_transaction_is_set_again(
        backend: Backend, roles: DatabaseRoles, raw_api: Any) -> None:
    """A savepoint rolled back restores the role in force when it was taken: after a change of
    role inside the transaction, the server sets the role before every request."""
    api: RawApi = raw_api(backend.server)
    worker, auditor = backend.token(**MINE), backend.token(role="auditor")
    txn = api.transaction(token=worker)
    assert txn.execute(ME).json["rows"] == [[worker_role(roles)]]
    assert txn.execute(SavepointClause("before_change")).status == 200  # taken under the worker's role
    txn.token = auditor  # the same subject, a token with another role
    assert txn.execute(ME).json["rows"] == [[roles.roles["auditor"].name]]
    assert txn.execute(RollbackToSavepointClause("before_change")).status == 200  # restores the worker's
    assert txn.execute(ME).json["rows"] == [[roles.roles["auditor"].name]]  # ...and the server sets it again
    txn.token = worker
    assert txn.execute(ME).json["rows"] == [[worker_role(roles)]]
    assert txn.rollback().status == 200


def test_a_role_without_a_database_role_is_refused(engine: sa.Engine, roles: DatabaseRoles) -> None:
    permissive = Policy(fallback=Policy.open().fallback)  # the policy would let anyone in...
    with serve(engine, policy=permissive, name="postgresql", db_roles=roles) as backend:
        with backend.session(role="stranger") as s, pytest.raises(PolicyViolationError) as refused:
            s.scalar(sa.select(Variable.key))  # ...the wall has no role for it
        assert refused.value.status == 403


def test_a_database_role_gone_missing_is_a_server_error(engine: sa.Engine, raw_api: Any) -> None:
    roles = DatabaseRoles.from_policy(POLICY, Base.metadata, namespace=f"t{secrets.token_hex(4)}")
    catalog.apply(engine, roles)
    try:
        with serve(engine, policy=POLICY, name="postgresql", db_roles=roles) as backend:
            catalog.drop(engine, roles)  # behind the running server's back
            api: RawApi = raw_api(backend.server)
            reply = api.execute(sa.select(Variable.key), token=backend.token(**MINE))
            assert reply.status == 500 and reply.error["code"] == "internal_error" and reply.error["error_id"]
            assert "database role" in reply.error["message"]
    finally:
        catalog.drop(engine, roles)


def test_verify_mode_refuses_to_start_on_a_database_without_the_roles(engine: sa.Engine) -> None:
    with pytest.raises(ConfigError, match="not in sync"):
        create_app(engine=engine, metadata=Base.metadata, policy=POLICY, db_roles="verify", authenticator=AllowAll())
    with pytest.raises(ConfigError, match="off, verify, apply"):
        create_app(engine=engine, metadata=Base.metadata, policy=POLICY, db_roles="on", authenticator=AllowAll())


def test_apply_mode_from_the_environment(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = f"t{secrets.token_hex(4)}"
    monkeypatch.setenv("DBAPI_DB_ROLES", "apply")
    monkeypatch.setenv("DBAPI_DB_ROLES_NAMESPACE", namespace)
    monkeypatch.setenv("DBAPI_DB_ROW_SECURITY", "off")
    app = create_app(engine=engine, metadata=Base.metadata, policy=POLICY, authenticator=AllowAll())
    state = app.extensions["dbapi_server"]
    try:
        assert state.wall is not None and state.wall.roles.namespace == namespace
        assert not state.wall.roles.row_security
    finally:
        state.transactions.close()
        catalog.drop(engine, state.wall.roles)


def test_other_databases_refuse_the_setting(tmp_path: Any) -> None:
    sqlite = sa.create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    Base.metadata.create_all(sqlite)
    with pytest.raises(ConfigError, match="PostgreSQL only"):
        create_app(engine=sqlite, metadata=Base.metadata, policy=POLICY, db_roles="apply", authenticator=AllowAll())
    app = create_app(engine=sqlite, metadata=Base.metadata, policy=POLICY, db_roles="off", authenticator=AllowAll())
    app.extensions["dbapi_server"].close()


def test_the_commit_outcome_table_is_the_servers_alone(backend: Backend, roles: DatabaseRoles) -> None:
    """The server writes a commit's outcome row as the login role (the caller's role has no privilege
    on that table, which is not the application's: no wall role is granted it, nor PUBLIC)."""
    from dbapi_server.outcomes import DEFAULT_SCHEMA, DEFAULT_TABLE

    table = f"{DEFAULT_SCHEMA}.{DEFAULT_TABLE}"
    with backend.worker() as s, s.begin():
        ti = s.get(TaskInstance, 1)
        assert ti is not None
        ti.hostname = "outcome-host"
    with backend.engine.connect() as conn:
        assert conn.scalar(sa.text(f"SELECT count(*) FROM {table}"))  # the commit wrote its row
        for role in [*(r.name for r in roles.roles.values()), "public"]:
            assert not conn.scalar(sa.text("SELECT has_schema_privilege(:r, :s, 'USAGE')"),
                                   {"r": role, "s": DEFAULT_SCHEMA}), role
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
                assert not conn.scalar(sa.text("SELECT has_table_privilege(:r, :t, :p)"),
                                       {"r": role, "t": table, "p": privilege}), (role, privilege)
