"""Errors (issue 12, finding 7): every answer is the JSON envelope with the right class of status.

- A Python exception raised by the server's own code is a 500 ``internal_error`` with an error id
  (its traceback in the server's log under that id) - never a 422 ``driver_error``, which only the
  database driver's own exceptions are.
- Names looked up from the wire come from explicit maps (``label_style: "__class__"`` is refused).
- A wrong Content-Type is 415; oversized headers 431 and bodies 413, in the envelope.
- Messages repeat plain names only: caller text that is not an identifier - an "unknown table"
  carrying SQL, an identifier the database quotes back - is ``<withheld>``.

The servers run in their own process, on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from dbapi_server.errors import envelope_for_exception, raised_by_driver, withhold_names
from query_translation import to_wire
from tests.dbapi_server._support import RawApi
from tests.servers import DBAPIProcess, dbapi_process

from ._policy_support import MINE, POLICY_FILE, Variable, XCom, make_engine

METADATA = "tests.security._policy_support:Base.metadata"
INJECTED = "x'); DROP TABLE variable; --"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql),
                                        pytest.param("mariadb", marks=pytest.mark.mysql)])
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sa.Engine, DBAPIProcess, DBAPIProcess]]:
    """The schema on one database, served twice: with the open preset and with the worker policy."""
    engine = make_engine(request.param, request, tmp_path_factory)
    url = engine.url.render_as_string(hide_password=False)
    try:
        with dbapi_process(url, METADATA) as open_server, dbapi_process(url, METADATA, policy=POLICY_FILE) as worker:
            yield engine, open_server, worker
    finally:
        engine.dispose()


def post(server: DBAPIProcess, path: str, body: Any, token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    sent = urllib.request.Request(f"{server.url}/dbapi/v1{path}", method="POST",
                                  data=body if isinstance(body, bytes) else orjson.dumps(body),
                                  headers={"Authorization": f"Bearer {token or server.token}",
                                           "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(sent, timeout=60) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, orjson.loads(refused.read())


def payload(server: DBAPIProcess, stmt: Any, **extra: Any) -> dict[str, Any]:
    """The /execute body an isolated client sends for *stmt* (compiled for *server*'s database)."""
    return RawApi(server).payload(stmt, **extra)  # type: ignore[arg-type]  # needs only url and token


# -- crashes are the server's, not the client's ------------------------------------------------------
def test_multi_row_values_insert_runs(served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    """It crashed the statement scan ('dict' object has no attribute 'get_children'), answered 422."""
    engine, open_server, worker = served
    rows = [{"id": 700 + i, "key": f"multi-{i}", "val": "v"} for i in range(3)]
    body = {**payload(open_server, sa.insert(Variable).values(rows)), "txn": "multi-values-1", "seq": 1, "begin": True}
    status, answer = post(open_server, "/execute", body)
    assert (status, answer.get("rowcount")) == (200, 3), answer
    status, answer = post(open_server, "/transactions/multi-values-1/rollback", {})
    assert status == 200, answer
    xcoms = [{"id": 710 + i, "ti_id": 1, "key": "k", "value": "v", **MINE} for i in range(2)]
    body = {**payload(open_server, sa.insert(XCom).values(xcoms)), "txn": "multi-values-2", "seq": 1, "begin": True}
    status, answer = post(worker, "/execute", body, token=worker.mint(role="worker", **MINE))
    assert (status, answer["error"]["code"]) == (403, "policy_violation"), answer  # a row-filtered table
    post(worker, "/transactions/multi-values-2/rollback", {}, token=worker.mint(role="worker", **MINE))


def test_a_cte_insert_into_a_filtered_table_is_refused_not_a_crash(
        served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    """A CTE holding an INSERT into a row-filtered table crashed the compiler after the row-filter
    rewrite ('Subquery' object has no attribute '_autoincrement_column'), answered 422 driver_error;
    the statement check now refuses it before (a server crash would be 500 internal_error)."""
    _, open_server, worker = served
    token = worker.mint(role="worker", **MINE)
    cte = sa.insert(XCom).values(id=960, ti_id=1, key="k", value="v", **MINE).returning(XCom.id).cte("ins")
    body = {**payload(open_server, sa.select(cte.c.id)), "txn": "cte-insert", "seq": 1, "begin": True}
    status, answer = post(worker, "/execute", body, token=token)
    post(worker, "/transactions/cte-insert/rollback", {}, token=token)
    assert (status, answer["error"]["code"]) == (403, "policy_violation"), answer


def test_the_driver_is_told_apart_from_the_server() -> None:
    """The classifier behind the two answers, on real exceptions."""
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        try:
            conn.execute(sa.text("SELECT :v"), {"v": 2**70})
        except OverflowError as exc:  # raised from SQLAlchemy's call into the C driver
            through_sqlalchemy: BaseException = exc
    try:
        {}.get_children()  # type: ignore[attr-defined]
    except AttributeError as exc:
        ours: BaseException = exc
    assert raised_by_driver(through_sqlalchemy)
    assert not raised_by_driver(ours) and not raised_by_driver(OverflowError("never raised"))
    assert envelope_for_exception(through_sqlalchemy)[0] == 422
    status, envelope = envelope_for_exception(ours)
    assert (status, envelope["error"]["code"]) == (500, "internal_error")
    assert "get_children" not in envelope["error"]["message"]


def test_names_from_the_wire_come_from_explicit_maps(served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    engine, open_server, _ = served
    body = payload(open_server, sa.select(Variable.id).set_label_style(sa.LABEL_STYLE_TABLENAME_PLUS_COL))
    for name in ("__class__", "__init__", "_member_map_", "mro"):
        body["stmt"]["statement"]["label_style"] = name
        status, answer = post(open_server, "/execute", body)
        assert (status, answer["error"]["code"]) == (400, "malformed_statement"), (name, answer)
    compound = payload(open_server, sa.union(sa.select(Variable.id), sa.select(Variable.id)))
    compound["stmt"]["statement"]["keyword"] = "__class__"
    status, answer = post(open_server, "/execute", compound)
    assert 400 <= status < 500, answer


# -- transport ------------------------------------------------------------------------------------
def test_wrong_content_type_is_415(served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    engine, open_server, _ = served
    body = payload(open_server, sa.select(Variable.id))
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, answer = post(open_server, "/execute", body, headers={"Content-Type": content_type})
        assert (status, answer["error"]["code"]) == (415, "unsupported_media_type"), answer
    status, answer = post(open_server, "/execute", body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 200, answer


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize("server_name", ["granian", "waitress"])
def test_oversized_headers_are_431_in_the_envelope(served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess],
                                                   server_name: str) -> None:
    engine, _, _ = served
    url = engine.url.render_as_string(hide_password=False)
    with dbapi_process(url, METADATA, args=["--server", server_name]) as server:
        head, _, body = _raw(server.port, b"GET /dbapi/v1/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             b"X-Filler: " + b"a" * 100_000 + b"\r\n\r\n").partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"431", head
        assert orjson.loads(body)["error"]["code"] == "headers_too_large"


# -- messages -------------------------------------------------------------------------------------
def test_unknown_names_are_not_echoed(served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    engine, open_server, worker = served
    for server in (open_server, worker):
        token = server.mint(role="worker", **MINE)
        statement = {"t": "select", "cols": [{"t": "col", "from": {"t": "table", "name": INJECTED}, "key": "id"}]}
        status, answer = post(server, "/execute", {"stmt": {"version": 2, "statement": statement}, "sql": "x"},
                              token=token)
        assert (status, answer["error"]["code"]) == (400, "unknown_table")
        statement = {"t": "select", "cols": [{"t": "col", "from": {"t": "table", "name": "variable"}, "key": INJECTED}]}
        status, answer = post(server, "/execute", {"stmt": {"version": 2, "statement": statement}, "sql": "x"},
                              token=token)
        assert status == 400 and answer["error"]["code"] in ("unknown_column", "policy_violation")
        statement = {"t": INJECTED}
        status, answer = post(server, "/execute", {"stmt": {"version": 2, "statement": statement}, "sql": "x"},
                              token=token)
        assert status == 400
        statement = {"t": "select", "cols": [], INJECTED: 1}
        status, answer = post(server, "/execute", {"stmt": {"version": 2, "statement": statement}, "sql": "x"},
                              token=token)
        assert status == 400
        assert "DROP" not in orjson.dumps(answer).decode(), answer


def test_database_messages_withhold_quoted_identifiers(served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    """The database names an unknown column the caller made up; the answer does not repeat it."""
    engine, open_server, _ = served
    body = payload(open_server, sa.select(sa.column(INJECTED, _selectable=Variable.__table__)))
    status, answer = post(open_server, "/execute", body)
    assert status in (400, 403, 422), answer
    assert "DROP" not in orjson.dumps(answer).decode(), answer


@pytest.mark.parametrize(("message", "shown"), [
    ('column "a; DROP" does not exist', 'column "<withheld>" does not exist'),
    ("Unknown column 'x y' in 'variable'", "Unknown column '<withheld>' in 'variable'"),
    ("Unknown column 'variable.x'); DROP' in 'SELECT'", "Unknown column '<withheld>' in 'SELECT'"),
    ("Duplicate entry 'etl-r1' for key 'PRIMARY'", "Duplicate entry '<withheld>' for key 'PRIMARY'"),
    ("no such column: a b", "no such column: <withheld>"),
    ("column variable.x'); DROP does not exist", "column <withheld> does not exist"),
    ("column variable.val does not exist", "column variable.val does not exist"),
    ("no such table: main.dag_code", "no such table: main.dag_code"),
    ("Can't DROP 'x; y'; check that it exists", "Can't DROP '<withheld>'; check that it exists"),
    ("The table \"x'); DROP\" is not part of the server's metadata.",
     "The table \"<withheld>\" is not part of the server's metadata."),
    ("duplicate key value violates unique constraint \"variable_key_key\"",
     "duplicate key value violates unique constraint \"variable_key_key\""),
])
def test_withheld_names(message: str, shown: str) -> None:
    assert withhold_names(message) == shown


def test_nodes_without_their_type_are_no_crash(served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    """Found by the repeating-node generator: a tuple, case, function or scalar subquery sent
    without ``type`` had its type set to None, and compiling it crashed (500)."""
    _, open_server, _ = served
    col = {"t": "col", "from": {"t": "table", "name": "variable"}, "key": "id"}
    for node in ({"t": "tuple", "clauses": [col, col]}, {"t": "case", "whens": [[col, col]], "else": col},
                 {"t": "function", "name": "coalesce", "args": [col]},
                 {"t": "scalar_select", "element": {"t": "select", "cols": [col]}}):
        status, answer = post(open_server, "/execute", {"stmt": {"version": 2, "statement": {
            "t": "select", "cols": [node]}}, "sql": "x"})
        assert status < 500, (node["t"], answer)


def test_options_passed_as_keyword_arguments_are_validated(served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    """Found by the fuzzer once the crash was no longer a 422: ``for_update: {"nowait": [[]]}`` became
    ``with_for_update(nowait=[[]])`` and the compiled cache failed on it (500). FOR UPDATE, FETCH and
    join options are each a schema of their own now: flags are booleans, no other keys."""
    _, open_server, _ = served
    txn = 0
    # validation comes first: an unsigned document ("sql" of none) is enough
    locked = {"stmt": to_wire(sa.select(Variable.id).with_for_update()), "sql": "x"}
    fetched = {"stmt": to_wire(sa.select(Variable.id).order_by(Variable.id).fetch(1)), "sql": "x"}
    joined = {"stmt": to_wire(sa.select(Variable.id).join(XCom, Variable.id == XCom.id)), "sql": "x"}
    for body, path, junk in ((locked, ("for_update", "nowait"), [[[]]]), (locked, ("for_update", "of"), {"t": 1}),
                             (locked, ("for_update", "isolation"), True), (fetched, ("fetch", "with_ties"), "yes"),
                             (fetched, ("fetch", "percent"), [1]), (joined, ("joins", 0, "outer"), {"a": 1})):
        sent: Any = orjson.loads(orjson.dumps(body))
        holder = sent["stmt"]["statement"]
        for key in path[:-1]:
            holder = holder[key]
        holder[path[-1]] = junk
        txn += 1
        status, answer = post(open_server, "/execute", {**sent, "txn": f"options-{txn}", "seq": 1, "begin": True})
        post(open_server, f"/transactions/options-{txn}/rollback", {})
        assert (status, answer["error"]["code"]) == (400, "malformed_statement"), (path, answer)


def test_a_document_that_is_no_statement_is_refused(served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    """Found by the fuzzer: a bare column as the whole document was "executed" and crashed (500)."""
    _, open_server, _ = served
    col = {"t": "col", "from": {"t": "table", "name": "variable"}, "key": "id"}
    for top in (col, {"t": "table", "name": "variable"}, {"t": "binary", "op": "add", "left": col, "right": col},
                {"t": "null"}, {"t": "label", "name": "x", "element": col}):
        status, answer = post(open_server, "/execute", {"stmt": {"version": 2, "statement": top}, "sql": "x",
                                                        "txn": f"top-{top['t']}", "seq": 1, "begin": True})
        post(open_server, f"/transactions/top-{top['t']}/rollback", {})
        assert (status, answer["error"]["code"]) == (400, "malformed_statement"), (top["t"], answer)


def test_odd_paths_are_answered_in_the_envelope(served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    """Found by the fuzzer: a transaction id "0/" made werkzeug answer a 308 redirect, in HTML."""
    _, open_server, _ = served
    for path in ("/transactions/0%2F/rollback", "/transactions/0//rollback", "/execute/", "//execute",
                 "/cursors/x//fetch", "/info/"):
        sent = urllib.request.Request(f"{open_server.url}/dbapi/v1{path}", data=b"{}", method="POST",
                                      headers={"Authorization": f"Bearer {open_server.token}",
                                               "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(sent, timeout=30) as answer:
                status, body = answer.status, answer.read()
        except urllib.error.HTTPError as refused:
            status, body = refused.code, refused.read()
        assert 400 <= status < 500, (path, status, body[:200])
        assert "error" in orjson.loads(body), (path, body[:200])


def test_raw_values_where_nodes_go_are_refused(served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    """Found by the fuzzer: a VALUES pair's column node whose "from" had an integer "t" (and an id
    already defined) was taken for the table the id named, and the integer crashed the policy (500)."""
    _, open_server, _ = served
    table = {"t": "table", "name": "variable", "@": 1}
    for n, bad in enumerate(({"t": 9223372036854775808, "@": 1}, {"t": "table", "name": "variable", "@": 1},
                             {"t": "ref", "@": [1]}, {"t": "table", "name": "variable", "@": True})):
        statement = {"t": "insert", "table": table, "values": [[{"t": "col", "from": bad, "key": "key"},
                                                               {"t": "null"}]]}
        status, answer = post(open_server, "/execute", {"stmt": {"version": 2, "statement": statement}, "sql": "x",
                                                        "txn": f"raw-values-{n}", "seq": 1, "begin": True})
        post(open_server, f"/transactions/raw-values-{n}/rollback", {})
        assert (status, answer["error"]["code"]) == (400, "malformed_statement"), (bad, answer)


def test_a_cte_or_subquery_of_a_table_is_refused(served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    """Found by the fuzzer: a CTE whose element was a table decoded, then crashed the compiler (500)."""
    _, open_server, _ = served
    table = {"t": "table", "name": "variable"}
    for n, from_ in enumerate(({"t": "cte", "element": table, "name": "c"}, {"t": "subquery", "element": table, "name": "s"},
                               {"t": "cte", "alias_of": table, "name": "c2"})):
        statement = {"t": "select", "cols": [{"t": "col", "from": from_, "key": "id"}]}
        status, answer = post(open_server, "/execute", {"stmt": {"version": 2, "statement": statement}, "sql": "x",
                                                        "txn": f"cte-of-table-{n}", "seq": 1, "begin": True})
        post(open_server, f"/transactions/cte-of-table-{n}/rollback", {})
        assert (status, answer["error"]["code"]) == (400, "malformed_statement"), (from_, answer)


def test_a_commit_of_an_impossible_transaction_id_is_refused(
        served: tuple[sa.Engine, DBAPIProcess, DBAPIProcess]) -> None:
    """Found by the fuzzer on MariaDB: a 300-character id in the commit URL went into the outcome
    table's 128-character key (INSERT IGNORE truncated it), the read-back found nothing (500)."""
    _, open_server, _ = served
    for txn_id in ("x" * 300, "a.b", "%20"):
        for verb in ("commit", "rollback"):
            status, answer = post(open_server, f"/transactions/{txn_id}/{verb}", {})
            assert (status, answer["error"]["code"]) == (400, "malformed_request"), (txn_id, verb, answer)
