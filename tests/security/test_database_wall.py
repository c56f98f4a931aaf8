"""The second wall: what the statement check wrongly lets through, PostgreSQL still refuses.

The database roles come from the strict example worker policy (``examples/policies/
airflow_worker.toml``, compiled by ``dbapi_server.db_roles``, row filters as row-level security),
while the server's own check is made permissive - a test-only ``Policy`` letting the worker run
any statement on any table - so every statement below reaches the database as if the scanner had
missed it. The attacks are the ones issue 12 found (data-modifying CTEs into a read-only table,
hidden columns read by label, bare name, whole-row reference, ORDER BY / GROUP BY), writes
outside the grants and rows of other runs; then two hypothesis properties over generated
statements: no answer holds a hidden value (column or row), and nothing outside the worker's
grants changes. A refusal by the database answers 403 ``policy_violation`` with
``wall == "database"``, never a 5xx. The last tests run ordinary worker work under the strict
policy *and* the wall: the wall must not refuse what the policy allows.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbapi_server import Policy, RolePolicy, TableGrant
from dbapi_server import _db_catalog as catalog
from dbapi_server.db_roles import DatabaseRoles
from dbsession import DBSession, DBSessionError, PolicyViolationError
from tests.servers import DBAPIProcess, dbapi_process

from ._policy_support import (
    CONF,
    DESCRIPTION,
    MINE,
    PASSWORD,
    POLICY_FILE,
    Backend,
    Base,
    Connection,
    DagCode,
    DagRun,
    TaskInstance,
    Variable,
    XCom,
    make_engine,
    serve,
)
from ._worker_fuzz import HIDDEN_VALUES, hide_rows, worker_reads

pytestmark = pytest.mark.postgresql

STRICT = Policy.from_file(POLICY_FILE, Base.metadata)
# the scanner "bypassed": the worker may send anything the wire format can say
PERMISSIVE = Policy({"worker": RolePolicy(any_table=TableGrant.full(), functions=None)},
                    fallback=Policy.open().fallback)  # ...and any other role may too
EXAMPLES = int(os.environ.get("DBSESSION_WALL_EXAMPLES", "150"))  # per property
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    engine = make_engine("postgresql", request, tmp_path_factory)
    hide_rows(engine)
    with engine.begin() as conn:  # the seed's explicit ids: new XComs take theirs from the sequence
        conn.execute(sa.text("SELECT setval('xcom_id_seq', 1000)"))
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def roles(engine: sa.Engine) -> Iterator[DatabaseRoles]:
    roles = DatabaseRoles.from_policy(STRICT, Base.metadata, namespace=f"t{secrets.token_hex(4)}")
    catalog.apply(engine, roles)
    yield roles
    catalog.drop(engine, roles)


@pytest.fixture(scope="module")
def bypassed(engine: sa.Engine, roles: DatabaseRoles) -> Iterator[Backend]:
    """A DB-API whose own check lets the worker through, walled by the strict policy's roles."""
    with serve(engine, policy=PERMISSIVE, name="postgresql", db_roles=roles) as backend:
        yield backend


@pytest.fixture(scope="module")
def walled(engine: sa.Engine, roles: DatabaseRoles) -> Iterator[Backend]:
    """The deployment: the strict policy checked by the server and by the database."""
    with serve(engine, name="postgresql", db_roles=roles) as backend:
        yield backend


def snapshot(engine: sa.Engine) -> dict[str, list[Any]]:
    """Every row of every table, ordered: what the database holds."""
    with engine.connect() as conn:
        return {t.name: [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
                for t in Base.metadata.sorted_tables}


def protected(engine: sa.Engine) -> dict[str, list[Any]]:
    """What the worker may not change: everything but its own run's XComs and the state and
    hostname of its own run's task instances."""
    state = snapshot(engine)
    ti, xcom = TaskInstance.__table__.c, XCom.__table__.c  # type: ignore[attr-defined]

    def own(row: tuple[Any, ...], c: Any) -> bool:
        return bool(row[list(c.keys()).index("dag_id")] == MINE["dag_id"]
                    and row[list(c.keys()).index("run_id")] == MINE["run_id"])

    writable = {list(ti.keys()).index("state"), list(ti.keys()).index("hostname")}
    state["task_instance"] = [tuple(v for i, v in enumerate(r) if not own(r, ti) or i not in writable)
                              for r in state["task_instance"]]
    state["xcom"] = [r for r in state["xcom"] if not own(r, xcom)]
    return state


_TOKENS: dict[str, str] = {}


def worker(backend: Backend) -> DBSession:
    """A worker's session; one token per server, so all share the client's one connection pool
    (each distinct token gets a pool of its own, and the server caps open connections)."""
    token = _TOKENS.setdefault(backend.server.url, backend.token(**MINE))
    return DBSession(database_access_isolation=True, database_api_host=backend.server.url, token=token)


def refused_by_database(run: Callable[[DBSession], Any], backend: Backend) -> PolicyViolationError:
    with worker(backend) as s, pytest.raises(PolicyViolationError) as refused:
        s.begin()
        run(s)
        s.commit()
    assert (refused.value.status, refused.value.code, refused.value.wall) == (403, "policy_violation", "database")
    return refused.value


# -- issue 12's attacks, with the scanner out of the way -------------------------------------------
def _dml_cte(kind: str) -> Any:
    if kind == "update":
        dml: Any = sa.update(Variable).where(Variable.id == 1).values(val="x")
    elif kind == "insert":
        dml = sa.insert(Variable).values(id=77, key="planted", val="x")
    else:
        dml = sa.delete(Variable).where(Variable.id == 1)
    return sa.select(dml.returning(Variable.id).cte("w").c.id)


@pytest.mark.parametrize("kind", ["update", "insert", "delete"])
def test_a_data_modifying_cte_into_a_read_only_table(bypassed: Backend, engine: sa.Engine, kind: str) -> None:
    before = snapshot(engine)
    refused_by_database(lambda s: s.execute(_dml_cte(kind)).all(), bypassed)
    assert snapshot(engine) == before


HIDDEN_READS: dict[str, Callable[[], Any]] = {
    "select_list": lambda: sa.select(Variable.key, Variable.description),
    "where": lambda: sa.select(Variable.key).where(Variable.description.like("SECRET%")),
    "order_by_label": lambda: sa.select(Variable.key).order_by("description"),
    "group_by_label": lambda: sa.select(sa.func.count()).select_from(Variable).group_by("description"),
    "bare_column": lambda: sa.select(Variable.key, sa.column("description")).select_from(Variable),
    "whole_row": lambda: sa.select(sa.column("variable")).select_from(Variable),
    "dag_run_conf": lambda: sa.select(DagRun.conf),
    "exists_on_conf": lambda: sa.select(DagRun.id).where(sa.exists().where(DagRun.conf == CONF)),
    "connection": lambda: sa.select(Connection.password),
    "dag_code_subquery": lambda: sa.select(TaskInstance.id, sa.select(DagCode.source).limit(1).scalar_subquery()),
    "returning_hidden": lambda: sa.update(TaskInstance).where(TaskInstance.id == 1).values(state="x")
    .returning(sa.select(Variable.description).limit(1).scalar_subquery()),
}


@pytest.mark.parametrize("name", sorted(HIDDEN_READS))
def test_a_hidden_column_or_table(bypassed: Backend, name: str) -> None:
    error = refused_by_database(lambda s: s.execute(HIDDEN_READS[name]()).all(), bypassed)
    for secret in (DESCRIPTION, CONF, PASSWORD, "SELECT", "description"):
        assert secret not in str(error)


WRITES: dict[str, Callable[[], Any]] = {
    "update_ungranted_column": lambda: sa.update(TaskInstance).where(TaskInstance.id == 1).values(task_id="x"),
    "move_to_another_run": lambda: sa.update(TaskInstance).where(TaskInstance.id == 1).values(run_id="r2"),
    "insert_task_instance": lambda: sa.insert(TaskInstance).values(id=99, task_id="t", **MINE),
    "delete_task_instance": lambda: sa.delete(TaskInstance).where(TaskInstance.id == 1),
    "xcom_for_another_run": lambda: sa.insert(XCom).values(id=98, ti_id=3, key="k", dag_id="etl", run_id="r2"),
    "insert_from_hidden": lambda: sa.insert(XCom).from_select(
        ["id", "ti_id", "key", "value", "dag_id", "run_id"],
        sa.select(sa.literal(97), sa.literal(1), sa.literal("k"), Connection.password, sa.literal("etl"),
                  sa.literal("r1"))),
    "truncate_like_delete_dag_run": lambda: sa.delete(DagRun),
}


@pytest.mark.parametrize("name", sorted(WRITES))
def test_a_write_outside_the_grants(bypassed: Backend, engine: sa.Engine, name: str) -> None:
    before = snapshot(engine)
    refused_by_database(lambda s: s.execute(WRITES[name]()), bypassed)
    assert snapshot(engine) == before


def test_other_runs_rows_are_invisible_and_untouchable(bypassed: Backend, engine: sa.Engine) -> None:
    before = snapshot(engine)
    with worker(bypassed) as s, s.begin():
        assert {(t.dag_id, t.run_id) for t in s.scalars(sa.select(TaskInstance))} == {("etl", "r1")}
        assert s.scalar(sa.select(sa.func.count()).select_from(XCom).where(XCom.run_id != "r1")) == 0
        assert s.execute(sa.update(TaskInstance).where(TaskInstance.run_id == "r2").values(state="x")).rowcount == 0
        assert s.execute(sa.delete(XCom).where(XCom.dag_id == "report")).rowcount == 0
    assert snapshot(engine) == before


def test_a_refusal_by_the_database_aborts_the_transaction_it_ran_in(bypassed: Backend, engine: sa.Engine) -> None:
    with worker(bypassed) as s:
        s.begin()
        s.execute(sa.update(TaskInstance).where(TaskInstance.id == 1).values(state="before-refusal"))
        with pytest.raises(PolicyViolationError) as refused:
            s.execute(sa.select(Variable.description))
        assert refused.value.txn_state == "open"
        with pytest.raises(sa.exc.InternalError, match="aborted"):  # as any failed statement in PostgreSQL
            s.execute(sa.select(TaskInstance.id))
        s.rollback()
        assert s.scalar(sa.select(TaskInstance.state).where(TaskInstance.id == 1)) != "before-refusal"


def test_a_role_the_strict_policy_does_not_list_gets_nothing(bypassed: Backend) -> None:
    with bypassed.session(role="admin") as s, pytest.raises(PolicyViolationError) as refused:
        s.execute(sa.select(Variable.key)).all()  # PERMISSIVE lets it in; the strict roles have none for it
    assert refused.value.status == 403


# -- the same, with the DB-API in its own process, configured as a deployment configures it -------
PERMISSIVE_TOML = '[roles.worker]\nfunctions = "*"\n' + "".join(
    f'[roles.worker.tables.{t.name}]\nread = "*"\ninsert = "*"\nupdate = "*"\ndelete = true\n'
    for t in Base.metadata.sorted_tables)


@pytest.fixture(scope="module")
def bypassed_process(engine: sa.Engine, roles: DatabaseRoles) -> Iterator[DBAPIProcess]:
    """``dbapi-server serve`` with a permissive policy file, its database roles compiled from the
    strict one (``DBAPI_DB_ROLES_POLICY``) and checked at start (``DBAPI_DB_ROLES=verify``)."""
    env = {"DBAPI_DB_ROLES": "verify", "DBAPI_DB_ROLES_NAMESPACE": roles.namespace,
           "DBAPI_DB_ROLES_POLICY": str(POLICY_FILE)}
    with dbapi_process(engine.url, "tests.security._policy_support:Base.metadata", policy=PERMISSIVE_TOML,
                       env=env) as server:
        yield server


# (a name resolved by the database the policy cannot judge - order_by("description") outside the
# select list, a whole-row reference - is refused by the statement walk whatever the grants: the
# permissive file cannot let those through to the database, the in-process PERMISSIVE preset can)
OUT_OF_PROCESS = {
    **{f"cte_{kind}": (lambda kind=kind: _dml_cte(kind)) for kind in ("update", "insert", "delete")},
    **{name: HIDDEN_READS[name] for name in ("select_list", "bare_column", "exists_on_conf", "connection")},
    **{name: WRITES[name] for name in ("update_ungranted_column", "xcom_for_another_run")},
}


@pytest.mark.parametrize("name", sorted(OUT_OF_PROCESS))
def test_out_of_process(bypassed_process: DBAPIProcess, engine: sa.Engine, name: str) -> None:
    before = snapshot(engine)
    token = _TOKENS.setdefault(bypassed_process.url, bypassed_process.mint(role="worker", **MINE))
    with DBSession(database_access_isolation=True, database_api_host=bypassed_process.url, token=token) as s, \
            pytest.raises(PolicyViolationError) as refused:
        with s.begin():
            s.execute(OUT_OF_PROCESS[name]())
    assert (refused.value.status, refused.value.wall) == (403, "database")
    assert snapshot(engine) == before


# -- properties over generated statements -----------------------------------------------------------
@PROPERTY
@given(statement=worker_reads())
def test_no_answer_holds_a_hidden_value(bypassed: Backend, statement: Any) -> None:
    """Any read over any tables and columns, in any shape: refused by the database, or answered
    with nothing a copy holding only the worker's rows and columns would not hold."""
    with worker(bypassed) as s:
        try:
            rows = s.execute(statement).all()
        except PolicyViolationError as exc:
            assert exc.wall == "database"
            return
        except sa.exc.DBAPIError:
            return  # the database's own error (a type mismatch in a generated UNION...), no rows
    text = repr(rows)
    assert not [v for v in HIDDEN_VALUES if v in text], text


_TABLES = [e.__table__ for e in (TaskInstance, XCom, DagRun, Variable, DagCode, Connection)]  # type: ignore[attr-defined]
_VALUES = {int: st.sampled_from([1, 2, 3, 5, 42]), str: st.sampled_from(["etl", "r1", "r2", "report", "x"])}


@st.composite
def worker_writes(draw: st.DrawFn) -> Any:
    """An INSERT, UPDATE or DELETE of any table and columns, plain or inside a CTE a SELECT reads."""
    table = draw(st.sampled_from(_TABLES))
    columns = draw(st.lists(st.sampled_from([c for c in table.c if not c.primary_key]), min_size=1, max_size=3,
                            unique_by=lambda c: c.name))
    values = {c.name: draw(_VALUES[c.type.python_type]) for c in columns}
    where = [draw(st.sampled_from([c for c in table.c if c.type.python_type is int])) == draw(_VALUES[int])] \
        if draw(st.booleans()) else []
    kind = draw(st.sampled_from(["insert", "update", "delete"]))
    if kind == "insert":
        dml: Any = sa.insert(table).values(id=draw(st.integers(600, 700)), **values)
    elif kind == "update":
        dml = sa.update(table).where(*where).values(**values)
    else:
        dml = sa.delete(table).where(*where)
    if draw(st.booleans()):
        return sa.select(dml.returning(table.c.id).cte("w").c.id)
    return dml


@PROPERTY
@given(statement=worker_writes())
def test_nothing_outside_the_grants_changes(bypassed: Backend, engine: sa.Engine, statement: Any) -> None:
    before = protected(engine)
    with worker(bypassed) as s:
        try:
            with s.begin():
                s.execute(statement)
        except PolicyViolationError as exc:
            assert exc.wall == "database"
        except (sa.exc.DBAPIError, DBSessionError):
            pass  # the database's own refusal of a generated value (a duplicate key, a foreign key...)
    assert protected(engine) == before


# -- the wall does not refuse what the policy allows -------------------------------------------------
def test_ordinary_worker_work_under_the_policy_and_the_wall(walled: Backend, engine: sa.Engine) -> None:
    with worker(walled) as s, s.begin():
        ti = s.get(TaskInstance, 1)
        assert ti is not None and all(x.run_id == "r1" for x in ti.xcoms)  # a lazy load
        assert s.scalar(sa.select(DagRun.state).where(DagRun.run_id == ti.run_id)) == "running"
        ti.state, ti.hostname = "running", "walled-host"
        s.add(XCom(ti_id=1, key="walled", value="v", **MINE))  # the id from the sequence
        s.flush()
        s.delete(s.scalars(sa.select(XCom).where(XCom.key == "walled")).one())
        assert s.scalars(sa.select(Variable.key).order_by(Variable.id)).all() == ["threshold", "region"]
        assert s.get(TaskInstance, 5) is None  # another run's
    with walled.direct() as direct:
        assert (direct.get(TaskInstance, 1).hostname, direct.scalar(  # type: ignore[union-attr]
            sa.select(sa.func.count()).select_from(XCom).where(XCom.key == "walled"))) == ("walled-host", 0)

