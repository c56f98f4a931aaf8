"""HAProxy in front of several DB-API instances, on loopback, for tests and the soak run.

:func:`haproxy_config` renders the configuration ``docs/deployment.md`` documents (the tests run
exactly that, plus a stats socket and a header naming the backend that answered); :class:`HAProxy`
runs Debian's ``haproxy`` binary on it in the foreground. Routing: ``balance hdr(X-DBSession-Route)``
with ``hash-type consistent`` - every request of a transaction carries its id in that header, so
they all reach one instance; requests without it (one-shot reads) are balanced round robin - and a
stick table on the same header, so a transaction stays where it began even when an instance
rejoins the pool (consistent hashing alone would move a share of the open ones to it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["HAProxy", "haproxy_binary", "haproxy_config", "require_haproxy"]

BACKEND_HEADER = "X-DBAPI-Backend"  # test-only: which server answered (set by HAProxy from its name)


def haproxy_binary() -> str | None:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
    return found


def require_haproxy() -> str:
    """The haproxy binary; skips the test without it - but in CI (``CI`` set) fails instead."""
    binary = haproxy_binary()
    if binary is None:
        reason = "HAProxy is not installed (Debian: apt-get install -y haproxy; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


def haproxy_config(servers: Sequence[tuple[str, str, int]], *, bind: str, check_interval: str = "1s",
                   stats_socket: str | None = None, tag_backend: bool = False) -> str:
    """The HAProxy configuration for DB-API instances *servers* (name, host, port)."""
    lines = [
        "global",
        "    maxconn 4096",
        *([f"    stats socket {stats_socket} mode 600 level admin"] if stats_socket else []),
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 120s",
        "    # longer than the longest statement or commit",
        "    timeout server 120s",
        "    timeout http-keep-alive 60s",
        "    # a connection an instance refuses (it died) is retried on another one; a request that",
        "    # reached an instance is never resent by HAProxy - the client decides that",
        "    retries 3",
        "    option redispatch 1",
        "",
        "frontend dbapi",
        f"    bind {bind}",
        "    default_backend dbapi",
        "",
        "backend dbapi",
        "    # every request of a transaction carries X-DBSession-Route: <transaction id>; its hash",
        "    # picks the instance. Requests without it (one-shot reads) are balanced round robin.",
        "    balance hdr(X-DBSession-Route)",
        "    hash-type consistent",
        "    # the instance a transaction began on is remembered: one that rejoins the pool (or is",
        "    # added) does not take over transactions open elsewhere. Outlives the 60 s idle timeout.",
        "    stick-table type string len 128 size 500k expire 3m",
        "    stick on req.hdr(X-DBSession-Route)",
        "    # an instance out of rotation (draining after SIGTERM, /ready failing) still gets the",
        "    # requests of the transactions it holds; only one that refuses connections is left",
        "    option persist",
        "    option httpchk GET /dbapi/v1/ready",
        "    http-check expect status 200",
        f"    default-server inter {check_interval} fall 2 rise 2",
        *([f"    http-response set-header {BACKEND_HEADER} %s"] if tag_backend else []),
        *[f"    server {name} {host}:{port} check" for name, host, port in servers],
        "",
    ]
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HAProxy:
    """``haproxy -db -f <config>`` in front of *servers* (name, host, port) on a loopback port."""

    servers: Sequence[tuple[str, str, int]]
    check_interval: str = "300ms"
    binary: str = field(default_factory=require_haproxy)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dbapi-haproxy-")))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> str:
        return str(self.workdir / "admin.sock")

    def start(self, timeout: float = 30.0) -> HAProxy:
        for _ in range(5):  # the port is chosen before haproxy binds it: another process may take it
            self.port = _free_port()
            config = self.workdir / "haproxy.cfg"
            config.write_text(haproxy_config(self.servers, bind=f"127.0.0.1:{self.port}",
                                             check_interval=self.check_interval,
                                             stats_socket=self.socket_path, tag_backend=True))
            log = (self.workdir / "haproxy.log").open("ab")
            self.process = subprocess.Popen([self.binary, "-db", "-f", str(config)], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    if os.path.exists(self.socket_path):
                        self.wait_until_up(timeout=max(deadline - time.monotonic(), 1.0))
                        return self
                except OSError:
                    time.sleep(0.05)
            self.stop()
            if "Address already in use" not in self.output():
                break
        raise RuntimeError(f"haproxy did not start:\n{self.output()}")

    def output(self) -> str:
        path = self.workdir / "haproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def command(self, text: str) -> str:
        """A command on the admin socket (``show stat``, ``disable server dbapi/s1``...)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(self.socket_path)
            sock.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the backend's servers, by server name."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r for r in rows if r["pxname"] == "dbapi" and r["svname"] not in ("FRONTEND", "BACKEND")}

    def requests(self) -> dict[str, int]:
        """HTTP answers each server has given so far (HAProxy's ``hrsp_*`` counters)."""
        columns = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
        return {name: sum(int(row.get(c) or 0) for c in columns) for name, row in self.stats().items()}

    def states(self) -> dict[str, str]:
        return {name: row["status"] for name, row in self.stats().items()}

    def wait_until_up(self, names: Sequence[str] | None = None, timeout: float = 30.0) -> None:
        wanted = set(names) if names is not None else {name for name, _, _ in self.servers}
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            if all(states.get(name, "").startswith("UP") for name in wanted):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy's servers are not all UP: {states}\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
