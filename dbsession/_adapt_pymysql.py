"""PyMySQL's parameter escaping, replicated where it calls into the value's class.

PyMySQL writes each parameter into the SQL text as a literal (``Cursor._mogrify`` ->
``Connection.escape``, PyMySQL 1.1/1.2):

1. any ``str`` (subclasses included): its characters, quoted;
2. any ``bytes`` / ``bytearray``: ``X'<hex>'``;
3. exactly ``tuple``, ``list``, ``set``, ``frozenset``: ``(a,b,...)``, each item escaped by these
   same rules, in iteration order;
4. otherwise ``converters.escape_item`` by the *exact* type in the connection's encoders:
   ``bool``, ``int``, ``float`` (``inf`` / ``nan``: ``ProgrammingError``), ``None``, ``Decimal``
   (non-finite: ``ProgrammingError``), ``date``, ``datetime`` and ``time`` (wall clock fields only:
   the tzinfo is ignored), ``timedelta``, ``time.struct_time``; ``dict`` raises
   ``TypeError("dict can not be used as parameter")``;
5. any other class - ``str`` and ``int`` subclasses outside rule 1 (an ``IntEnum``), a pendulum
   ``DateTime``, a ``Decimal`` subclass, ``object()`` - is ``str(value)``, quoted.

So the value the server's PyMySQL must escape is: the ``str`` content, the bytes, a tuple of such
values, the exact builtin (a datetime or time without its tzinfo), or ``str(value)`` - computed
here with the application's classes. One difference is left: a rule-5 string is escaped with
backslashes even when the server's ``sql_mode`` has ``NO_BACKSLASH_ESCAPES`` (PyMySQL's
``escape_str``), where the server escapes the plain string it receives by that mode; the two differ
only for a ``str()`` holding a quote or backslash under that mode.
"""

from __future__ import annotations

import datetime as dt
import decimal
import time
from collections.abc import Callable
from typing import Any

__all__ = ["PyMySQLAdapter", "binary"]

_SEQUENCES = (tuple, list, set, frozenset)


def binary(value: Any) -> bytes:
    """``pymysql.Binary``: what SQLAlchemy's ``LargeBinary`` bind processor calls."""
    return bytes(value)


def _refuse_dict(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} can not be used as parameter")


def _naive(value: Any) -> Any:
    return value.replace(tzinfo=None) if value.tzinfo is not None else value


def _struct_time(value: time.struct_time) -> dt.datetime:
    return dt.datetime(*value[:6])


def _same(value: Any) -> Any:
    return value


# converters.encoders, by exact type: what the server's PyMySQL escapes the same way
_EXACT: dict[type, Callable[[Any], Any]] = {
    bool: _same, int: _same, float: _same, type(None): _same, decimal.Decimal: _same,
    dt.date: _same, dt.datetime: _naive, dt.time: _naive, dt.timedelta: _same,
    time.struct_time: _struct_time, dict: _refuse_dict,
}


class PyMySQLAdapter:
    """Turns a processed bound value into what PyMySQL would write for it."""

    Binary = staticmethod(binary)

    def __init__(self, dialect: Any) -> None:
        pass

    def adapt(self, value: Any) -> Any:
        cls = type(value)
        if cls is str or cls is int or value is None:
            return value
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, (bytes, bytearray)):
            return bytes(memoryview(value))
        if cls in _SEQUENCES:
            return tuple(self.adapt(item) for item in value)
        exact = _EXACT.get(cls)
        if exact is not None:
            return exact(value)
        return str.__str__(str(value))  # escape_str(str(value))
