"""Runners for the async corpus: an operation through an async session, in the corpus's event loop.

:func:`run_op_via_run_sync` runs a sync corpus operation as async application code runs sync ORM
code: ``await session.run_sync(op)``. :func:`run_async_op` runs an async-only operation
(:mod:`.async_ops`). Both return the sync harness's :class:`~.harness.Outcome`, canonicalised
while the session is still open, and always close the session. They run in *runner*'s loop (one
long-lived loop, as an application has; ``tests/dbsession/test_async_*`` cover fresh loops).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from .canonical import canonical, qualname
from .corpus import Op
from .harness import Outcome

AsyncSessionFactory = Callable[[], AsyncSession]


def _outcome(produce: Callable[[], Any]) -> Outcome:
    try:
        result = produce()
    except Exception as exc:
        return Outcome("raised", qualname(type(exc)), exc)
    try:
        return Outcome("ok", canonical(result))
    except Exception as exc:
        return Outcome("canonical-raised", qualname(type(exc)), exc)


def run_op_via_run_sync(op: Op, make_session: AsyncSessionFactory, *, runner: asyncio.Runner) -> Outcome:
    """The sync operation inside ``await session.run_sync(...)``."""
    async def main() -> Outcome:
        session = make_session()
        try:
            outcome: Outcome = await session.run_sync(lambda sync_session: _outcome(lambda: op.fn(sync_session)))
            return outcome
        finally:
            await session.close()

    return runner.run(main())


def run_async_op(op: Op, make_session: AsyncSessionFactory, *, runner: asyncio.Runner) -> Outcome:
    """The async operation, awaited; its result canonicalised inside ``run_sync`` (no lazy I/O there)."""
    async def main() -> Outcome:
        session = make_session()
        try:
            try:
                result = await op.fn(session)  # type: ignore[arg-type]
            except Exception as exc:
                return Outcome("raised", qualname(type(exc)), exc)
            outcome: Outcome = await session.run_sync(lambda _: _outcome(lambda: result))
            return outcome
        finally:
            await session.close()

    return runner.run(main())
