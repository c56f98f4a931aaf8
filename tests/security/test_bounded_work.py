"""Bounded work (issue 12, finding 5 and "Bounded work"): what a request may cost the server before
the database sees it is limited by the request's *measured* size, checked first.

- References (``{"t": "ref", "@": k}``) can make a DAG whose expansion doubles per level: 4 KB of
  JSON standing for 2**60 nodes of SQL. ``query_translation.measure_document`` counts the
  expansion in one linear pass; the server refuses a statement over ``max_nodes`` by that count.
- Select lists over ``max_columns``, parameter values over ``max_params`` are refused the same way.
- A body over the role's ``max_body_bytes`` is refused by its Content-Length, before it is sent.

The servers run in their own process (``dbapi-server serve``, granian, and ``--server waitress``
where the transport matters). Assertions never time the server: a refusal is recognised by its
type (``limit_exceeded`` and the limit's name), which the size check alone answers.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

from dbapi_server import WORK_LIMITS
from tests.query_translation._repeating import column_of, doubling_chain, repeating_documents
from tests.servers import DBAPIProcess, dbapi_process

from ._policy_support import POLICY_FILE, Base, seed

METADATA = "tests.security._policy_support:Base.metadata"
SMALL_NODES = 300
SMALL_POLICY = POLICY_FILE.read_text().replace("max_rows = 5_000", f"max_rows = 5_000\nmax_nodes = {SMALL_NODES}\n"
                                                                    "max_columns = 50\nmax_params = 40")
CLIENT_TIMEOUT = 60.0  # far above any answer; an unbounded statement (before the fix) never answers


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('bounded') / 'bounded.sqlite'}"
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    seed(engine)
    engine.dispose()
    yield url


@pytest.fixture(scope="module", params=["granian", "waitress"])
def server(request: pytest.FixtureRequest, database: str) -> Iterator[DBAPIProcess]:
    """The example worker policy, as shipped."""
    with dbapi_process(database, METADATA, policy=POLICY_FILE, args=["--server", request.param]) as running:
        yield running


@pytest.fixture(scope="module")
def small(database: str) -> Iterator[DBAPIProcess]:
    """The worker policy with small work limits, so that generated documents cross them cheaply."""
    with dbapi_process(database, METADATA, policy=SMALL_POLICY) as running:
        yield running


def post(server: DBAPIProcess, body: Any, *, role: str = "worker") -> tuple[int, dict[str, Any]]:
    token = server.mint(role=role, dag_id="etl", run_id="r1")
    sent = urllib.request.Request(f"{server.url}/dbapi/v1/execute", data=orjson.dumps(body), method="POST",
                                  headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(sent, timeout=CLIENT_TIMEOUT) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, orjson.loads(refused.read())


# -- the server refuses by size ---------------------------------------------------------------------
@pytest.mark.parametrize("levels", [18, 64])
def test_doubling_references_are_refused_by_size(server: DBAPIProcess, levels: int) -> None:
    """Before the fix 18 levels tied up a server thread for minutes (no answer within the timeout)."""
    status, answer = post(server, {"stmt": doubling_chain(levels), "sql": "x"})
    assert status == 400, answer
    assert (answer["error"]["code"], answer["error"]["limit"]) == ("limit_exceeded", "statement_nodes")
    assert answer["error"]["max"] == WORK_LIMITS.max_nodes
    status, answer = post(server, {"stmt": doubling_chain(8), "sql": "x"})  # 768 nodes: checked further
    assert answer["error"]["code"] != "limit_exceeded"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(repeating_documents())
def test_repeating_nodes_are_refused_exactly_over_the_limit(small: DBAPIProcess,
                                                            document: tuple[dict[str, Any], int]) -> None:
    doc, expanded = document
    status, answer = post(small, {"stmt": doc, "sql": "x"})
    refused = answer.get("error", {}).get("limit") == "statement_nodes"
    assert refused == (expanded > SMALL_NODES), (expanded, status, answer)
    assert status < 500, answer


def test_wide_select_lists_are_refused(small: DBAPIProcess, server: DBAPIProcess) -> None:
    cols = [{"t": "col", "from": {"t": "table", "name": "variable", "@": 1}, "key": "id"}]
    cols += [{"t": "col", "from": {"t": "ref", "@": 1}, "key": "id"}] * (WORK_LIMITS.max_columns or 0)
    status, answer = post(server, {"stmt": {"version": 2, "statement": {"t": "select", "cols": cols}}, "sql": "x"})
    assert (status, answer["error"]["limit"]) == (400, "statement_columns"), answer
    status, answer = post(small, {"stmt": {"version": 2, "statement": {"t": "select", "cols": cols[:51]}}, "sql": "x"})
    assert (status, answer["error"]["limit"], answer["error"]["max"]) == (400, "statement_columns", 50), answer


def test_parameter_values_are_counted(small: DBAPIProcess) -> None:
    stmt = {"version": 2, "statement": {"t": "select", "cols": [column_of({"t": "table", "name": "variable"})]}}
    status, answer = post(small, {"stmt": stmt, "sql": "x", "params": [{f"p{i}": i for i in range(41)}]})
    assert (status, answer["error"]["limit"], answer["error"]["max"]) == (413, "parameter_values", 40), answer
    status, answer = post(small, {"stmt": stmt, "sql": "x", "params": [{"p": list(range(10))}] * 4})
    assert (status, answer["error"]["limit"]) == (413, "parameter_values"), answer  # 4 sets + 40 list items


# -- the body, by its Content-Length ----------------------------------------------------------------
def _raw(server: DBAPIProcess, head: bytes, timeout: float = 20.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer or not _complete(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _envelope(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower(), answer[:500]
    return int(head.split(b" ")[1]), orjson.loads(body)


@pytest.mark.parametrize("size", [10_000_000, 100_000_000])
def test_body_refused_by_content_length_before_it_is_sent(server: DBAPIProcess, size: int) -> None:
    """Only the headers are sent: the refusal must come without waiting for the body. 10 MB is over
    the role's limit (1 MiB) and under the server's (64 MiB); 100 MB is over both."""
    token = server.mint(role="worker", dag_id="etl", run_id="r1")
    head = (f"POST /dbapi/v1/execute HTTP/1.1\r\nHost: dbapi\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n{{").encode()
    status, envelope = _envelope(_raw(server, head))
    assert status == 413
    assert envelope["error"]["code"] in ("limit_exceeded", "body_too_large"), envelope


def test_a_body_without_content_length_is_read_up_to_the_limit(server: DBAPIProcess) -> None:
    """Chunked: read until the role's limit is passed, then refused - not read to its end."""
    token = server.mint(role="worker", dag_id="etl", run_id="r1")
    chunk = b"x" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20))  # 1.25 MiB of 1 MiB allowed
    head = (f"POST /dbapi/v1/execute HTTP/1.1\r\nHost: dbapi\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    status, envelope = _envelope(_raw(server, head + chunks))  # the last chunk never comes
    assert status == 413
    assert envelope["error"]["code"] in ("limit_exceeded", "body_too_large"), envelope


def test_policy_file_accepts_the_work_limits(tmp_path: Path) -> None:
    from dbapi_server import Policy, PolicyError

    file = tmp_path / "policy.toml"
    file.write_text(SMALL_POLICY)
    limits = Policy.from_file(file, Base.metadata).limits_for(_principal())
    assert (limits.max_nodes, limits.max_columns, limits.max_params) == (SMALL_NODES, 50, 40)
    file.write_text("[limits]\nmax_nodes = 0\n")
    with pytest.raises(PolicyError, match="max_nodes: must be a positive number"):
        Policy.from_file(file)


def _principal() -> Any:
    from dbapi_server import Principal

    return Principal(subject="w", claims={"role": "worker"})
