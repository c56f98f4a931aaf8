"""Named server methods: ``@server_method`` turns a session-taking function into one.

A call site is ordinary Python - ``mark_success(session, dag_id, run_id, task_id)``:

* **direct mode** (the session's bind is a real database): the function runs with that session,
  in a savepoint (``session.begin_nested()``), so its writes join the caller's transaction and,
  if it raises, are undone while the caller's earlier work stays;
* **isolation mode** (the session's bind is the DB-API): the session is flushed, the arguments
  travel in the value codec, and the server runs the function with a server-side session in a
  savepoint of *the caller's own server transaction* (starting it if there is none). The caller
  commits or rolls back as usual, so both modes have the same transaction semantics. ORM objects
  returned become persistent, clean objects in the caller's session; other objects of the
  session are expired, since the method may have changed their rows.

Both modes apply the same rules (``Method`` in ``query_translation.methods``): arguments must fit
the annotations (``MethodArgumentsError``, before anything runs or is sent) and the function gets
them after the wire round trip; the result must fit its annotation (``MethodResultError``); and
the function may not begin, end or close the caller's transaction (``MethodTransactionError``).

Exceptions: database errors raise the same SQLAlchemy class as a direct call; an exception the
function raises is re-raised with its class and arguments when the class is registered with
``register_safe_exception`` (``ValueError``, ``KeyError``, ``NoResultFound``... are by default),
and is a :class:`RemoteMethodError` carrying the server's error id otherwise. See
``docs/named-methods.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast, overload

import sqlalchemy as sa
from sqlalchemy.orm import Mapper, Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from query_translation import (
    DEFAULT_REGISTRY,
    Method,
    MethodArgumentsError,
    MethodRegistry,
    MethodResultError,
    MethodTransactionError,
    decode_exception,
    register_safe_exception,
)

from . import _dbapi
from .exceptions import DBAPIRequestError, MethodNotFoundError, RemoteArgumentsError, RemoteMethodError

__all__ = ["DEFAULT_REGISTRY", "Method", "MethodArgumentsError", "MethodRegistry", "MethodResultError",
           "MethodTransactionError", "call_method", "register_safe_exception", "server_method"]

F = TypeVar("F", bound=Callable[..., Any])


@overload
def server_method(function: F, /) -> F: ...
@overload
def server_method(*, name: str | None = None, version: int = 1,
                  registry: MethodRegistry = DEFAULT_REGISTRY) -> Callable[[F], F]: ...


def server_method(function: Any = None, /, *, name: str | None = None, version: int = 1,
                  registry: MethodRegistry = DEFAULT_REGISTRY) -> Any:
    """Register a function ``f(session, ...)`` as the named method *name* (default: its name).

    Raises ``MethodDefinitionError`` at once if the name is taken or a parameter or the result
    is of a type that cannot travel (see ``docs/named-methods.md``).
    """
    def decorate(func: F) -> F:
        method = registry.register(func, name=name, version=version)

        @functools.wraps(func)
        def call(session: Session, /, *args: Any, **kwargs: Any) -> Any:
            return call_method(method, session, *args, **kwargs)

        call.method = method  # type: ignore[attr-defined]
        return cast(F, call)

    return decorate(function) if function is not None else decorate


def call_method(method: Method, session: Session, /, *args: Any, **kwargs: Any) -> Any:
    """Run *method* for *session*: locally in direct mode, on the DB-API in isolation mode.

    Both modes apply the same rules, from ``Method``: the arguments are checked and make the
    wire round trip (``MethodArgumentsError``), the function may not end the caller's
    transaction (``MethodTransactionError``), and the result must fit its annotation and be able
    to travel (``MethodResultError``).
    """
    wire, arguments = method.call_arguments(args, kwargs)
    if not _is_isolated(session):
        _begin_for_real(session.connection())
        with session.begin_nested():
            result = method.invoke(session, arguments)
            method.check_result(result)  # in the savepoint: a refused result undoes the writes
            return result
    return _call_remote(method, session, wire)


def _is_isolated(session: Session) -> bool:
    return bool(getattr(session.get_bind().dialect, "is_dbsession", False))


def _begin_for_real(conn: sa.Connection) -> None:
    """As the server does (``dbapi_server.methods``): pysqlite defers BEGIN, and a SAVEPOINT
    outside a transaction would let its RELEASE commit the method's writes on its own."""
    raw = conn.connection.dbapi_connection
    if conn.dialect.name == "sqlite" and getattr(raw, "in_transaction", True) is False:
        conn.exec_driver_sql("BEGIN")


def _call_remote(method: Method, session: Session, wire: dict[str, Any]) -> Any:
    payload: dict[str, Any] = {"version": method.version, "args": wire}
    session.flush()  # the method must see the caller's pending changes, as it would directly
    conn = session.connection()
    raw = cast(_dbapi.Connection, conn.connection.dbapi_connection)
    try:
        reply = raw.run(payload, needs_txn=True, path=f"/methods/{method.name}")
    except _dbapi.Error as exc:
        if isinstance(exc, _dbapi.DisconnectError):
            conn.invalidate(exc)  # the server transaction is lost: the session must roll back
        raise sa.exc.DBAPIError.instance(
            None, None, exc, _dbapi.Error, connection_invalidated=conn.invalidated,
            dialect=conn.dialect) from None
    except DBAPIRequestError as exc:
        raise _translated(method, exc) from None
    returned: set[int] = set()
    result = method.decode_result(reply.get("result"), functools.partial(_persistent, session, returned))
    for instance in list(session.identity_map.values()):
        if id(instance) not in returned:
            session.expire(instance)  # its row may have changed on the server
    return result


def _persistent(session: Session, returned: set[int], cls: type, values: dict[str, Any]) -> Any:
    """A persistent, clean instance of *cls* in *session*, without SQL (merge with load=False)."""
    mapper: Mapper[Any] = sa.inspect(cls)
    instance = mapper.class_manager.new_instance()
    for key, value in values.items():
        set_committed_value(instance, key, value)
    make_transient_to_detached(instance)
    merged = session.merge(instance, load=False)
    returned.add(id(merged))
    return merged


def _translated(method: Method, exc: DBAPIRequestError) -> BaseException:
    if exc.code == "method_error":
        raised = decode_exception(exc.details)
        if raised is not None:
            return raised
        return _as(RemoteMethodError, exc)  # a class this side has not registered as safe
    if exc.code == "method_failed":
        return _as(RemoteMethodError, exc)
    if exc.code == "unknown_method":
        return _as(MethodNotFoundError, exc)
    if exc.code == "bad_arguments":  # the server's signature differs from this side's
        return _as(RemoteArgumentsError, exc)
    return exc


def _as(cls: type[DBAPIRequestError], exc: DBAPIRequestError) -> DBAPIRequestError:
    new = cls("", code=exc.code, error_id=exc.error_id, request_id=exc.request_id, status=exc.status, details=exc.details,
              txn_state=exc.txn_state)
    new.args = exc.args
    return new
