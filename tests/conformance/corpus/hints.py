"""Corpus operations - hints and prefixes: ``with_hint``, ``with_statement_hint``, ``prefix_with``, ``suffix_with``.

A hint or prefix for another dialect does not render: it must run unchanged wherever it does not
apply. Where it renders, MySQL / MariaDB index hints naming indexes of the server's metadata (and
PostgreSQL's ``ONLY``) are structure the DB-API validates; anything else is raw SQL text, refused
under the default policy.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from dbsession import PolicyViolationError

from ..models import Dag, DagRun
from ._helpers import TI
from ._registry import op

_NOT_MYSQL = ("sqlite", "postgresql")


@op("hint.proposal_example")
def _(s: Session):
    # the proposal's "complex statement", unchanged: on SQLite and PostgreSQL the hint does not
    # render; on MariaDB it is an index hint naming the primary key
    return (
        s.query(TI.task_id, func.max(TI.start_date).label("max_ti"))
        .with_hint(TI, "USE INDEX (PRIMARY)", dialect_name="mysql")
        .filter(TI.dag_id == "example_bash")
        .group_by(TI.task_id)
        .order_by(TI.task_id)
        .all()
    )


@op("hint.proposal_example_execution_date")
def _(s: Session):
    # the same with the run's execution_date (a column of dag_run here, as in Airflow 2.2+)
    return (
        s.query(TI.task_id, func.max(DagRun.execution_date).label("max_ti"))
        .join(TI.dag_run)
        .with_hint(TI, "USE INDEX (PRIMARY)", dialect_name="mysql")
        .filter(TI.dag_id == "example_bash", TI.try_number >= 1)
        .group_by(TI.task_id)
        .order_by(TI.task_id)
        .all()
    )


@op("hint.index_hints_every_form", backends={"mysql"})
def _(s: Session):
    stmt = (
        select(DagRun.dag_id, DagRun.run_id)
        .with_hint(DagRun, "force index for order by (uq_dag_run_dag_id_run_id) IGNORE KEY FOR JOIN(`PRIMARY`)",
                   dialect_name="mysql")
        .with_hint(Dag, "USE INDEX ()", dialect_name="mysql")
        .join(Dag, Dag.dag_id == DagRun.dag_id)
        .order_by(DagRun.dag_id, DagRun.run_id)
    )
    return s.execute(stmt).all()


@op("hint.star_index_hint_on_mysql", backends={"mysql"})
def _(s: Session):
    return s.scalars(select(Dag.dag_id).with_hint(Dag, "FORCE INDEX (PRIMARY)").order_by(Dag.dag_id)).all()


@op("hint.index_hint_unknown_index_mysql", backends={"mysql"}, raises=DBAPIError,
    refused=PolicyViolationError)
def _(s: Session):
    # not an index the server's metadata has: raw SQL (MariaDB itself says "Key ... doesn't exist")
    return s.scalars(select(Dag.dag_id).with_hint(Dag, "USE INDEX (no_such_index)", dialect_name="mysql")).all()


@op("hint.raw_hint_mysql", backends={"mysql"}, refused=PolicyViolationError)
def _(s: Session):
    # valid SQL that is not an index hint: raw text, whatever it says
    stmt = select(Dag.dag_id).with_hint(Dag, "/* not an index hint */", dialect_name="mysql").order_by(Dag.dag_id)
    return s.scalars(stmt).all()


@op("hint.update_index_hint", writes=True)
def _(s: Session):
    stmt = (update(TI).where(TI.dag_id == "tutorial").values(try_number=TI.try_number + 1)
            .with_hint("FORCE INDEX (PRIMARY)", dialect_name="mysql"))
    n = s.execute(stmt).rowcount
    s.commit()
    return n


@op("hint.only_postgresql", backends={"postgresql"})
def _(s: Session):
    return s.scalars(select(Dag.dag_id).with_hint(Dag, "ONLY", dialect_name="postgresql").order_by(Dag.dag_id)).all()


@op("hint.other_dialects_hints_and_prefixes")
def _(s: Session):
    stmt = (
        select(Dag.dag_id)
        .with_hint(Dag, "WITH (NOLOCK)", dialect_name="mssql")
        .with_hint(Dag, "ONLY", dialect_name="postgresql_not_this_one")
        .with_statement_hint("OPTION (RECOMPILE)", dialect_name="mssql")
        .prefix_with("/*+ FIRST_ROWS */", dialect="oracle")
        .suffix_with("FOR SYSTEM_TIME ALL", dialect="mssql")
        .order_by(Dag.dag_id)
    )
    return s.scalars(stmt).all()


@op("hint.mysql_prefix_elsewhere", backends=_NOT_MYSQL)
def _(s: Session):
    # MySQL's SELECT modifiers and statement hints for MySQL, run on the other databases
    stmt = (select(Dag.dag_id).prefix_with("HIGH_PRIORITY", dialect="mysql")
            .with_statement_hint("MAX_EXECUTION_TIME(1000)", dialect_name="mysql").order_by(Dag.dag_id))
    return s.scalars(stmt).all()


@op("hint.mysql_prefix_on_mysql", backends={"mysql"}, refused=PolicyViolationError)
def _(s: Session):
    # a prefix is raw SQL text where it renders: the raw-SQL policy decides
    return s.scalars(select(Dag.dag_id).prefix_with("HIGH_PRIORITY", dialect="mysql").order_by(Dag.dag_id)).all()


@op("hint.star_prefix", refused=PolicyViolationError)
def _(s: Session):
    return s.scalars(select(Dag.dag_id).prefix_with("DISTINCT").order_by(Dag.dag_id)).all()
