"""The DB-API's transaction lifecycle per committing batch, measured in process (CPU, no HTTP).

A benchmark, not a test: what ``POST /batch`` with begin + one UPDATE + commit costs in
:class:`~dbapi_server.transactions.TransactionManager` (connection checkout, BEGIN, the statement,
the commit outcome row, COMMIT, check-in), against the same work on a bare SQLAlchemy connection::

    python -m bench.bench_txn --database-url postgresql+psycopg://root@127.0.0.1/dbsession_bench_x
    python -m bench.bench_txn --profile     # cProfile of the managed transaction, top functions
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from dbapi_server._liveness import use_socket_liveness
from dbapi_server.engine_options import EngineOptions
from dbapi_server.outcomes import CommitOutcomes
from dbapi_server.transactions import TransactionManager


def cpu_per_call(fn: Callable[[], Any], n: int, chunks: int = 10) -> float:
    """Microseconds of process CPU per call, the best of *chunks* chunks (a busy machine only adds)."""
    best = float("inf")
    for _ in range(chunks):
        start = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - start) / n)
    return best * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgresql+psycopg://root@127.0.0.1/dbsession_bench_txn")
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    engine = EngineOptions.from_env({}).create_engine(args.database_url)
    if getattr(engine.pool, "_pre_ping", False):
        use_socket_liveness(engine)
    meta = sa.MetaData()
    table = sa.Table("bench_txn_rows", meta, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("n", sa.Integer, nullable=False))
    meta.drop_all(engine)
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [{"id": 1, "n": 0}])
    update = sa.update(table).where(table.c.id == sa.bindparam("k")).values(n=table.c.n + 1)
    outcomes = CommitOutcomes(engine)
    outcomes.create()
    manager = TransactionManager(engine, outcomes=outcomes)
    bare_manager = TransactionManager(engine)
    ids = itertools.count()

    def bare() -> None:
        with engine.connect() as conn, conn.begin():
            conn.execute(update, {"k": 1})

    def managed(mgr: TransactionManager) -> Callable[[], None]:
        def one() -> None:
            txn_id = f"bench-{time.time_ns()}-{next(ids)}"

            def run(conn: sa.Connection) -> None:
                conn.execute(update, {"k": 1})
                return None

            mgr.run_request(txn_id, "bench", 1, begin=True, run=run,
                            then=lambda txn: {"outcome": mgr.end_locked(txn, "commit")})
        return one

    cases = {"bare SA begin/UPDATE/commit": bare, "manager, no outcome table": managed(bare_manager),
             "manager + outcome row": managed(manager)}
    for fn in cases.values():
        for _ in range(50):
            fn()
    if args.profile:
        prof = cProfile.Profile()
        fn = cases["manager + outcome row"]
        prof.enable()
        for _ in range(args.n * 3):
            fn()
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    for name, fn in cases.items():
        print(f"{name:32s} {cpu_per_call(fn, args.n):8.1f} µs CPU per transaction")
    with engine.begin() as conn:
        conn.execute(sa.delete(outcomes.table))
    meta.drop_all(engine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
