"""The error envelope, and how server-side failures map onto it.

Every error answer has the same shape, which the client maps to exception classes by ``code``
and HTTP status, never by parsing messages::

    {"error": {"code": "policy_violation", "message": "...", "error_id": "3f2a...",
               "retryable": false, ...}}

Database errors answer 422 with the driver's PEP 249 class name (``IntegrityError``...), so the
client can raise the same SQLAlchemy exception a direct session would. Nothing in an envelope
carries SQL text, a stack trace or a connection URL; unexpected failures are logged with their
``error_id`` and answered with that id only.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import sqlalchemy as sa

from query_translation import TRANSMITTED_BUILTINS
from query_translation import exceptions as qt_exc

log = logging.getLogger("dbapi_server")

__all__ = ["APIError", "envelope_for_exception"]

_PEP249 = ("IntegrityError", "DataError", "OperationalError", "ProgrammingError", "InternalError",
           "NotSupportedError", "InterfaceError", "DatabaseError", "Error")


class APIError(Exception):
    """An error answer: HTTP status, stable code, a sentence for the user."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.extra = extra


def new_error_id() -> str:
    return uuid.uuid4().hex[:16]


def _envelope(code: str, message: str, error_id: str, *, retryable: bool = False,
              **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "error_id": error_id,
                      "retryable": retryable, **extra}}


def _pep249_name(orig: BaseException | None) -> str:
    for cls in type(orig).__mro__:
        if cls.__name__ in _PEP249:
            return cls.__name__
    return "DatabaseError"


_CONNECTING = ("OperationalError", "InterfaceError")  # with no statement: connecting failed
# where a driver quotes the statement around a syntax error: MySQL / MariaDB, SQLite, PostgreSQL
_QUOTED_SQL = re.compile(r"""(near |at or near )(?:'.*'(?= at line)|".*?"(?=:|$))""", re.S)


def database_message(exc: sa.exc.DBAPIError) -> str:
    """The driver's message, minus what may hold more than the database's verdict.

    Kept: the first line of the database's own message (it names the constraint, column or type
    at fault, which the client needs). Dropped: PostgreSQL's DETAIL (it can quote a whole row,
    with columns the caller may not read), HINT and statement excerpt; the statement text a
    syntax error quotes; and, for a connection that could not be made or was lost, everything
    (it names the database's host, port, user and database).
    """
    orig = exc.orig
    if exc.connection_invalidated or (exc.statement is None and _pep249_name(orig) in _CONNECTING):
        return "The DB-API lost or could not open its database connection; retry later."
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # MySQL drivers: (errno, message)
        message = str(args[1]) if len(args) > 1 else ""
    else:
        diag = getattr(orig, "diag", None)
        message = getattr(diag, "message_primary", None) or str(orig)
    first_line = message.strip().split("\n", 1)[0]
    first_line = _QUOTED_SQL.sub(r"\1<statement text withheld>", first_line)
    return withhold_names(first_line) or type(orig).__name__


def _database_envelope(exc: sa.exc.DBAPIError, error_id: str) -> dict[str, Any]:
    orig = exc.orig
    extra: dict[str, Any] = {"dbapi_class": _pep249_name(orig)}
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate:
        extra["sqlstate"] = sqlstate
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        extra["errno"] = args[0]
    retryable = bool(getattr(exc, "connection_invalidated", False))
    return _envelope("database_error", database_message(exc), error_id, retryable=retryable, **extra)


_TRANSLATION_CODES: dict[type[Exception], str] = {
    qt_exc.UnknownNodeError: "unknown_node",
    qt_exc.MalformedStatementError: "malformed_statement",
    qt_exc.UnknownTableError: "unknown_table",
    qt_exc.UnknownColumnError: "unknown_column",
    qt_exc.UnsupportedStatementError: "unsupported_statement",
    qt_exc.WireVersionError: "wire_version",
    qt_exc.ValueCodecError: "bad_value",
}


_MALFORMED = "The statement document is malformed"

# SQLAlchemy's own refusals of a statement the client sent (never raised by the database);
# InvalidRequestError only exactly: its subclasses (PendingRollbackError...) are server states
_CLIENT_MISTAKES = (sa.exc.CompileError, sa.exc.ArgumentError)


def _json_keys(value: Any) -> Any:
    """*value* with every mapping key made a string, so the envelope is valid JSON."""
    if isinstance(value, dict):
        return {str(k): _json_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_keys(v) for v in value]
    return value


# the database drivers the DB-API runs with (their Python parts), by top-level module
DRIVER_MODULES = ("sqlite3", "psycopg", "psycopg2", "pymysql", "MySQLdb", "mariadb", "asyncpg", "pg8000",
                  "oracledb", "pyodbc")
# SQLAlchemy's calls into the driver's cursor: an exception whose innermost Python frame is one of
# these came out of the driver's C code (sqlite3's cursor.execute raising OverflowError)
_CURSOR_CALLS = {"sqlalchemy.engine.default": frozenset({"do_execute", "do_executemany", "do_execute_no_params"})}


def raised_by_driver(exc: BaseException) -> bool:
    """Whether *exc* was raised inside the database driver, judged by its innermost frame.

    Only such an exception is the database side's answer to the request; the same class raised
    anywhere else (the decoder, the policy, the executor) is a failure of the server.
    """
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    if module.split(".", 1)[0] in DRIVER_MODULES:
        return True
    return tb.tb_frame.f_code.co_name in _CURSOR_CALLS.get(module, ())


WITHHELD = "<withheld>"
# a name an answer may repeat: a plain identifier, optionally qualified (schema.table.column)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,63}(?:\.[A-Za-z_][A-Za-z0-9_$]{0,63}){0,2}")
# quoted text in a message: Python reprs ('x', "it's") and SQL quoting ("x", 'x', `x`)
_QUOTED = re.compile(r"""(?<!\w)(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|`[^`\n]*`)(?!\w)""")
# SQLite names what it cannot find without quotes, at the end of its message
_SQLITE_UNQUOTED = re.compile(r"^((?:no such (?:table|column|function|savepoint|collation sequence|module)|"
                              r"ambiguous column name|table \S+ has no column named|no such index)): (.+)$")


# PostgreSQL names some things unquoted too (a qualified column: column t.x does not exist)
_PG_UNQUOTED = re.compile(r"^((?:column|relation|function|type|schema|savepoint|table|index|sequence|constraint|cursor)"
                          r"(?: reference)?) ([^\"'].*?) (does not exist|is ambiguous)$")


# MariaDB / MySQL quote names without escaping the quote inside them: the templates of the
# messages that name something, each name taken greedily between the template's fixed parts
_MYSQL_TEMPLATES = [re.compile(p) for p in (
    r"^(Unknown column ')(?P<a>.*)(' in ')(?P<b>[^']*)(')$",
    r"^(Table ')(?P<a>.*)(' doesn't exist)$",
    r"^(Column ')(?P<a>.*)(' in )(?P<b>.*)( is ambiguous)$",
    r"^(Unknown table ')(?P<a>.*)(' in )(?P<b>.*)()$",
    r"^(Not unique table/alias: ')(?P<a>.*)(')$",
    r"^(FUNCTION )(?P<a>.*)( does not exist)$",
    r"^(SAVEPOINT )(?P<a>.*)( does not exist)$",
    r"^(Duplicate entry ')(?P<a>.*)(' for key ')(?P<b>[^']*)(')$",
)]


def _template(message: str) -> str | None:
    for template in _MYSQL_TEMPLATES:
        found = template.match(message)
        if found is not None:
            names = found.groupdict()
            return "".join(shown_name(part) if (found.start(i) in {found.start(n) for n in names}
                                                and part is not None) else (part or "")
                           for i, part in enumerate(found.groups(), start=1))
    return None


def shown_name(name: Any) -> str:
    """*name* if it is a plain identifier, else ``<withheld>``: an answer never repeats the
    caller's text (SQL in disguise, values) - only names (docs/security.md, "Refusals")."""
    return name if isinstance(name, str) and _NAME.fullmatch(name) else WITHHELD


def withhold_names(message: str) -> str:
    """*message* with every quoted part that is not a plain identifier replaced by ``<withheld>``."""
    templated = _template(message)
    if templated is not None:
        return templated

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        return text if _NAME.fullmatch(text[1:-1]) else f"{text[0]}{WITHHELD}{text[-1]}"

    message = _QUOTED.sub(replace, message)
    unquoted = _SQLITE_UNQUOTED.match(message)
    if unquoted is not None:
        message = f"{unquoted.group(1)}: {shown_name(unquoted.group(2))}"
    unquoted = _PG_UNQUOTED.match(message)
    if unquoted is not None:
        message = f"{unquoted.group(1)} {shown_name(unquoted.group(2))} {unquoted.group(3)}"
    return message


def _withhold_details(value: Any) -> Any:
    """``details`` of a malformed statement with the caller's keys and quoted text withheld."""
    if isinstance(value, dict):
        return {(str(k) if isinstance(k, int) or str(k).isdigit() else shown_name(str(k))): _withhold_details(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_withhold_details(v) for v in value]
    return withhold_names(value) if isinstance(value, str) else value


def envelope_for_exception(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, envelope) for any exception raised while handling a request."""
    error_id = new_error_id()
    if isinstance(exc, APIError):
        fields = dict(exc.extra)
        error_id = fields.pop("error_id", None) or error_id  # an id already logged under
        return exc.status, _envelope(exc.code, exc.message, error_id, **fields)
    if isinstance(exc, qt_exc.TranslationError):
        code = next((c for cls, c in _TRANSLATION_CODES.items() if isinstance(exc, cls)), "bad_statement")
        extra: dict[str, Any] = {}
        message = str(exc)
        if isinstance(exc, qt_exc.MalformedStatementError):
            extra["details"] = _withhold_details(_json_keys(exc.errors))  # marshmallow keys list items by int
            if message.startswith(_MALFORMED):  # the details again, as a repr: they are in "details"
                message = f"{_MALFORMED}: see 'details'; make sure client and server run the same wire version."
        if isinstance(exc, qt_exc.UnknownNodeError):
            extra["node_type"] = shown_name(exc.node_type)
        if message != str(exc) or withhold_names(message) != message:
            log.info("statement refused %s: %s", error_id, exc)  # the full text, for the operator
        return 400, _envelope(code, withhold_names(message), error_id, **extra)
    if isinstance(exc, sa.exc.TimeoutError):  # the pool: every connection is held
        log.warning("no free database connection %s: %s", error_id, exc)
        return 503, _envelope("database_busy", "The DB-API has no free database connection (too many open "
                              "transactions or result cursors); retry shortly.", error_id, retryable=True)
    if isinstance(exc, sa.exc.DBAPIError):
        log.info("database error %s: %s\nSQL: %s", error_id, exc.orig, exc.statement)
        return 422, _database_envelope(exc, error_id)
    if isinstance(exc, sa.exc.StatementError) and exc.orig is not None and type(exc.orig).__name__ in TRANSMITTED_BUILTINS:
        # rendering a literal_execute bind failed (its literal processor runs here, on the Python
        # value; every other value arrives processed): a direct session raises StatementError
        # wrapping it
        return 422, _envelope("statement_error", str(exc.orig), error_id,
                              orig_type=type(exc.orig).__name__)
    if isinstance(exc, sa.exc.SAWarning):
        # raised only where warnings are errors (-W error, test suites); a warning about the
        # client's statement (an implicitly coerced subquery...) is the client's mistake too
        log.info("statement drew a SQLAlchemy warning %s: %s", error_id, exc)
        return 400, _envelope("bad_statement", "The DB-API cannot execute the statement as sent: SQLAlchemy "
                              f"warned about its structure (details in the server log, error id {error_id}).",
                              error_id)
    client_mistake = exc.orig if isinstance(exc, sa.exc.StatementError) else exc
    if isinstance(client_mistake, _CLIENT_MISTAKES) or type(client_mistake) is sa.exc.InvalidRequestError:
        # the statement as sent cannot run (a bind value missing, an uncompilable structure):
        # the request is wrong, not the server
        log.info("unexecutable statement %s: %s", error_id, client_mistake)
        reason = client_mistake.args[0] if client_mistake.args else type(client_mistake).__name__
        return 400, _envelope("bad_statement", "The DB-API cannot execute the statement as sent: "
                              f"{withhold_names(str(reason))}", error_id)
    if type(exc).__name__ in TRANSMITTED_BUILTINS and type(exc).__module__ == "builtins" and raised_by_driver(exc):
        # the driver itself raised a builtin (sqlite3: int too large); direct sessions see it raw.
        # The same class raised by the server's own code is a crash, answered below (500).
        return 422, _envelope("driver_error", withhold_names(str(exc)), error_id, orig_type=type(exc).__name__)
    log.error("unexpected error %s", error_id, exc_info=exc)
    return 500, _envelope("internal_error",
                          f"The DB-API failed unexpectedly; its log has the details under error id {error_id}.",
                          error_id)
