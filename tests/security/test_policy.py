"""The policy itself: file format and validation, deny by default, roles, functions, raw SQL, DDL,
named methods, presets, refusal envelopes and the transaction state after a refusal."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import Session

from dbapi_server import ConfigError, Policy, PolicyError, PolicyViolation, Principal, RolePolicy, TableGrant
from dbapi_server.app import create_app
from dbapi_server.cli import main as cli
from dbapi_server.policy import DEFAULT_FUNCTIONS
from dbsession import PolicyViolationError

from ._policy_support import (
    DESCRIPTION,
    MINE,
    POLICY_FILE,
    Backend,
    Base,
    DagCode,
    TaskInstance,
    Variable,
    XCom,
    make_engine,
    serve,
)

TI = TaskInstance
DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def worker(**claims: Any) -> Principal:
    return Principal("w", {"role": "worker", **MINE, **claims})


# -- the file ---------------------------------------------------------------------------------------
def test_the_example_file_loads_and_validates() -> None:
    policy = Policy.from_file(POLICY_FILE, Base.metadata)
    role = policy.roles["worker"]
    assert role.tables["task_instance"].update == frozenset({"state", "hostname"})
    assert role.tables["xcom"].row_filter == {"dag_id": "dag_id", "run_id": "run_id"}
    assert role.functions == DEFAULT_FUNCTIONS and not role.raw_sql and not role.ddl
    assert policy.limits_for(worker()).max_rows == 5_000  # the role's own
    assert policy.limits_for(worker()).statement_timeout == 30.0  # inherited default


def test_docs_show_the_example_file_verbatim() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert POLICY_FILE.read_text() in blocks


@pytest.mark.parametrize(("toml", "names"), [
    ('[roles.worker.tables.xcom]\nraed = "*"\n', "roles.worker.tables.xcom.raed: unknown key"),
    ('[roles.worker]\nraw_sql = "yes"\n', "roles.worker.raw_sql: must be true or false"),
    ('[roles.worker.tables.xcom]\nread = 3\n', "roles.worker.tables.xcom: read must be"),
    ('[roles.worker.tables.xcom]\ndelete = "*"\n', "roles.worker.tables.xcom: delete must be"),
    ('[limits]\nmax_rows = -1\n', "limits.max_rows: must be a positive number"),
    ('[roles.w.limits]\nstatement_timeout = "1s"\n', "roles.w.limits.statement_timeout: must be"),
    ('preset = "everything"\n', "preset: must be"),
    ('[roles.worker]\nfunctions = "lower"\n', "roles.worker.functions: must be"),
    ('roles = [1]\n', "roles: expected a table"),
    ("[roles.worker\n", "not valid TOML"),
])
def test_malformed_files_name_the_bad_entry(tmp_path: Path, toml: str, names: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(toml)
    with pytest.raises(PolicyError, match=re.escape(names)):
        Policy.from_file(path)


@pytest.mark.parametrize(("toml", "names"), [
    ('[roles.worker.tables.dag_codes]\nread = "*"\n', "roles.worker.tables.dag_codes: the table 'dag_codes'"),
    ('[roles.worker.tables.variable]\nread = ["key", "secret"]\n',
     "roles.worker.tables.variable.read: 'variable' has no column 'secret'"),
    ('[roles.worker.tables.xcom]\nrow_filter = { dagid = "dag_id" }\n',
     "roles.worker.tables.xcom.row_filter: 'xcom' has no column 'dagid'"),
])
def test_unknown_tables_and_columns_stop_the_server_at_startup(tmp_path: Path, toml: str, names: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(toml)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with pytest.raises(ConfigError, match=re.escape(names)):
        create_app(engine=engine, metadata=Base.metadata, policy=str(path), authenticator=object())  # type: ignore[arg-type]
    engine.dispose()


def test_policy_file_from_the_environment_and_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[roles.worker.tables.nope]\nread = "*"\n')
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("DBAPI_POLICY_FILE", str(bad))
    with pytest.raises(ConfigError, match="roles.worker.tables.nope"):
        create_app(engine=engine, metadata=Base.metadata, authenticator=object())  # type: ignore[arg-type]
    engine.dispose()
    monkeypatch.delenv("DBAPI_POLICY_FILE")
    result = CliRunner().invoke(cli, ["serve", "--database-url", f"sqlite:///{tmp_path / 'cli.sqlite'}",
                                      "--metadata", "tests.security._policy_support:Base.metadata",
                                      "--policy", str(bad)], env={"DBAPI_AUTH": "none"})
    assert result.exit_code == 1 and "roles.worker.tables.nope" in result.output


# -- deny by default ------------------------------------------------------------------------------
def test_unknown_role_and_missing_role_are_refused(backend: Backend) -> None:
    for claims in ({"role": "scheduler"}, {"role": None}, {"role": ["worker"]}):
        with backend.session(**MINE, **claims) as s:
            with pytest.raises(PolicyViolationError, match="role") as refused:
                s.scalars(sa.select(Variable.key)).all()
            assert refused.value.status == 403 and refused.value.code == "policy_violation"


@pytest.mark.parametrize(("stmt", "table", "column"), [
    (lambda: sa.insert(Variable).values(key="k", val="v"), "variable", None),
    (lambda: sa.delete(TI).where(TI.id == 1), "task_instance", None),
    (lambda: sa.update(TI).where(TI.id == 1).values(task_id="other"), "task_instance", "task_id"),
    (lambda: sa.update(Variable).where(Variable.id == 1).values(val="x"), "variable", None),
    (lambda: sa.select(DagCode.id), "dag_code", None),
])
def test_writes_and_reads_not_granted_are_refused(backend: Backend, stmt: Any, table: str,
                                                  column: str | None) -> None:
    with backend.worker() as s:
        with pytest.raises(PolicyViolationError, match=table) as refused:
            s.execute(stmt())
        s.rollback()
    assert refused.value.table == table and refused.value.column == column


def test_orm_write_of_a_column_not_granted(backend: Backend) -> None:
    with backend.worker() as s:
        ti = s.get(TI, 1)
        assert ti is not None
        ti.task_id = "renamed"
        with pytest.raises(PolicyViolationError, match="task_instance.task_id"):
            s.flush()
        s.rollback()


def test_insert_of_a_column_outside_an_insert_column_list_is_refused_naming_it(
        tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> None:
    """The example policy grants whole-table inserts only; a column list is enforced per column,
    whether the column is in VALUES, in the parameters, or set by an ORM flush (which sets every
    column without a default, NULL when unset - so here any ORM insert is refused)."""
    policy = Policy({"worker": RolePolicy(tables={"variable": TableGrant(read="*", insert=["key", "val"])})})
    engine = make_engine("sqlite", request, tmp_path_factory)
    try:
        with serve(engine, policy=policy) as backend, backend.worker() as s:
            with pytest.raises(PolicyViolationError, match=r"variable\.id \(insert\)") as refused:
                s.execute(sa.insert(Variable).values(id=99, key="k", val="v"))
            assert (refused.value.table, refused.value.column, refused.value.action) == ("variable", "id", "insert")
            with pytest.raises(PolicyViolationError, match=r"variable\.description \(insert\)"):
                s.execute(sa.insert(Variable), [{"key": "k", "val": "v", "description": "d"}])
            s.execute(sa.insert(Variable).values(key="granted", val="v"))  # the granted columns only: allowed
            s.add(Variable(key="described", val="v", description="not granted"))
            with pytest.raises(PolicyViolationError, match=r"variable\.description \(insert\)") as refused:
                s.flush()
            assert refused.value.column == "description"
            s.rollback()
    finally:
        engine.dispose()
    with Session(engine) as d:
        assert d.scalars(sa.select(Variable.key).order_by(Variable.id)).all() == ["threshold", "region"]


# -- functions, raw SQL, DDL, methods ---------------------------------------------------------------
def test_function_allowlist(backend: Backend) -> None:
    with backend.worker() as s:
        assert s.scalar(sa.select(sa.func.lower(Variable.val)).where(Variable.id == 2)) == "eu"
        with pytest.raises(PolicyViolationError, match=r"hex\(\)") as refused:
            s.scalar(sa.select(sa.func.hex(Variable.val)))
        assert refused.value.function == "hex"


def test_dangerous_functions_are_refused_even_when_all_functions_are_allowed() -> None:
    policy = Policy({"admin": RolePolicy(tables={"variable": TableGrant.full()}, functions=None)})
    from query_translation.decode import StatementInfo

    with pytest.raises(PolicyViolation, match="pg_read_file"):
        policy.check(StatementInfo(kind="select", functions={"pg_read_file"}), Principal("a", {"role": "admin"}))
    with pytest.raises(PolicyViolation, match="pg_sleep"):
        Policy.for_testing().check(StatementInfo(kind="select", functions={"pg_sleep"}), Principal("a"))


def test_raw_sql_is_refused_unless_the_role_allows_it(backend: Backend) -> None:
    with backend.worker() as s:
        with pytest.raises(PolicyViolationError, match="Raw SQL"):
            s.execute(sa.text("SELECT description FROM variable"))
        with pytest.raises(PolicyViolationError, match="Raw SQL"):
            s.execute(sa.select(Variable.key).where(sa.text("description like 'S%'")))


def test_testing_preset_allows_raw_sql_and_ddl(tmp_path_factory: pytest.TempPathFactory,
                                               request: pytest.FixtureRequest) -> None:
    engine = make_engine("sqlite", request, tmp_path_factory)
    try:
        with serve(engine, policy=Policy.for_testing()) as backend:
            with backend.session(role="anything") as s:
                assert s.execute(sa.text("SELECT description FROM variable")).scalars().all() == [DESCRIPTION] * 2
            backend.server.state.policy.check_ddl(Principal("t", {"role": "anything"}))
    finally:
        engine.dispose()
    with pytest.raises(PolicyViolation, match="DDL"):
        Policy.from_file(POLICY_FILE).check_ddl(worker())
    with pytest.raises(PolicyViolation, match="DDL"):
        Policy.open().check_ddl(worker())


def test_named_methods_per_role() -> None:
    policy = Policy.from_file(POLICY_FILE)
    policy.check_method("heartbeat", worker())
    with pytest.raises(PolicyViolation, match="'set_variable'") as refused:
        policy.check_method("set_variable", worker())
    assert refused.value.extra == {"method": "set_variable"}
    with pytest.raises(PolicyViolation, match="role"):
        policy.check_method("heartbeat", Principal("x", {"role": "stranger"}))
    Policy.open().check_method("anything", Principal("x"))


# -- presets --------------------------------------------------------------------------------------
def test_open_preset_when_no_policy_is_configured(tmp_path_factory: pytest.TempPathFactory,
                                                  request: pytest.FixtureRequest) -> None:
    engine = make_engine("sqlite", request, tmp_path_factory)
    try:
        with serve(engine, policy=None) as backend:
            assert type(backend.server.state.policy) is Policy and backend.server.state.policy.fallback
            with backend.session() as s:  # any role, every table, every row
                assert s.scalar(sa.select(DagCode.source)) is not None
                assert s.scalar(sa.select(sa.func.count()).select_from(TI)) == 6
                with pytest.raises(PolicyViolationError, match="Raw SQL"):
                    s.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()


def test_python_api_equals_the_file() -> None:
    policy = Policy({"worker": RolePolicy(tables={
        "variable": TableGrant(read=["id", "key", "val"]),
        "xcom": TableGrant(read="*", insert="*", delete=True, row_filter={"dag_id": "dag_id", "run_id": "run_id"}),
    }, methods=frozenset({"heartbeat"}))})
    policy.validate(Base.metadata)
    loaded = Policy.from_file(POLICY_FILE).roles["worker"]
    assert policy.roles["worker"].tables["xcom"] == loaded.tables["xcom"]
    assert policy.roles["worker"].tables["variable"] == loaded.tables["variable"]
    with pytest.raises(PolicyError, match="read must be"):
        TableGrant(read="everything,please")


# -- refusals and transactions ------------------------------------------------------------------------
def test_a_refusal_inside_a_transaction_leaves_it_open(backend: Backend) -> None:
    with backend.worker() as s:
        s.add(XCom(id=300, ti_id=1, dag_id="etl", run_id="r1", key="kept", value="v"))
        s.flush()
        with pytest.raises(PolicyViolationError) as refused:
            s.execute(sa.select(DagCode.source))
        assert refused.value.txn_state == "open"
        s.add(XCom(id=301, ti_id=1, dag_id="etl", run_id="r1", key="also", value="v"))
        s.commit()  # the transaction went on: both rows commit
    with backend.direct() as d:
        assert d.scalars(sa.select(XCom.key).where(XCom.id >= 300).order_by(XCom.id)).all() == ["kept", "also"]
        d.execute(sa.delete(XCom).where(XCom.id >= 300))
        d.commit()


@pytest.mark.parametrize("first", [
    lambda: sa.insert(XCom).values(id=310, ti_id=5, dag_id="report", run_id="r1", key="k"),  # another run's
    lambda: sa.select(DagCode.source).with_for_update(),  # a locking read: it begins a transaction too
], ids=["write", "locking-read"])
def test_a_refused_first_statement_leaves_no_transaction_after_the_rollback(backend: Backend, first: Any) -> None:
    """The server begins the transaction before the policy refuses its first statement (the envelope
    says "open"); the client must then roll it back rather than forget it, or it holds a connection
    until the idle timeout."""
    transactions = backend.server.state.transactions
    assert transactions.open_count == 0
    with backend.worker() as s:
        with pytest.raises(PolicyViolationError) as refused:
            s.execute(first())
        assert refused.value.txn_state == "open" and transactions.open_count == 1
        s.rollback()
        assert transactions.open_count == 0
        assert s.scalar(sa.select(sa.func.count()).select_from(XCom)) == 2  # and the session goes on
    assert transactions.open_count == 0


@pytest.fixture
def no_log_leaks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    assert DESCRIPTION not in caplog.text


def test_refusals_never_echo_sql_or_data(backend: Backend, no_log_leaks: None) -> None:
    with backend.worker() as s:
        with pytest.raises(PolicyViolationError) as refused:
            s.execute(sa.select(Variable.key).where(Variable.description == DESCRIPTION))
    text = str(refused.value)
    assert "SELECT" not in text and DESCRIPTION not in text and "variable.description" in text


def test_file_presets_grant_unlisted_roles(tmp_path: Path) -> None:
    from query_translation.decode import StatementInfo

    path = tmp_path / "policy.toml"
    path.write_text('preset = "testing"\n[roles.worker.tables.variable]\nread = ["key"]\n')
    policy = Policy.from_file(path, Base.metadata)
    anyone = Principal("t", {"role": "sqlalchemy-suite"})
    policy.check(StatementInfo(kind="select", read_tables={"dag_code"}, literal_sql=["DROP TABLE x"]), anyone)
    policy.check_ddl(anyone)
    with pytest.raises(PolicyViolation, match="dag_code"):  # listed roles keep their own rules
        policy.check(StatementInfo(kind="select", read_tables={"dag_code"}), worker())
    path.write_text('preset = "open"\n')
    with pytest.raises(PolicyViolation, match="Raw SQL"):
        Policy.from_file(path).check(StatementInfo(kind="select", literal_sql=["DROP TABLE x"]), anyone)
