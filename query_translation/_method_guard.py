"""The transaction rule of named methods, enforced the same way in direct and in isolation mode.

A named method runs inside its caller's transaction (in a savepoint of it), so it must not begin,
end or close that transaction: in direct mode ``session.commit()`` would commit everything the
caller had done so far, while on the DB-API it would only release the method's savepoint and
leave the server session unusable. Neither is what the caller asked for, and the two disagree.

While the method's function runs, :func:`transaction_kept` makes those calls on its session,
and on the session's connection, raise :class:`MethodTransactionError` before anything happens
to the transaction. Both sides run methods through it (``Method.invoke``), so the refusal is the
same error in both modes: the function's savepoint rolls back, and the caller's transaction stays
open and usable. ``begin_nested()`` stays allowed: a savepoint inside the method ends inside it.

Not intercepted: a ``COMMIT`` sent as SQL text, and connections of other binds of the session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.orm import scoped_session

from .exceptions import MethodTransactionError

__all__ = ["CONNECTION_CALLS", "SESSION_CALLS", "transaction_kept"]

#: Session methods that would begin, end or close the caller's transaction.
SESSION_CALLS = ("begin", "commit", "rollback", "close", "reset", "invalidate", "prepare")
#: The same on the connection (not ``invalidate``: SQLAlchemy calls it itself on a disconnect).
CONNECTION_CALLS = ("begin", "commit", "rollback", "close", "detach")

_ABSENT = object()


@contextmanager
def transaction_kept(session: Any, method: str) -> Iterator[None]:
    """Refuse, for the duration of the block, every call of *session* (a ``Session`` or a
    ``scoped_session``) and of its connection that would begin, end or close its transaction."""
    real = session.registry() if isinstance(session, scoped_session) else session
    targets = [("session", real, SESSION_CALLS), ("session.connection()", real.connection(), CONNECTION_CALLS)]
    saved: list[tuple[dict[str, Any], str, Any]] = []
    try:
        for label, target, calls in targets:
            attributes = vars(target)
            for call in calls:
                saved.append((attributes, call, attributes.get(call, _ABSENT)))
                attributes[call] = _refusal(method, f"{label}.{call}()", getattr(target, call))
        yield
    finally:
        for attributes, call, before in reversed(saved):  # a nested method's guard restores ours
            if before is _ABSENT:
                attributes.pop(call, None)
            else:
                attributes[call] = before


def _refusal(method: str, what: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        if what == "session.begin()" and (kwargs.get("nested") or args[:1] == (True,)):
            return original(*args, **kwargs)  # Session.begin_nested() is begin(nested=True)
        raise MethodTransactionError(
            f"The named method {method} called {what}: a named method runs inside its caller's "
            "transaction and must not begin, end or close it. Return to keep its writes, or raise "
            "to undo them; the caller commits or rolls back.")

    return refuse
