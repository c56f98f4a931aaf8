"""Every refused or failing request: a 4xx with a stable envelope, nothing executed, nothing leaked."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from dbapi_server.errors import database_message
from query_translation.schemas import MAX_DEPTH

from ._support import RawApi, count_rows, items

ROWS = {items: [{"name": "apple", "qty": 3}]}
NO_OPEN_TRANSACTIONS = True


def select_doc(api: RawApi) -> dict[str, Any]:
    """A valid read: ``SELECT items.id FROM items WHERE items.name = ? AND items.qty > ?``."""
    return api.payload(sa.select(items.c.id).where(items.c.name == "apple", items.c.qty > 1))


def where(body: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return body["stmt"]["statement"]["where"][index]


def test_valid_baseline(api: RawApi) -> None:
    reply = api.post("/execute", select_doc(api))
    assert reply.status == 200, reply.body
    assert reply.json["rows"] == [[1]]


# -- statement documents --------------------------------------------------------------------------
def test_unknown_node_type(api: RawApi) -> None:
    body = select_doc(api)
    where(body)["left"]["t"] = "pickle_load"
    reply = api.post("/execute", body)
    assert reply.status == 400
    assert reply.error["code"] == "unknown_node"
    assert reply.error["node_type"] == "pickle_load"
    assert "'pickle_load'" in reply.error["message"]


def test_malformed_statement_details_are_keyed_by_path(api: RawApi) -> None:
    body = select_doc(api)
    del body["stmt"]["statement"]["cols"]
    body["stmt"]["statement"]["bogus"] = True
    reply = api.post("/execute", body)
    assert (reply.status, reply.error["code"]) == (400, "malformed_statement")
    assert reply.error["details"] == {"statement": {"cols": ["Missing data for required field."],
                                                    "bogus": ["Unknown field."]}}


def test_malformed_statement_inside_a_list(api: RawApi) -> None:
    """marshmallow keys list items by int; the envelope is JSON, so they arrive as strings."""
    body = select_doc(api)
    where(body, 1)["bogus"] = True
    reply = api.post("/execute", body)
    assert (reply.status, reply.error["code"]) == (400, "malformed_statement"), reply.body
    assert reply.error["details"] == {"statement": {"where": {"1": {"bogus": ["Unknown field."]}}}}


def _nested(body: dict[str, Any], levels: int) -> bytes:
    """*body* with a WHERE clause nested *levels* deep (raw JSON: orjson refuses to write it)."""
    body["stmt"]["statement"]["where"] = ["NESTED"]
    nested = '{"t": "grouping", "element": ' * levels + '{"t": "true"}' + "}" * levels
    return orjson.dumps(body).replace(b'"NESTED"', nested.encode())


def test_nesting_beyond_the_limit_is_malformed(api: RawApi) -> None:
    reply = api.post("/execute", _nested(select_doc(api), MAX_DEPTH * 2))
    assert reply.status == 400, reply.body
    assert reply.error["code"] == "malformed_statement"


def test_deep_nesting_within_the_limit_is_handled(api: RawApi) -> None:
    # valid structure: it is rebuilt and reaches the fingerprint check (the raw client sends
    # a made-up fingerprint), never the interpreter's stack limit
    reply = api.post("/execute", _nested(select_doc(api), MAX_DEPTH * 3 // 4))
    assert reply.status == 400, reply.body
    assert reply.error["code"] == "statement_mismatch"


def test_nesting_deeper_than_json_parsers_go(api: RawApi) -> None:
    reply = api.post("/execute", _nested(select_doc(api), 5000))
    assert reply.status == 400, reply.body
    assert reply.error["code"] in ("malformed_json", "malformed_statement")


def test_wrong_wire_version(api: RawApi) -> None:
    body = select_doc(api)
    body["stmt"]["version"] = 99
    reply = api.post("/execute", body)
    assert (reply.status, reply.error["code"]) == (400, "wire_version")
    assert "99" in reply.error["message"]


def test_unknown_table(api: RawApi) -> None:
    reply = api.execute(sa.select(sa.table("pg_shadow", sa.column("passwd"))))
    assert (reply.status, reply.error["code"]) == (400, "unknown_table")
    assert "'pg_shadow'" in reply.error["message"]


def test_unknown_column(api: RawApi) -> None:
    body = select_doc(api)
    where(body)["left"]["key"] = "secret"
    reply = api.post("/execute", body)
    assert (reply.status, reply.error["code"]) == (400, "unknown_column")
    assert "'secret'" in reply.error["message"]


def test_unknown_operator(api: RawApi) -> None:
    body = select_doc(api)
    where(body)["op"] = "__import__"
    reply = api.post("/execute", body)
    assert (reply.status, reply.error["code"]) == (400, "malformed_statement")
    assert reply.error["details"] == {"op": ["unknown operator '__import__'"]}


def test_type_outside_the_allowlist(api: RawApi) -> None:
    body = select_doc(api)
    where(body)["right"]["type"] = {"n": "subprocess.Popen", "r": "Popen('id')"}
    reply = api.post("/execute", body)
    assert (reply.status, reply.error["code"]) == (400, "unsupported_statement")


@pytest.mark.parametrize(("path", "value"), [
    pytest.param(("for_update",), {"nowait": True, "explode": 1}, id="for-update-option"),
    pytest.param(("fetch",), {"clause": {"t": "null"}, "explode": 1}, id="fetch-option"),
    pytest.param(("label_style",), 7, id="label-style-type"),
])
def test_nonsense_in_a_valid_shape_is_a_client_error(api: RawApi, path: tuple[str, ...], value: Any) -> None:
    body = select_doc(api)
    body["stmt"]["statement"][path[0]] = value
    reply = api.post("/execute", body)
    assert reply.status == 400, reply.body


def test_unknown_compound_keyword_is_a_client_error(api: RawApi) -> None:
    body = api.payload(sa.union(sa.select(items.c.id), sa.select(items.c.qty)))
    body["stmt"]["statement"]["keyword"] = "UNION; DROP TABLE items"
    reply = api.post("/execute", body)
    assert reply.status == 400, reply.body


# -- execution ------------------------------------------------------------------------------------
def test_fingerprint_mismatch_executes_nothing(api: RawApi, engine: sa.Engine) -> None:
    txn = api.transaction()
    body = txn.next_payload(sa.insert(items).values(name="mismatch", qty=1))
    body["sql"] = "0" * 40
    reply = api.post("/execute", body)
    assert (reply.status, reply.error["code"]) == (400, "statement_mismatch")
    assert reply.error["txn_state"] == "open"
    assert txn.commit().json == {"outcome": "committed"}
    assert count_rows(engine, items, items.c.name == "mismatch") == 0


def test_fingerprint_of_another_statement_is_a_mismatch(api: RawApi) -> None:
    """A valid hash of a *different* statement: the rebuilt structure is what counts."""
    body = select_doc(api)
    body["sql"] = api.payload(sa.select(items.c.qty).where(items.c.name == "apple"))["sql"]
    reply = api.post("/execute", body)
    assert (reply.status, reply.error["code"]) == (400, "statement_mismatch")


def test_unique_violation_is_a_typed_database_error(api: RawApi, engine: sa.Engine) -> None:
    txn = api.transaction()
    reply = txn.execute(sa.insert(items).values(name="apple", qty=9))
    assert reply.status == 422
    error = reply.error
    assert error["code"] == "database_error"
    assert error["dbapi_class"] == "IntegrityError"
    assert error["txn_state"] == "open"
    assert "UNIQUE" in error["message"] and "items.name" in error["message"]
    assert txn.rollback().json == {"outcome": "rolled_back"}
    assert count_rows(engine, items, items.c.qty == 9) == 0


def test_error_ids_are_unique_per_answer(api: RawApi) -> None:
    ids = {api.post("/execute", b"nope").error["error_id"] for _ in range(3)}
    assert len(ids) == 3 and all(isinstance(i, str) and i for i in ids)


def test_missing_parameter_value_of_a_write(api: RawApi, engine: sa.Engine) -> None:
    txn = api.transaction()
    body = txn.next_payload(sa.insert(items).values(name="p", qty=1))
    body["params"] = [{"name": "p"}]
    reply = api.post("/execute", body)
    assert reply.status == 400, reply.body
    txn.rollback()
    assert count_rows(engine, items, items.c.name == "p") == 0


def test_failed_request_in_a_transaction_is_replayed_too(api: RawApi) -> None:
    """A retried request whose first answer was an error gets the same error, not a second run."""
    txn = api.transaction()
    body = txn.next_payload(sa.insert(items).values(name="apple"))
    first, second = api.post("/execute", body), api.post("/execute", body)
    assert first.status == second.status == 422
    assert first.body == second.body
    txn.rollback()


class _DriverError(Exception):
    """Stands for a driver's exception class (its MRO names the PEP 249 class)."""


class OperationalError(_DriverError):
    pass


class ProgrammingError(_DriverError):
    pass


@pytest.mark.parametrize(("orig", "statement", "expected"), [
    (ProgrammingError('syntax error at or near "FROM"\nLINE 1: SELECT x FROM\n                 ^'), "SELECT x FROM",
     "syntax error at or near <statement text withheld>"),
    (ProgrammingError('near "FROM": syntax error'), "SELECT x FROM", "near <statement text withheld>: syntax error"),
    (ProgrammingError(1064, "You have an error in your SQL syntax; check the manual for the right syntax to "
                            "use near 'FROM items' at line 1"), "SELECT FROM items",
     "You have an error in your SQL syntax; check the manual for the right syntax to use near "
     "<statement text withheld> at line 1"),
    (ProgrammingError('new row violates check constraint "ck"\nDETAIL:  Failing row contains (1, secret).'),
     "INSERT ...", 'new row violates check constraint "ck"'),
    (OperationalError('connection to server at "10.0.0.5", port 6432 failed: FATAL: password authentication '
                      'failed for user "app"'), None,
     "The DB-API lost or could not open its database connection; retry later."),
])
def test_database_messages_keep_the_verdict_and_drop_the_rest(orig: Exception, statement: str | None,
                                                              expected: str) -> None:
    exc = sa.exc.DBAPIError.instance(statement, None, orig, _DriverError)
    assert database_message(exc) == expected


def test_a_sqlalchemy_warning_about_the_statement_is_the_clients_mistake(api: RawApi) -> None:
    # found by tests/security/test_fuzz.py: a bare SELECT where a value belongs made SQLAlchemy
    # warn ("implicitly coercing SELECT object to scalar subquery"), a 500 where warnings are errors
    # (in a transaction, where a write reaches the compiler that warns)
    txn = api.transaction()
    body = txn.next_payload(sa.insert(items).values(name=sa.select(items.c.name).limit(1).scalar_subquery()))
    pairs = body["stmt"]["statement"]["values"]
    assert pairs[0][1]["t"] == "scalar_select"
    pairs[0][1] = pairs[0][1]["element"]
    reply = api.post("/execute", body)
    assert (reply.status, reply.error["code"]) == (400, "bad_statement")
    assert "warned about its structure" in reply.error["message"]
    assert txn.rollback().status == 200
