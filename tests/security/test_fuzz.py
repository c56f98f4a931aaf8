"""Thousands of malformed requests against a real DB-API: no 5xx, no leaks, no partial writes.

Two fuzzers, on SQLite, PostgreSQL and MariaDB, each against a real server on a loopback socket with real
tokens:

- **mutation**: real ``/execute`` bodies an isolated client sends for varied ORM statements
  (select, join, subquery, union, window, DML with RETURNING, a data-modifying CTE), mutated by
  hypothesis - fields dropped, duplicated, retyped, node kinds swapped or invented, hostile names,
  huge numbers, deep nesting, bad values and tags, wrong fingerprints, bogus transaction ids and
  sequence numbers, cursor ids - and sent as raw HTTP, together with broken bodies (not JSON, not
  UTF-8, wrong content type) and bad tokens;
- **schema**: schemathesis generates requests from the served OpenAPI document, valid and invalid.

Every answer is checked (``_fuzzing.Recorder``). Writes happen only inside transactions the fuzzer
opened: it rolls them back, except one every 1.5 s that it leaves to the server's idle reaper
(1 s here); real writes are undone both ways (counted), and afterwards
every table must be exactly as before (row by row), ``/health`` must be ok and an isolated
``DBSession`` must still work. The counts per route and status are printed and, with
``DBSESSION_FUZZ_REPORT=<dir>``, written there as JSON. ``DBSESSION_FUZZ_EXAMPLES`` (default 1200)
sets the mutation fuzzer's examples per database; a long run: ``DBSESSION_FUZZ_EXAMPLES=20000``.
"""

from __future__ import annotations

import copy
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsession import DBSession
from tests.dbapi_server._support import RawApi, make_engine
from tests.servers import RunningServer, running_dbapi

from . import _fuzzing
from ._fuzzing import (  # mariadb_url: a fixture
    Recorder,
    User,
    fingerprint_tables,
    fresh_txn_id,
    seed_payloads,
)
from ._mutations import BROKEN_BODIES, EXTRA_FIELDS, junk, mutate, serialize

EXAMPLES = int(os.environ.get("DBSESSION_FUZZ_EXAMPLES", "1200"))
SCHEMA_EXAMPLES = max(25, EXAMPLES // 10)  # per operation and generation mode
IDLE_TIMEOUT = 1.0  # the reaper must get its share of the fuzzer's transactions within the run
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))


TARGETS = ["sqlite", "postgresql", *_fuzzing.MARIADB]


@pytest.fixture(scope="module", params=TARGETS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
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


class Target:
    """One database behind one running DB-API, the fuzzers' client state and their tallies."""

    def __init__(self, name: str, engine: sa.Engine, server: RunningServer) -> None:
        self.name, self.engine, self.server = name, engine, server
        self.api = RawApi(server)
        self.seeds = seed_payloads(self.api)
        self.recorder = Recorder(server.url, _fuzzing.secrets_of(engine))
        self.other_token = server.mint("someone-else", ttl=3600)
        self.expired_token = server.mint("test-worker", ttl=-60)
        self.rows_before = fingerprint_tables(engine)
        self.writes_in_transactions = 0  # writes that ran (200) and must leave no trace
        self.last_left_open = 0.0
        self.left_to_reaper = 0  # transactions the fuzzer never ended: the reaper must undo them

    def headers(self, token: str | None = None, content_type: str | None = "application/json") -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token or self.server.token}"} if token != "" else {}
        if content_type:
            headers["Content-Type"] = content_type
        return headers


# -- the mutation fuzzer ------------------------------------------------------------------------------
def _send_mutated(target: Target, data: st.DataObject) -> None:
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
    route = data.draw(st.sampled_from(["/execute"] * 8 + ["/cursors/x/fetch", "/transactions/x/commit",
                                                           "/transactions/x/undo", "/nowhere"]), label="route")
    route = route.replace("/x/", f"/{data.draw(st.sampled_from([txn_id or 'abc', 'x' * 300, '..', '%00']))}/")
    raw = data.draw(st.sampled_from([None] * 10 + BROKEN_BODIES), label="raw body")
    token = data.draw(st.sampled_from([None] * 12 + ["", "garbage", target.expired_token, target.other_token]),
                      label="token")
    content_type = data.draw(st.sampled_from(["application/json"] * 8 + [None, "text/plain", "application/x-www-form-urlencoded"]),
                             label="content type")
    method = data.draw(st.sampled_from(["POST"] * 15 + ["GET", "PUT", "DELETE"]), label="method")
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
    _report(target, "mutation", capsys)


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
    stmt = sa.select(sa.insert(users).values(name="cte-write").returning(users.c.id).cte("w").c.id)
    body = target.api.payload(stmt)
    insert = body["stmt"]["statement"]["cols"][0]["from"]["element"]
    insert["values"] = [["name", {"t": "value", "v": "cte-write"}]]
    body = json.loads(serialize({**body, "params": [{}]}))
    status, answer = target.recorder.send("POST", "/execute", serialize(body), target.headers())
    assert (status, answer["error"]["code"]) == (400, "transaction_required")
    txn_id = fresh_txn_id()
    status, answer = target.recorder.send("POST", "/execute", serialize(
        {**body, "txn": txn_id, "seq": 1, "begin": True}), target.headers())
    assert status == (200 if target.name == "postgresql" else 422), answer  # the others: no DML in WITH
    target.recorder.send("POST", f"/transactions/{txn_id}/rollback", b"{}", target.headers())
    assert fingerprint_tables(target.engine) == target.rows_before


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
    _report(target, "schema", capsys)


# -- afterwards ------------------------------------------------------------------------------------------
def _assert_nothing_left_behind(target: Target) -> None:
    _valid_writes_sometimes_run(target)
    deadline = time.monotonic() + IDLE_TIMEOUT * 10
    while target.server.state.transactions.open_count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert target.server.state.transactions.open_count == 0, "the reaper left transactions open"
    assert target.writes_in_transactions > 0 and target.left_to_reaper > 0
    assert fingerprint_tables(target.engine) == target.rows_before, "a write survived its transaction"
    status, health = target.recorder.send("GET", "/health", None, {})
    assert (status, health["status"]) == (200, "ok")
    with DBSession(database_access_isolation=True, database_api_host=target.server.url,
                   token=target.server.token) as session:
        assert session.get(User, 3).name == "user3"  # type: ignore[union-attr]
        session.get(User, 3).score += 1  # type: ignore[union-attr]
        session.flush()
        session.rollback()
    assert fingerprint_tables(target.engine) == target.rows_before


def _report(target: Target, fuzzer: str, capsys: pytest.CaptureFixture[str]) -> None:
    summary = {"fuzzer": fuzzer, "database": target.name, "examples": EXAMPLES,
               "writes_undone": target.writes_in_transactions, "transactions_left_to_reaper": target.left_to_reaper,
               **target.recorder.summary()}
    with capsys.disabled():
        print(f"\nfuzz summary: {json.dumps(summary)}")
    if os.environ.get("DBSESSION_FUZZ_REPORT"):
        out = Path(os.environ["DBSESSION_FUZZ_REPORT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"fuzz-{fuzzer}-{target.name}.json").write_text(json.dumps(summary, indent=1))
