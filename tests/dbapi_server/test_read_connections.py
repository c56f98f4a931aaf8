"""Read connections kept between one-shot reads (``dbapi_server.read_connections``): the pool's
size, overflow and checked-out count stay what they were; dead, recycled and invalidated
connections are not used; shutdown gives them back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from dbapi_server.read_connections import ReadConnections

DATABASE = "postgresql"


@pytest.fixture
def small(pg_url: sa.URL) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url, pool_size=1, max_overflow=0, pool_timeout=2, pool_pre_ping=True)
    yield engine
    engine.dispose()


def read(reads: ReadConnections) -> int:
    with reads.connection() as conn:
        assert conn.connection.dbapi_connection.autocommit  # type: ignore[union-attr]
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def test_a_read_connection_is_kept_and_counts_as_idle(small: sa.Engine) -> None:
    reads = ReadConnections(small)
    first = read(reads)
    assert read(reads) == first  # the same session again, no checkout
    assert reads.kept == 1 and small.pool.checkedout() == 0  # idle: the probes and metrics see a free pool
    reads.close()
    assert reads.kept == 0
    with small.connect() as conn:  # given back, out of autocommit
        assert not conn.connection.dbapi_connection.autocommit  # type: ignore[union-attr]


def test_a_checkout_takes_a_kept_connection_back_instead_of_waiting(small: sa.Engine) -> None:
    reads = ReadConnections(small)
    pid = read(reads)
    started = time.monotonic()
    with small.connect() as conn, conn.begin():  # the pool's only connection: given back at once
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() == pid
        assert reads.kept == 0
        # the pool is full now: a read waits for it, as it always did
        with pytest.raises(sa.exc.TimeoutError):
            read(reads)
    assert time.monotonic() - started < 4
    assert read(reads) == pid
    reads.close()


def test_only_the_pools_size_is_kept_never_its_overflow(pg_url: sa.URL) -> None:
    engine = sa.create_engine(pg_url, pool_size=1, max_overflow=3)
    try:
        reads = ReadConnections(engine)
        barrier = threading.Barrier(3)

        def reader() -> None:
            with reads.connection() as conn:
                barrier.wait(5)
                conn.exec_driver_sql("SELECT 1")
                barrier.wait(5)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert reads.kept <= 1 and engine.pool.checkedout() == 0
        reads.close()
    finally:
        engine.dispose()


def test_a_connection_the_database_dropped_is_not_used(small: sa.Engine, pg_url: sa.URL) -> None:
    reads = ReadConnections(small)
    pid = read(reads)
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
    admin.dispose()
    time.sleep(0.2)
    assert read(reads) != pid  # a fresh session; the read succeeded
    reads.close()


def test_invalidated_and_disposed_pools(small: sa.Engine) -> None:
    reads = ReadConnections(small)
    pid = read(reads)
    time.sleep(0.02)
    small.pool._invalidate(None)  # type: ignore[attr-defined]  # what a disconnect anywhere does
    assert read(reads) != pid
    pid = read(reads)
    small.dispose()  # a new pool: the kept connection of the old one is not used
    assert read(reads) != pid
    assert small.pool.checkedout() == 0
    reads.close()


def test_a_failed_read_gives_its_connection_back(small: sa.Engine) -> None:
    reads = ReadConnections(small)
    read(reads)
    with pytest.raises(sa.exc.DBAPIError), reads.connection() as conn:
        conn.exec_driver_sql("SELECT 1/0")
    assert reads.kept == 0 and small.pool.checkedout() == 0
    read(reads)
    reads.close()
