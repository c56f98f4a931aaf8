"""Metrics, access log lines, request ids, probes and OpenTelemetry spans of the DB-API.

In-process (``running_dbapi``, waitress in a thread) where a test must reach inside the server:
its log records (``caplog``), its pool, its tracer. ``dbapi-server serve`` in its own process for
what an operator sees: the JSON log lines on stderr and ``/metrics`` behind its token.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from dbapi_server.observability import MetricsAccess, _Tracer
from dbsession import DBSession, PolicyViolationError
from tests.servers import RunningServer, dbapi_process, running_dbapi

from ._support import RawApi, items, make_engine, metadata

SCRAPE_TOKEN = "scrape-secret"
TABLE_NAMES = ("items",)


@pytest.fixture(scope="module")
def server(engine: sa.Engine) -> Iterator[RunningServer]:
    with running_dbapi(engine, metadata, metrics_access=MetricsAccess(token=SCRAPE_TOKEN)) as server:
        yield server


def scrape(api: RawApi) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    reply = api.request("GET", "/../../metrics", token=SCRAPE_TOKEN)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"].startswith("text/plain")
    text = reply.body.decode()
    for table in TABLE_NAMES:  # no data-derived label: table names never appear
        assert f'"{table}"' not in text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_refused_without_the_scrape_token(api: RawApi) -> None:
    assert api.request("GET", "/../../metrics", token=None).status == 401
    assert api.request("GET", "/../../metrics").status == 401  # a worker's token is not the scrape token
    assert api.request("GET", "/../../metrics", token="wrong").status == 401


def test_metrics_are_off_unless_configured(engine: sa.Engine) -> None:
    with running_dbapi(engine, metadata, metrics_access=MetricsAccess()) as plain:
        raw = RawApi(plain)
        reply = raw.request("GET", "/../../metrics", token=None)
        assert reply.status == 404 and reply.error["code"] == "not_found"
        raw.http.clear()
    with running_dbapi(engine, metadata, metrics_access=MetricsAccess(public=True)) as public:
        raw = RawApi(public)
        assert raw.request("GET", "/../../metrics", token=None).status == 200
        raw.http.clear()


def test_requests_are_counted_by_route_kind_and_status(api: RawApi) -> None:
    before = scrape(api)
    assert api.execute(sa.select(items.c.id)).status == 200
    txn = api.transaction()
    assert txn.execute(items.insert(), {"id": 101, "name": "metrics", "qty": 0}).status == 200
    assert txn.commit().json == {"outcome": "committed"}
    txn.seq -= 1
    assert txn.commit().json == {"outcome": "committed"}  # a retried commit: the remembered outcome
    after = scrape(api)

    execute = "/dbapi/v1/execute"
    finish = "/dbapi/v1/transactions/<txn_id>/<verb>"
    for route, kind in ((execute, "select"), (execute, "insert")):
        delta = (value(after, "dbapi_requests_total", route=route, kind=kind, status="200")
                 - value(before, "dbapi_requests_total", route=route, kind=kind, status="200"))
        assert delta == 1, (route, kind)
        assert (value(after, "dbapi_request_duration_seconds_count", route=route, kind=kind)
                - value(before, "dbapi_request_duration_seconds_count", route=route, kind=kind)) == 1
    assert (value(after, "dbapi_requests_total", route=finish, kind="commit", status="200")
            - value(before, "dbapi_requests_total", route=finish, kind="commit", status="200")) == 2
    assert (value(after, "dbapi_replayed_answers_total", kind="commit")
            - value(before, "dbapi_replayed_answers_total", kind="commit")) == 1
    assert (value(after, "dbapi_transactions_ended_total", outcome="committed")
            - value(before, "dbapi_transactions_ended_total", outcome="committed")) == 1


def test_refusals_and_token_failures_are_counted_by_reason(api: RawApi, server: RunningServer) -> None:
    before = scrape(api)
    api.execute(sa.select(items.c.id), token=None)  # no token
    api.execute(sa.select(items.c.id), token="not.a.jwt")
    api.execute(sa.select(items.c.id), token=server.mint(ttl=-60))  # expired
    api.execute(sa.select(sa.func.pg_sleep(1)))  # a refused function
    api.post("/execute", b"{not json")
    after = scrape(api)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("dbapi_token_failures_total", reason="missing") == 1
    assert grew("dbapi_token_failures_total", reason="malformed") == 1
    assert grew("dbapi_token_failures_total", reason="expired") == 1
    assert grew("dbapi_refusals_total", code="policy_violation") == 1
    assert grew("dbapi_refusals_total", code="malformed_json") == 1


def test_gauges_show_open_transactions_and_the_pool(api: RawApi, server: RunningServer) -> None:
    txn = api.transaction()
    assert txn.execute(items.insert(), {"id": 102, "name": "gauge", "qty": 0}).status == 200
    try:
        samples = scrape(api)
        assert value(samples, "dbapi_open_transactions") == server.state.transactions.open_count >= 1
        assert value(samples, "dbapi_pool_checked_out") >= 1
        assert value(samples, "dbapi_pool_size") == server.state.engine.pool.size()
        assert value(samples, "dbapi_draining") == 0
        assert value(samples, "process_open_fds") > 0
    finally:
        txn.rollback()


def test_one_access_line_per_request_with_the_clients_request_id(api: RawApi, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dbapi_server.access"):
        txn = api.transaction()
        reply = txn.execute(items.insert(), {"id": 103, "name": "logged", "qty": 0})
        duplicate = api.request("POST", "/execute", headers={"X-Request-Id": "client-chosen-id.1"},
                                body=txn.next_payload(items.insert(), {"id": 104, "name": "logged", "qty": 0}))
        txn.rollback()
    assert reply.headers["x-request-id"] != "client-chosen-id.1"
    assert duplicate.status == 422 and duplicate.headers["x-request-id"] == "client-chosen-id.1"
    lines = [r for r in caplog.records if r.name == "dbapi_server.access"]
    assert len(lines) == 3
    first, failed, rollback = (vars(r) for r in lines)
    assert first["request_id"] == reply.headers["x-request-id"]
    assert (first["method"], first["route"], first["status"], first["kind"]) == (
        "POST", "/dbapi/v1/execute", 200, "insert")
    assert first["subject"] == "test-worker" and first["txn"] == txn.id
    assert first["bytes_in"] > 0 and first["bytes_out"] > 0 and first["duration_ms"] > 0
    assert "error_id" not in first
    assert failed["request_id"] == "client-chosen-id.1" and failed["status"] == 422
    assert failed["error_code"] == "database_error" and failed["error_id"] == duplicate.error["error_id"]
    assert (rollback["kind"], rollback["route"]) == ("rollback", "/dbapi/v1/transactions/<txn_id>/<verb>")
    for line in (first, failed, rollback):  # never the token
        assert api.server.token not in json.dumps(line, default=str)


def test_an_unusable_request_id_is_replaced(api: RawApi) -> None:
    for bad in ("has space", "x" * 200, "new\u00e9line"):
        reply = api.request("GET", "/info", headers={"X-Request-Id": bad.encode("utf-8").decode("latin-1")})
        assert reply.status == 200
        assert re.fullmatch(r"[0-9a-f]{16}", reply.headers["x-request-id"])


def test_the_server_log_of_a_client_error_is_found_by_the_ids_in_the_exception(
        server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    session = DBSession(database_access_isolation=True, database_api_host=server.url, token=server.token)
    with caplog.at_level(logging.INFO, logger="dbapi_server"):
        session.execute(items.insert().values(id=105, name="dup"))
        with pytest.raises(sa.exc.IntegrityError) as failed:
            session.execute(items.insert().values(id=105, name="dup again"))
        session.rollback()
        with pytest.raises(PolicyViolationError) as refused:
            session.execute(sa.select(sa.func.pg_sleep(1)))
    session.close()
    orig = failed.value.orig
    assert orig is not None
    error_id, request_id = orig.error_id, orig.request_id  # type: ignore[attr-defined]
    assert f"(DB-API error id {error_id}, request id {request_id})" in str(failed.value)
    access = [vars(r) for r in caplog.records if r.name == "dbapi_server.access"]
    line = next(a for a in access if a["request_id"] == request_id)
    assert line["error_id"] == error_id and line["status"] == 422
    # the server's own record of the error (with the SQL) carries the same request id
    assert any(getattr(r, "request_id", None) == request_id and error_id in r.getMessage()
               for r in caplog.records if r.name == "dbapi_server")
    policy = refused.value
    assert policy.request_id and policy.error_id
    assert f"(error id {policy.error_id}, request id {policy.request_id})" in str(policy)
    assert any(a["request_id"] == policy.request_id and a["error_code"] == "policy_violation" for a in access)


def test_live_and_ready(api: RawApi, engine: sa.Engine) -> None:
    assert api.get("/live", token=None).json == {"status": "alive"}
    ready = api.get("/ready", token=None)
    assert ready.status == 200 and ready.json["status"] == "ready"
    small = sa.create_engine(engine.url, pool_size=1, max_overflow=0, pool_timeout=0.5)
    with running_dbapi(small, metadata) as busy:
        raw = RawApi(busy)
        txn = raw.transaction()
        assert txn.execute(items.insert(), {"id": 106, "name": "holds the pool", "qty": 0}).status == 200
        not_ready = raw.get("/ready", token=None)
        assert not_ready.status == 503 and not_ready.json["reason"] == "pool_exhausted"
        assert raw.get("/live", token=None).status == 200
        # what SIGTERM starts (tests/dbapi_server/test_shutdown.py): the drain waits for txn
        drain = threading.Thread(target=busy.state.drain.run)
        drain.start()
        while not busy.state.transactions.refuse_new:
            time.sleep(0.01)
        assert raw.get("/ready", token=None).json["reason"] == "draining"
        refused = raw.transaction().execute(items.insert(), {"id": 107, "name": "new", "qty": 0})
        assert refused.status == 503 and refused.error["code"] == "shutting_down" and refused.error["retryable"]
        assert txn.rollback().json == {"outcome": "rolled_back"}  # open ones go on
        drain.join(timeout=10)
        assert not drain.is_alive()  # over as soon as the last transaction ended
        raw.http.clear()
    small.dispose()


def test_server_spans_continue_the_clients_trace(server: RunningServer) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    middleware = server.app.wsgi_app
    # this test's provider, not the process-wide one (which every other test would then feed)
    tracer, middleware.tracer = middleware.tracer, _Tracer(provider)
    try:
        with provider.get_tracer("test").start_as_current_span("client work") as parent, \
                DBSession(database_access_isolation=True, database_api_host=server.url,
                          token=server.token) as session:
            session.execute(sa.select(items.c.id)).all()
    finally:
        middleware.tracer = tracer
    spans = [s for s in exporter.get_finished_spans() if s.attributes.get("http.route") == "/dbapi/v1/execute"]
    assert spans, [s.name for s in exporter.get_finished_spans()]
    span = spans[-1]
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    assert span.name == "/dbapi/v1/execute select"
    assert span.attributes["dbapi.statement_kind"] == "select"
    assert span.attributes["http.response.status_code"] == 200


def test_without_an_sdk_no_span_is_made_but_the_clients_trace_id_is_logged(
        api: RawApi, caplog: pytest.LogCaptureFixture) -> None:
    # the process has no tracer provider (the test above uses one of its own): a span would
    # record nothing, so none is made - unless the client sent trace context, whose id is logged
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with caplog.at_level(logging.INFO, logger="dbapi_server.access"):
        api.request("GET", "/info", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        api.request("GET", "/info")
    traced, plain = (vars(r) for r in caplog.records if r.name == "dbapi_server.access")
    assert traced["trace_id"] == trace_id
    assert "trace_id" not in plain


# -- as an operator sees it: dbapi-server serve in its own process ---------------------------------
@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'observed.sqlite'}"
    make_engine(url, metadata).dispose()
    return url


def test_serve_logs_json_lines_and_serves_metrics_to_the_scrape_token(sqlite_url: str, tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text(SCRAPE_TOKEN + "\n")
    with dbapi_process(sqlite_url, "tests.dbapi_server._support:metadata",
                       env={"DBAPI_METRICS_TOKEN_FILE": str(token_file)}) as server:
        session = DBSession(database_access_isolation=True, database_api_host=server.url, token=server.token)
        session.execute(items.insert().values(id=1, name="a"))
        with pytest.raises(sa.exc.IntegrityError) as failed:
            session.execute(items.insert().values(id=1, name="b"))
        session.close()
        request = urllib.request.Request(f"{server.url}/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            exposition = answer.read().decode()
        with pytest.raises(urllib.error.HTTPError) as unauthorized:
            urllib.request.urlopen(f"{server.url}/metrics", timeout=5)
        assert unauthorized.value.code == 401
        unauthorized.value.close()
        output = server.output()

    assert 'dbapi_requests_total{kind="insert",route="/dbapi/v1/execute",status="422"} 1.0' in exposition
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    request_id = failed.value.orig.request_id  # type: ignore[union-attr]
    line: dict[str, Any] = next(x for x in lines if x.get("request_id") == request_id
                                and x["logger"] == "dbapi_server.access")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert line["level"] == "INFO" and line["status"] == 422 and line["kind"] == "insert"
    assert line["error_id"] == failed.value.orig.error_id  # type: ignore[union-attr]
    assert line["subject"] == "test-worker" and line["route"] == "/dbapi/v1/execute"
    assert server.token not in output
