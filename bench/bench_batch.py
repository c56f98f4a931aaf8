"""Server CPU of one committing ``POST /batch`` (begin + UPDATE + commit), in process, on PostgreSQL.

A benchmark, not a test. It runs ``bench_isolation``'s ``modify_commit`` once through a real
``DBSession`` against an in-process DB-API, keeps the ``/batch`` body the client sent (statement
by hash), then replays that body straight into the WSGI application - a new transaction id each
time - and reports process CPU per request: the whole request path (token, body, schema,
transaction, statement run, outcome row, COMMIT, answer, access log) without HTTP server or
socket::

    python -m bench.bench_batch --database-url postgresql+psycopg://root@127.0.0.1/dbsession_bench_x
    python -m bench.bench_batch --profile    # cProfile of the replay, top functions
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import pstats
import sys
import time
import uuid
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from bench.bench_isolation import OPS, fresh_database, seed
from bench.bench_pipeline import _environ
from bench.models import Base
from dbsession import DBSession
from dbsession.transport import Transport
from tests.servers import running_dbapi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql+psycopg://root@127.0.0.1/dbsession_bench_batch")
    parser.add_argument("-n", type=int, default=300, help="requests per chunk (best of 10 chunks)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    with fresh_database(args.database_url, False, False) as url:
        engine = sa.create_engine(url, pool_pre_ping=True)
        seed(engine)
        from dbapi_server._liveness import use_socket_liveness
        use_socket_liveness(engine)
        with running_dbapi(engine, Base.metadata) as server:
            sent: list[tuple[str, bytes]] = []
            original = Transport._request

            def keep(self: Any, method: str, path: str, body: bytes | None, **kw: Any) -> Any:
                if body is not None:
                    sent.append((path, body))
                return original(self, method, path, body, **kw)

            Transport._request = keep  # type: ignore[method-assign]
            try:
                make = sessionmaker(class_=DBSession, database_access_isolation=True, database_api_host=server.url,
                                    token=server.token)
                for i in range(3):  # the document travels once; later by hash
                    sent.clear()
                    OPS["modify_commit"][1](make, i)
            finally:
                Transport._request = original  # type: ignore[method-assign]
            batch = orjson.loads(next(body for path, body in sent if path.endswith("/batch")))
            app, token = server.app, server.token
            statuses: list[str] = []

            def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
                statuses.append(status)
                return lambda data: None

            run_id, counter = uuid.uuid4().hex[:12], itertools.count()

            def one() -> None:
                batch["txn"] = f"bench-{run_id}-{next(counter)}"
                body = orjson.dumps(batch)
                environ = _environ("POST", "/dbapi/v1/batch", token, body)
                environ["wsgi.input"] = io.BytesIO(body)
                result = app(environ, start_response)
                answer = b"".join(result)
                if not statuses[-1].startswith("200") or b'"committed"' not in answer:
                    raise SystemExit(f"unexpected answer {statuses[-1]}: {answer[:300]!r}")

            for _ in range(100):
                one()
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                for _ in range(args.n * 3):
                    one()
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(50)
            best = float("inf")
            for _ in range(10):
                started = time.process_time()
                for _ in range(args.n):
                    one()
                best = min(best, (time.process_time() - started) / args.n)
            print(f"POST /batch (begin + UPDATE + commit): {best * 1e6:.1f} us CPU per request "
                  f"(in process, best of 10 x {args.n}; load {os.getloadavg()[0]:.2f})")
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
