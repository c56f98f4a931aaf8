"""Fixtures of the scale-out suite: DB-API instances sharing one key, HAProxy in front of them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dbapi_server import mint_token
from dbapi_server.keys import write_keypair
from dbsession import DBSession, guard
from dbsession.session import release_api_host
from tests.faults.models import METADATA_PATH, Base
from tests.servers import DBAPIProcess, dbapi_process

from .lb import HAProxy, require_haproxy


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


@dataclass
class Cluster:
    """Several ``dbapi-server serve`` instances of one database, one signing key, HAProxy in front."""

    instances: dict[str, DBAPIProcess]
    lb: HAProxy
    private_key: Path

    def token(self, subject: str = "lb-client", **kw: Any) -> str:
        kw.setdefault("ttl", 3600)
        return mint_token(self.private_key.read_bytes(), subject=subject, **kw)

    def session(self, opened: list[DBSession], subject: str = "lb-client", **settings: Any) -> DBSession:
        session = DBSession(database_access_isolation=True, database_api_host=self.lb.url,
                            token=self.token(subject), **settings)
        opened.append(session)
        return session


@contextlib.contextmanager
def cluster(pg_url: sa.URL, workdir: Path, size: int = 3, env: Mapping[str, str] | None = None,
            check_interval: str = "300ms") -> Iterator[Cluster]:
    require_haproxy()
    private_key, public_key = write_keypair(workdir)
    server_env = {"DBAPI_JWT_KEY_FILE": str(public_key), "DBAPI_METRICS_PUBLIC": "true", **(env or {})}
    with contextlib.ExitStack() as stack:
        instances = {f"dbapi{i + 1}": stack.enter_context(dbapi_process(pg_url, METADATA_PATH, env=server_env))
                     for i in range(size)}
        lb = HAProxy([(name, "127.0.0.1", p.port) for name, p in instances.items()],
                     check_interval=check_interval)
        stack.callback(lb.close)
        lb.start()
        stack.callback(release_api_host, lb.url)
        yield Cluster(instances, lb, private_key)


@pytest.fixture
def clients() -> Iterator[list[DBSession]]:
    opened: list[DBSession] = []
    yield opened
    for session in opened:
        try:
            session.close()
        except sa.exc.OperationalError:
            pass
