"""SQL compiled from the same structure is the same text whatever the objects' addresses.

The client and the DB-API compile one statement in two processes, from two sets of ``Column``
objects. Here the two processes are stood in for by many copies of one table in this process, each
at other addresses: without ``query_translation._stable_compile``, a DELETE's
``return_defaults()`` put its RETURNING columns in the order of their ``id()`` (issue 11; the
out-of-process proof is the corpus operation ``write.delete_composite_pk_in_subquery_auto``).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session

import query_translation  # noqa: F401 - installs the stable order, as both sides do
from query_translation import _stable_compile

PK = ("dag_id", "task_id", "run_id", "map_index")


def _dialects() -> list[sa.Dialect]:
    dialects: list[sa.Dialect] = [postgresql.psycopg.dialect(), sqlite.pysqlite.dialect(), mysql.pymysql.dialect()]
    for dialect in dialects[1:]:
        dialect.delete_returning = True  # as initialize() finds on SQLite >= 3.35 and MariaDB >= 10.5
    return dialects


def _copies(n: int = 40) -> list[sa.Table]:
    tables, ballast = [], []
    for i in range(n):
        ballast.append([object() for _ in range(i)])  # other addresses for each copy
        tables.append(sa.Table(
            "task_instance", sa.MetaData(), *(sa.Column(name, sa.String(50), primary_key=True) for name in PK[:3]),
            sa.Column("map_index", sa.Integer, primary_key=True, autoincrement=False), sa.Column("state", sa.String(20))))
    return tables


def _returning(sql: str) -> str:
    return sql.split("RETURNING", 1)[1].strip().replace("task_instance.", "")


@pytest.mark.parametrize("dialect", _dialects(), ids=lambda d: d.name)
def test_delete_return_defaults_follow_the_statement_order(dialect: sa.Dialect) -> None:
    for table in _copies():
        for cols in (table.primary_key, reversed(list(table.primary_key))):
            named = list(cols)
            stmt = sa.delete(table).where(table.c.state == "x").return_defaults(*named)
            got = _returning(str(stmt.compile(dialect=dialect)))
            assert got == ", ".join(c.key for c in named)


def test_orm_bulk_delete_fetch_returns_the_primary_key_in_mapper_order() -> None:
    # what the ORM compiles for delete(TI).where(TI.dag_id.in_(select(...))) with
    # synchronize_session "auto" on a database with DELETE ... RETURNING
    statements: set[str] = set()
    for table in _copies(20):
        class Base(DeclarativeBase):
            pass

        class TI(Base):
            __table__ = table

        engine = sa.create_engine("sqlite://")
        table.metadata.create_all(engine)
        sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.add(a[2]))
        with Session(engine) as session:
            session.execute(sa.delete(TI).where(TI.dag_id.in_(sa.select(table.c.dag_id).where(table.c.state == "x"))))
        engine.dispose()
    assert {s for s in statements if s.startswith("DELETE")} == {
        "DELETE FROM task_instance WHERE task_instance.dag_id IN (SELECT task_instance.dag_id \nFROM task_instance \n"
        "WHERE task_instance.state = ?) RETURNING dag_id, task_id, run_id, map_index"}


def test_install_is_idempotent() -> None:
    from sqlalchemy.sql import crud

    before = crud._get_returning_modifiers
    _stable_compile.install()
    assert crud._get_returning_modifiers is before
