"""A PEP 249 stand-in "driver" whose connections talk to the DB-API.

SQLAlchemy's engine, pool and execution context run unchanged on top of it. What differs from a
real driver: ``execute`` receives the execution context (via the dialect's ``do_execute``) and
sends the statement's *structure* and its parameters as the server's driver must bind them, not a
SQL string; rows come
back raw, exactly as the server's driver produced them, so the client's result processors run
once, as on a direct connection.

Transactions are lazy: a connection holds no server transaction until a statement that needs one
(a write, ``SELECT ... FOR UPDATE``, a savepoint). Plain reads before that run on any pooled server
connection, and committing or rolling back a connection that never wrote costs no round trip.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc

from query_translation import TRANSMITTED_BUILTINS, decode_rows, decode_value
from query_translation.reflection import decode_reflected

from .config import get_settings
from .exceptions import DBAPIRequestError
from .transport import DatabaseErrorReply, ServerUnreachable, Transport, transport_for

apilevel = "2.0"
threadsafety = 1
paramstyle = "named"  # unused: the dialect is constructed with the server driver's paramstyle


class Warning(Exception):
    pass


class Error(Exception):
    pass


class InterfaceError(Error):
    pass


class DatabaseError(Error):
    pass


class DataError(DatabaseError):
    pass


class OperationalError(DatabaseError):
    pass


class IntegrityError(DatabaseError):
    pass


class InternalError(DatabaseError):
    pass


class ProgrammingError(DatabaseError):
    pass


class NotSupportedError(DatabaseError):
    pass


class DisconnectError(OperationalError):
    """The DB-API is unreachable or lost our transaction: SQLAlchemy treats it as a disconnect."""


DEFAULT_COMMIT_RETRY_DEADLINE = 30.0


def new_txn_id() -> str:
    """A transaction's id: 128 random bits as 32 hex digits (``uuid.uuid4().hex`` costs 5x more)."""
    return os.urandom(16).hex()

NOT_SERVED: Any = object()  # an older DB-API without the catalog routes


class CommitOutcomeUnknownError(sa_exc.DontWrapMixin, sa_exc.OperationalError, DisconnectError):
    """A commit may have succeeded: it may have reached the DB-API, and its outcome could not be learned.

    Raised by ``commit()`` instead of a plain disconnect when an attempt of the commit may have
    reached the server but no answer to it arrived, and asking again did not tell the outcome
    before ``commit_retry_deadline`` - or the DB-API that answered no longer knew the
    transaction (it restarted, or the retry reached another instance). It is
    ``sqlalchemy.exc.OperationalError`` with ``connection_invalidated``, as a direct session's lost
    connection during COMMIT, so existing handlers still catch it; ``orig`` is a
    :class:`DisconnectError`. Being this module's :class:`DisconnectError` as well makes the
    engine treat it as the driver's disconnect (the pooled connection is invalidated), and
    ``DontWrapMixin`` keeps SQLAlchemy from wrapping it a second time. ``txn_id`` names the
    transaction, as the DB-API's log does.
    """

    def __init__(self, txn_id: str, reason: str) -> None:
        message = (
            f"The commit of transaction {txn_id} may have succeeded: {reason} Do not treat it as "
            "failed and do not simply run the work again: check whether its changes are in the "
            "database (or make the work idempotent) before retrying it.")
        sa_exc.OperationalError.__init__(self, None, None, DisconnectError(message),
                                         connection_invalidated=True)
        self.txn_id = txn_id
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.txn_id, self.reason)


PEP249_ERRORS: dict[str, type[Error]] = {
    cls.__name__: cls
    for cls in (Error, InterfaceError, DatabaseError, DataError, OperationalError, IntegrityError,
                InternalError, ProgrammingError, NotSupportedError)
}



def _database_error(reply: DatabaseErrorReply, *, disconnect: bool = False) -> Exception:
    """Re-create the error the server's driver raised, under its PEP 249 class name.

    The message ends with the DB-API's error id (the server logged the full detail - SQL, driver
    message - under it) and the request id; both are attributes too (``error_id``, ``request_id``).
    """
    envelope = reply.envelope
    error_id = envelope.get("error_id")
    ids = [f"{name} {value}" for name, value in (("DB-API error id", error_id), ("request id", reply.request_id))
           if value]
    message = envelope.get("message", "database error") + (f" ({', '.join(ids)})" if ids else "")
    code = envelope.get("code")
    if code in ("statement_error", "driver_error"):
        orig = TRANSMITTED_BUILTINS.get(envelope.get("orig_type", ""), ValueError)(message)
        orig.error_id = error_id  # type: ignore[attr-defined]
        orig.request_id = reply.request_id  # type: ignore[attr-defined]
        if code == "statement_error":  # rendering a literal_execute bind failed: wrapped, as directly
            return sa_exc.StatementError(message, None, None, orig)
        return orig
    error_class = DisconnectError if disconnect else PEP249_ERRORS.get(envelope.get("dbapi_class", ""), DatabaseError)
    error = error_class(message)
    error.error_id = error_id  # type: ignore[attr-defined]
    error.request_id = reply.request_id  # type: ignore[attr-defined]
    for attr in ("sqlstate", "pgcode", "errno"):
        if envelope.get(attr) is not None:
            setattr(error, attr, envelope[attr])
    if envelope.get("sqlstate") is not None:
        error.pgcode = envelope["sqlstate"]  # type: ignore[attr-defined]
    if envelope.get("errno") is not None:
        error.args = (envelope["errno"], message)
    return error


class Connection:
    """One logical client connection; owns at most one server-side transaction."""

    def __init__(self, transport: Transport, *, eager_transactions: bool = False,
                 commit_retry_deadline: float = DEFAULT_COMMIT_RETRY_DEADLINE,
                 close_resets_rowcount: bool = False) -> None:
        self.transport = transport
        self.close_resets_rowcount = close_resets_rowcount
        self.eager_transactions = eager_transactions
        self.commit_retry_deadline = commit_retry_deadline
        self.txn: str | None = None
        self.seq = 0
        self.closed = False
        # A commit's final flush (dbsession._commit_batch): its UPDATEs wait here, with the row
        # count the ORM expects, and travel together - with the COMMIT at the end of the flush.
        self.deferral: Any = None
        self.deferred: list[Deferred] = []
        self.commit_error: BaseException | None = None  # what the COMMIT that travelled with them raised
        self.registered_functions: dict[str, Any] = {}

    # sqlite3's user-defined SQL functions, which applications register in a "connect" listener
    # (MLflow: REGEXP, PERCENTILE). Statements run on the DB-API's connections, so a function must
    # be registered there (by the DB-API's deployment); here the registration is only recorded,
    # and a statement using a function the DB-API lacks fails there as it would directly
    # (OperationalError "no such function").
    def create_function(self, name: str, narg: int, func: Any, *, deterministic: bool = False) -> None:
        self.registered_functions[name.lower()] = func

    def create_aggregate(self, name: str, n_arg: int, aggregate_class: Any) -> None:
        self.registered_functions[name.lower()] = aggregate_class

    def create_window_function(self, name: str, num_params: int, aggregate_class: Any) -> None:
        self.registered_functions[name.lower()] = aggregate_class

    def create_collation(self, name: str, callable: Any) -> None:
        self.registered_functions[name.lower()] = callable

    def cursor(self, stream: bool = False) -> Cursor:
        return StreamingCursor(self) if stream else Cursor(self)

    # -- transaction control ----------------------------------------------------------------
    def commit(self) -> None:
        if self.commit_error is not None:  # the batch's COMMIT failed or was lost: raised here, as directly
            error, self.commit_error = self.commit_error, None
            raise error
        if self.deferred:
            self.deferral.send_pending(self, commit=False)
        self._finish("commit")

    def rollback(self) -> None:
        self.deferred, self.commit_error = [], None  # never sent: nothing of them ran
        self._finish("rollback")

    def _finish(self, verb: str) -> None:
        if self.txn is None:
            return
        txn, self.txn = self.txn, None
        self.seq += 1
        # A commit's outcome must be learned: it retries up to its deadline. A rollback's need not
        # (nothing commits either way; the server's reaper ends what we could not), so it does
        # not hold up pool resets and close() for that long.
        deadline = self.commit_retry_deadline if verb == "commit" else None
        try:
            self.transport.post(f"/transactions/{txn}/{verb}", {"seq": self.seq}, replay_safe=True,
                                deadline=deadline, route=txn)
        except ServerUnreachable as exc:
            if verb == "commit" and exc.answer_lost:
                raise CommitOutcomeUnknownError(
                    txn, f"{exc} (commit_retry_deadline sets how long the client keeps asking.)") from exc
            raise DisconnectError(str(exc)) from exc  # never reached the server: nothing committed
        except DatabaseErrorReply as exc:
            raise _database_error(exc) from None  # the commit ran and failed
        except DBAPIRequestError as exc:
            # An answer to a retry that does not say what became of the transaction: the earlier
            # attempt may have committed it. 410 with an ``outcome`` is definite (not committed);
            # 410 without one means this DB-API never heard of it (restarted, or another instance).
            if verb == "commit" and exc.answer_lost and not (exc.status == 410 and exc.outcome):
                raise CommitOutcomeUnknownError(
                    txn, f"an attempt's answer was lost, and the DB-API that answered the retry "
                    f"cannot tell: {exc}") from exc
            if exc.code == "transaction_not_here":
                # its instance stopped, or the request reached another one: as when a direct
                # connection is lost, and (with an outcome) definitely not committed
                raise DisconnectError(str(exc)) from exc
            raise

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.deferred, self.commit_error = [], None
        if self.txn is not None:
            try:
                self.rollback()
            except Error:
                pass  # the server's idle timeout rolls back what we could not

    # -- statement execution ----------------------------------------------------------------
    def run(self, payload: dict[str, Any], *, needs_txn: bool, path: str = "/execute",
            route: str | None = None) -> dict[str, Any]:
        """Send one statement (in the connection's transaction, begun if it needs one).

        *route*: for a request outside a transaction, the key a load balancer routes it by (a
        streamed result's, so its pages reach the instance that holds its cursor).
        """
        if self.closed:
            raise InterfaceError("This DB-API connection is closed.")
        if self.deferred:  # they come first, as they would have run first
            self.deferral.send_pending(self, commit=False)
        begin = False
        if self.txn is None and (needs_txn or self.eager_transactions):
            self.txn, self.seq, begin = new_txn_id(), 0, True
        if self.txn is not None:
            self.seq += 1
            payload["txn"], payload["seq"] = self.txn, self.seq
            if begin:
                payload["begin"] = True
        try:
            return self._post(path, payload, [payload],  # type: ignore[no-any-return]
                              route=self.txn if self.txn is not None else route)
        except ServerUnreachable as exc:
            self.txn = None
            raise DisconnectError(str(exc)) from exc
        except DatabaseErrorReply as exc:
            if exc.envelope.get("txn_state") == "lost":
                # the server's database connection died (a restart): the transaction is gone, as a
                # direct connection's would be - a disconnect, with the database's error details
                self.txn = None
                raise _database_error(exc, disconnect=True) from None
            self._unless_recorded(exc.envelope.get("txn_state"), begin)
            raise _database_error(exc) from None
        except DBAPIRequestError as exc:
            if exc.code == "transaction_not_here":
                # the instance that held the transaction stopped, or this request reached another
                # one (the load balancer's view changed): the transaction is lost, as with a lost
                # database connection; nothing ran here
                self.txn = None
                raise DisconnectError(str(exc)) from exc
            self._unless_recorded(exc.txn_state, begin)
            raise

    def _catalog(self, route: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """A catalog question (``/catalog/...``) answered by the DB-API, or None from a DB-API that
        predates it (404 ``not_found``)."""
        if self.closed:
            raise InterfaceError("This DB-API connection is closed.")
        try:
            reply: dict[str, Any] = self.transport.post(f"/catalog/{route}", body, replay_safe=True)
            return reply
        except ServerUnreachable as exc:
            raise DisconnectError(str(exc)) from exc
        except DBAPIRequestError as exc:
            if exc.status == 404 and exc.code == "not_found":
                return None
            raise

    def has_table(self, name: str, schema: str | None) -> bool | None:
        """``Dialect.has_table`` answered by the DB-API (tables it serves to this caller), or None
        from a DB-API that predates the question."""
        reply = self._catalog("has_table", {"name": name, "schema": schema})
        return None if reply is None else bool(reply.get("exists"))

    def reflect(self, method: str, args: dict[str, Any]) -> Any:
        """A dialect reflection method run by the DB-API (``dbapi_server.reflection``); raises
        ``NoSuchTableError`` as the server's dialect did, or returns :data:`NOT_SERVED` from a
        DB-API that predates the question."""
        reply = self._catalog("reflect", {"method": method, "args": args})
        if reply is None:
            return NOT_SERVED
        if reply.get("raise") == "NoSuchTableError":
            raise sa_exc.NoSuchTableError(str(reply.get("message", "")))
        if reply.get("raise") == "NotImplementedError":  # Inspector skips what a dialect lacks
            raise NotImplementedError(str(reply.get("message", "")))
        return decode_reflected(reply.get("result"))

    def run_batch(self, statements: list[dict[str, Any]], *, commit: bool) -> dict[str, Any]:
        """Send statements of this connection's transaction in one request (``POST /batch``).

        Each statement carries ``expect``: the row count it must match (or None). With *commit*
        the server commits if and only if all ran and matched. The answer is the server's:
        ``{"outcome": "committed"}``, ``{}`` (ran, not committing), ``{"failed": {"index",
        "rowcount"}}`` or ``{"commit_error": envelope}``. A statement's error is raised as
        :meth:`run` raises it, with ``batch_index`` naming the statement. A committing batch whose
        answer was lost is asked again up to the commit deadline, as a commit is; if its outcome
        stays unknown, ``commit_error`` holds the :class:`CommitOutcomeUnknownError` to raise at
        ``commit()``.
        """
        if self.closed:
            raise InterfaceError("This DB-API connection is closed.")
        begin = False
        if self.txn is None:
            self.txn, self.seq, begin = new_txn_id(), 0, True
        txn = self.txn
        self.seq += 1
        payload: dict[str, Any] = {"txn": txn, "seq": self.seq, "statements": statements}
        if begin:
            payload["begin"] = True
        if commit:
            payload["commit"] = True
        try:
            reply: dict[str, Any] = self._post("/batch", payload, statements, route=txn,
                                               deadline=self.commit_retry_deadline if commit else None)
        except ServerUnreachable as exc:
            self.txn = None
            if commit and exc.answer_lost:
                self.commit_error = CommitOutcomeUnknownError(
                    txn, f"{exc} (commit_retry_deadline sets how long the client keeps asking.)")
                return {"outcome": "unknown"}
            raise DisconnectError(str(exc)) from exc  # never reached the server: nothing ran
        except DatabaseErrorReply as exc:
            lost = exc.envelope.get("txn_state") == "lost"
            if lost:  # the server's database connection died: the transaction is gone (a disconnect)
                self.txn = None
            else:
                self._unless_recorded(exc.envelope.get("txn_state"), begin)
            error = _database_error(exc, disconnect=lost)
            error.batch_index = exc.envelope.get("index")  # type: ignore[attr-defined]
            raise error from None
        except DBAPIRequestError as exc:
            if commit and exc.answer_lost and not (exc.status == 410 and exc.outcome):
                self.txn = None
                self.commit_error = CommitOutcomeUnknownError(
                    txn, f"an attempt's answer was lost, and the DB-API that answered the retry "
                    f"cannot tell: {exc}")
                return {"outcome": "unknown"}
            if exc.code == "transaction_not_here":  # its instance is gone: lost, as run() says
                self.txn = None
                raise DisconnectError(str(exc)) from exc
            self._unless_recorded(exc.txn_state, begin)
            raise
        if "commit_error" in reply:
            self.txn = None
            self.commit_error = _database_error(DatabaseErrorReply(reply["commit_error"]))
        elif reply.get("outcome") == "committed":
            self.txn = None
        return reply

    def _post(self, path: str, payload: dict[str, Any], statements: list[dict[str, Any]],
              deadline: float | None = None, route: str | None = None) -> Any:
        """POST *payload*, whose *statements* leave out the documents this host already has.

        A statement travels as its document's hash once it has been sent to this host (by any
        connection of the process). A DB-API that does not hold it (restarted, evicted, another
        instance) answers ``unknown_statement`` before anything runs; the request is then sent
        again with the documents, under the same sequence number.
        """
        known = self.transport.known_statements
        slim = [s for s in statements if s.get("stmt_hash") in known]
        if slim:
            documents = [(s, s.pop("stmt")) for s in slim]
            try:
                return self.transport.post(path, payload, replay_safe=True, deadline=deadline, route=route)
            except DBAPIRequestError as exc:
                if exc.code != "unknown_statement":
                    raise
                for statement, _document in documents:
                    known.discard(statement["stmt_hash"])
            finally:
                for statement, document in documents:
                    statement["stmt"] = document
        try:
            return self.transport.post(path, payload, replay_safe=True, deadline=deadline, route=route)
        finally:
            for statement in statements:
                if "stmt_hash" in statement:
                    known.add(statement["stmt_hash"])

    def _unless_recorded(self, txn_state: str | None, begin: bool) -> None:
        """After an error: did the request reach the server transaction (and use its number)?"""
        if txn_state == "open":
            return
        if begin:
            self.txn = None  # refused before the transaction existed
        elif self.txn is not None:
            self.seq -= 1  # refused before reaching it (e.g. authentication): number unused


class Deferred:
    """A statement held back until the batch it travels in: its request, the row count it must
    match (None: no check) and the execution context that raises its errors."""

    __slots__ = ("context", "expect", "payload")

    def __init__(self, payload: dict[str, Any], expect: int | None, context: Any) -> None:
        self.payload, self.expect, self.context = payload, expect, context


class Cursor:
    """Holds one statement's outcome: description, raw rows, rowcount, lastrowid."""

    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.description: list[tuple[Any, ...]] | None = None
        self.rowcount = -1
        self.lastrowid: Any = None
        self._rows: list[tuple[Any, ...]] = []
        self._pos = 0

    def run(self, payload: dict[str, Any], *, needs_txn: bool) -> dict[str, Any]:
        """Send one statement; keep its outcome. Rows are raw driver values (never enums)."""
        reply: dict[str, Any] = self.connection.run(payload, needs_txn=needs_txn)
        self._keep(reply)
        return reply

    def _keep(self, reply: dict[str, Any]) -> None:
        description = reply.get("description")
        self.description = [tuple(d) for d in description] if description is not None else None
        self._rows = decode_rows(reply.get("rows") or [])
        self._pos = 0
        self.rowcount = reply.get("rowcount", -1)
        self.lastrowid = decode_value(reply["lastrowid"]) if "lastrowid" in reply else None

    def defer(self, payload: dict[str, Any], expect: int | None, rowcount: int, context: Any) -> None:
        """Hold the statement back (``Connection.deferred``); report *rowcount*, no rows."""
        self.connection.deferred.append(Deferred(payload, expect, context))
        self.description, self._rows, self._pos, self.rowcount, self.lastrowid = None, [], 0, rowcount, None

    def execute(self, operation: Any, parameters: Any = None) -> None:
        raise NotSupportedError(
            "Raw SQL strings cannot be sent to the DB-API; execute SQLAlchemy constructs instead.")

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        self.execute(operation)

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._pos >= len(self._rows):
            return None
        row = self._rows[self._pos]
        self._pos += 1
        return row

    def fetchmany(self, size: int | None = None) -> Sequence[tuple[Any, ...]]:
        size = size or self.arraysize
        rows = self._rows[self._pos:self._pos + size]
        self._pos += len(rows)
        return rows

    def fetchall(self) -> Sequence[tuple[Any, ...]]:
        rows = self._rows[self._pos:]
        self._pos = len(self._rows)
        return rows

    def close(self) -> None:
        self._rows = []
        if self.connection.close_resets_rowcount:
            self.rowcount = -1

    def setinputsizes(self, *args: Any) -> None:
        pass

    def setoutputsize(self, *args: Any) -> None:
        pass


class StreamingCursor(Cursor):
    """A "server-side cursor": rows arrive page by page as they are consumed.

    Only the current page is held; a consumed page is dropped before the next is fetched, so
    client memory stays bounded by the page size (``yield_per`` / ``max_row_buffer``).
    """

    def __init__(self, connection: Connection) -> None:
        super().__init__(connection)
        self._cursor_id: str | None = None
        self._page = 0
        self._more = False
        self._route = uuid.uuid4().hex  # outside a transaction: keeps the pages on the cursor's instance

    def run(self, payload: dict[str, Any], *, needs_txn: bool) -> dict[str, Any]:
        reply: dict[str, Any] = self.connection.run(payload, needs_txn=needs_txn, route=self._route)
        self._route = self.connection.txn or self._route  # the request went by the transaction's id
        self._keep(reply)
        self._cursor_id, self._more = reply.get("cursor"), bool(reply.get("more"))
        return reply

    def _next_page(self) -> bool:
        if not self._more or self._cursor_id is None:
            return False
        self._page += 1
        reply = self._call("fetch", {"page": self._page})
        self._rows, self._pos = decode_rows(reply.get("rows") or []), 0
        self._more = bool(reply.get("more"))
        return bool(self._rows)

    def _call(self, verb: str, body: dict[str, Any]) -> Any:
        try:
            return self.connection.transport.post(f"/cursors/{self._cursor_id}/{verb}", body,
                                                  replay_safe=True, route=self._route)
        except ServerUnreachable as exc:
            raise DisconnectError(str(exc)) from exc

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._pos >= len(self._rows) and not self._next_page():
            return None
        return super().fetchone()

    def fetchmany(self, size: int | None = None) -> Sequence[tuple[Any, ...]]:
        size = size or self.arraysize
        rows: list[tuple[Any, ...]] = []
        while len(rows) < size:
            if self._pos >= len(self._rows) and not self._next_page():
                break
            rows.extend(super().fetchmany(size - len(rows)))
        return rows

    def fetchall(self) -> Sequence[tuple[Any, ...]]:
        rows = list(super().fetchall())
        while self._next_page():
            rows.extend(super().fetchall())
        return rows

    def close(self) -> None:
        if self._more and self._cursor_id is not None:
            self._more = False
            try:
                self._call("close", {})
            except Error:
                pass  # the server's idle timeout frees it
        super().close()


class DriverModule:
    """This module as ``dialect.dbapi``, plus the server driver's version attributes.

    Code that inspects the driver module (``dialect.dbapi.sqlite_version_info``, as SQLAlchemy's
    own test requirements do) sees the server's driver; everything else is this module.
    """

    def __init__(self, versions: Mapping[str, Any], **constructors: Any) -> None:
        for name, value in versions.items():
            setattr(self, name, tuple(value) if isinstance(value, list) else value)
        for name, value in constructors.items():  # Binary(): SQLAlchemy's LargeBinary processor calls it
            setattr(self, name, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(_THIS_MODULE, name)


def connect(*, host: str, token: str | None = None, token_file: str | None = None,
            timeout: float | None = None, eager_transactions: bool = False,
            commit_retry_deadline: float | None = None, close_resets_rowcount: bool = False) -> Connection:
    """PEP 249 ``connect()``: a lazily transactional connection to the DB-API at *host*.

    Without *token* / *token_file*, the token (and unset *timeout* / *commit_retry_deadline*)
    come from the isolation settings (environment or ``dbsession.configure``). Tokens are passed
    here, never in the URL, so they cannot leak through ``repr(engine.url)`` or logs.
    """
    if token is None and token_file is None:
        settings = get_settings()
        token, token_file = settings.token, settings.token_file
        timeout = timeout or settings.timeout
        commit_retry_deadline = commit_retry_deadline or settings.commit_retry_deadline
    transport = transport_for(host, token, token_file, timeout or 30.0)
    return Connection(transport, eager_transactions=eager_transactions,
                      commit_retry_deadline=commit_retry_deadline or DEFAULT_COMMIT_RETRY_DEADLINE,
                      close_resets_rowcount=close_resets_rowcount)


_THIS_MODULE = sys.modules[__name__]
