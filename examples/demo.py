"""Database access isolation end to end, in a few seconds: ``python examples/demo.py``.

This script plays the *trusted* orchestrator. It

1. creates a SQLite database in a temporary directory with the tables of ``examples/models.py``;
2. generates an Ed25519 key pair and starts the DB-API (``dbapi-server serve``) as a subprocess
   that holds the database URL and the *public* key;
3. mints a short-lived token with the private key into a 0600 token file;
4. runs ``examples/worker.py`` - the untrusted side - as a second subprocess whose environment
   has no database URL at all, only ``DATABASE_ACCESS_ISOLATION``, ``DATABASE_API_HOST`` and
   ``DATABASE_API_TOKEN_FILE``; the worker runs ordinary ORM code with ``DBSession``;
5. checks the worker's effects by reading the database file directly, and stops the server.

Exits 0 when everything behaved as a direct session would, non-zero otherwise.

``--worker-python PATH`` runs the worker with another interpreter - one whose environment has only
the client installed (``pip install dbsession``): the worker then also checks that it cannot
import the server, and runs from a directory holding a copy of ``examples/`` only, so not even
the checkout puts ``dbapi_server`` on its path (``.ci/client-install-check``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python examples/demo.py` puts examples/, not the repo, on the path
    sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from dbapi_server import mint_token, write_token_file  # noqa: E402
from dbapi_server.keys import write_keypair  # noqa: E402
from examples.models import Base  # noqa: E402

SERVER_START_TIMEOUT = 20.0
WORKER_TIMEOUT = 60.0


def say(text: str) -> None:
    print(f"    demo | {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command() -> list[str]:
    script = Path(sys.executable).with_name("dbapi-server")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from dbapi_server.cli import main; main()"]


def clean_env(**extra: str) -> dict[str, str]:
    """The parent's environment without any database or DB-API setting, plus *extra*."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DBAPI_", "DATABASE_", "DBSESSION_")) and k != "PYTHONPATH"}
    env.update(extra)
    return env


def start_server(db_url: str, public_key: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = clean_env(DBAPI_DATABASE_URL=db_url, DBAPI_METADATA="examples.models:Base.metadata",
                    DBAPI_JWT_KEY_FILE=str(public_key), DBAPI_JWT_ALGORITHMS="EdDSA")
    with log.open("wb") as out:
        return subprocess.Popen([*server_command(), "serve", "--port", str(port), "--threads", "4"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"demo: the DB-API exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/dbapi/v1/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"demo: the DB-API did not answer within {SERVER_START_TIMEOUT:g}s:\n{log.read_text()}")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGINT)  # waitress closes its sockets on KeyboardInterrupt
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def write_token(private_key: Path, path: Path) -> None:
    token = mint_token(private_key.read_bytes(), subject="task:etl_daily.extract", role="task",
                       dag_id="etl_daily", ttl=300)
    write_token_file(path, token)  # mode 0600, atomic: the worker refuses a token file others can read


def run_worker(url: str, token_file: Path, db_path: Path, python: str | None = None) -> None:
    env = clean_env(DATABASE_ACCESS_ISOLATION="true", DATABASE_API_HOST=url,
                    DATABASE_API_TOKEN_FILE=str(token_file))
    cwd = REPO
    if python is not None:  # a client-only environment, away from the checkout
        cwd = token_file.parent / "client-host"
        shutil.copytree(REPO / "examples", cwd / "examples", ignore=shutil.ignore_patterns("__pycache__"))
        probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('dbapi_server') is not None)"
        if subprocess.run([python, "-c", probe], cwd=cwd, env=env, check=False).returncode != 0:
            raise SystemExit(f"demo: {python} can import dbapi_server; it is not a client-only environment")
        say(f"the worker runs with {python}, which cannot import the DB-API (client-only install)")
    done = subprocess.run([python or sys.executable, "-m", "examples.worker", str(db_path)], cwd=cwd, env=env,
                          timeout=WORKER_TIMEOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"demo: the worker failed (exit code {done.returncode})")


def verify(db_path: Path) -> None:
    """Read the file directly, as only the trusted side can."""
    with sqlite3.connect(db_path) as db:
        def rows(sql: str) -> list[tuple[object, ...]]:
            return db.execute(sql).fetchall()

        checks = {
            "one dag": rows("SELECT dag_id FROM dag") == [("etl_daily",)],
            "two runs, both still RUNNING": rows("SELECT state FROM dag_run ORDER BY id") == [("RUNNING",)] * 2,
            "extract succeeded on try 1": rows(
                "SELECT state, try_number, end_date FROM task_instance WHERE run_id = 'scheduled__0' "
                "AND task_id = 'extract'") == [("SUCCESS", 1, "2024-03-31 00:31:42.000000")],
            "bulk update skipped run 2's tasks": rows(
                "SELECT count(*) FROM task_instance WHERE run_id = 'scheduled__1' AND state = 'SKIPPED'")
            == [(3,)],
            "only the committed variable": rows("SELECT key, val FROM variable") == [("retention_days", "30")],
            "JSON stored as JSON": rows("SELECT json_extract(conf, '$.day') FROM dag_run ORDER BY id") == [(0,), (1,)],
        }
    for what, ok in checks.items():
        say(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not all(checks.values()):
        raise SystemExit("demo: the database does not hold what the worker did")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker-python", help="run the worker with this interpreter (a client-only venv)")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dbsession-demo-") as tmp:
        workdir = Path(tmp)
        db_path = workdir / "orchestrator.sqlite"
        db_url = f"sqlite:///{db_path}"
        engine = sa.create_engine(db_url)
        Base.metadata.create_all(engine)
        engine.dispose()
        say(f"created {db_path.name} with tables {', '.join(sorted(Base.metadata.tables))}")

        private_key, public_key = write_keypair(workdir, "dbapi")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = workdir / "server.log"
        server = start_server(db_url, public_key, port, log)
        try:
            wait_healthy(url, server, log)
            say(f"DB-API serving {db_path.name} at {url} (pid {server.pid}); it holds the public key only")
            token_file = workdir / "worker.token"
            write_token(private_key, token_file)
            say(f"minted a 5-minute EdDSA token into {token_file.name} (mode 0600)")
            say("starting the worker with no database URL in its environment")
            run_worker(url, token_file, db_path, args.worker_python)
            say("reading the database file directly to check the worker's effects")
            verify(db_path)
        finally:
            stop_server(server)
        say(f"DB-API stopped (exit code {server.returncode}); finished in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
