"""A raw HTTP client for the DB-API: builds requests as an isolated client would, or breaks them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
import urllib3
from sqlalchemy import event

from dbsession import guard
from dbsession._binds import wire_parameters
from dbsession.dialect import isolated_dialect_class
from query_translation import encode_params, to_wire
from query_translation.fingerprint import sql_fingerprint
from tests.servers import RunningServer

PREFIX = "/dbapi/v1"
DEFAULT: Any = object()  # "the server's own valid token"
# what no answer may ever contain: tracebacks, SQL text, SQLAlchemy's own error decoration
LEAK_MARKERS = ("Traceback", 'File "', "[SQL:", "sqlalche.me", "SELECT ", "INSERT INTO", "UPDATE ")


Rows = Mapping[sa.Table, Sequence[Mapping[str, Any]]]


def define_items(metadata: sa.MetaData, *, unique: bool = True, qty_default: str | None = "0") -> sa.Table:
    """The ``items(id, name, qty)`` table most modules serve, added to *metadata*."""
    return sa.Table(
        "items", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(40), nullable=False, unique=unique),
        sa.Column("qty", sa.Integer, nullable=False, server_default=qty_default),
    )


# the shared schema: a metadata holding nothing but the standard ``items`` table
metadata = sa.MetaData()
items = define_items(metadata)


def make_engine(url: str | sa.URL, metadata: sa.MetaData, rows: Rows | None = None,
                seed: Callable[[sa.Connection], object] | None = None) -> sa.Engine:
    """A guard-exempt engine on *url* with *metadata*'s tables created, *rows* and then *seed* inserted."""
    engine = guard.exempt(sa.create_engine(url))
    metadata.create_all(engine)
    if rows or seed is not None:
        with engine.begin() as conn:
            for table, batch in (rows or {}).items():
                conn.execute(table.insert(), list(batch))
            if seed is not None:
                seed(conn)
    return engine


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        envelope = self.json["error"]
        assert set(envelope) >= {"code", "message", "error_id", "retryable"}, envelope
        assert isinstance(envelope["message"], str) and envelope["message"]
        return envelope  # type: ignore[no-any-return]


class RawApi:
    """Sends requests to a running DB-API and remembers every answer for the leak check."""

    def __init__(self, server: RunningServer, secrets: Iterable[str] = ()) -> None:
        self.server = server
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=30))
        self.replies: list[Reply] = []
        self.secrets = [s for s in secrets if s]
        self.info = self.get("/info").json
        self.dialect = isolated_dialect_class(self.info)()

    # -- HTTP -------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, *, token: Any = DEFAULT,
                headers: dict[str, str] | None = None) -> Reply:
        sent = dict(headers or {})
        token = self.server.token if token is DEFAULT else token
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        if body is not None and not isinstance(body, bytes):
            body = orjson.dumps(body)
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        response = self.http.request(method, self.server.url + PREFIX + path, body=body, headers=sent)
        reply = Reply(response.status, response.data, {k.lower(): v for k, v in response.headers.items()})
        self.replies.append(reply)
        return reply

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Reply:
        return self.request("POST", path, body, **kw)

    # -- statements -------------------------------------------------------------------------------
    def payload(self, stmt: Any, params: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """The /execute body an isolated client sends for *stmt*."""
        compiled = stmt.compile(dialect=self.dialect)
        state = getattr(compiled, "compile_state", None)
        root = state.statement if state is not None and getattr(state, "statement", None) is not None \
            else compiled.statement
        document = to_wire(root, compiled=compiled, core_statements=compiled._dbs_core)
        return {"stmt": document, "sql": sql_fingerprint(compiled),
                "params": encode_params(wire_parameters(compiled, [compiled.construct_params(params)],
                                                        self.dialect._dbs_adapter)), **extra}

    def execute(self, stmt: Any, params: dict[str, Any] | None = None, *, token: Any = DEFAULT,
                **extra: Any) -> Reply:
        return self.post("/execute", self.payload(stmt, params, **extra), token=token)

    def transaction(self, token: Any = DEFAULT) -> Txn:
        return Txn(self, uuid.uuid4().hex, token)

    # -- checks -----------------------------------------------------------------------------------
    def assert_no_leaks(self) -> None:
        for reply in self.replies:
            text = reply.body.decode("utf-8", "replace")
            if '"raw_sql":true' in text:  # the raw-SQL refusal quotes the caller's own fragment, only that
                text = text.split("The raw SQL: ", 1)[0]
            for marker in (*LEAK_MARKERS, *self.secrets):
                assert marker not in text, f"answer {reply.status} leaks {marker!r}: {text[:500]}"


@dataclass
class Txn:
    """A client transaction: numbers its requests like ``dbsession._dbapi.Connection`` does."""

    api: RawApi
    id: str
    token: Any = DEFAULT
    seq: int = 0
    begun: bool = field(default=False)

    def execute(self, stmt: Any, params: dict[str, Any] | None = None, **extra: Any) -> Reply:
        return self.api.post("/execute", self.next_payload(stmt, params, **extra), token=self.token)

    def next_payload(self, stmt: Any, params: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        self.seq += 1
        payload = self.api.payload(stmt, params, txn=self.id, seq=self.seq, **extra)
        if not self.begun:
            payload["begin"], self.begun = True, True
        return payload

    def finish(self, verb: str, *, token: Any = DEFAULT) -> Reply:
        self.seq += 1
        return self.api.post(f"/transactions/{self.id}/{verb}", {"seq": self.seq},
                             token=self.token if token is DEFAULT else token)

    def commit(self, **kw: Any) -> Reply:
        return self.finish("commit", **kw)

    def rollback(self, **kw: Any) -> Reply:
        return self.finish("rollback", **kw)


@contextmanager
def statements_reaching(engine: sa.Engine) -> Iterator[list[str]]:
    """The SQL of every statement any thread runs on *engine* inside the block (the DB-API's
    engine: the server runs in this process), collected by ``before_cursor_execute``."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def count_rows(engine: sa.Engine, table: sa.Table, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())
