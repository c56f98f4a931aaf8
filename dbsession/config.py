"""Isolation settings: arguments first, then ``dbsession.configure()``, then the environment.

=============================  ==========================================================
setting                        environment variable
=============================  ==========================================================
``database_access_isolation``  ``DATABASE_ACCESS_ISOLATION`` (``true``/``false``/``1``/``0``)
``database_api_host``          ``DATABASE_API_HOST`` (``http://host:port``)
``token``                      ``DATABASE_API_TOKEN``
``token_file``                 ``DATABASE_API_TOKEN_FILE`` (re-read when it changes)
``commit_retry_deadline``      ``DATABASE_API_COMMIT_RETRY_DEADLINE`` (seconds, default 30)
=============================  ==========================================================

``commit_retry_deadline``: how long a commit whose answer was lost keeps asking the DB-API for its
outcome before raising ``CommitOutcomeUnknownError`` (see ``docs/architecture.md``).

Resolving costs a copy of the environment and a validation, and every new ``DBSession`` resolves
its settings, so :func:`get_settings` remembers its answers, keyed by everything they depend on:
the five variables' current values (read from the process environment on every call, so a
changed or monkeypatched variable is seen at once), a counter that :func:`configure` and
:func:`reset_configuration` move on, and the overrides. A token file is still checked on every
call (its mode or existence may have changed).

``DATABASE_API_TOKEN`` is a credential, so it is taken *out* of ``os.environ`` when ``dbsession``
is imported (and whenever settings are resolved and it has been set again): the process keeps it
in memory and child processes - ``subprocess``, ``os.system``, a task's shell commands - do not
inherit it. ``DATABASE_API_TOKEN_FILE`` (a path to a 0600 file, not the token) stays. See
``docs/tokens.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .auth import check_token_file
from .exceptions import ConfigurationError

__all__ = ["Settings", "configure", "get_settings", "reset_configuration", "scrub_token_from_environ"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

_ENV = {
    "database_access_isolation": "DATABASE_ACCESS_ISOLATION",
    "database_api_host": "DATABASE_API_HOST",
    "token": "DATABASE_API_TOKEN",
    "token_file": "DATABASE_API_TOKEN_FILE",
    "commit_retry_deadline": "DATABASE_API_COMMIT_RETRY_DEADLINE",
}


@dataclass(frozen=True)
class Settings:
    """Resolved isolation settings for one session or engine."""

    database_access_isolation: bool = False
    database_api_host: str | None = None
    token: str | None = None
    token_file: str | None = None
    timeout: float = 30.0
    commit_retry_deadline: float = 30.0

    def validate(self) -> Settings:
        deadline = self.commit_retry_deadline
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0:
            raise ConfigurationError(
                "commit_retry_deadline (DATABASE_API_COMMIT_RETRY_DEADLINE) must be a number of "
                f"seconds above 0, got {deadline!r}.")
        if self.database_access_isolation and not self.database_api_host:
            raise ConfigurationError(
                "database_access_isolation is on but database_api_host is not set; set "
                "DATABASE_API_HOST (for example http://127.0.0.1:9180) or pass database_api_host=."
            )
        if self.token and self.token_file:
            raise ConfigurationError("Set either a token or a token_file, not both.")
        if self.database_access_isolation and self.token_file:
            check_token_file(self.token_file)  # refused at startup, not at the first query
        return self

    def __repr__(self) -> str:  # the token never shows
        token = "'***'" if self.token else "None"
        return (f"Settings(database_access_isolation={self.database_access_isolation}, "
                f"database_api_host={self.database_api_host!r}, token={token}, "
                f"token_file={self.token_file!r}, timeout={self.timeout}, "
                f"commit_retry_deadline={self.commit_retry_deadline})")


_configured: dict[str, Any] = {}
_TOKEN_VAR = "DATABASE_API_TOKEN"
_scrubbed: dict[str, str] = {}  # DATABASE_API_TOKEN, moved out of os.environ
_generation = [0]  # moved on by configure() and reset_configuration(): resolved settings are stale
_resolved: dict[tuple[Any, ...], Settings] = {}
_RESOLVED_MAX = 64
_ENVIRON = os.environ
_DATA: dict[Any, Any] | None = getattr(os.environ, "_data", None)
_encodekey = getattr(os.environ, "encodekey", None)
if _encodekey is None or not isinstance(_DATA, dict):
    _DATA = None
    _ENV_KEYS: tuple[Any, ...] = ()
    _TOKEN_KEY: Any = None
else:
    _ENV_KEYS = tuple(map(_encodekey, _ENV.values()))
    _TOKEN_KEY = _encodekey(_TOKEN_VAR)


def scrub_token_from_environ() -> None:
    """Move ``DATABASE_API_TOKEN`` from ``os.environ`` into this process's memory.

    Child processes then do not inherit the token. Setting the variable again later (before a
    session resolves its settings) replaces the remembered value.
    """
    token = os.environ.pop(_TOKEN_VAR, None)
    if token is not None:
        _scrubbed[_TOKEN_VAR] = token


def configure(**settings: Any) -> None:
    """Set process-wide defaults (overriding the environment); unknown names are errors."""
    unknown = set(settings) - set(Settings.__dataclass_fields__)
    if unknown:
        raise ConfigurationError(f"Unknown setting(s): {', '.join(sorted(unknown))}.")
    _configured.update(settings)
    _generation[0] += 1


def reset_configuration() -> None:
    """Forget everything passed to :func:`configure` and a scrubbed ``DATABASE_API_TOKEN`` (for tests)."""
    _configured.clear()
    _scrubbed.clear()
    _generation[0] += 1


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean; use true or false.")


def _parse_seconds(name: str, raw: str) -> float | None:
    if not raw.strip():
        return None  # empty: the default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number of seconds.") from None


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for field_name, var in _ENV.items():
        if var in environ:
            raw = environ[var]
            if field_name == "database_access_isolation":
                found[field_name] = _parse_bool(var, raw)
            elif field_name == "commit_retry_deadline":
                if (seconds := _parse_seconds(var, raw)) is not None:
                    found[field_name] = seconds
            else:
                found[field_name] = raw or None
    return found


def _environ_snapshot() -> tuple[Any, ...] | None:
    """The five variables' current raw values, cheaply; None if ``os.environ`` was replaced.

    ``os.environ.get`` encodes the name and decodes the value on every call (about 1.5 us for
    each of the five); the process environment's own mapping (``os.environ._data``, whatever
    its platform encoding) answers the same question with plain dictionary look-ups. Every
    change through ``os.environ`` (``monkeypatch.setenv``, ``mock.patch.dict``) lands there.
    """
    if os.environ is not _ENVIRON or _DATA is None:
        return None
    if _TOKEN_KEY in _DATA:
        scrub_token_from_environ()
    return tuple(map(_DATA.get, _ENV_KEYS))


def get_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Resolve settings: explicit *overrides* > :func:`configure` > environment > defaults."""
    if environ is not None:
        return _resolve(environ, overrides)
    snapshot = _environ_snapshot()
    if snapshot is None:  # os.environ replaced by another mapping: read it the ordinary way
        if _TOKEN_VAR in os.environ:
            scrub_token_from_environ()
        snapshot = tuple(map(os.environ.get, _ENV.values()))
    try:
        # overrides in the caller's order, None included: another order or spelling of the
        # same arguments is only another entry for the same answer
        key = (_generation[0], _scrubbed.get(_TOKEN_VAR), snapshot, tuple(overrides.items()))
        settings = _resolved.get(key)
    except TypeError:  # an unhashable override: resolve without remembering
        return _resolve({**_scrubbed, **os.environ}, overrides)
    if settings is None:
        settings = _resolve({**_scrubbed, **os.environ}, overrides)
        if len(_resolved) >= _RESOLVED_MAX:
            _resolved.clear()
        _resolved[key] = settings
    elif settings.database_access_isolation and settings.token_file:
        check_token_file(settings.token_file)  # as validate() does: the file may have changed
    return settings


def _resolve(environ: Mapping[str, str], overrides: Mapping[str, Any]) -> Settings:
    values = _from_env(environ)
    values.update(_configured)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(Settings(), **values).validate()


scrub_token_from_environ()
