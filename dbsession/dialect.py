"""The isolation seam: a SQLAlchemy dialect whose "driver" is the DB-API.

``create_engine("dbsession://127.0.0.1:9180")`` asks the server (``GET /dbapi/v1/info``) which
dialect and driver it uses, then builds a subclass of *that* dialect class - so compilation,
capabilities, type processing and result handling are exactly the server's - with these changes:

* ``do_execute`` / ``do_executemany`` / ``do_execute_no_params`` send the statement's Core
  structure (:func:`query_translation.to_wire`), a hash of the SQL the client compiled, and the
  bound values as the server's driver must bind them: processed here, once, by the dialect's own
  bind processors (``_binds.py``) and adapted by a replica of the server driver's adaptation
  (``_adapt.py``); the server rebuilds the statement, checks that it compiles to the same SQL,
  executes it without processing again, and answers with raw driver rows;
* the compiler records, for every ORM statement, the Core statement its compile state produced,
  so the wire carries Core structure only; SQLAlchemy's own parameter construction runs no
  processor (the execution context processes the unexpanded values itself);
* "insertmanyvalues" runs as one batch (the server batches), RETURNING rows arrive in order;
* ``initialize()`` copies the server dialect's state instead of querying a database.

``postgresql+dbsession://...`` (and ``sqlite+``, ``mysql+``, ``mariadb+``) also work and insist
that the server's database is of that kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import URL, default
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql import compiler as sql_compiler
from sqlalchemy.util import memoized_property

from query_translation import WIRE_VERSION, driver_sql_document, driver_sql_params, encode_params, to_wire
from query_translation.fingerprint import document_hash, sql_fingerprint, text_fingerprint
from query_translation.reflection import REFLECTION_METHODS

from . import _adapt_psycopg, _dbapi
from ._adapt import adapter_for
from ._binds import dbapi_parameters, driver_parameters, driver_sql_parameters, processed_parameters
from .config import get_settings
from .exceptions import IncompatibleServerError
from .transport import ServerUnreachable, Transport, transport_for

__all__ = ["DBSessionDialect", "create_isolated_engine", "forget_server_info", "isolated_url", "server_info"]

_infos: dict[str, dict[str, Any]] = {}
_classes: dict[tuple[str, str, str], type[Dialect]] = {}


def server_info(transport: Transport) -> dict[str, Any]:
    """The server's handshake, fetched once per host."""
    info = _infos.get(transport.base_url)
    if info is None:
        try:
            info = transport.get("/info")
        except ServerUnreachable as exc:
            raise sa.exc.OperationalError(None, None, _dbapi.DisconnectError(str(exc))) from exc
        if info.get("wire_version") != WIRE_VERSION:
            raise IncompatibleServerError(
                f"The DB-API at {transport.base_url} speaks wire version {info.get('wire_version')}; "
                f"this client speaks {WIRE_VERSION}. Install matching versions of dbsession.")
        _infos[transport.base_url] = info
    return info


def forget_server_info(base_url: str) -> None:
    """Drop the cached handshake of *base_url* (the server there stopped or changed)."""
    _infos.pop(base_url, None)


# -- the compiler --------------------------------------------------------------------------------
class _RecordingCompilerMixin:
    """Records ORM statement -> Core statement while compiling; never processes binds."""

    _dbs_pending: list[Any]
    _dbs_core: dict[int, Any]
    stack: list[Any]  # the SQLCompiler's own, declared for the type checker

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._dbs_pending = []
        self._dbs_core = {}
        super().__init__(*args, **kw)

    def _dbs_visit(self, method: str, stmt: Any, kw: dict[str, Any]) -> Any:
        self._dbs_pending.append(stmt)
        try:
            return getattr(super(), method)(stmt, **kw)
        finally:
            self._dbs_pending.pop()

    def visit_select(self, select_stmt: Any, **kw: Any) -> Any:
        return self._dbs_visit("visit_select", select_stmt, kw)

    def _setup_select_stack(self, select: Any, compile_state: Any, *args: Any) -> Any:
        self._dbs_record(select)
        return super()._setup_select_stack(select, compile_state, *args)  # type: ignore[misc]

    def visit_insert(self, insert_stmt: Any, **kw: Any) -> Any:
        return self._dbs_dml("visit_insert", insert_stmt, kw)

    def visit_update(self, update_stmt: Any, **kw: Any) -> Any:
        return self._dbs_dml("visit_update", update_stmt, kw)

    def visit_delete(self, delete_stmt: Any, **kw: Any) -> Any:
        return self._dbs_dml("visit_delete", delete_stmt, kw)

    def _dbs_dml(self, method: str, stmt: Any, kw: dict[str, Any]) -> Any:
        result = self._dbs_visit(method, stmt, kw)
        state = getattr(self, "compile_state", None)
        if state is not None and getattr(state, "statement", None) is not None and self._dbs_core.get(id(stmt)) is None:
            if not self.stack:  # toplevel DML: its compile state is the compiler's
                self._dbs_core[id(stmt)] = state.statement
        return result

    def _dbs_record(self, core: Any) -> None:
        if self._dbs_pending:
            original = self._dbs_pending[-1]
            if original is not core:
                self._dbs_core.setdefault(id(original), core)

    @memoized_property
    def _bind_processors(self) -> Mapping[str, Any]:
        # none in SQLAlchemy's own construction of the (expanded) parameters: the execution
        # context processes the unexpanded values itself (_binds.py), so nothing runs twice
        return {}


def _compiler_for(base: type) -> type:
    return type(f"DBSession{base.__name__}", (_RecordingCompilerMixin, base), {})


class _ContextMixin:
    """Processes the bound values once, with the server dialect's processors (``dbsession._binds``).

    SQLAlchemy's own construction of the parameters runs no processor here (the compiler has
    none) and expands ``IN`` lists in place; the server must receive the processed values
    *unexpanded* (it expands them itself, into the same SQL), kept as ``_dbs_params``.
    ``context.parameters`` is then rebuilt as a direct connection builds it (expanded, processed)
    for listeners and rewritten SQL.
    """

    _dbs_params: list[dict[str, Any]]

    @classmethod
    def _init_compiled(cls, dialect: Any, connection: Any, dbapi_connection: Any, execution_options: Any,
                       compiled: Any, parameters: Any, invoked_statement: Any,
                       extracted_parameters: Any, *args: Any, **kw: Any) -> Any:
        self = super()._init_compiled(  # type: ignore[misc]
            dialect, connection, dbapi_connection, execution_options, compiled, parameters,
            invoked_statement, extracted_parameters, *args, **kw)
        collected = kw.get("param_dict") or (args[1] if len(args) > 1 else None)
        self._dbs_params = processed_parameters(self, compiled, parameters, extracted_parameters, collected)
        self.parameters = dbapi_parameters(self, self._dbs_params)
        return self


def _create_server_side_cursor(self: Any) -> Any:
    return self._dbapi_connection.cursor(stream=True)


def _context_for(base: type) -> type:
    return type(f"DBSession{base.__name__}", (_ContextMixin, base),
                {"create_server_side_cursor": _create_server_side_cursor})


# -- the dialect ---------------------------------------------------------------------------------
def _has_dml(document: Any) -> bool:
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if value.get("t") in ("insert", "update", "delete"):
                return True
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _wire_for(compiled: sql_compiler.SQLCompiler) -> tuple[dict[str, Any], str, bool, str | None]:
    """(wire document, SQL hash, needs a transaction, document hash) for a compiled statement,
    cached on it."""
    cached = compiled.__dict__.get("_dbs_wire")  # on the compiled statement: lives and dies with it
    if cached is None:
        root = compiled.compile_state.statement if compiled.compile_state is not None else compiled.statement
        document = to_wire(root, compiled=compiled, core_statements=getattr(compiled, "_dbs_core", None))
        node = document["statement"]
        needs_txn = (node["t"] not in ("select", "compound_select") or _locks(node)
                     or _has_dml(document))  # a SELECT writing through a data-modifying CTE
        digest = sql_fingerprint(compiled)
        cached = compiled._dbs_wire = (document, digest, needs_txn, document_hash(document))  # type: ignore[attr-defined]
    return cached


# The database's own catalog: what the dialect's inspection (Inspector, has_table) reads on
# PostgreSQL. Not application tables the server's metadata knows, so those statements travel as
# driver SQL - allowed only where the policy allows raw SQL.
_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


def _reads_system_catalog(compiled: sql_compiler.SQLCompiler) -> bool:
    found: bool | None = compiled.__dict__.get("_dbs_reads_catalog")
    if found is None:
        from sqlalchemy.sql.util import find_tables
        statement = compiled.statement
        found = statement is not None and any(
            getattr(t, "schema", None) in _SYSTEM_SCHEMAS
            for t in find_tables(statement, check_columns=True, include_aliases=True, include_joins=True))
        compiled._dbs_reads_catalog = found  # type: ignore[attr-defined]
    return found


def _locks(node: Any) -> bool:
    """Whether a statement document has FOR UPDATE anywhere (a locking subquery locks too)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("for_update"):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


_FORWARDED_OPTIONS = ("preserve_rowcount", "insertmanyvalues_page_size")
_DEFAULT_PAGE_ROWS = 1000  # stream_results without yield_per / max_row_buffer


def _remote_reflection(method: str) -> Any:
    def reflect(self: Any, connection: Any, *args: Any, **kw: Any) -> Any:
        return self._dbs_reflect(method, connection, args, kw)
    reflect.__name__ = reflect.__qualname__ = method
    reflect.__doc__ = f"``{method}``, answered by the DB-API for the tables it serves to this caller."
    return reflect


class _IsolatedDialectMixin:
    """Mixed in front of the server's dialect class."""

    is_dbsession = True
    # streamed results: the DB-API keeps the driver's cursor and sends pages (dbapi_server.cursors)
    supports_server_side_cursors = True
    server_side_cursors = False
    supports_statement_cache = True
    _dbs_state: Mapping[str, Any] = {}
    _dbs_driver_versions: Mapping[str, Any] = {}

    def __init__(self, **kw: Any) -> None:
        # The server driver's module is not here (nor needed): construct as if it were absent,
        # then take the server dialect's state, so nothing probes a driver we do not have.
        kw["dbapi"] = None
        kw.setdefault("paramstyle", self._dbs_state.get("paramstyle"))
        super().__init__(**kw)
        _apply_state(self, self._dbs_state)
        self._dbs_adapter = adapter_for(self)  # the server driver's adaptation, replicated
        self.dbapi = _dbapi.DriverModule(self._dbs_driver_versions, Binary=self._dbs_adapter.Binary)

    @classmethod
    def import_dbapi(cls) -> Any:
        return _dbapi

    @classmethod
    def load_provisioning(cls) -> None:
        """The server dialect's test provisioning (``sqlalchemy.testing``): this is that dialect."""
        for base in cls.__mro__[1:]:
            if base.__module__.startswith("sqlalchemy.dialects."):
                base.load_provisioning()  # type: ignore[attr-defined]
                return

    @classmethod
    def get_pool_class(cls, url: URL) -> type[sa.pool.Pool]:
        return sa.pool.QueuePool  # every client connection is independent, whatever the backend

    def get_dialect_pool_class(self, url: URL) -> type[sa.pool.Pool]:
        return sa.pool.QueuePool

    def create_connect_args(self, url: URL) -> tuple[list[Any], dict[str, Any]]:
        args = {"host": base_url(url), "eager_transactions": _truthy(url.query.get("eager_transactions")),
                "close_resets_rowcount": getattr(self, "driver", None) in _DRIVERS_RESETTING_ROWCOUNT_ON_CLOSE}
        if "commit_retry_deadline" in url.query:
            args["commit_retry_deadline"] = _seconds(url, "commit_retry_deadline")
        return [], args

    def on_connect(self) -> None:
        return None

    def _builtin_onconnect(self) -> None:
        return None

    def on_connect_url(self, url: URL) -> None:
        return None

    def initialize(self, connection: Any) -> None:
        _apply_state(self, self._dbs_state)

    def has_table(self, connection: Any, table_name: str, schema: str | None = None, **kw: Any) -> bool:
        """Asked of the DB-API: the database's catalog is not readable as structure, and alembic's
        ``MigrationContext`` (Airflow's and MLflow's migration checks) asks before it reads
        ``alembic_version``. Tables the server does not serve to this caller do not exist."""
        self._ensure_has_table_connection(connection)  # type: ignore[attr-defined]
        found = connection.connection.dbapi_connection.has_table(table_name, schema)
        if found is None:  # an older DB-API: the dialect's own catalog query (raw SQL, if allowed)
            return super().has_table(connection, table_name, schema, **kw)  # type: ignore[misc,no-any-return]
        return bool(found)

    def _dbs_reflect(self, method: str, connection: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        """One reflection method, answered by the DB-API (``dbapi_server.reflection``)."""
        names = REFLECTION_METHODS[method]
        sent: dict[str, Any] = dict(zip(names, args, strict=False))
        options: dict[str, Any] = {}
        for name, value in kw.items():
            if name in ("info_cache", "unreflectable"):
                continue
            if name in ("schema", "filter_names", "table_name", "index_name"):
                sent[name] = list(value) if name == "filter_names" and value is not None else value
            elif name in ("kind", "scope"):
                sent[name] = value.value
            elif name.startswith(f"{self.name}_") and isinstance(value, (str, int, float, bool, type(None))):  # type: ignore[attr-defined]
                options[name] = value  # the dialect's own options (postgresql_ignore_search_path...)
        if options:
            sent["kw"] = options
        found = connection.connection.dbapi_connection.reflect(method, sent)
        if found is _dbapi.NOT_SERVED:  # an older DB-API: the dialect's own catalog queries
            return getattr(super(), method)(connection, *args, **kw)
        if method.startswith("get_multi_"):
            return [(tuple(k), v) for k, v in found]
        return found

    def get_default_isolation_level(self, dbapi_conn: Any) -> Any:
        return self._dbs_state.get("default_isolation_level")

    def get_isolation_level(self, dbapi_connection: Any) -> Any:
        return self._dbs_state.get("default_isolation_level")

    def set_isolation_level(self, dbapi_connection: Any, level: Any) -> None:
        if level != self._dbs_state.get("default_isolation_level"):
            raise NotImplementedError("Per-connection isolation levels are not supported through the DB-API yet.")

    def reset_isolation_level(self, dbapi_conn: Any) -> None:
        return None

    def do_ping(self, dbapi_connection: Any) -> bool:
        return True

    def is_disconnect(self, e: Any, connection: Any, cursor: Any) -> bool:
        return isinstance(e, _dbapi.DisconnectError)

    def do_begin(self, dbapi_connection: Any) -> None:
        return None

    def do_commit(self, dbapi_connection: Any) -> None:
        dbapi_connection.commit()

    def do_rollback(self, dbapi_connection: Any) -> None:
        dbapi_connection.rollback()

    def do_close(self, dbapi_connection: Any) -> None:
        dbapi_connection.close()

    def do_terminate(self, dbapi_connection: Any) -> None:
        dbapi_connection.close()

    def do_set_input_sizes(self, cursor: Any, list_of_tuples: Any, context: Any) -> None:
        return None

    def do_execute(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        self._dbs_send(cursor, context, many=False, sql=(statement, [parameters]))

    def do_execute_no_params(self, cursor: Any, statement: Any, context: Any = None) -> None:
        self._dbs_send(cursor, context, many=False, sql=(statement, []))

    def do_executemany(self, cursor: Any, statement: Any, parameters: Any, context: Any = None) -> None:
        self._dbs_send(cursor, context, many=True, sql=(statement, parameters))

    def _dbs_send(self, cursor: Any, context: Any, *, many: bool, sql: tuple[Any, Any]) -> None:
        compiled = getattr(context, "compiled", None)
        if not isinstance(compiled, sql_compiler.SQLCompiler) or _reads_system_catalog(compiled):
            self._dbs_send_text(cursor, context, compiled, many=many, sql=sql)
            return
        if sql[0] != getattr(context, "statement", None):
            # a before_cursor_execute listener (retval=True) rewrote the SQL, or the dialect runs
            # SQL of its own while preparing the statement (PostgreSQL's "select nextval(...)"
            # for a pre-executed Sequence): the structure does not describe it, so it travels as
            # the text it is - driver SQL, which only a policy allowing raw SQL accepts - never
            # silently as the compiled statement
            self._dbs_send_text(cursor, context, None, many=many, sql=sql)
            return
        document, digest, needs_txn, doc_hash = _wire_for(compiled)
        # the connection leaves the document out once this host has it (``stmt_hash`` suffices)
        payload: dict[str, Any] = {"stmt": document, "sql": digest,
                                   "params": encode_params(driver_parameters(context, self._dbs_adapter))}
        if doc_hash is not None:
            payload["stmt_hash"] = doc_hash
        if many or context.executemany:
            payload["many"] = True
        if compiled.isinsert and ("select" in document["statement"] or "multi_values" in document["statement"]):
            # INSERT ... FROM SELECT and multi-row VALUES: crud decides from the compiled column
            # keys which Python defaults join the SELECT, and how a row's default binds are named
            # (the first row's prefetch default is keyed like the column, the others "<key>_m<n>");
            # the parameters carry more keys than were compiled with, so the server must compile
            # with the client's keys, not the parameters', to build the same statement
            payload["keys"] = list(compiled.column_keys or ())
        if isinstance(cursor, _dbapi.StreamingCursor):
            payload["stream"] = int(context.execution_options.get("max_row_buffer") or _DEFAULT_PAGE_ROWS)
        options = {k: context.execution_options[k] for k in _FORWARDED_OPTIONS if k in context.execution_options}
        if options:
            payload["options"] = options
        deferral = cursor.connection.deferral
        if deferral is not None:  # a commit's final flush: its UPDATEs may travel with the COMMIT
            n_params = len(payload["params"])
            held, expect = deferral.expectation(context, compiled, cursor, n_params)
            if held:
                cursor.defer(payload, expect, n_params, context)
                return
        cursor.run(payload, needs_txn=needs_txn)

    def _dbs_send_text(self, cursor: Any, context: Any, compiled: Any, *, many: bool,
                       sql: tuple[Any, Any] | None = None) -> None:
        """DDL and ``exec_driver_sql``: the SQL itself, under a node kind the policy judges.

        The server's default policy refuses both; a test policy allows them (see
        ``docs/wire-format.md``, "SQL text nodes"). Always in a transaction: nothing tells
        whether the text only reads.
        """
        kind = "ddl" if isinstance(compiled, sql_compiler.DDLCompiler) else "driver_sql"
        statement, parameters = sql if sql is not None else (context.statement, context.parameters)
        params, positional = driver_sql_params(driver_sql_parameters(parameters or [], self._dbs_adapter))
        statement = str(statement)
        payload: dict[str, Any] = {
            "stmt": driver_sql_document(kind, statement, positional=positional, version=WIRE_VERSION),
            "sql": text_fingerprint(statement), "params": encode_params(params)}
        if many or context.executemany:
            payload["many"] = True
        cursor.run(payload, needs_txn=True)

    def _deliver_insertmanyvalues_batches(self, connection: Any, cursor: Any, statement: Any,
                                          parameters: Any, generic_setinputsizes: Any, context: Any) -> Any:
        """One batch with every parameter set: the server splits it into its own batches."""
        compiled = context.compiled
        returning = bool(compiled.effective_returning)
        params = context.compiled_parameters
        yield sql_compiler._InsertManyValuesBatch(
            statement, parameters, None, params, [], len(params), 1, 1,
            bool(compiled._insertmanyvalues and compiled._insertmanyvalues.sort_by_parameter_order),
            False)
        if returning:
            context._insertmanyvalues_rows = list(cursor.fetchall())


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def _seconds(url: URL, name: str) -> float:
    raw = url.query[name]
    try:
        value = float(raw if isinstance(raw, str) else raw[-1])
    except ValueError:
        value = -1.0
    if not value > 0:
        raise sa.exc.ArgumentError(f"?{name}= in a dbsession URL is a number of seconds above 0, got {raw!r}.")
    return value


def base_url(url: URL) -> str:
    """``http://host:port[/prefix]`` of the DB-API named by a ``dbsession://`` URL."""
    if not url.host:
        raise sa.exc.ArgumentError(
            "A dbsession URL names the DB-API host: dbsession://HOST:PORT (no database credentials).")
    scheme = "https" if _truthy(url.query.get("tls")) else "http"
    port = f":{url.port}" if url.port else ""
    path = f"/{url.database}" if url.database else ""
    return f"{scheme}://{url.host}{port}{path}"


def isolated_url(api_host: str) -> URL:
    """The ``dbsession://`` URL for a ``database_api_host`` such as ``http://127.0.0.1:9180``."""
    parts = urlsplit(api_host if "://" in api_host else f"http://{api_host}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise sa.exc.ArgumentError(f"database_api_host must look like http://host:port, got {api_host!r}.")
    query = {"tls": "true"} if parts.scheme == "https" else {}
    return URL.create("dbsession", host=parts.hostname, port=parts.port,
                      database=parts.path.strip("/") or None, query=query)


# capabilities of the client side itself, never taken from the server: streamed results always
# come page by page through the DB-API, whatever the server's driver calls its cursors
_CLIENT_OWNED = frozenset({"supports_server_side_cursors", "server_side_cursors"})


# The catalog is read with SQL text, which an isolated client may not send: the DB-API runs the
# server dialect's own reflection methods on the tables it serves to the caller.
for _name in REFLECTION_METHODS:
    setattr(_IsolatedDialectMixin, _name, _remote_reflection(_name))


def _apply_state(dialect: Any, state: Mapping[str, Any]) -> None:
    """Make *dialect* behave as the server's initialized dialect.

    Plain-valued state is copied. What a dialect derives from it in ``initialize()`` as objects
    is replayed with the dialect's own methods, as its ``initialize()`` would: MySQL/MariaDB
    install MariaDB's type implementations and quoting (``_set_mariadb``) and rebuild quoting
    for ANSI_QUOTES servers.
    """
    if state.get("is_mariadb") and hasattr(dialect, "_set_mariadb") and not getattr(dialect, "is_mariadb", False):
        dialect._set_mariadb(True, tuple(state.get("server_version_info") or ()))
    for name, value in state.items():
        if name not in _CLIENT_OWNED:
            setattr(dialect, name, tuple(value) if isinstance(value, list) else value)
    if getattr(dialect, "_server_ansiquotes", False):
        dialect.identifier_preparer = dialect.preparer(dialect, server_ansiquotes=True)


# Drivers whose cursor forgets its rowcount when closed (psycopg 3: ``_reset()`` sets -1).
# SQLAlchemy reads an INSERT's rowcount after closing the cursor (unless ``preserve_rowcount``),
# so a direct session sees -1 there; the stand-in cursor must do what the server's driver does.
_DRIVERS_RESETTING_ROWCOUNT_ON_CLOSE = frozenset({"psycopg"})


# What SQLAlchemy's psycopg dialect takes from psycopg itself while processing bound values: the
# client needs no psycopg, and the driver replica recognizes these stand-ins
_DRIVER_STAND_INS: dict[str, dict[str, Any]] = {
    "psycopg": {"_psycopg_Json": _adapt_psycopg.Json, "_psycopg_Jsonb": _adapt_psycopg.Jsonb,
                "_psycopg_Range": _adapt_psycopg.Range, "_psycopg_Multirange": _adapt_psycopg.Multirange},
}


def isolated_dialect_class(info: Mapping[str, Any]) -> type[Dialect]:
    """The client dialect class for a server's handshake (cached per dialect, driver and state).

    The state is part of the key: two DB-APIs of one dialect and driver can serve databases whose
    initialized dialects differ (MySQL / MariaDB: the default schema is the database's name; the
    server version; ANSI quotes), and a class carries its server's state.
    """
    key = (info["dialect"], info["driver"],
           orjson.dumps(info.get("dialect_state", {}), option=orjson.OPT_SORT_KEYS).decode())
    cls = _classes.get(key)
    if cls is None:
        base = sa.dialects.registry.load(f"{info['dialect']}.{info['driver']}")
        attrs = {"statement_compiler": _compiler_for(base.statement_compiler), "supports_statement_cache": True,
                 "execution_ctx_cls": _context_for(base.execution_ctx_cls),
                 "_dbs_state": dict(info.get("dialect_state", {})),
                 "_dbs_driver_versions": dict(info.get("driver_versions", {})),
                 **_DRIVER_STAND_INS.get(info["driver"], {})}
        cls = type(f"DBSession{base.__name__}", (_IsolatedDialectMixin, base), attrs)
        _classes[key] = cls
    elif info.get("driver_versions"):
        cls._dbs_driver_versions = dict(info["driver_versions"])  # type: ignore[attr-defined]
    return cls


class DBSessionDialect(default.DefaultDialect):
    """Entry point for ``dbsession://`` URLs; resolves to the server's dialect via the handshake."""

    name = "dbsession"
    driver = "dbsession"

    @classmethod
    def import_dbapi(cls) -> Any:
        return _dbapi

    @classmethod
    def get_dialect_cls(cls, url: URL) -> type[Dialect]:
        info = server_info(transport_for(base_url(url), timeout=get_settings().timeout))
        wanted = url.get_backend_name()
        if wanted not in ("dbsession", "dbsession_async") and wanted != info["dialect"] and not (
                {wanted, info["dialect"]} <= {"mysql", "mariadb"}):
            raise IncompatibleServerError(
                f"The URL asks for a {wanted} database but the DB-API at {url.host} serves "
                f"{info['dialect']}; use dbsession://{url.host}:{url.port} to accept any.")
        return isolated_dialect_class(info)

    @classmethod
    def get_async_dialect_cls(cls, url: URL) -> type[Dialect]:
        """``create_async_engine()`` with a ``dbsession://`` URL: the async variant (``dbsession._async_dialect``)."""
        from ._async_dialect import async_dialect_class

        return async_dialect_class(cls.get_dialect_cls(url))


def create_isolated_engine(api_host: str, *, token: str | None = None, token_file: str | None = None,
                           **kw: Any) -> sa.Engine:
    """An engine whose every statement goes to the DB-API at *api_host* (``http://host:port``)."""
    connect_args = dict(kw.pop("connect_args", {}))
    if token is not None or token_file is not None:
        connect_args.update(token=token, token_file=token_file)
    return sa.create_engine(isolated_url(api_host), connect_args=connect_args, **kw)
