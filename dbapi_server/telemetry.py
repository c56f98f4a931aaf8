"""What the request pipeline tells the observability layer about the request it is handling.

The pipeline (views, executor, auth, transactions) never logs, counts or times requests itself:
:class:`dbapi_server.observability.ObservedApp`, a WSGI middleware around the whole application,
does, once per request - the latency histograms, the counters, the JSON access log line, the
OpenTelemetry span. Only the pipeline knows some of what those carry (which route matched, the
statement's kind, the transaction, the verified subject, a token's failure reason, whether the
answer was a stored one replayed), so it says so with :func:`label`, which sets fields of the
current request's :class:`RequestLabels`. Outside a request (a direct call in a test, the reaper
thread) :func:`label` does nothing.

Error codes and error ids need no label: the middleware reads them from the error envelope of
the answer (the wire contract, ``docs/wire-format.md``), whatever raised it.

Every labelled value that becomes a metric label comes from a small fixed set (route templates,
:data:`STATEMENT_KINDS`, :data:`TOKEN_FAILURES`, envelope codes): never a table name, subject,
transaction id or raw path, so the number of series stays bounded and a metrics reader learns
nothing about the data. Subjects and transaction ids go to the log line only.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["STATEMENT_KINDS", "TOKEN_FAILURES", "RequestLabels", "current", "label", "new_request_id",
           "request_id_from_header", "statement_kind"]

# what ``kind`` may be; "none" for requests that carry no statement (info, probes...)
STATEMENT_KINDS = frozenset({"select", "insert", "update", "delete", "ddl", "sql", "method", "commit",
                             "batch", "batch_commit",
                             "rollback", "fetch", "close", "other", "none"})
# why a token was refused (``Unauthenticated.reason``)
TOKEN_FAILURES = frozenset({"missing", "malformed", "algorithm", "no_kid", "unknown_kid", "expired",
                            "signature", "claims", "lifetime", "key_service", "invalid"})

# the wire document's root node type (``{"statement": {"t": ...}}``) -> statement kind
_KIND_OF_NODE = {"select": "select", "compound_select": "select", "insert": "insert", "update": "update",
                 "delete": "delete", "ddl": "ddl", "driver_sql": "sql", "text": "sql"}

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


@dataclass(slots=True)
class RequestLabels:
    """One request's labels; created by the middleware, filled in by the pipeline."""

    request_id: str
    route: str = "unmatched"  # the route template (``/dbapi/v1/execute``), never the raw path
    kind: str = "none"  # one of STATEMENT_KINDS
    subject: str | None = None  # the verified token's subject (log only)
    txn: str | None = None  # the client's transaction id (log and span only)
    replayed: bool = False  # answered from a stored answer (a retried request)
    token_failure: str | None = None  # one of TOKEN_FAILURES


_current: ContextVar[RequestLabels | None] = ContextVar("dbapi_request_labels", default=None)


def current() -> RequestLabels | None:
    """The labels of the request being handled in this context, if any."""
    return _current.get()


def label(*, route: str | None = None, kind: str | None = None, subject: str | None = None,
          txn: str | None = None, replayed: bool | None = None, token_failure: str | None = None) -> None:
    """Set fields of the current request's labels (the ones given); no request, no effect."""
    labels = _current.get()
    if labels is None:
        return
    if route is not None:
        labels.route = route
    if kind is not None:
        labels.kind = kind if kind in STATEMENT_KINDS else "other"
    if subject is not None:
        labels.subject = subject
    if txn is not None:
        labels.txn = txn
    if replayed is not None:
        labels.replayed = replayed
    if token_failure is not None:
        labels.token_failure = token_failure if token_failure in TOKEN_FAILURES else "invalid"


def statement_kind(document: object) -> str:
    """The kind of the statement a wire document describes (its root node's type; not decoded)."""
    root = document.get("statement") if isinstance(document, dict) else None
    node_type = root.get("t") if isinstance(root, dict) else None
    return _KIND_OF_NODE.get(node_type, "other") if isinstance(node_type, str) else "other"


def new_request_id() -> str:
    return secrets.token_hex(8)


def request_id_from_header(value: str | None) -> str:
    """The client's ``X-Request-Id`` if it is a sane token (it is echoed and logged), else a new one."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


def _bind(labels: RequestLabels) -> object:
    return _current.set(labels)


def _unbind(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
