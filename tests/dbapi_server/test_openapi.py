"""The OpenAPI description: served, complete, and true of what the server sends and accepts."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import orjson
import pytest
import schemathesis
import sqlalchemy as sa

from dbapi_server import openapi, pipeline, views
from dbapi_server.openapi import PATHS, openapi_document
from query_translation import NODE_TYPES
from query_translation.schemas import NODE_SPECS
from query_translation.values import DECODERS

from ._support import RawApi, items

ROWS = {items: [{"name": "apple", "qty": 3}, {"name": "pear", "qty": 0}]}


def _validator(document: dict[str, Any], component: str) -> Any:
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return jsonschema_rs.Draft202012Validator(schema)


def _flask_rule_as_openapi(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.removeprefix(openapi.PREFIX))


def test_every_route_is_described_and_every_description_is_a_route(api: RawApi) -> None:
    app = api.server.app
    routes = {(_flask_rule_as_openapi(rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint.split(".")[0] in ("dbapi", "dbapi_methods", "dbapi_probes")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    routes |= {(_flask_rule_as_openapi(path), "post") for path in pipeline.ROUTES}  # answered before Flask
    described = {(path, method) for path, item in PATHS.items() for method in item}
    assert routes == described


def test_the_document_is_served_and_loads_as_openapi_3_1(api: RawApi) -> None:
    reply = api.get("/openapi.json", token=None)
    assert reply.status == 200
    document = reply.json
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": api.server.url + openapi.PREFIX}]
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(item) for item in PATHS.values())


def test_it_describes_every_node_kind_and_value_tag() -> None:
    components = openapi_document()["components"]["schemas"]
    assert {name.removeprefix("Node_") for name in components if name.startswith("Node_")} == set(NODE_SPECS)
    assert set(NODE_SPECS) - {"ref"} <= set(NODE_TYPES) | {"ref"}
    tags = {next(iter(s["required"])) for s in components["Value"]["anyOf"] if s.get("required")}
    assert tags == set(DECODERS)


def test_the_page_size_bound_is_the_views(api: RawApi) -> None:
    stream = openapi_document()["components"]["schemas"]["ExecuteRequest"]["properties"]["stream"]
    assert stream["maximum"] == views.MAX_PAGE_ROWS


STATEMENTS = {
    "select": lambda: sa.select(items).where(items.c.qty > 1, items.c.name.in_(["apple", "x"]))
    .order_by(items.c.name.desc()).limit(5),
    "aggregate": lambda: sa.select(sa.func.count(), sa.func.max(items.c.qty)).group_by(items.c.name)
    .having(sa.func.count() > 0),
    "subquery": lambda: sa.select(items.c.id).where(
        items.c.qty == sa.select(sa.func.max(items.c.qty)).scalar_subquery()),
    "case": lambda: sa.select(sa.case((items.c.qty > 1, "many"), else_="few").label("n")),
    # hints and prefixes for other dialects: they travel (nested objects), and do not render here
    "hints": lambda: sa.select(items.c.id).with_hint(items, "USE INDEX (PRIMARY)", dialect_name="mysql")
    .prefix_with("HIGH_PRIORITY", dialect="mysql").suffix_with("FOR x", dialect="mssql")
    .with_statement_hint("OPTION (y)", dialect_name="mssql"),
}


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_real_requests_and_answers_fit_the_description(api: RawApi, name: str) -> None:
    document = openapi_document()
    payload = orjson.loads(orjson.dumps(api.payload(STATEMENTS[name]())))  # as it travels
    _validator(document, "ExecuteRequest").validate(payload)
    reply = api.post("/execute", payload)
    assert reply.status == 200, reply.body
    _validator(document, "ExecuteResult").validate(reply.json)


def test_answers_of_the_open_routes_and_errors_fit_the_description(api: RawApi) -> None:
    document = openapi_document()
    _validator(document, "Info").validate(api.get("/info").json)
    _validator(document, "Health").validate(api.get("/health").json)
    for reply in (api.post("/execute", {"stmt": {}, "sql": ""}), api.post("/execute", b"{", token=None),
                  api.post("/transactions/nope/commit", {})):
        assert reply.status >= 400
        _validator(document, "Error").validate(reply.json)


def test_the_description_refuses_what_the_server_refuses() -> None:
    validator = _validator(openapi_document(), "StatementDocument")
    good = {"version": 1, "statement": {"t": "select", "cols": [{"t": "null"}]}}
    assert validator.is_valid(good)
    for bad in ({"version": 1, "statement": {"t": "select"}},                       # cols required
                {"version": 1, "statement": {"t": "nope"}},                         # unknown kind
                {"version": 1, "statement": {"t": "null", "extra": 1}},             # unknown field
                {"version": 1, "statement": {"t": "function", "name": "_x", "args": []}},  # bad name
                {"version": 1, "statement": {"t": "select", "cols": [{"t": "null"}],    # hint: no text
                                             "hints": [{"from": {"t": "null"}, "dialect": "mysql"}]}}):
        assert not validator.is_valid(bad), bad
