"""Logging of a served DB-API: one JSON object per line (``python-json-logger``), or plain text.

``dbapi-server serve`` calls :func:`configure_logging` (in granian's worker process, after granian
set up its own loggers). Applications that embed the server (``create_app``) configure logging
themselves; the records below are then theirs to format.

=======================  ===========================================================
``DBAPI_LOG_FORMAT``     ``json`` (default) or ``text``
``DBAPI_LOG_LEVEL``      ``INFO`` (default): one line per request; ``WARNING`` silences
                         the access lines, ``DEBUG`` adds probe and metrics requests
=======================  ===========================================================

Loggers: ``dbapi_server.access`` (one line per request, see :mod:`dbapi_server.observability`
for its fields), ``dbapi_server`` and its children (errors under their ``error_id``, transactions
rolled back by the reaper or at shutdown...). Every record logged while a request is handled
carries that request's ``request_id``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from itertools import filterfalse
from typing import Any

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

from .telemetry import current

__all__ = ["RequestIdFilter", "attach_request_ids", "configure_logging", "json_formatter"]

_FIELDS = ["asctime", "levelname", "name", "message"]
_RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}


class RequestIdFilter(logging.Filter):
    """Adds the current request's id to every record logged while a request is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            labels = current()
            if labels is not None:
                record.request_id = labels.request_id
        return True


_FILTER = RequestIdFilter()


def attach_request_ids() -> None:
    """Put the request id on every record of the DB-API's loggers, whoever handles them (idempotent).

    A logger's filters see only the records created on it, so each ``dbapi_server*`` logger gets one.
    """
    names = ["dbapi_server", *(n for n in logging.Logger.manager.loggerDict if n.startswith("dbapi_server."))]
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class _JsonFormatter(OrjsonFormatter):
    """python-json-logger's ``OrjsonFormatter``, the same output, in a third of its time for the
    records the DB-API logs (one access line per request): a string message, no exception, no
    stack, no defaults or static fields; anything else goes the library's way.

    Measured per access line (``bench/bench_pipeline.py``'s records): 13 us -> 4 us. The time
    stamp's seconds part is formatted once per second; the extras are merged in one pass.
    """

    _second: tuple[int, str] = (-1, "")
    _plain: bool | None = None  # configured as json_formatter() does (decided at the first record)

    def format(self, record: logging.LogRecord) -> str:
        plain = self._plain
        if plain is None:
            plain = self._plain = not (self.defaults or self.static_fields or self.timestamp
                                       or self.rename_fields_keep_missing or self.datefmt is not None
                                       or self._required_fields != _FIELDS)
        if not plain or record.exc_info or record.exc_text or record.stack_info or type(record.msg) is not str:
            return super().format(record)
        record.message = message = record.getMessage()
        second, stamp = self._second
        if int(record.created) != second:
            second, stamp = int(record.created), time.strftime(self.default_time_format,
                                                               self.converter(record.created))
            self._second = second, stamp
        record.asctime = asctime = self.default_msec_format % (stamp, record.msecs)  # type: ignore[operator]
        rename = self.rename_fields
        data: dict[str, Any] = {rename.get("asctime", "asctime"): asctime,
                                rename.get("levelname", "levelname"): record.levelname,
                                rename.get("name", "name"): record.name, rename.get("message", "message"): message}
        attributes = record.__dict__
        for key in filterfalse(self._skip_fields.__contains__, attributes):  # the extras, in order
            if key[:1] != "_" if type(key) is str else not (hasattr(key, "startswith") and key.startswith("_")):
                data[rename.get(key, key)] = attributes[key]
        data = self.process_log_record(data)
        return self.prefix + orjson.dumps(data, default=self.json_default, option=orjson.OPT_NON_STR_KEYS).decode()


def json_formatter() -> logging.Formatter:
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message, then the extras."""
    formatter = _JsonFormatter(_FIELDS, rename_fields=_RENAMED)
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def configure_logging(env: Mapping[str, str] | None = None) -> None:
    """Send the DB-API's loggers to stderr in the configured format and level (idempotent)."""
    env = os.environ if env is None else env
    fmt = env.get("DBAPI_LOG_FORMAT", "json").strip().lower()
    if fmt not in ("json", "text"):
        raise ValueError(f"DBAPI_LOG_FORMAT must be json or text, got {fmt!r}.")
    level = env.get("DBAPI_LOG_LEVEL", "INFO").strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError(f"DBAPI_LOG_LEVEL must be a logging level name (INFO, WARNING...), got {level!r}.")
    attach_request_ids()
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("dbapi_server")
    handler.addFilter(_FILTER)  # records of loggers made later (a named method's module...)
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s", defaults={"request_id": "-"}))
    logger = logging.getLogger("dbapi_server")
    for old in [h for h in logger.handlers if h.get_name() == "dbapi_server"]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # granian's root handler would print them a second time, unformatted
