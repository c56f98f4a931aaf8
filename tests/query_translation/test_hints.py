"""Hints and prefixes on the wire: what renders is judged by the server, index hints are structure.

The differential proof (each form run directly and through the DB-API on SQLite, PostgreSQL and
MariaDB) is the corpus module ``tests/conformance/corpus/hints.py``; here the grammar, the
decoder's verdicts (raw SQL or not) for every dialect, hostile documents and the policy's message.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from dbapi_server import DefaultPolicy, PolicyViolation
from dbapi_server.auth import Principal
from query_translation import from_wire, to_wire
from query_translation._hints import IndexHint, parse_index_hints

MD = sa.MetaData()
TI = sa.Table("task_instance", MD, sa.Column("dag_id", sa.String(50), primary_key=True),
              sa.Column("task_id", sa.String(50), primary_key=True), sa.Column("state", sa.String(20)),
              sa.Index("ti_state", "state"), sa.UniqueConstraint("task_id", "state", name="uq_task_state"))
NO_PK = sa.Table("log", MD, sa.Column("line", sa.Text))

SQLITE, PG, MYSQL = sqlite.pysqlite.dialect(), postgresql.psycopg.dialect(), mysql.pymysql.dialect()
MARIADB = mysql.pymysql.dialect(is_mariadb=True)
MARIADB.name = "mariadb"  # as a mariadb:// URL names it


@pytest.mark.parametrize(("text", "parsed"), [
    ("USE INDEX (PRIMARY)", [IndexHint("USE", None, ("PRIMARY",))]),
    ("use key(primary)", [IndexHint("USE", None, ("primary",))]),
    ("USE INDEX ()", [IndexHint("USE", None, ())]),
    ("FORCE INDEX FOR ORDER BY (a, `b c`) IGNORE KEY FOR JOIN (d)",
     [IndexHint("FORCE", "ORDER BY", ("a", "b c")), IndexHint("IGNORE", "JOIN", ("d",))]),
    ("  IGNORE INDEX  FOR   GROUP\nBY ( x ,y )  ", [IndexHint("IGNORE", "GROUP BY", ("x", "y"))]),
])
def test_index_hint_grammar(text: str, parsed: list[IndexHint]) -> None:
    assert parse_index_hints(text) == parsed


@pytest.mark.parametrize("text", [
    "", "ONLY", "USE INDEX", "FORCE INDEX ()", "IGNORE INDEX ()", "USE INDEXES (a)", "USE INDEX (a,)",
    "USE INDEX (a) ; DROP TABLE x", "USE INDEX (a) -- x", "USE INDEX (a) /* x */", "USE INDEX (a) # x",
    "USE INDEX (`a`b`)", "USE INDEX (a b)", "USE INDEX (1a)", "USE INDEX (a) FOR JOIN",
    "USE INDEX FOR SELECT (a)", "USE INDEX (%(name)s)", "USE INDEX (a)), (SELECT 1", "USE INDEX (ä)",
])
def test_anything_else_is_not_an_index_hint(text: str) -> None:
    assert parse_index_hints(text) is None


def _literal_sql(stmt: Any, dialect: sa.Dialect) -> list[str]:
    _, info = from_wire(to_wire(stmt), MD, dialect=dialect)
    return info.literal_sql


@pytest.mark.parametrize(("text", "raw"), [
    ("USE INDEX (PRIMARY)", False), ("force index for join (ti_state, UQ_TASK_STATE)", False),
    ("USE INDEX ()", False), ("USE INDEX (`ti_state`)", False),
    ("USE INDEX (no_such_index)", True), ("USE INDEX (PRIMARY) /* x */", True), ("ONLY", True),
])
@pytest.mark.parametrize("dialect", [MYSQL, MARIADB], ids=["mysql", "mariadb"])
def test_mysql_index_hints_are_structure_when_they_name_known_indexes(text: str, raw: bool,
                                                                      dialect: sa.Dialect) -> None:
    stmt = sa.select(TI.c.dag_id).with_hint(TI, text, dialect_name=dialect.name)
    assert _literal_sql(stmt, dialect) == ([text] if raw else [])
    aliased = TI.alias("t")  # the hint on an alias of the table: the table's indexes
    assert _literal_sql(sa.select(aliased.c.dag_id).with_hint(aliased, text), dialect) == ([text] if raw else [])


def test_primary_needs_a_primary_key() -> None:
    assert _literal_sql(sa.select(NO_PK.c.line).with_hint(NO_PK, "USE INDEX (PRIMARY)"), MYSQL) == [
        "USE INDEX (PRIMARY)"]


def test_a_hint_on_a_subquery_is_raw_sql() -> None:
    subq = sa.select(TI.c.dag_id).subquery()
    assert _literal_sql(sa.select(subq.c.dag_id).with_hint(subq, "USE INDEX (PRIMARY)"), MYSQL) == [
        "USE INDEX (PRIMARY)"]


@pytest.mark.parametrize("dialect", [SQLITE, PG, MYSQL], ids=lambda d: d.name)
def test_hints_and_prefixes_for_another_dialect_are_not_raw_sql(dialect: sa.Dialect) -> None:
    other = "oracle"
    stmt = (sa.select(TI.c.dag_id).with_hint(TI, "anything at all", dialect_name=other)
            .with_statement_hint("OPTION (x)", dialect_name=other).prefix_with("/*+ x */", dialect=other)
            .suffix_with("FOR x", dialect=other))
    assert _literal_sql(stmt, dialect) == []
    assert _literal_sql(sa.update(TI).values(state="x").with_hint("y", dialect_name=other)
                        .prefix_with("LOW_PRIORITY", dialect=other), dialect) == []


def test_sqlite_renders_no_from_hint_whatever_it_names() -> None:
    assert _literal_sql(sa.select(TI.c.dag_id).with_hint(TI, "anything"), SQLITE) == []
    assert _literal_sql(sa.select(TI.c.dag_id).with_hint(TI, "anything"), MYSQL) == ["anything"]


def test_postgresql_only_is_structure() -> None:
    assert _literal_sql(sa.select(TI.c.dag_id).with_hint(TI, "ONLY", dialect_name="postgresql"), PG) == []
    assert _literal_sql(sa.select(TI.c.dag_id).with_hint(TI, "USE INDEX (PRIMARY)"), PG) == ["USE INDEX (PRIMARY)"]


@pytest.mark.parametrize("dialect", [SQLITE, PG, MYSQL], ids=lambda d: d.name)
def test_prefixes_suffixes_and_statement_hints_that_render_are_raw_sql(dialect: sa.Dialect) -> None:
    stmt = (sa.select(TI.c.dag_id).prefix_with("HIGH_PRIORITY", dialect=dialect.name)
            .suffix_with("FOR x").with_statement_hint("MAX_EXECUTION_TIME(1)"))
    assert sorted(_literal_sql(stmt, dialect)) == ["FOR x", "HIGH_PRIORITY", "MAX_EXECUTION_TIME(1)"]
    insert = sa.insert(TI).values(dag_id="d", task_id="t").prefix_with("OR IGNORE")
    assert _literal_sql(insert, dialect) == ["OR IGNORE"]


def test_a_hostile_document_cannot_smuggle_sql_as_an_index_hint() -> None:
    document = to_wire(sa.select(TI.c.dag_id).with_hint(TI, "USE INDEX (PRIMARY)", dialect_name="mysql"))
    document["statement"]["hints"][0]["text"] = "USE INDEX (PRIMARY) UNION SELECT password FROM users"
    _, info = from_wire(document, MD, dialect=MYSQL)
    assert info.literal_sql == ["USE INDEX (PRIMARY) UNION SELECT password FROM users"]
    document["statement"]["hints"][0]["dialect"] = "*"  # the client's word about the dialect is no help
    assert from_wire(document, MD, dialect=MYSQL)[1].literal_sql == [document["statement"]["hints"][0]["text"]]


def test_the_rebuilt_statement_compiles_to_the_clients_sql() -> None:
    stmt = (sa.select(TI.c.dag_id).with_hint(TI, "USE INDEX (PRIMARY)", dialect_name="mysql")
            .with_hint(TI, "ONLY", dialect_name="postgresql").prefix_with("HIGH_PRIORITY", dialect="mysql")
            .suffix_with("FOR x", dialect="mssql").with_statement_hint("OPTION (y)", dialect_name="mssql"))
    for dialect in (SQLITE, PG, MYSQL):
        rebuilt, _ = from_wire(to_wire(stmt), MD, dialect=dialect)
        assert str(rebuilt.compile(dialect=dialect)) == str(stmt.compile(dialect=dialect))
    update = sa.update(TI).values(state="x").with_hint("FORCE INDEX (ti_state)", dialect_name="mysql")
    rebuilt, info = from_wire(to_wire(update), MD, dialect=MYSQL)
    assert str(rebuilt.compile(dialect=MYSQL)) == str(update.compile(dialect=MYSQL)) and info.literal_sql == []
    assert "FORCE INDEX (ti_state)" in str(rebuilt.compile(dialect=MYSQL))


def test_the_policy_refusal_names_the_construct_and_quotes_the_fragment() -> None:
    # the caller's own fragment is the one echo an answer may carry (docs/security.md)
    _, info = from_wire(to_wire(sa.select(TI.c.dag_id).with_hint(TI, "USE INDEX (nope)")), MD, dialect=MYSQL)
    with pytest.raises(PolicyViolation, match=r"Raw SQL text is not allowed .*\(the with_hint\(\) on "
                                              r"'task_instance' \(not an index hint.*The raw SQL: "
                                              r"'USE INDEX \(nope\)'"):
        DefaultPolicy().check(info, Principal("t", {}))
    DefaultPolicy(allow_raw_sql=True).check(info, Principal("t", {}))
    for stmt, origin in [(sa.select(TI.c.dag_id).prefix_with("HIGH_PRIORITY"), "a prefix_with()"),
                         (sa.select(TI.c.dag_id).suffix_with("FOR x"), "a suffix_with()"),
                         (sa.select(TI.c.dag_id).with_statement_hint("x"), "a with_statement_hint()"),
                         (sa.select(TI.c.dag_id).where(sa.text("1 = 1")), "a text() clause")]:
        _, info = from_wire(to_wire(stmt), MD, dialect=MYSQL)
        with pytest.raises(PolicyViolation, match=re.escape(f"({origin})")):
            DefaultPolicy().check(info, Principal("t", {}))
