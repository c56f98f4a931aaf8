"""Options of the served database's engine: ``create_engine()`` arguments, connect arguments,
SQLite pragmas, PostgreSQL run-time parameters.

A deployment tunes its database connection as it would for a direct one (Airflow has
``sql_alchemy_engine_args`` and ``sql_alchemy_connect_args``): pool sizes and recycling, the
driver's connect arguments, SQLite's ``journal_mode`` / ``busy_timeout``, PostgreSQL's
``statement_timeout`` or ``search_path``. From the environment (``create_app`` and
``dbapi-server serve``):

==========================  ===============================================================
``DBAPI_ENGINE_OPTIONS``    a JSON object of ``create_engine()`` keyword arguments, e.g.
                            ``{"pool_size": 20, "pool_recycle": 1800, "connect_args": {...}}``
``DBAPI_CONNECT_ARGS``      a JSON object merged into ``connect_args`` (the driver's
                            ``connect()`` keyword arguments)
``DBAPI_SQLITE_PRAGMAS``    a JSON object ``{"journal_mode": "WAL", "busy_timeout": 5000}``:
                            ``PRAGMA name=value`` on every new SQLite connection
``DBAPI_PG_OPTIONS``        a JSON object ``{"statement_timeout": "5s"}``: PostgreSQL run-time
                            parameters, sent as the connection's ``options`` (``-c name=value``)
==========================  ===============================================================

``dbapi-server serve`` also takes them one at a time (``--engine-option pool_size=20``,
``--connect-arg connect_timeout=5``, ``--sqlite-pragma journal_mode=WAL``, ``--pg-option
statement_timeout=5s``; a value is read as JSON when it is valid JSON, as a string otherwise),
and they win over the environment key by key. The DB-API's own default is ``pool_pre_ping=True``
(a connection the database dropped is replaced at checkout); an option overrides it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

__all__ = ["EngineOptions", "EngineOptionsError", "parse_assignment"]

_DEFAULTS: dict[str, Any] = {"pool_pre_ping": True}
_PRAGMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PRAGMA_VALUE = re.compile(r"^-?[A-Za-z0-9_.]+$")  # a number, a keyword (WAL, NORMAL, ON) or a name
_PG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class EngineOptionsError(ValueError):
    """An engine option is malformed or does not apply to the served database."""


def parse_assignment(text: str) -> tuple[str, Any]:
    """``name=value`` -> ``(name, value)``; the value as JSON when it is JSON, else the string."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise EngineOptionsError(f"Expected name=value, got {text!r}.")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def _json_object(environ: Mapping[str, str], variable: str) -> dict[str, Any]:
    raw = environ.get(variable, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise EngineOptionsError(f"{variable} is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise EngineOptionsError(f"{variable} must be a JSON object, not {type(value).__name__}.")
    return value


@dataclass
class EngineOptions:
    """Everything the served engine is built with, beyond its URL."""

    options: dict[str, Any] = field(default_factory=dict)  # create_engine() keyword arguments
    connect_args: dict[str, Any] = field(default_factory=dict)
    sqlite_pragmas: dict[str, Any] = field(default_factory=dict)
    pg_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = self.options.get("connect_args")
        if given is not None:  # create_engine(connect_args=...) given among the options
            if not isinstance(given, dict):
                raise EngineOptionsError("connect_args must be an object of the driver's connect() arguments.")
            self.options = {k: v for k, v in self.options.items() if k != "connect_args"}
            self.connect_args = {**given, **self.connect_args}

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> EngineOptions:
        return cls(_json_object(environ, "DBAPI_ENGINE_OPTIONS"), _json_object(environ, "DBAPI_CONNECT_ARGS"),
                   _json_object(environ, "DBAPI_SQLITE_PRAGMAS"), _json_object(environ, "DBAPI_PG_OPTIONS"))

    def merged(self, other: EngineOptions | Mapping[str, Any] | None) -> EngineOptions:
        """These options with *other*'s (an ``EngineOptions`` or ``create_engine()`` keywords) winning."""
        if other is None:
            return self
        if not isinstance(other, EngineOptions):
            other = EngineOptions(dict(other))
        return EngineOptions({**self.options, **other.options}, {**self.connect_args, **other.connect_args},
                             {**self.sqlite_pragmas, **other.sqlite_pragmas}, {**self.pg_options, **other.pg_options})

    def create_engine(self, url: str | sa.URL) -> sa.Engine:
        """The served engine; a wrong option raises :class:`EngineOptionsError` naming it."""
        url = sa.make_url(url)
        backend = url.get_backend_name()
        if self.sqlite_pragmas and backend != "sqlite":
            raise EngineOptionsError(f"SQLite pragmas were given, but the served database is {backend}.")
        if self.pg_options and backend != "postgresql":
            raise EngineOptionsError(f"PostgreSQL options were given, but the served database is {backend}.")
        pragmas = [self._pragma(name, value) for name, value in self.sqlite_pragmas.items()]
        connect_args = dict(self.connect_args)
        if self.pg_options:
            given = [f"-c {self._pg_setting(name, value)}" for name, value in self.pg_options.items()]
            connect_args["options"] = " ".join([*filter(None, [connect_args.get("options")]), *given])
        kwargs = {**_DEFAULTS, **self.options}
        if connect_args:
            kwargs["connect_args"] = connect_args
        try:
            engine = sa.create_engine(url, **kwargs)
        except (TypeError, sa.exc.ArgumentError) as exc:
            raise EngineOptionsError(f"The engine options are not valid for {backend}: {exc}") from None
        if pragmas:
            @sa.event.listens_for(engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                try:
                    for statement in pragmas:
                        cursor.execute(statement)
                finally:
                    cursor.close()
        return engine

    @staticmethod
    def _pragma(name: str, value: Any) -> str:
        text = str(value).upper() if isinstance(value, bool) else str(value)
        if not _PRAGMA_NAME.match(name) or not _PRAGMA_VALUE.match(text):
            raise EngineOptionsError(f"Not a SQLite pragma setting: {name}={value!r} (a name and a number, "
                                     "keyword or name).")
        return f"PRAGMA {name}={text}"

    @staticmethod
    def _pg_setting(name: str, value: Any) -> str:
        text = ("on" if value else "off") if isinstance(value, bool) else str(value)
        if not _PG_NAME.match(name) or not text or any(c in text for c in "\x00\n\r"):
            raise EngineOptionsError(f"Not a PostgreSQL setting: {name}={value!r}.")
        # libpq splits options at spaces; a backslash escapes one (and itself)
        return f"{name}={text.replace(chr(92), chr(92) * 2).replace(' ', chr(92) + ' ')}"
