"""Statements by hash: a document travels once per DB-API host and process, then its hash alone.

Against a DB-API in its own process: the second request of a statement carries no document; a
server that does not hold a hash (restarted, evicted, another instance) answers
``unknown_statement`` before anything runs, and the client sends the same request again with the
document - inside a transaction under the same sequence number; a hash that does not match its
document is refused.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from dbsession import DBSession, guard
from dbsession.transport import Transport
from query_translation.fingerprint import document_hash
from tests.dbsession._batch_models import Item, metadata
from tests.servers import DBAPIProcess, dbapi_process

METADATA = "tests.dbsession._batch_models:metadata"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DBAPIProcess]:
    url = f"sqlite:///{tmp_path_factory.mktemp('hash') / 'db.sqlite'}"
    engine = guard.exempt(sa.create_engine(url))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Item), [{"id": i, "name": f"n{i}", "qty": i} for i in range(1, 4)])
    engine.dispose()
    with dbapi_process(url, METADATA) as process:
        yield process


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any], int]]:
    """Every POST the client sends: (path, body as sent, HTTP status)."""
    seen: list[tuple[str, dict[str, Any], int]] = []
    original = Transport._send

    def spy(self: Transport, method: str, path: str, body: bytes | None, *args: Any, **kw: Any) -> Any:
        response, lost = original(self, method, path, body, *args, **kw)
        if method == "POST" and body is not None:
            seen.append((path, orjson.loads(body), response.status))
        return response, lost

    monkeypatch.setattr(Transport, "_send", spy)
    return seen


def sessions(server: DBAPIProcess) -> sessionmaker[Session]:
    return sessionmaker(class_=DBSession, database_access_isolation=True, database_api_host=server.url,
                        token=server.token)


def test_the_second_request_carries_the_hash_alone(server: DBAPIProcess,
                                                   sent: list[tuple[str, dict[str, Any], int]]) -> None:
    make = sessions(server)
    query = sa.select(Item.name).where(Item.id == sa.bindparam("i"))
    with make() as session:
        assert session.scalar(query, {"i": 1}) == "n1"
        assert session.scalar(query, {"i": 2}) == "n2"
    (_, first, _), (_, second, _) = [s for s in sent if s[0] == "/execute"]
    assert "stmt" in first and first["stmt_hash"] == document_hash(first["stmt"])
    assert "stmt" not in second and second["stmt_hash"] == first["stmt_hash"]


def _transport(make: sessionmaker[Session]) -> Transport:
    with make() as session:
        return session.connection().connection.dbapi_connection.transport  # type: ignore[union-attr,no-any-return]


class _AlwaysKnown(set[str]):
    """A client-side record that claims every hash was sent: the server must say otherwise."""

    def __contains__(self, item: object) -> bool:
        return True


def test_an_unknown_hash_is_answered_and_the_document_resent(server: DBAPIProcess,
                                                             sent: list[tuple[str, dict[str, Any], int]]) -> None:
    make = sessions(server)
    transport = _transport(make)
    # the client believes the server holds documents it never saw (as after a restart)
    kept, transport.known_statements = transport.known_statements, _AlwaysKnown()
    try:
        run_statements(make)
    finally:
        transport.known_statements = kept
    statuses = [(path, "stmt" in body, status) for path, body, status in sent]
    assert ("/execute", False, 409) in statuses and ("/execute", True, 200) in statuses
    seqs = [body.get("seq") for path, body, status in sent if "txn" in body and path == "/execute"]
    assert seqs and all(a <= b for a, b in zip(seqs, seqs[1:], strict=False))  # a resend repeats its number


def run_statements(make: sessionmaker[Session]) -> None:
    with make() as session:
        # never sent before: the client sends the hash alone, the server does not know it
        row = session.execute(sa.select(Item.id, Item.qty).where(Item.qty > 1).order_by(Item.id.desc())).all()
        assert [tuple(r) for r in row] == [(3, 3), (2, 2)]
        item = session.get(Item, 1, with_for_update=True)  # in a transaction: same seq, resent
        assert item is not None
        item.qty = 42
        session.flush()
        session.rollback()


def test_a_hash_that_does_not_match_its_document_is_refused(server: DBAPIProcess) -> None:
    make = sessions(server)
    captured: list[dict[str, Any]] = []
    original = Transport.post

    def keep(self: Transport, path: str, payload: Any, **kw: Any) -> Any:
        captured.append(orjson.loads(orjson.dumps(payload)))
        return original(self, path, payload, **kw)

    Transport.post = keep  # type: ignore[method-assign]
    try:
        with make() as session:
            session.scalar(sa.select(Item.name).where(Item.id == 3).limit(1).offset(0))
    finally:
        Transport.post = original  # type: ignore[method-assign]
    body = next(b for b in captured if "stmt" in b)
    body["stmt_hash"] = "f" * 64
    request = urllib.request.Request(f"{server.url}/dbapi/v1/execute", data=orjson.dumps(body), method="POST",
                                     headers={"Authorization": f"Bearer {server.token}",
                                              "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert orjson.loads(refused.value.read())["error"]["code"] == "malformed_request"
    del body["stmt"]  # and the hash alone is not taken as that document
    request = urllib.request.Request(f"{server.url}/dbapi/v1/execute", data=orjson.dumps(body), method="POST",
                                     headers={"Authorization": f"Bearer {server.token}",
                                              "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as unknown:
        urllib.request.urlopen(request, timeout=10)
    assert unknown.value.code == 409
    assert orjson.loads(unknown.value.read())["error"]["code"] == "unknown_statement"
