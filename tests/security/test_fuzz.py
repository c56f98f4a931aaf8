"""Thousands of malformed requests against a real DB-API: no 5xx, no leaks, no partial writes.

Two targets on each of SQLite, PostgreSQL and MariaDB, each a real server on a loopback socket with
real tokens: the fuzz schema with no policy (the open preset: every statement may run), and the
repo's worker policy (``examples/policies/airflow_worker.toml``) on the Airflow-like schema of
``_policy_support``, with a worker's tokens and every value the worker may not see marked
(``_worker_fuzz``). The fuzzers:

- **mutation**: real ``/execute`` bodies an isolated client sends for varied ORM statements
  (select, join, subquery, union, window, DML with RETURNING, a data-modifying CTE), mutated by
  hypothesis - fields dropped, duplicated, retyped, node kinds swapped or invented, hostile names,
  huge numbers, deep nesting, bad values and tags, wrong fingerprints, bogus transaction ids and
  sequence numbers, cursor ids - and sent as raw HTTP, together with broken bodies (not JSON, not
  UTF-8, wrong content type) and bad tokens. Half the mutated statements get the fingerprint of
  what they now say, as an attacker would compute it, so the policy and the database meet them;
- **mutation as a worker**: the same, plus well-formed reads composed over every table and column,
  granted or not; no answer may hold a hidden row or column value, and on SQLite an allowed read
  must answer exactly what it finds in a copy of what the worker may see;
- **commit after a refusal**: a good write, a mutated request in the same transaction, COMMIT -
  the tables must hold exactly the good write (a rollback would hide a partial write);
- **schema**: schemathesis generates requests from the served OpenAPI document, valid and invalid.

Every answer is checked (``_fuzzing.Recorder``). Otherwise writes happen only inside transactions
the fuzzer opened: it rolls them back, except one every 1.5 s that it leaves to the server's idle
reaper (1 s here); real writes are undone both ways (counted), and afterwards every table must be
exactly as before (row by row), ``/health`` must be ok and an isolated ``DBSession`` must still
work. The counts per route and status are printed and, with ``DBSESSION_FUZZ_REPORT=<dir>``,
written there as JSON. ``DBSESSION_FUZZ_EXAMPLES`` (default 300, which keeps the default ``pytest``
within its time budget; ``.ci/run`` has a step of its own with 1200) sets the mutation fuzzer's
examples per database, and the others' in proportion; a long run: ``DBSESSION_FUZZ_EXAMPLES=20000``.
"""

from __future__ import annotations

import copy
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dbsession import DBSession
from query_translation import encode_row
from tests.dbapi_server._support import make_engine
from tests.servers import running_dbapi

from . import _fuzzing, _policy_support, _worker_fuzz
from ._fuzzing import User, fresh_txn_id
from ._mutations import BROKEN_BODIES, EXTRA_FIELDS, junk, mutate, serialize
from ._targets import Target, WorkerTarget

EXAMPLES = int(os.environ.get("DBSESSION_FUZZ_EXAMPLES", "300"))
SCHEMA_EXAMPLES = max(25, EXAMPLES // 10)  # per operation and generation mode
POLICY_EXAMPLES = max(50, EXAMPLES // 6)  # the mutation fuzzer as a worker under the example policy
KEPT_EXAMPLES = max(20, EXAMPLES // 40)  # per target: a refusal between a good write and its commit
IDLE_TIMEOUT = 1.0  # the reaper must get its share of the fuzzer's transactions within the run
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))


TARGETS = ["sqlite", "postgresql", *_fuzzing.MARIADB]


@pytest.fixture(scope="module", params=TARGETS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The fuzz schema served with no policy (the open preset): every statement may run."""
    if request.param == "postgresql":
        url: Any = request.getfixturevalue("pg_url")
    elif request.param == "mariadb":
        url = request.getfixturevalue("mariadb_url")
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.sqlite'}"
    engine = make_engine(url, _fuzzing.metadata, _fuzzing.SEED_ROWS)
    try:
        with running_dbapi(engine, _fuzzing.metadata, idle_timeout=IDLE_TIMEOUT) as server:
            yield Target(request.param, engine, server)
    finally:
        engine.dispose()


@pytest.fixture(scope="module", params=TARGETS)
def worker_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  ) -> Iterator[WorkerTarget]:
    """The repo's worker policy (``POLICY_FILE``) on the Airflow-like schema, hidden rows marked."""
    engine = _policy_support.make_engine(request.param, request, tmp_path_factory)
    _worker_fuzz.hide_rows(engine)
    oracle = _worker_fuzz.visible_copy(engine, tmp_path_factory.mktemp("visible")) if request.param == "sqlite" \
        else None
    try:
        with running_dbapi(engine, _policy_support.Base.metadata, policy=_policy_support.POLICY_FILE,
                           idle_timeout=IDLE_TIMEOUT) as server:
            yield WorkerTarget(request.param, engine, server, oracle)
    finally:
        engine.dispose()
        if oracle is not None:
            oracle.dispose()


# -- the mutation fuzzer ------------------------------------------------------------------------------
def _send_mutated(target: Target, data: st.DataObject, *, transport: bool = True) -> None:
    """One mutated statement; with *transport*, also odd routes, methods, content types and bodies
    (without: every request is a well-formed POST /execute, so that most reach the policy)."""
    seed = data.draw(st.sampled_from(target.seeds), label="seed")
    body: Any = copy.deepcopy(seed.payload)
    in_txn = seed.needs_txn or data.draw(st.booleans(), label="in_txn")
    txn_id = fresh_txn_id() if in_txn else None
    if txn_id is not None:
        body.update(txn=txn_id, seq=1, begin=True)
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        body = mutate(data, body, target.seeds)
    if isinstance(body, dict) and data.draw(st.booleans(), label="extra field"):
        name = data.draw(st.sampled_from(sorted(EXTRA_FIELDS)), label="field")
        body[name] = copy.deepcopy(data.draw(st.sampled_from(EXTRA_FIELDS[name]) | junk, label="value"))
    if isinstance(body, dict) and isinstance(body.get("stmt"), dict) and data.draw(st.booleans(), label="sign"):
        target.fingerprint(body)
    route, raw, content_type, method = "/execute", None, "application/json", "POST"
    if transport:
        route = data.draw(st.sampled_from(["/execute"] * 8 + ["/cursors/x/fetch", "/transactions/x/commit",
                                                               "/transactions/x/undo", "/nowhere"]), label="route")
        route = route.replace("/x/", f"/{data.draw(st.sampled_from([txn_id or 'abc', 'x' * 300, '..', '%00']))}/")
        raw = data.draw(st.sampled_from([None] * 10 + BROKEN_BODIES), label="raw body")
        content_type = data.draw(st.sampled_from(["application/json"] * 8 + [
            None, "text/plain", "application/x-www-form-urlencoded"]), label="content type")
        method = data.draw(st.sampled_from(["POST"] * 15 + ["GET", "PUT", "DELETE"]), label="method")
    token = data.draw(st.sampled_from([None] * 12 + target.odd_tokens), label="token")
    status, answer = target.recorder.send(method, route, raw if raw is not None else serialize(body),
                                          target.headers(token, content_type))
    if status == 200 and route == "/execute" and raw is None and _is_write(body):
        target.writes_in_transactions += 1
    if isinstance(answer, dict) and answer.get("cursor"):
        target.recorder.send("POST", f"/cursors/{answer['cursor']}/close", b"{}", target.headers())
    if txn_id is not None:  # the id and token the request really carried began it, if anything did
        sent_id = body.get("txn") if isinstance(body, dict) and isinstance(body.get("txn"), str) else txn_id
        _end_or_leave(target, sent_id, token)


def _is_write(body: Any) -> bool:
    try:
        return body["stmt"]["statement"]["t"] in ("insert", "update", "delete")  # type: ignore[no-any-return]
    except (KeyError, TypeError, IndexError):
        return False


def _end_or_leave(target: Target, txn_id: str, token: str | None = None, *, leave: bool = False) -> None:
    """Roll back, or (now and then, so the pool never runs dry) leave it to the idle reaper."""
    now = time.monotonic()
    if leave or now - target.last_left_open > IDLE_TIMEOUT * 1.5:
        target.last_left_open = now
        target.left_to_reaper += 1
        return
    path = f"/transactions/{urllib.parse.quote(txn_id, safe='')}/rollback"
    target.recorder.send("POST", path, b'{"seq": 2}', target.headers(token if token in (None, target.other_token) else None))


def test_mutated_statements(target: Target, capsys: pytest.CaptureFixture[str]) -> None:
    target.recorder.reset()

    @FUZZ_SETTINGS
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        _send_mutated(target, data)

    fuzz()
    _assert_nothing_left_behind(target)
    _report(target, "mutation", capsys, EXAMPLES)


def test_mutated_statements_under_the_worker_policy(worker_target: WorkerTarget,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Mutated seeds and composed reads as a worker: no answer holds a hidden row or column value
    (the Recorder checks every answer for ``HIDDEN_VALUES``), whatever the policy made of it."""
    worker_target.recorder.reset()

    @settings(FUZZ_SETTINGS, max_examples=POLICY_EXAMPLES)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        if data.draw(st.booleans(), label="composed"):
            _send_composed_read(worker_target, data)
        else:
            _send_mutated(worker_target, data, transport=False)  # the plain fuzzer covers the transport

    fuzz()
    _assert_nothing_left_behind(worker_target)
    assert worker_target.reads[200] > 0 and worker_target.reads[403] > 0  # the policy allowed and refused
    _report(worker_target, "mutation-worker-policy", capsys, POLICY_EXAMPLES,
            composed_reads={str(k): n for k, n in sorted(worker_target.reads.items())})


def _send_composed_read(target: WorkerTarget, data: st.DataObject) -> None:
    """A well-formed read of anything: refused (403) or answered - on SQLite with exactly the rows
    the same read finds in the copy of what the worker may see."""
    statement = data.draw(_worker_fuzz.worker_reads(), label="read")
    status, answer = target.recorder.send("POST", "/execute", orjson.dumps(target.api.payload(statement)),
                                          target.headers())
    target.reads[status] += 1
    assert status in (200, 403), answer
    if status == 200 and target.oracle is not None:
        with target.oracle.connect() as conn:
            expected = sorted(orjson.dumps(encode_row(row)) for row in conn.execute(statement))
        assert sorted(orjson.dumps(row) for row in answer["rows"]) == expected, str(statement)


def _valid_writes_sometimes_run(target: Target) -> None:
    """Without this the no-trace check would be vacuous: real writes ran and were undone, by a
    rollback and (the first write here, deterministically) by the reaper."""
    left = False
    for seed in target.seeds:
        if seed.needs_txn:
            txn_id = fresh_txn_id()
            body = {**seed.payload, "txn": txn_id, "seq": 1, "begin": True}
            status, answer = target.recorder.send("POST", "/execute", serialize(body), target.headers())
            assert status == 200, (seed.name, answer)
            target.writes_in_transactions += seed.writes
            _end_or_leave(target, txn_id, leave=seed.writes and not left)
            left = left or seed.writes


def test_a_select_writing_through_a_cte_is_no_read(target: Target) -> None:
    """WITH w AS (INSERT ... RETURNING) SELECT ...: refused outside a transaction, undone by rollback.

    Found while seeding the fuzzer: the server took it for a read and ran it on an autocommit
    connection, committing a write no transaction held. The client's encoder cannot send the
    insert's values here, so the document is completed by hand, as an attacker would.
    """
    users = User.__table__
    # every NOT NULL column, the Python-side defaults included (a client evaluates and sends
    # those; the server evaluates none of its own)
    stmt = sa.select(sa.insert(users).values(name="cte-write", score=Decimal("0.00"), active=True)
                     .returning(users.c.id).cte("w").c.id)
    body = target.api.payload(stmt)
    insert = body["stmt"]["statement"]["cols"][0]["from"]["element"]
    insert["values"] = [["name", {"t": "value", "v": "cte-write"}], ["score", {"t": "value", "v": {"$dec": "0.00"}}],
                        ["active", {"t": "value", "v": True}]]
    body = json.loads(serialize({**body, "params": [{}]}))
    status, answer = target.recorder.send("POST", "/execute", serialize(body), target.headers())
    assert (status, answer["error"]["code"]) == (400, "transaction_required")
    txn_id = fresh_txn_id()
    status, answer = target.recorder.send("POST", "/execute", serialize(
        {**body, "txn": txn_id, "seq": 1, "begin": True}), target.headers())
    assert status == (200 if target.name == "postgresql" else 422), answer  # the others: no DML in WITH
    target.recorder.send("POST", f"/transactions/{txn_id}/rollback", b"{}", target.headers())
    assert target.tables() == target.rows_before


# -- commit after a refusal ------------------------------------------------------------------------------
def _refused_then_committed(target: Target, data: st.DataObject) -> None:
    """One good write, a mutated request in the same transaction, COMMIT: exactly the good write.

    Rolling back (as the fuzzers do) would erase a partial write of the refused request; a commit
    keeps whatever it left. Requests that ran (200) or failed in the database while running (422:
    the database's own error, as on a direct connection) prove nothing here: rolled back, counted.
    """
    table, row = target.kept_write(len(target.kept_rows) + 1)
    txn_id = fresh_txn_id()
    good = target.api.payload(sa.insert(table).values(**row), txn=txn_id, seq=1, begin=True)
    status, answer = target.recorder.send("POST", "/execute", serialize(good), target.headers())
    assert status == 200, answer
    writes = [seed for seed in target.seeds if seed.writes]  # what could leave a write: drawn more often
    body: Any = copy.deepcopy(data.draw(st.sampled_from(writes * 2 + target.seeds), label="seed").payload)
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):  # none: a seed the policy refuses
        body = mutate(data, body, target.seeds)
    if isinstance(body, dict):
        if isinstance(body.get("stmt"), dict) and data.draw(st.booleans(), label="sign"):
            target.fingerprint(body)
        body.update(txn=txn_id, seq=2)
    # mostly requests that reach the transaction: refused before it, a request cannot write anyway
    raw = data.draw(st.sampled_from([None] * 30 + BROKEN_BODIES), label="raw body")
    token = data.draw(st.sampled_from([None] * 20 + target.odd_tokens), label="token")
    status, answer = target.recorder.send("POST", "/execute", raw if raw is not None else serialize(body),
                                          target.headers(token))
    error = answer.get("error", {}) if isinstance(answer, dict) else {}
    if status == 200 or status == 422 or error.get("limit") == "result_rows":  # ran: see the docstring
        target.kept[f"{status} ran: rolled back"] += 1
        target.recorder.send("POST", f"/transactions/{txn_id}/rollback", b'{"seq": 3}', target.headers())
        return
    where = "inside the transaction" if error.get("txn_state") == "open" else "before it"
    target.kept[f"{status} {error.get('code')} {where}"] += 1
    # the commit's number follows the last request that reached the transaction (the server
    # refuses a commit with a gap: requests of it that did not run here), as the client numbers it
    commit_seq = b'{"seq": 3}' if where == "inside the transaction" else b'{"seq": 2}'
    status, answer = target.recorder.send("POST", f"/transactions/{txn_id}/commit", commit_seq, target.headers())
    assert (status, answer) == (200, {"outcome": "committed"})
    target.kept_rows.append(tuple(row[c.name] for c in table.columns))
    expected = {**target.rows_before, table.name: sorted([*target.rows_before[table.name], *target.kept_rows])}
    assert target.tables() == expected, f"the refused request ({error.get('code')}) left a write behind"


def test_a_refused_request_leaves_nothing_a_commit_could_keep(target: Target,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    _commit_after_refusals(target, "commit-after-refusal", capsys)


def test_a_refused_request_leaves_nothing_a_commit_could_keep_under_the_worker_policy(
        worker_target: WorkerTarget, capsys: pytest.CaptureFixture[str]) -> None:
    _commit_after_refusals(worker_target, "commit-after-refusal-worker-policy", capsys)


def _commit_after_refusals(target: Target, fuzzer: str, capsys: pytest.CaptureFixture[str]) -> None:
    target.recorder.reset()
    target.kept.clear()

    # no shrinking: once a partial write is committed every later example fails too
    @settings(FUZZ_SETTINGS, max_examples=KEPT_EXAMPLES, phases=[Phase.generate])
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        _refused_then_committed(target, data)

    try:
        fuzz()
    finally:
        # the good writes are committed on purpose: removed however the run ended, or a failure
        # here would show again in every later test of this database as "a write survived its
        # transaction" (what made that assertion look flaky)
        table = target.kept_write(0)[0]
        with target.engine.begin() as conn:  # once, not per example: a commit costs a disk flush
            conn.execute(sa.delete(table).where(table.c.id.between(100_000, 100_000 + len(target.kept_rows))))
        target.kept_rows.clear()
    inside = sum(n for outcome, n in target.kept.items() if outcome.endswith("inside the transaction"))
    assert inside > 0, target.kept  # refusals that reached the transaction were committed over
    assert target.tables() == target.rows_before
    _report(target, fuzzer, capsys, KEPT_EXAMPLES, outcomes=dict(sorted(target.kept.items())))


# -- the schema-driven fuzzer ---------------------------------------------------------------------------
def test_openapi_schema(target: Target, capsys: pytest.CaptureFixture[str]) -> None:
    target.recorder.reset()
    document = target.recorder.http.request("GET", target.server.url + "/dbapi/v1/openapi.json").data
    schema = schemathesis.openapi.from_dict(orjson.loads(document))
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:
            if mode is schemathesis.GenerationMode.NEGATIVE and operation.method.upper() == "GET":
                continue  # no parameters and no body: nothing to make invalid

            @settings(max_examples=SCHEMA_EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                kwargs = case.as_transport_kwargs(base_url=target.server.url + "/dbapi/v1",
                                                  headers=target.headers())
                body = kwargs.get("json")
                sent = kwargs.get("data") if body is None else json.dumps(body).encode()
                if isinstance(sent, str):
                    sent = sent.encode()
                path = kwargs["url"].removeprefix(target.server.url + "/dbapi/v1")
                if kwargs.get("params"):
                    path += "?" + "&".join(f"{k}=v" for k in kwargs["params"])
                headers = {k: str(v) for k, v in (kwargs.get("headers") or {}).items()}
                target.recorder.send(kwargs["method"], path, sent, headers)

            fuzz()
    _assert_nothing_left_behind(target)
    _report(target, "schema", capsys, SCHEMA_EXAMPLES)


# -- afterwards ------------------------------------------------------------------------------------------
def _assert_nothing_left_behind(target: Target) -> None:
    _valid_writes_sometimes_run(target)
    deadline = time.monotonic() + IDLE_TIMEOUT * 10
    while target.server.state.transactions.open_count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert target.server.state.transactions.open_count == 0, "the reaper left transactions open"
    assert target.writes_in_transactions > 0 and target.left_to_reaper > 0
    assert target.tables() == target.rows_before, "a write survived its transaction"
    status, health = target.recorder.send("GET", "/health", None, {})
    assert (status, health["status"]) == (200, "ok")
    with DBSession(database_access_isolation=True, database_api_host=target.server.url,
                   token=target.token) as session:
        target.probe(session)
        session.rollback()
    assert target.tables() == target.rows_before


def _report(target: Target, fuzzer: str, capsys: pytest.CaptureFixture[str], examples: int,
            **extra: Any) -> None:
    summary = {"fuzzer": fuzzer, "database": target.name, "examples": examples,
               "writes_undone": target.writes_in_transactions, "transactions_left_to_reaper": target.left_to_reaper,
               **extra, **target.recorder.summary()}
    with capsys.disabled():
        print(f"\nfuzz summary: {json.dumps(summary)}")
    if os.environ.get("DBSESSION_FUZZ_REPORT"):
        out = Path(os.environ["DBSESSION_FUZZ_REPORT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"fuzz-{fuzzer}-{target.name}.json").write_text(json.dumps(summary, indent=1))
