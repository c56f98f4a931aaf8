"""Each request under its role's database role: the second wall at request time (PostgreSQL).

**Mechanism.** What a pooled connection's session runs as - a database role and the claim
settings its row-level-security policies read - is remembered in the connection record's
``info`` and changed only when the next user needs something else. The user is named by a
context variable the request sets once it has authenticated its caller
(:meth:`DatabaseWall.act_as`; the server's own work and every user of the engine outside a
request get the login role). A pool ``checkout`` listener compares and, when they differ, runs
one ``SELECT set_config('role', ..., false), set_config('dbsession.claim_...', ..., false)``
outside any transaction (on an autocommit-switched driver connection), so the setting outlives
the transactions that follow. A one-shot read, a transaction and a streamed cursor therefore
cost nothing extra while a connection keeps serving one role with the same claims, and one round
trip when it changes hands (``docs/security.md`` has the measurements and the alternatives:
``SET ROLE`` + ``RESET ROLE`` per checkout, a transaction per read with ``SET LOCAL ROLE``).

Inside a transaction held across requests the session setting from its first checkout is in
force; a later request whose role or claims differ, and a named method (trusted server code,
which runs as the login role), change it with ``set_config(..., true)`` - ``SET LOCAL`` - which
ends with the transaction. A savepoint rolled back restores what was in force when it was taken:
client savepoints are only ever taken under the client's identity, so the remembered state
stays true, except after a mid-transaction change of the client's identity, after which it is
set again before every request of that transaction.

A PostgreSQL permission error (SQLSTATE 42501: a privilege or a row-level-security check) raised
while a wall role is in force is the caller's refusal: 403 ``policy_violation`` with
``wall: "database"``. Like any failed statement, it aborts a PostgreSQL transaction.

What the wall relies on: ``SET ROLE`` is checked against the *session* user, so a statement that
can run ``RESET ROLE`` or ``set_config('role', ...)`` leaves it. SQL text is refused for walled
roles (roles allowed raw SQL or DDL run as the login role) and ``set_config`` is refused for
every role, before the database.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ._db_catalog import DatabaseRolesError, apply, verify
from .auth import Principal
from .db_roles import LOGIN, DatabaseRoles, Identity
from .errors import APIError, new_error_id
from .policy import Policy
from .refusals import PolicyViolation

__all__ = ["DatabaseWall", "DatabaseWallError", "compile_roles", "open_wall"]

log = logging.getLogger("dbapi_server.db_wall")

_ACTING: ContextVar[Identity] = ContextVar("dbs_wall_identity", default=LOGIN)
_SESSION = "dbs_wall_session"  # record info: what the session holds outside transactions
_TXN = "dbs_wall_txn"  # record info: (weakref to the transaction, identity in force, set before every request)
_UNKNOWN = Identity(None, sql_text=True)  # never equal to a wanted state: set again at next use


class DatabaseWallError(APIError):
    """The server could not put a connection under a database role: its setup, never the caller."""

    status = 500
    code = "internal_error"


def _state(identity: Identity) -> Identity:
    """What a session holds for *identity* (its flags are about the caller, not the session)."""
    return Identity(identity.role, identity.settings) if identity.deny or identity.sql_text else identity


def _settings_sql(identity: Identity, local: bool) -> tuple[str, dict[str, Any]]:
    scope = "true" if local else "false"
    params: dict[str, Any] = {"r": identity.role or "none"}
    parts = [f"set_config('role', %(r)s, {scope})"]
    for n, (name, value) in enumerate(identity.settings):
        params[f"n{n}"], params[f"v{n}"] = name, value
        parts.append(f"set_config(%(n{n})s, %(v{n})s, {scope})")
    return "SELECT " + ", ".join(parts), params


def _on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Give the session what the checking-out user runs as, if it holds something else."""
    wanted = _ACTING.get()
    if wanted.deny:
        raise PolicyViolation("The caller's role has no database role under the DB-API's policy.")
    record.info.pop(_TXN, None)
    held = record.info.get(_SESSION, LOGIN)
    state = _state(wanted)
    if held == state and not wanted.sql_text:
        return
    record.info[_SESSION] = _UNKNOWN  # until the change is known to have happened
    sql, params = _settings_sql(state, local=False)
    autocommit = dbapi_connection.autocommit
    try:
        dbapi_connection.autocommit = True  # a session setting, outside any transaction
        with dbapi_connection.cursor() as cursor:
            cursor.execute(sql, params)
    except Exception as exc:
        error_id = new_error_id()
        log.error("could not switch a connection to database role %s, error id %s", state.role, error_id,
                  exc_info=exc)
        raise DatabaseWallError(f"The DB-API could not switch to its database role; its log has the details "
                                f"under error id {error_id}.", error_id=error_id) from None
    finally:
        if not dbapi_connection.closed:
            dbapi_connection.autocommit = autocommit
    # SQL text can change the session without our knowing: whoever comes next sets it again
    record.info[_SESSION] = _UNKNOWN if wanted.sql_text else state


def _effective(connection: sa.Connection) -> Identity:
    """What *connection* runs as right now (inside its transaction, if it has one)."""
    memo = connection.info.get(_TXN)
    txn = connection.get_transaction()
    if memo is not None and txn is not None and memo[0]() is txn:
        return memo[1]  # type: ignore[no-any-return]
    return connection.info.get(_SESSION, LOGIN)  # type: ignore[no-any-return]


def _set_local(connection: sa.Connection, identity: Identity, sticky: bool) -> None:
    """``SET LOCAL`` role and claims in the connection's transaction (begun if need be)."""
    sql, params = _settings_sql(identity, local=True)
    connection.info[_TXN] = (lambda: None, _UNKNOWN, True)  # until it is known to have happened
    connection.exec_driver_sql(sql, params)
    txn = connection.get_transaction()
    if txn is not None:
        connection.info[_TXN] = (weakref.ref(txn), identity, sticky)


def _on_error(context: Any) -> None:
    """A permission error under a wall role: the caller's refusal, not a database failure."""
    orig = context.original_exception
    if (getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) != "42501":
        return
    connection = context.connection
    if connection is None or connection.closed or _effective(connection).role is None:
        return
    raise PolicyViolation("The database refused the statement: the role's database privileges or row "
                          "security do not allow it (the DB-API's second wall, docs/security.md).",
                          wall="database", sqlstate="42501")


class DatabaseWall:
    """The compiled roles, enforced on one engine's connections."""

    def __init__(self, engine: sa.Engine, roles: DatabaseRoles) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("Database roles (the second wall) are built for PostgreSQL only; see "
                             "docs/security.md for SQLite and MariaDB.")
        self.roles = roles
        if not event.contains(engine, "checkout", _on_checkout):
            event.listen(engine, "checkout", _on_checkout)
        if not event.contains(engine, "handle_error", _on_error):
            event.listen(engine, "handle_error", _on_error)

    def act_as(self, principal: Principal) -> None:
        """Connections checked out from now on, in this request, run as *principal*'s role."""
        _ACTING.set(self.roles.identity(principal))

    @staticmethod
    def end_request() -> None:
        _ACTING.set(LOGIN)

    def enter(self, connection: sa.Connection, principal: Principal) -> None:
        """Before a request in a transaction held across requests: run it as *principal*."""
        wanted = self.roles.identity(principal)
        if wanted.deny:
            raise PolicyViolation("The caller's role has no database role under the DB-API's policy.")
        if wanted.sql_text:
            return  # unwalled (raw SQL): what its own SQL set is its business; checkout resets it after
        state = _state(wanted)
        memo = connection.info.get(_TXN)
        txn = connection.get_transaction()
        sticky = memo is not None and txn is not None and memo[0]() is txn and memo[2]
        if sticky or _effective(connection) != state:
            _set_local(connection, state, sticky=True)

    @staticmethod
    @contextmanager
    def as_server() -> Iterator[None]:
        """Connections checked out in the block run as the login role (the server's own work)."""
        token = _ACTING.set(LOGIN)
        try:
            yield
        finally:
            _ACTING.reset(token)

    @staticmethod
    @contextmanager
    def server_work(connection: sa.Connection) -> Iterator[None]:
        """Trusted server code (a named method) on *connection*: the login role for the block, then
        what was in force before (in a transaction; outside one, check out under ``as_server``)."""
        token = _ACTING.set(LOGIN)
        before = _effective(connection) if connection.in_transaction() else LOGIN
        memo = connection.info.get(_TXN)
        sticky = bool(memo and memo[2])
        try:
            if before != LOGIN:
                _set_local(connection, LOGIN, sticky)
            yield
        except BaseException:
            if before != LOGIN and not connection.closed:
                try:  # a failed restore must not hide why the work failed; the next request sets it again
                    _set_local(connection, before, sticky)
                except Exception:
                    log.info("could not restore the caller's database role after a failed method", exc_info=True)
            raise
        else:
            if before != LOGIN:
                _set_local(connection, before, sticky)
        finally:
            _ACTING.reset(token)


MODES = ("off", "verify", "apply")


def open_wall(engine: sa.Engine, metadata: sa.MetaData, policy: Policy, setting: str | DatabaseRoles, *,
              namespace: str | None = None, row_security: bool = True) -> DatabaseWall | None:
    """The wall a server configured with *setting* runs: ``"off"`` (none), ``"verify"`` (the
    database must already hold the compiled roles), ``"apply"`` (converge it first), or roles
    compiled elsewhere (verified). Raises ``DatabaseRolesError`` when the database does not match."""
    if setting != "off" and engine.dialect.name != "postgresql":
        raise ValueError("Database roles (the second wall) are built for PostgreSQL only; see "
                         "docs/security.md for SQLite and MariaDB.")
    if isinstance(setting, str):
        if setting not in MODES:
            raise ValueError(f"Database roles must be one of {', '.join(MODES)}, not {setting!r}.")
        if setting == "off":
            return None
        roles = compile_roles(engine, metadata, policy, namespace=namespace, row_security=row_security)
        if setting == "apply":
            apply(engine, roles)
    else:
        roles = setting
    for warning in roles.warnings:
        log.warning("database roles: %s", warning)
    problems = verify(engine, roles)
    if problems:
        raise DatabaseRolesError("The database roles do not match the policy: " + " ".join(problems))
    return DatabaseWall(engine, roles)


def compile_roles(engine: sa.Engine, metadata: sa.MetaData, policy: Policy, *, namespace: str | None = None,
                  row_security: bool = True) -> DatabaseRoles:
    """*policy* compiled for *engine*'s database (the namespace defaults to the database's name)."""
    if engine.dialect.name != "postgresql":
        raise ValueError("Database roles (the second wall) are built for PostgreSQL only; see "
                         "docs/security.md for SQLite and MariaDB.")
    if namespace is None:
        with engine.connect() as conn:
            namespace = conn.execute(sa.text("SELECT current_database()")).scalar_one()
    return DatabaseRoles.from_policy(policy, metadata, namespace=namespace, row_security=row_security)
