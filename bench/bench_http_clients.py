"""Which async HTTP client carries the async transport: httpx vs aiohttp, measured.

A benchmark, not a test. Run it from the repository root::

    python -m bench.bench_http_clients                # PostgreSQL (fresh database, dropped after)
    python -m bench.bench_http_clients --sqlite -n 2000 --json http.json

It starts the real DB-API (``dbapi-server serve`` in a subprocess, as ``bench.bench_isolation``
does), records the exact request an isolated session sends for a Variable.get-style read
(``POST /dbapi/v1/execute`` with the statement's wire document and a bearer token), and replays it
with each client over one keep-alive pool:

* ``1 task``: sequential requests - round-trip latency (median, p90) and client CPU per request;
* ``50 tasks``: 50 concurrent tasks in one event loop sharing the pool - latency, throughput and
  client CPU per request.

The sync transport's own client (``dbsession._http``) is measured too, sequentially, as the
reference. Every
answer is checked (status 200, the expected row), so a broken client cannot look fast. Clients
alternate in rounds so machine noise hits all of them; the better round is reported.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import orjson  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

import dbsession.transport  # noqa: E402
from bench.bench_isolation import (  # noqa: E402
    DEFAULT_URL,
    Server,
    _version,
    free_port,
    fresh_database,
    load_average,
    op_variable,
    seed,
)
from dbsession import DBSession  # noqa: E402
from dbsession.auth import TokenSource  # noqa: E402
from dbsession.transport import Transport  # noqa: E402

CONCURRENCY = 50


def capture_request(server: Server) -> tuple[str, bytes, dict[str, str], Any]:
    """(path under the API prefix, body, headers, rows) of the request a Variable.get-style read sends."""
    captured: list[tuple[str, Any]] = []
    original = dbsession.transport.Transport.post

    def recording(self: Any, path: str, payload: Any, **kw: Any) -> Any:
        captured.append((path, dict(payload)))
        return original(self, path, payload, **kw)

    dbsession.transport.Transport.post = recording  # type: ignore[method-assign]
    try:
        make = sessionmaker(class_=DBSession, database_access_isolation=True,
                            database_api_host=server.base, token=server.token)
        op_variable(make, 0)
    finally:
        dbsession.transport.Transport.post = original  # type: ignore[method-assign]
    [(path, payload)] = [c for c in captured if c[0] == "/execute"]
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "Authorization": f"Bearer {server.token}"}
    transport = Transport(server.base, TokenSource(server.token))
    try:
        answer = transport.post(path, payload, replay_safe=True)
    finally:
        transport.close()
    return path, orjson.dumps(payload), headers, answer["rows"]


def summarize(ns: list[int], cpu: float, wall: float) -> dict[str, float]:
    ms = sorted(t / 1e6 for t in ns)
    return {"median": statistics.median(ms), "p90": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
            "mean": statistics.fmean(ms), "n": len(ms), "client_cpu_ms": cpu * 1e3 / len(ms),
            "requests_per_s": len(ms) / wall}


RoundTrip = Callable[[], Awaitable[tuple[int, bytes]]]


async def _measure(round_trip: RoundTrip, n: int, tasks: int, check: Callable[[int, bytes], None]) -> dict[str, float]:
    for _ in range(max(50, n // 10)):  # warm-up: opens the pool's connections
        check(*await round_trip())
    gc.collect()
    times: list[int] = []
    per_task = max(1, n // tasks)

    async def worker() -> None:
        clock = time.perf_counter_ns
        for _ in range(per_task):
            t0 = clock()
            status, data = await round_trip()
            times.append(clock() - t0)
            check(status, data)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return summarize(times, time.process_time() - cpu0, time.perf_counter() - wall0)


async def measure_httpx(url: str, body: bytes, headers: dict[str, str], n: int, tasks: int,
                        check: Callable[[int, bytes], None]) -> dict[str, float]:
    import httpx

    limits = httpx.Limits(max_connections=tasks, max_keepalive_connections=tasks)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        async def round_trip() -> tuple[int, bytes]:
            response = await client.post(url, content=body, headers=headers)
            return response.status_code, response.content

        return await _measure(round_trip, n, tasks, check)


async def measure_aiohttp(url: str, body: bytes, headers: dict[str, str], n: int, tasks: int,
                          check: Callable[[int, bytes], None]) -> dict[str, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=tasks)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:
        async def round_trip() -> tuple[int, bytes]:
            async with client.post(url, data=body, headers=headers) as response:
                return response.status, await response.read()

        return await _measure(round_trip, n, tasks, check)


def measure_sync_client(server: Server, path: str, body: bytes, n: int,
                        check: Callable[[int, bytes], None]) -> dict[str, float]:
    """The sync transport's own HTTP/1.1 client (``dbsession._http``), the exact bytes it sends."""
    transport = Transport(server.base, TokenSource(server.token), maxsize=1)
    pool, request = transport._pool, transport._encode("POST", path, body)
    try:
        for _ in range(max(50, n // 10)):
            response = pool.request("POST", request)
            check(response.status, response.data)
        gc.collect()
        times = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter_ns()
            response = pool.request("POST", request)
            times.append(time.perf_counter_ns() - t0)
            check(response.status, response.data)
        return summarize(times, time.process_time() - cpu0, time.perf_counter() - wall0)
    finally:
        transport.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="dbsession_bench_http_"))
    try:
        with fresh_database(None if args.sqlite else args.database_url, args.sqlite, False) as db_url:
            engine = sa.create_engine(db_url)
            dbsession.guard.exempt(engine)
            seed(engine)
            engine.dispose()
            server = Server(db_url, free_port(), args.threads, workdir)
            try:
                server.wait_healthy()
                return _run(args, server, db_url)
            finally:
                server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, server: Server, db_url: str) -> dict[str, Any]:
    path, body, headers, rows = capture_request(server)
    url = f"{server.base}/dbapi/v1{path}"

    def check(status: int, data: bytes) -> None:
        if status != 200 or orjson.loads(data)["rows"] != rows:
            raise RuntimeError(f"unexpected answer {status}: {data[:200]!r}")

    results: dict[str, Any] = {
        "config": {"backend": sa.make_url(db_url).get_backend_name(), "requests": args.iterations,
                   "rounds": args.rounds, "concurrency": CONCURRENCY, "threads": args.threads,
                   "server": server.server, "request": f"POST /dbapi/v1{path} ({len(body)} bytes)"},
        "versions": {name: _version(name) for name in ("httpx", "httpcore", "aiohttp", "granian")},
        "load_before": load_average(), "clients": {}}
    n = args.iterations
    candidates: list[tuple[str, Callable[[int], dict[str, float]]]] = [
        ("sync client", lambda tasks: measure_sync_client(server, path, body, n, check)),
        ("httpx", lambda tasks: asyncio.run(measure_httpx(url, body, headers, n, tasks, check))),
        ("aiohttp", lambda tasks: asyncio.run(measure_aiohttp(url, body, headers, n, tasks, check))),
    ]
    rounds: dict[tuple[str, int], list[dict[str, float]]] = {}
    for rnd in range(args.rounds):
        order = candidates if rnd % 2 == 0 else candidates[::-1]
        for name, measure in order:
            for tasks in (1, CONCURRENCY):
                if tasks > 1 and name == "sync client":
                    continue
                rounds.setdefault((name, tasks), []).append(measure(tasks))
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    for (name, tasks), found in rounds.items():
        best = min(found, key=lambda r: r["client_cpu_ms"])
        results["clients"].setdefault(name, {})[f"{tasks} task{'s' if tasks > 1 else ''}"] = {
            "best": best, "rounds": found}
    results["load_after"] = load_average()
    report(results)
    return results


def report(results: dict[str, Any]) -> None:
    cfg = results["config"]
    print(f"\n== async HTTP clients against the DB-API ({cfg['backend']}, {cfg['request']}) ==")
    print(f"{cfg['requests']} requests per client and concurrency, best of {cfg['rounds']} rounds; "
          f"server {cfg['server']}, threads {cfg['threads']}; versions {results['versions']}")
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    header = f"{'client':<16} {'tasks':>5} {'median ms':>9} {'p90 ms':>8} {'req/s':>7} {'CPU ms/req':>10}"
    print(header + "\n" + "-" * len(header))
    for name, per in results["clients"].items():
        for tasks, entry in per.items():
            b = entry["best"]
            print(f"{name:<16} {tasks.split()[0]:>5} {b['median']:>9.3f} {b['p90']:>8.3f} "
                  f"{b['requests_per_s']:>7.0f} {b['client_cpu_ms']:>10.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--iterations", "-n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="waitress threads of the DB-API")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr) if args.json == "-" else contextlib.nullcontext():
        results = run(args)
    if args.json:
        text = json.dumps(results, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
