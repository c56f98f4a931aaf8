"""Everything one DB-API application holds: engine, metadata, executor, transactions, auth, policy."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import compiler as sa_compiler

from query_translation import DEFAULT_REGISTRY, WIRE_VERSION, MethodRegistry

from .auth import Authenticator
from .cursors import CursorRegistry
from .db_wall import DatabaseWall
from .executor import StatementExecutor
from .metrics import Metrics
from .outcomes import DEFAULT_TABLE, CommitOutcomes
from .policy import Policy
from .read_connections import ReadConnections
from .shutdown import Drain
from .transactions import TransactionManager

__all__ = ["ServerState", "dialect_state", "schema_fingerprint"]

_SIMPLE = (bool, int, float, str, type(None))
# instance attributes that describe the client side or objects, not the database's behaviour
_NOT_STATE = {"dbapi", "loaded_dbapi", "_on_connect_isolation_level", "isolation_level"}


def _simple(value: Any) -> bool:
    if isinstance(value, _SIMPLE):
        return True
    return isinstance(value, (tuple, list)) and all(isinstance(v, _SIMPLE) for v in value)


def dialect_state(dialect: sa.Dialect) -> dict[str, Any]:
    """The initialized dialect's plain-valued state (server version, capability flags...)."""
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in vars(dialect).items()
            if name not in _NOT_STATE and _simple(value)}


def driver_versions(dialect: sa.Dialect) -> dict[str, Any]:
    """The server driver module's version attributes (``sqlite_version_info``, ``__version__``)."""
    module = getattr(dialect, "loaded_dbapi", None) or getattr(dialect, "dbapi", None)
    found: dict[str, Any] = {}
    for name in dir(module) if module is not None else ():
        if "version" in name.lower():
            value = getattr(module, name, None)
            if isinstance(value, str | int) or (isinstance(value, tuple) and all(isinstance(v, int) for v in value)):
                found[name] = list(value) if isinstance(value, tuple) else value
    return found


def schema_fingerprint(metadata: sa.MetaData) -> str:
    """A hash of tables, columns and types, to tell whether two sides mean the same schema."""
    parts = []
    for table in sorted(metadata.tables.values(), key=lambda t: t.fullname):
        for column in table.columns:
            parts.append(f"{table.fullname}.{column.key}:{column.type!r}:{column.nullable}:{column.primary_key}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


@dataclass
class ServerState:
    engine: sa.Engine
    metadata: sa.MetaData
    auth: Authenticator
    policy: Policy
    idle_timeout: float = 60.0
    methods: MethodRegistry = DEFAULT_REGISTRY  # the named methods served (looked up per call)
    shutdown_grace: float = 30.0  # seconds open transactions may finish after SIGTERM
    wall: DatabaseWall | None = None  # database roles per policy role (db_wall), when configured
    # the commit outcome table (dbapi_server.outcomes); None: outcomes in this process's memory only
    outcome_table: str | None = DEFAULT_TABLE
    outcome_schema: str = ""  # "": the default (a schema of its own on PostgreSQL)
    outcome_ttl: float = 3600.0
    executor: StatementExecutor = field(init=False)
    read_engine: sa.Engine = field(init=False)
    reads: ReadConnections = field(init=False)
    transactions: TransactionManager = field(init=False)
    cursors: CursorRegistry = field(init=False)
    info: dict[str, Any] = field(init=False)
    metrics: Metrics = field(init=False)
    drain: Drain = field(init=False)

    def __post_init__(self) -> None:
        self.executor = StatementExecutor(self.engine, self.metadata)
        # FROM-linting (the cartesian product warning) is the client's business: its own engine
        # warned when it compiled the statement; here a client could only fill the server's log
        self.engine.dialect.compiler_linting = sa_compiler.NO_LINTING
        # one-shot reads (no client transaction) run in autocommit: a single SELECT is then one
        # database round trip instead of BEGIN + SELECT + ROLLBACK, with the same visibility; the
        # connections are kept between reads (read_connections.py)
        self.reads = ReadConnections(self.engine)
        self.read_engine = self.reads.read_engine
        outcomes = None
        if self.outcome_table is not None:
            if self.outcome_table in self.metadata.tables:
                raise ValueError(f"The commit outcome table {self.outcome_table!r} is one of the application's "
                                 "tables; name another (DBAPI_COMMIT_OUTCOME_TABLE).")
            outcomes = CommitOutcomes(self.engine, table_name=self.outcome_table, schema=self.outcome_schema,
                                      ttl=self.outcome_ttl, as_server=self._as_server,
                                      server_work=self._server_work)
            outcomes.create()
        self.transactions = TransactionManager(self.engine, idle_timeout=self.idle_timeout, outcomes=outcomes)
        self.cursors = CursorRegistry(idle_timeout=self.idle_timeout)
        self.transactions.also_reap.append(self.cursors.reap)
        with self.engine.connect():
            pass  # first connect initializes the dialect (server version, flags)
        dialect = self.engine.dialect
        self.info = {
            "wire_version": WIRE_VERSION,
            "dialect": dialect.name,
            "driver": dialect.driver,
            "server_version_info": list(dialect.server_version_info or ()),
            "dialect_state": dialect_state(dialect),
            "schema_hash": schema_fingerprint(self.metadata),
            "sqlalchemy": sa.__version__,
            "driver_versions": driver_versions(dialect),
        }
        self.drain = Drain(self, self.shutdown_grace)
        self.metrics = Metrics(self)
        self.transactions.start()

    @contextlib.contextmanager
    def _as_server(self) -> Iterator[None]:
        """Connections checked out in the block run as the login role (under the wall)."""
        if self.wall is None:
            yield
            return
        with DatabaseWall.as_server():
            yield

    @contextlib.contextmanager
    def _server_work(self, connection: sa.Connection) -> Iterator[None]:
        """The login role for the block inside a client's transaction (under the wall)."""
        if self.wall is None:
            yield
            return
        with DatabaseWall.server_work(connection):
            yield

    def read_connection(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """An autocommit connection for one read outside a client transaction (``with``): a kept
        one (:mod:`dbapi_server.read_connections`); under the database wall, one checked out now,
        whose checkout puts it under the caller's database role."""
        if self.wall is not None:
            return self.read_engine.connect()
        return self.reads.connection()

    @property
    def draining(self) -> bool:
        """Shutting down: no new transactions, not ready (:mod:`dbapi_server.shutdown`)."""
        return self.drain.draining

    def close(self) -> None:
        self.cursors.close_all()
        self.transactions.close()
        self.reads.close()
        self.engine.dispose()
