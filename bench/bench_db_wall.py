"""The second wall's cost: database roles per request, on and off, and the mechanisms compared.

A benchmark, not a test. Run it from the repository root (PostgreSQL; a fresh database, dropped
after; the roles of namespace ``bench`` are dropped too)::

    python -m bench.bench_db_wall                    # both parts
    python -m bench.bench_db_wall --iterations 300 --json wall.json

**Part 1, end to end.** The Airflow-like schema of ``bench.models`` and a worker policy (task
instances and the dag run of its own run, variables without their description) served by three
real ``dbapi-server serve`` subprocesses on one database: without the wall, with database roles
only (``DBAPI_DB_ROW_SECURITY=off``) and with roles plus row-level security. A worker's isolated
``DBSession`` runs a one-shot read, a read in a transaction and a write + commit against each,
interleaved in chunks so that machine noise hits every mode alike; medians and p90 in ms. One
more row alternates two workers of different runs, so the pooled connections keep changing hands.

**Part 2, the mechanism.** What the server does per one-shot read, on one pooled connection and
without HTTP: today's autocommit read; the chosen mechanism (the session's role and claims kept
across checkouts, changed only when the caller changes) with one caller and with alternating
callers; ``SET ROLE`` at checkout plus ``RESET ROLE`` at checkin (pool events); and a transaction
per read with ``SET LOCAL`` (``set_config(..., true)``). The load average is printed before and
after: on a busy machine compare the rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from bench.bench_isolation import (
    RUN_KEYS,
    TI_KEYS,
    Server,
    free_port,
    fresh_database,
    load_average,
    seed,
    summarize,
)
from bench.models import Base, TaskInstance, Variable
from dbapi_server import Policy, mint_token
from dbapi_server import _db_catalog as catalog
from dbapi_server.db_roles import DatabaseRoles
from dbapi_server.db_wall import DatabaseWall
from dbsession import DBSession

DEFAULT_URL = f"postgresql+psycopg://root@127.0.0.1/dbsession_bench_wall_{os.getpid()}"  # the run's own
NAMESPACE = "bench"
POLICY = """
[roles.worker]
[roles.worker.tables.task_instance]
read = "*"
update = ["try_number", "state", "updated_at"]
row_filter = { dag_id = "dag_id", run_id = "run_id" }
[roles.worker.tables.dag_run]
read = ["id", "dag_id", "run_id", "state"]
row_filter = { dag_id = "dag_id", run_id = "run_id" }
[roles.worker.tables.variable]
read = ["id", "key", "val"]
"""
# one namespace each: servers sharing a namespace must share the policy and the settings
MODES = {"off": {"DBAPI_DB_ROLES": "off"},
         "roles": {"DBAPI_DB_ROLES": "apply", "DBAPI_DB_ROW_SECURITY": "off", "DBAPI_DB_ROLES_NAMESPACE": "bench_roles"},
         "roles+rls": {"DBAPI_DB_ROLES": "apply", "DBAPI_DB_ROW_SECURITY": "on", "DBAPI_DB_ROLES_NAMESPACE": "bench_rls"}}


def _mine(run: int) -> list[tuple[Any, ...]]:
    return [k for k in TI_KEYS if (k[0], k[2]) == RUN_KEYS[run]]


def op_read(session_for: Callable[[int], DBSession], i: int) -> Any:
    with session_for(0) as s:
        key = _mine(0)[i % 12]
        return s.scalar(sa.select(TaskInstance.try_number).where(
            TaskInstance.dag_id == key[0], TaskInstance.task_id == key[1], TaskInstance.run_id == key[2],
            TaskInstance.map_index == key[3]))


def op_read_txn(session_for: Callable[[int], DBSession], i: int) -> Any:
    with session_for(0) as s, s.begin():
        s.scalar(sa.select(Variable.val).where(Variable.id == 1 + i % 50))
        return s.get(TaskInstance, _mine(0)[i % 12])


def op_write(session_for: Callable[[int], DBSession], i: int) -> Any:
    with session_for(0) as s:
        ti = s.get(TaskInstance, _mine(0)[i % 12])
        assert ti is not None
        ti.try_number += 1
        s.commit()


def op_read_alternating(session_for: Callable[[int], DBSession], i: int) -> Any:
    run = i % 2
    with session_for(run) as s:
        key = _mine(run)[i % 12]
        return s.scalar(sa.select(TaskInstance.try_number).where(
            TaskInstance.dag_id == key[0], TaskInstance.task_id == key[1], TaskInstance.run_id == key[2],
            TaskInstance.map_index == key[3]))


OPS = {"one-shot read": op_read, "read in a transaction": op_read_txn, "write + commit": op_write,
       "one-shot read, 2 workers alternating": op_read_alternating}


def end_to_end(url: str, workdir: Path, n: int, chunk: int) -> dict[str, Any]:
    policy_file = workdir / "policy.toml"
    policy_file.write_text(POLICY)
    servers: dict[str, Server] = {}
    saved = dict(os.environ)
    try:
        for mode, env in MODES.items():  # one after the other: the first "apply" creates the roles
            os.environ.update(env, DBAPI_POLICY_FILE=str(policy_file))
            (workdir / mode).mkdir()
            servers[mode] = Server(url, free_port(), 8, workdir / mode)
            servers[mode].wait_healthy()
        os.environ.clear()
        os.environ.update(saved)
        private = {mode: (workdir / mode / "keys" / "dbapi.key").read_bytes() for mode in MODES}
        tokens = {(mode, run): mint_token(private[mode], subject=f"w{run}", ttl=3600, role="worker",
                                          dag_id=RUN_KEYS[run][0], run_id=RUN_KEYS[run][1])
                  for mode in MODES for run in (0, 1)}

        def maker(mode: str) -> Callable[[int], DBSession]:
            return lambda run: DBSession(database_access_isolation=True, database_api_host=servers[mode].base,
                                         token=tokens[mode, run])

        results: dict[str, Any] = {}
        for name, op in OPS.items():
            for mode in MODES:  # warm up: handshakes, compiled caches, the roles on each connection
                for i in range(30):
                    op(maker(mode), i)
            times: dict[str, list[int]] = {mode: [] for mode in MODES}
            order = list(MODES)
            for c, first in enumerate(range(0, n, chunk)):
                for mode in order if c % 2 == 0 else order[::-1]:
                    make = maker(mode)
                    for i in range(first, min(n, first + chunk)):
                        t0 = time.perf_counter_ns()
                        op(make, i)
                        times[mode].append(time.perf_counter_ns() - t0)
            results[name] = {mode: summarize(t) for mode, t in times.items()}
        return results
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for server in servers.values():
            server.stop()


# -- part 2: the mechanisms, one pooled connection, no HTTP ----------------------------------------
def mechanisms(url: str, n: int) -> dict[str, Any]:
    roles = DatabaseRoles.from_policy(Policy.from_dict(_toml(POLICY)), Base.metadata, namespace=NAMESPACE)
    worker = roles.roles["worker"]
    key = _mine(0)[0]
    query = sa.select(TaskInstance.try_number).where(
        TaskInstance.dag_id == key[0], TaskInstance.task_id == key[1], TaskInstance.run_id == key[2],
        TaskInstance.map_index == key[3])

    def engine() -> sa.Engine:
        return sa.create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)

    def identity(run: int) -> Any:
        from dbapi_server.auth import Principal
        return roles.identity(Principal(f"w{run}", {"role": "worker", "dag_id": RUN_KEYS[run][0],
                                                    "run_id": RUN_KEYS[run][1]}))

    reads: dict[str, Callable[[int], Any]] = {}

    def measure(name: str, read: Callable[[int], Any]) -> None:
        reads[name] = read

    plain = engine()
    autocommit = plain.execution_options(isolation_level="AUTOCOMMIT")

    def today(i: int) -> Any:
        with autocommit.connect() as conn:
            return conn.execute(query).scalar()

    measure("autocommit read, no wall (today)", today)

    walled = engine()
    wall = DatabaseWall(walled, roles)
    walled_read = walled.execution_options(isolation_level="AUTOCOMMIT")
    from dbapi_server import db_wall

    def chosen(alternate: bool) -> Callable[[int], Any]:
        def read(i: int) -> Any:
            token = db_wall._ACTING.set(identity(i % 2 if alternate else 0))
            try:
                with walled_read.connect() as conn:
                    return conn.execute(query).scalar()
            finally:
                db_wall._ACTING.reset(token)
        return read

    measure("chosen: session role kept, one caller", chosen(False))
    measure("chosen: session role kept, callers alternating", chosen(True))
    assert wall.roles is roles  # the listeners are installed on *walled*

    reset = engine()
    wanted: list[Any] = [None]
    settings_sql = db_wall._settings_sql

    @event.listens_for(reset, "checkout")
    def set_role(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        sql, params = settings_sql(wanted[0], local=False)
        dbapi_connection.autocommit = True
        with dbapi_connection.cursor() as cursor:
            cursor.execute(sql, params)
        dbapi_connection.autocommit = False

    @event.listens_for(reset, "checkin")
    def reset_role(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None and not dbapi_connection.closed:
            dbapi_connection.autocommit = True
            with dbapi_connection.cursor() as cursor:
                cursor.execute("RESET ROLE")
            dbapi_connection.autocommit = False

    reset_read = reset.execution_options(isolation_level="AUTOCOMMIT")

    def set_and_reset(i: int) -> Any:
        wanted[0] = identity(0)
        with reset_read.connect() as conn:
            return conn.execute(query).scalar()

    measure("SET ROLE at checkout + RESET ROLE at checkin", set_and_reset)

    per_txn = engine()

    def transaction_per_read(i: int) -> Any:
        sql, params = settings_sql(identity(0), local=True)
        with per_txn.begin() as conn:
            conn.exec_driver_sql(sql, params)
            return conn.execute(query).scalar()

    measure("a transaction per read with SET LOCAL", transaction_per_read)
    for read in reads.values():  # warm up
        for i in range(50):
            read(i)
    times: dict[str, list[int]] = {name: [] for name in reads}
    order = list(reads)
    for c, first in enumerate(range(0, n, 50)):  # interleaved in chunks: noise hits every row alike
        for name in order if c % 2 == 0 else order[::-1]:
            read = reads[name]
            for i in range(first, min(n, first + 50)):
                t0 = time.perf_counter_ns()
                read(i)
                times[name].append(time.perf_counter_ns() - t0)
    results: dict[str, Any] = {name: summarize(t) for name, t in times.items()}
    for e in (plain, walled, reset, per_txn):
        e.dispose()
    results["_role"] = worker.name
    return results


def _toml(text: str) -> dict[str, Any]:
    import tomllib
    return tomllib.loads(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--iterations", "-n", type=int, default=300)
    parser.add_argument("--chunk", type=int, default=25)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out: dict[str, Any] = {"load_before": load_average()}
    with fresh_database(args.database_url, False, False) as url, tempfile.TemporaryDirectory() as tmp:
        engine = sa.create_engine(url)
        seed(engine)
        policy = Policy.from_dict(_toml(POLICY))
        every = [DatabaseRoles.from_policy(policy, Base.metadata, namespace=ns)
                 for ns in (NAMESPACE, "bench_roles", "bench_rls")]
        roles = every[0]
        try:
            out["end_to_end"] = end_to_end(url, Path(tmp), args.iterations, args.chunk)
            catalog.apply(engine, roles)
            out["mechanisms"] = mechanisms(url, args.iterations * 3)
        finally:
            for compiled in every:
                catalog.drop(engine, compiled)
            engine.dispose()
    out["load_after"] = load_average()
    print(f"load average before {out['load_before']}, after {out['load_after']}")
    for name, by_mode in out["end_to_end"].items():
        base = by_mode["off"]["median"]
        cells = "  ".join(f"{m}: {r['median']:.2f} (p90 {r['p90']:.2f}, {r['median'] - base:+.2f})"
                          for m, r in by_mode.items())
        print(f"{name:40s} {cells}")
    for name, r in out["mechanisms"].items():
        if not name.startswith("_"):
            print(f"{name:50s} median {r['median']:.3f} ms  p90 {r['p90']:.3f} ms")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
