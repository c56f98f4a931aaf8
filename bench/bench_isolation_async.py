"""Direct vs isolated access from asyncio: 50 concurrent tasks in one process, side by side.

A benchmark, not a test. Run it from the repository root::

    python -m bench.bench_isolation_async                 # PostgreSQL: asyncpg vs AsyncDBSession
    python -m bench.bench_isolation_async --sqlite        # aiosqlite vs AsyncDBSession
    python -m bench.bench_isolation_async --iterations 2000 --json results.json

The async twin of ``bench.bench_isolation`` (same schema, seed, the same four worker-style
operations, each in a fresh session; its ``--json`` shape where it applies):

* the direct side is a plain ``AsyncSession`` on ``create_async_engine`` with the native async
  driver - ``postgresql+asyncpg`` or ``sqlite+aiosqlite``; the isolated side is ``AsyncDBSession``
  on the isolated async engine (``dbsession_async``, aiohttp) talking to the real DB-API
  (``dbapi-server``'s app under waitress) in a subprocess;
* ``--tasks`` (50) tasks in one event loop run the operation at once, each ``iterations / tasks``
  times; per operation: latency (median, p90) as each task sees it, throughput (operations per
  second over the whole run), client CPU per operation, and the DB-API process's CPU per operation;
* direct and isolated rounds alternate (ABBA...), the better round by throughput is reported;
* both client pools hold ``--tasks`` connections, so no task waits for a pooled connection; the
  DB-API gets as many database connections and threads (it holds a database connection per open
  transaction, and a thread per request in flight); the direct pool is emptied before each
  isolated round (PostgreSQL allows 100 connections), and every round starts with warm pools;
* prints the load average before and after: on a busy machine the numbers are noisy; compare the
  ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine  # noqa: E402

import dbsession  # noqa: E402
from bench.bench_isolation import (  # noqa: E402
    DEFAULT_URL,
    RUN_KEYS,
    TI_KEYS,
    VARIABLE_KEYS,
    Server,
    _version,
    counting_requests,
    free_port,
    fresh_database,
    load_average,
    seed,
    versions,
)
from bench.models import TaskInstance, Variable  # noqa: E402
from dbsession import AsyncDBSession, create_isolated_async_engine  # noqa: E402

AsyncMaker = Callable[[], AsyncSession]


# -- the operations (each in a fresh session, as a worker's task would) ---------------------------
async def op_get(make: AsyncMaker, i: int) -> Any:
    async with make() as session:
        ti = await session.get(TaskInstance, TI_KEYS[i % len(TI_KEYS)])
        assert ti is not None
        return ti.try_number


async def op_list10(make: AsyncMaker, i: int) -> Any:
    dag_id, run_id = RUN_KEYS[i % len(RUN_KEYS)]
    async with make() as session:
        tis = (await session.scalars(
            sa.select(TaskInstance)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
            .order_by(TaskInstance.task_id, TaskInstance.map_index)
            .limit(10))).all()
        return [(ti.task_id, ti.map_index) for ti in tis]


async def op_modify_commit(make: AsyncMaker, i: int) -> Any:
    async with make() as session:
        ti = await session.get(TaskInstance, TI_KEYS[i % len(TI_KEYS)])
        assert ti is not None
        ti.try_number += 1
        await session.commit()


async def op_variable(make: AsyncMaker, i: int) -> Any:
    async with make() as session:
        return await session.scalar(sa.select(Variable.val).where(Variable.key == VARIABLE_KEYS[i % len(VARIABLE_KEYS)]))


OPS: dict[str, tuple[str, Callable[[AsyncMaker, int], Awaitable[Any]]]] = {
    "get": ("get by PK (TaskInstance, 4-col key)", op_get),
    "list10": ("filtered list, 10 rows", op_list10),
    "modify_commit": ("get + modify + commit", op_modify_commit),
    "variable": ("Variable.get-style scalar", op_variable),
}


# -- the DB-API subprocess, with room for the tasks -------------------------------------------------
class RoomyServer(Server):
    """``bench_isolation.Server`` with up to *pool* database connections (the CLI has no option).

    Ten stay open when idle: PostgreSQL's 100 connections must also hold the direct side's pool.
    """

    def __init__(self, url: str, port: int, threads: int, workdir: Path, pool: int) -> None:
        self._pool_size = pool
        super().__init__(url, port, threads, workdir)

    def _command(self, url: str, port: int, threads: int, metadata: str) -> list[str]:
        # what `dbapi-server serve` does, with engine_options (under granian the factory runs in
        # the worker process, so it is a picklable partial)
        code = ("import functools; from dbapi_server.app import create_app; from dbapi_server.serving import serve; "
                f"serve(functools.partial(create_app, {url!r}, {metadata!r}, engine_options={{'pool_size': 10, "
                f"'max_overflow': {self._pool_size - 10}}}), port={port}, threads={threads}, server={self.server!r})")
        return [sys.executable, "-c", code]


# -- measuring -------------------------------------------------------------------------------------
def summarize(ns: list[int]) -> dict[str, float]:
    ms = sorted(t / 1e6 for t in ns)
    return {"median": statistics.median(ms), "p90": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
            "mean": statistics.fmean(ms), "min": ms[0], "max": ms[-1], "n": len(ms)}


async def time_round(fn: Callable[[AsyncMaker, int], Awaitable[Any]], make: AsyncMaker, server: Server | None,
                     n: int, tasks: int, offset: int) -> dict[str, float]:
    """*tasks* concurrent tasks, *n* operations in all: latency, throughput, CPU per operation."""
    gc.collect()
    clock = time.perf_counter_ns
    times: list[int] = []
    per_task = max(1, n // tasks)

    async def worker(t: int) -> None:
        for k in range(per_task):
            t0 = clock()
            await fn(make, offset + t * per_task + k)
            times.append(clock() - t0)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    srv0 = server.cpu_seconds() if server is not None else None
    await asyncio.gather(*(worker(t) for t in range(tasks)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    srv1 = server.cpu_seconds() if server is not None else None
    result = summarize(times)
    result["ops_per_s"] = len(times) / wall
    result["client_cpu_ms"] = cpu * 1e3 / len(times)
    if server is not None:
        result["server_cpu_ms"] = (srv1 - srv0) * 1e3 / len(times) if srv0 is not None and srv1 is not None \
            else float("nan")
    return result


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def report(results: dict[str, Any]) -> None:
    cfg, v = results["config"], results["versions"]
    print("\n== dbsession isolation benchmark, asyncio ==")
    print(f"backend: {cfg['backend']} (direct: {cfg['direct_driver']}; isolated: AsyncDBSession, aiohttp); "
          f"{cfg['tasks']} concurrent tasks in one loop, {cfg['iterations']} operations per op, mode and "
          f"round, {cfg['rounds']} rounds; DB-API threads {cfg['threads']}, database pool {cfg['server_pool']}")
    print("client: " + ", ".join(f"{k} {val}" for k, val in v["client"].items()))
    loads = [results.get("load_before"), results.get("load_after")]
    cpus = v["machine"]["cpus"] or 1
    busy = any(load and load[0] > 0.5 * cpus for load in loads)
    print(f"load average (1/5/15 min) before {loads[0]}, after {loads[1]}"
          + (" - WARNING: the machine is busy with other work; expect noisy numbers" if busy else ""))
    header = (f"{'op':<15} {'direct ms':>9} {'isol. ms':>9} {'ratio':>6} {'dir op/s':>8} {'iso op/s':>8} "
              f"{'thr. ratio':>10} {'HTTP req':>8}  {'cli CPU d/i ms':>14} {'srv CPU':>7}")
    print("\n" + header + "\n" + "-" * len(header))
    for op, r in results["ops"].items():
        d, i = r["direct"]["best"], r["isolation"]["best"]
        print(f"{op:<15} {_fmt(d['median'], 3):>9} {_fmt(i['median'], 3):>9} {r['ratio']:>5.2f}x "
              f"{d['ops_per_s']:>8.0f} {i['ops_per_s']:>8.0f} {r['throughput_ratio']:>9.2f}x "
              f"{r['http_requests_per_op']:>8.2f}  {_fmt(d['client_cpu_ms']):>6} / {_fmt(i['client_cpu_ms']):<5} "
              f"{_fmt(i.get('server_cpu_ms')):>7}")
    print("(latency medians as each task sees them, of the round with the better throughput; ratio = "
          "isolated/direct latency, thr. ratio = direct/isolated throughput; CPU per operation)")


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help=f"PostgreSQL URL of a database to create, use and drop (default {DEFAULT_URL})")
    parser.add_argument("--sqlite", action="store_true", help="use a temporary SQLite file instead")
    parser.add_argument("--iterations", "-n", type=int, default=1000, help="operations per op, mode and round")
    parser.add_argument("--tasks", type=int, default=50, help="concurrent tasks in the one event loop")
    parser.add_argument("--warmup", type=int, default=100, help="untimed operations per op and mode first")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (the better throughput is reported)")
    parser.add_argument("--ops", default=None,
                        help=f"comma-separated subset of {','.join(OPS)} (default: all; with --sqlite all "
                             "but modify_commit: SQLite refuses concurrent read-then-write transactions - "
                             "direct aiosqlite fails with 'database is locked')")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="dump the results as JSON (to PATH; without one to stdout, the report then to stderr)")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    args = parser.parse_args(argv)
    if args.ops is None:
        args.ops = ",".join(op for op in OPS if not (args.sqlite and op == "modify_commit"))
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = set(args.ops) - set(OPS)
    if unknown:
        parser.error(f"unknown op(s) {', '.join(sorted(unknown))}; choose from {', '.join(OPS)}")
    if args.iterations < args.tasks or args.rounds < 1 or args.tasks < 1:
        parser.error("--iterations must be >= --tasks; --rounds and --tasks >= 1")
    return args


async def check_equivalence(direct: AsyncMaker, isolated: AsyncMaker, ops: list[str]) -> None:
    """The two modes must see the same data (a quick guard against measuring a broken path)."""
    for op in ops:
        if op == "modify_commit":
            before = await op_get(direct, 7)
            await op_modify_commit(isolated, 7)
            await op_modify_commit(direct, 7)
            after = await op_get(isolated, 7)
            if after != before + 2:
                raise RuntimeError(f"modify_commit: try_number went {before} -> {after}, expected +2")
            continue
        fn = OPS[op][1]
        for i in (0, 3, 11):
            a, b = await fn(direct, i), await fn(isolated, i)
            if a != b:
                raise RuntimeError(f"{op}: direct returned {a!r} but isolation returned {b!r}")


async def _run(args: argparse.Namespace, url: str, server: Server) -> dict[str, Any]:
    backend = sa.make_url(url).get_backend_name()
    direct_url = sa.make_url(url).set(drivername="sqlite+aiosqlite" if backend == "sqlite" else "postgresql+asyncpg")
    direct_engine = create_async_engine(direct_url, pool_size=args.tasks, max_overflow=0)
    iso_engine = create_isolated_async_engine(server.base, token=server.token, pool_size=args.tasks, max_overflow=0)
    try:
        direct = async_sessionmaker(direct_engine, class_=AsyncSession)
        isolated = async_sessionmaker(iso_engine, class_=AsyncDBSession, database_access_isolation=True,
                                      database_api_host=server.base, token=server.token)
        await check_equivalence(direct, isolated, args.ops)
        results: dict[str, Any] = {
            "config": {"backend": backend, "direct_driver": direct_url.drivername, "iterations": args.iterations,
                       "tasks": args.tasks, "warmup": args.warmup, "rounds": args.rounds,
                       "threads": args.threads, "server_pool": args.server_pool,
                       "database_url_safe": sa.make_url(url).render_as_string(hide_password=True)},
            "versions": versions(server.info(), backend),
        }
        results["versions"]["client"].update(
            {name: _version(name) for name in ("aiohttp", "greenlet", "asyncpg", "aiosqlite")})
        results["load_before"] = load_average()
        for op in args.ops:  # warm-up: statements cached on both sides
            await asyncio.gather(*(OPS[op][1](direct, i) for i in range(args.warmup)))
            await direct_engine.dispose()  # its connections would count against PostgreSQL's limit
            await asyncio.gather(*(OPS[op][1](isolated, i) for i in range(args.warmup)))
        breakdowns: dict[str, Counter[str]] = {}
        count_n = 20
        for op in args.ops:
            with counting_requests() as counts:
                for i in range(count_n):
                    await OPS[op][1](isolated, i)
            breakdowns[op] = counts

        per_op: dict[str, dict[str, list[dict[str, float]]]] = defaultdict(lambda: {"direct": [], "isolation": []})
        for rnd in range(args.rounds):
            for op in args.ops:
                modes: list[tuple[str, AsyncMaker, Server | None]] = [
                    ("direct", direct, None), ("isolation", isolated, server)]
                for mode, make, srv in (modes if rnd % 2 == 0 else modes[::-1]):
                    if mode == "isolation":  # its connections would count against PostgreSQL's limit
                        await direct_engine.dispose()
                    await asyncio.gather(*(OPS[op][1](make, i) for i in range(args.tasks)))  # pools warm
                    result = await time_round(OPS[op][1], make, srv, args.iterations, args.tasks,
                                              rnd * args.iterations)
                    per_op[op][mode].append(result)
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        results["ops"] = {}
        for op in args.ops:
            entry: dict[str, Any] = {"label": OPS[op][0]}
            for mode in ("direct", "isolation"):
                rounds = per_op[op][mode]
                entry[mode] = {"rounds": rounds, "best": max(rounds, key=lambda r: r["ops_per_s"])}
            d, i = entry["direct"]["best"], entry["isolation"]["best"]
            entry["ratio"] = i["median"] / d["median"]
            entry["throughput_ratio"] = d["ops_per_s"] / i["ops_per_s"]
            counts = breakdowns[op]
            entry["http_requests_per_op"] = sum(counts.values()) / count_n
            entry["requests_breakdown"] = {k: v / count_n for k, v in sorted(counts.items())}
            results["ops"][op] = entry
        results["load_after"] = load_average()
        report(results)
        return results
    finally:
        await direct_engine.dispose()
        await iso_engine.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="dbsession_bench_async_"))
    try:
        with fresh_database(None if args.sqlite else args.database_url, args.sqlite, args.keep_db) as url:
            engine = sa.create_engine(url)
            dbsession.guard.exempt(engine)
            seed(engine)
            engine.dispose()
            args.threads = args.tasks + 4  # a thread per request in flight, and a few to spare
            args.server_pool = args.tasks + 5  # a database connection per open transaction
            server = RoomyServer(url, free_port(), args.threads, workdir, args.server_pool)
            try:
                server.wait_healthy(timeout=180)  # 54 threads start slowly on a busy machine
                return asyncio.run(_run(args, url, server))
            finally:
                server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr) if args.json == "-" else contextlib.nullcontext():
        results = run(args)
    if args.json:
        text = json.dumps(results, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
            print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
