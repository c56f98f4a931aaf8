"""A session transaction through the DB-API behaves like one on a direct PostgreSQL connection."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dbsession import DBSession, TransactionError, guard
from dbsession.transport import Transport
from tests.servers import RunningServer, running_dbapi

pytestmark = pytest.mark.postgresql


class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(60), unique=True)
    state: Mapped[str] = mapped_column(sa.String(20), default="queued")


@pytest.fixture(scope="module")
def engine(pg_url: sa.URL) -> Iterator[sa.Engine]:
    engine = guard.exempt(sa.create_engine(pg_url))  # the trusted side: checks what really happened
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def server(engine: sa.Engine) -> Iterator[RunningServer]:
    with running_dbapi(engine, Base.metadata) as server:
        yield server


def isolated(server: RunningServer) -> DBSession:
    return DBSession(database_access_isolation=True, database_api_host=server.url, token=server.token)


@pytest.fixture
def name() -> str:
    return f"job-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def job(engine: sa.Engine, name: str) -> int:
    """A committed row, created directly."""
    with Session(engine) as s:
        row = Job(name=name)
        s.add(row)
        s.commit()
        return row.id


def committed(engine: sa.Engine, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(Job).where(*where)).scalar_one())


def count(session: Session, *where: Any) -> int:
    return int(session.scalar(sa.select(sa.func.count()).select_from(Job).where(*where)) or 0)


def test_flushed_rows_are_visible_in_the_transaction_and_gone_after_rollback(
        server: RunningServer, engine: sa.Engine, name: str) -> None:
    with isolated(server) as s:
        s.add(Job(name=name))
        s.flush()
        assert count(s, Job.name == name) == 1  # same transaction: visible
        assert committed(engine, Job.name == name) == 0  # not committed: invisible outside
        s.rollback()
        assert count(s, Job.name == name) == 0
    assert committed(engine, Job.name == name) == 0


def test_commit_makes_the_work_visible(server: RunningServer, engine: sa.Engine, name: str) -> None:
    with isolated(server) as s:
        s.add(Job(name=name))
        s.commit()
        job = s.scalars(sa.select(Job).where(Job.name == name)).one()  # expired and reloaded
        job.state = "running"
        s.commit()
    assert committed(engine, Job.name == name, Job.state == "running") == 1


def test_savepoint_rollback_keeps_the_outer_work(server: RunningServer, engine: sa.Engine, name: str) -> None:
    with isolated(server) as s:
        s.add(Job(name=name))
        s.flush()
        savepoint = s.begin_nested()
        s.add(Job(name=name + "-inner"))
        s.flush()
        assert count(s, Job.name.startswith(name)) == 2
        savepoint.rollback()
        assert count(s, Job.name.startswith(name)) == 1
        with s.begin_nested():
            s.add(Job(name=name + "-kept"))
        s.commit()
    assert committed(engine, Job.name == name) == 1
    assert committed(engine, Job.name == name + "-inner") == 0
    assert committed(engine, Job.name == name + "-kept") == 1


def test_failed_savepoint_leaves_the_outer_transaction_usable(server: RunningServer, engine: sa.Engine,
                                                              name: str) -> None:
    with isolated(server) as s:
        s.add(Job(name=name))
        s.flush()
        with pytest.raises(sa.exc.IntegrityError), s.begin_nested():
            s.add(Job(name=name))  # duplicate: the savepoint rolls back, not the transaction
        s.add(Job(name=name + "-after"))
        s.commit()
    assert committed(engine, Job.name.startswith(name)) == 2


def test_for_update_lock_is_held_until_commit(server: RunningServer, job: int) -> None:
    locked = sa.select(Job).where(Job.id == job)
    with isolated(server) as holder, isolated(server) as contender:
        holder.scalars(locked.with_for_update()).one().state = "claimed"
        holder.flush()
        with pytest.raises(sa.exc.OperationalError, match="could not obtain lock"):
            contender.scalars(locked.with_for_update(nowait=True)).one()
        contender.rollback()
        holder.commit()
        row = contender.scalars(locked.with_for_update(nowait=True)).one()
        assert row.state == "claimed"
        contender.commit()


def test_abandoned_transaction_is_rolled_back_and_its_lock_released(engine: sa.Engine, job: int) -> None:
    with running_dbapi(engine, Base.metadata, idle_timeout=1.0) as impatient:  # ample between two requests
        crashed = isolated(impatient)
        crashed.scalars(sa.select(Job).where(Job.id == job).with_for_update()).one().state = "lost"
        crashed.flush()  # ...and the process "dies": no commit, no rollback, no close, no request
        deadline = time.monotonic() + 15
        while impatient.state.transactions.open_count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert impatient.state.transactions.open_count == 0

        with isolated(impatient) as survivor:
            row = survivor.scalars(sa.select(Job).where(Job.id == job).with_for_update(nowait=True)).one()
            assert row.state == "queued"  # the abandoned update was rolled back
            survivor.commit()
        with pytest.raises(TransactionError, match="not committed: it was expired"):
            crashed.commit()  # a late commit of the expired transaction never reports success
        crashed.close()
    assert committed(engine, Job.id == job, Job.state == "lost") == 0


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every request any transport sends: (method, path, body)."""
    sent: list[tuple[str, str, dict[str, Any] | None]] = []
    original = Transport._request

    def recording(self: Transport, method: str, path: str, body: bytes | None, **kw: Any) -> Any:
        sent.append((method, path, orjson.loads(body) if body else None))
        return original(self, method, path, body, **kw)

    monkeypatch.setattr(Transport, "_request", recording)
    return sent


def test_read_only_session_sends_no_transaction_requests(server: RunningServer, job: int,
                                                         requests: list[tuple[str, str, Any]]) -> None:
    with isolated(server) as s:
        assert s.get(Job, job) is not None
        assert s.scalars(sa.select(Job).where(Job.id > 0)).all()
        s.commit()
        assert count(s) >= 1
        s.rollback()
    paths = [path for _, path, _ in requests]
    assert paths and set(paths) == {"/execute"}
    assert not any("txn" in body for _, _, body in requests)


def test_writing_session_sends_one_commit(server: RunningServer, name: str,
                                          requests: list[tuple[str, str, Any]]) -> None:
    with isolated(server) as s:
        s.add(Job(name=name))
        s.commit()
    finishing = [path for _, path, _ in requests if path.startswith("/transactions/")]
    assert len(finishing) == 1 and finishing[0].endswith("/commit")
    txns = {body["txn"] for _, path, body in requests if path == "/execute" and "txn" in body}
    assert len(txns) == 1 and txns.pop() in finishing[0]
