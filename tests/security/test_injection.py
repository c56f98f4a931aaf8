"""Injection through the JSON structure: identifiers are refused or quoted, values are always bound.

Raw requests are crafted as a hostile client would (a legitimate document with one name or value
replaced); ordinary ORM statements carry hostile labels and values. After each, the database is
checked to be intact, and no answer echoes SQL.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from dbsession import PolicyViolationError
from tests.dbapi_server._support import RawApi

from ._policy_support import MINE, Backend, DagCode, TaskInstance, Variable, XCom

TI = TaskInstance
HOSTILE_NAMES = [
    'variable" ; DROP TABLE dag_code; --',
    "variable'; DELETE FROM variable; --",
    "val) FROM dag_code --",
    "dag_code",
    "vari\u0430ble",  # Cyrillic a: looks like "variable"
    "x\x00y",
    "",
]


@pytest.fixture
def api(backend: Backend) -> Iterator[RawApi]:
    raw = RawApi(backend.server)
    raw.server = _WithToken(backend.server, backend.token(**MINE))  # type: ignore[assignment]
    yield raw
    raw.assert_no_leaks()


class _WithToken:
    """The running server, seen with the worker's token."""

    def __init__(self, server: Any, token: str) -> None:
        self.url, self.token = server.url, token


def _replace(node: Any, key: str, old: str, new: Any) -> Any:
    """*node* with every ``key: old`` pair changed to ``key: new``."""
    if isinstance(node, dict):
        return {k: (new if k == key and v == old else _replace(v, key, old, new)) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, key, old, new) for v in node]
    return node


def _intact(backend: Backend) -> None:
    with backend.direct() as d:
        assert d.scalar(sa.select(sa.func.count()).select_from(DagCode)) == 1
        assert d.scalar(sa.select(sa.func.count()).select_from(Variable)) == 2


def _assert_refused(reply: Any, statuses: tuple[int, ...] = (400, 403)) -> dict[str, Any]:
    assert reply.status in statuses, reply.body
    return reply.error  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_table_names_are_unknown_tables(backend: Backend, api: RawApi, name: str) -> None:
    payload = api.payload(sa.select(Variable.key))
    payload["stmt"] = _replace(payload["stmt"], "name", "variable", name)
    error = _assert_refused(api.post("/execute", payload))
    assert error["code"] in ("unknown_table", "unknown_column", "policy_violation", "malformed_statement")
    _intact(backend)


@pytest.mark.parametrize("name", HOSTILE_NAMES[:-1] + ["description"])
def test_hostile_column_keys_are_unknown_or_refused(backend: Backend, api: RawApi, name: str) -> None:
    payload = api.payload(sa.select(Variable.key).where(Variable.val == "eu"))
    payload["stmt"] = _replace(payload["stmt"], "key", "val", name)
    error = _assert_refused(api.post("/execute", payload))
    assert error["code"] in ("unknown_column", "policy_violation", "malformed_statement")
    _intact(backend)


@pytest.mark.parametrize("name", ['lower"(val); DROP TABLE dag_code; --', "pg_read_file", "PG_SLEEP",
                                  "l\u043ewer", "lower(description) --", "sqlite_version"])
def test_hostile_function_names_are_refused(backend: Backend, api: RawApi, name: str) -> None:
    payload = api.payload(sa.select(sa.func.lower(Variable.val)))
    payload["stmt"] = _replace(payload["stmt"], "name", "lower", name)
    error = _assert_refused(api.post("/execute", payload))
    assert error["code"] in ("policy_violation", "malformed_statement")
    if error["code"] == "policy_violation":
        assert error["function"] in (name.lower(), "<invalid name>")
        assert "DROP" not in error["message"]
    _intact(backend)


@pytest.mark.parametrize("label", ['x" FROM dag_code; --', "a'b", "ünï\"cødé", "select", "1; DROP TABLE dag_code"])
def test_hostile_labels_are_quoted(backend: Backend, label: str) -> None:
    with backend.worker() as s:
        row = s.execute(sa.select(Variable.val.label(label)).where(Variable.id == 1)).one()
        assert row._mapping[label] == "10"
    _intact(backend)


@pytest.mark.parametrize("value", ["x' OR '1'='1", "'); DROP TABLE dag_code; --", "\\'; --", "\r\n--", "ü\u202e"])
def test_hostile_values_are_bound(backend: Backend, value: str) -> None:
    with backend.worker() as s:
        assert s.scalars(sa.select(Variable.key).where(Variable.key == value)).all() == []
        s.add(XCom(id=700, ti_id=1, dag_id="etl", run_id="r1", key="k", value=value))
        s.flush()
        assert s.scalar(sa.select(XCom.value).where(XCom.id == 700)) == value
        s.rollback()
    _intact(backend)


def test_hostile_claim_values_are_bound(backend: Backend) -> None:
    with backend.session(dag_id="etl' OR '1'='1", run_id="r1") as s:
        assert s.scalars(sa.select(TI)).all() == []


def test_filter_parameters_cannot_be_supplied_by_the_client(backend: Backend, api: RawApi) -> None:
    payload = api.payload(sa.select(TI.id).order_by(TI.id))
    payload["params"] = [{**(payload["params"][0] if payload["params"] else {}), "_dbs_rf_0": "report",
                          "_dbs_rf_1": "r1"}]
    reply = api.post("/execute", payload)
    assert reply.status == 200, reply.body
    assert [row[0] for row in reply.json["rows"]] == [1, 2]  # own rows, not report's


def test_reserved_bind_names_are_refused(backend: Backend) -> None:
    with backend.worker() as s:
        with pytest.raises(PolicyViolationError, match="reserved"):
            s.execute(sa.select(TI.id).where(TI.dag_id == sa.bindparam("_dbs_rf_0")), {"_dbs_rf_0": "report"})


def test_fingerprint_is_still_checked_for_filtered_statements(backend: Backend, api: RawApi) -> None:
    txn = api.transaction(token=api.server.token)
    payload = txn.next_payload(sa.update(TI).where(TI.id == 1).values(state="hijacked"))
    payload["sql"] = "0" * 40
    reply = api.post("/execute", payload, token=api.server.token)
    assert reply.status == 400 and reply.error["code"] == "statement_mismatch"
    assert txn.commit().status == 200
    with backend.direct() as d:
        assert d.scalar(sa.select(TI.state).where(TI.id == 1)) != "hijacked"


def test_documents_are_not_mutated_by_filtering(backend: Backend, api: RawApi) -> None:
    """The decode cache hands out one statement object: filtering must leave it unfiltered."""
    payload = api.payload(sa.select(TI.id).order_by(TI.id))
    original = copy.deepcopy(payload)
    other = RawApi(backend.server)
    other.server = _WithToken(backend.server, backend.token(dag_id="report", run_id="r1"))  # type: ignore[assignment]
    assert [r[0] for r in api.post("/execute", payload).json["rows"]] == [1, 2]
    assert [r[0] for r in other.post("/execute", original).json["rows"]] == [5, 6]
    assert [r[0] for r in api.post("/execute", original).json["rows"]] == [1, 2]
