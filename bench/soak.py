"""Load, faults and soak: N client processes through HAProxy against several DB-API instances.

    python -m bench.soak --duration 600            # the measured run (docs/deployment.md)
    python -m bench.soak --duration 60 --check     # the short CI variant: exit 1 on any violation

What runs (all on loopback):

* PostgreSQL: by default a throwaway cluster of its own (``initdb`` in a temporary directory, the
  machine's PostgreSQL binaries), so restarting it disturbs nobody else; ``--postgres system``
  uses the machine's cluster and restarts it with ``pg_ctlcluster --skip-systemctl-redirect <ver>
  main restart`` (CI, where nothing else runs).
* ``--instances`` (3) ``dbapi-server serve`` processes (granian) sharing one signing key, each
  connecting with its own ``application_name`` (so its database connections can be counted).
* HAProxy (Debian's package) with the configuration of ``docs/deployment.md``: ``balance
  hdr(X-DBSession-Route)``, ``hash-type consistent``, health checks on ``/dbapi/v1/ready``.
* ``--clients`` (6) processes, each one ``DBSession`` doing mixed ORM work in a loop: one-shot
  reads; a ledger write (insert + balance update); ``SELECT ... FOR UPDATE`` then update + insert;
  a savepoint whose inner insert is rolled back. Every write carries a unique ``ref`` and an
  amount, and the client records what ``commit()`` told it: committed, failed (an exception
  other than ``CommitOutcomeUnknownError`` - a definite "not committed"), or unknown.

Faults, at fractions of the run: ``--kill-at`` (0.3; several comma-separated, taking the instances
in turn) SIGKILLs an instance - its granian worker dies with it - and restarts it on the same port
3 s later; ``--pg-restart-at`` (0.6) restarts PostgreSQL (fast shutdown: every server connection is
terminated).

Checked at the end, against the ledger (the database is the truth):

* lost: a write the client was told was committed is missing - must be 0;
* doubled: a ``ref`` present more than once - must be 0;
* phantom: a write the client was told had failed is present - must be 0 (a "failed" must be true);
* savepoint leaks: a row inserted inside a rolled-back savepoint is present - must be 0;
* balances: each account's balance equals the sum of its ledger amounts;
* errors: counted by type; only the documented ones may appear (a disconnect
  ``OperationalError``, ``CommitOutcomeUnknownError``, the database's ``OperationalError`` while it
  restarts, ``TransactionError``); anything else is "undocumented" - must be 0;
* resources per instance, sampled every ``--sample`` seconds: open file descriptors and RSS of its
  process tree, its database connections (``pg_stat_activity``), its open transactions; "flat"
  means the last quarter's peak is within 1.5x (+ a small slack) of the peak from 10 % to 50 % of
  the run (after warming up, before the last faults).

The numbers are printed as a Markdown section and written as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DOCUMENTED = ("OperationalError(disconnect)", "CommitOutcomeUnknownError", "OperationalError(database)",
              "TransactionError")


# --- the clients ---------------------------------------------------------------------------------
def classify(exc: BaseException) -> str:
    from dbsession import CommitOutcomeUnknownError, TransactionError

    if isinstance(exc, CommitOutcomeUnknownError):
        return "CommitOutcomeUnknownError"
    if isinstance(exc, sa.exc.OperationalError):
        return "OperationalError(disconnect)" if exc.connection_invalidated else "OperationalError(database)"
    if isinstance(exc, TransactionError):
        return "TransactionError"
    code = getattr(exc, "code", None)
    return f"undocumented:{type(exc).__module__}.{type(exc).__name__}" + (f"({code})" if code else "")


@dataclass
class ClientReport:
    client: int
    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_times: list[tuple[float, str]] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    committed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    savepoint_refs: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # first few undocumented tracebacks


def client_main(client: int, api_host: str, token: str, started: float, until: float, think: float,
                out: str, seed: int) -> None:
    """One client process: mixed ORM work until *until* (wall clock), then the report as JSON."""
    from dbsession import CommitOutcomeUnknownError, DBSession

    from .soak_models import ACCOUNTS, Account, Ledger

    rng = random.Random(seed)
    report = ClientReport(client)
    session = DBSession(database_access_isolation=True, database_api_host=api_host, token=token)
    n = 0
    while time.time() < until:
        op = rng.choices(["read", "write", "for_update", "savepoint"], weights=[35, 25, 20, 20])[0]
        n += 1
        ref = f"c{client}-{n}"
        account = rng.randint(1, ACCOUNTS)
        amount = rng.randint(1, 9)
        begun = time.perf_counter()
        writes = op != "read"
        committing = False
        try:
            if op == "read":
                session.scalar(sa.select(sa.func.count()).select_from(Ledger).where(Ledger.account_id == account))
                session.get(Account, account)
                session.rollback()
            else:
                if op == "write":
                    session.add(Ledger(ref=ref, account_id=account, amount=amount))
                    session.execute(sa.update(Account).where(Account.id == account)
                                    .values(balance=Account.balance + amount))
                elif op == "for_update":
                    row = session.scalars(sa.select(Account).where(Account.id == account).with_for_update()).one()
                    row.balance += amount
                    session.add(Ledger(ref=ref, account_id=account, amount=amount))
                else:
                    session.add(Ledger(ref=ref, account_id=account, amount=amount))
                    session.execute(sa.update(Account).where(Account.id == account)
                                    .values(balance=Account.balance + amount))
                    inner = f"{ref}-sp"
                    report.savepoint_refs.append(inner)
                    savepoint = session.begin_nested()
                    session.add(Ledger(ref=inner, account_id=account, amount=1000))
                    session.flush()
                    savepoint.rollback()
                committing = True
                session.commit()
                report.committed.append(ref)
            report.ops[op] += 1
            report.latencies[op].append(time.perf_counter() - begun)
        except Exception as exc:  # counted by type; the session goes on like an application's would
            kind = classify(exc)
            report.errors[kind] += 1
            report.error_times.append((round(time.time() - started, 2), kind))
            if kind.startswith("undocumented") and len(report.samples) < 5:
                report.samples.append("".join(traceback.format_exception(exc))[-3000:])
            if writes:
                if committing and isinstance(exc, CommitOutcomeUnknownError):
                    report.unknown.append(ref)
                else:
                    report.failed.append(ref)
            try:
                session.rollback()
            except Exception as again:
                report.errors[f"rollback:{classify(again)}"] += 1
                session.close()
                session = DBSession(database_access_isolation=True, database_api_host=api_host, token=token)
        if think:
            time.sleep(rng.uniform(0, 2 * think))
    with contextlib.suppress(Exception):
        session.close()
    Path(out).write_text(json.dumps({
        "client": client, "ops": report.ops, "errors": report.errors, "error_times": report.error_times,
        "latencies": report.latencies, "committed": report.committed, "failed": report.failed,
        "unknown": report.unknown, "savepoint_refs": report.savepoint_refs, "samples": report.samples}))


# --- PostgreSQL ------------------------------------------------------------------------------------
class _Postgres:
    """What both kinds of cluster share: a fresh database of the soak's in it."""

    admin_url: sa.URL

    def create(self, name: str) -> sa.URL:
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        return self.admin_url.set(database=name)


class SystemPostgres(_Postgres):
    """The machine's cluster: a fresh database in it; restarted with pg_ctlcluster."""

    def __init__(self) -> None:
        self.admin_url = sa.make_url(os.environ.get("DBSESSION_TEST_PG_ADMIN_URL",
                                                    "postgresql+psycopg://root@127.0.0.1:5432/postgres"))
        self.version = sorted(os.listdir("/etc/postgresql"))[0]

    def drop(self, name: str) -> None:
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        engine.dispose()

    def restart(self) -> None:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", self.version, "main", "restart"],
                       check=True, timeout=120)

    def destroy(self) -> None:
        pass


class OwnPostgres(_Postgres):
    """A throwaway cluster (``tests.faults.processes.ThrowawayPostgres``), restarted with pg_ctl."""

    def __init__(self) -> None:
        from tests.faults.processes import ThrowawayPostgres

        self.cluster = ThrowawayPostgres()
        self.cluster.start()
        self.admin_url = self.cluster.url

    def drop(self, name: str) -> None:
        pass

    def restart(self) -> None:
        self.cluster.restart()

    def destroy(self) -> None:
        self.cluster.destroy()


# --- resources --------------------------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    stack.extend(int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split())
    return found


def tree_resources(pid: int) -> tuple[int, int]:
    """(open file descriptors, RSS in KiB) of *pid* and its descendants."""
    fds = rss = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fds += len(os.listdir(f"/proc/{p}/fd"))
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
    return fds, rss


def open_transactions(url: str) -> float | None:
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith("dbapi_open_transactions "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


# --- the run ------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dbapi_server import mint_token
    from dbapi_server.keys import write_keypair
    from tests.servers import dbapi_process
    from tests.service.lb import HAProxy, require_haproxy

    from .soak_models import ACCOUNTS, METADATA_PATH, Account, Base, Ledger

    require_haproxy_binary(require_haproxy)
    workdir = Path(tempfile.mkdtemp(prefix="dbapi-soak-"))
    postgres: OwnPostgres | SystemPostgres = OwnPostgres() if args.postgres == "own" else SystemPostgres()
    name = f"soak_{uuid.uuid4().hex[:8]}"
    events: list[tuple[float, str]] = []
    samples: list[dict[str, Any]] = []
    try:
        url = postgres.create(name)
        trusted = sa.create_engine(url, pool_pre_ping=True)
        Base.metadata.create_all(trusted)
        with trusted.begin() as conn:
            conn.execute(sa.insert(Account), [{"id": i, "balance": 0} for i in range(1, ACCOUNTS + 1)])
        private_key, public_key = write_keypair(workdir)
        env = {"DBAPI_JWT_KEY_FILE": str(public_key), "DBAPI_METRICS_PUBLIC": "true",
               "DBAPI_LOG_LEVEL": "WARNING", "DBAPI_SHUTDOWN_GRACE": "5"}

        def instance_url(i: int) -> sa.URL:
            return url.update_query_dict({"application_name": f"dbapi{i}"})

        with contextlib.ExitStack() as stack:
            instances = {}
            for i in range(1, args.instances + 1):
                instances[f"dbapi{i}"] = stack.enter_context(dbapi_process(
                    instance_url(i), METADATA_PATH, env=env, threads=args.threads))
            every_instance = list(instances.values())  # the restarted ones are added: their logs are read
            lb = HAProxy([(n, "127.0.0.1", p.port) for n, p in instances.items()], check_interval="1s")
            stack.callback(lb.close)
            lb.start()
            started = time.time()
            until = started + args.duration
            ctx = multiprocessing.get_context("spawn")
            outs = [workdir / f"client-{c}.json" for c in range(args.clients)]
            clients = [ctx.Process(target=client_main, args=(
                c, lb.url, mint_token(private_key.read_bytes(), subject=f"soak-client-{c}", ttl=int(args.duration) + 600),
                started, until, args.think, str(outs[c]), args.seed + c)) for c in range(args.clients)]
            for process in clients:
                process.start()
            events.append((0.0, f"{args.clients} clients started"))

            stop_sampling = threading.Event()

            def sample() -> None:
                while not stop_sampling.is_set():
                    point: dict[str, Any] = {"t": round(time.time() - started, 1)}
                    try:
                        with trusted.connect() as conn:
                            rows = conn.execute(sa.text(
                                "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = :d "
                                "GROUP BY application_name"), {"d": name}).all()
                        connections = {r[0]: int(r[1]) for r in rows}
                    except sa.exc.SQLAlchemyError:
                        connections = {}
                    for label, instance in instances.items():
                        if instance.process.poll() is not None:
                            continue
                        fds, rss = tree_resources(instance.process.pid)
                        point[label] = {"fds": fds, "rss_kib": rss, "db_connections": connections.get(label, 0),
                                        "open_txns": open_transactions(instance.url)}
                    samples.append(point)
                    stop_sampling.wait(args.sample)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            def at(fraction: float) -> None:
                wait = started + fraction * args.duration - time.time()
                if wait > 0:
                    time.sleep(wait)

            def kill_and_restart(victim: str) -> None:
                port = instances[victim].port
                holding = open_transactions(instances[victim].url)
                instances[victim].kill()
                events.append((round(time.time() - started, 1),
                               f"SIGKILL {victim} (it held {holding:.0f} open transactions a moment before)"
                               if holding is not None else f"SIGKILL {victim}"))
                time.sleep(3)
                instances[victim] = stack.enter_context(dbapi_process(
                    instance_url(int(victim[5:])), METADATA_PATH, env=env, threads=args.threads,
                    args=["--port", str(port)]))
                every_instance.append(instances[victim])
                events.append((round(time.time() - started, 1), f"{victim} restarted on port {port} (ready)"))

            def restart_postgres() -> None:
                t0 = time.time()
                events.append((round(t0 - started, 1), "PostgreSQL restart begins"))
                postgres.restart()
                events.append((round(time.time() - started, 1), f"PostgreSQL restarted ({time.time() - t0:.1f} s)"))

            faults = sorted([(f, "kill") for f in args.kill_at if f < 1]
                            + [(f, "postgres") for f in args.pg_restart_at if f < 1])
            names = list(instances)
            kills = 0
            for fraction, fault in faults:
                at(fraction)
                if fault == "kill":
                    kill_and_restart(names[(1 + kills) % len(names)])  # dbapi2, dbapi3, dbapi1, ...
                    kills += 1
                else:
                    restart_postgres()
            for process in clients:
                process.join(max(until - time.time(), 0) + args.duration + 120)
            events.append((round(time.time() - started, 1), "clients done"))
            stop_sampling.set()
            sampler.join(30)
            exit_codes = [process.exitcode for process in clients]
            time.sleep(1)
            final_open = {label: open_transactions(p.url) for label, p in instances.items()}
            server_errors = [line[:2000] for p in every_instance for line in p.output().splitlines()
                             if '"level":"ERROR"' in line or "Traceback" in line][:20]
        reports = [json.loads(out.read_text()) for out in outs if out.exists()]
        with trusted.connect() as conn:
            ledger_counts = Counter(dict(conn.execute(
                sa.select(Ledger.ref, sa.func.count()).group_by(Ledger.ref)).all()))
            balances_ok = conn.execute(sa.text(
                "SELECT count(*) FROM soak_accounts a WHERE a.balance <> COALESCE((SELECT sum(amount) "
                "FROM soak_ledger l WHERE l.account_id = a.id), 0)")).scalar()
            outcome_rows = dict(conn.execute(sa.text(
                "SELECT outcome, count(*) FROM dbapi.dbapi_commit_outcomes GROUP BY outcome")).all())
        trusted.dispose()
        result = summarize(args, reports, ledger_counts, int(balances_ok or 0), events, samples, exit_codes,
                           final_open, {str(k): int(v) for k, v in outcome_rows.items()})
        result["server_errors"] = server_errors
        return result
    finally:
        with contextlib.suppress(Exception):
            postgres.drop(name)
        postgres.destroy()


def require_haproxy_binary(require: Any) -> None:
    try:
        require()
    except BaseException as exc:  # pytest's skip/fail outcome outside pytest
        raise SystemExit(f"soak: {exc}") from None


def summarize(args: argparse.Namespace, reports: list[dict[str, Any]], ledger: Counter[str], bad_balances: int,
              events: list[tuple[float, str]], samples: list[dict[str, Any]], exit_codes: list[int | None],
              final_open: dict[str, float | None], outcome_rows: dict[str, int]) -> dict[str, Any]:
    ops: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    latencies: dict[str, list[float]] = defaultdict(list)
    committed, failed, unknown, inner = set(), set(), set(), set()
    error_times: list[tuple[float, str]] = []
    undocumented_samples: list[str] = []
    for r in reports:
        ops.update(r["ops"])
        errors.update(r["errors"])
        for op, values in r["latencies"].items():
            latencies[op].extend(values)
        committed.update(r["committed"])
        failed.update(r["failed"])
        unknown.update(r["unknown"])
        inner.update(r["savepoint_refs"])
        error_times.extend(tuple(e) for e in r["error_times"])  # type: ignore[misc]
        undocumented_samples.extend(r["samples"])
    lost = sorted(ref for ref in committed if ledger.get(ref, 0) == 0)
    doubled = sorted(ref for ref, n in ledger.items() if n > 1)
    phantom = sorted(ref for ref in failed if ledger.get(ref, 0) > 0)
    leaked = sorted(ref for ref in inner if ledger.get(ref, 0) > 0)
    unknown_present = sum(1 for ref in unknown if ledger.get(ref, 0) > 0)
    every = [v for values in latencies.values() for v in values]
    latency = {op: {"n": len(v), "p50_ms": round(percentile(v, 0.5) * 1000, 2),
                    "p99_ms": round(percentile(v, 0.99) * 1000, 2)} for op, v in sorted(latencies.items())}
    latency["all"] = {"n": len(every), "p50_ms": round(percentile(every, 0.5) * 1000, 2),
                      "p99_ms": round(percentile(every, 0.99) * 1000, 2)}
    resources = resource_summary(samples)
    undocumented = {k: v for k, v in errors.items() if "undocumented" in k}
    flat = all(r["flat"] for r in resources.values())
    verdict = {
        "lost": len(lost), "doubled": len(doubled), "phantom": len(phantom), "savepoint_leaks": len(leaked),
        "unbalanced_accounts": bad_balances, "undocumented_errors": sum(undocumented.values()),
        "clients_exited_cleanly": all(code == 0 for code in exit_codes), "resources_flat": flat,
        "open_transactions_at_end": final_open,
    }
    ok = (not lost and not doubled and not phantom and not leaked and not bad_balances and not undocumented
          and verdict["clients_exited_cleanly"] and flat)
    return {
        "duration_s": args.duration, "clients": args.clients, "instances": args.instances,
        "postgres": args.postgres, "ops": dict(ops), "ops_total": sum(ops.values()),
        "writes_committed": len(committed), "writes_failed": len(failed), "writes_unknown": len(unknown),
        "unknown_that_committed": unknown_present, "errors": dict(errors), "latency": latency,
        "events": events, "error_timeline": error_histogram(error_times), "resources": resources,
        "outcome_rows": outcome_rows, "verdict": verdict, "ok": ok,
        "examples": {"lost": lost[:10], "doubled": doubled[:10], "phantom": phantom[:10], "leaked": leaked[:10],
                     "undocumented": undocumented_samples[:3]},
    }


def error_histogram(error_times: list[tuple[float, str]]) -> list[tuple[int, int, str]]:
    """Errors per 5-second window: (window start s, count, kinds)."""
    windows: dict[int, Counter[str]] = defaultdict(Counter)
    for t, kind in error_times:
        windows[int(t // 5 * 5)][kind] += 1
    return [(w, sum(c.values()), ", ".join(f"{k} {n}" for k, n in c.most_common()))
            for w, c in sorted(windows.items())]


def resource_summary(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per instance and metric: the peaks from 10 % to 50 % of the run and in its last quarter, and
    "flat" (``q2_peak`` names the first, ``q4_peak`` the second)."""
    out: dict[str, dict[str, Any]] = {}
    if not samples:
        return out
    end = samples[-1]["t"] or 1
    labels = sorted({k for s in samples for k in s if k != "t"})
    for label in labels:
        series = [(s["t"], s[label]) for s in samples if label in s]
        summary: dict[str, Any] = {"flat": True}
        for metric, slack in (("fds", 10), ("rss_kib", 20_000), ("db_connections", 4)):
            early = [v[metric] for t, v in series if end * 0.1 <= t < end * 0.5]
            late = [v[metric] for t, v in series if t >= end * 0.75]
            every = [v[metric] for _, v in series]
            if not early or not late:
                continue
            summary[metric] = {"min": min(every), "max": max(every), "q2_peak": max(early), "q4_peak": max(late)}
            if max(late) > max(early) * 1.5 + slack:
                summary["flat"] = False
        out[label] = summary
    return out


def markdown(result: dict[str, Any]) -> str:
    v = result["verdict"]
    lines = [
        f"Soak run: {result['duration_s']} s, {result['clients']} client processes, {result['instances']} "
        f"instances behind HAProxy, PostgreSQL ({result['postgres']} cluster). Verdict: "
        f"{'PASS' if result['ok'] else 'FAIL'}.",
        "",
        "| | |", "|---|---|",
        f"| operations | {result['ops_total']} ({', '.join(f'{k} {n}' for k, n in sorted(result['ops'].items()))}) |",
        f"| writes: committed / failed / unknown | {result['writes_committed']} / {result['writes_failed']} / "
        f"{result['writes_unknown']} (unknown that had committed: {result['unknown_that_committed']}) |",
        f"| lost / doubled / phantom commits | {v['lost']} / {v['doubled']} / {v['phantom']} |",
        f"| savepoint rows leaked / unbalanced accounts | {v['savepoint_leaks']} / {v['unbalanced_accounts']} |",
        f"| undocumented errors | {v['undocumented_errors']} |",
        f"| errors by type | {', '.join(f'{k} {n}' for k, n in sorted(result['errors'].items())) or 'none'} |",
        f"| open transactions at the end | {v['open_transactions_at_end']} |",
        f"| commit outcome rows at the end | {_rows(result['outcome_rows'])} |",
        "",
        "| operation | n | p50 ms | p99 ms |", "|---|---:|---:|---:|",
        *[f"| {op} | {s['n']} | {s['p50_ms']} | {s['p99_ms']} |" for op, s in result["latency"].items()],
        "",
        "| instance | fds min-max (peak 10-50 % / last 25 %) | RSS MiB min-max (peak 10-50 % / last 25 %) | DB connections min-max (peak 10-50 % / last 25 %) | flat |",
        "|---|---|---|---|---|",
    ]
    for label, r in result["resources"].items():
        lines.append(f"| {label} | {_cell(r, 'fds')} | {_cell(r, 'rss_kib', 1024)} | {_cell(r, 'db_connections')} "
                     f"| {r['flat']} |")
    lines += ["", "Events: " + "; ".join(f"{t} s {e}" for t, e in result["events"]), "",
              "Errors per 5 s window: " + ("; ".join(f"{w} s: {n} ({k})" for w, n, k in result["error_timeline"])
                                          or "none")]
    return "\n".join(lines)


def _rows(rows: Any) -> str:
    """Outcome rows by outcome (``committed``; ``rolled_back``: fences written for commits asked of
    an instance that did not hold the transaction and found no row)."""
    if isinstance(rows, int):  # a result file of an older run: the total only
        return str(rows)
    return ", ".join(f"{outcome} {n}" for outcome, n in sorted(rows.items())) or "none"


def _fractions(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _cell(summary: dict[str, Any], metric: str, scale: float = 1) -> str:
    m = summary.get(metric)
    if not m:
        return "-"
    return f"{m['min'] / scale:.0f}-{m['max'] / scale:.0f} ({m['q2_peak'] / scale:.0f} / {m['q4_peak'] / scale:.0f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--clients", type=int, default=6, help="client processes (default 6)")
    parser.add_argument("--instances", type=int, default=3, help="DB-API instances (2-3; default 3)")
    parser.add_argument("--threads", type=int, default=8, help="threads per instance (default 8)")
    parser.add_argument("--think", type=float, default=0.01, help="mean pause between operations, s")
    parser.add_argument("--kill-at", type=_fractions, default=[0.3], help="fractions of the run, comma-separated: "
                        "SIGKILL an instance (dbapi2, then dbapi3, ...) and restart it 3 s later (default 0.3; "
                        "'' or >= 1: never)")
    parser.add_argument("--pg-restart-at", type=_fractions, default=[0.6], help="fractions of the run, "
                        "comma-separated: restart PostgreSQL (default 0.6; '' or >= 1: never)")
    parser.add_argument("--postgres", choices=["own", "system"], default="own",
                        help="own: a throwaway cluster (default); system: the machine's, via pg_ctlcluster")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between resource samples")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--check", action="store_true", help="exit 1 unless every check passes")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    if result["server_errors"]:
        print("\nThe instances logged errors:\n" + "\n".join(result["server_errors"]))
    if result["examples"]["undocumented"]:
        print("\nUndocumented errors, first tracebacks:\n" + "\n---\n".join(result["examples"]["undocumented"]))
    return 0 if result["ok"] or not args.check else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
