"""waitress, configured so that its own refusals look like the DB-API's.

waitress answers some requests itself, before the application sees them: a header block over
``max_request_header_size`` (431), a body over ``max_request_body_size`` (413, judged by the
Content-Length before the body is read), a request it cannot parse (400). Its answers are plain
text; here they carry the DB-API's JSON error envelope instead (``docs/wire-format.md``), and the
body limit is the application's own (``MAX_CONTENT_LENGTH``, ``DBAPI_MAX_BODY_BYTES``), so a body
too large is refused before it is uploaded rather than buffered first.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, MultiSocketServer, create_server
from waitress.task import ErrorTask

__all__ = ["create_waitress_server"]

_CODES = {400: "bad_request", 413: "body_too_large", 431: "headers_too_large", 501: "not_implemented"}
_MESSAGES = {413: "The request body is larger than the DB-API accepts (DBAPI_MAX_BODY_BYTES).",
             431: "The request's header fields are larger than the DB-API accepts."}
DEFAULT_MAX_BODY = 1 << 30  # waitress's own default


class _JSONErrorTask(ErrorTask):
    """waitress's error answer, in the JSON envelope (never echoing the request)."""

    def execute(self) -> None:
        error: Any = cast(Any, self.request).error  # the parser that failed (types-waitress: Error)
        status = int(error.code)
        body = orjson.dumps({"error": {
            "code": _CODES.get(status, "http_error" if status < 500 else "internal_error"),
            "message": _MESSAGES.get(status, f"{error.reason}: the HTTP server could not read the request."),
            "error_id": None, "retryable": False}})
        self.status = f"{status} {error.reason}"
        self.response_headers = [*self.response_headers, ("Content-Type", "application/json")]
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    error_task_class = _JSONErrorTask


def create_waitress_server(app: Any, **kw: Any) -> MultiSocketServer | BaseWSGIServer:
    """``waitress.create_server`` with JSON refusals and the application's body limit."""
    limit = getattr(app, "config", {}).get("MAX_CONTENT_LENGTH")
    # waitress refuses a Content-Length >= max_request_body_size while parsing the headers
    kw.setdefault("max_request_body_size", limit + 1 if limit else DEFAULT_MAX_BODY)
    server = create_server(app, **kw)
    for each in (server.map or {}).values() if isinstance(server, MultiSocketServer) else (server,):
        if isinstance(each, BaseWSGIServer):  # one per listening socket (several for host "*")
            each.channel_class = _Channel
    return server
