"""``create_app()``: the DB-API as a Flask application.

Arguments win over environment variables, which exist so ``flask --app dbapi_server run`` and the
``dbapi-server`` command need no code:

=========================  ===================================================================
``DBAPI_DATABASE_URL``     the real database (only the server ever holds it)
``DBAPI_METADATA``         import path of the application's tables, ``myapp.models:Base.metadata``
``DBAPI_AUTH``             ``jwt`` (default) or ``none`` (development only)
``DBAPI_JWT_*``            verification keys, algorithms, issuer, audience, skew: see
                           :func:`dbapi_server.auth.authenticator_from_env` and ``docs/tokens.md``
``DBAPI_TXN_IDLE_TIMEOUT`` seconds before an idle transaction is rolled back (default 60)
``DBAPI_MAX_BODY_BYTES``   largest accepted request body (default 64 MiB): a request's memory
                           bound, refused by its Content-Length before it is read
``DBAPI_ENGINE_OPTIONS``   the served engine's ``create_engine()`` arguments (JSON), and
                           ``DBAPI_CONNECT_ARGS``, ``DBAPI_SQLITE_PRAGMAS``, ``DBAPI_PG_OPTIONS``:
                           see :mod:`dbapi_server.engine_options`
``DBAPI_METHODS``          comma-separated modules defining named methods, imported at start
``DBAPI_EXTRA_TABLES``     comma-separated tables outside the metadata to serve, reflected at start
                           (``alembic_version``); read-only unless a policy file grants more
                           (:mod:`dbapi_server.extra_tables`)
``DBAPI_POLICY_FILE``      per-role policy (TOML, ``docs/security.md``); default: the open preset
``DBAPI_SHUTDOWN_GRACE``   seconds open transactions may still finish after SIGTERM (default 30)
``DBAPI_METRICS_TOKEN``    bearer token (or ``DBAPI_METRICS_TOKEN_FILE``) for ``GET /metrics``;
                           ``DBAPI_METRICS_PUBLIC=true`` serves them to anyone: see
                           :class:`dbapi_server.observability.MetricsAccess`
``DBAPI_OTEL``             ``false`` turns the OpenTelemetry spans off (on when it is installed)
``DBAPI_LOG_FORMAT``       ``json`` or ``text``, and ``DBAPI_LOG_LEVEL``, for ``dbapi-server serve``
                           (:mod:`dbapi_server.logs`)
``DBAPI_DB_ROLES``         ``off`` (default), ``verify`` or ``apply``: run each role's requests
                           under a PostgreSQL role compiled from the policy (``db_wall``)
``DBAPI_DB_ROLES_NAMESPACE`` prefix of those roles' names (default: the database's name)
``DBAPI_DB_ROLES_POLICY``  compile the roles from this policy file instead of the served one
``DBAPI_DB_ROW_SECURITY``  ``on`` (default) or ``off``: row filters also as row-level security
``DBAPI_DB_CONNECT_WAIT``  seconds a new database connection is retried while the database refuses
                           it (a restart; default 5, 0: off; :mod:`dbapi_server.connect_wait`)
``DBAPI_COMMIT_OUTCOMES``  ``table`` (default on PostgreSQL and MariaDB/MySQL) or ``memory`` (default
                           on SQLite): where commit outcomes are kept for retried commits
                           (:mod:`dbapi_server.outcomes`; ``table`` survives the instance)
``DBAPI_COMMIT_OUTCOME_TABLE`` its name (default ``dbapi_commit_outcomes``)
``DBAPI_COMMIT_OUTCOME_SCHEMA`` its schema (default ``dbapi`` on PostgreSQL, created if missing;
                           the database itself on MariaDB)
``DBAPI_COMMIT_OUTCOME_TTL`` seconds its rows are kept (default 3600; more than any client's
                           ``commit_retry_deadline``)
``DBAPI_TEST_HOOKS``       ``enable``: honour the fault-injection hooks of :mod:`dbapi_server._test_hooks`
                           (tests only; never in production)
=========================  ===================================================================
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, request

from query_translation import MethodRegistry

from ._db_catalog import DatabaseRolesError
from ._liveness import use_socket_liveness
from ._test_hooks import install_test_hooks
from .auth import Authenticator, authenticator_from_env
from .connect_wait import wait_for_connections
from .db_roles import DatabaseRoles
from .db_wall import DatabaseWall, open_wall
from .engine_options import EngineOptions, EngineOptionsError
from .extra_tables import ExtraTableError, parse_names, served_metadata
from .logs import attach_request_ids
from .methods import load_methods, methods_api
from .observability import MetricsAccess, ObservedApp
from .outcomes import DEFAULT_TABLE
from .pipeline import HotRoutes, check_headers, error_answer
from .policy import Policy, PolicyError
from .probes import probes
from .state import ServerState
from .telemetry import label
from .views import api

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ConfigError", "create_app", "load_metadata"]

log = logging.getLogger("dbapi_server")

# the largest request body by default: real applications store large rows (MLflow's own tests send
# bodies over 16 MiB); a body is held in memory whole while it is decoded, so this bounds a
# request's memory, and a larger one is refused by its Content-Length before it is read
DEFAULT_MAX_BODY_BYTES = 64 << 20


class ConfigError(RuntimeError):
    """The server's configuration is incomplete or wrong."""


def load_metadata(path: str) -> sa.MetaData:
    """Import ``module:attr.attr`` and return the ``MetaData`` it names."""
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(f"DBAPI_METADATA must look like 'package.module:Base.metadata', got {path!r}.")
    target: Any = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        target = getattr(target, attr)
    if not isinstance(target, sa.MetaData):
        raise ConfigError(f"{path} is a {type(target).__name__}, not a sqlalchemy MetaData.")
    return target


def _authenticator_from_env() -> Authenticator:
    try:
        return authenticator_from_env(os.environ)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def create_app(database_url: str | sa.URL | None = None, metadata: sa.MetaData | str | None = None, *,
               engine: sa.Engine | None = None, authenticator: Authenticator | None = None,
               policy: Policy | str | os.PathLike[str] | None = None, idle_timeout: float | None = None,
               max_body_bytes: int | None = None, engine_options: EngineOptions | dict[str, Any] | None = None,
               methods: MethodRegistry | Iterable[str] | None = None, shutdown_grace: float | None = None,
               metrics_access: MetricsAccess | None = None,
               db_roles: str | DatabaseRoles | None = None, commit_outcomes: str | None = None,
               extra_tables: Iterable[str] | str | None = None) -> Flask:
    """Build the DB-API application for one database and one application's tables.

    *engine_options* (``create_engine()`` keywords, or :class:`~dbapi_server.engine_options.EngineOptions`)
    win over the environment's (``DBAPI_ENGINE_OPTIONS``...), key by key; they do not apply to a
    given *engine*.

    *commit_outcomes*: ``"table"`` keeps commit outcomes in a table of the database, so any
    instance answers a retried commit (``dbapi_server.outcomes``); ``"memory"`` keeps them in this
    process only. Default: ``DBAPI_COMMIT_OUTCOMES``, else ``table`` except on SQLite.

    *extra_tables*: tables outside *metadata* to serve, reflected now (``DBAPI_EXTRA_TABLES``,
    the policy file's ``extra_tables``; :mod:`dbapi_server.extra_tables`).
    """
    metadata = metadata if metadata is not None else os.environ.get("DBAPI_METADATA")
    if metadata is None:
        raise ConfigError("Tell the DB-API which tables it serves: metadata= or DBAPI_METADATA.")
    if isinstance(metadata, str):
        metadata = load_metadata(metadata)
    if engine is None:
        database_url = database_url or os.environ.get("DBAPI_DATABASE_URL")
        if not database_url:
            raise ConfigError("Tell the DB-API which database to serve: database_url= or DBAPI_DATABASE_URL.")
        # by default pre-ping: a pooled connection the database dropped (a restart, a failover, an
        # idle timeout) is replaced at checkout instead of failing the next request
        try:
            engine = EngineOptions.from_env(os.environ).merged(engine_options).create_engine(database_url)
        except EngineOptionsError as exc:
            raise ConfigError(str(exc)) from None
        if getattr(engine.pool, "_pre_ping", False):
            use_socket_liveness(engine)  # checked on its socket first: no database round trip per checkout
        # a database that is restarting refuses connections for a moment: wait for it a little
        wait_for_connections(engine, float(os.environ.get("DBAPI_DB_CONNECT_WAIT", "5")))
    if idle_timeout is None:
        idle_timeout = float(os.environ.get("DBAPI_TXN_IDLE_TIMEOUT", "60"))
    if shutdown_grace is None:
        shutdown_grace = float(os.environ.get("DBAPI_SHUTDOWN_GRACE", "30"))
    served_policy = _policy(policy)
    try:
        names = parse_names(extra_tables if extra_tables is not None else os.environ.get("DBAPI_EXTRA_TABLES"))
        names |= served_policy.extra_tables
        metadata = served_metadata(metadata, engine, names)
    except ExtraTableError as exc:
        raise ConfigError(str(exc)) from None
    served_policy.serve_extra_tables(names)
    _validate(served_policy, metadata)
    outcome_table = _outcome_table(engine, commit_outcomes)
    try:
        state = ServerState(engine=engine, metadata=metadata,
                            auth=authenticator if authenticator is not None else _authenticator_from_env(),
                            policy=served_policy, idle_timeout=idle_timeout,
                            methods=load_methods(methods if methods is not None else os.environ.get("DBAPI_METHODS")),
                            shutdown_grace=shutdown_grace, outcome_table=outcome_table,
                            outcome_schema=os.environ.get("DBAPI_COMMIT_OUTCOME_SCHEMA", ""),
                            outcome_ttl=float(os.environ.get("DBAPI_COMMIT_OUTCOME_TTL", "3600")))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    install_test_hooks(state, os.environ)

    state.wall = _wall(state, db_roles)
    app = Flask("dbapi_server")
    # no redirects: a path with doubled or trailing slashes (a transaction id ending in "/") is
    # answered as any unknown path, in the JSON envelope - werkzeug's 308 is an HTML page that
    # Flask sends past the error handlers
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    # no body larger than every role's limit is read (a server that buffers bodies before the
    # application sees them, waitress, refuses it by its Content-Length too)
    max_body = max_body_bytes or int(os.environ.get("DBAPI_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
    largest = state.policy.largest_body()
    app.config["MAX_CONTENT_LENGTH"] = min(max_body, largest) if largest is not None else max_body
    app.extensions["dbapi_server"] = state
    app.register_blueprint(api)
    app.register_blueprint(methods_api)
    app.register_blueprint(probes)
    app.register_error_handler(Exception, _handle_error)
    app.before_request(_check_headers)
    app.before_request(_label_route)
    attach_request_ids()
    # the hot routes (/execute, /batch) are answered by their own pipeline, without Flask's
    # machinery (dbapi_server/pipeline.py); every other request goes on to Flask's views
    hot = HotRoutes(app.wsgi_app, state, app.config)
    # outermost layer: timing, metrics, the access log line and the request id for every request,
    # whatever path it takes inside (dbapi_server/observability.py)
    app.wsgi_app = ObservedApp(hot, state.metrics,  # type: ignore[method-assign]
                               metrics_access if metrics_access is not None else MetricsAccess.from_env())
    if state.wall is not None:
        app.teardown_request(lambda exc: DatabaseWall.end_request())
    return app


def _outcome_table(engine: sa.Engine, setting: str | None) -> str | None:
    """The commit outcome table's name, or None for outcomes in memory."""
    setting = setting or os.environ.get("DBAPI_COMMIT_OUTCOMES") or (
        "memory" if engine.dialect.name == "sqlite" else "table")
    if setting not in ("table", "memory"):
        raise ConfigError(f"DBAPI_COMMIT_OUTCOMES is 'table' or 'memory', not {setting!r}.")
    if setting == "memory":
        return None
    return os.environ.get("DBAPI_COMMIT_OUTCOME_TABLE") or DEFAULT_TABLE


def _label_route() -> None:
    """The matched route's template (bounded: never the raw path) labels the request."""
    if request.url_rule is not None:
        label(route=request.url_rule.rule)


def _check_headers() -> None:
    """Header fields over ``pipeline.MAX_HEADER_BYTES``: 431 (the hot routes check the same)."""
    check_headers(request.environ)


def _wall(state: ServerState, db_roles: str | DatabaseRoles | None) -> DatabaseWall | None:
    """The second wall (database roles), as configured; refuses to start on a mismatch."""
    setting = db_roles if db_roles is not None else os.environ.get("DBAPI_DB_ROLES", "off")
    row_security = os.environ.get("DBAPI_DB_ROW_SECURITY", "on").lower() not in ("off", "0", "false", "no")
    try:
        # the roles may come from another (a DBA's, a stricter) policy than the one served
        source = os.environ.get("DBAPI_DB_ROLES_POLICY")
        policy = Policy.from_file(source, state.metadata) if source and setting != "off" else state.policy
        return open_wall(state.engine, state.metadata, policy, setting, row_security=row_security,
                         namespace=os.environ.get("DBAPI_DB_ROLES_NAMESPACE") or None)
    except (ValueError, DatabaseRolesError, PolicyError) as exc:
        state.close()
        raise ConfigError(str(exc)) from None


def _policy(policy: Policy | str | os.PathLike[str] | None) -> Policy:
    """The configured policy (checked against the served tables by :func:`_validate`)."""
    if policy is None:
        policy = os.environ.get("DBAPI_POLICY_FILE") or None
    if policy is None:
        return Policy.open()
    if isinstance(policy, Policy):
        return policy
    try:
        return Policy.from_file(policy)
    except PolicyError as exc:
        raise ConfigError(f"The DB-API policy is wrong: {exc}") from None


def _validate(policy: Policy, metadata: sa.MetaData) -> None:
    """Check the policy against the served tables now rather than at the first request."""
    try:
        policy.validate(metadata)
    except PolicyError as exc:
        raise ConfigError(f"The DB-API policy is wrong: {exc}") from None


def _handle_error(exc: Exception) -> Response:
    """Every error of a Flask view, answered as the hot routes answer theirs."""
    status, payload = error_answer(exc)
    return Response(payload, status=status, mimetype="application/json")
