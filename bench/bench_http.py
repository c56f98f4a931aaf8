"""HTTP clients and WSGI servers for the DB-API, measured: how the transport and ``serve`` were chosen.

A benchmark, not a test. From the repository root::

    python -m bench.bench_http clients            # client stacks against one server (waitress)
    python -m bench.bench_http servers            # WSGI servers serving the real app
    python -m bench.bench_http servers --servers waitress,granian --concurrency 1,4,16 --sqlite

``clients``: keep-alive ``GET /dbapi/v1/info`` (no database, no token check) through urllib3,
``http.client``, h11 and httptools over a bare socket, our ``dbsession._http`` pool, the whole
``Transport.get`` (JSON decoding included), and a hand-written minimal loop (the floor). Reported
per request: median and p99 latency, client process CPU, server process CPU.

``servers``: the real Flask app (``create_app()``, JWT authentication, seeded ``bench.models``
database) under each candidate server in a subprocess, one worker process (transactions live in
one process's memory) with threads. Two requests: keep-alive ``GET /info`` and a real one-shot
``POST /execute`` read (a ``Variable.get``-style select, captured from a ``DBSession``), from 1
and from several client *processes* at once; reported: throughput, p50 / p99 latency, server CPU
per request. On a busy machine the numbers are noisy: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import sqlalchemy as sa  # noqa: E402

from bench.bench_isolation import METADATA_PATH, free_port, fresh_database, load_average, op_variable, seed  # noqa: E402

INFO = "/dbapi/v1/info"
EXECUTE = "/dbapi/v1/execute"
THREADS = 8


# -- servers ---------------------------------------------------------------------------------------
def server_command(name: str, port: int, workdir: Path) -> list[str]:
    """The command line serving ``wsgi_entry:application`` (``create_app()`` from the environment)."""
    py, bind = sys.executable, f"127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    if name in ("dbapi-server", "waitress"):  # what ``dbapi-server serve`` runs: granian, or waitress
        return [py, "-c", "from dbapi_server.cli import main; main()", "serve", "--port", str(port),
                "--threads", str(THREADS), "--server", "waitress" if name == "waitress" else "granian"]
    if name == "gunicorn":
        return [str(bindir / "gunicorn"), "-k", "gthread", "-w", "1", "--threads", str(THREADS), "-b", bind,
                "--keep-alive", "300", "--log-level", "warning", "wsgi_entry:application"]
    if name == "granian":  # granian's own command line, the app as is
        return [str(bindir / "granian"), "--interface", "wsgi", "--workers", "1", "--blocking-threads",
                str(THREADS), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                "wsgi_entry:application"]
    if name == "cheroot":
        return [py, "-c", "import wsgi_entry; from cheroot.wsgi import Server; "
                f"s = Server(('127.0.0.1', {port}), wsgi_entry.application, numthreads={THREADS}); s.safe_start()"]
    if name == "uwsgi":
        return [str(bindir / "pyuwsgi"), "--http-socket", bind, "--wsgi-file", str(workdir / "wsgi_entry.py"),
                "--threads", str(THREADS), "--processes", "1", "--disable-logging", "--http-keepalive",
                "--add-header", "Connection: Keep-Alive", "--die-on-term", "--lazy-apps"]
    raise SystemExit(f"unknown server {name!r}")


class ServerProcess:
    def __init__(self, name: str, url: str, workdir: Path, key_file: Path) -> None:
        self.name, self.port = name, free_port()
        (workdir / "wsgi_entry.py").write_text("from dbapi_server import create_app\napplication = create_app()\n")
        env = dict(os.environ, DBAPI_DATABASE_URL=url, DBAPI_METADATA=METADATA_PATH, DBAPI_JWT_KEY_FILE=str(key_file))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.log = open(workdir / f"{name}.log", "wb")
        self.proc = subprocess.Popen(server_command(name, self.port, workdir), cwd=REPO_ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pids = [self.proc.pid]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {(workdir / f'{name}.log').read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", INFO)
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"{name} did not start")
        # every process of the server's group (a master and its worker, granian's Rust workers...)
        out = subprocess.run(["ps", "-o", "pid=", "-g", str(os.getpgid(self.proc.pid))], capture_output=True, text=True)
        self.pids = [int(p) for p in out.stdout.split()]

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.log.close()


# -- clients ---------------------------------------------------------------------------------------
def client_urllib3(port: int) -> Callable[[], bytes]:
    import urllib3

    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, retries=False)
    headers = {"Accept": "application/json"}
    return lambda: pool.request("GET", INFO, headers=headers).data


def client_http_client(port: int) -> Callable[[], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port)

    def call() -> bytes:
        conn.request("GET", INFO, headers={"Accept": "application/json"})
        return conn.getresponse().read()
    return call


def _socket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def client_h11(port: int) -> Callable[[], bytes]:
    import h11

    sock, conn = _socket(port), h11.Connection(h11.CLIENT)
    headers = [("Host", f"127.0.0.1:{port}"), ("Accept", "application/json")]

    def call() -> bytes:
        if conn.our_state is h11.DONE:
            conn.start_next_cycle()
        sock.sendall(conn.send(h11.Request(method="GET", target=INFO, headers=headers))
                     + conn.send(h11.EndOfMessage()))
        body = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(body)
    return call


def client_httptools(port: int) -> Callable[[], bytes]:
    import httptools

    sock = _socket(port)
    request = f"GET {INFO} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\r\n".encode()

    class Handler:
        def __init__(self) -> None:
            self.body: list[bytes] = []
            self.done = False

        def on_body(self, data: bytes) -> None:
            self.body.append(data)

        def on_message_complete(self) -> None:
            self.done = True

    def call() -> bytes:
        handler = Handler()
        parser = httptools.HttpResponseParser(handler)
        sock.sendall(request)
        while not handler.done:
            parser.feed_data(sock.recv(65536))
        return b"".join(handler.body)
    return call


def client_dbsession_pool(port: int) -> Callable[[], bytes]:
    from dbsession._http import ConnectionPool

    pool = ConnectionPool("http", "127.0.0.1", port, connect_timeout=5, read_timeout=30, maxsize=1)
    request = f"GET {INFO} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\r\n".encode()
    return lambda: pool.request("GET", request).data


def client_transport(port: int) -> Callable[[], Any]:
    from dbsession.auth import TokenSource
    from dbsession.transport import Transport

    transport = Transport(f"http://127.0.0.1:{port}", TokenSource("not-checked-by-info"))
    return lambda: transport.get("/info")


def client_minimal(port: int) -> Callable[[], bytes]:
    sock = _socket(port)
    reader = sock.makefile("rb")
    request = f"GET {INFO} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    def call() -> bytes:
        sock.sendall(request)
        reader.readline()
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return reader.read(length)
    return call


CLIENTS = {"urllib3": client_urllib3, "http.client": client_http_client, "h11": client_h11,
           "httptools": client_httptools, "dbsession._http": client_dbsession_pool,
           "dbsession Transport": client_transport, "minimal": client_minimal}


def measure(call: Callable[[], object], server: ServerProcess, n: int) -> dict[str, float]:
    for _ in range(max(50, n // 10)):
        call()
    times = []
    cpu0, srv0 = time.process_time(), server.cpu_seconds()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - t0)
    cpu, srv = time.process_time() - cpu0, server.cpu_seconds() - srv0
    times.sort()
    return {"median_ms": statistics.median(times) / 1e6, "p99_ms": times[int(0.99 * (n - 1))] / 1e6,
            "client_cpu_ms": cpu * 1e3 / n, "server_cpu_ms": srv * 1e3 / n}


# -- concurrent load from client processes ---------------------------------------------------------
def _load_worker(port: int, token: str, kind: str, body: bytes | None, n: int, start: Any, out: Any) -> None:
    from dbsession.auth import TokenSource
    from dbsession.transport import Transport

    transport = Transport(f"http://127.0.0.1:{port}", TokenSource(token))
    if kind == "info":
        def call() -> Any:
            return transport.get("/info")
    else:
        def call() -> Any:
            return transport._request("POST", "/execute", body, replay_safe=True)
    for _ in range(20):
        call()
    start.wait()
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - t0)
    out.put(times)


def load(server: ServerProcess, token: str, kind: str, body: bytes | None, clients: int, n: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(clients + 1), ctx.Queue()
    procs = [ctx.Process(target=_load_worker, args=(server.port, token, kind, body, n, start, out))
             for _ in range(clients)]
    for proc in procs:
        proc.start()
    start.wait()
    t0, srv0 = time.perf_counter(), server.cpu_seconds()
    times = sorted(t for _ in procs for t in out.get())
    wall, srv = time.perf_counter() - t0, server.cpu_seconds() - srv0
    for proc in procs:
        proc.join()
    total = len(times)
    return {"clients": clients, "requests_per_s": total / wall, "p50_ms": times[total // 2] / 1e6,
            "p99_ms": times[int(0.99 * (total - 1))] / 1e6, "server_cpu_ms": srv * 1e3 / total}


def alternate(names: list[str], url: str, workdir: Path, key_file: Path, token: str, n: int,
              rounds: int = 6, chunk: int = 100) -> dict[str, Any]:
    """All *names* running at once, one client alternating between them in chunks: an A/B under the
    same machine noise. Per server and request: median latency and server CPU per request."""
    from dbsession.auth import TokenSource
    from dbsession.transport import Transport

    servers: list[ServerProcess] = []
    for name in names:
        (workdir / name).mkdir()
        servers.append(ServerProcess(name, url, workdir / name, key_file))
    try:
        body = capture_execute_body(f"http://127.0.0.1:{servers[0].port}", token)
        transports = [Transport(f"http://127.0.0.1:{s.port}", TokenSource(token), maxsize=1) for s in servers]
        calls = {"info": lambda t: t.get("/info"),
                 "execute": lambda t: t._request("POST", "/execute", body, replay_safe=True)}
        results: dict[str, Any] = {}
        for kind, call in calls.items():
            times: dict[str, list[int]] = {s.name: [] for s in servers}
            cpu = dict.fromkeys(times, 0.0)
            for transport in transports:
                for _ in range(50):
                    call(transport)
            for r in range(rounds * max(1, n // (rounds * chunk))):
                order = list(zip(servers, transports))
                for server, transport in order if r % 2 == 0 else order[::-1]:
                    srv0 = server.cpu_seconds()
                    for _ in range(chunk):
                        t0 = time.perf_counter_ns()
                        call(transport)
                        times[server.name].append(time.perf_counter_ns() - t0)
                    cpu[server.name] += server.cpu_seconds() - srv0
            for name, ts in times.items():
                ts.sort()
                results[f"{name} {kind}"] = r = {"median_ms": statistics.median(ts) / 1e6, "p99_ms": ts[int(0.99 * (len(ts) - 1))] / 1e6,
                                                 "server_cpu_ms": cpu[name] * 1e3 / len(ts), "n": len(ts)}
                print(f"{name:<14} {kind:<8} median {r['median_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
                      f"server CPU {r['server_cpu_ms']:.3f} ms/req  ({r['n']} requests)", flush=True)
        for transport in transports:
            transport.close()
        return results
    finally:
        for server in servers:
            server.stop()


def capture_execute_body(base: str, token: str) -> bytes:
    """The ``/execute`` body a ``DBSession`` sends for a ``Variable.get``-style read."""
    import dbsession.transport
    from dbsession import DBSession

    seen: list[bytes] = []
    original = dbsession.transport.Transport._request

    def recording(self: Any, method: str, path: str, body: bytes | None, **kw: Any) -> Any:
        if path == "/execute" and body is not None:
            seen.append(body)
        return original(self, method, path, body, **kw)

    dbsession.transport.Transport._request = recording  # type: ignore[method-assign]
    try:
        op_variable(lambda: DBSession(database_access_isolation=True, database_api_host=base, token=token), 3)
    finally:
        dbsession.transport.Transport._request = original  # type: ignore[method-assign]
    return seen[-1]


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["clients", "servers", "ab"])
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file instead of PostgreSQL")
    parser.add_argument("--database-url", default="postgresql+psycopg://root@127.0.0.1/dbsession_bench_http")
    parser.add_argument("-n", "--requests", type=int, default=2000, help="per measurement (and per client process)")
    parser.add_argument("--servers", default="waitress,gunicorn,granian,cheroot,uwsgi")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)

    from dbapi_server import mint_token
    from dbapi_server.keys import write_keypair

    workdir = Path(tempfile.mkdtemp(prefix="dbsession_bench_http_"))
    results: dict[str, Any] = {"load_before": load_average()}
    try:
        with fresh_database(None if args.sqlite else args.database_url, args.sqlite, False) as url:
            engine = sa.create_engine(url)
            seed(engine)
            engine.dispose()
            private, public = write_keypair(workdir / "keys")
            token = mint_token(private.read_bytes(), subject="bench", ttl=3600)
            if args.what == "ab":
                results.update(alternate(args.servers.split(","), url, workdir, public, token, args.requests))
            elif args.what == "clients":
                server = ServerProcess("waitress", url, workdir, public)
                try:
                    for name in args.clients.split(","):
                        results[name] = r = measure(CLIENTS[name](server.port), server, args.requests)
                        print(f"{name:<20} median {r['median_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  client CPU "
                              f"{r['client_cpu_ms']:.3f} ms  server CPU {r['server_cpu_ms']:.3f} ms", flush=True)
                finally:
                    server.stop()
            else:
                for name in args.servers.split(","):
                    server = ServerProcess(name, url, workdir, public)
                    try:
                        body = capture_execute_body(f"http://127.0.0.1:{server.port}", token)
                        results[name] = rows = []
                        for kind in ("info", "execute"):
                            for clients in (int(c) for c in args.concurrency.split(",")):
                                r = load(server, token, kind, body, clients, max(200, args.requests // clients))
                                rows.append({"request": kind, **r})
                                print(f"{name:<10} {kind:<8} {clients:>2} clients: {r['requests_per_s']:7.0f} req/s  "
                                      f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  server CPU "
                                      f"{r['server_cpu_ms']:.3f} ms/req", flush=True)
                    finally:
                        server.stop()
                        from dbsession.session import release_api_host
                        release_api_host(f"http://127.0.0.1:{server.port}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["load_after"] = load_average()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
