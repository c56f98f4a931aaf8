"""The sqlite3 module's parameter binding, replicated where it calls into the value's class.

CPython's ``Modules/_sqlite/cursor.c`` (3.11) binds each parameter so:

1. exactly ``int``, ``float``, ``str`` or ``bytearray`` is bound as it is (unless an adapter was
   registered for one of those types, which makes every value go through step 2);
2. an adapter registered for the value's *exact* type (``sqlite3.register_adapter``; by default
   ``date`` and ``datetime``, ``isoformat()``) replaces it; failing that ``value.__conform__(
   sqlite3.PrepareProtocol)`` does, unless it returns ``None`` or raises ``TypeError``;
3. the result is bound by subclass checks, in order: ``int`` (64-bit, else ``OverflowError``),
   ``float``, ``str`` (UTF-8), any buffer (a BLOB); ``None`` is NULL; anything else raises
   ``sqlite3.ProgrammingError: Error binding parameter N: type 'X' is not supported``.

Steps 1 and 2 run here with the application's own registry - ``sqlite3.adapters`` of *this*
process, where the application registered its adapters - and its classes; what travels is the
builtin step 3 binds (``int``, ``float``, ``str``, ``bytes``) or ``None``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

__all__ = ["SQLiteAdapter", "Unbindable"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BASE_TYPES = (int, float, str, bytearray)
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE


class Unbindable(Exception):
    """The driver cannot bind this value; the caller knows its position for the message."""

    def __init__(self, type_name: str) -> None:
        super().__init__(type_name)
        self.type_name = type_name


def type_name(cls: type) -> str:
    """CPython's ``tp_name``: the qualified name of a static type, the bare name of a class."""
    if cls.__flags__ & _HEAPTYPE or cls.__module__ == "builtins":
        return cls.__name__
    return f"{cls.__module__}.{cls.__name__}"


def _bind(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, int):
        number = int.__int__(value)
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return number
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    try:
        view = memoryview(value)
    except TypeError:
        raise Unbindable(type_name(type(value))) from None
    if not view.c_contiguous:
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    return view.tobytes()


class SQLiteAdapter:
    """Turns a processed bound value into what sqlite3 would bind for it."""

    Binary = memoryview  # sqlite3.Binary

    def __init__(self, dialect: Any) -> None:
        self._registry_size = -1
        self._base_type_adapted = False

    def adapt(self, value: Any) -> Any:
        cls = type(value)
        adapters = sqlite3.adapters
        if len(adapters) != self._registry_size:  # the application registered an adapter
            self._registry_size = len(adapters)
            self._base_type_adapted = any(key[0] in _BASE_TYPES for key in adapters)
        if not self._base_type_adapted:
            if cls is str or cls is float:
                return value
            if cls is int:
                return _bind(value)
            if cls is bytearray:
                return bytes(value)
        adapter = adapters.get((cls, sqlite3.PrepareProtocol))
        if adapter is not None:
            return _bind(adapter(value))
        conform = getattr(value, "__conform__", None)
        if conform is not None:
            try:
                adapted = conform(sqlite3.PrepareProtocol)
            except TypeError:
                adapted = None
            if adapted is not None:
                return _bind(adapted)
        return _bind(value)
