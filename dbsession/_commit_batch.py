"""The commit travels with the last flush: ``get + modify + commit`` in two requests.

``Session.commit()`` flushes, then commits. On a direct connection the flush's UPDATEs and the
COMMIT are database round trips; through the DB-API each would be an HTTP request. When the client
*knows* the flush ends in the commit - nothing can run between them - the flush's UPDATEs are held
back and sent, with the COMMIT, in one ``POST /batch`` at the end of the flush: the server runs
them in order and commits if and only if each matched the row count the ORM expects.

**Why the semantics stay those of a direct session.** The ORM reads an UPDATE's row count right
after executing it (``persistence._emit_update_statements``): it must match the number of rows it
updates, or ``StaleDataError``. A held-back UPDATE reports that expected count to the ORM; the
server checks the *real* count, in the same order, and stops at the first statement that fails or
does not match - nothing after it runs, nothing commits, the transaction stays open. The client
then raises, from the flush (an ``after_flush`` hook, inside the flush's ``try``, so the session
rolls back exactly as after a failing statement), what the direct session would have raised there:

* the database error of that statement, wrapped by SQLAlchemy for *that* statement's execution
  context (``Connection._handle_dbapi_exception``: the same ``IntegrityError`` class, statement,
  parameters, invalidation on a disconnect);
* ``StaleDataError`` with the ORM's own message, built from the server's count.

What the ORM did between the failing UPDATE and the end of the flush - the later UPDATEs' bind
processing and bookkeeping of persistent objects (``_postfetch``) - is erased by the rollback, which
expires every persistent object; the conditions below make sure nothing else happened there:

* the flush is the one ``Session.commit()`` runs (``DBSession.commit``), on a root transaction
  (no savepoint, not two-phase), of a session bound to one isolated *engine* (not a connection
  with an outer transaction, not ``binds``);
* the session holds no pending and no deleted objects (only UPDATEs: a failed flush expunges
  pending objects *with* the attributes the flush set on them, so INSERTs are not held back);
* no mapper of the registries involved has a versioning column, persistence listeners
  (``before_update``, ``after_update``... run between statements) or a ``post_update``
  relationship; no changed attribute holds a SQL expression (those UPDATEs are grouped, checked
  after several statements);
* no session listener runs between the flush and the commit or around them (``before_commit``,
  ``after_flush``, ``after_flush_postexec``), and the engine has no execution or commit listener
  except the direct-access guard's;
* only the ORM's own flush UPDATEs (executed with the mapper's compiled cache) without RETURNING
  are held back. Any other statement in the flush (a lazy load, a many-to-many row, an UPDATE
  that needs RETURNING) first sends what is held back - without the commit, in one request - so
  it sees their effect; a failure among them is raised there, as it would have been one step
  earlier.

A COMMIT that fails after every statement matched (a deferred constraint, a serialization
failure) is raised by ``commit()`` from the connection's commit, as directly: the flush succeeded.
A committing batch whose answer is lost is asked again up to ``commit_retry_deadline`` and then
raises ``CommitOutcomeUnknownError`` from the commit, like a lost COMMIT. Every other case takes
the ordinary path: UPDATE requests, then the commit request.
"""

from __future__ import annotations

from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.sql import compiler as sql_compiler

from . import _dbapi, guard

__all__ = ["CommitFlush", "commit_flush_for", "install"]

_ENGINE_EVENTS = ("before_execute", "after_execute", "before_cursor_execute", "after_cursor_execute",
                  "commit")
_PERSISTENCE_EVENTS = ("before_insert", "after_insert", "before_update", "after_update", "before_delete",
                       "after_delete")
_OURS = {guard._on_execute}


class CommitFlush:
    """One commit's final flush whose UPDATEs wait for the COMMIT (see the module docstring)."""

    def __init__(self, session: Session, connection: _dbapi.Connection, caches: list[Any]) -> None:
        self.session = session
        self.connection = connection
        self.caches = caches

    def __enter__(self) -> CommitFlush:
        self.connection.deferral = self
        self.session._dbs_commit_flush = self  # type: ignore[attr-defined]
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.session._dbs_commit_flush = None  # type: ignore[attr-defined]
        connection = self.connection
        try:
            if exc_type is None and connection.deferred:  # a flush that ended without after_flush
                self.send_pending(connection, commit=False)
        finally:
            connection.deferral = None

    # -- holding back ---------------------------------------------------------------------------
    def expectation(self, context: Any, compiled: sql_compiler.SQLCompiler, cursor: Any,
                    n_params: int) -> tuple[bool, int | None]:
        """Whether to hold this statement back, and the row count the ORM will check (or None)."""
        if (not compiled.isupdate or compiled.effective_returning or isinstance(cursor, _dbapi.StreamingCursor)
                or self.session._new or self.session._deleted):
            return False, None
        cache = context.execution_options.get("compiled_cache")
        if cache is None or not any(cache is c for c in self.caches):
            return False, None  # not the ORM's flush UPDATE
        dialect = context.dialect
        checked = dialect.supports_sane_rowcount and (n_params == 1 or dialect.supports_sane_multi_rowcount)
        return True, n_params if checked else None

    # -- sending ----------------------------------------------------------------------------------
    def send_pending(self, connection: _dbapi.Connection, *, commit: bool) -> None:
        """Send what is held back (and the COMMIT); raise what the direct session would have."""
        items, connection.deferred = connection.deferred, []
        if not items:
            return
        statements = []
        for item in items:
            statement = dict(item.payload)
            statement["expect"] = item.expect
            statements.append(statement)
        try:
            reply = connection.run_batch(statements, commit=commit)
        except Exception as exc:
            index = getattr(exc, "batch_index", None)
            _raise_as_executed(exc, items[index if isinstance(index, int) and 0 <= index < len(items) else 0])
        failed = reply.get("failed")
        if failed is not None:
            index = failed.get("index", 0)
            table = items[index].context.compiled.statement.table.description
            # persistence._emit_update_statements' message, word for word
            raise orm_exc.StaleDataError(
                f"UPDATE statement on table '{table}' expected to update {int(items[index].expect or 0)} "
                f"row(s); {int(failed.get('rowcount') or 0)} were matched.")


def _raise_as_executed(error: BaseException, item: _dbapi.Deferred) -> NoReturn:
    """Raise *error* as SQLAlchemy raises it from the execution of *item*'s statement."""
    context = item.context
    parameters = context.parameters if context.executemany else context.parameters[0]
    try:
        raise error
    except BaseException as caught:
        context.root_connection._handle_dbapi_exception(caught, context.statement, parameters, context.cursor,
                                                        context)
    raise error  # not reached: SQLAlchemy raised it, wrapped or as it is


def _send_with_commit(session: Session, flush_context: Any) -> None:
    plan: CommitFlush | None = getattr(session, "_dbs_commit_flush", None)
    if plan is not None and plan.connection.deferred:
        plan.send_pending(plan.connection, commit=True)


def install(session_class: type[Session]) -> None:
    """The ``after_flush`` hook that sends the held-back UPDATEs with the COMMIT (once per class)."""
    if not event.contains(session_class, "after_flush", _send_with_commit):
        event.listen(session_class, "after_flush", _send_with_commit, insert=True)


def _binds(session: Session) -> Any:
    """The session's per-mapper/table binds (``binds`` in SQLAlchemy 2.1, private in 2.0)."""
    found = getattr(session, "binds", None)
    return found if found is not None else getattr(session, "_Session__binds", None)


def commit_flush_for(session: Session) -> CommitFlush | None:
    """A :class:`CommitFlush` for *session*'s commit flush, or None where semantics would differ."""
    bind = session.bind
    if (not isinstance(bind, sa.Engine) or not getattr(bind.dialect, "is_dbsession", False)
            or _binds(session) or session.twophase
            or session._new or session._deleted):
        return None
    transaction = session._transaction
    if transaction is None or transaction.nested or transaction._parent is not None:
        return None
    dispatch = session.dispatch
    if dispatch.before_commit or dispatch.after_flush_postexec or len(dispatch.after_flush) != 1:
        return None
    modified = session.identity_map._modified
    if not modified:
        return None
    mappers = {state.mapper for state in modified}
    registries = {mapper.registry for mapper in mappers}
    for registry in registries:
        for mapper in registry.mappers:
            if mapper.version_id_col is not None or any(getattr(mapper.dispatch, name)
                                                        for name in _PERSISTENCE_EVENTS):
                return None
            if any(r.post_update for r in mapper.relationships):
                return None
    for state in modified:
        values = state.dict
        for key in state.committed_state:
            value = values.get(key)
            if isinstance(value, sa.sql.ClauseElement) or hasattr(value, "__clause_element__"):
                return None
    connection = session.connection()
    if connection._nested_transaction is not None:
        return None
    for dispatch_ in (bind.dispatch, connection.dispatch):
        for name in _ENGINE_EVENTS:
            if any(fn not in _OURS for fn in getattr(dispatch_, name)):
                return None
    if bind.dialect.dispatch.handle_error:
        return None
    dbapi_connection = connection.connection.dbapi_connection
    if not isinstance(dbapi_connection, _dbapi.Connection) or dbapi_connection.deferred:
        return None
    return CommitFlush(session, dbapi_connection, [m.base_mapper._compiled_cache for m in mappers])
