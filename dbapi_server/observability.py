"""Per-request observability, as a WSGI middleware around the whole DB-API application.

:class:`ObservedApp` wraps ``app.wsgi_app`` (the outermost layer: whatever the request pipeline
inside becomes, every request passes here once). For each request it

* takes the client's ``X-Request-Id`` (a fresh one when absent or not a sane token), echoes it in
  the answer's ``X-Request-Id`` header and binds it, with the request's other labels
  (:mod:`dbapi_server.telemetry`), to the context the pipeline runs in;
* times it, and records the Prometheus metrics (:mod:`dbapi_server.metrics`);
* logs one line to ``dbapi_server.access`` (JSON with ``dbapi-server serve``, see
  :mod:`dbapi_server.logs`) with these fields, those without a value left out:

  ``method``, ``route`` (the template, never the raw path), ``status``, ``duration_ms``,
  ``request_id``, ``error_id`` and ``error_code`` (an error answer's envelope), ``subject`` (the
  verified token's subject - never the token), ``txn`` (the client's transaction id), ``kind``
  (statement kind), ``replayed`` (answered from the stored answer of a retried request),
  ``token_failure``, ``bytes_in``, ``bytes_out``, ``trace_id`` (OpenTelemetry);

* with ``opentelemetry-api`` installed (and ``DBAPI_OTEL`` not ``false``), runs the request in a
  server span, continuing the client's trace from its ``traceparent`` header;
* answers ``GET /metrics`` itself (see :class:`MetricsAccess`).

Probe and metrics requests are logged at DEBUG, so a Kubernetes probe every few seconds does not
fill the log.
"""

from __future__ import annotations

import hmac
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .metrics import Metrics
from .telemetry import RequestLabels, _bind, _unbind, request_id_from_header

__all__ = ["MetricsAccess", "ObservedApp"]

access_log = logging.getLogger("dbapi_server.access")

_QUIET_ROUTES = frozenset({"/dbapi/v1/live", "/dbapi/v1/ready", "/dbapi/v1/health", "/metrics"})
_WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class MetricsAccess:
    """Who may read ``GET /metrics`` on the DB-API's port.

    Deny by default: metrics show who is busy with what kind of statements, which refusals
    happen and how full the pool is - nothing an untrusted worker (which reaches this port) needs.
    ``token``: Prometheus sends it as a bearer token (``authorization: {credentials_file: ...}``
    in its scrape config); ``public``: anyone who reaches the port may read them (a port only the
    monitoring network reaches). Neither: ``/metrics`` answers 404.
    """

    token: str | None = None
    public: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MetricsAccess:
        env = os.environ if env is None else env
        token = env.get("DBAPI_METRICS_TOKEN") or None
        token_file = env.get("DBAPI_METRICS_TOKEN_FILE")
        if token_file:
            token = Path(token_file).read_text().strip() or None
        public = env.get("DBAPI_METRICS_PUBLIC", "").strip().lower() in ("1", "true", "yes")
        return cls(token=token, public=public)

    def allows(self, authorization: str | None) -> bool:
        if self.public:
            return True
        if self.token is None or not authorization or not authorization.startswith("Bearer "):
            return False
        return hmac.compare_digest(authorization[7:].strip().encode(), self.token.encode())

    @property
    def enabled(self) -> bool:
        return self.public or self.token is not None


class ObservedApp:
    """The WSGI middleware (see the module's description)."""

    def __init__(self, app: _WSGIApp, metrics: Metrics, access: MetricsAccess, *,
                 tracing: bool | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access
        self.tracer = _tracer() if tracing is not False else None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        labels = RequestLabels(request_id_from_header(environ.get("HTTP_X_REQUEST_ID")))
        token = _bind(labels)
        span = self.tracer.start(environ) if self.tracer is not None else None
        answer: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer["status"] = int(status[:3])
            answer["headers"] = headers
            headers.append(("X-Request-Id", labels.request_id))
            return start_response(status, headers, exc_info)

        try:
            if environ.get("PATH_INFO") == "/metrics":
                body: Iterable[bytes] = self._metrics(environ, start, labels)
            else:
                body = self.app(environ, start)
            status = answer.get("status", 500)
            error: Mapping[str, Any] = {}
            if status >= 400:  # error answers are small: read the envelope for its code and id
                body = _collected(body)
                error = _envelope(b"".join(body))
            elif not isinstance(body, list) and _small(answer.get("headers")):
                # Flask answers with an iterator, which granian sends as a stream: the head in one
                # write, the body in another, and the client wakes twice. A list goes in one write.
                body = _collected(body)
        except BaseException:
            # only BaseExceptions reach here (Flask answers every Exception): recorded, re-raised
            self._record(environ, labels, 500, started, {"code": "internal_error"}, None, span)
            raise
        finally:
            _unbind(token)
        self._record(environ, labels, status, started, error, answer.get("headers"), span)
        return body

    def _metrics(self, environ: dict[str, Any], start: Callable[..., Any], labels: RequestLabels) -> list[bytes]:
        labels.route = "/metrics"
        if not self.access.enabled or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _error(start, "404 NOT FOUND", "not_found", "The requested URL was not found on the server.")
        if not self.access.allows(environ.get("HTTP_AUTHORIZATION")):
            return _error(start, "401 UNAUTHORIZED", "unauthenticated",
                          "Reading the metrics needs the metrics bearer token (DBAPI_METRICS_TOKEN_FILE).")
        data, content_type = self.metrics.exposition(environ.get("HTTP_ACCEPT"))
        start("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(data)))])
        return [data]

    def _record(self, environ: Mapping[str, Any], labels: RequestLabels, status: int, started: float,
                error: Mapping[str, Any], headers: list[tuple[str, str]] | None, span: Any) -> None:
        seconds = time.perf_counter() - started
        code = error.get("code") if isinstance(error.get("code"), str) else None
        self.metrics.observe(labels.route, labels.kind, status, seconds, code, labels.token_failure,
                             labels.replayed)
        trace_id = self.tracer.finish(span, labels, status, code) if self.tracer and span else None
        level = logging.DEBUG if labels.route in _QUIET_ROUTES else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        method = environ.get("REQUEST_METHOD", "")
        fields: dict[str, Any] = {
            "method": method, "route": labels.route, "status": status,
            "duration_ms": round(seconds * 1000, 3), "request_id": labels.request_id,
            "error_id": error.get("error_id"), "error_code": code, "subject": labels.subject,
            "txn": labels.txn, "kind": labels.kind, "replayed": labels.replayed or None,
            "token_failure": labels.token_failure, "bytes_in": _int(environ.get("CONTENT_LENGTH")),
            "bytes_out": _int(_header(headers, "content-length")), "trace_id": trace_id,
        }
        # the record Logger.log makes, without its search of the stack for the caller (this line)
        caller = sys._getframe()
        record = access_log.makeRecord(access_log.name, level, caller.f_code.co_filename, caller.f_lineno,
                                       "%s %s %d %.1fms", (method, labels.route, status, seconds * 1000), None,
                                       caller.f_code.co_name, {k: v for k, v in fields.items() if v is not None})
        access_log.handle(record)


def _error(start: Callable[..., Any], status: str, code: str, message: str) -> list[bytes]:
    data = orjson.dumps({"error": {"code": code, "message": message, "error_id": None, "retryable": False}})
    start(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def _envelope(data: bytes) -> Mapping[str, Any]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    error = document.get("error") if isinstance(document, dict) else None
    return error if isinstance(error, dict) else {}


_SMALL_ANSWER = 1 << 20


def _small(headers: list[tuple[str, str]] | None) -> bool:
    """Whether the answer declares a length of at most 1 MiB (never a stream of unknown length)."""
    length = _header(headers, "content-length")
    return length is not None and length.isdigit() and int(length) <= _SMALL_ANSWER


def _collected(body: Iterable[bytes]) -> list[bytes]:
    chunks = list(body)
    _close(body)
    return chunks


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()


def _header(headers: list[tuple[str, str]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key.lower() == name:
            return value
    return None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# -- OpenTelemetry (optional) -------------------------------------------------------------------
class _EnvironGetter:
    """Reads W3C trace context headers (``traceparent``, ``tracestate``) from a WSGI environ."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


class _Tracer:
    """Server spans through the OpenTelemetry API; spans record only if an SDK is configured."""

    def __init__(self, provider: Any = None) -> None:
        from opentelemetry import context, propagate, trace

        self._context, self._propagate, self._trace = context, propagate, trace
        self._provider = provider  # None: the process's (trace.set_tracer_provider)
        self._getter: Any = _EnvironGetter()  # duck-typed: opentelemetry's Getter protocol
        self._proxy = trace.ProxyTracerProvider
        self._real = provider is not None  # a provider that records: known once seen (it is set once)
        self._textmap: Any = None
        self._carriers: tuple[str, ...] = ()  # the environ keys of the propagator's headers

    def start(self, environ: dict[str, Any]) -> tuple[Any, Any] | None:
        """The request's server span and its context token; None when there is nothing to record.

        Without a tracer provider (no OpenTelemetry SDK configured) a span records nothing: the
        only thing it would carry is the client's trace id (into the access log), so unless the
        request carries trace context headers nothing is made (the span's cost is ~10 us).
        """
        trace = self._trace
        if not self._real:
            if not isinstance(trace.get_tracer_provider(), self._proxy):
                self._real = True
            else:
                textmap = self._propagate.get_global_textmap()
                if textmap is not self._textmap:
                    self._carriers = tuple("HTTP_" + f.upper().replace("-", "_") for f in textmap.fields)
                    self._textmap = textmap
                if not any(key in environ for key in self._carriers):
                    return None
        parent = self._propagate.extract(environ, getter=self._getter)
        span = trace.get_tracer("dbapi_server", tracer_provider=self._provider).start_span(
            f"{environ.get('REQUEST_METHOD', '')} dbapi", context=parent, kind=trace.SpanKind.SERVER)
        return span, self._context.attach(trace.set_span_in_context(span, parent))

    def finish(self, started: tuple[Any, Any], labels: RequestLabels, status: int, code: str | None) -> str | None:
        span, token = started
        self._context.detach(token)
        span_context = span.get_span_context()
        if span.is_recording():
            span.update_name(f"{labels.route} {labels.kind}" if labels.kind != "none" else labels.route)
            span.set_attribute("http.route", labels.route)
            span.set_attribute("http.response.status_code", status)
            span.set_attribute("dbapi.request_id", labels.request_id)
            span.set_attribute("dbapi.statement_kind", labels.kind)
            if labels.txn:
                span.set_attribute("dbapi.txn_id", labels.txn)
            if code:
                span.set_attribute("error.type", code)
            if status >= 500:
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, code))
        span.end()
        return f"{span_context.trace_id:032x}" if span_context.is_valid else None


def _tracer() -> _Tracer | None:
    if os.environ.get("DBAPI_OTEL", "").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        return _Tracer()
    except ImportError:
        return None
