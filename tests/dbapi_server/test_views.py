"""The DB-API's routes over a real loopback socket: handshake, health, request shape, execution."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dbapi_server.state import schema_fingerprint
from query_translation import WIRE_VERSION, decode_rows
from tests.servers import running_dbapi

from ._support import RawApi, count_rows, items, metadata

ROWS = {items: [{"name": "apple", "qty": 3}, {"name": "pear", "qty": 0}]}


@pytest.fixture
def api_secrets(engine: sa.Engine) -> list[str]:
    return [str(engine.url), str(Path(engine.url.database or "").name)]


# -- handshake and health -------------------------------------------------------------------------
def test_info_describes_the_database_without_credentials(api: RawApi, engine: sa.Engine) -> None:
    reply = api.get("/info", token=None)  # the handshake needs no token
    assert reply.status == 200
    info = reply.json
    assert info["wire_version"] == WIRE_VERSION
    assert (info["dialect"], info["driver"]) == ("sqlite", "pysqlite")
    assert info["server_version_info"] == list(engine.dialect.server_version_info)
    assert info["schema_hash"] == schema_fingerprint(metadata)
    assert info["sqlalchemy"] == sa.__version__
    assert info["dialect_state"]["paramstyle"] == engine.dialect.paramstyle
    assert info["dialect_state"]["default_schema_name"] == "main"


def test_info_builds_a_client_dialect_that_compiles_like_the_server(api: RawApi, engine: sa.Engine) -> None:
    stmt = sa.select(items).where(items.c.name.in_(["a", "b"])).order_by(items.c.id).limit(2)
    assert str(stmt.compile(dialect=api.dialect)) == str(stmt.compile(dialect=engine.dialect))
    assert api.dialect.is_dbsession


def test_schema_hash_tells_schemas_apart() -> None:
    other = sa.MetaData()
    sa.Table("items", other, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(41)))
    assert schema_fingerprint(other) != schema_fingerprint(metadata)


def test_health(api: RawApi) -> None:
    reply = api.get("/health", token=None)
    assert reply.status == 200
    assert reply.json == {"status": "ok", "database": "ok",
                          "transactions": {"open": 0, "remembered_outcomes": reply.json["transactions"][
                              "remembered_outcomes"]}}


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/nope", 404, "not_found"),
    ("GET", "/execute", 405, "method_not_allowed"),
    ("POST", "/info", 405, "method_not_allowed"),
    ("POST", "/transactions/abc/explode", 404, "not_found"),
])
def test_unknown_routes_answer_with_the_envelope(api: RawApi, method: str, path: str, status: int,
                                                 code: str) -> None:
    reply = api.request(method, path, {} if method == "POST" else None)
    assert reply.status == status
    assert reply.error["code"] == code


@pytest.mark.parametrize("path", ["/execute", "/batch", "/transactions/abc/commit", "/execute/"])
def test_the_pipelines_routes_answer_other_methods_as_flask_did(api: RawApi, path: str) -> None:
    # answered before Flask (dbapi_server/pipeline.py): OPTIONS as Flask's automatic answer, any
    # other method but POST 405 in the envelope (HEAD without its body)
    options = api.request("OPTIONS", path)
    assert options.status == 200 and options.body == b""
    assert sorted(options.headers["allow"].split(", ")) == ["OPTIONS", "POST"]
    head = api.request("HEAD", path)
    assert head.status == 405 and head.body == b"" and int(head.headers["content-length"]) > 0
    put = api.request("PUT", path, {})
    assert (put.status, put.error["code"]) == (405, "method_not_allowed")


def test_oversized_headers_are_refused_before_the_token_is_read(api: RawApi) -> None:
    reply = api.request("POST", "/execute", {}, token=None, headers={"X-Padding": "x" * (64 << 10)})
    assert (reply.status, reply.error["code"]) == (431, "headers_too_large")


# -- executing ------------------------------------------------------------------------------------
def test_read_without_transaction_returns_raw_rows(api: RawApi) -> None:
    reply = api.execute(sa.select(items.c.name, items.c.qty).where(items.c.qty > 0).order_by(items.c.id))
    assert reply.status == 200, reply.body
    body = reply.json
    assert [d[0] for d in body["description"]] == ["name", "qty"]
    assert decode_rows(body["rows"]) == [("apple", 3)]
    assert api.server.state.transactions.open_count == 0  # a plain read pins no connection


def test_expanding_in_is_expanded_on_the_server(api: RawApi) -> None:
    reply = api.execute(sa.select(items.c.name).where(items.c.name.in_(["pear", "apple", "fig"]))
                        .order_by(items.c.name))
    assert reply.status == 200, reply.body
    assert decode_rows(reply.json["rows"]) == [("apple",), ("pear",)]


def test_write_without_transaction_is_refused(api: RawApi, engine: sa.Engine) -> None:
    reply = api.execute(sa.insert(items).values(name="no-txn"))
    assert reply.status == 400
    assert reply.error["code"] == "transaction_required"
    assert count_rows(engine, items, items.c.name == "no-txn") == 0


def test_locking_read_without_transaction_is_refused(api: RawApi) -> None:
    reply = api.execute(sa.select(items).with_for_update())
    assert (reply.status, reply.error["code"]) == (400, "transaction_required")


def test_write_in_a_transaction(api: RawApi, engine: sa.Engine) -> None:
    txn = api.transaction()
    reply = txn.execute(sa.insert(items).values(name="in-txn", qty=7))
    assert reply.status == 200, reply.body
    assert reply.json["rowcount"] == 1
    assert txn.commit().json == {"outcome": "committed"}
    assert count_rows(engine, items, items.c.name == "in-txn", items.c.qty == 7) == 1


# -- request shape --------------------------------------------------------------------------------
def test_malformed_json(api: RawApi) -> None:
    reply = api.post("/execute", b'{"stmt": {"version": 1,')
    assert reply.status == 400
    assert reply.error["code"] == "malformed_json"


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_body_must_be_an_object(api: RawApi, body: bytes) -> None:
    reply = api.post("/execute", body)
    assert (reply.status, reply.error["code"]) == (400, "malformed_request")


def _valid(api: RawApi) -> dict[str, Any]:
    return api.payload(sa.select(items.c.id).where(items.c.id == 1))


@pytest.mark.parametrize(("change", "message"), [
    ({"stmt": None}, "'stmt'"),
    ({"sql": None}, "'sql'"),
    ({"stmt": "SELECT 1"}, "'stmt'"),
    ({"sql": 1234}, "'sql'"),
    ({"params": {"id_1": 1}}, "'params'"),
    ({"txn": 5}, "'txn'"),
    ({"txn": "t-1"}, "'seq'"),
    ({"txn": "t-1", "seq": "1"}, "'seq'"),
    ({"txn": "t-1", "seq": True}, "'seq'"),
    ({"many": "yes"}, "'many'"),
])
def test_request_fields_are_checked(api: RawApi, change: dict[str, Any], message: str) -> None:
    body = {**_valid(api), **change}
    body = {k: v for k, v in body.items() if v is not None}
    reply = api.post("/execute", body)
    assert (reply.status, reply.error["code"]) == (400, "malformed_request")
    assert message in reply.error["message"]


def test_executemany_needs_parameter_sets(api: RawApi) -> None:
    txn = api.transaction()
    body = txn.next_payload(sa.insert(items).values(name="x"))
    body.update(many=True, params=[])
    reply = api.post("/execute", body)
    assert reply.status == 400, reply.body
    assert reply.error["code"] == "malformed_request"


def test_missing_bind_value_is_a_client_error(api: RawApi) -> None:
    body = _valid(api)
    body["params"] = [{}]
    reply = api.post("/execute", body)
    assert reply.status == 400, reply.body
    assert "bind parameter" in reply.error["message"]


def test_undecodable_bind_value(api: RawApi) -> None:
    body = _valid(api)
    body["params"] = [{"id_1": {"$nope": 1}}]
    reply = api.post("/execute", body)
    assert (reply.status, reply.error["code"]) == (400, "bad_value")


def test_oversized_body_is_refused(engine: sa.Engine, raw_api: Callable[..., RawApi]) -> None:
    with running_dbapi(engine, metadata, max_body_bytes=4096) as small:
        api = raw_api(small, secrets=[str(engine.url)])
        fits = api.execute(sa.select(items.c.id).where(items.c.name == "x" * 100))
        assert fits.status == 200, fits.body
        txn = api.transaction()
        reply = txn.execute(sa.insert(items).values(name="big", qty=1), {"name": "y" * 10_000})
        assert reply.status == 413
        assert reply.error["code"] == "body_too_large"
        assert "DBAPI_MAX_BODY_BYTES" in reply.error["message"]
        assert small.state.transactions.open_count == 0
    assert count_rows(engine, items, items.c.name.like("y%")) == 0


def test_statement_documents_are_cached_by_structure(api: RawApi) -> None:
    first = api.execute(sa.select(items.c.qty).where(items.c.name == "apple"))
    second = api.execute(sa.select(items.c.qty).where(items.c.name == "pear"))
    assert decode_rows(first.json["rows"]) == [(3,)]
    assert decode_rows(second.json["rows"]) == [(0,)]


@pytest.mark.parametrize("txn_id", ["a/b", "..", "", "x" * 129, "ü", "a b"])
def test_a_transaction_id_that_cannot_be_committed_by_url_is_refused(api: RawApi, txn_id: str) -> None:
    # found by tests/security/test_fuzz.py: "a/b" began a transaction no commit URL could reach
    before = api.server.state.transactions.open_count
    reply = api.execute(items.insert().values(name="t"), txn=txn_id, seq=1, begin=True)
    assert (reply.status, reply.error["code"]) == (400, "malformed_request")
    assert "'txn' must be" in reply.error["message"]
    assert api.server.state.transactions.open_count == before


def test_a_cartesian_product_is_the_clients_business_not_a_server_warning(api: RawApi) -> None:
    # found by tests/security/test_fuzz.py: SQLAlchemy's FROM linter warned in the server (a 500
    # under -W error, log noise otherwise); the client's own engine already warned
    other = items.alias("other")
    reply = api.execute(sa.select(items.c.id, other.c.id))
    assert reply.status == 200, reply.body
