"""What the fuzzers share: the schema they attack, seed statements, the answer checks and counts.

Every answer the fuzzers get goes through :meth:`Recorder.check`, which counts it by route and
status and asserts the properties the DB-API promises for bad input: no 5xx, a JSON error envelope
with a documented code on every 4xx, and nothing in any answer that the server must not leak
(tracebacks, SQLAlchemy's SQL decoration, the database URL, host, port or password).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
import urllib3
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from tests.dbapi_server._support import PREFIX, RawApi

MARIADB = ["mariadb"] if os.environ.get("DBSESSION_TEST_MYSQL", "1") != "0" else []  # "0": leave it out
DOCS = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
# what a server must never say, unless the request said it first (a name echoed in "unknown table")
NEVER = ("Traceback", 'File "', "[SQL:", "[parameters:", "sqlalche.me", "site-packages", ".py\"", "psycopg.",
         "sqlite3.")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "fz_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40), unique=True)
    score: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2), default=Decimal("0.00"))
    active: Mapped[bool] = mapped_column(default=True)
    created: Mapped[datetime | None]
    orders: Mapped[list[Order]] = relationship(back_populates="user")


class Order(Base):
    __tablename__ = "fz_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("fz_users.id"))
    amount: Mapped[int] = mapped_column(sa.CheckConstraint("amount >= 0"))
    note: Mapped[str | None] = mapped_column(sa.String(200))
    user: Mapped[User] = relationship(back_populates="orders")


metadata = Base.metadata
SEED_ROWS = {
    # no explicit ids: PostgreSQL's sequences must stay in step for the fuzzer's valid inserts
    User.__table__: [{"name": f"user{i}", "score": Decimal(i), "active": i % 2 == 0,
                      "created": datetime(2024, 1, i)} for i in range(1, 6)],
    Order.__table__: [{"user_id": 1 + i % 5, "amount": i * 10, "note": f"n{i}"} for i in range(1, 11)],
}


SeedStatements = dict[str, tuple[Callable[[], Any], bool]]


def _seed_statements() -> SeedStatements:
    """name -> (statement builder, needs a transaction): select, join, subquery, DML, RETURNING."""
    users, orders = User.__table__, Order.__table__
    dml_cte = sa.insert(users).values(id=99, name="cte").returning(users.c.id).cte("ins")
    return {
        "select": (lambda: sa.select(User).where(User.name == "user1", User.score > 0)
                   .order_by(User.id).limit(3).offset(1), False),
        "join_group": (lambda: sa.select(User.name, sa.func.count(Order.id)).join(User.orders)
                       .group_by(User.name).having(sa.func.count(Order.id) > 0), False),
        "in_subquery": (lambda: sa.select(User).where(
            User.id.in_(sa.select(Order.user_id).where(Order.amount > 5))), False),
        "exists": (lambda: sa.select(User.id).where(sa.exists().where(Order.user_id == User.id)), False),
        "expanding_in": (lambda: sa.select(Order).where(Order.user_id.in_([1, 2, 3])), False),
        "union": (lambda: sa.union(sa.select(User.id).where(User.active),
                                   sa.select(Order.user_id).where(Order.note.like("n%"))), False),
        "window_case": (lambda: sa.select(
            sa.func.row_number().over(partition_by=Order.user_id, order_by=Order.amount),
            sa.case((Order.amount > 20, "big"), else_="small"), sa.cast(Order.amount, sa.String)), False),
        "for_update": (lambda: sa.select(User).where(User.id == 2).with_for_update(), True),
        "insert": (lambda: sa.insert(User).values(name="fuzz", score=Decimal("1.50"), active=True), True),
        "insert_returning": (lambda: sa.insert(orders).values(user_id=1, amount=5, note="x")
                             .returning(orders.c.id), True),
        "update": (lambda: sa.update(User).where(User.id == 1).values(score=User.score + 1), True),
        "update_returning": (lambda: sa.update(orders).where(orders.c.amount < 30)
                             .values(note="u").returning(orders.c.id, orders.c.note), True),
        "delete": (lambda: sa.delete(Order).where(Order.amount < 25), True),
        "select_from_dml_cte": (lambda: sa.select(dml_cte.c.id), False),
    }


SEEDS = _seed_statements()


@dataclass
class Seed:
    name: str
    payload: dict[str, Any]  # as it travels (plain JSON types)
    needs_txn: bool

    @property
    def writes(self) -> bool:
        return self.payload["stmt"]["statement"]["t"] in ("insert", "update", "delete")


def seed_payloads(api: RawApi, statements: SeedStatements = SEEDS) -> list[Seed]:
    """The /execute bodies an isolated client sends for the seed statements, on *api*'s dialect."""
    seeds = []
    for name, (build, needs_txn) in statements.items():
        statement = build()
        if isinstance(statement, sa.Update) and statement._returning and not api.dialect.update_returning:
            continue  # MariaDB: no UPDATE ... RETURNING
        payload = api.payload(statement)
        seeds.append(Seed(name, orjson.loads(orjson.dumps(payload)), needs_txn))
    return seeds


def documented_error_codes() -> set[str]:
    """The codes of wire-format.md's error table: every code the server answers must be there."""
    text = DOCS.read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| \d{3} \| `(\w+)`(?: / `(\w+)`)?", text, re.M)
    return {code for row in rows for code in row if code}


def fingerprint_tables(engine: sa.Engine, served: sa.MetaData = metadata) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every served table, in primary key order: equal before and after means no write."""
    with engine.connect() as conn:
        return {table.name: [tuple(row) for row in conn.execute(
            sa.select(table).order_by(*table.primary_key.columns))]
            for table in served.sorted_tables}


@dataclass
class Recorder:
    """Sends raw requests, checks every answer, counts outcomes by route and status."""

    base_url: str
    secrets: list[str]
    codes: set[str] = field(default_factory=documented_error_codes)
    counts: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)
    http: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(
        retries=False, timeout=urllib3.Timeout(connect=5, read=60)))

    def reset(self) -> None:
        self.counts.clear()
        self.error_codes.clear()

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
        response = self.http.request(method, self.base_url + PREFIX + path, body=body, headers=headers)
        return response.status, self.check(path, response.status, response.data, body or b"")

    def check(self, path: str, status: int, data: bytes, sent: bytes) -> Any:
        route = _route(path)
        self.counts[f"{route} {status}"] += 1
        text = data.decode("utf-8", "replace")
        sent_text = sent.decode("utf-8", "replace")
        assert status < 500, f"{route} answered {status}: {text[:1000]}\nrequest: {sent_text[:2000]}"
        for marker in (*NEVER, *self.secrets):
            assert marker not in text or marker in sent_text, f"{route} {status} leaks {marker!r}: {text[:1000]}"
        try:
            body = json.loads(data)
        except ValueError:
            raise AssertionError(f"{route} {status} answered non-JSON: {text[:500]}") from None
        if status >= 400:
            envelope = body.get("error") if isinstance(body, dict) else None
            assert isinstance(envelope, dict), f"{route} {status} without an error envelope: {text[:500]}"
            assert envelope.get("code") in self.codes, f"undocumented error code: {text[:500]}"
            assert isinstance(envelope.get("message"), str) and envelope["message"], text[:500]
            assert isinstance(envelope.get("retryable"), bool), text[:500]
            assert envelope.get("error_id") is None or re.fullmatch(r"[0-9a-f]{16}", envelope["error_id"])
            self.error_codes[f"{status} {envelope['code']}"] += 1
        return body

    def summary(self) -> dict[str, Any]:
        by_status: Counter[str] = Counter()
        for key, n in self.counts.items():
            by_status[key.rsplit(" ", 1)[1]] += n
        return {"requests": sum(self.counts.values()), "by_status": dict(sorted(by_status.items())),
                "by_route_status": dict(sorted(self.counts.items())),
                "by_error_code": dict(sorted(self.error_codes.items()))}


def _route(path: str) -> str:
    path = path.split("?", 1)[0]
    for pattern, name in ((r"^/cursors/[^/]*/(fetch|close)$", r"/cursors/{id}/\1"),
                          (r"^/transactions/[^/]*/([^/]*)$", r"/transactions/{id}/{verb}")):
        if re.match(pattern, path):
            return re.sub(pattern, name, path)
    return path if path in ("/execute", "/info", "/health", "/openapi.json") else "(other)"


def secrets_of(engine: sa.Engine) -> list[str]:
    """What no answer may contain: the URL in every spelling, its password, host:port, database."""
    url = engine.url
    found = [url.render_as_string(hide_password=False), str(url)]
    if url.password:
        found.append(str(url.password))
    if url.host:
        found += [f"{url.host}:{url.port or 5432}", f'"{url.host}"', f"port {url.port or 5432}"]
    if url.database and url.get_backend_name() != "mysql":
        # the SQLite file's path, PostgreSQL's database; MySQL / MariaDB's is its default schema,
        # which the handshake's dialect state must carry for the client to compile alike
        found.append(url.database)
    return [s for s in found if s]


def fresh_txn_id() -> str:
    return uuid.uuid4().hex


def junk_strings() -> Iterable[str]:
    """Names a hostile client might use: SQL and JSON metacharacters, unicode, control characters."""
    return ("fz_users; DROP TABLE fz_users --", "' OR 1=1 --", '"', "`", "\\", "\x00", "\u202e", "ü名",
            "a" * 5000, "fz_users.id", "$o", "@", "__class__", "../../etc/passwd", "%s", "{0}", "",
            "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
