"""Real processes for fault injection: the DB-API as ``dbapi-server serve``, a throwaway PostgreSQL.

Everything polls with generous deadlines instead of sleeping: the suite runs on loaded machines.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from dbapi_server import mint_token
from dbapi_server.keys import generate_keypair

from .models import METADATA_PATH

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
_PRIVATE, _PUBLIC = generate_keypair()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def token(subject: str = "fault-client") -> str:
    return mint_token(_PRIVATE, subject=subject, ttl=600)


def _server_command() -> list[str]:
    script = Path(sys.executable).with_name("dbapi-server")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dbapi_server.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DBAPI_", "DATABASE_", "DBSESSION_")) and k != "PYTHONPATH"}
    env.update(extra)
    return env


@dataclass
class ServerProcess:
    """``dbapi-server serve`` in a subprocess, serving :mod:`tests.faults.models` (and the named
    methods of the modules *methods* names, comma-separated)."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, database_url: sa.URL | str, workdir: Path, *, port: int | None = None,
              idle_timeout: float = 60.0, methods: str = "", env: dict[str, str] | None = None) -> ServerProcess:
        key = workdir / "dbapi.pub"
        key.write_bytes(_PUBLIC)
        port = port or free_port()
        log = workdir / f"server-{port}-{time.monotonic_ns()}.log"
        url = database_url.render_as_string(hide_password=False) if isinstance(database_url, sa.URL) else database_url
        env = clean_env(DBAPI_DATABASE_URL=url, DBAPI_METADATA=METADATA_PATH, DBAPI_JWT_KEY_FILE=str(key),
                        DBAPI_JWT_ALGORITHMS="EdDSA", DBAPI_TXN_IDLE_TIMEOUT=str(idle_timeout),
                        DBAPI_METHODS=methods, DBAPI_SHUTDOWN_GRACE="2", **(env or {}))
        with log.open("wb") as out:
            process = subprocess.Popen([*_server_command(), "serve", "--port", str(port), "--threads", "4"],
                                       cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        server = cls(process, port, log)
        try:
            wait_for(server.healthy, f"the DB-API on port {port}", START_TIMEOUT)
        except AssertionError:
            server.kill()
            raise AssertionError(f"the DB-API did not start:\n{log.read_text()}") from None
        return server

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the DB-API exited with {self.process.returncode}:\n{self.log.read_text()}")
        try:
            with urllib.request.urlopen(f"{self.url}/dbapi/v1/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as when the machine or the OOM killer takes it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        raise FileNotFoundError(f"PostgreSQL's {name} is not installed")
    return on_path


class ThrowawayPostgres:
    """A PostgreSQL cluster of its own (initdb in a temp dir, a free port) that a test may restart.

    The machine's shared PostgreSQL is never restarted. initdb refuses to run as root, so as root
    the cluster belongs to the ``postgres`` user (``runuser``).
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dbsession-faults-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "root", "--auth=trust", "--no-sync",
                  "-E", "UTF8")
        self.url = sa.make_url(f"postgresql+psycopg://root@127.0.0.1:{self.port}/postgres")

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as, *command], capture_output=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stdout.decode()}{done.stderr.decode()}")

    def _ctl(self, action: str, *extra: str) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                   "-c fsync=off -c full_page_writes=off")
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "postgres.log"), "-w",
                  "-t", "60", "-o", options, action, *extra)

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        """A real restart: ``fast`` shutdown (open sessions are terminated), then start again."""
        self._ctl("restart", "-m", "fast")

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
