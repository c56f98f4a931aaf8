"""Fixtures of the fault-injection suite: a PostgreSQL database with the ledger table, clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dbsession import DBSession, guard
from dbsession.session import release_api_host

from . import processes
from .models import Base, Entry


@pytest.fixture(autouse=True)
def _isolation_reset(isolation_reset: None) -> None:
    """Clients here are isolated by argument; nothing process-wide is left behind."""


@pytest.fixture(scope="module")
def database(pg_url: sa.URL) -> Iterator[sa.Engine]:
    """The trusted side's view of the test database, with the ledger table."""
    engine = guard.exempt(sa.create_engine(pg_url))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def ref(request: pytest.FixtureRequest) -> str:
    import uuid

    return f"{request.node.name[:20]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def clients() -> Iterator[list[DBSession]]:
    """Isolated sessions a test opens; closed and their pools released afterwards."""
    opened: list[DBSession] = []
    yield opened
    for session in opened:
        try:
            session.close()
        except sa.exc.OperationalError:
            pass  # its server was killed by the test, or is gone: nothing left to roll back
    for session in opened:
        release_api_host(session.info["api_host"])


def isolated(clients: list[DBSession], api_host: str, **settings: Any) -> DBSession:
    session = DBSession(database_access_isolation=True, database_api_host=api_host, token=processes.token(),
                        **settings)
    session.info["api_host"] = api_host
    clients.append(session)
    return session


def entries(engine: sa.Engine, ref: str) -> list[tuple[str, int]]:
    """What is committed for *ref* (the trusted side reads the database directly)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(Entry.ref, Entry.amount).where(Entry.ref.startswith(ref)).order_by(Entry.ref))
        return [(r, a) for r, a in rows]
