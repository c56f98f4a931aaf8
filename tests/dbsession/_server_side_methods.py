"""Named methods as a DB-API deployed apart from its clients has them (``dbapi-server serve`` imports
this module in a subprocess; the tests' own process never does).

What differs from the clients of ``test_method_deployments.py``: ``ServerOnlyError`` is registered
safe here only, and ``take_count`` takes an ``int`` where the clients were deployed with a ``str``.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from dbsession import register_safe_exception, server_method


@register_safe_exception
class ServerOnlyError(Exception):
    """Safe to transmit, for this side: the clients have never registered it."""


@server_method
def fail_with_server_only(session: Session, what: str) -> None:
    raise ServerOnlyError(what, 7)


@server_method
def take_count(session: Session, count: int) -> int:
    return count * 2
