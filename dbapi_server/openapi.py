"""The OpenAPI 3.1 description of the DB-API, served at ``GET /dbapi/v1/openapi.json``.

Built from the code, not written beside it: the statement document, node and value schemas come
from ``query_translation.json_schema`` (itself derived from the marshmallow schemas and the value
codec); the ``/execute`` and ``/batch`` request bodies are rendered from the declaration the
request pipeline validates them with (:mod:`dbapi_server._request_schema`). A test checks that
every route (Flask's and the pipeline's) is described and every described path is a route.
Long-form semantics stay in ``docs/wire-format.md``; this document is for tools (client
generators, schema-driven fuzzers such as the one in ``tests/security``).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from query_translation import WIRE_VERSION
from query_translation.json_schema import wire_schema_definitions

from ._request_schema import BATCH_REQUEST, EXECUTE_REQUEST, FINISH_REQUEST, TXN_ID

__all__ = ["PATHS", "openapi_document"]

PREFIX = "/dbapi/v1"
_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {_JSON: {"schema": schema}}}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "malformed request, statement or value; statement mismatch; a statement over the size limits "
             "(see the envelope's code)",
        401: "token missing, malformed, expired, forged or of another audience",
        403: "refused by the policy, or the transaction / cursor belongs to another subject",
        409: "a sequence or page number out of order, or a transaction id reused",
        410: "the transaction or cursor has ended, expired or is unknown here (transaction_not_here: "
             "held by no instance reachable this way, or by another; a commit's answer then carries "
             "the outcome from the commit outcome table)",
        404: "no such named method, or not in this version (unknown_method)",
        413: "the request body is larger than DBAPI_MAX_BODY_BYTES or the role's max_body_bytes (judged by its "
             "Content-Length, before it is read), or the request carries too many parameter values",
        415: "the body is declared as something other than JSON",
        431: "the header fields are larger than the DB-API accepts",
        422: "the database (or a bind processor) refused the statement",
        500: "unexpected failure: the server's log has the details under the error id",
        503: "no free database connection (database_busy), or a new transaction asked of an instance "
             "that is shutting down (shutting_down); both retryable, nothing ran; or a commit whose "
             "outcome cannot be read from the database now (commit_in_doubt; ask again)",
    }
    with_body = (415,) if 413 in statuses else ()  # the routes that read a body
    return {str(s): _answer(reasons[s], _ref("Error")) for s in sorted({*statuses, *with_body, 431, 500, 503})}


def _path_param(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", **schema}}


def _obj(properties: dict[str, Any], required: tuple[str, ...] = (), extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": extra}


_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]
_OPEN: list[dict[str, list[str]]] = []

PATHS: dict[str, dict[str, Any]] = {
    "/openapi.json": {"get": {
        "operationId": "openapi", "summary": "This document.", "security": _OPEN,
        "responses": {"200": _answer("the OpenAPI description", {"type": "object"})}}},
    "/info": {"get": {
        "operationId": "info", "summary": "Handshake: dialect, driver, versions, dialect state.",
        "security": _OPEN, "responses": {"200": _answer("the server's handshake", _ref("Info"))}}},
    "/live": {"get": {
        "operationId": "live", "summary": "Liveness: the process answers (no database).", "security": _OPEN,
        "responses": {"200": _answer("alive", _obj({"status": {"const": "alive"}}, ("status",)))}}},
    "/ready": {"get": {
        "operationId": "ready", "summary": "Readiness: database reachable, not shutting down, pool not "
        "exhausted.", "security": _OPEN,
        "responses": {"200": _answer("ready for new work", _ref("Readiness")),
                      "503": _answer("not ready; 'reason' says why (not an error envelope)", _ref("Readiness"))}}},
    "/health": {"get": {
        "operationId": "health", "summary": "Deprecated (use /live and /ready): a database round trip.",
        "deprecated": True, "security": _OPEN,
        "responses": {"200": _answer("healthy", _ref("Health")),
                      "503": _answer("the database is unreachable (not an error envelope)", _ref("Health"))}}},
    "/execute": {"post": {
        "operationId": "execute", "summary": "Run one statement, optionally inside a transaction.",
        "security": _AUTH, "requestBody": _body(_ref("ExecuteRequest")),
        "responses": {"200": _answer("the statement ran", _ref("ExecuteResult")),
                      **_errors(400, 401, 403, 409, 410, 413, 422, 503)}}},
    "/batch": {"post": {
        "operationId": "batch",
        "summary": "Statements of one transaction, each with the row count it must match; with 'commit', "
                   "commit if and only if all ran and matched.",
        "security": _AUTH, "requestBody": _body(_ref("BatchRequest")),
        "responses": {"200": _answer("every statement ran (and committed, with 'commit'), or one matched "
                                     "another row count ('failed')", _ref("BatchResult")),
                      **_errors(400, 401, 403, 409, 410, 413, 422, 503)}}},
    "/cursors/{cursor_id}/fetch": {"post": {
        "operationId": "fetchCursor", "summary": "The next page of a streamed result (replayable).",
        "security": _AUTH,
        "parameters": [_path_param("cursor_id", "the id an execute answer with 'cursor' returned")],
        "requestBody": _body(_obj({"page": {"type": "integer", "minimum": 1}}, ("page",))),
        "responses": {"200": _answer("a page", _ref("Page")), **_errors(400, 401, 403, 409, 410, 413)}}},
    "/cursors/{cursor_id}/close": {"post": {
        "operationId": "closeCursor", "summary": "End a streamed result early (idempotent).",
        "security": _AUTH,
        "parameters": [_path_param("cursor_id", "the id an execute answer with 'cursor' returned")],
        "requestBody": _body(_obj({}), required=False),
        "responses": {"200": _answer("closed", _obj({"closed": {"const": True}}, ("closed",))),
                      **_errors(401, 403, 413)}}},
    "/transactions/{txn_id}/{verb}": {"post": {
        "operationId": "finishTransaction",
        "summary": "Commit or roll back; asking again returns the remembered outcome.",
        "security": _AUTH,
        "parameters": [_path_param("txn_id", "the id the client chose when it began the transaction",
                                   pattern=f"^{TXN_ID}$"),
                       _path_param("verb", "what to do", enum=["commit", "rollback"])],
        "requestBody": _body(FINISH_REQUEST.openapi(), required=False),
        "responses": {"200": _answer("the outcome", _obj(
                          {"outcome": {"enum": ["committed", "rolled_back", "expired", "failed",
                                               "rolled_back_at_shutdown"]}},
                          ("outcome",))),
                      **_errors(400, 401, 403, 409, 410, 413, 422)}}},
    "/catalog/has_table": {"post": {
        "operationId": "hasTable",
        "summary": "Whether a table the caller may use exists (Dialect.has_table); other names: false.",
        "security": _AUTH,
        "requestBody": _body(_obj({"name": {"type": "string"}, "schema": {"type": ["string", "null"]}},
                                  ("name",))),
        "responses": {"200": _answer("the answer", _obj({"exists": {"type": "boolean"}}, ("exists",))),
                      **_errors(400, 401, 403, 413)}}},
    "/catalog/reflect": {"post": {
        "operationId": "reflect",
        "summary": "A dialect reflection method (get_columns, get_multi_indexes...) on the tables the caller "
        "may use.",
        "security": _AUTH,
        "requestBody": _body(_obj({"method": {"type": "string"}, "args": {"type": "object"}}, ("method",))),
        "responses": {"200": _answer("the result, or the NoSuchTableError to raise", _obj(
                          {"result": {}, "raise": {"type": "string"}, "message": {"type": "string"}})),
                      **_errors(400, 401, 403, 413)}}},
    "/methods": {"get": {
        "operationId": "listMethods", "summary": "The named methods this server serves, with signatures.",
        "security": _AUTH,
        "responses": {"200": _answer("the served methods", {"type": "array", "items": _obj(
                          {"name": {"type": "string"}, "version": {"type": "integer"},
                           "signature": {"type": "string"}}, ("name", "version"), extra=True)}),
                      **_errors(401)}}},
    "/methods/{name}": {"post": {
        "operationId": "callMethod",
        "summary": "Run a named method in the caller's transaction (docs/named-methods.md).",
        "security": _AUTH,
        "parameters": [_path_param("name", "the method's registered name")],
        "requestBody": _body(_obj({"version": {"type": "integer"}, "args": {"type": "object"},
                                   "txn": {"type": "string"}, "seq": {"type": "integer"},
                                   "begin": {"type": "boolean"}}, ("version",))),
        "responses": {"200": _answer("the method returned", _obj({"result": {}}, ("result",))),
                      **_errors(400, 401, 403, 404, 409, 410, 413, 422, 503)}}},
}


def _components() -> dict[str, Any]:
    value = _ref("Value")
    return {
        # the request bodies: generated from the declaration that validates them (_request_schema.py)
        EXECUTE_REQUEST.name: EXECUTE_REQUEST.openapi(),
        BATCH_REQUEST.name: BATCH_REQUEST.openapi(),
        "BatchResult": _obj({
            "outcome": {"enum": ["committed"]},
            "failed": _obj({"index": {"type": "integer"}, "rowcount": {"type": "integer"}}, ("index", "rowcount")),
            "commit_error": {"type": "object", "description": "the Error envelope's inner object"},
        }, extra=True),
        "ExecuteResult": _obj({
            "rowcount": {"type": "integer"},
            "lastrowid": value,
            "description": {"type": "array", "items": {"type": "array", "items": value}},
            "rows": {"type": "array", "items": {"type": "array", "items": value}},
            "cursor": {"type": "string"},
            "more": {"type": "boolean"},
        }, ("rowcount",), extra=True),
        "Page": _obj({"rows": {"type": "array", "items": {"type": "array", "items": value}},
                      "more": {"type": "boolean"}}, ("rows", "more")),
        "Info": _obj({"wire_version": {"const": WIRE_VERSION}, "dialect": {"type": "string"},
                      "driver": {"type": "string"},
                      "server_version_info": {"type": "array"}, "dialect_state": {"type": "object"},
                      "schema_hash": {"type": "string"}, "sqlalchemy": {"type": "string"},
                      "driver_versions": {"type": "object", "description": "the server driver's version attributes"}},
                     ("wire_version", "dialect", "driver", "dialect_state", "schema_hash")),
        "Health": _obj({"status": {"enum": ["ok", "unhealthy"]}, "database": {"enum": ["ok", "unreachable", "busy"]},
                        "transactions": {"type": "object"}}, ("status", "database")),
        "Readiness": _obj({"status": {"enum": ["ready", "not_ready"]},
                           "reason": {"enum": ["draining", "pool_exhausted", "database_unreachable",
                                               "database_busy"]},
                           "transactions": {"type": "object"}}, ("status",)),
        "Error": _obj({"error": _obj({
            "code": {"type": "string", "description": "stable; clients map by status and code"},
            "message": {"type": "string", "description": "a sentence for a human; no SQL, traces or URLs"},
            "error_id": {"type": ["string", "null"], "description": "finds the server's log entry"},
            "retryable": {"type": "boolean"},
        }, ("code", "message", "error_id", "retryable"), extra=True)}, ("error",)),
        **wire_schema_definitions(),
    }


@cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "dbsession DB-API", "version": str(WIRE_VERSION),
                 "description": "Statement structure in, raw rows out. Semantics: docs/wire-format.md."},
        "servers": [{"url": PREFIX}],
        "paths": PATHS,
        "components": {"schemas": _components(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI document; *server_url* (scheme and host) makes its ``servers`` entry absolute."""
    document = copy.deepcopy(_document())
    if server_url:
        document["servers"] = [{"url": server_url.rstrip("/") + PREFIX}]
    return document
