"""SQL that compiles the same in every process: SQLAlchemy's set-ordered compile state, put in order.

The client compiles a statement, the DB-API rebuilds it from its structure and compiles it again,
and the two SQL texts must be the same (their fingerprints are compared at the cursor, and the
client reads the rows by its own compiled column order). Both processes run the same SQLAlchemy,
so the texts agree - except where SQLAlchemy iterates a ``set`` of columns while compiling: a
column hashes by its ``id()``, so such an order is the order of the objects' memory addresses,
which differs between two processes (and between two runs).

Known place (SQLAlchemy 2.0 and 2.1): ``crud._get_returning_modifiers`` returns the columns of
``return_defaults()`` as a ``set``, and ``crud._setup_delete_return_defaults`` extends the
RETURNING list with it as it is. The ORM's bulk DELETE with ``synchronize_session`` "fetch" (what
"auto" picks when it cannot evaluate the criteria in Python, e.g. ``IN (SELECT ...)``) calls
``return_defaults(*table.primary_key)``: with a composite primary key the RETURNING columns came
out in a per-process order (``run_id, task_id, dag_id, map_index`` in one process, ``dag_id,
task_id, run_id, map_index`` in the other) and the DB-API refused the statement as not matching.
INSERT and UPDATE only test membership in that set (they walk the table's columns in order).

:func:`install` wraps ``_get_returning_modifiers`` so the set is an ordered set, in the order the
statement names the columns (``return_defaults(*cols)``; the table's column order when it names
none). Nothing else changes: the same columns, only a fixed order, which SQLAlchemy leaves
unspecified and reads result rows by column (not position) anyway. Both sides install it when
``query_translation`` is imported. ``tests/query_translation/test_stable_compile.py`` compiles in
processes of different hash seeds and addresses and compares.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import util
from sqlalchemy.sql import crud

__all__ = ["install"]


def install() -> None:
    """Make ``return_defaults()`` columns compile in statement order (idempotent)."""
    original: Any = crud._get_returning_modifiers
    if getattr(original, "_dbs_stable", False):
        return

    @functools.wraps(original)
    def _get_returning_modifiers(compiler: Any, stmt: Any, compile_state: Any, toplevel: Any) -> Any:
        modifiers = original(compiler, stmt, compile_state, toplevel)
        defaults = modifiers[2]
        if not defaults:
            return modifiers
        named = stmt._return_defaults_columns or tuple(stmt.table.c)
        ordered = util.OrderedSet(c for c in named if c in defaults)
        if len(ordered) != len(defaults):  # not what SQLAlchemy built it from: leave it alone
            return modifiers
        return (*modifiers[:2], ordered, *modifiers[3:])

    _get_returning_modifiers._dbs_stable = True  # type: ignore[attr-defined]
    crud._get_returning_modifiers = _get_returning_modifiers
