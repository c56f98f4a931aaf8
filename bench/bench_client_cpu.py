"""The isolated client's own CPU per operation, without the network: record once, replay many times.

A benchmark, not a test. ``bench_isolation``'s client CPU columns depend on the machine: every
request blocks until the DB-API answers, and on a busy machine the client's code then runs with
cold caches, so the same code costs twice as much from one run to the next. This tool measures the
client's code alone::

    python -m bench.bench_client_cpu                    # PostgreSQL (a database of its own, dropped)
    python -m bench.bench_client_cpu --sqlite
    python -m bench.bench_client_cpu --instructions     # also instructions per op (valgrind): exact

1. a fresh database with ``bench_isolation``'s schema and rows, the real DB-API in a subprocess;
   each operation runs once isolated while its HTTP answers are recorded byte for byte;
2. the DB-API stops; each operation then runs isolated against a stand-in socket that plays the
   recorded answers back - the client's whole path (session, ORM, dialect, wire encoding, HTTP
   framing and parsing, value decoding) runs, the network does not; reported: client CPU per op
   (best of ``--rounds``) next to a direct session's on the real database (its driver's network
   included, so the difference is a bound, not the overhead);
3. ``--instructions``: the replay again under ``valgrind --tool=callgrind`` at two lengths; the
   difference, per op, is the instruction count of one operation - the same on any machine, under
   any load, so two versions of the client compare exactly.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402

import dbsession  # noqa: E402
import dbsession._http as http  # noqa: E402
from bench.bench_isolation import DEFAULT_URL, OPS, Server, free_port, fresh_database, run_tempdir, seed  # noqa: E402
from dbsession import DBSession  # noqa: E402
from dbsession.session import release_api_host  # noqa: E402

KEY = 5  # every replayed call asks for the same row: its recorded answer is the right one
Recording = dict[str, list[tuple[bytes, bytes]]]  # op (and "info") -> [(request line, answer)]


class _RecordingSocket:
    """Wraps a real socket; keeps each request's first line and every byte of its answer."""

    def __init__(self, real: Any, log: list[list[bytes]]) -> None:
        self._real, self._log = real, log

    def send(self, data: Any) -> int:
        self._log.append([bytes(data[:200]).split(b"\r\n", 1)[0], b""])
        return int(self._real.send(data))

    def recv(self, size: int) -> bytes:
        data: bytes = self._real.recv(size)
        self._log[-1][1] += data
        return data

    def recv_into(self, view: Any, size: int) -> int:
        n: int = self._real.recv_into(view, size)
        self._log[-1][1] += bytes(view[:n])
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _Script:
    """The answers the stand-in sockets give, in order (cyclically)."""

    def __init__(self, answers: list[tuple[bytes, bytes]]) -> None:
        self.answers, self.next = answers, 0

    def play(self, answers: list[tuple[bytes, bytes]]) -> None:
        self.answers, self.next = answers, 0

    def answer(self) -> bytes:
        answer = self.answers[self.next % len(self.answers)][1]
        self.next += 1
        return answer


class _ReplayingSocket:
    """Answers each request with the script's next answer; never touches a network."""

    def __init__(self, script: _Script, fileno: int) -> None:
        self._script, self._fileno, self._pending = script, fileno, b""

    def fileno(self) -> int:
        return self._fileno  # a pipe's read end nobody writes to: never "dropped" while idle

    def send(self, data: Any) -> int:
        self._pending = self._script.answer()
        return len(data)

    def sendall(self, data: Any) -> None:
        pass

    def recv(self, size: int) -> bytes:
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def recv_into(self, view: Any, size: int) -> int:
        data, self._pending = self._pending[:size], self._pending[size:]
        view[:len(data)] = data
        return len(data)

    def settimeout(self, seconds: Any) -> None:
        pass

    def close(self) -> None:
        pass


def record(url: str, ops: list[str], workdir: Path) -> Recording:
    """Run each op once isolated against the real DB-API and keep its answers."""
    log: list[list[bytes]] = []
    real_connect = http.ConnectionPool._connect

    def recording_connect(pool: http.ConnectionPool) -> http._Connection:
        connection = real_connect(pool)
        connection.sock = _RecordingSocket(connection.sock, log)  # type: ignore[assignment]
        return connection

    server = Server(url, free_port(), 4, workdir)
    http.ConnectionPool._connect = recording_connect  # type: ignore[method-assign,assignment]
    try:
        server.wait_healthy()
        isolated = sessionmaker(class_=DBSession, database_access_isolation=True,
                                database_api_host=server.base, token=server.token)
        with isolated() as probe:
            probe.get_bind()  # the handshake (GET /info)
        recording: Recording = {"info": [(line, answer) for line, answer in log]}
        for op in ops:
            fn = OPS[op][1]
            for _ in range(3):  # statement documents sent, caches warm: the steady state
                fn(isolated, KEY)
            log.clear()
            fn(isolated, KEY)
            recording[op] = [(line, answer) for line, answer in log]
        return recording
    finally:
        http.ConnectionPool._connect = real_connect  # type: ignore[method-assign]
        server.stop()
        release_api_host(server.base)


def replay(recording: Recording, op: str, n: int, rounds: int, warmup: int = 50) -> float:
    """Client CPU seconds per call of *op*, isolated, answered from *recording* (best round)."""
    read_end, write_end = os.pipe()
    script = _Script(recording["info"])
    real_connect = http.ConnectionPool._connect
    http.ConnectionPool._connect = lambda pool: http._Connection(  # type: ignore[method-assign,assignment]
        _ReplayingSocket(script, read_end), False)  # type: ignore[arg-type]
    base = "http://127.0.0.1:9"  # never dialled
    try:
        isolated = sessionmaker(class_=DBSession, database_access_isolation=True, database_api_host=base,
                                token="replay")
        with isolated() as probe:
            probe.get_bind()  # the handshake
        script.play(recording[op])
        return _best_cpu(OPS[op][1], isolated, n, rounds, warmup)
    finally:
        http.ConnectionPool._connect = real_connect  # type: ignore[method-assign]
        release_api_host(base)
        os.close(read_end)
        os.close(write_end)


def _best_cpu(fn: Any, maker: Any, n: int, rounds: int, warmup: int) -> float:
    """Process CPU seconds per call of ``fn(maker, KEY)``: the best of *rounds* rounds of *n*."""
    for _ in range(warmup):
        fn(maker, KEY)
    best = float("inf")
    for _ in range(rounds):
        cpu0 = time.process_time()
        for _ in range(n):
            fn(maker, KEY)
        best = min(best, (time.process_time() - cpu0) / n)
    return best


def direct_cpu(url: str, op: str, n: int, rounds: int, warmup: int = 50) -> float:
    engine = dbsession.guard.exempt(sa.create_engine(url))
    try:
        direct = sessionmaker(bind=engine)
        return _best_cpu(OPS[op][1], direct, n, rounds, warmup)
    finally:
        engine.dispose()


def instructions(recording_path: Path, op: str, short: int = 20, long: int = 220) -> int | None:
    """Instructions of one isolated call of *op* (callgrind, two replay lengths), or None."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    counts = []
    for n in (short, long):
        done = subprocess.run(
            [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", "--cache-sim=no",
             sys.executable, "-m", "bench.bench_client_cpu", "--replay-only", str(recording_path), op, str(n)],
            cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            print(f"  valgrind failed for {op}: {done.stderr[-500:]}", file=sys.stderr)
            return None
        counts.append(int(found[1]))
    return (counts[1] - counts[0]) // (long - short)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--replay-only"]:  # the process valgrind runs: replay, nothing else
        path, op, n = args[1], args[2], int(args[3])
        replay(pickle.loads(Path(path).read_bytes()), op, n, rounds=1, warmup=20)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help="PostgreSQL URL of a database to create, use and drop (default: this run's own)")
    parser.add_argument("--sqlite", action="store_true", help="use a temporary SQLite file instead")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--iterations", "-n", type=int, default=2000, help="replayed calls per op and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per op (the best is reported)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per op under valgrind (slow: ~1 min per op)")
    options = parser.parse_args(args)
    ops = [o.strip() for o in options.ops.split(",") if o.strip()]
    if set(ops) - set(OPS):
        parser.error(f"unknown op(s); choose from {', '.join(OPS)}")
    workdir = Path(run_tempdir("cpu_"))
    try:
        with fresh_database(None if options.sqlite else options.database_url, options.sqlite, False) as url:
            engine = dbsession.guard.exempt(sa.create_engine(url))
            seed(engine)
            engine.dispose()
            recording = record(url, ops, workdir)
            print(f"\n== isolated client CPU per op, answers replayed ({sa.make_url(url).get_backend_name()}; "
                  f"{options.iterations} calls x {options.rounds} rounds, best round) ==")
            print(f"{'op':<15} {'requests':>8} {'isolated us':>12} {'direct us':>10}  "
                  f"{'instructions/op' if options.instructions else ''}")
            recording_path = workdir / "recording.pickle"
            recording_path.write_bytes(pickle.dumps(recording))
            for op in ops:
                iso = replay(recording, op, options.iterations, options.rounds)
                direct = direct_cpu(url, op, max(10, options.iterations // 2), options.rounds)
                count = instructions(recording_path, op) if options.instructions else None
                print(f"{op:<15} {len(recording[op]):>8} {iso * 1e6:>12.1f} {direct * 1e6:>10.1f}  "
                      f"{'' if count is None else f'{count:,}'}", flush=True)
            print("(isolated: the client's code alone, no network; direct: a plain Session on the database, "
                  "its driver's network round trips included)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
