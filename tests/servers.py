"""Real DB-API servers for tests, with real JWTs on a loopback port.

Two ways to run one:

* :func:`dbapi_process` - **the default for proofs**: ``dbapi-server serve`` in a process of its
  own, started the way a user starts it (metadata as ``module:attr``, the database URL, real key
  files, a policy file), with a ``PYTHONHASHSEED`` other than the test process's. Anything the
  client and the server compile differently because of process-local state (set or ``id()``
  order, import order, caches) shows here and nowhere else.
* :func:`running_dbapi` - the Flask app under waitress in a thread of the test process, for the
  tests that must reach inside the server (its state, its engine, its policy object). Such a test
  says why in a comment.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dbapi_server import JWTAuthenticator, create_app, mint_token
from dbapi_server.keys import generate_keypair, write_keypair
from dbapi_server.serving import start_background
from dbsession import guard
from dbsession.session import release_api_host

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = float(os.environ.get("DBSESSION_TEST_SERVER_START_TIMEOUT", "90"))
STOP_TIMEOUT = 20.0
SHUTDOWN_GRACE = 2.0  # DBAPI_SHUTDOWN_GRACE of the servers dbapi_process starts (unless env= says otherwise)
SERVER_HASHSEED_ENV = "DBSESSION_TEST_SERVER_HASHSEED"
_SEED_RANGE = 2**32  # PYTHONHASHSEED accepts 0 (no randomization) .. 4294967295

_PRIVATE, _PUBLIC = generate_keypair()


# --- in process ------------------------------------------------------------------------------


@dataclass
class RunningServer:
    url: str
    app: Any
    token: str

    @property
    def state(self) -> Any:
        return self.app.extensions["dbapi_server"]

    def mint(self, subject: str = "test-worker", **kw: Any) -> str:
        return mint_token(_PRIVATE, subject=subject, **kw)


@contextmanager
def running_dbapi(engine: sa.Engine, metadata: sa.MetaData, **app_kw: Any) -> Iterator[RunningServer]:
    """Serve *engine*'s database over HTTP on 127.0.0.1 for the duration of the block, in this process.

    The engine is exempted from the isolation guard explicitly: it is the trusted side.
    """
    guard.exempt(engine)
    app_kw.setdefault("authenticator", JWTAuthenticator(_PUBLIC, algorithms=["EdDSA"]))
    app = create_app(engine=engine, metadata=metadata, **app_kw)
    server = start_background(app)
    try:
        yield RunningServer(server.url, app, mint_token(_PRIVATE, subject="test-worker", ttl=3600))
    finally:
        server.stop()
        app.extensions["dbapi_server"].transactions.close()
        # the client caches a host's handshake and engines; a later server on the same loopback
        # port (another database, another schema) must not inherit them
        release_api_host(server.url)


# --- in its own process ------------------------------------------------------------------------


def client_hash_seed() -> int | None:
    """This (the client's) process's ``PYTHONHASHSEED``, or ``None`` when it is random."""
    value = os.environ.get("PYTHONHASHSEED", "random")
    return None if value == "random" else int(value)


def server_hash_seed() -> int:
    """The seed a server process gets: ``$DBSESSION_TEST_SERVER_HASHSEED``, else one != the client's.

    A client with a fixed seed N gives N + 1; a client with a random hash secret (the default)
    gives a fresh random seed, printed in every failure so a run can be replayed with both fixed.
    """
    given = os.environ.get(SERVER_HASHSEED_ENV)
    if given is not None:
        return int(given)
    client = client_hash_seed()
    if client is not None:
        return (client + 1) % _SEED_RANGE or 1  # 0 would switch randomization off
    return secrets.randbelow(_SEED_RANGE - 1) + 1


@dataclass
class DBAPIProcess:
    """A running ``dbapi-server serve`` process (see :func:`dbapi_process`)."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    hash_seed: int
    log: Path
    private_key: Path  # the trusted side's signing key (the server holds only the public key)
    token: str = field(repr=False)  # subject "test-worker", no role, valid for an hour
    stopped: bool = False  # stop() or kill() was called: an exit is expected

    def mint(self, subject: str = "test-worker", **kw: Any) -> str:
        """Another token for this server (``role=``, ``ttl=``, claims: as ``dbapi_server.mint_token``)."""
        kw.setdefault("ttl", 3600)
        return mint_token(self.private_key.read_bytes(), subject=subject, **kw)

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def describe(self) -> str:
        client = client_hash_seed()
        return (f"dbapi-server pid {self.process.pid} at {self.url}, PYTHONHASHSEED={self.hash_seed} "
                f"(client: {'random' if client is None else client}; replay with "
                f"{SERVER_HASHSEED_ENV}={self.hash_seed})")

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; SIGKILL if it is still running after 20 s.

        Returns the exit status (0 for a clean stop).
        """
        self.stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as when the machine or the OOM killer takes it."""
        self.stopped = True
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT)


def server_command() -> list[str]:
    """``dbapi-server`` as installed next to this interpreter (the console script a user runs)."""
    script = Path(sys.executable).with_name("dbapi-server")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dbapi_server.cli"]


@contextmanager
def dbapi_process(database_url: str | sa.URL, metadata: str, *, policy: Path | str | None = None,
                  methods: str = "", args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                  hash_seed: int | None = None, threads: int = 4) -> Iterator[DBAPIProcess]:
    """``dbapi-server serve`` in its own process for the duration of the block.

    *metadata* is an import path (``tests.conformance.models:metadata``), imported by the server
    from the repository root. *policy* is a policy file (a ``Path``) or its TOML text (a ``str``);
    ``None`` is the open preset. *args* are more ``serve`` options, *env* more environment
    variables (``DBAPI_*``: the server's own settings). The server binds a free loopback port
    (``--port 0``) and reports it through ``--port-file``, so no other process can take the port
    between choosing and binding it. Its key pair is fresh; :attr:`DBAPIProcess.token` and
    :meth:`DBAPIProcess.mint` sign with it.

    The block starts once ``/ready`` answers 200. Afterwards the server is stopped with SIGTERM
    (it must exit with status 0; SIGKILL after 20 s) and the client's cached handshake for its
    URL is released. A server that does not start raises with its output; an exception from the
    block gets the server's identity (hash seed) and the tail of its output attached as a note.
    """
    workdir = Path(tempfile.mkdtemp(prefix="dbapi-process-"))
    private_key, public_key = write_keypair(workdir)
    port_file, log = workdir / "port", workdir / "server.log"
    command = [*server_command(), "serve", "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
               "--threads", str(threads), *args]
    if policy is not None:
        policy_file = policy if isinstance(policy, Path) else workdir / "policy.toml"
        if not isinstance(policy, Path):
            policy_file.write_text(policy)
        command += ["--policy", str(policy_file)]
    url = database_url.render_as_string(hide_password=False) if isinstance(database_url, sa.URL) else database_url
    seed = server_hash_seed() if hash_seed is None else hash_seed
    # a short shutdown grace: a test that stops a server with a transaction still open (the
    # rollback on SIGTERM) should not wait the production default (30 s) for it
    # *env* wins over these (a shared key for several instances: DBAPI_JWT_KEY_FILE)
    server_env = _server_env(**{"DBAPI_DATABASE_URL": url, "DBAPI_METADATA": metadata,
                                "DBAPI_JWT_KEY_FILE": str(public_key), "DBAPI_JWT_ALGORITHMS": "EdDSA",
                                "DBAPI_METHODS": methods, "PYTHONHASHSEED": str(seed), "PYTHONUNBUFFERED": "1",
                                "DBAPI_SHUTDOWN_GRACE": str(SHUTDOWN_GRACE), **(env or {})})
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=server_env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    server: DBAPIProcess | None = None
    try:
        port = _wait_for_port(process, port_file, log)
        server = DBAPIProcess(f"http://127.0.0.1:{port}", port, process, seed, log, private_key,
                              mint_token(private_key.read_bytes(), subject="test-worker", ttl=3600))
        _wait_until_healthy(server)
        try:
            yield server
        except BaseException as exc:
            exc.add_note(f"{server.describe()}; its output ends with:\n{_tail(server.output())}")
            raise
        if server.stopped:
            return
        if process.poll() is not None:
            raise AssertionError(f"{server.describe()} exited during the test with status "
                                 f"{process.returncode}:\n{_tail(server.output())}")
        status = server.stop()
        if status != 0:
            raise AssertionError(f"{server.describe()} did not stop cleanly on SIGTERM (status {status}):\n"
                                 f"{_tail(server.output())}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
        if server is not None:
            # the client caches a host's handshake and engines; a later server on the same
            # loopback port (another database, another schema) must not inherit them
            release_api_host(server.url)
        shutil.rmtree(workdir, ignore_errors=True)


def _server_env(**settings: str) -> dict[str, str]:
    """This environment without the client's and server's own settings, plus *settings*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBAPI_", "DATABASE_"))}
    env.update(settings)
    return env


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, so a killed run leaves no server behind."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _tail(text: str, limit: int = 6000) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _wait_for_port(process: subprocess.Popen[bytes], port_file: Path, log: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if port_file.exists():
            return int(port_file.read_text())
        status = process.poll()
        if status is not None:
            raise RuntimeError(f"dbapi-server exited with status {status} before listening:\n"
                               f"{_tail(log.read_text(errors='replace'))}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"dbapi-server did not listen within {START_TIMEOUT:g}s:\n"
                               f"{_tail(log.read_text(errors='replace'))}")
        time.sleep(0.02)


def _wait_until_healthy(server: DBAPIProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{server.url}/dbapi/v1/ready", timeout=5) as answer:
                if answer.status == 200:
                    return
                last = f"status {answer.status}"
        except OSError as exc:  # HTTPError (503: database unreachable) included
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{server.describe()} is not healthy ({last}):\n{_tail(server.output())}")
