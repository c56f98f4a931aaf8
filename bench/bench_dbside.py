"""The DB-API's database side per request, measured in process: CPU per statement request.

A benchmark, not a test. It serves the bench schema (``bench.models``) in this process, runs each
op of ``bench_isolation`` once through a real ``DBSession`` while capturing the parsed statement
requests the server receives, then replays them without HTTP: ``prepare`` (decode cache, values,
policy plan) and the execution (connection, statement run, answer), in a loop, measuring process
CPU per request::

    python -m bench.bench_dbside --database-url postgresql+psycopg://root@127.0.0.1/dbsession_bench_x
    python -m bench.bench_dbside --sqlite
    python -m bench.bench_dbside --profile get     # cProfile of the replay, top functions

The columns: ``prepare`` (decode + values + policy plan), ``read`` (what ``/execute`` does for a read
outside a transaction: connection, execute, answer) and ``txn`` (a statement inside a held
transaction), all in microseconds of CPU per request.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(os.environ.get("DBSIDE_REPO") or Path(__file__).resolve().parent.parent)  # another checkout's code
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

from bench.bench_isolation import OPS, fresh_database, seed  # noqa: E402
from bench.models import Base  # noqa: E402
from dbapi_server import pipeline as views  # noqa: E402  (StatementRequest lives in pipeline.py)
from dbsession import DBSession  # noqa: E402
from tests.servers import running_dbapi  # noqa: E402


def capture(server: Any, ops: list[str]) -> dict[str, list[tuple[Any, Any, bool]]]:
    """The statement requests (request, principal, in a transaction) each op sends."""
    captured: list[tuple[Any, Any, bool]] = []
    real_prepare = views.StatementRequest.prepare

    def prepare(self: Any, state: Any, principal: Any) -> Any:
        captured.append((self, principal, False))
        return real_prepare(self, state, principal)

    views.StatementRequest.prepare = prepare  # type: ignore[method-assign]
    isolated = sessionmaker(class_=DBSession, database_access_isolation=True, database_api_host=server.url,
                            token=server.token)
    found = {}
    try:
        for op in ops:
            for i in range(3):  # the document travels once; later requests by hash
                captured.clear()
                OPS[op][1](isolated, i)
            found[op] = list(captured)
    finally:
        views.StatementRequest.prepare = real_prepare  # type: ignore[method-assign]
    return found


def cpu_per_call(fn: Callable[[], Any], n: int, chunks: int = 10) -> float:
    """CPU µs per call: the best of *chunks* chunks (a shared machine only ever adds time)."""
    for _ in range(min(200, n)):
        fn()
    best = float("inf")
    size = max(1, n // chunks)
    for _ in range(chunks):
        start = time.process_time()
        for _ in range(size):
            fn()
        best = min(best, (time.process_time() - start) / size * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql+psycopg://root@127.0.0.1/dbsession_bench_dbside")
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--ops", default="get,list10,variable,modify_commit")
    parser.add_argument("--profile", metavar="OP")
    parser.add_argument("--profile-what", default="read", choices=["read", "prepare", "txn"])
    args = parser.parse_args(argv)
    ops = args.ops.split(",")
    with fresh_database(None if args.sqlite else args.database_url, args.sqlite, False) as url:
        engine = sa.create_engine(url, pool_pre_ping=True)
        seed(engine)
        from dbapi_server._liveness import use_socket_liveness
        use_socket_liveness(engine)
        with running_dbapi(engine, Base.metadata) as server:
            state = server.state
            found = capture(server, ops)
            print(f"{'op':<14} {'stmt':>4} {'prepare µs':>11} {'read µs':>9} {'txn µs':>8}  kind")
            for op, requests in found.items():
                for index, (req, principal, _) in enumerate(requests):
                    def prepare(req: Any = req, principal: Any = principal) -> Any:
                        return req.prepare(state, principal)

                    def read(req: Any = req, principal: Any = principal) -> Any:
                        plan, info, params = req.prepare(state, principal)
                        return _read(state, req, plan, params)

                    txn_conn = state.engine.connect()
                    txn_conn.begin()

                    def txn(req: Any = req, principal: Any = principal, conn: Any = txn_conn) -> Any:
                        return req.run(state, principal, conn, "bench")

                    read_only = req.prepare(state, principal)[1].is_read_only
                    t_prep = cpu_per_call(prepare, args.n)
                    t_read = cpu_per_call(read, args.n) if read_only else float("nan")
                    t_txn = cpu_per_call(txn, args.n)
                    txn_conn.rollback()
                    txn_conn.close()
                    print(f"{op:<14} {index:>4} {t_prep:>11.1f} {t_read:>9.1f} {t_txn:>8.1f}  {req.kind}")
                    if args.profile == op and index == 0:
                        fn = {"read": read, "prepare": prepare, "txn": txn}[args.profile_what]
                        if args.profile_what == "txn":
                            txn_conn = state.engine.connect()
                            txn_conn.begin()
                            fn = lambda req=req, principal=principal, conn=txn_conn: req.run(  # noqa: E731
                                state, principal, conn, "bench")
                        profiler = cProfile.Profile()
                        profiler.enable()
                        for _ in range(args.n):
                            fn()
                        profiler.disable()
                        pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
                        pstats.Stats(profiler).sort_stats("cumtime").print_stats(45)
        engine.dispose()
    return 0


def _read(state: Any, req: Any, plan: Any, params: Any) -> Any:
    """What ``/execute`` does for a read outside a transaction (views.execute's block)."""
    from dbapi_server.enforcement import execute_plan
    connect = getattr(state, "read_connection", None) or state.read_engine.connect
    with connect() as conn:
        return execute_plan(state.policy, state.executor, conn, plan, params, many=req.many,
                            sql_hash=req.sql_hash, options=req.options, column_keys=req.column_keys)


if __name__ == "__main__":
    raise SystemExit(main())
