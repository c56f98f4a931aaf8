"""The server driver's own adaptation of a bound value, done where the value's class lives.

After SQLAlchemy's bind processors, what a direct connection hands its driver can still be an
application class: a ``str`` enum on a ``String`` column, a pendulum ``DateTime`` on PostgreSQL
(whose ``DateTime`` has no processor), an ``OrderedDict`` on a PyMySQL ``String``. Each driver
then adapts it by rules that may call into that class. The replicas below (one module per
driver) make exactly those calls on the client and return the builtin the driver would in effect
send, or raise what the driver raises; the server builds only builtins (and driver wrappers from a
tag, :class:`query_translation.Wrapped`), never a class named on the wire.

``adapter_for(dialect)`` picks the replica by the server's driver. A driver without one (the
server could run e.g. ``mysqlclient``) gets :class:`ExactAdapter`: values travel as they are, and
the value codec accepts only its exact builtin types (``UnsupportedValueError`` otherwise).
"""

from __future__ import annotations

from typing import Any, Protocol

from ._adapt_psycopg import PsycopgAdapter
from ._adapt_pymysql import PyMySQLAdapter
from ._adapt_sqlite import SQLiteAdapter, Unbindable

__all__ = ["DriverAdapter", "ExactAdapter", "Unbindable", "adapter_for"]


class DriverAdapter(Protocol):
    """One server driver's adaptation, replicated (constructed with the client dialect)."""

    Binary: Any  # the driver module's Binary(), which SQLAlchemy's LargeBinary processor calls

    def __init__(self, dialect: Any) -> None: ...

    def adapt(self, value: Any) -> Any: ...


class ExactAdapter:
    """For a driver without a replica: the value as it is (the codec takes exact builtins only)."""

    Binary = bytes

    def __init__(self, dialect: Any) -> None:
        pass

    def adapt(self, value: Any) -> Any:
        return value


_ADAPTERS: dict[str, type[DriverAdapter]] = {
    "psycopg": PsycopgAdapter, "pysqlite": SQLiteAdapter, "pymysql": PyMySQLAdapter,
}


def adapter_for(dialect: Any) -> DriverAdapter:
    """The replica of the server driver *dialect* speaks for (its ``driver`` name)."""
    return _ADAPTERS.get(getattr(dialect, "driver", ""), ExactAdapter)(dialect)
