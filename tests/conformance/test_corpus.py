"""One test per (backend, operation): the differential conformance check.

Each operation runs on a fresh plain ``Session`` for database A (the reference)
and on a session from ``isolated_sessionmaker`` for database B (the side under
test, see conftest.py).  Outcomes (canonical result or exception class) must be
identical; afterwards both databases must hold identical data (write
operations) or still hold exactly the seeded data (read operations).
"""

from __future__ import annotations

import pytest

from .conftest import DatabasePair
from .corpus import OPS
from .harness import compare_op


@pytest.mark.parametrize("op_name", list(OPS))
def test_op(
    op_name: str,
    backend: str,
    conformance_dbs: DatabasePair,
    reference_sessionmaker,
    isolated_sessionmaker,
) -> None:
    op = OPS[op_name]
    if not op.runs_on(backend):
        pytest.skip(f"{op_name} only runs on {', '.join(sorted(op.backends or ()))}")
    dbs = conformance_dbs
    clean = False
    try:
        cmp = compare_op(
            op,
            reference_sessionmaker,
            isolated_sessionmaker,
            dbs.a.engine,
            dbs.b.engine,
            baseline=dbs.baseline,
        )
        clean = not op.writes and not cmp.problems
    finally:
        if not clean:  # re-seed both databases before the next test
            dbs.dirty = True
    if cmp.problems:  # the traceback would only show the harness: report the differences alone
        pytest.fail(f"[{backend}] {op_name}:\n" + "\n\n".join(cmp.problems), pytrace=False)
