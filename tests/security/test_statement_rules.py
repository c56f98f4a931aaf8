"""Issue 12, findings 1, 2, 3 and 6: each escape refused by the statement check, on a real server.

``dbapi-server serve`` runs in its own process with the example worker policy
(``examples/policies/airflow_worker.toml``) on ``_policy_support``'s schema, on SQLite, PostgreSQL
and MariaDB, without the database wall (``DBAPI_DB_ROLES`` off): what is refused here is refused by
the DB-API's own check. Every escape must be refused with 403 before it runs (on main, each one
either answered with hidden values, wrote to a read-only table, or reached the database, which
refused it - or not - by its own rules), the database must be unchanged, and no answer may hold a
hidden value. Next to each escape, the same shape over what the worker may read still works and
answers what plain SQLAlchemy answers on the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.sql import elements

from dbsession import DBSession, PolicyViolationError
from tests.servers import DBAPIProcess, dbapi_process

from ._policy_support import (
    CONF,
    DESCRIPTION,
    MINE,
    POLICY_FILE,
    DagRun,
    TaskInstance,
    Variable,
    XCom,
    make_engine,
)

Stmt = Callable[[], Any]
METADATA = "tests.security._policy_support:Base.metadata"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql),
                                        pytest.param("mariadb", marks=pytest.mark.mysql)])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[str, sa.Engine, DBAPIProcess]]:
    engine = make_engine(request.param, request, tmp_path_factory)
    try:
        with dbapi_process(engine.url, METADATA, policy=POLICY_FILE, env={"DBAPI_DB_ROLES": "off"}) as server:
            yield request.param, engine, server
    finally:
        engine.dispose()


def _worker(server: DBAPIProcess) -> DBSession:
    return DBSession(database_access_isolation=True, database_api_host=server.url,
                     token=server.mint(role="worker", **MINE))


def _snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {t.name: sorted(tuple(r) for r in conn.execute(sa.select(t)))
                for t in (Variable.__table__, XCom.__table__, TaskInstance.__table__, DagRun.__table__)}  # type: ignore[attr-defined]


def _refused(served: tuple[str, sa.Engine, DBAPIProcess], stmt: Stmt, *, commit: bool = True) -> PolicyViolationError:
    """*stmt* refused with 403 by the policy; nothing changed, nothing hidden in the message."""
    _, engine, server = served
    before = _snapshot(engine)
    with _worker(server) as s:
        with pytest.raises(PolicyViolationError) as refused:
            s.execute(stmt()).all()
        if commit:
            s.commit()
    assert refused.value.status == 403
    assert refused.value.wall is None  # the DB-API's own check, not the database
    for secret in (DESCRIPTION, CONF, "FROM "):  # no hidden value, no SQL
        assert secret not in str(refused.value)
    assert _snapshot(engine) == before
    return refused.value


def _same_as_plain(served: tuple[str, sa.Engine, DBAPIProcess], stmt: Stmt) -> list[tuple[Any, ...]]:
    _, engine, server = served
    with _worker(server) as s:
        got = [tuple(r) for r in s.execute(stmt()).all()]
    with engine.connect() as conn:
        want = [tuple(r) for r in conn.execute(stmt()).all()]
    assert got == want
    return got


# -- finding 1: writes through a data-modifying CTE ------------------------------------------------
def _dml_cte(kind: str, table: Any = Variable) -> Any:
    if kind == "update":
        dml: Any = sa.update(table).where(table.id == 1).values(**({"val": "x"} if table is Variable else
                                                                     {"state": "x"}))
    elif kind == "insert":
        dml = sa.insert(table).values(id=77, key="k77", val="v") if table is Variable else \
            sa.insert(table).values(id=77, ti_id=1, key="k", value="v", **MINE)
    else:
        dml = sa.delete(table).where(table.id == 2)
    return sa.select(dml.returning(table.id).cte("u").c.id)


@pytest.mark.parametrize("kind", ["update", "insert", "delete"])
def test_a_data_modifying_cte_into_a_read_only_table_is_a_refused_write(served: Any, kind: str) -> None:
    refused = _refused(served, lambda: _dml_cte(kind))
    assert refused.table == "variable" and refused.action == kind


@pytest.mark.parametrize("kind", ["insert", "delete"])
def test_a_data_modifying_cte_into_a_row_filtered_table_is_refused(served: Any, kind: str) -> None:
    # xcom grants insert and delete, under a row filter only the top-level statement can carry
    refused = _refused(served, lambda: _dml_cte(kind, XCom))
    assert refused.table == "xcom"


def test_a_data_modifying_cte_nested_in_an_insert_from_select(served: Any) -> None:
    def stmt() -> Any:
        upd = sa.update(Variable).where(Variable.id == 1).values(val="x").returning(Variable.id).cte("u")
        return sa.insert(XCom).from_select(["id", "ti_id", "dag_id", "run_id", "key"],
                                           sa.select(upd.c.id + 500, sa.literal(1), sa.literal("etl"),
                                                     sa.literal("r1"), sa.literal("k")))
    _, engine, server = served
    before = _snapshot(engine)
    with _worker(server) as s, pytest.raises(Exception) as refused:
        s.execute(stmt())
        s.commit()
    assert getattr(refused.value, "status", None) in (400, 403)  # "writes two tables", or the policy
    assert _snapshot(engine) == before


# -- finding 2: hidden columns through a textual label reference -----------------------------------
def _tlr(name: str) -> Any:
    return elements._textual_label_reference(name)


TEXTUAL: dict[str, Stmt] = {
    "select_list": lambda: sa.select(Variable.key, _tlr("description")).select_from(Variable),
    "where_like_oracle": lambda: sa.select(Variable.key).where(sa.Grouping(_tlr("description")).like("SECRET%")),
    "order_by": lambda: sa.select(Variable.key).order_by("description"),
    "group_by": lambda: sa.select(sa.func.count()).select_from(Variable).group_by("description"),
    "own_run_conf": lambda: sa.select(DagRun.id, _tlr("conf")).select_from(DagRun),
    "conf_order_by": lambda: sa.select(DagRun.id).order_by("conf"),
    # a label of the select list named like a hidden column, used by name where the database
    # resolves names against the FROM columns first (GROUP BY on PostgreSQL and MariaDB, WHERE)
    "label_named_like_hidden_in_group_by": lambda: sa.select(Variable.val.label("description"), sa.func.count())
    .group_by(elements._label_reference(Variable.val.label("description"))),
    "label_named_like_hidden_in_where": lambda: sa.select(Variable.val.label("description"))
    .where(sa.Grouping(_tlr("description")).like("SECRET%")),
}


@pytest.mark.parametrize("route", TEXTUAL)
def test_a_hidden_column_by_name(served: Any, route: str) -> None:
    _refused(served, TEXTUAL[route])


def test_distinct_on_a_hidden_column_by_name(served: Any) -> None:
    if served[0] != "postgresql":
        pytest.skip("DISTINCT ON is PostgreSQL's")
    from sqlalchemy.dialects.postgresql import distinct_on

    _refused(served, lambda: sa.select(Variable.key).ext(distinct_on(_tlr("description"))))
    _refused(served, lambda: sa.select(Variable.key).ext(distinct_on(sa.column("description"))))


def test_names_of_the_select_list_still_work(served: Any) -> None:
    assert _same_as_plain(served, lambda: sa.select(Variable.key.label("k"), Variable.val).order_by("k"))
    assert _same_as_plain(served, lambda: sa.select(Variable.key).order_by(sa.desc("key")))
    assert _same_as_plain(served, lambda: sa.select(Variable.val, sa.func.count().label("n"))
                          .group_by(Variable.val).order_by("n", Variable.val))


# -- finding 3: unqualified and differently-cased names ----------------------------------------------
BARE: dict[str, Stmt] = {
    "upper_case": lambda: sa.select(Variable.key, sa.column("DESCRIPTION")).select_from(Variable),
    "mixed_case_in_where": lambda: sa.select(Variable.key).select_from(Variable)
    .where(sa.column("DeScRiPtIoN").like("SECRET%")),
    "conf_capitalized": lambda: sa.select(DagRun.id, sa.column("Conf")).select_from(DagRun),
    "whole_row_by_table_name": lambda: sa.select(sa.column("variable")).select_from(Variable),
    "whole_row_by_alias_name": lambda: sa.select(sa.column("v")).select_from(sa.orm.aliased(Variable, name="v")),
    "whole_row_in_where": lambda: sa.select(Variable.key).where(sa.cast(sa.column("variable"), sa.String)
                                                                   .like("%SECRET%")),
    "accented": lambda: sa.select(Variable.key, sa.column("déscription")).select_from(Variable),
    "unknown_name": lambda: sa.select(Variable.key, sa.column("rowid")).select_from(Variable),
    "system_column": lambda: sa.select(Variable.key, sa.column("xmin")).select_from(Variable),
    "qualified_unknown_name": lambda: sa.select(sa.column("text", _selectable=Variable.__table__)),  # type: ignore[attr-defined]
    "qualified_other_case": lambda: sa.select(sa.column("DESCRIPTION", _selectable=Variable.__table__)),  # type: ignore[attr-defined]
    "table_as_a_value": lambda: sa.select(sa.Grouping(Variable.__table__)),  # type: ignore[attr-defined]
    "table_in_select_list": lambda: sa.select(Variable.__table__),  # type: ignore[attr-defined]
    "correlated_from_outer": lambda: sa.select(Variable.key).where(
        sa.select(XCom.id).where(sa.column("description") != "").exists()),
}


@pytest.mark.parametrize("route", BARE)
def test_a_name_the_database_resolves(served: Any, route: str) -> None:
    _refused(served, BARE[route])


def test_bare_names_of_readable_columns_still_work(served: Any) -> None:
    assert _same_as_plain(served, lambda: sa.select(Variable.key, sa.column("val")).select_from(Variable)
                          .order_by(Variable.key))
    assert _same_as_plain(served, lambda: sa.select(Variable.key).where(sa.column("val") == "eu"))


# -- finding 6: raw SQL past the literal check ---------------------------------------------------------
LITERALS: dict[str, Stmt] = {
    "superscript_two": lambda: sa.select(sa.literal_column("²")),
    "arabic_indic_one": lambda: sa.select(Variable.key).where(sa.literal_column("١") == 1),
    "fullwidth_digit": lambda: sa.select(sa.literal_column("１")),
    "text_superscript": lambda: sa.select(sa.text("²")),
    "star_over_a_table": lambda: sa.select(sa.literal_column("*")).select_from(Variable),
    "text_star_over_a_table": lambda: sa.select(sa.text("*")).select_from(Variable),
    "star_in_a_subquery": lambda: sa.select(sa.select(sa.literal_column("*")).select_from(DagRun).subquery()),
}


@pytest.mark.parametrize("route", LITERALS)
def test_raw_sql_that_is_not_a_bare_integer(served: Any, route: str) -> None:
    refused = _refused(served, LITERALS[route])
    assert "Raw SQL" in str(refused)


def test_count_star_exists_and_integers_still_work(served: Any) -> None:
    assert _same_as_plain(served, lambda: sa.select(sa.func.count()).select_from(Variable)) == [(2,)]
    assert _same_as_plain(served, lambda: sa.select(Variable.key).where(
        sa.exists().where(TaskInstance.id == Variable.id)).order_by(Variable.key))
    assert _same_as_plain(served, lambda: sa.select(Variable.key, sa.literal_column("1")).order_by(sa.literal_column("1"),
                                                                                                  Variable.key))


def test_a_label_named_like_a_system_column_used_by_name(served: Any) -> None:
    # found by the property test: PostgreSQL resolves GROUP BY ctid to the system column first
    def stmt() -> Any:
        label = XCom.id.label("ctid")
        return sa.select(label).group_by(elements._label_reference(label))
    _refused(served, stmt)
    _refused(served, lambda: sa.select(Variable.key.label("xmin")).order_by(sa.column("xmin")))
