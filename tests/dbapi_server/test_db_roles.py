"""Policy roles compiled into PostgreSQL roles: names, grants, apply / verify / drop, the CLI.

The database part runs on a fresh PostgreSQL database holding the Airflow-like schema of
``tests/security/_policy_support`` and compares what the catalog says each role may do
(``has_column_privilege``, ``has_table_privilege``: grants to PUBLIC count) with the policy.
Roles are cluster-wide: every namespace here is unique to the run and dropped at teardown.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from dbapi_server import Policy, RolePolicy, TableGrant
from dbapi_server import _db_catalog as catalog
from dbapi_server.auth import Principal
from dbapi_server.cli import main
from dbapi_server.db_roles import DatabaseRoles, claim_setting, claim_value, role_name
from tests.security._policy_support import POLICY_FILE, Base, make_engine

metadata = Base.metadata
WORKER = Policy.from_file(POLICY_FILE, metadata)


def compiled(policy: Policy = WORKER, namespace: str = "ns", **kw: Any) -> DatabaseRoles:
    return DatabaseRoles.from_policy(policy, metadata, namespace=namespace, **kw)


# -- compiling (no database) ------------------------------------------------------------------------
def test_role_names_are_prefixed_short_and_distinct() -> None:
    names = {role_name(ns, role) for ns in ("airflow", "Airflow", "x" * 80)
             for role in ("worker", "Worker", "wor-ker", "w" * 100, "röle", None)}
    assert len(names) == 18
    assert all(n.startswith("dbs_") and len(n.encode()) <= 63 and n == n.lower() for n in names)
    assert role_name("airflow", "worker").startswith("dbs_airflow_worker_")
    assert role_name("airflow", None) != role_name("airflow", "fallback")


def test_claim_settings_are_valid_setting_names_and_values_json_arrays() -> None:
    assert claim_setting("dag_id") == "dbsession.claim_dag_id"
    odd = claim_setting("Dag-Id; DROP")
    assert odd.startswith("dbsession.claim_x") and odd.replace(".", "").replace("_", "").isalnum()
    assert claim_value("etl") == '["etl"]' and claim_value(["a", 5]) == '["a", "5"]'
    for nothing in (None, True, {"a": 1}, [], [None]):
        assert claim_value(nothing) == ""  # no rows, never "no filter"


def test_the_worker_policy_compiles_to_its_grants() -> None:
    role = compiled().roles["worker"]
    by_table = {p.table.name: p for p in role.tables}
    assert set(by_table) == {"dag_run", "task_instance", "xcom", "variable"}  # not dag_code, connection
    dag_run, ti, xcom, variable = (by_table[n] for n in ("dag_run", "task_instance", "xcom", "variable"))
    assert dag_run.select == {"id", "dag_id", "run_id", "state"} and not dag_run.has("UPDATE")
    assert ti.select is None and ti.update == {"state", "hostname"} and not ti.delete and not ti.inserts
    assert xcom.select is None and xcom.insert is None and xcom.delete and not xcom.has("UPDATE")
    assert variable.select == {"id", "key", "val"} and not variable.row_filter
    assert role.claims == ("dag_id", "run_id")


def test_a_row_filter_column_is_readable_by_the_role() -> None:
    policy = Policy({"w": RolePolicy(tables={"xcom": TableGrant(read=["value"], row_filter={"dag_id": "dag_id"})})})
    (xcom,) = compiled(policy).roles["w"].tables
    assert xcom.select == {"value", "dag_id"}  # the server's own filter names it


def test_raw_sql_and_ddl_roles_are_not_walled_and_presets_compile_to_every_table() -> None:
    policy = Policy({"admin": RolePolicy(raw_sql=True), "migrator": RolePolicy(ddl=True),
                     "reader": RolePolicy(tables={"variable": TableGrant(read="*")})},
                    fallback=Policy.open(denied_tables=["connection"]).fallback)
    roles = compiled(policy)
    assert roles.unwalled == {"admin", "migrator"}
    fallback = roles.roles[None]
    assert {p.table.name for p in fallback.tables} == {t.name for t in metadata.tables.values()} - {"connection"}
    assert all(p.select is None and p.insert is None and p.update is None and p.delete for p in fallback.tables)
    assert compiled(Policy.for_testing()).unwalled == {None}


def test_identities_follow_the_policys_role_lookup() -> None:
    roles = compiled(Policy({"worker": WORKER.roles["worker"], "admin": RolePolicy(raw_sql=True)}))
    worker = roles.identity(Principal("t", {"role": "worker", "dag_id": "etl", "run_id": ["r1", "r2"]}))
    assert worker.role == roles.roles["worker"].name and not worker.deny
    assert worker.settings == (("dbsession.claim_dag_id", '["etl"]'), ("dbsession.claim_run_id", '["r1", "r2"]'))
    assert roles.identity(Principal("t", {"role": "worker"})).settings[0][1] == ""  # a missing claim: no rows
    assert roles.identity(Principal("t", {"role": "admin"})).sql_text
    assert roles.identity(Principal("t", {"role": "stranger"})).deny  # no fallback in this policy
    assert compiled(row_security=False).identity(Principal("t", {"role": "worker", "dag_id": "x"})).settings == ()


def test_an_insertable_table_with_an_unreadable_key_is_warned_about() -> None:
    policy = Policy({"w": RolePolicy(tables={"xcom": TableGrant(read=["value"], insert="*"),
                                             "dag_code": TableGrant(read="*", insert="*")})})
    (warning,) = compiled(policy).warnings
    assert "xcom is insertable but its primary key is not readable" in warning and warning.endswith("on id.")
    assert compiled().warnings == []


def test_compiling_checks_the_policy_against_the_metadata() -> None:
    with pytest.raises(Exception, match="no column 'secret'"):
        compiled(Policy({"w": RolePolicy(tables={"variable": TableGrant(read=["secret"])})}))


# -- against PostgreSQL ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    engine = make_engine("postgresql", request, tmp_path_factory)
    yield engine
    engine.dispose()


@pytest.fixture
def namespace(engine: sa.Engine) -> Iterator[str]:
    """A namespace unique to this test; whatever roles it holds are dropped afterwards."""
    name = f"t{secrets.token_hex(4)}"
    yield name
    catalog.drop(engine, compiled(namespace=name))
    assert _namespace_roles(engine, name) == []


def _namespace_roles(engine: sa.Engine, namespace: str) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT rolname FROM pg_roles WHERE shobj_description(oid, 'pg_authid') LIKE :p"),
            {"p": f"dbsession wall role % in namespace '{namespace}'"}).scalars())


def _can(engine: sa.Engine, role: str) -> set[tuple[str, str, str]]:
    """Every (table, column or '*', privilege) *role* effectively holds on the schema's tables."""
    held: set[tuple[str, str, str]] = set()
    with engine.connect() as conn:
        for table in metadata.tables.values():
            for column in table.c:
                for privilege in ("SELECT", "INSERT", "UPDATE"):
                    if conn.execute(sa.text("SELECT has_column_privilege(:r, :t, :c, :p)"),
                                    {"r": role, "t": table.name, "c": column.name, "p": privilege}).scalar():
                        held.add((table.name, column.name, privilege))
            for privilege in ("DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
                if conn.execute(sa.text("SELECT has_table_privilege(:r, :t, :p)"),
                                {"r": role, "t": table.name, "p": privilege}).scalar():
                    held.add((table.name, "*", privilege))
    return held


def _expected(policy: Policy, role: str) -> set[tuple[str, str, str]]:
    expected: set[tuple[str, str, str]] = set()
    for name, grant in policy.roles[role].tables.items():
        columns = [c.name for c in metadata.tables[name].c]
        for privilege, names in (("SELECT", grant.read), ("INSERT", grant.insert), ("UPDATE", grant.update)):
            for column in columns:
                if names is None or column in names or (privilege == "SELECT" and column in grant.row_filter):
                    expected.add((name, column, privilege))
        if grant.delete:
            expected.add((name, "*", "DELETE"))
    return expected


def _attributes(engine: sa.Engine, role: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT rolcanlogin, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, "
            "(SELECT count(*) FROM pg_auth_members WHERE member = r.oid) AS member_of, "
            "(SELECT count(*) FROM pg_shdepend WHERE refobjid = r.oid AND deptype = 'o') AS owns, "
            "pg_has_role(session_user, r.oid, 'MEMBER') AS login_is_member FROM pg_roles r WHERE rolname = :r"),
            {"r": role}).one()
    return dict(row._mapping)


@pytest.mark.postgresql
def test_apply_creates_roles_holding_exactly_the_policy(engine: sa.Engine, namespace: str) -> None:
    roles = compiled(namespace=namespace)
    statements = catalog.apply(engine, roles)
    assert any(s.startswith("CREATE ROLE") for s in statements)
    name = roles.roles["worker"].name
    assert _can(engine, name) == _expected(WORKER, "worker")
    assert _attributes(engine, name) == {
        "rolcanlogin": False, "rolsuper": False, "rolinherit": False, "rolcreaterole": False,
        "rolcreatedb": False, "rolreplication": False, "rolbypassrls": False, "member_of": 0, "owns": 0,
        "login_is_member": True}
    with engine.connect() as conn:  # only the sequence its inserts draw from
        sequences = set(conn.execute(sa.text(
            "SELECT relname FROM (SELECT oid, relname FROM pg_class WHERE relkind = 'S' OFFSET 0) AS s "
            "WHERE has_sequence_privilege(:r, s.oid, 'USAGE')"),
            {"r": name}).scalars())
    assert sequences == {"xcom_id_seq"}
    assert catalog.verify(engine, roles) == []
    assert catalog.apply(engine, roles) == []  # idempotent: nothing left to do


@pytest.mark.postgresql
def test_reapplying_a_changed_policy_converges(engine: sa.Engine, namespace: str) -> None:
    catalog.apply(engine, compiled(namespace=namespace))
    narrowed = Policy({
        "worker": RolePolicy(tables={"task_instance": TableGrant(read=["id", "state"], update=["state"]),
                                     "variable": TableGrant(read="*")}),
        "auditor": RolePolicy(tables={"dag_code": TableGrant(read=["fileloc"])}),
    })
    roles = compiled(narrowed, namespace=namespace)
    statements = catalog.apply(engine, roles)
    assert any(s.startswith("REVOKE") for s in statements)
    assert roles.roles["worker"].name == compiled(namespace=namespace).roles["worker"].name
    assert _can(engine, roles.roles["worker"].name) == _expected(narrowed, "worker")
    assert _can(engine, roles.roles["auditor"].name) == _expected(narrowed, "auditor")
    with engine.connect() as conn:  # no row filter left: row-level security is off again
        assert not any(conn.execute(sa.text("SELECT relrowsecurity FROM pg_class WHERE relname IN "
                                            "('xcom', 'dag_run', 'task_instance')")).scalars())
        assert set(conn.execute(sa.text("SELECT pg_get_expr(polqual, polrelid) FROM pg_policy")).scalars()) == {"true"}
    # and back: the auditor role is dropped, the worker regains its grants
    catalog.apply(engine, compiled(namespace=namespace))
    assert _namespace_roles(engine, namespace) == [compiled(namespace=namespace).roles["worker"].name]
    assert _can(engine, compiled(namespace=namespace).roles["worker"].name) == _expected(WORKER, "worker")


@pytest.mark.postgresql
def test_verify_reports_drift_and_apply_repairs_it(engine: sa.Engine, namespace: str) -> None:
    roles = compiled(namespace=namespace)
    catalog.apply(engine, roles)
    name = roles.roles["worker"].name
    with engine.begin() as conn:
        conn.exec_driver_sql(f'GRANT SELECT ON variable TO "{name}"')  # description too
        conn.exec_driver_sql(f'GRANT UPDATE ON dag_run TO "{name}"')
        conn.exec_driver_sql(f'ALTER ROLE "{name}" INHERIT')
        conn.exec_driver_sql(f'REVOKE DELETE ON xcom FROM "{name}"')
    problems = catalog.verify(engine, roles)
    assert len(problems) == 1 and "not in sync" in problems[0]
    statements = catalog.apply(engine, roles)
    assert f'REVOKE SELECT ON TABLE variable FROM "{name}"' in statements
    assert f'GRANT SELECT (id, key, val) ON TABLE variable TO "{name}"' in statements  # columns again
    assert catalog.verify(engine, roles) == []
    assert _can(engine, name) == _expected(WORKER, "worker") and not _attributes(engine, name)["rolinherit"]


@pytest.mark.postgresql
def test_a_grant_to_public_is_a_problem_apply_cannot_fix(engine: sa.Engine, namespace: str) -> None:
    roles = compiled(namespace=namespace)
    catalog.apply(engine, roles)
    with engine.begin() as conn:
        conn.exec_driver_sql("GRANT SELECT (password) ON connection TO PUBLIC")
    try:
        problems = catalog.verify(engine, roles)
        assert any("can SELECT connection.password" in p and "PUBLIC" in p for p in problems)
        with pytest.raises(catalog.DatabaseRolesError, match="connection.password"):
            catalog.apply(engine, roles)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("REVOKE SELECT (password) ON connection FROM PUBLIC")
    assert catalog.verify(engine, roles) == []


@pytest.mark.postgresql
def test_a_foreign_role_with_a_wall_roles_name_is_not_taken_over(engine: sa.Engine, namespace: str) -> None:
    roles = compiled(namespace=namespace)
    name = roles.roles["worker"].name
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{name}" NOLOGIN')
    try:
        with pytest.raises(catalog.DatabaseRolesError, match="not created for this policy role"):
            catalog.apply(engine, roles)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP ROLE "{name}"')


@pytest.mark.postgresql
def test_row_security_policies_leave_other_roles_their_rows(engine: sa.Engine, namespace: str) -> None:
    roles = compiled(namespace=namespace)
    catalog.apply(engine, roles)
    other = f"{namespace}_reporting"
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{other}" NOLOGIN')
        conn.exec_driver_sql(f'GRANT SELECT ON task_instance TO "{other}"')
        conn.exec_driver_sql(f'GRANT "{other}" TO session_user')
    try:
        with engine.begin() as conn:
            total = conn.execute(sa.text("SELECT count(*) FROM task_instance")).scalar()
            conn.exec_driver_sql(f'SET LOCAL ROLE "{other}"')
            assert conn.execute(sa.text("SELECT count(*) FROM task_instance")).scalar() == total > 2
        with engine.begin() as conn:
            conn.exec_driver_sql(f'SET LOCAL ROLE "{roles.roles["worker"].name}"')
            conn.execute(sa.text("SELECT set_config('dbsession.claim_dag_id', '[\"etl\"]', true), "
                                 "set_config('dbsession.claim_run_id', '[\"r1\"]', true)"))
            assert conn.execute(sa.text("SELECT count(*) FROM task_instance")).scalar() == 2
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{other}"')
            conn.exec_driver_sql(f'DROP ROLE "{other}"')


@pytest.mark.postgresql
def test_without_row_security_only_inert_policies_are_created(engine: sa.Engine, namespace: str) -> None:
    catalog.apply(engine, compiled(namespace=namespace, row_security=False))
    with engine.connect() as conn:
        assert set(conn.execute(sa.text("SELECT pg_get_expr(polqual, polrelid) FROM pg_policy")).scalars()) == {"true"}
        assert not any(conn.execute(sa.text("SELECT relrowsecurity FROM pg_class")).scalars())


@pytest.mark.postgresql
def test_two_namespaces_on_one_database_keep_their_rows(engine: sa.Engine, namespace: str) -> None:
    """One DB-API without row security, another with it on the same tables: switching row-level
    security on for the second must not hide every row from the first's roles."""
    plain, filtered = compiled(namespace=namespace, row_security=False), compiled(namespace=namespace + "b")
    catalog.apply(engine, plain)
    try:
        catalog.apply(engine, filtered)
        assert catalog.verify(engine, plain) == [] and catalog.verify(engine, filtered) == []
        with engine.begin() as conn:
            total = conn.execute(sa.text("SELECT count(*) FROM task_instance")).scalar()
            conn.exec_driver_sql(f'SET LOCAL ROLE "{plain.roles["worker"].name}"')
            assert conn.execute(sa.text("SELECT count(*) FROM task_instance")).scalar() == total
    finally:
        catalog.drop(engine, filtered)
    with engine.connect() as conn:  # the second gone, row security is off again
        assert not any(conn.execute(sa.text("SELECT relrowsecurity FROM pg_class")).scalars())


# -- the command ------------------------------------------------------------------------------------
@pytest.mark.postgresql
def test_the_db_roles_command_prints_applies_verifies_and_drops(engine: sa.Engine, namespace: str) -> None:
    runner = CliRunner()
    base = ["db-roles", "--database-url", engine.url.render_as_string(hide_password=False), "--metadata",
            "tests.security._policy_support:Base.metadata", "--policy", str(POLICY_FILE), "--namespace", namespace]
    printed = runner.invoke(main, base)
    assert printed.exit_code == 0, printed.output
    assert "CREATE ROLE" in printed.output and "-- policy role 'worker' runs as dbs_" in printed.output
    assert runner.invoke(main, [*base, "--verify"]).exit_code == 1
    applied = runner.invoke(main, [*base, "--apply"])
    assert applied.exit_code == 0 and "GRANT SELECT (id, key, val) ON TABLE variable" in applied.output
    verified = runner.invoke(main, [*base, "--verify"])
    assert verified.exit_code == 0 and "match the policy" in verified.output
    assert "nothing to do" in runner.invoke(main, base).output
    dropped = runner.invoke(main, [*base, "--drop"])
    assert dropped.exit_code == 0 and "DROP ROLE" in dropped.output
    assert _namespace_roles(engine, namespace) == []


def test_the_db_roles_command_refuses_other_databases(tmp_path: Any) -> None:
    result = CliRunner().invoke(main, ["db-roles", "--database-url", f"sqlite:///{tmp_path / 'x.db'}",
                                       "--metadata", "tests.security._policy_support:Base.metadata"])
    assert result.exit_code == 1 and "PostgreSQL only" in result.output
