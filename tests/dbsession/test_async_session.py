"""``AsyncDBSession`` and the isolated async engine: modes, URLs, the guard, errors, streams, tasks.

Against a real DB-API on loopback (SQLite behind it; the differential corpus in
``tests/conformance/test_corpus_async.py`` covers PostgreSQL and MariaDB). Every test runs its
async code in a fresh event loop (``asyncio.run``), as separate programs would.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.pool import NullPool

import dbsession
from dbsession import (
    AsyncDBSession,
    AuthenticationError,
    DirectDatabaseAccessError,
    IncompatibleServerError,
    PolicyViolationError,
    guard,
    server_method,
)
from tests.servers import RunningServer, running_dbapi

T = TypeVar("T")
ROWS = 1_200


class Base(AsyncAttrs, DeclarativeBase):
    metadata = sa.MetaData()


class Shelf(Base):
    __tablename__ = "shelves"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40), unique=True)
    books: Mapped[list[Book]] = relationship(back_populates="shelf", order_by="Book.id")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int] = mapped_column(sa.ForeignKey("shelves.id"))
    title: Mapped[str] = mapped_column(sa.String(60))
    shelf: Mapped[Shelf] = relationship(back_populates="books")


@server_method
def rename_shelf(session: Session, shelf_id: int, name: str) -> str:
    """A named method: runs on the server, in the caller's server transaction."""
    shelf = session.get(Shelf, shelf_id)
    assert shelf is not None
    old, shelf.name = shelf.name, name
    return old


@pytest.fixture(scope="module")
def server_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    path = tmp_path_factory.mktemp("async_session") / "async.sqlite"
    # the DB-API holds a database connection per open stream or transaction: room for the 30
    # (pool_size 10 + max_overflow 20) one isolated async engine may have at once
    engine = guard.exempt(sa.create_engine(f"sqlite:///{path}", pool_size=35, max_overflow=5))
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([Shelf(id=1, name="fiction"), Shelf(id=2, name="poetry")])
        s.add_all([Book(id=i, shelf_id=1 + i % 2, title=f"book {i:04d}") for i in range(1, ROWS + 1)])
        s.commit()
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def db_path(server_engine: sa.Engine) -> Path:
    return Path(server_engine.url.database or "")


@pytest.fixture(scope="module")
def server(server_engine: sa.Engine) -> Iterator[RunningServer]:
    # in this process: tests check the server's open transactions and its engine's pool
    with running_dbapi(server_engine, Base.metadata, methods=[rename_shelf.__module__]) as server:
        yield server


def isolated(server: RunningServer, **kw: Any) -> async_sessionmaker[AsyncSession]:
    kw.setdefault("token", server.token)
    return async_sessionmaker(class_=AsyncDBSession, database_access_isolation=True,
                              database_api_host=server.url, **kw)


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())  # type: ignore[arg-type]


def port_of(server: RunningServer) -> str:
    return server.url.rsplit(":", 1)[1]


# -- direct mode ----------------------------------------------------------------------------------
def test_direct_mode_is_a_plain_async_session(db_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{db_path}", poolclass=NullPool)

    async def body() -> None:
        async with AsyncDBSession(engine) as s:
            assert not s.isolated and s.bind is engine
            assert type(s.sync_session) is Session  # exactly SQLAlchemy's
            assert await s.scalar(sa.select(Shelf.name).where(Shelf.id == 2)) == "poetry"
        await engine.dispose()

    run(body)
    assert not guard.is_installed()


# -- isolation ------------------------------------------------------------------------------------
def test_isolated_session_reads_and_writes_through_the_server(server: RunningServer,
                                                              server_engine: sa.Engine) -> None:
    async def body() -> None:
        async with isolated(server)() as s:
            bind = s.get_bind()
            assert bind.dialect.is_dbsession and bind.dialect.is_async  # type: ignore[attr-defined]
            assert bind.dialect.name == "sqlite" and bind.url.drivername == "dbsession_async"
            assert isinstance(bind.pool, sa.pool.AsyncAdaptedQueuePool)
            s.add(Shelf(id=10, name="new"))
            await s.commit()
            assert (await s.get(Shelf, 10)).name == "new"  # type: ignore[union-attr]
            await s.delete(await s.get(Shelf, 10))
            await s.commit()

    run(body)
    with server_engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Shelf)) == 2
    assert server.state.transactions.open_count == 0


@pytest.mark.parametrize("how", ["bind", "binds"])
def test_isolated_session_refuses_a_direct_async_bind(db_path: Path, server: RunningServer, how: str) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{db_path}", poolclass=NullPool)
    kw: dict[str, Any] = {"bind": engine} if how == "bind" else {"binds": {Shelf: engine}}
    with pytest.raises(DirectDatabaseAccessError, match="AsyncDBSession was given a direct database bind"):
        AsyncDBSession(database_access_isolation=True, database_api_host=server.url, token=server.token, **kw)


def test_the_process_setting_gives_one_engine_and_the_guard(server: RunningServer, db_path: Path) -> None:
    direct = create_async_engine(f"sqlite+aiosqlite:///{db_path}", poolclass=NullPool)  # made before
    dbsession.configure(database_access_isolation=True, database_api_host=server.url, token=server.token)

    async def body() -> None:
        async with AsyncDBSession() as first, AsyncDBSession() as second:
            assert first.bind is second.bind is dbsession.isolated_async_engine(dbsession.get_settings())
            assert await first.scalar(sa.select(sa.func.count()).select_from(Shelf)) == 2
        assert guard.is_installed()
        with pytest.raises(DirectDatabaseAccessError, match="database_access_isolation"):
            create_async_engine(f"sqlite+aiosqlite:///{db_path}")
        with pytest.raises(DirectDatabaseAccessError):
            async with direct.connect() as conn:
                await conn.execute(sa.select(Shelf.id))
        with pytest.raises(DirectDatabaseAccessError):
            async with AsyncSession(direct) as plain:  # a plain AsyncSession on a direct engine
                await plain.execute(sa.select(Shelf.id))

    run(body)


def test_the_token_comes_from_the_same_settings(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_API_TOKEN", server.token)
    engine = create_async_engine(f"sqlite+dbsession_async://127.0.0.1:{port_of(server)}/")

    async def body() -> int | None:
        async with AsyncSession(engine) as s:
            count = await s.scalar(sa.select(sa.func.count()).select_from(Shelf))
        await engine.dispose()
        return count

    assert run(body) == 2


@pytest.mark.parametrize("url", ["sqlite+dbsession_async://{}/", "dbsession_async://{}/", "sqlite+dbsession://{}/",
                                 "dbsession://{}/"])
def test_async_engine_urls(server: RunningServer, url: str) -> None:
    """``+dbsession_async`` by name, and ``create_async_engine`` with a ``dbsession`` URL (as with
    psycopg, the same name serves both engines)."""
    engine = create_async_engine(url.format(f"127.0.0.1:{port_of(server)}"), connect_args={"token": server.token})

    async def body() -> str | None:
        async with engine.connect() as conn:
            title = await conn.scalar(sa.select(Book.title).where(Book.id == 7))
        await engine.dispose()
        return title

    assert engine.dialect.is_async and engine.dialect.name == "sqlite"
    assert run(body) == "book 0007"


def test_an_async_url_for_another_backend_is_refused(server: RunningServer) -> None:
    with pytest.raises(IncompatibleServerError, match="serves sqlite"):
        create_async_engine(f"postgresql+dbsession_async://127.0.0.1:{port_of(server)}/")


# -- errors are the sync path's ---------------------------------------------------------------
def test_errors_keep_their_classes(server: RunningServer) -> None:
    async def body() -> None:
        async with isolated(server)() as s:
            s.add(Shelf(name="fiction"))
            with pytest.raises(sa.exc.IntegrityError, match="UNIQUE"):
                await s.flush()
            await s.rollback()
            with pytest.raises(PolicyViolationError, match="Raw SQL") as refused:
                await s.execute(sa.text("SELECT name FROM shelves"))
            assert refused.value.status == 403
            # the X-Request-Id the async transport sent, which the DB-API logged, as the sync one
            assert refused.value.request_id and len(refused.value.request_id) == 16
            assert await s.scalar(sa.select(sa.func.count()).select_from(Shelf)) == 2  # goes on
        async with isolated(server, token="not-a-jwt")() as s:
            with pytest.raises(AuthenticationError, match="token"):
                await s.execute(sa.select(Shelf))

    run(body)


def test_dead_server_is_an_operational_error_naming_the_host() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{sock.getsockname()[1]}"

    async def body() -> None:
        with pytest.raises(sa.exc.OperationalError, match=host):
            async with AsyncDBSession(database_access_isolation=True, database_api_host=f"http://{host}",
                                      token="t") as s:
                await s.execute(sa.select(Shelf))

    run(body)


# -- what async code does ---------------------------------------------------------------------
def test_stream_yield_per_and_partitions(server: RunningServer, server_engine: sa.Engine) -> None:
    with Session(server_engine) as direct:
        expected = direct.scalars(sa.select(Book.title).order_by(Book.id)).all()

    async def body() -> tuple[list[str], list[int], list[str]]:
        async with isolated(server)() as s:
            stmt = sa.select(Book).order_by(Book.id).execution_options(yield_per=250)
            titles = [book.title async for book in await s.stream_scalars(stmt)]
            result = await s.stream(sa.select(Book.title).order_by(Book.id).execution_options(yield_per=500))
            sizes = [len(part) async for part in result.partitions()]
            assert server.state.engine.pool.checkedout() == 0  # exhausted: no connection held
            scalars = (await s.scalars(sa.select(Book.title).order_by(Book.id))).all()
            return titles, sizes, list(scalars)

    titles, sizes, scalars = run(body)
    assert titles == scalars == expected
    assert sizes == [500, 500, 200]


def test_run_sync_awaitable_attrs_and_refresh(server: RunningServer) -> None:
    async def body() -> None:
        async with isolated(server)() as s:
            shelf = await s.get(Shelf, 2)
            assert shelf is not None
            books = await shelf.awaitable_attrs.books  # a lazy load, awaited
            assert [b.id for b in books[:3]] == [1, 3, 5]
            book = await s.get(Book, 3)
            assert book is not None and (await book.awaitable_attrs.shelf) is shelf
            shelf.name = "changed, not flushed"
            await s.refresh(shelf)
            assert shelf.name == "poetry"

            def sync_part(session: Session) -> list[str]:
                # plain sync ORM code, unchanged: lazy loads and all
                fiction = session.get(Shelf, 1)
                assert fiction is not None
                return [b.title for b in fiction.books[:2]]

            assert await s.run_sync(sync_part) == ["book 0002", "book 0004"]

    run(body)


def test_named_methods_through_run_sync(server: RunningServer, server_engine: sa.Engine) -> None:
    async def body() -> None:
        async with isolated(server)() as s:
            assert await s.run_sync(lambda sync: rename_shelf(sync, 2, "verse")) == "poetry"
            assert server.state.transactions.open_count == 1  # the caller's server transaction
            assert await s.scalar(sa.select(Shelf.name).where(Shelf.id == 2)) == "verse"
            await s.rollback()  # the method's write follows the caller's transaction
            assert await s.scalar(sa.select(Shelf.name).where(Shelf.id == 2)) == "poetry"

    run(body)


def test_transactions_savepoints_and_locks(server: RunningServer, server_engine: sa.Engine) -> None:
    async def body() -> None:
        async with isolated(server)() as s:
            s.add(Shelf(id=20, name="kept"))
            await s.flush()
            assert server.state.transactions.open_count == 1  # the first write began it
            async with s.begin_nested():
                s.add(Shelf(id=21, name="undone"))
            nested = await s.begin_nested()
            s.add(Shelf(id=22, name="rolled back"))
            await s.flush()
            await nested.rollback()
            locked = await s.scalar(sa.select(Shelf).where(Shelf.id == 1).with_for_update())
            assert locked is not None and locked.name == "fiction"
            assert sorted(await s.scalars(sa.select(Shelf.id).where(Shelf.id >= 20))) == [20, 21]
            await s.rollback()
        assert server.state.transactions.open_count == 0

    run(body)
    with server_engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).where(Shelf.id >= 20)) == 0


def test_fifty_concurrent_tasks_in_one_loop(server: RunningServer, server_engine: sa.Engine) -> None:
    """One process, one loop, 50 tasks reading (plain, streamed, lazy loads) at once through one
    engine. (Concurrent writers: the PostgreSQL tests in test_async_cancellation.py.)"""
    make = isolated(server)

    async def task(n: int) -> tuple[str | None, int, list[str]]:
        async with make() as s:
            title = await s.scalar(sa.select(Book.title).where(Book.id == n + 1))
            result = await s.stream_scalars(sa.select(Book.id).where(Book.shelf_id == 1 + n % 2)
                                            .execution_options(yield_per=100))
            count = len([i async for i in result])
            book = await s.get(Book, n + 1)
            assert book is not None
            shelf = await book.awaitable_attrs.shelf
            return title, count, [shelf.name]

    async def body() -> list[tuple[str | None, int, list[str]]]:
        return await asyncio.gather(*(task(n) for n in range(50)))

    outcomes = run(body)
    assert [title for title, _, _ in outcomes] == [f"book {n + 1:04d}" for n in range(50)]
    assert {count for _, count, _ in outcomes} == {ROWS // 2}
    assert [names for _, _, names in outcomes] == [[("poetry", "fiction")[n % 2]] for n in range(50)]
    # exhausted streams stay listed (a lost last page can be asked again) but hold no connection
    assert server.state.transactions.open_count == 0 and server.state.engine.pool.checkedout() == 0
