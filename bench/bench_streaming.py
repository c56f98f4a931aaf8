"""Peak memory of streaming a large result through the DB-API, client and server, against one big read.

A benchmark, not a test. Run it from the repository root::

    python -m bench.bench_streaming                       # PostgreSQL (fresh database, dropped after)
    python -m bench.bench_streaming --sqlite              # a temporary SQLite file
    python -m bench.bench_streaming --mysql               # MariaDB/MySQL at 127.0.0.1:3306 (root, no password)
    python -m bench.bench_streaming --rows 200000 --page 500 --json streaming.json

What it does:

* creates a fresh database (as ``bench.bench_isolation`` does; MariaDB/MySQL through ``mysql+pymysql``)
  with one table, ``stream_payload`` (``bench.models.Payload``): ``--rows`` rows of an integer id and
  a 100-byte string;
* starts the real DB-API in a subprocess with a JWT made for the run (``bench.bench_isolation.Server``);
* runs each case in a fresh client process (this module with ``--client-case``), so that peaks do
  not mix: the child warms up (imports, statement compilation, a 10-row read), then reads every row
  as ORM objects and drops them as it goes:

  - ``isolated_yield``  ``DBSession(database_access_isolation=True)``, ``session.scalars(select(Payload)
    .execution_options(yield_per=PAGE))`` iterated - a streamed result, page by page over HTTP;
  - ``isolated_all``    the same without ``yield_per``: ``.all()``, then dropped - one big answer;
  - ``direct_yield``    a plain ``Session`` on a direct engine with ``yield_per`` (a server-side
    cursor of the driver), for reference;
  - ``direct_all``      a plain ``Session`` with ``.all()``, for reference;

* per case, the child reports its peak RSS and its peak over the RSS just before the read, the time
  of the read and the HTTP requests it made (a wrapper around ``Transport._request``); a second
  child repeats the case under ``tracemalloc`` for the Python-allocation peak of the read (traced
  separately because tracemalloc's own bookkeeping inflates RSS and time);
* meanwhile a thread of this process samples the DB-API process's RSS (``/proc/<pid>/status``
  ``VmRSS``) every 20 ms and reports the peak over its value just before the case.

Peak RSS of a child: ``VmHWM`` from ``/proc/self/status``. ``getrusage(RUSAGE_SELF).ru_maxrss`` is
reported too, but on Linux it is not the child's own peak: ``execve`` carries over the high-water
mark of the process that forked the child, i.e. this parent's RSS at the time (shown in the table
header). Server RSS rarely falls back after a big answer (the allocator keeps the freed memory), so
the cases run streamed first; each delta is over the RSS just before that case.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # ``python bench/bench_streaming.py`` puts bench/ first instead
    sys.path.insert(0, str(REPO_ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

import dbsession  # noqa: E402
from bench.bench_isolation import (  # noqa: E402
    Server,
    counting_requests,
    free_port,
    fresh_database,
    load_average,
    versions,
)
from bench.models import Payload, StreamingBase  # noqa: E402
from dbsession import DBSession  # noqa: E402

DEFAULT_PG_URL = f"postgresql+psycopg://root@127.0.0.1/dbsession_bench_streaming_{os.getpid()}"  # the run's own
DEFAULT_MYSQL_URL = f"mysql+pymysql://root@127.0.0.1:3306/dbsession_bench_streaming_{os.getpid()}"
METADATA_PATH = "bench.models:StreamingBase.metadata"
PAYLOAD_BYTES = 100
SAMPLE_INTERVAL = 0.02
CHILD_ENV = "DBSESSION_BENCH_STREAMING_CHILD"  # the child's configuration (JSON), token included

# case: (label, isolated, yield_per)
CASES: dict[str, tuple[str, bool, bool]] = {
    "isolated_yield": ("isolated, yield_per", True, True),
    "direct_yield": ("direct, yield_per (reference)", False, True),
    "isolated_all": ("isolated, .all()", True, False),
    "direct_all": ("direct, .all() (reference)", False, False),
}


def payload_for(i: int) -> str:
    head = f"row {i:09d} "
    return head + "abcdefghijklmnopqrstuvwxyz0123456789"[i % 36] * (PAYLOAD_BYTES - len(head))


# -- database --------------------------------------------------------------------------------------
@contextlib.contextmanager
def fresh_mysql_database(url: str, keep: bool) -> Iterator[str]:
    """A new, empty MariaDB/MySQL database, created and dropped (``fresh_database`` does PostgreSQL)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() not in ("mysql", "mariadb"):
        raise SystemExit(f"--mysql: the --database-url must be a MySQL/MariaDB URL, got {parsed!r}")
    name = parsed.database
    if not name or not name.replace("_", "").isalnum():
        raise SystemExit(f"--database-url must name a plain database, got {name!r}")
    admin = sa.create_engine(parsed.set(database=""), isolation_level="AUTOCOMMIT")
    dbsession.guard.exempt(admin)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
            conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield parsed.render_as_string(hide_password=False)
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


def seed(url: str, rows: int) -> None:
    engine = sa.create_engine(url)
    dbsession.guard.exempt(engine)
    try:
        StreamingBase.metadata.create_all(engine)
        with engine.begin() as conn:
            for start in range(0, rows, 5000):
                conn.execute(sa.insert(Payload), [{"id": i, "payload": payload_for(i)}
                                                  for i in range(start, min(rows, start + 5000))])
        with engine.connect() as conn:
            count = conn.scalar(sa.select(sa.func.count()).select_from(Payload))
        if count != rows:
            raise RuntimeError(f"seeded {count} rows, expected {rows}")
    finally:
        engine.dispose()


# -- the client side (runs in a child process) -----------------------------------------------------
def proc_status_kib(field: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), or None."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def read_all(session: Session, yield_per: int | None, limit: int | None = None) -> tuple[int, int]:
    """Read the rows as ORM objects and drop them; (row count, sum of ids) to check the result."""
    stmt = sa.select(Payload)
    if limit is not None:
        stmt = stmt.order_by(Payload.id).limit(limit)
    n = total = 0
    if yield_per:
        for obj in session.scalars(stmt.execution_options(yield_per=yield_per)):
            n += 1
            total += obj.id
    else:
        objs = session.scalars(stmt).all()
        n, total = len(objs), sum(obj.id for obj in objs)
        del objs
    return n, total


def client_main(case: str, traced: bool) -> int:
    cfg = json.loads(os.environ[CHILD_ENV])
    page = int(cfg["page"])
    if case == "warmup":  # the server's first statements (connection pool, compilation), unmeasured
        make = sessionmaker(class_=DBSession, database_access_isolation=True,
                            database_api_host=cfg["host"], token=cfg["token"])
        for yield_per in (page, None):
            with make() as session:
                read_all(session, yield_per, limit=3 * page)
        print(json.dumps({"case": case}))
        return 0
    _, isolated, streamed = CASES[case]
    engine = None
    if isolated:
        make = sessionmaker(class_=DBSession, database_access_isolation=True,
                            database_api_host=cfg["host"], token=cfg["token"])
    else:
        engine = sa.create_engine(cfg["url"])
        make = sessionmaker(bind=engine)
    yield_per = page if streamed else None
    with make() as session:  # warm-up: imports, compilation, the pool's connection
        read_all(session, yield_per, limit=10)
    gc.collect()
    rss_before, hwm_before = proc_status_kib("VmRSS"), proc_status_kib("VmHWM")
    if traced:
        import tracemalloc

        tracemalloc.start()
    with counting_requests() as counts:
        t0 = time.perf_counter()
        with make() as session:
            n, total = read_all(session, yield_per)
        elapsed = time.perf_counter() - t0
    result: dict[str, Any] = {"case": case, "rows": n, "id_sum": total, "seconds": elapsed,
                              "http_requests": sum(counts.values()), "rss_before_kib": rss_before,
                              "hwm_before_kib": hwm_before}
    if traced:
        result["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    result["hwm_kib"] = proc_status_kib("VmHWM")
    result["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if engine is not None:
        engine.dispose()
    print(json.dumps(result))
    return 0


# -- the parent: server RSS sampling and the child processes ---------------------------------------
class RssSampler:
    """Peak ``VmRSS`` of process *pid*, sampled every 20 ms in a thread, over a baseline taken first."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.pid, self.interval = pid, interval
        self.baseline = self.peak = proc_status_kib("VmRSS", pid)
        self.after: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_status_kib("VmRSS", self.pid)
            if rss is not None:
                self.samples += 1
                self.peak = rss if self.peak is None else max(self.peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = proc_status_kib("VmRSS", self.pid)
        if self.after is not None and (self.peak is None or self.after > self.peak):
            self.peak = self.after

    @property
    def delta(self) -> int | None:
        return None if self.peak is None or self.baseline is None else self.peak - self.baseline


def run_child(case: str, cfg: dict[str, Any], traced: bool = False, timeout: float = 600) -> dict[str, Any]:
    env = dict(os.environ, **{CHILD_ENV: json.dumps(cfg)})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "bench.bench_streaming", "--client-case", case]
    if traced:
        cmd.append("--tracemalloc")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"client case {case} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="dbsession_bench_streaming_"))
    try:
        if args.mysql:
            database = fresh_mysql_database(args.database_url or DEFAULT_MYSQL_URL, args.keep_db)
        elif args.sqlite:
            database = fresh_database(None, True, args.keep_db)
        else:
            database = fresh_database(args.database_url or DEFAULT_PG_URL, False, args.keep_db)
        with database as url:
            return _run(args, url, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, url: str, workdir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    seed(url, args.rows)
    print(f"seeded {args.rows} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    server = Server(url, args.port or free_port(), args.threads, workdir, metadata=METADATA_PATH)
    try:
        server.wait_healthy()
        info = server.info()
        cfg = {"url": url, "host": server.base, "token": server.token, "page": args.page}
        run_child("warmup", cfg)
        time.sleep(0.2)
        expected_sum = args.rows * (args.rows - 1) // 2
        results: dict[str, Any] = {
            "config": {"backend": sa.make_url(url).get_backend_name(), "rows": args.rows, "page": args.page,
                       "payload_bytes": PAYLOAD_BYTES, "threads": args.threads,
                       "database_url_safe": sa.make_url(url).render_as_string(hide_password=True),
                       "parent_rss_kib": proc_status_kib("VmRSS"), "parent_hwm_kib": proc_status_kib("VmHWM")},
            "versions": versions(info, sa.make_url(url).get_backend_name()),
            "load_before": load_average(), "cases": {},
        }
        for case in args.cases:
            with RssSampler(server.worker_pid) as sampler:
                measured = run_child(case, cfg)
            with RssSampler(server.worker_pid) as traced_sampler:
                traced = run_child(case, cfg, traced=True)
            for r in (measured, traced):
                if (r["rows"], r["id_sum"]) != (args.rows, expected_sum):
                    raise RuntimeError(f"{case}: read {r['rows']} rows (id sum {r['id_sum']}), expected "
                                       f"{args.rows} ({expected_sum})")
            results["cases"][case] = {
                "label": CASES[case][0], **measured, "tracemalloc_peak": traced["tracemalloc_peak"],
                "traced_seconds": traced["seconds"],
                "server": {"baseline_kib": sampler.baseline, "peak_kib": sampler.peak, "after_kib": sampler.after,
                           "delta_kib": sampler.delta, "samples": sampler.samples,
                           "traced_run_delta_kib": traced_sampler.delta},
            }
            print(f"{case} done", file=sys.stderr, flush=True)
        results["load_after"] = load_average()
        report(results)
        return results
    finally:
        server.stop()


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def report(results: dict[str, Any]) -> None:
    cfg, v = results["config"], results["versions"]
    print("\n== dbsession streaming benchmark: peak memory ==")
    print(f"backend: {cfg['backend']} ({cfg['database_url_safe']}); {cfg['rows']} rows of an int id and a "
          f"{cfg['payload_bytes']}-byte string; yield_per / page {cfg['page']}; server threads {cfg['threads']}; "
          f"{v['machine']['cpus']} CPUs")
    print("client: " + ", ".join(f"{k} {val}" for k, val in v["client"].items()))
    print("server: " + ", ".join(f"{k} {val}" for k, val in v["server"].items()))
    print(f"load average before {results['load_before']}, after {results['load_after']}; parent RSS "
          f"{_mib(cfg['parent_rss_kib'])} MiB (peak {_mib(cfg['parent_hwm_kib'])} MiB: a floor of ru_maxrss)")
    header = (f"{'case':<30} {'rows':>7} {'time s':>7} {'cli peak':>8} {'cli +read':>9} {'ru_maxrss':>9} "
              f"{'tracemalloc':>11} {'srv +peak':>9} {'srv after':>9} {'HTTP req':>8}")
    print("\n" + header)
    print("-" * len(header))
    for r in results["cases"].values():
        s = r["server"]
        grown = None if r["hwm_kib"] is None or r["rss_before_kib"] is None else r["hwm_kib"] - r["rss_before_kib"]
        retained = None if s["after_kib"] is None or s["baseline_kib"] is None else s["after_kib"] - s["baseline_kib"]
        print(f"{r['label']:<30} {r['rows']:>7} {r['seconds']:>7.2f} {_mib(r['hwm_kib']):>8} {_mib(grown):>9} "
              f"{_mib(r['ru_maxrss_kib']):>9} {_mib(r['tracemalloc_peak'] / 1024):>11} {_mib(s['delta_kib']):>9} "
              f"{_mib(retained):>9} {r['http_requests']:>8}")
    print("(MiB. cli peak: the client child's peak RSS (VmHWM); cli +read: that peak over its RSS just before "
          "the read (after imports and a warm-up read); ru_maxrss: getrusage in the child, floored by the "
          "parent's peak; tracemalloc: peak of Python allocations during the read (separate run); srv +peak: "
          "the DB-API process's peak RSS over its RSS before the case, sampled every "
          f"{SAMPLE_INTERVAL * 1000:.0f} ms; srv after: what it kept after the case. Direct cases do not use the "
          "DB-API.)")


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    backend = parser.add_mutually_exclusive_group()
    backend.add_argument("--sqlite", action="store_true", help="use a temporary SQLite file")
    backend.add_argument("--mysql", action="store_true",
                         help=f"use MariaDB/MySQL (default URL {DEFAULT_MYSQL_URL})")
    parser.add_argument("--database-url",
                        help=f"URL of a database to create, use and drop (default {DEFAULT_PG_URL}, "
                             "or the MySQL one with --mysql)")
    parser.add_argument("--rows", type=int, default=50_000, help="rows in the table (default 50000)")
    parser.add_argument("--page", type=int, default=1000, help="yield_per, the page size (default 1000)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--threads", type=int, default=4, help="waitress threads of the DB-API")
    parser.add_argument("--port", type=int, default=0, help="DB-API port (default: a free one)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    parser.add_argument("--client-case", choices=[*CASES, "warmup"], help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")
    if args.rows < 1 or args.page < 1:
        parser.error("--rows and --page must be >= 1")
    if args.sqlite and args.database_url:
        parser.error("--database-url does not go with --sqlite")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client_case:
        return client_main(args.client_case, args.tracemalloc)
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
