"""The differential corpus in async mode: ``AsyncDBSession`` against a plain session.

* ``test_op_run_sync``: every sync corpus operation through ``await session.run_sync(op)`` on an
  ``AsyncDBSession`` (database B, the isolated async engine) against a plain sync ``Session``
  (database A) - what async applications do with their sync ORM code.
* ``test_async_op``: the async-only operations (:mod:`.async_ops`: ``stream()``, ``scalars()``,
  ``get()``, ``refresh()``, ``awaitable_attrs`` lazy loads, async transactions) on an
  ``AsyncDBSession`` against a plain ``AsyncSession`` over the async twin of the sync driver.

Outcomes, exception classes and database state must be identical, as in ``test_corpus.py``.

The default ``pytest`` runs every async-only operation and a fixed sample of the sync corpus
through ``run_sync`` (every ``SAMPLE_EVERY``-th operation: each category is represented); the
whole corpus through ``run_sync`` is a CI step of its own (``DBSESSION_ASYNC_CORPUS=full``, about
as long as the sync corpus), to keep the default run within its time budget.
"""

from __future__ import annotations

import asyncio
import os
from functools import partial

import pytest

from .async_ops import ASYNC_OPS
from .conftest import DatabasePair
from .corpus import OPS, Op
from .harness import compare_op, run_op
from .harness_async import run_async_op, run_op_via_run_sync

SAMPLE_EVERY = 20
FULL = os.environ.get("DBSESSION_ASYNC_CORPUS", "") == "full"
RUN_SYNC_OPS = list(OPS) if FULL else list(OPS)[::SAMPLE_EVERY]


def _check(op: Op, backend: str, dbs: DatabasePair, make_a, make_b, run_a, run_b) -> None:
    if not op.runs_on(backend):
        pytest.skip(f"{op.name} only runs on {', '.join(sorted(op.backends or ()))}")
    clean = False
    try:
        cmp = compare_op(op, make_a, make_b, dbs.a.engine, dbs.b.engine, baseline=dbs.baseline,
                         run_a=run_a, run_b=run_b)
        clean = not op.writes and not cmp.problems
    finally:
        if not clean:  # re-seed both databases before the next test
            dbs.dirty = True
    if cmp.problems:
        pytest.fail(f"[{backend}, async] {op.name}:\n" + "\n\n".join(cmp.problems), pytrace=False)


@pytest.mark.parametrize("op_name", RUN_SYNC_OPS)
def test_op_run_sync(op_name: str, backend: str, conformance_dbs: DatabasePair, reference_sessionmaker,
                     isolated_async_sessionmaker, async_runner: asyncio.Runner) -> None:
    _check(OPS[op_name], backend, conformance_dbs, reference_sessionmaker, isolated_async_sessionmaker,
           run_op, partial(run_op_via_run_sync, runner=async_runner))


@pytest.mark.parametrize("op_name", list(ASYNC_OPS))
def test_async_op(op_name: str, backend: str, conformance_dbs: DatabasePair, reference_async_sessionmaker,
                  isolated_async_sessionmaker, async_runner: asyncio.Runner) -> None:
    run = partial(run_async_op, runner=async_runner)
    _check(ASYNC_OPS[op_name], backend, conformance_dbs, reference_async_sessionmaker,
           isolated_async_sessionmaker, run, run)
