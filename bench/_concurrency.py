"""The concurrency phase of ``bench_isolation``: several client *processes* at once, direct vs isolated.

Each client process (started by spawning, so it shares nothing with the parent) builds its own
direct engine and isolated sessions, then runs the operations it is told to. For every operation
and mode, all clients warm up, wait at a barrier, and run ``ops_per_client`` calls at once;
reported: throughput (operations per second over the wall time of the burst), p50 / p99 latency,
the isolated/direct throughput ratio, and CPU per operation - the client processes' own (summed)
and the DB-API server's.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

WARMUP = 10


def _client(pipe: Connection, index: int, direct_url: str, api_base: str, token: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.orm import sessionmaker

    from bench.bench_isolation import OPS
    from dbsession import DBSession, guard

    engine = guard.exempt(sa.create_engine(direct_url))
    makers = {"direct": sessionmaker(bind=engine),
              "isolation": sessionmaker(class_=DBSession, database_access_isolation=True,
                                        database_api_host=api_base, token=token)}
    while (command := pipe.recv()) is not None:
        op, mode, n = command
        fn, make = OPS[op][1], makers[mode]
        offset = index * 997  # clients spread over the rows
        for i in range(WARMUP):
            fn(make, offset + i)
        pipe.send("ready")
        pipe.recv()  # go
        times = []
        cpu0 = time.process_time()
        for i in range(n):
            t0 = time.perf_counter_ns()
            fn(make, offset + WARMUP + i)
            times.append(time.perf_counter_ns() - t0)
        pipe.send((times, time.process_time() - cpu0))
    engine.dispose()


def run_concurrency(levels: list[int], ops: list[str], ops_per_client: int, direct_url: str, server: Any,
                    skip: dict[str, str]) -> dict[str, Any]:
    """``{"<clients>": {op: {"direct": {...}, "isolation": {...}, "throughput_ratio": x}}}``."""
    ctx = multiprocessing.get_context("spawn")
    results: dict[str, Any] = {}
    for clients in levels:
        pipes, procs = [], []
        for index in range(clients):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_client, args=(theirs, index, direct_url, server.base, server.token),
                               daemon=True)
            proc.start()
            pipes.append(ours)
            procs.append(proc)
        level: dict[str, Any] = {}
        try:
            for op in ops:
                if op in skip:
                    level[op] = {"skipped": skip[op]}
                    continue
                entry = {mode: _burst(pipes, op, mode, ops_per_client, server if mode == "isolation" else None)
                         for mode in ("direct", "isolation")}
                entry["throughput_ratio"] = entry["isolation"]["ops_per_s"] / entry["direct"]["ops_per_s"]
                level[op] = entry
        finally:
            for pipe in pipes:
                pipe.send(None)
            for proc in procs:
                proc.join(30)
        results[str(clients)] = level
    return results


def _burst(pipes: list[Connection], op: str, mode: str, n: int, server: Any) -> dict[str, float]:
    for pipe in pipes:
        pipe.send((op, mode, n))
    for pipe in pipes:
        pipe.recv()  # ready
    srv0 = server.cpu_seconds() if server is not None else None
    t0 = time.perf_counter()
    for pipe in pipes:
        pipe.send("go")
    answers = [pipe.recv() for pipe in pipes]
    wall = time.perf_counter() - t0
    srv1 = server.cpu_seconds() if server is not None else None
    times = sorted(t for ts, _ in answers for t in ts)
    total = len(times)
    result = {"ops_per_s": total / wall, "p50_ms": times[total // 2] / 1e6,
              "p99_ms": times[min(total - 1, int(0.99 * total))] / 1e6,
              "client_cpu_ms": sum(cpu for _, cpu in answers) * 1e3 / total, "n": total}
    if srv0 is not None and srv1 is not None:
        result["server_cpu_ms"] = (srv1 - srv0) * 1e3 / total
    return result


def report_concurrency(results: dict[str, Any], requests_per_op: dict[str, float]) -> None:
    print("\nconcurrency (client processes at once; throughput in ops/s, latency in ms, CPU per op in ms):")
    header = (f"{'clients':>7} {'op':<15} {'direct/s':>9} {'isol./s':>8} {'ratio':>6} {'dir p50':>8} {'dir p99':>8} "
              f"{'iso p50':>8} {'iso p99':>8} {'cli CPU d/i':>12} {'srv CPU/req':>11}")
    print(header)
    print("-" * len(header))
    for clients, level in results.items():
        for op, entry in level.items():
            if "skipped" in entry:
                print(f"{clients:>7} {op:<15} skipped: {entry['skipped']}")
                continue
            d, i = entry["direct"], entry["isolation"]
            per_request = i.get("server_cpu_ms", float("nan")) / (requests_per_op.get(op) or 1)
            print(f"{clients:>7} {op:<15} {d['ops_per_s']:>9.0f} {i['ops_per_s']:>8.0f} {entry['throughput_ratio']:>5.2f}x "
                  f"{d['p50_ms']:>8.2f} {d['p99_ms']:>8.2f} {i['p50_ms']:>8.2f} {i['p99_ms']:>8.2f} "
                  f"{d['client_cpu_ms']:>5.2f}/{i['client_cpu_ms']:<6.2f} {per_request:>11.3f}")
