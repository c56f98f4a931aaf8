"""Direct vs isolated access, side by side in one run: medians and isolation/direct ratios.

A benchmark, not a test. Run it from the repository root::

    python -m bench.bench_isolation                       # PostgreSQL (fresh database, dropped after)
    python -m bench.bench_isolation --sqlite              # a temporary SQLite file
    python -m bench.bench_isolation --iterations 1000 --json results.json
    python -m bench.bench_isolation --profile get         # where the time goes (py-spy or cProfile)

What it does:

* creates a fresh database with a small Airflow-like schema (``bench.models``) and a few hundred rows;
* starts the real DB-API (``dbapi-server serve``: granian, or ``--server waitress``) in a *subprocess*, so client and server do
  not share a GIL, with JWT authentication (Ed25519 key pair made for the run);
* times four worker-style operations, each in a fresh session - get by primary key, a filtered list
  of 10 rows, get + modify + commit, and a Variable.get-style scalar - with a plain ``Session`` on a
  direct engine and with ``DBSession(database_access_isolation=True)``, direct and isolated calls
  alternating in chunks (ABBA..., ``--chunk``) so machine noise hits both, and keeping the better
  median of the rounds, as the anchors in ``shared/ANCHORS.md`` did;
* counts the HTTP requests each isolated operation makes (a wrapper around the client transport, in
  an untimed pass), the client's CPU per operation and the server process's CPU per operation;
* measures the floors once: one keep-alive HTTP round trip (``GET /dbapi/v1/info`` with urllib3, and
  with a minimal client on a bare socket) and one ``SELECT 1`` over the raw driver connection;
* then the concurrency phase (``--concurrency 4,16``): that many client *processes* run each op at
  once, direct and isolated; throughput, isolated/direct throughput ratio, p50/p99 latency and CPU
  per op on both sides (``bench/_concurrency.py``);
* prints the load average before and after: on a busy machine the numbers are noisy (two runs
  minutes apart easily differ by 20-30%); compare ratios from the same run, not across runs.

``--profile OP`` then samples client and server with py-spy (``pip install py-spy``; cProfile on
the client otherwise); ``--profile-gil`` shows Python CPU only, without time spent waiting.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # ``python bench/bench_isolation.py`` puts bench/ first instead
    sys.path.insert(0, str(REPO_ROOT))

import sqlalchemy as sa  # noqa: E402
import urllib3  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

import dbsession  # noqa: E402
import dbsession.transport  # noqa: E402
from bench._concurrency import report_concurrency, run_concurrency  # noqa: E402
from bench.models import Base, Dag, DagRun, TaskInstance, Variable  # noqa: E402
from dbapi_server import mint_token  # noqa: E402
from dbapi_server.keys import write_keypair  # noqa: E402
from dbsession import DBSession  # noqa: E402

# The database is this run's own (the pid in its name): two runs at once do not drop each other's.
# A database a run created is marked with its host and pid (COMMENT ON DATABASE); the next run
# drops those whose run no longer exists (killed before it could drop its own; see fresh_database).
DEFAULT_URL = f"postgresql+psycopg://root@127.0.0.1/dbsession_bench_{os.getpid()}"
METADATA_PATH = "bench.models:Base.metadata"

N_DAGS, N_RUNS, N_PLAIN_TASKS, N_MAPPED = 4, 5, 12, 3  # 4 * 5 * (12 + 3) = 300 task instances
N_VARIABLES = 50

# (isolation/direct ratios and medians from shared/ANCHORS.md, for the table)
ANCHORS: dict[str, list[tuple[str, float, float]]] = {
    # op: [(label, direct ms, isolation ms)]
    "get": [("Airflow 2.10 TI get by key", 1.21, 10.76), ("naive relay get-by-key", 0.67, 3.0)],
    "list10": [("Airflow 2.10 fetch_task_instances (3 rows)", 1.66, 9.61)],
    "modify_commit": [("Airflow 2.10 ti.set_state", 3.35, 7.76), ("naive relay get+modify+commit", 1.3, 4.7)],
    "variable": [("Airflow 2.10 Variable.get", 0.64, 5.83), ("Airflow 3 execution API variables.get", 0.73, 4.37)],
}
ANCHOR_FLOORS = ("PostgreSQL SELECT round trip 0.08-0.16 ms; HTTP/1.1 keep-alive to a minimal Flask app "
                 "0.58-0.69 ms (http.client/urllib3)")


# -- seed data -------------------------------------------------------------------------------------
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
RUN_KEYS = [(f"bench_dag_{d}", f"scheduled__2025-01-{r + 1:02d}T00:00:00+00:00")
            for d in range(N_DAGS) for r in range(N_RUNS)]
TI_KEYS = [(dag_id, f"task_{t:02d}", run_id, -1) for dag_id, run_id in RUN_KEYS for t in range(N_PLAIN_TASKS)]
TI_KEYS += [(dag_id, "mapped_task", run_id, m) for dag_id, run_id in RUN_KEYS for m in range(N_MAPPED)]
VARIABLE_KEYS = [f"bench_variable_{i:03d}" for i in range(N_VARIABLES)]


def seed(engine: sa.Engine) -> int:
    """Create the schema and insert the rows; returns the number of rows."""
    Base.metadata.create_all(engine)
    states = ["success", "failed", "running", "queued", None]
    with Session(engine) as session:
        for d in range(N_DAGS):
            session.add(Dag(dag_id=f"bench_dag_{d}", fileloc=f"/opt/airflow/dags/bench_dag_{d}.py",
                            owners="airflow", description=f"benchmark DAG {d}", last_parsed_time=T0))
        session.flush()
        for n, (dag_id, run_id) in enumerate(RUN_KEYS):
            start = T0 + dt.timedelta(days=n % N_RUNS)
            session.add(DagRun(dag_id=dag_id, run_id=run_id, logical_date=start, start_date=start,
                               end_date=start + dt.timedelta(minutes=5), state="success",
                               run_type="scheduled", conf={"n": n}))
        session.flush()
        for n, (dag_id, task_id, run_id, map_index) in enumerate(TI_KEYS):
            start = T0 + dt.timedelta(minutes=n)
            session.add(TaskInstance(
                dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index, start_date=start,
                end_date=start + dt.timedelta(seconds=42), duration=42.0 + n / 1000, state=states[n % 5],
                try_number=1, max_tries=3, hostname="worker-1.example.com", unixname="airflow",
                operator="PythonOperator", queued_dttm=start - dt.timedelta(seconds=3), pid=1000 + n,
                executor="CeleryExecutor", next_kwargs=None if n % 3 else {"trigger": n}))
        for i, key in enumerate(VARIABLE_KEYS):
            session.add(Variable(key=key, val=f"value-{i}-" + "x" * 40, description=f"variable {i}"))
        session.commit()
    return N_DAGS + len(RUN_KEYS) + len(TI_KEYS) + N_VARIABLES


# -- the operations (each in a fresh session, as a worker would) -----------------------------------
Maker = Callable[[], Session]


def op_get(make: Maker, i: int) -> Any:
    with make() as session:
        ti = session.get(TaskInstance, TI_KEYS[i % len(TI_KEYS)])
        assert ti is not None
        return ti.try_number


def op_list10(make: Maker, i: int) -> Any:
    dag_id, run_id = RUN_KEYS[i % len(RUN_KEYS)]
    with make() as session:
        tis = session.scalars(
            sa.select(TaskInstance)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
            .order_by(TaskInstance.task_id, TaskInstance.map_index)
            .limit(10)).all()
        return [(ti.task_id, ti.map_index) for ti in tis]


def op_modify_commit(make: Maker, i: int) -> Any:
    with make() as session:
        ti = session.get(TaskInstance, TI_KEYS[i % len(TI_KEYS)])
        assert ti is not None
        ti.try_number += 1
        session.commit()


def op_variable(make: Maker, i: int) -> Any:
    with make() as session:
        return session.scalar(sa.select(Variable.val).where(Variable.key == VARIABLE_KEYS[i % N_VARIABLES]))


OPS: dict[str, tuple[str, Callable[[Maker, int], Any]]] = {
    "get": ("get by PK (TaskInstance, 4-col key)", op_get),
    "list10": ("filtered list, 10 rows", op_list10),
    "modify_commit": ("get + modify + commit", op_modify_commit),
    "variable": ("Variable.get-style scalar", op_variable),
}


# -- database lifecycle ----------------------------------------------------------------------------
RUN_MARK = "dbsession bench run"
_RUN_COMMENT = re.compile(r"dbsession bench run: host=(?P<host>\S+) pid=(?P<pid>[0-9]+)")


def _run_comment() -> str:
    return f"{RUN_MARK}: host={socket.gethostname()} pid={os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sweep_stale_databases(admin: sa.Engine) -> list[str]:
    """Drop the databases earlier runs on this host created and never dropped (they were killed).

    Only databases marked by a run (``COMMENT ON DATABASE``) of this host whose process is gone,
    and without ``FORCE``: one still in use (a server the dead run left behind) is left alone.
    """
    with admin.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database").all()
    dropped = []
    for name, comment in rows:
        mark = _RUN_COMMENT.fullmatch(comment or "")
        if mark is None or mark["host"] != socket.gethostname() or _pid_alive(int(mark["pid"])):
            continue
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {_quoted(name)}")
        except sa.exc.DBAPIError:
            continue  # still in use, or not ours to drop
        dropped.append(name)
    if dropped:
        print(f"dropped {len(dropped)} database(s) left by killed benchmark runs: {', '.join(dropped)}",
              file=sys.stderr)
    return dropped


def _sweep_stale_tempdirs() -> None:
    """Remove temporary directories of killed runs on this machine (``dbsession_bench_<pid>_...``)."""
    for path in Path(tempfile.gettempdir()).glob("dbsession_bench_*"):
        mark = re.fullmatch(r"dbsession_bench_(?:run_)?([0-9]+)_.*", path.name)
        if mark and path.is_dir() and path.stat().st_uid == os.getuid() and not _pid_alive(int(mark[1])):
            shutil.rmtree(path, ignore_errors=True)


def run_tempdir(kind: str = "") -> str:
    """A temporary directory named after this run's pid (removed by a later run if this one is killed)."""
    with contextlib.suppress(OSError):
        _sweep_stale_tempdirs()
    return tempfile.mkdtemp(prefix=f"dbsession_bench_{kind}{os.getpid()}_")


@contextlib.contextmanager
def exit_on_termination() -> Iterator[None]:
    """SIGTERM / SIGHUP end the run through ``SystemExit``, so its ``finally`` blocks clean up.

    (SIGINT already does, as ``KeyboardInterrupt``.) Only where the signal still has its default
    handler, in the main thread.
    """
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:
                previous[signum] = signal.signal(signum, _exit_for_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _exit_for_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def fresh_database(url: str | None, use_sqlite: bool, keep: bool) -> Iterator[str]:
    """A new, empty database: a temporary SQLite file, or a PostgreSQL database created and dropped.

    A PostgreSQL database is marked as this run's; databases of earlier runs on this host that were
    killed before dropping theirs are dropped first (:func:`sweep_stale_databases`). With *keep*
    the database stays, unmarked.
    """
    with exit_on_termination():
        if use_sqlite:
            tmp = tempfile.mkdtemp(prefix="dbsession_bench_kept_") if keep else run_tempdir()
            try:
                yield f"sqlite:///{tmp}/bench.db"
            finally:
                if not keep:
                    shutil.rmtree(tmp, ignore_errors=True)
            return
        assert url is not None
        parsed = sa.make_url(url)
        if parsed.get_backend_name() != "postgresql":
            raise SystemExit(f"--database-url: only PostgreSQL URLs are supported (or --sqlite), got {parsed!r}")
        name = parsed.database
        if not name or not name.replace("_", "").isalnum():
            raise SystemExit(f"--database-url must name a plain database, got {name!r}")
        admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        dbsession.guard.exempt(admin)  # trusted side: usable even if the process is in isolation mode
        try:
            with contextlib.suppress(sa.exc.DBAPIError):
                sweep_stale_databases(admin)
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
                conn.exec_driver_sql(f"COMMENT ON DATABASE \"{name}\" IS '{_run_comment()}'")
            yield parsed.render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                if keep:
                    conn.exec_driver_sql(f"COMMENT ON DATABASE \"{name}\" IS '{RUN_MARK}, kept (--keep-db)'")
                else:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()


# -- the DB-API subprocess -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``dbapi-server serve`` in a subprocess, with a key pair and a token made for the run."""

    def __init__(self, url: str, port: int, threads: int, workdir: Path, metadata: str = METADATA_PATH,
                 server: str = "granian") -> None:
        self.port = port
        self.server = server
        self.base = f"http://127.0.0.1:{port}"
        private_path, public_path = write_keypair(workdir / "keys")
        self.token = mint_token(private_path.read_bytes(), subject="bench", ttl=3600)
        self.log_path = workdir / "server.log"
        env = dict(os.environ, DBAPI_JWT_KEY_FILE=str(public_path))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self._command(url, port, threads, metadata),
                                     cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.pids = [self.proc.pid]
        self.http = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, retries=False,
                                               timeout=urllib3.Timeout(connect=1.0, read=10.0))

    def _command(self, url: str, port: int, threads: int, metadata: str) -> list[str]:
        return [sys.executable, "-c", "from dbapi_server.cli import main; main()", "serve",
                "--database-url", url, "--metadata", metadata, "--port", str(port), "--threads", str(threads),
                "--server", self.server]

    def wait_healthy(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the DB-API exited with {self.proc.returncode}:\n{self.log()}")
            try:
                response = self.http.request("GET", "/dbapi/v1/health")
                if response.status == 200:
                    self.pids = [self.proc.pid, *_descendants(self.proc.pid)]  # granian's worker
                    return json.loads(response.data)
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the DB-API did not become healthy in {timeout:.0f} s:\n{self.log()}")

    def info(self) -> dict[str, Any]:
        return json.loads(self.http.request("GET", "/dbapi/v1/info").data)

    @property
    def worker_pid(self) -> int:
        """The process that runs the application (granian's worker; waitress serves in one)."""
        return self.pids[-1]

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the server's processes so far (Linux /proc), or None."""
        total = 0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return None
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _die_with_parent() -> None:
    """In the server's child process (Linux): SIGTERM when the benchmark dies, even by SIGKILL, so
    no orphaned server keeps the run's database in use."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _descendants(pid: int) -> list[int]:
    """Child processes of *pid*, recursively (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


# -- measuring -------------------------------------------------------------------------------------
def summarize(ns: list[int]) -> dict[str, float]:
    ms = sorted(t / 1e6 for t in ns)
    return {"median": statistics.median(ms), "p90": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
            "mean": statistics.fmean(ms), "min": ms[0], "max": ms[-1], "n": len(ms)}


Mode = tuple[str, Maker, "Server | None"]


def time_round(fn: Callable[[Maker, int], Any], modes: list[Mode], n: int, offset: int,
               chunk: int) -> dict[str, dict[str, float]]:
    """*n* timed calls per mode, interleaved in chunks (A B B A A B ...) so noise hits every mode.

    Per mode: median/p90/... of the calls, the client process's CPU per call and, for a mode with
    a server, the server process's CPU per call.
    """
    gc.collect()
    clock = time.perf_counter_ns
    times: dict[str, list[int]] = {name: [] for name, _, _ in modes}
    cpu: dict[str, float] = dict.fromkeys(times, 0.0)
    srv_cpu: dict[str, float | None] = dict.fromkeys(times, 0.0)
    for c, first in enumerate(range(0, n, chunk)):
        indices = range(offset + first, offset + min(n, first + chunk))
        for name, make, server in (modes if c % 2 == 0 else modes[::-1]):
            out = times[name]
            cpu0 = time.process_time()
            srv0 = server.cpu_seconds() if server is not None else None
            for i in indices:
                t0 = clock()
                fn(make, i)
                out.append(clock() - t0)
            cpu[name] += time.process_time() - cpu0
            srv1 = server.cpu_seconds() if server is not None else None
            total = srv_cpu[name]
            srv_cpu[name] = None if total is None or srv0 is None or srv1 is None else total + srv1 - srv0
    results = {}
    for name, _, server in modes:
        result = summarize(times[name])
        result["client_cpu_ms"] = cpu[name] * 1e3 / n
        if server is not None:
            total = srv_cpu[name]
            result["server_cpu_ms"] = float("nan") if total is None else total * 1e3 / n
        results[name] = result
    return results


@contextlib.contextmanager
def counting_requests() -> Iterator[Counter[str]]:
    """Count the isolated client's HTTP requests (by method and route) while active."""
    counts: Counter[str] = Counter()
    original = dbsession.transport.Transport._request

    def wrapper(self: Any, method: str, path: str, *args: Any, **kw: Any) -> Any:
        route = path.rsplit("/", 1)[-1] if path.startswith("/transactions/") else path.lstrip("/")
        counts[f"{method} {route}"] += 1
        return original(self, method, path, *args, **kw)

    dbsession.transport.Transport._request = wrapper  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        dbsession.transport.Transport._request = original  # type: ignore[method-assign]


def _time_floor(server: Server, n: int, round_trip: Callable[[], object]) -> dict[str, float]:
    """Warm up, then time *n* round trips with client and server CPU per call."""
    for _ in range(max(20, n // 10)):
        round_trip()
    times = []
    cpu0, srv0 = time.process_time(), server.cpu_seconds()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        round_trip()
        times.append(time.perf_counter_ns() - t0)
    result = summarize(times)
    result["client_cpu_ms"] = (time.process_time() - cpu0) * 1e3 / n
    srv1 = server.cpu_seconds()
    result["server_cpu_ms"] = (srv1 - srv0) * 1e3 / n if srv0 is not None and srv1 is not None else float("nan")
    return result


def http_floor(server: Server, n: int) -> dict[str, float]:
    """One keep-alive urllib3 round trip to ``GET /dbapi/v1/info`` (no database, no auth)."""
    pool = urllib3.HTTPConnectionPool("127.0.0.1", server.port, maxsize=1, retries=False)
    try:
        return _time_floor(server, n, lambda: pool.request("GET", "/dbapi/v1/info").data)
    finally:
        pool.close()


def transport_http_floor(server: Server, n: int) -> dict[str, float]:
    """The same ``GET /dbapi/v1/info`` through the client's own transport (JSON decoding included)."""
    from dbsession.auth import TokenSource

    transport = dbsession.transport.Transport(server.base, TokenSource(server.token), maxsize=1)
    try:
        return _time_floor(server, n, lambda: transport.get("/info"))
    finally:
        transport.close()


def raw_http_floor(server: Server, n: int) -> dict[str, float]:
    """The same ``GET /dbapi/v1/info`` with a minimal HTTP/1.1 client on a bare socket.

    One ``sendall`` per request and a hand-parsed status line and ``Content-Length``: how much of
    the urllib3 floor is the client stack rather than the server and the loopback.
    """
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    request = f"GET /dbapi/v1/info HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()

    def round_trip() -> bytes:
        sock.sendall(request)
        status = reader.readline()
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = reader.read(length)
        if b" 200 " not in status:
            raise RuntimeError(f"GET /dbapi/v1/info answered {status!r}")
        return body

    try:
        return _time_floor(server, n, round_trip)
    finally:
        reader.close()
        sock.close()


def db_floor(engine: sa.Engine, n: int) -> dict[str, float]:
    """One ``SELECT 1`` over the raw driver connection (no ORM, no SQLAlchemy execution)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        times = []
        for i in range(n + 20):
            t0 = time.perf_counter_ns()
            cursor.execute("SELECT 1")
            cursor.fetchall()
            if i >= 20:
                times.append(time.perf_counter_ns() - t0)
        cursor.close()
        raw.rollback()
        return summarize(times)
    finally:
        raw.close()


# -- profiling -------------------------------------------------------------------------------------
_BUCKETS = (
    ("sqlalchemy/orm", "sqlalchemy.orm"), ("sqlalchemy/engine", "sqlalchemy.engine"),
    ("sqlalchemy/sql", "sqlalchemy.sql"), ("sqlalchemy/dialects", "sqlalchemy.dialects"),
    ("sqlalchemy/pool", "sqlalchemy.pool"), ("sqlalchemy", "sqlalchemy (other)"),
    ("query_translation", "query_translation"), ("dbsession", "dbsession"), ("dbapi_server", "dbapi_server"),
    ("urllib3", "urllib3"), ("http/client", "http.client"), ("email/", "email (http headers)"),
    ("waitress", "waitress"), ("granian", "granian"), ("werkzeug", "werkzeug"), ("flask", "flask"), ("jwt", "pyjwt"),
    ("psycopg", "psycopg"), ("sqlite3", "sqlite3"), ("socket", "socket"), ("selectors", "selectors"),
    ("threading", "threading"), ("bench/", "bench"), ("uuid", "uuid"), ("json", "json"),
)


def bucket(location: str) -> str:
    path = location.replace("\\", "/")
    for needle, name in _BUCKETS:
        if f"/{needle}" in path or path.startswith(needle):
            return name
    return "other: " + path.rsplit("/", 1)[-1].split(":")[0]


def parse_collapsed(path: Path) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    """(samples, self time by function, inclusive time by function, self time by package)."""
    total, own, incl, packages = 0, Counter[str](), Counter[str](), Counter[str]()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        names = []
        for frame in frames:  # "func (path/to/file.py:123)"
            func, _, loc = frame.partition(" (")
            names.append((f"{func} ({loc.rstrip(')').rsplit(':', 1)[0].split('site-packages/')[-1]})", loc))
        own[names[-1][0]] += count
        packages[bucket(names[-1][1])] += count
        for name in {n for n, _ in names}:
            incl[name] += count
    return total, own, incl, packages


def print_profile(title: str, path: Path, top: int) -> dict[str, Any]:
    total, own, incl, packages = parse_collapsed(path)
    print(f"\n  {title}: {total} samples (idle excluded)")
    if not total:
        return {}
    print("    self time by package:")
    for name, count in packages.most_common(12):
        print(f"      {100 * count / total:5.1f}%  {name}")
    print(f"    top {top} functions by self time:")
    for name, count in own.most_common(top):
        print(f"      {100 * count / total:5.1f}%  {name}")
    print(f"    top {top} functions by inclusive time (below the root frames):")
    below_root = [(name, count) for name, count in incl.most_common() if count < 0.95 * total]
    for name, count in below_root[:top]:  # (frames on ~every stack - main loops - left out)
        print(f"      {100 * count / total:5.1f}%  {name}")
    return {"samples": total, "packages": {k: v / total for k, v in packages.most_common()},
            "self": {k: v / total for k, v in own.most_common(40)},
            "inclusive": {k: v / total for k, v in incl.most_common(60)}}


def profile_op(op: str, make: Maker, server: Server, seconds: float, workdir: Path,
               top: int, rate: int = 250, gil: bool = False) -> dict[str, Any]:
    """Run *op* isolated for *seconds* under py-spy (client and server) or cProfile (client only).

    Without ``gil``, py-spy counts every sample whose thread is not idle - including time spent
    runnable-but-preempted inside a syscall that woke the other side (``send``, waitress's trigger
    pipe, psycopg's query send), which on a small, busy machine is a large share. With ``gil``
    only the thread holding the GIL is sampled: roughly where the Python CPU goes.
    """
    fn = OPS[op][1]
    py_spy = shutil.which("py-spy") or (shutil.which("py-spy", path=str(Path(sys.executable).parent)))
    print(f"\n== profile: {op} ({OPS[op][0]}), isolated, {seconds:.0f} s, "
          f"{'GIL holder only' if gil else 'all non-idle threads'}, {rate} Hz ==")
    results: dict[str, Any] = {}
    if py_spy:
        procs = {}
        for side, pid in (("client", os.getpid()), ("server", server.worker_pid)):
            out = workdir / f"profile-{side}.txt"
            procs[side] = (subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
                 "--duration", str(int(seconds) + 1), "--nonblocking", "--output", str(out),
                 *(["--gil"] if gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out)
        time.sleep(0.7)  # let py-spy attach
        i, deadline = 0, time.monotonic() + seconds + 1.5
        while time.monotonic() < deadline:
            fn(make, i)
            i += 1
        for side, (proc, out) in procs.items():
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0 or not out.exists():
                print(f"  py-spy on the {side} failed: {err.decode(errors='replace').strip()[-500:]}")
                continue
            results[side] = print_profile(f"{side} (py-spy, {i} calls)", out, top)
        if results:
            return results
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    n = max(200, int(seconds * 300))
    profiler.enable()
    for i in range(n):
        fn(make, i)
    profiler.disable()
    print(f"  client (cProfile, {n} calls; cProfile inflates many small calls):")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)
    return {"client_cprofile": "printed"}


# -- versions and reporting ------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{rev}{' (+ uncommitted changes)' if dirty else ''}" if rev else "-"
    except (OSError, subprocess.SubprocessError):
        return "-"


def versions(info: dict[str, Any], backend: str) -> dict[str, Any]:
    client = {"python": platform.python_version(), "dbsession": _version("dbsession"),
              "sqlalchemy": sa.__version__, "urllib3": urllib3.__version__, "orjson": _version("orjson"),
              "git": git_revision()}
    driver = "psycopg" if backend == "postgresql" else None
    if driver:
        client[driver] = _version(driver)
    server = {"wire_version": info.get("wire_version"), "dialect": f"{info.get('dialect')}+{info.get('driver')}",
              "database": ".".join(str(v) for v in info.get("server_version_info") or []) or "-",
              "sqlalchemy": info.get("sqlalchemy"), "flask": _version("flask"), "werkzeug": _version("werkzeug"),
              "waitress": _version("waitress"), "granian": _version("granian"), "pyjwt": _version("pyjwt")}
    return {"client": client, "server": server,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def report(results: dict[str, Any]) -> None:
    v = results["versions"]
    cfg = results["config"]
    print("\n== dbsession isolation benchmark ==")
    print(f"backend: {cfg['backend']} ({cfg['database_url_safe']}); {cfg['iterations']} iterations x "
          f"{cfg['rounds']} rounds per op and mode (alternating in chunks of {cfg['chunk']}) after "
          f"{cfg['warmup']} warm-up; DB-API under {cfg['server']}, {cfg['threads']} threads; "
          f"{v['machine']['cpus']} CPUs; {cfg['rows']} rows seeded")
    print("client: " + ", ".join(f"{k} {val}" for k, val in v["client"].items()))
    print("server: " + ", ".join(f"{k} {val}" for k, val in v["server"].items())
          + "  (flask/werkzeug/waitress/granian/pyjwt: same interpreter, subprocess)")
    cpus = v["machine"]["cpus"] or 1
    loads = [results.get("load_before"), results.get("load_after")]
    print(f"load average (1/5/15 min) before {loads[0]}, after {loads[1]}", end="")
    busy = any(load and load[0] > 0.5 * cpus for load in loads)
    print(" - WARNING: the machine is busy with other work; expect noisy numbers" if busy else "")
    floors = results["floors"]
    print(f"floors: HTTP keep-alive GET /info (urllib3) median {_fmt(floors['http_info']['median'], 3)} ms "
          f"p90 {_fmt(floors['http_info']['p90'], 3)} ms (CPU per call: client "
          f"{_fmt(floors['http_info']['client_cpu_ms'])} ms, server {_fmt(floors['http_info']['server_cpu_ms'])} ms);"
          f"\n        same through dbsession's transport median {_fmt(floors['http_info_transport']['median'], 3)} ms "
          f"p90 {_fmt(floors['http_info_transport']['p90'], 3)} ms (CPU per call: client "
          f"{_fmt(floors['http_info_transport']['client_cpu_ms'])} ms, server "
          f"{_fmt(floors['http_info_transport']['server_cpu_ms'])} ms);"
          f"\n        same with a minimal client on a bare socket median {_fmt(floors['http_info_raw_socket']['median'], 3)} "
          f"ms p90 {_fmt(floors['http_info_raw_socket']['p90'], 3)} ms (CPU per call: client "
          f"{_fmt(floors['http_info_raw_socket']['client_cpu_ms'])} ms, server "
          f"{_fmt(floors['http_info_raw_socket']['server_cpu_ms'])} ms);"
          f"\n        raw driver SELECT 1 median "
          f"{_fmt(floors['db_select1']['median'], 3)} ms p90 {_fmt(floors['db_select1']['p90'], 3)} ms")
    print(f"anchor floors: {ANCHOR_FLOORS}")

    header = (f"{'op':<15} {'direct ms':>9} {'isol. ms':>9} {'ratio':>6} {'dir p90':>8} {'iso p90':>8} "
              f"{'HTTP req':>8}  {'cli CPU d/i ms':>14} {'srv CPU':>7} {'srv/req':>7} {'cli+/req':>8}  requests")
    print("\n" + header)
    print("-" * len(header))
    for op, r in results["ops"].items():
        d, i = r["direct"]["best"], r["isolation"]["best"]
        print(f"{op:<15} {_fmt(d['median'], 3):>9} {_fmt(i['median'], 3):>9} {r['ratio']:>5.2f}x "
              f"{_fmt(d['p90'], 3):>8} {_fmt(i['p90'], 3):>8} {r['http_requests_per_op']:>8.2f}  "
              f"{_fmt(d['client_cpu_ms']):>6} / {_fmt(i['client_cpu_ms']):<5} {_fmt(i.get('server_cpu_ms')):>7} "
              f"{_fmt(r['server_cpu_ms_per_request'], 3):>7} {_fmt(r['client_cpu_over_direct_ms_per_request'], 3):>8}  "
              f"{', '.join(f'{k} x{n:g}' for k, n in r['requests_breakdown'].items())}")
    print("(medians and p90 of the better round by median; CPU columns are means per op over that round: "
          "client process CPU direct/isolated, DB-API server processes' CPU; per HTTP request: server CPU, "
          "and client CPU above direct)")
    if results.get("concurrency"):
        report_concurrency(results["concurrency"], {op: r["http_requests_per_op"] for op, r in results["ops"].items()})

    print("\nper round (median ms, direct | isolation):")
    for op, r in results["ops"].items():
        rounds = "  ".join(f"r{n + 1}: {_fmt(a['median'], 3)} | {_fmt(b['median'], 3)}"
                           for n, (a, b) in enumerate(zip(r["direct"]["rounds"], r["isolation"]["rounds"])))
        print(f"  {op:<15} {rounds}")

    print("\nanchors (shared/ANCHORS.md), isolation/direct:")
    for op, r in results["ops"].items():
        ours = f"ours {_fmt(r['direct']['best']['median'], 2)} -> {_fmt(r['isolation']['best']['median'], 2)} ms " \
               f"= {r['ratio']:.2f}x"
        others = "; ".join(f"{label} {d:.2f} -> {i:.2f} ms = {i / d:.1f}x" for label, d, i in ANCHORS.get(op, []))
        print(f"  {op:<15} {ours:<30} | {others}")


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help="PostgreSQL URL of a database to create, use and drop (default: "
                             "dbsession_bench_<pid> on 127.0.0.1, this run's own)")
    parser.add_argument("--sqlite", action="store_true", help="use a temporary SQLite file instead")
    parser.add_argument("--iterations", "-n", type=int, default=500, help="timed calls per op, mode and round")
    parser.add_argument("--warmup", type=int, default=50, help="untimed calls per op and mode first")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (the better median is reported)")
    parser.add_argument("--chunk", type=int, default=50,
                        help="within a round, direct and isolated calls alternate in chunks of this many")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--threads", type=int, default=4, help="threads of the DB-API's serving process")
    parser.add_argument("--server", default="granian", choices=["granian", "waitress"],
                        help="the DB-API's WSGI server (dbapi-server serve --server)")
    parser.add_argument("--concurrency", default="4,16",
                        help="client process counts for the concurrency phase (empty: no such phase)")
    parser.add_argument("--concurrency-ops", type=int, default=200,
                        help="calls per client process, op and mode in the concurrency phase")
    parser.add_argument("--port", type=int, default=0, help="DB-API port (default: a free one)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="dump the results as JSON (to PATH; without one to stdout, the report then to stderr)")
    parser.add_argument("--profile", metavar="OP", choices=list(OPS),
                        help="after the benchmark, profile OP isolated (py-spy on client and server if "
                             "installed, else cProfile on the client)")
    parser.add_argument("--profile-seconds", type=float, default=5.0)
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--profile-gil", action="store_true",
                        help="py-spy samples only the thread holding the GIL (Python CPU, no waiting)")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    args = parser.parse_args(argv)
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip() and int(c) > 0]
    except ValueError:
        parser.error("--concurrency is a comma-separated list of client process counts, e.g. 4,16")
    unknown = set(args.ops) - set(OPS)
    if unknown:
        parser.error(f"unknown op(s) {', '.join(sorted(unknown))}; choose from {', '.join(OPS)}")
    if args.iterations < 10 or args.rounds < 1 or args.chunk < 1:
        parser.error("--iterations must be >= 10, --rounds and --chunk >= 1")
    return args


def check_equivalence(direct: Maker, isolated: Maker, ops: list[str]) -> None:
    """The two modes must see the same data (a quick guard against measuring a broken path)."""
    for op in ops:
        if op == "modify_commit":
            key = TI_KEYS[7]
            before = op_get(direct, 7)
            op_modify_commit(isolated, 7)
            op_modify_commit(direct, 7)
            after = op_get(isolated, 7)
            if after != before + 2:
                raise RuntimeError(f"modify_commit: try_number of {key} went {before} -> {after}, expected +2")
            continue
        fn = OPS[op][1]
        for i in (0, 3, 11):
            a, b = fn(direct, i), fn(isolated, i)
            if a != b:
                raise RuntimeError(f"{op}: direct returned {a!r} but isolation returned {b!r}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(run_tempdir("run_"))
    try:
        with fresh_database(None if args.sqlite else args.database_url, args.sqlite, args.keep_db) as url:
            return _run(args, url, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, url: str, workdir: Path) -> dict[str, Any]:
    direct_engine = sa.create_engine(url)
    dbsession.guard.exempt(direct_engine)  # the isolated DBSession installs the direct-access guard
    rows = seed(direct_engine)
    server = Server(url, args.port or free_port(), args.threads, workdir, server=args.server)
    iso_engine = None
    try:
        server.wait_healthy()
        info = server.info()
        direct = sessionmaker(bind=direct_engine)
        isolated = sessionmaker(class_=DBSession, database_access_isolation=True,
                                database_api_host=server.base, token=server.token)
        with isolated() as probe:
            bind = probe.get_bind()
            iso_engine = bind if isinstance(bind, sa.Engine) else None
        check_equivalence(direct, isolated, args.ops)

        n = args.iterations
        results: dict[str, Any] = {
            "config": {"backend": direct_engine.dialect.name, "iterations": n, "warmup": args.warmup,
                       "rounds": args.rounds, "chunk": args.chunk, "threads": args.threads, "rows": rows,
                       "server": args.server, "concurrency": args.concurrency,
                       "concurrency_ops": args.concurrency_ops,
                       "database_url_safe": sa.make_url(url).render_as_string(hide_password=True)},
            "versions": versions(info, direct_engine.dialect.name),
        }
        results["load_before"] = load_average()
        results["floors"] = {"http_info": http_floor(server, n), "http_info_transport": transport_http_floor(server, n),
                             "http_info_raw_socket": raw_http_floor(server, n),
                             "db_select1": db_floor(direct_engine, n)}

        # warm-up, then the HTTP request count per op (untimed)
        for op in args.ops:
            fn = OPS[op][1]
            for make in (direct, isolated):
                for i in range(args.warmup):
                    fn(make, i)
        breakdowns: dict[str, Counter[str]] = {}
        count_n = 20
        for op in args.ops:
            with counting_requests() as counts:
                for i in range(count_n):
                    OPS[op][1](isolated, i)
            breakdowns[op] = counts

        per_op: dict[str, dict[str, list[dict[str, float]]]] = defaultdict(lambda: {"direct": [], "isolation": []})
        for rnd in range(args.rounds):
            for op in args.ops:
                modes: list[Mode] = [("direct", direct, None), ("isolation", isolated, server)]
                if rnd % 2:
                    modes.reverse()
                for mode, result in time_round(OPS[op][1], modes, n, rnd * n, args.chunk).items():
                    per_op[op][mode].append(result)
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)

        results["ops"] = {}
        for op in args.ops:
            entry: dict[str, Any] = {"label": OPS[op][0]}
            for mode in ("direct", "isolation"):
                rounds = per_op[op][mode]
                entry[mode] = {"rounds": rounds, "best": min(rounds, key=lambda r: r["median"])}
            entry["ratio"] = entry["isolation"]["best"]["median"] / entry["direct"]["best"]["median"]
            counts = breakdowns[op]
            entry["http_requests_per_op"] = requests = sum(counts.values()) / count_n
            entry["requests_breakdown"] = {k: v / count_n for k, v in sorted(counts.items())}
            iso, dire = entry["isolation"]["best"], entry["direct"]["best"]
            entry["server_cpu_ms_per_request"] = iso.get("server_cpu_ms", float("nan")) / requests
            entry["client_cpu_over_direct_ms_per_request"] = (iso["client_cpu_ms"] - dire["client_cpu_ms"]) / requests
            results["ops"][op] = entry
        if args.concurrency:
            skip = ({"modify_commit": "SQLite has one writer at a time: this would measure its file lock"}
                    if direct_engine.dialect.name == "sqlite" else {})
            results["concurrency"] = run_concurrency(args.concurrency, args.ops, args.concurrency_ops, url, server, skip)
        results["load_after"] = load_average()
        results["anchors"] = {op: [{"label": label, "direct_ms": d, "isolation_ms": i, "ratio": i / d}
                                   for label, d, i in a] for op, a in ANCHORS.items()}
        report(results)
        if args.profile:
            results["profile"] = profile_op(args.profile, isolated, server, args.profile_seconds, workdir,
                                            args.profile_top, args.profile_rate, args.profile_gil)
        return results
    finally:
        server.stop()
        if iso_engine is not None:
            iso_engine.dispose()
        direct_engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # with --json and no PATH the JSON owns stdout; the human-readable report goes to stderr
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
