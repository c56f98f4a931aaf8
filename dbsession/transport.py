"""HTTP transport to the DB-API: pooled keep-alive connections, JSON via orjson.

The HTTP/1.1 client underneath is our own lean one (:mod:`dbsession._http`): one ``send`` per
request and a minimal answer parser cost about a fifth of urllib3's client CPU per request (see
``docs/architecture.md``, "Libraries we chose and why"). It reports each failure as either
*not sent* (provably nothing reached the server) or *answer lost* (it may have run); the rules
below are built on that distinction.

Retries: a request that never reached the server (connection refused, connect timeout) is always
retried with backoff. One whose response was lost (connection reset or closed, read timeout, or a
proxy's 502/503/504 without the DB-API's error envelope) is retried only when ``replay_safe`` -
reads, and transactional requests, which the server de-duplicates by transaction id and sequence
number. Ordinary requests give up after ``connect_attempts`` (4: waits of 0.05, 0.2, 0.8 s).
A request sent with a ``deadline`` (a commit: its outcome must be learned) keeps retrying, once an
attempt may have reached the server, with backoff capped at 1 s until *deadline* seconds after it
began; if it then gives up, :class:`ServerUnreachable` says ``answer_lost``. A 401 answer (the
DB-API checks the token before anything runs) re-reads the token file and is retried once if the
token changed, so a refresh racing a request does not fail it. A 503 ``shutting_down`` (a new
transaction asked of an instance that is draining: nothing ran) is retried like a request that was
not sent - behind a load balancer the next attempt reaches another instance - and, if every
attempt meets it, ends as :class:`ServerUnreachable`, the disconnect a database going down causes.

Behind a load balancer (``docs/deployment.md``) every request of a transaction carries
``X-DBSession-Route: <transaction id>`` (a streamed result's page requests: the id its first
request carried), and the balancer hashes it to choose the instance: all of a transaction's
requests reach the instance that holds it, while requests without the header (one-shot reads) go
anywhere.

Every request carries an ``X-Request-Id``: a fresh id per request, the same for its retries, which
the DB-API echoes and logs; errors name it beside the server's error id, so one line of the
server's log can be found from a client's exception. With OpenTelemetry loaded in the process,
the current trace context travels too (``traceparent``), so the DB-API's spans join the caller's
trace.
"""

from __future__ import annotations

import os
import random
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from ._http import AnswerLost, ConnectionPool, NotSent, Response
from .auth import TokenSource
from .exceptions import REFUSAL_FIELDS, ConfigurationError, DBAPIRequestError, error_class_for

__all__ = ["API_PREFIX", "ROUTE_HEADER", "DatabaseErrorReply", "ServerUnreachable", "Transport", "discard_transports",
           "transport_for"]

API_PREFIX = "/dbapi/v1"
ROUTE_HEADER = "X-DBSession-Route"  # what a load balancer hashes to keep a transaction on its instance


_MAX_DELAY = 1.0  # seconds between attempts, once the backoff reaches it


class ServerUnreachable(Exception):
    """The DB-API could not be reached, or the response was lost (mapped to a disconnect).

    ``answer_lost``: an attempt may have reached the server (so the request may have run) and no
    answer to it arrived; otherwise no attempt reached it and nothing ran. ``request_id``: the
    ``X-Request-Id`` every attempt carried (in the message too).
    """

    def __init__(self, message: str, *, answer_lost: bool = False, request_id: str | None = None) -> None:
        super().__init__(f"{message} (request id {request_id})" if request_id else message)
        self.answer_lost = answer_lost
        self.request_id = request_id


class DatabaseErrorReply(Exception):
    """The database raised an error while executing the statement (HTTP 422 envelope)."""

    def __init__(self, envelope: Mapping[str, Any], request_id: str | None = None) -> None:
        super().__init__(envelope.get("message", "database error"))
        self.envelope = envelope
        self.request_id = request_id


_request_ids = random.Random(os.urandom(32))


def new_request_id() -> str:
    """A fresh ``X-Request-Id``: 64 random bits, as hex.

    Log correlation, not a secret: drawn from a generator seeded once from ``os.urandom`` (and
    again in a forked child, so parent and child never share a sequence) - without a system call
    per request, as ``secrets`` would make.
    """
    return f"{_request_ids.getrandbits(64):016x}"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _request_ids.seed(os.urandom(32)))


_propagate: Any = None


def trace_context() -> dict[str, str]:
    """The current OpenTelemetry trace context as headers, if the process uses OpenTelemetry."""
    global _propagate
    if "opentelemetry.trace" not in sys.modules:  # never imported here: no tracing, no cost
        return {}
    if _propagate is None:
        from opentelemetry import propagate

        _propagate = propagate
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    return {name: value for name, value in carrier.items()
            if (name + value).isascii() and (name + value).isprintable()}


def _trace_headers() -> bytes:
    """:func:`trace_context` as header lines."""
    if "opentelemetry.trace" not in sys.modules:
        return b""
    return "".join(f"{name}: {value}\r\n" for name, value in trace_context().items()).encode("ascii")


class Transport:
    """One per DB-API host; thread-safe (the connection pool is).

    The retry rules live in :meth:`_send`, which does its I/O only through :meth:`_attempt` (one
    HTTP exchange) and :meth:`_pause` (the wait between attempts): the async transport
    (:mod:`dbsession._async_transport`) overrides those two and nothing else of the rules.
    """

    def __init__(self, base_url: str, token: TokenSource, *, timeout: float = 30.0,
                 maxsize: int = 16, connect_attempts: int = 4, ssl_context: ssl.SSLContext | None = None,
                 pool: Any = None) -> None:
        parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"database_api_host must look like http://host:port, got {base_url!r}.")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"database_api_host has a bad port: {base_url!r}.") from None
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/") + API_PREFIX
        self._token = token
        self._attempts = connect_attempts
        host_header = parts.netloc.rpartition("@")[2]
        self._common_headers = (f"Host: {host_header}\r\nAccept: application/json\r\n"
                                f"User-Agent: dbsession\r\n").encode("latin-1")
        self._auth_line: tuple[str | None, bytes] = (None, b"")
        # hashes of the statement documents this host has been sent (dbsession._dbapi): later
        # requests carry the hash alone
        self.known_statements: set[str] = set()
        # *pool*: another transport's for the same host (transport_for: one pool per host, not per token)
        self._pool = pool if pool is not None else self._open_pool(parts.scheme, parts.hostname, port, timeout,
                                                                   maxsize, ssl_context)

    def _open_pool(self, scheme: str, host: str, port: int, timeout: float, maxsize: int,
                   ssl_context: ssl.SSLContext | None) -> Any:
        return ConnectionPool(scheme, host, port, connect_timeout=min(timeout, 5.0), read_timeout=timeout,
                              maxsize=maxsize, ssl_context=ssl_context)

    def close(self) -> None:
        self._pool.close()

    def get(self, path: str) -> Any:
        return self._request("GET", path, None, replay_safe=True)

    def post(self, path: str, payload: Mapping[str, Any], *, replay_safe: bool,
             deadline: float | None = None, route: str | None = None) -> Any:
        """POST *payload*; with *deadline* (replay-safe requests only), retry until an answer
        arrives or *deadline* seconds have passed, once an attempt may have reached the server.
        *route*: the transaction (or streamed result) the request belongs to, sent as
        ``X-DBSession-Route`` for a load balancer to keep it on one instance."""
        return self._request("POST", path, orjson.dumps(payload), replay_safe=replay_safe,
                             deadline=deadline if replay_safe else None, route=route)

    def _encode(self, method: str, path: str, body: bytes | None, request_id: str,
                route: str | None = None) -> bytes:
        """The whole request - request line, headers, body - as the one buffer sent."""
        token = self._checked_token()
        cached_token, auth = self._auth_line
        if token != cached_token:
            auth = f"Authorization: Bearer {token}\r\n".encode("ascii") if token else b""
            self._auth_line = (token, auth)
        _check_path(path)
        head = (f"{method} {self._prefix}{path} HTTP/1.1\r\nX-Request-Id: {request_id}\r\n".encode("ascii")
                + self._common_headers + auth + _trace_headers())
        if route is not None:
            _check_path(route)
            head += f"{ROUTE_HEADER}: {route}\r\n".encode("ascii")
        if body is None:
            return head + b"\r\n"
        return b"%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (head, len(body), body)

    def _checked_token(self) -> str | None:
        """The bearer token (the file re-read if it changed), refused if it cannot be a header."""
        token = self._token.get()
        if token and not (token.isascii() and token.isprintable()):
            raise ConfigurationError("The DB-API token contains characters that cannot travel in an "
                                     "HTTP header (control or non-ASCII characters); check its source.")
        return token

    def _request(self, method: str, path: str, body: bytes | None, *, replay_safe: bool,
                 deadline: float | None = None, route: str | None = None) -> Any:
        request_id = new_request_id()
        response, answer_lost = self._send(method, path, body, request_id, replay_safe=replay_safe,
                                           deadline=deadline, route=route)
        if response.status == 401 and self._token.reload():
            # the DB-API checks the token before anything runs: retry once with the refreshed one
            response, lost_again = self._send(method, path, body, request_id, replay_safe=replay_safe,
                                              deadline=deadline, route=route)
            answer_lost = answer_lost or lost_again
        if not answer_lost:
            return self._parse(response, request_id)
        try:
            return self._parse(response, request_id)
        except DBAPIRequestError as exc:
            exc.answer_lost = True  # the answer of a retry: an earlier attempt's answer was lost
            raise

    def _send(self, method: str, path: str, body: bytes | None, request_id: str, *, replay_safe: bool,
              deadline: float | None, route: str | None = None) -> tuple[Response, bool]:
        """The response, and whether an earlier attempt may have reached the server unanswered."""
        delay = 0.05
        answer_lost = False
        give_up_at = time.monotonic() + deadline if deadline is not None else 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._attempt(method, path, body, request_id, route)
            except NotSent as exc:
                failure: Exception = exc  # never reached the server
            except AnswerLost as exc:
                if not replay_safe:
                    raise ServerUnreachable(
                        f"The connection to the DB-API at {self.base_url} broke before its answer "
                        f"arrived ({exc}); the request is not retried because it may have run.",
                        answer_lost=True, request_id=request_id) from exc
                failure, answer_lost = exc, True
            else:
                code = _envelope_code(response) if response.status == 503 else None
                if code == "shutting_down":
                    # the instance is draining and ran nothing: like a request not sent
                    failure = ConnectionError(f"the DB-API at {self.base_url} is shutting down and takes "
                                              "no new transactions")
                elif code == "commit_in_doubt" and replay_safe:
                    # the DB-API cannot reach the database to learn what became of a commit: ask
                    # again (up to the commit's deadline), as after a lost answer
                    failure, answer_lost = ConnectionError(
                        "the DB-API could not read the commit's outcome from the database"), True
                elif not 502 <= response.status <= 504 or not replay_safe or _is_envelope(response):
                    return response, answer_lost
                else:
                    # a proxy's answer, not the DB-API's: the request may or may not have reached it
                    failure, answer_lost = ConnectionError(
                        f"a proxy answered HTTP {response.status} for the DB-API"), True
            if attempt < self._attempts:
                pause = delay
            elif answer_lost and deadline is not None and time.monotonic() < give_up_at:
                pause = min(delay, max(give_up_at - time.monotonic(), 0.0))
            elif answer_lost and deadline is not None:
                raise ServerUnreachable(
                    f"The DB-API at {self.base_url} (database_api_host) could not be asked again "
                    f"within {deadline:g}s after an attempt may have reached it unanswered; last "
                    f"error: {failure}.", answer_lost=True, request_id=request_id) from failure
            else:
                raise ServerUnreachable(
                    f"Cannot reach the DB-API at {self.base_url} (database_api_host) after "
                    f"{attempt} attempts: {failure}. Is the server running?",
                    answer_lost=answer_lost, request_id=request_id) from failure
            self._pause(pause)
            delay = min(delay * 4, _MAX_DELAY)

    def _attempt(self, method: str, path: str, body: bytes | None, request_id: str,
                 route: str | None = None) -> Response:
        """One HTTP exchange: the answer, or :class:`NotSent` / :class:`AnswerLost`."""
        response: Response = self._pool.request(method, self._encode(method, path, body, request_id, route))
        return response

    def _pause(self, seconds: float) -> None:
        time.sleep(seconds)

    def _parse(self, response: Response, request_id: str) -> Any:
        status = response.status
        try:
            data = orjson.loads(response.data) if response.data else None
        except orjson.JSONDecodeError:
            data = None
        if status < 300:
            return data
        envelope = data.get("error") if isinstance(data, dict) else None
        if not isinstance(envelope, dict):
            raise error_class_for(status)(
                f"The DB-API answered HTTP {status} without an error envelope; is "
                f"{self.base_url} really a DB-API server?", status=status, request_id=request_id)
        if status == 422 and envelope.get("code") in ("database_error", "statement_error", "driver_error"):
            raise DatabaseErrorReply(envelope, request_id)
        error = error_class_for(status, envelope.get("code"))(
            envelope.get("message", f"HTTP {status}"), code=envelope.get("code", "error"),
            error_id=envelope.get("error_id"), request_id=request_id, status=status, details=envelope.get("details"),
            txn_state=envelope.get("txn_state"), outcome=envelope.get("outcome"),
            refused={k: envelope[k] for k in REFUSAL_FIELDS if k in envelope})
        error.batch_index = envelope.get("index")  # which statement of a batch (POST /batch) it was
        raise error


def _check_path(path: str) -> None:
    if not (path.isascii() and path.isprintable()) or " " in path:  # e.g. an id the server sent
        raise ValueError(f"Not a DB-API request path: {path!r}.")


def _is_envelope(response: Response) -> bool:
    """Whether an error answer is the DB-API's own (its JSON error envelope), not a proxy's."""
    return _envelope_code(response) is not None


def _envelope_code(response: Response) -> str | None:
    """The code of the DB-API's error envelope in *response* ("" for one without a code), or None."""
    try:
        data = orjson.loads(response.data) if response.data else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return None
    code = data["error"].get("code")
    return code if isinstance(code, str) else ""


_registry_lock = threading.Lock()
_registry: dict[tuple[str, str | None, str | None], Transport] = {}
_pools: dict[tuple[str, float], Any] = {}


def transport_for(host: str, token: str | None = None, token_file: str | None = None,
                  timeout: float = 30.0) -> Transport:
    """The shared transport for (host, token source); created on first use.

    Transports of one host share one keep-alive connection pool (per timeout): a process whose
    sessions use many tokens (one per task) keeps one set of sockets, not one per token. A
    request's token travels in its own header, so sharing a socket shares nothing else.
    """
    key = (host, token, token_file)
    with _registry_lock:
        transport = _registry.get(key)
        if transport is None:
            pool = _pools.get((host, timeout))
            transport = _registry[key] = Transport(host, TokenSource(token, token_file), timeout=timeout, pool=pool)
            _pools.setdefault((host, timeout), transport._pool)
        return transport


def discard_transports(host: str) -> list[str]:
    """Close and forget the transports (and their pools) for *host*; returns their base URLs."""
    with _registry_lock:
        found = [_registry.pop(key) for key in [k for k in _registry if k[0] == host]]
        for key in [k for k in _pools if k[0] == host]:
            del _pools[key]
    for transport in found:
        transport.close()
    return [transport.base_url for transport in found]
