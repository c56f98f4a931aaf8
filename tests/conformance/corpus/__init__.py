"""The operations corpus.

Every operation takes a session and returns anything (ORM objects, rows,
scalars, lists, tuples); it may raise, in which case the harness compares the
exception class.  An exception raised on the reference side must be declared
with ``raises=`` (otherwise a typo in an operation would pass as "both sides
raised AttributeError").

* ``writes=True``: the operation may change the database; it commits or rolls
  back itself, the harness then compares the fingerprints of both databases and
  re-seeds them before the next test.  Read operations (the default) must leave
  the database untouched; the harness checks that too.
* ``backends={...}``: the operation only runs on those backends.

Every multi-row query has an ORDER BY: results must be deterministic.
Names are ``<category>.<what>``; categories: filter, query, select, get, order,
agg, join, subq, load, write, error, types, txn, hint.

The operations live in one module per category (registration order = the
order below = the order of the tests); ``OPS`` maps name -> :class:`Op`.
"""

from __future__ import annotations

from . import (  # noqa: F401 - imported for their @op registrations
    aggregates,
    dml,
    errors,
    filters,
    gets,
    hints,
    joins,
    loading,
    ordering,
    queries,
    selects,
    sql_functions,
    subqueries,
    surface_errors,
    surface_loading,
    surface_session,
    surface_statements,
    surface_types,
    transactions,
    unit_of_work,
    values,
)
from ._registry import ALL, OPS, Op, op

__all__ = ["ALL", "OPS", "Op", "op"]
