"""The policy judges structure: raw SQL, dangerous functions, denied tables - and SQL in disguise."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from dbapi_server import DefaultPolicy
from query_translation import decode_rows
from tests.servers import running_dbapi

from ._support import RawApi, count_rows, define_items

SECRET = "TOPSECRET-7f3a"

metadata = sa.MetaData()
items = define_items(metadata, unique=False, qty_default=None)
secrets = sa.Table(
    "secrets", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("token", sa.String(40), nullable=False),
)
ROWS = {items: [{"name": "apple", "qty": 1}, {"name": "pear", "qty": 2}], secrets: [{"token": SECRET}]}
POLICY = DefaultPolicy(denied_tables=frozenset({"secrets"}))
SECRETS = [SECRET]  # the leak check covers the secret too
NO_OPEN_TRANSACTIONS = True


def assert_forbidden(reply: object, match: str = "") -> None:
    assert reply.status == 403, reply.body  # type: ignore[attr-defined]
    assert reply.error["code"] == "policy_violation"  # type: ignore[attr-defined]
    assert match in reply.error["message"]  # type: ignore[attr-defined]


# -- raw SQL --------------------------------------------------------------------------------------
def test_text_is_refused(api: RawApi) -> None:
    assert_forbidden(api.execute(sa.text("SELECT 1")), "Raw SQL")


def test_text_write_is_refused_and_runs_nothing(api: RawApi, engine: sa.Engine) -> None:
    txn = api.transaction()
    assert_forbidden(txn.execute(sa.text("DELETE FROM items")), "Raw SQL")
    txn.commit()  # whether or not the refusal opened the transaction, committing it changes nothing
    assert count_rows(engine, items) == 2


@pytest.mark.parametrize("stmt", [
    pytest.param(lambda: sa.select(items.c.id).where(sa.text("1 = 1")), id="text-in-where"),
    pytest.param(lambda: sa.select(sa.literal_column("qty * 2")).select_from(items), id="literal-column"),
    pytest.param(lambda: sa.select(items.c.id).order_by(sa.text("name DESC")), id="text-order-by"),
])
def test_raw_fragments_inside_statements_are_refused(api: RawApi, stmt: Callable[[], object]) -> None:
    assert_forbidden(api.execute(stmt()), "Raw SQL")


@pytest.mark.parametrize("stmt", [
    pytest.param(lambda: sa.select(sa.func.count()).select_from(items), id="count-star"),
    pytest.param(lambda: sa.select(items.c.id).where(sa.exists().where(items.c.qty > 1)), id="exists"),
])
def test_what_sqlalchemy_itself_renders_is_allowed(api: RawApi, stmt: Callable[[], object]) -> None:
    assert api.execute(stmt()).status == 200


def test_raw_sql_allowed_when_the_policy_says_so(engine: sa.Engine, raw_api: Callable[..., RawApi]) -> None:
    with running_dbapi(engine, metadata, policy=DefaultPolicy(allow_raw_sql=True)) as lenient:
        api = raw_api(lenient, secrets=[str(engine.url)])
        outside = api.execute(sa.text("SELECT 40 + 2"))
        txn = api.transaction()  # text may write: it runs in a transaction, like the client sends it
        reply = txn.execute(sa.text("SELECT 40 + 2"))
        assert txn.rollback().status == 200
    assert (outside.status, outside.error["code"]) == (400, "transaction_required")
    assert reply.status == 200, reply.body
    assert decode_rows(reply.json["rows"]) == [(42,)]


# -- functions and tables -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["load_extension", "pg_read_file", "pg_sleep"])
def test_dangerous_functions_are_refused(api: RawApi, name: str) -> None:
    assert_forbidden(api.execute(sa.select(getattr(sa.func, name)("x"))), f"{name}()")


def test_dangerous_function_inside_a_package_or_other_case(api: RawApi) -> None:
    assert_forbidden(api.execute(sa.select(sa.func.LOAD_EXTENSION("x"))), "load_extension()")


def test_ordinary_functions_are_allowed(api: RawApi) -> None:
    reply = api.execute(sa.select(sa.func.upper(items.c.name)).order_by(items.c.id))
    assert decode_rows(reply.json["rows"]) == [("APPLE",), ("PEAR",)]


def test_denied_table_cannot_be_read(api: RawApi) -> None:
    assert_forbidden(api.execute(sa.select(secrets.c.token)), "'secrets'")


def test_denied_table_cannot_be_reached_through_a_subquery(api: RawApi) -> None:
    stmt = sa.select(items.c.name).where(items.c.id.in_(sa.select(secrets.c.id)))
    assert_forbidden(api.execute(stmt), "'secrets'")


def test_denied_table_cannot_be_written(api: RawApi, engine: sa.Engine) -> None:
    txn = api.transaction()
    assert_forbidden(txn.execute(sa.delete(secrets)), "'secrets'")
    txn.commit()
    assert count_rows(engine, secrets) == 1


# -- SQL in disguise ------------------------------------------------------------------------------
def test_custom_operator_cannot_smuggle_sql(api: RawApi) -> None:
    smuggler = items.c.id.op("IS NOT NULL UNION SELECT token FROM secrets WHERE 1 =")(1)
    reply = api.execute(sa.select(items.c.name).where(smuggler))
    assert_forbidden(reply, "custom SQL operator")


@pytest.mark.parametrize("opstring", ["||", "&", "<>", "LIKE"])
def test_ordinary_custom_operators_are_allowed(api: RawApi, opstring: str) -> None:
    right = "%" if opstring == "LIKE" else ("x" if opstring == "||" else 1)
    reply = api.execute(sa.select(items.c.id).where(items.c.name.op(opstring)(right) if isinstance(right, str)
                                                    else items.c.qty.op(opstring)(right)))
    assert reply.status == 200, reply.body


def test_type_arguments_cannot_smuggle_sql(api: RawApi) -> None:
    """A type's constructor arguments are rendered into the SQL: they must be values, not text."""
    precision = "10)) AS n FROM items UNION SELECT token FROM secrets UNION SELECT CAST(1 AS NUMERIC(1"
    reply = api.execute(sa.select(sa.cast(items.c.qty, sa.Numeric(precision=precision))))  # type: ignore[arg-type]
    assert 400 <= reply.status < 500, reply.body


# -- row filters in driver space ------------------------------------------------------------------
class _Upper(sa.TypeDecorator[str]):
    impl = sa.String(20)
    cache_ok = True

    def process_bind_param(self, value: object, dialect: sa.Dialect) -> object:
        return value.upper() if isinstance(value, str) else value


def test_row_filter_claims_are_bound_and_compared_as_the_driver_binds_them() -> None:
    # the client sends processed values and client statements run unprocessed: a claim must be
    # processed by its column's type too, or the filter would compare "alice" with stored "ALICE"
    from dbapi_server import Policy, PolicyViolation, RolePolicy, TableGrant
    from dbapi_server.auth import Principal
    from query_translation import from_wire, to_wire

    md = sa.MetaData()
    notes = sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("owner", _Upper))
    grant = TableGrant(read="*", insert="*", update="*", row_filter={"owner": "owner_claim"})
    policy = Policy({"worker": RolePolicy(tables={"notes": grant})})
    principal = Principal("w", {"role": "worker", "owner_claim": "alice"})
    dialect = sa.create_engine("sqlite://").dialect

    def plan(stmt: object, params: list[dict[str, object]]) -> object:
        statement, info = from_wire(to_wire(stmt), md)
        return policy.plan(statement, info, principal, params=params, dialect=dialect)

    assert plan(sa.select(notes.c.id), [{}]).filter_params == {"_dbs_rf_0": "ALICE"}  # type: ignore[attr-defined]
    plan(sa.insert(notes), [{"id": 1, "owner": "ALICE"}])  # what a client sends for owner="alice"
    with pytest.raises(PolicyViolation, match="must equal the token's 'owner_claim' claim"):
        plan(sa.insert(notes), [{"id": 1, "owner": "alice"}])
