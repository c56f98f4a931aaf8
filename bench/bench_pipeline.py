"""In-process microbenchmark of the DB-API's request path: WSGI call to answer, no socket, no HTTP server.

Calls the application's WSGI callable (``create_app()``, so the observability layer, the JSON
access log and the JWT check are all in) with a prepared environ, on a SQLite file seeded with the
isolation benchmark's schema, and reports microseconds per request (one thread: wall time is CPU
time). What it leaves out is what ``bench_isolation`` adds: the HTTP server (granian: ~0.06 ms per
request) and the database's own round trip. ``--profile`` prints cProfile's top functions.

    python -m bench.bench_pipeline [-n 5000] [--profile execute_get]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import logging
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from bench.bench_isolation import TI_KEYS, VARIABLE_KEYS, seed
from bench.models import Base, TaskInstance, Variable
from dbapi_server import JWTAuthenticator, create_app, mint_token
from dbapi_server.keys import generate_keypair
from dbapi_server.logs import configure_logging
from dbsession import guard
from dbsession._binds import wire_parameters
from dbsession.dialect import isolated_dialect_class
from query_translation import encode_params, to_wire
from query_translation.fingerprint import sql_fingerprint


def _payload(dialect: Any, stmt: Any) -> dict[str, Any]:
    compiled = stmt.compile(dialect=dialect)
    state = getattr(compiled, "compile_state", None)
    root = state.statement if state is not None and getattr(state, "statement", None) is not None \
        else compiled.statement
    document = to_wire(root, compiled=compiled, core_statements=compiled._dbs_core)
    return {"stmt": document, "stmt_hash": hashlib.sha256(orjson.dumps(document)).hexdigest(),
            "sql": sql_fingerprint(compiled),
            "params": encode_params(wire_parameters(compiled, [compiled.construct_params()],
                                                    dialect._dbs_adapter))}


def _by_hash(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != "stmt"}


def _environ(method: str, path: str, token: str | None, body: bytes | None = None) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "9180", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.version": (1, 0),
        "HTTP_HOST": "127.0.0.1:9180", "HTTP_USER_AGENT": "dbsession", "HTTP_ACCEPT": "*/*",
        "HTTP_ACCEPT_ENCODING": "identity", "HTTP_CONNECTION": "keep-alive",
    }
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    if body is not None:
        environ["CONTENT_TYPE"] = "application/json"
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000, help="timed requests per case")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the best is reported)")
    parser.add_argument("--profile", metavar="CASE", help="cProfile one case")
    parser.add_argument("--profile-out", metavar="PATH", help="and write its stats there (pstats)")
    parser.add_argument("--log", choices=["json", "text", "off"], default="json",
                        help="access log as dbapi-server serve writes it (to /dev/null), or off")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    engine = guard.exempt(sa.create_engine(f"sqlite:///{workdir / 'bench.sqlite'}"))
    seed(engine)
    private, public = generate_keypair()
    os.environ.setdefault("DBAPI_OTEL", "true")
    app = create_app(engine=engine, metadata=Base.metadata,
                     authenticator=JWTAuthenticator(public, algorithms=["EdDSA"]))
    if args.log != "off":
        configure_logging({"DBAPI_LOG_FORMAT": args.log})
        handler = next(h for h in logging.getLogger("dbapi_server").handlers if h.get_name() == "dbapi_server")
        handler.setStream(open(os.devnull, "w"))  # type: ignore[attr-defined]
    else:
        logging.getLogger("dbapi_server.access").setLevel(logging.WARNING)
    token = mint_token(private, subject="bench", ttl=3600)
    state = app.extensions["dbapi_server"]
    dialect = isolated_dialect_class(state.info)()
    get = _payload(dialect, sa.select(TaskInstance).where(*(
        c == v for c, v in zip(TaskInstance.__table__.primary_key.columns, TI_KEYS[3], strict=True))))
    variable = _payload(dialect, sa.select(Variable.val).where(Variable.key == VARIABLE_KEYS[2]))
    # as the client sends them: the document once, then its hash alone
    cases: dict[str, tuple[str, str, bytes | None]] = {
        "info": ("GET", "/dbapi/v1/info", None),
        "variable (first)": ("POST", "/dbapi/v1/execute", orjson.dumps(variable)),
        "execute_variable": ("POST", "/dbapi/v1/execute", orjson.dumps(_by_hash(variable))),
        "get (first)": ("POST", "/dbapi/v1/execute", orjson.dumps(get)),
        "execute_get": ("POST", "/dbapi/v1/execute", orjson.dumps(_by_hash(get))),
    }
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
        statuses.append(status)
        return lambda data: None

    def one(method: str, path: str, body: bytes | None) -> None:
        environ = _environ(method, path, token, body)
        environ["wsgi.input"] = io.BytesIO(body or b"")
        result = app(environ, start_response)
        b"".join(result)
        close = getattr(result, "close", None)
        if close is not None:
            close()

    for name, (method, path, body) in cases.items():
        if name.endswith("(first)"):
            one(method, path, body)
            assert statuses[-1].startswith("200"), (name, statuses[-1])
            continue
        for _ in range(200):
            one(method, path, body)
        assert statuses[-1].startswith("200"), (name, statuses[-1])
        if args.profile == name:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.n):
                one(method, path, body)
            profiler.disable()
            if args.profile_out:
                profiler.dump_stats(args.profile_out)
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(35)
            print(out.getvalue())
            continue
        best = float("inf")
        for _ in range(args.rounds):
            started = time.process_time()
            for _ in range(args.n):
                one(method, path, body)
            best = min(best, (time.process_time() - started) / args.n)
        print(f"{name:20s} {best * 1e6:8.1f} us CPU per request")
    state.close()


if __name__ == "__main__":
    main()
