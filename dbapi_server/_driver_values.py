"""Driver wrappers the server builds itself, for values the client sent tagged.

The client sends bound values as this server's driver must bind them (``dbsession._binds``): plain
builtins, except where the driver dumps a value only from a wrapper of its own. psycopg dumps
JSON only from ``psycopg.types.json.Json`` / ``Jsonb``; the client serialized the document with
the application's serializer and sent the text as :class:`query_translation.Wrapped`. Here that
text goes into the driver's wrapper with an identity ``dumps``, so psycopg sends it unchanged.
Array items psycopg sends with a width their classes chose (an ``IntEnum`` array) arrive as
integers of a kind and become psycopg's ``Int2`` ... ``IntNumeric``, which pick that width again.
Nothing named on the wire is imported: the kinds map to wrappers this module chose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from query_translation import Wrapped

from .errors import APIError

__all__ = ["DriverValues"]


def _same(data: Any) -> Any:
    return data


def _psycopg_wrappers() -> dict[str, Callable[[Any], Any]]:
    from psycopg.types.json import Json, Jsonb
    from psycopg.types.numeric import Int2, Int4, Int8, IntNumeric

    return {"json": lambda data: Json(data, dumps=_same), "jsonb": lambda data: Jsonb(data, dumps=_same),
            "int2": Int2, "int4": Int4, "int8": Int8, "numeric": IntNumeric}


_WRAPPERS: dict[str, Callable[[], dict[str, Callable[[Any], Any]]]] = {"psycopg": _psycopg_wrappers}


class DriverValues:
    """Replaces :class:`Wrapped` parameter values with this dialect's driver wrappers."""

    def __init__(self, dialect: sa.Dialect) -> None:
        factory = _WRAPPERS.get(dialect.driver)
        self._wrappers = factory() if factory is not None else {}
        self._driver = dialect.driver

    def wrap(self, params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for param_set in params:
            for name, value in param_set.items():
                kind = type(value)
                if kind is Wrapped or kind is list or kind is tuple:
                    param_set[name] = self._wrapped(value)
        return params

    def _wrapped(self, value: Any) -> Any:
        kind = type(value)
        if kind is list:
            return [self._wrapped(item) for item in value]
        if kind is tuple:
            return tuple(self._wrapped(item) for item in value)
        if kind is not Wrapped:
            return value
        wrapper = self._wrappers.get(value.kind)
        if wrapper is None:
            raise APIError(f"A {value.kind!r} wrapped value cannot be bound by the {self._driver} driver; "
                           "make sure client and server run the same dbsession version.", code="bad_value")
        return wrapper(value.value)
