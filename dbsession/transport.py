"""HTTP transport to the DB-API: pooled keep-alive connections, JSON via orjson.

urllib3 is the well-kept pool we build on (ANCHORS.md measured it, with ``http.client``, as the
fastest of the common clients: 0.6 ms a keep-alive round trip against 0.9-1.1 ms for httpx and
requests). Our own benchmark shows what it still costs: about 0.27 ms of client CPU per request
against 0.05 ms for a bare socket (header parsing through ``email``, two writes per request) -
the largest remaining client-side cost, recorded in the issue notes as the next lever.

Retries: a request that never reached the server (connection refused, connect timeout) is always
retried with backoff. One whose response was lost (connection reset or closed, read timeout, or a
proxy's 502/503/504 without the DB-API's error envelope) is retried only when ``replay_safe`` -
reads, and transactional requests, which the server de-duplicates by transaction id and sequence
number. Ordinary requests give up after ``connect_attempts`` (4: waits of 0.05, 0.2, 0.8 s).
A request sent with a ``deadline`` (a commit: its outcome must be learned) keeps retrying, once an
attempt may have reached the server, with backoff capped at 1 s until *deadline* seconds after it
began; if it then gives up, :class:`ServerUnreachable` says ``answer_lost``. A 401 answer (the
DB-API checks the token before anything runs) re-reads the token file and is retried once if the
token changed, so a refresh racing a request does not fail it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError

from .auth import TokenSource
from .exceptions import REFUSAL_FIELDS, DBAPIRequestError, error_class_for

__all__ = ["API_PREFIX", "AttemptFailed", "DatabaseErrorReply", "ServerUnreachable", "Transport",
           "discard_transports", "transport_for"]

API_PREFIX = "/dbapi/v1"


_MAX_DELAY = 1.0  # seconds between attempts, once the backoff reaches it


class ServerUnreachable(Exception):
    """The DB-API could not be reached, or the response was lost (mapped to a disconnect).

    ``answer_lost``: an attempt may have reached the server (so the request may have run) and no
    answer to it arrived; otherwise no attempt reached it and nothing ran.
    """

    def __init__(self, message: str, *, answer_lost: bool = False) -> None:
        super().__init__(message)
        self.answer_lost = answer_lost


class AttemptFailed(Exception):
    """One HTTP exchange failed without an answer; ``reached``: it may have reached the server.

    Raised by :meth:`Transport._attempt` (whatever the HTTP client underneath) for the retry
    loop in :meth:`Transport._send`, which decides from ``reached`` what may be retried.
    """

    def __init__(self, cause: Exception, *, reached: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.reached = reached


class DatabaseErrorReply(Exception):
    """The database raised an error while executing the statement (HTTP 422 envelope)."""

    def __init__(self, envelope: Mapping[str, Any]) -> None:
        super().__init__(envelope.get("message", "database error"))
        self.envelope = envelope


class Transport:
    """One per DB-API host; thread-safe (urllib3 pools are).

    The retry rules live in :meth:`_send`, which does its I/O only through :meth:`_attempt` (one
    HTTP exchange) and :meth:`_pause` (the wait between attempts): the async transport
    (:mod:`dbsession._async_transport`) overrides those two and nothing else.
    """

    def __init__(self, base_url: str, token: TokenSource, *, timeout: float = 30.0,
                 maxsize: int = 16, connect_attempts: int = 4) -> None:
        parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"database_api_host must look like http://host:port, got {base_url!r}.")
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/") + API_PREFIX
        self._token = token
        self._attempts = connect_attempts
        self._pool = self._open_pool(maxsize, timeout)

    def _open_pool(self, maxsize: int, timeout: float) -> Any:
        return urllib3.connection_from_url(
            self.base_url, maxsize=maxsize, block=False, retries=False,
            timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout))

    def close(self) -> None:
        self._pool.close()

    def get(self, path: str) -> Any:
        return self._request("GET", path, None, replay_safe=True)

    def post(self, path: str, payload: Mapping[str, Any], *, replay_safe: bool,
             deadline: float | None = None) -> Any:
        """POST *payload*; with *deadline* (replay-safe requests only), retry until an answer
        arrives or *deadline* seconds have passed, once an attempt may have reached the server."""
        return self._request("POST", path, orjson.dumps(payload), replay_safe=replay_safe,
                             deadline=deadline if replay_safe else None)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = self._token.get()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _request(self, method: str, path: str, body: bytes | None, *, replay_safe: bool,
                 deadline: float | None = None) -> Any:
        response, answer_lost = self._send(method, path, body, replay_safe=replay_safe, deadline=deadline)
        if response.status == 401 and self._token.reload():
            # the DB-API checks the token before anything runs: retry once with the refreshed one
            response, lost_again = self._send(method, path, body, replay_safe=replay_safe, deadline=deadline)
            answer_lost = answer_lost or lost_again
        if not answer_lost:
            return self._parse(response)
        try:
            return self._parse(response)
        except DBAPIRequestError as exc:
            exc.answer_lost = True  # the answer of a retry: an earlier attempt's answer was lost
            raise

    def _send(self, method: str, path: str, body: bytes | None, *, replay_safe: bool,
              deadline: float | None) -> tuple[Any, bool]:
        """The response, and whether an earlier attempt may have reached the server unanswered."""
        url = self._prefix + path
        delay = 0.05
        answer_lost = False
        give_up_at = time.monotonic() + deadline if deadline is not None else 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._attempt(method, url, body, self._headers())
            except AttemptFailed as exc:
                if not exc.reached:
                    failure: Exception = exc.cause  # never reached the server
                elif not replay_safe:
                    raise ServerUnreachable(
                        f"The connection to the DB-API at {self.base_url} broke before its answer "
                        f"arrived ({exc.cause}); the request is not retried because it may have run.",
                        answer_lost=True) from exc.cause
                else:
                    failure, answer_lost = exc.cause, True
            else:
                if not 502 <= response.status <= 504 or not replay_safe or _is_envelope(response):
                    return response, answer_lost
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
                    f"error: {failure}.", answer_lost=True) from failure
            else:
                raise ServerUnreachable(
                    f"Cannot reach the DB-API at {self.base_url} (database_api_host) after "
                    f"{attempt} attempts: {failure}. Is the server running?",
                    answer_lost=answer_lost) from failure
            self._pause(pause)
            delay = min(delay * 4, _MAX_DELAY)

    def _attempt(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Any:
        """One HTTP exchange: the answer (``status``, ``data``), or :class:`AttemptFailed`."""
        try:
            return self._pool.urlopen(method, url, body=body, headers=headers, retries=False, redirect=False)
        except (NewConnectionError, ConnectTimeoutError) as exc:
            raise AttemptFailed(exc, reached=False) from exc
        except HTTPError as exc:
            raise AttemptFailed(exc, reached=True) from exc

    def _pause(self, seconds: float) -> None:
        time.sleep(seconds)

    def _parse(self, response: Any) -> Any:
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
                f"{self.base_url} really a DB-API server?", status=status)
        if status == 422 and envelope.get("code") in ("database_error", "statement_error", "driver_error"):
            raise DatabaseErrorReply(envelope)
        raise error_class_for(status, envelope.get("code"))(
            envelope.get("message", f"HTTP {status}"), code=envelope.get("code", "error"),
            error_id=envelope.get("error_id"), status=status, details=envelope.get("details"),
            txn_state=envelope.get("txn_state"), outcome=envelope.get("outcome"),
            refused={k: envelope[k] for k in REFUSAL_FIELDS if k in envelope})


def _is_envelope(response: Any) -> bool:
    """Whether an error answer is the DB-API's own (its JSON error envelope), not a proxy's."""
    try:
        data = orjson.loads(response.data) if response.data else None
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and isinstance(data.get("error"), dict)


_registry_lock = threading.Lock()
_registry: dict[tuple[str, str | None, str | None], Transport] = {}


def transport_for(host: str, token: str | None = None, token_file: str | None = None,
                  timeout: float = 30.0) -> Transport:
    """The shared, pooled transport for (host, token source); created on first use."""
    key = (host, token, token_file)
    with _registry_lock:
        transport = _registry.get(key)
        if transport is None:
            transport = _registry[key] = Transport(host, TokenSource(token, token_file), timeout=timeout)
        return transport


def discard_transports(host: str) -> list[str]:
    """Close and forget the transports for *host*; returns their base URLs."""
    with _registry_lock:
        found = [_registry.pop(key) for key in [k for k in _registry if k[0] == host]]
    for transport in found:
        transport.close()
    return [transport.base_url for transport in found]
