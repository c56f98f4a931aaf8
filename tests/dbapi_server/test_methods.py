"""Named methods on the server: the routes, their transactions, their errors, and the listing.

Raw HTTP against a real server (real tokens); what a client makes of the answers is in
``tests/dbsession/test_methods.py``.
"""

from __future__ import annotations

import json
import logging
import uuid

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import Session

from dbapi_server import cli, create_app
from dbapi_server.policy import DefaultPolicy
from query_translation import DEFAULT_REGISTRY, MethodRegistry, encode_value
from tests.servers import RunningServer

from ._support import RawApi, count_rows, items

SECRET_DETAIL = "hunter2-never-sent"
SECRETS = (SECRET_DETAIL,)
POLICY = DefaultPolicy(denied_methods=frozenset({"forbidden"}))
METHODS = MethodRegistry()
NO_OPEN_TRANSACTIONS = True


def add_item(session: Session, name: str, qty: int = 0) -> int:
    session.execute(items.insert().values(name=name, qty=qty))
    return int(session.scalar(sa.select(sa.func.count()).select_from(items)) or 0)


def add_then_fail(session: Session, name: str, safe: bool) -> None:
    session.execute(items.insert().values(name=name, qty=1))
    session.flush()
    if safe:
        raise LookupError(f"no shelf for {name}")
    raise RuntimeError(f"internal detail {SECRET_DETAIL}")


def add_then_commit(session: Session, name: str) -> None:
    session.execute(items.insert().values(name=name, qty=1))
    session.commit()


def add_then_return_a_str(session: Session, name: str) -> int:
    session.execute(items.insert().values(name=name, qty=1))
    return "five"  # type: ignore[return-value]


def forbidden(session: Session) -> None:
    raise AssertionError("a denied method must not run")


def versioned(session: Session, tags: list[str]) -> dict[str, int]:
    return {tag: len(tag) for tag in tags}


METHODS.register(add_item)
METHODS.register(add_then_fail)
METHODS.register(add_then_commit)
METHODS.register(add_then_return_a_str)
METHODS.register(forbidden)
METHODS.register(versioned, version=3)


def call(*, version: int = 1, **args: object) -> dict[str, object]:
    """The body of a named method call with these arguments."""
    return {"version": version, "args": {k: encode_value(v) for k, v in args.items()}}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- listing --------------------------------------------------------------------------------------
def test_the_server_lists_exactly_its_registry(api: RawApi) -> None:
    reply = api.get("/methods")
    assert reply.status == 200
    listed = {m["name"]: m for m in reply.json["methods"]}
    assert set(listed) == {"add_item", "add_then_fail", "add_then_commit", "add_then_return_a_str", "forbidden",
                           "versioned"}
    assert listed["add_item"] == {"name": "add_item", "version": 1,
                                  "signature": "add_item(name: str, qty: int = 0) -> int"}
    assert listed["versioned"]["version"] == 3
    assert listed["versioned"]["signature"] == "versioned(tags: list[str]) -> dict[str, int]"


def test_listing_needs_a_token(api: RawApi) -> None:
    assert api.get("/methods", token=None).status == 401


# -- transactions ---------------------------------------------------------------------------------
def test_a_call_without_a_transaction_commits_at_once(api: RawApi, engine: sa.Engine) -> None:
    name = unique("alone")
    reply = api.post("/methods/add_item", call(name=name, qty=4))
    assert reply.status == 200, reply.body
    assert reply.json["result"] >= 1
    assert count_rows(engine, items, items.c.name == name, items.c.qty == 4) == 1


def test_a_call_in_a_transaction_commits_and_rolls_back_with_it(api: RawApi, engine: sa.Engine) -> None:
    kept, dropped = unique("kept"), unique("dropped")
    for name, verb in ((kept, "commit"), (dropped, "rollback")):
        txn = api.transaction()
        reply = api.post("/methods/add_item", {**call(name=name), "txn": txn.id, "seq": 1,
                                               "begin": True})
        assert reply.status == 200, reply.body
        assert count_rows(engine, items, items.c.name == name) == 0  # not before the caller ends it
        txn.seq, txn.begun = 1, True
        assert txn.finish(verb).status == 200
    assert count_rows(engine, items, items.c.name == kept) == 1
    assert count_rows(engine, items, items.c.name == dropped) == 0


def test_a_retried_call_answers_again_without_running_twice(api: RawApi, engine: sa.Engine) -> None:
    name = unique("retry")
    txn = api.transaction()
    body = {**call(name=name), "txn": txn.id, "seq": 1, "begin": True}
    first, again = api.post("/methods/add_item", body), api.post("/methods/add_item", body)
    assert (first.status, first.body) == (again.status, again.body) == (200, first.body)
    txn.seq, txn.begun = 1, True
    assert txn.commit().status == 200
    assert count_rows(engine, items, items.c.name == name) == 1


# -- what a method raises -------------------------------------------------------------------------
def test_a_safe_exception_travels_and_the_method_writes_are_undone(api: RawApi, engine: sa.Engine) -> None:
    before, inside = unique("before"), unique("inside")
    txn = api.transaction()
    assert txn.execute(items.insert().values(name=before, qty=1)).status == 200
    txn.seq += 1
    reply = api.post("/methods/add_then_fail", {**call(name=inside, safe=True),
                                                "txn": txn.id, "seq": txn.seq})
    assert reply.status == 422
    error = reply.error
    assert error["code"] == "method_error" and error["txn_state"] == "open"
    assert error["details"] == {"type": "builtins.LookupError", "args": [f"no shelf for {inside}"]}
    assert txn.commit().status == 200  # the caller's own work survives the method's failure
    assert count_rows(engine, items, items.c.name == before) == 1
    assert count_rows(engine, items, items.c.name == inside) == 0


@pytest.mark.parametrize(("method", "error_type", "message"), [
    ("add_then_commit", "query_translation.exceptions.MethodTransactionError",
     "The named method add_then_commit called session.commit(): a named method runs inside its caller's "
     "transaction and must not begin, end or close it."),
    ("add_then_return_a_str", "query_translation.exceptions.MethodResultError",
     "add_then_return_a_str() returned a str, not the int its annotation promises."),
])
def test_breaking_the_rules_answers_422_and_leaves_the_callers_transaction_open(
        api: RawApi, engine: sa.Engine, caplog: pytest.LogCaptureFixture, method: str, error_type: str,
        message: str) -> None:
    before, inside = unique("before"), unique("inside")
    txn = api.transaction()
    assert txn.execute(items.insert().values(name=before, qty=1)).status == 200
    txn.seq += 1
    with caplog.at_level(logging.INFO, logger="dbapi_server.methods"):
        reply = api.post(f"/methods/{method}", {**call(name=inside), "txn": txn.id, "seq": txn.seq})
    assert reply.status == 422, reply.body
    error = reply.error
    assert (error["code"], error["txn_state"], error["details"]["type"]) == ("method_error", "open", error_type)
    assert error["details"]["args"][0].startswith(message)
    assert [r.levelname for r in caplog.records if error["error_id"] in r.getMessage()] == ["INFO"]
    assert count_rows(engine, items, items.c.name.in_([before, inside])) == 0  # nothing committed
    assert txn.commit().status == 200
    assert count_rows(engine, items, items.c.name == before) == 1
    assert count_rows(engine, items, items.c.name == inside) == 0  # the method's savepoint rolled back


def test_a_commit_in_a_call_without_a_transaction_commits_nothing(api: RawApi, engine: sa.Engine) -> None:
    name = unique("alone-commit")
    reply = api.post("/methods/add_then_commit", call(name=name))
    assert (reply.status, reply.error["code"]) == (422, "method_error")
    assert count_rows(engine, items, items.c.name == name) == 0


def test_another_exception_answers_only_an_error_id(api: RawApi, engine: sa.Engine,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    name = unique("unsafe")
    with caplog.at_level(logging.ERROR, logger="dbapi_server.methods"):
        reply = api.post("/methods/add_then_fail", call(name=name, safe=False))
    assert reply.status == 500
    error = reply.error
    assert error["code"] == "method_failed" and error["error_id"]
    assert error["error_id"] in error["message"]
    logged = [r for r in caplog.records if error["error_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback stays in the server's log
    assert count_rows(engine, items, items.c.name == name) == 0


def test_a_database_error_answers_as_on_execute(api: RawApi, engine: sa.Engine) -> None:
    name = unique("dup")
    assert api.post("/methods/add_item", call(name=name)).status == 200
    reply = api.post("/methods/add_item", call(name=name))
    assert reply.status == 422
    assert reply.error["code"] == "database_error" and reply.error["dbapi_class"] == "IntegrityError"
    assert count_rows(engine, items, items.c.name == name) == 1


# -- refusals -------------------------------------------------------------------------------------
def test_an_unknown_method_is_named_in_a_404(api: RawApi) -> None:
    reply = api.post("/methods/no_such_method", call())
    assert reply.status == 404
    assert reply.error["code"] == "unknown_method" and reply.error["method"] == "no_such_method"
    assert "'no_such_method' is not registered" in reply.error["message"]


def test_another_version_is_refused_naming_both(api: RawApi) -> None:
    reply = api.post("/methods/versioned", call(version=1, tags=["a"]))
    assert reply.status == 404 and reply.error["code"] == "unknown_method"
    assert "version 3" in reply.error["message"] and "version 1" in reply.error["message"]
    ok = api.post("/methods/versioned", call(version=3, tags=["ab", "c"]))
    assert ok.json == {"result": {"$o": {"ab": 2, "c": 1}}}


def test_the_policy_can_deny_a_method(api: RawApi) -> None:
    reply = api.post("/methods/forbidden", call())
    assert reply.status == 403 and reply.error["code"] == "policy_violation"
    assert "'forbidden'" in reply.error["message"]


@pytest.mark.parametrize(("args", "message"), [
    ({"name": 5}, "argument 'name' must be str, got int"),
    ({"name": "x", "qty": "many"}, "argument 'qty' must be int, got str"),
    ({"name": "x", "colour": "red"}, "no parameter named colour"),
    ({"qty": 1}, "missing a required argument: 'name'"),
    ({"name": {"$nope": 1}}, "unknown value tag"),
])
def test_arguments_that_do_not_fit_the_signature_are_refused(api: RawApi, engine: sa.Engine,
                                                              args: dict[str, object], message: str) -> None:
    reply = api.post("/methods/add_item", {"version": 1, "args": args})
    assert reply.status == 400, reply.body
    assert reply.error["code"] == "bad_arguments" and message in reply.error["message"]


def test_a_call_needs_a_version(api: RawApi) -> None:
    reply = api.post("/methods/add_item", {"args": {}})
    assert reply.status == 400 and "'version'" in reply.error["message"]


def test_calls_need_a_token(api: RawApi) -> None:
    assert api.post("/methods/add_item", call(name="x"), token=None).status == 401


# -- configuration and the command ----------------------------------------------------------------
def test_create_app_imports_the_named_modules_and_serves_the_default_registry(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBAPI_AUTH", "none")
    app = create_app(engine=engine, metadata=items.metadata, methods=["examples.methods"])
    try:
        state = app.extensions["dbapi_server"]
        assert state.methods is DEFAULT_REGISTRY
        assert "mark_success_and_schedule_downstream" in state.methods
    finally:
        app.extensions["dbapi_server"].transactions.close()


def test_dbapi_methods_names_the_modules(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBAPI_AUTH", "none")
    monkeypatch.setenv("DBAPI_METHODS", "examples.methods, ")
    app = create_app(engine=engine, metadata=items.metadata)
    app.extensions["dbapi_server"].transactions.close()
    assert "latest_successful_task_instances" in DEFAULT_REGISTRY


def test_the_command_lists_methods_with_signatures() -> None:
    result = CliRunner().invoke(cli.main, ["methods", "--import", "examples.methods"])
    assert result.exit_code == 0, result.output
    assert ("mark_success_and_schedule_downstream  v1  mark_success_and_schedule_downstream("
            "dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[TaskInstance]") in result.output
    assert "latest_successful_task_instances  v1" in result.output


def test_the_command_lists_methods_as_json() -> None:
    result = CliRunner().invoke(cli.main, ["methods", "--import", "examples.methods", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [m["name"] for m in listed] == sorted(m["name"] for m in listed)
    assert {"name": "mark_success_and_schedule_downstream", "version": 1, "signature":
            "mark_success_and_schedule_downstream(dag_id: str, run_id: str, task_id: str, map_index: int = -1) "
            "-> list[TaskInstance]"} in listed
    assert {"name": "finished_runs", "version": 1,
            "signature": "finished_runs(dag_id: str) -> dict[str, RunState]"} in listed
    assert all(set(m) == {"name", "version", "signature"} for m in listed)


def test_the_command_says_when_a_module_cannot_be_imported() -> None:
    result = CliRunner().invoke(cli.main, ["methods", "--import", "no_such_module_here"])
    assert result.exit_code == 1
    assert "Cannot import the methods module" in result.output


def test_server_fixture_serves_this_modules_registry(server: RunningServer) -> None:
    assert server.state.methods is METHODS
