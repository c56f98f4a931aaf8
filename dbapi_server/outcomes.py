"""Commit outcomes kept in the database: any DB-API instance answers a retried commit truly.

A client whose commit answer was lost asks again; behind a load balancer the retry may reach
another instance, or the instance that committed may have died between COMMIT and its answer. Its
memory is then gone, and the database is the only witness. So:

* **Written in the transaction, just before COMMIT** (:meth:`CommitOutcomes.record`): a row
  ``(txn_id, 'committed', owner, decided_at)`` in the server's own table. The row commits with the
  work or not at all: the table is the truth. On PostgreSQL with psycopg the INSERT and COMMIT are
  one statement string, one round trip (:meth:`CommitOutcomes.record_and_commit`): a fenced
  transaction fails at the INSERT and PostgreSQL runs nothing after it, so it never commits.
* **Settled by any instance** (:meth:`CommitOutcomes.settle`) for a commit of a transaction it
  does not hold: it inserts ``(txn_id, 'rolled_back', ...)`` *if no row exists* (``INSERT ... ON
  CONFLICT DO NOTHING`` / ``INSERT IGNORE`` / ``INSERT OR IGNORE``), then reads the row. The insert
  is a fence:

  - the transaction committed: the conflict leaves its row; the answer is ``committed``;
  - its COMMIT is still running elsewhere (the killed instance's last bytes are still being
    processed, or a slow commit): its uncommitted row holds the unique key, so the insert waits
    for that transaction to end, then finds its row (committed) or inserts ours (it rolled back);
  - it never wrote its row (it rolled back, died before COMMIT, or is still open on another
    instance the load balancer no longer routes to): ours is inserted, and from then on that
    transaction can never commit - its own :meth:`record` hits the unique key and it rolls back.

  So an answer is never a guess: ``committed`` is what the database holds, and ``rolled_back``
  is made true by the fence.
* **Pruned** (:meth:`CommitOutcomes.prune`): rows older than ``ttl`` seconds (default an hour,
  ``DBAPI_COMMIT_OUTCOME_TTL``) are deleted by whichever instance's reaper gets there. The ttl must
  exceed how long clients go on retrying a commit (``commit_retry_deadline``, 30 s by default): a
  retry later than the ttl could find no row and be fenced as "not committed".

The table belongs to the server: it is not in the application's ``MetaData`` (no client statement
can name it); on PostgreSQL it lives in a schema of its own (``dbapi``), so the application's schema
- and what inspecting it or Alembic's autogenerate sees - stays the application's; it is created by
the DB-API's login role at start (``create``), and the database
roles of the second wall (:mod:`dbapi_server.db_roles`) are never granted it - under the wall the
row is written as the login role (``DatabaseWall.server_work``). Owners are kept as SHA-256 of the
token subject, so a commit retried by another subject is refused as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from ._request_schema import TXN_ID_RE
from .db_roles import LOGIN as _LOGIN
from .db_wall import _effective as _effective_role
from .errors import APIError

__all__ = ["COMMITTED", "DEFAULT_TABLE", "NOT_COMMITTED", "CommitInDoubt", "CommitOutcomes"]

log = logging.getLogger("dbapi_server.outcomes")

DEFAULT_TABLE = "dbapi_commit_outcomes"
DEFAULT_SCHEMA = "dbapi"  # on PostgreSQL: out of the application's schema (and its inspection)
COMMITTED = "committed"
NOT_COMMITTED = "rolled_back"


class CommitInDoubt(APIError):
    """The database could not be asked what became of a commit (it stays unreachable): retry."""

    status = 503
    code = "commit_in_doubt"


def owner_key(owner: str | None) -> str | None:
    return None if owner is None else hashlib.sha256(owner.encode()).hexdigest()


@contextlib.contextmanager
def _nothing(*args: Any) -> Iterator[None]:
    yield


class CommitOutcomes:
    """The outcome table of one database (see the module docstring)."""

    def __init__(self, engine: sa.Engine, *, table_name: str = DEFAULT_TABLE, schema: str | None = "",
                 ttl: float = 3600.0, settle_timeout: float = 10.0,
                 as_server: Callable[[], AbstractContextManager[None]] = _nothing,
                 server_work: Callable[[sa.Connection], AbstractContextManager[None]] = _nothing) -> None:
        self.engine = engine
        self.ttl = ttl
        self.settle_timeout = settle_timeout
        self._as_server = as_server  # fresh connections checked out as the login role
        self._server_work = server_work  # the login role inside a client's transaction
        if schema == "":  # the default: a schema of its own on PostgreSQL, beside the application's
            schema = DEFAULT_SCHEMA if engine.dialect.name == "postgresql" else None
        self.schema = schema
        self.metadata = sa.MetaData(schema=schema)
        self.table = sa.Table(
            table_name, self.metadata,
            # compared byte for byte on MySQL/MariaDB too (their default collations fold case:
            # "AB" and "ab" would share a row)
            sa.Column("txn_id", sa.String(128).with_variant(
                mysql.VARCHAR(128, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"), primary_key=True),
            sa.Column("outcome", sa.String(16), nullable=False),
            sa.Column("owner", sa.String(64), nullable=True),  # SHA-256 of the token subject
            sa.Column("decided_at", sa.BigInteger, nullable=False),  # Unix seconds
            sa.Index(f"ix_{table_name}_decided_at", "decided_at"),
        )
        self._last_prune = 0.0
        self._insert = sa.insert(self.table)  # built once: executed with each commit's values
        # PostgreSQL with psycopg 3: the row and COMMIT go in one round trip (record_and_commit)
        self._joined_insert: str | None = None
        if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
            preparer = engine.dialect.identifier_preparer
            columns = ", ".join(preparer.format_column(c) for c in self.table.c)
            self._joined_insert = f"INSERT INTO {preparer.format_table(self.table)} ({columns}) VALUES "

    # -- setup --------------------------------------------------------------------------------
    def create(self) -> None:
        """Create the table if it is missing (several instances may start at once)."""
        with self._as_server():
            try:
                if self.schema is not None and not sa.inspect(self.engine).has_schema(self.schema):
                    with self.engine.begin() as conn:
                        conn.execute(sa.schema.CreateSchema(self.schema, if_not_exists=True))
                self.metadata.create_all(self.engine, checkfirst=True)
            except sa.exc.DBAPIError as exc:
                # another instance created it between our check and our CREATE - or the DB-API's
                # login may not create tables: then a DBA creates it (the DDL is in the message)
                if not sa.inspect(self.engine).has_table(self.table.name, schema=self.schema):
                    raise ValueError(
                        f"The DB-API cannot create its commit outcome table {self.table.name!r} "
                        f"({type(exc.orig).__name__}: {str(exc.orig).splitlines()[0]}). Create it as the "
                        f"owner, the DB-API's login allowed to use it (schema USAGE; SELECT, INSERT, DELETE on "
                        f"the table) and no one else:\n{self.ddl()}\nor set "
                        "DBAPI_COMMIT_OUTCOMES=memory (outcomes then end with the process).") from None

    def ddl(self) -> str:
        """The CREATE statements of the table and its index, for this database."""
        from sqlalchemy.schema import CreateIndex, CreateSchema, CreateTable

        dialect = self.engine.dialect
        statements: list[Any] = []
        if self.schema is not None:
            statements.append(CreateSchema(self.schema, if_not_exists=True).compile(dialect=dialect))
        statements.append(CreateTable(self.table).compile(dialect=dialect))
        statements += [CreateIndex(index).compile(dialect=dialect) for index in self.table.indexes]
        return ";\n".join(str(s).strip() for s in statements) + ";"

    # -- in the committing transaction ---------------------------------------------------------
    def record(self, connection: sa.Connection, txn_id: str, owner: str | None) -> None:
        """Write the ``committed`` row in *connection*'s transaction (call just before COMMIT).

        Raises ``sqlalchemy.exc.IntegrityError`` when another instance has fenced the transaction.
        Nothing is written in a PostgreSQL transaction a failed statement aborted: its COMMIT rolls
        it back (without an error, as on a direct connection), so no row is the truth.
        """
        if _aborted(connection):
            return
        with self._server_work(connection):
            connection.execute(self._insert, {"txn_id": txn_id, "outcome": COMMITTED, "owner": owner_key(owner),
                                              "decided_at": int(time.time())})

    def joins_commit(self, connection: sa.Connection, txn_id: str) -> bool:
        """Whether :meth:`record_and_commit` sends the row and COMMIT in one round trip on
        *connection*: PostgreSQL with psycopg 3, a transaction begun that no failed statement
        aborted, the login role in force (no wall role to leave for the row and come back to), an
        id the API takes (letters, digits, '-', '_': written as a literal, nothing to escape), and nothing
        listening for SQLAlchemy's ``commit`` event (its listeners run before COMMIT is sent)."""
        return (self._joined_insert is not None and TXN_ID_RE.fullmatch(txn_id) is not None
                and not connection.dispatch.commit
                # psycopg 3: inside a transaction block, no failed statement (pq.TransactionStatus.INTRANS)
                and getattr(connection.connection.driver_connection, "pgconn", None) is not None
                and connection.connection.driver_connection.pgconn.transaction_status == 2  # type: ignore[union-attr]
                and _effective_role(connection) == _LOGIN)

    def record_and_commit(self, connection: sa.Connection, txn_id: str, owner: str | None) -> None:
        """The ``committed`` row and COMMIT as one statement string, one database round trip
        (call only when :meth:`joins_commit`): what :meth:`record` then COMMIT do, one round trip
        less. A fenced transaction fails at the INSERT (``IntegrityError``) and the COMMIT after
        it never runs (PostgreSQL stops a query string at its first error); the transaction is
        then aborted, as after :meth:`record` raised. If the connection breaks, whether COMMIT ran
        is unknown: the caller settles it as for a broken COMMIT. The caller still ends
        SQLAlchemy's transaction (``commit()``: psycopg sends nothing for an idle connection)."""
        assert self._joined_insert is not None
        key = owner_key(owner)  # hex digits, or NULL
        owner_sql = "NULL" if key is None else f"'{key}'"
        sql = f"{self._joined_insert}('{txn_id}', '{COMMITTED}', {owner_sql}, {int(time.time())}); COMMIT"
        try:
            # without parameters psycopg sends the simple query protocol, which takes several statements
            connection.exec_driver_sql(sql, execution_options={"no_parameters": True})
        except sa.exc.DBAPIError as exc:
            if not self.fenced(exc):
                # COMMIT's own failure (a deferred constraint, a serialization failure...): reported
                # as SQLAlchemy reports a failed COMMIT, without a statement
                exc.statement, exc.params = None, None
            raise

    def fenced(self, exc: sa.exc.DBAPIError) -> bool:
        """Whether *exc* is this table's unique key refusing the ``committed`` row: another
        instance fenced the transaction (and not, say, a deferred constraint failing at COMMIT)."""
        if not isinstance(exc, sa.exc.IntegrityError):
            return False
        diag = getattr(exc.orig, "diag", None)
        if diag is None:  # not psycopg: the row's INSERT ran alone (record), its only statement
            return True
        return (getattr(exc.orig, "sqlstate", None) == "23505" and diag.table_name == self.table.name
                and (self.schema is None or diag.schema_name == self.schema))

    # -- for a commit this instance does not hold ----------------------------------------------
    def settle(self, txn_id: str, owner: str | None) -> tuple[str, str | None]:
        """(outcome, owner key) of *txn_id*, fencing it as not committed if it has no row.

        Keeps trying for ``settle_timeout`` seconds while the database cannot be reached, then
        raises :class:`CommitInDoubt` (HTTP 503, retryable).
        """
        give_up = time.monotonic() + self.settle_timeout
        pause = 0.1
        while True:
            try:
                return self._settle_once(txn_id, owner)
            except (sa.exc.DBAPIError, sa.exc.TimeoutError) as exc:  # TimeoutError: the pool is full
                if isinstance(exc, sa.exc.DBAPIError) and not (
                        exc.connection_invalidated or _lock_timeout(exc)
                        or isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))):
                    raise
                if time.monotonic() + pause > give_up:
                    log.warning("could not settle the outcome of transaction %s: %s", txn_id,
                                getattr(exc, "orig", exc), extra={"txn": txn_id})
                    raise CommitInDoubt(
                        f"The outcome of transaction {txn_id} cannot be read from the database now "
                        "(it is unreachable or busy); ask again.", retryable=True) from None
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _settle_once(self, txn_id: str, owner: str | None) -> tuple[str, str | None]:
        fence = self._insert_if_absent(dict(txn_id=txn_id, outcome=NOT_COMMITTED, owner=owner_key(owner),
                                            decided_at=int(time.time())))
        with self._as_server(), self.engine.connect() as conn:
            options: dict[str, Any] = {}
            if conn.dialect.name in ("postgresql", "mysql", "mariadb"):
                # the fence may wait for another transaction's row: it must then see that row,
                # whatever the engine's default isolation is
                options["isolation_level"] = "READ COMMITTED"
            conn = conn.execution_options(**options)
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    # never wait forever on a transaction that hangs: answer "in doubt" instead
                    conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
                conn.execute(fence)
            row = conn.execute(sa.select(self.table.c.outcome, self.table.c.owner)
                               .where(self.table.c.txn_id == txn_id)).first()
            conn.rollback()
        if row is None:  # the fence was not stored as sent (it cannot be, for the ids the API takes)
            raise CommitInDoubt(f"The outcome of transaction {txn_id} could not be recorded; ask again.",
                                retryable=True)
        return str(row.outcome), row.owner

    def _insert_if_absent(self, values: dict[str, Any]) -> sa.Executable:
        name = self.engine.dialect.name
        if name == "postgresql":
            return postgresql.insert(self.table).values(**values).on_conflict_do_nothing(index_elements=["txn_id"])
        if name == "sqlite":
            return sqlite.insert(self.table).values(**values).on_conflict_do_nothing()
        if name in ("mysql", "mariadb"):
            return sa.insert(self.table).values(**values).prefix_with("IGNORE")
        raise NotImplementedError(f"commit outcomes are not implemented for {name}")

    # -- pruning ------------------------------------------------------------------------------
    def prune(self, *, every: float = 60.0, now: float | None = None) -> int:
        """Delete rows older than ``ttl`` (at most once per *every* seconds); returns how many."""
        clock = time.monotonic()
        if clock - self._last_prune < every:
            return 0
        self._last_prune = clock
        horizon = int((time.time() if now is None else now) - self.ttl)
        with self._as_server(), self.engine.begin() as conn:
            result = conn.execute(sa.delete(self.table).where(self.table.c.decided_at < horizon))
        return max(result.rowcount, 0)

    def count(self) -> int:
        with self._as_server(), self.engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(self.table)) or 0)




def _aborted(connection: sa.Connection) -> bool:
    """Whether *connection*'s PostgreSQL transaction was aborted by a failed statement."""
    raw = connection.connection.driver_connection
    info = getattr(raw, "info", None)  # psycopg 3
    if info is not None and hasattr(info, "transaction_status"):
        return int(info.transaction_status) == 3  # pq.TransactionStatus.INERROR
    status = getattr(raw, "get_transaction_status", None)  # psycopg2
    return callable(status) and status() == 3


def _lock_timeout(exc: sa.exc.DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "55P03"
