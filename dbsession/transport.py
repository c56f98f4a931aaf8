"""HTTP transport to the DB-API: pooled keep-alive connections, JSON via orjson.

urllib3 is the well-kept pool we build on (ANCHORS.md measured it, with ``http.client``, as the
fastest of the common clients: 0.6 ms a keep-alive round trip against 0.9-1.1 ms for httpx and
requests). Our own benchmark shows what it still costs: about 0.27 ms of client CPU per request
against 0.05 ms for a bare socket (header parsing through ``email``, two writes per request) -
the largest remaining client-side cost, recorded in the issue notes as the next lever.

Retries: a request that never reached the server (connection refused, connect timeout) is always
retried with backoff. One whose response was lost is retried only when ``replay_safe`` - reads,
and transactional requests, which the server de-duplicates by transaction id and sequence number.
A 401 answer (the DB-API checks the token before anything runs) re-reads the token file and is
retried once if the token changed, so a refresh racing a request does not fail it.
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
from .exceptions import REFUSAL_FIELDS, error_class_for

__all__ = ["API_PREFIX", "DatabaseErrorReply", "ServerUnreachable", "Transport", "discard_transports",
           "transport_for"]

API_PREFIX = "/dbapi/v1"


class ServerUnreachable(Exception):
    """The DB-API could not be reached, or the response was lost (mapped to a disconnect)."""


class DatabaseErrorReply(Exception):
    """The database raised an error while executing the statement (HTTP 422 envelope)."""

    def __init__(self, envelope: Mapping[str, Any]) -> None:
        super().__init__(envelope.get("message", "database error"))
        self.envelope = envelope


class Transport:
    """One per DB-API host; thread-safe (urllib3 pools are)."""

    def __init__(self, base_url: str, token: TokenSource, *, timeout: float = 30.0,
                 maxsize: int = 16, connect_attempts: int = 4) -> None:
        parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"database_api_host must look like http://host:port, got {base_url!r}.")
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/") + API_PREFIX
        self._token = token
        self._attempts = connect_attempts
        self._pool = urllib3.connection_from_url(
            self.base_url, maxsize=maxsize, block=False, retries=False,
            timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout))

    def close(self) -> None:
        self._pool.close()

    def get(self, path: str) -> Any:
        return self._request("GET", path, None, replay_safe=True)

    def post(self, path: str, payload: Mapping[str, Any], *, replay_safe: bool) -> Any:
        return self._request("POST", path, orjson.dumps(payload), replay_safe=replay_safe)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = self._token.get()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _request(self, method: str, path: str, body: bytes | None, *, replay_safe: bool) -> Any:
        response = self._send(method, path, body, replay_safe=replay_safe)
        if response.status == 401 and self._token.reload():
            # the DB-API checks the token before anything runs: retry once with the refreshed one
            response = self._send(method, path, body, replay_safe=replay_safe)
        return self._parse(response)

    def _send(self, method: str, path: str, body: bytes | None, *,
              replay_safe: bool) -> urllib3.BaseHTTPResponse:
        url = self._prefix + path
        delay = 0.05
        for attempt in range(1, self._attempts + 1):
            try:
                response = self._pool.urlopen(method, url, body=body, headers=self._headers(),
                                              retries=False, redirect=False)
            except (NewConnectionError, ConnectTimeoutError) as exc:
                failure: Exception = exc
            except HTTPError as exc:
                if not replay_safe:
                    raise ServerUnreachable(
                        f"The connection to the DB-API at {self.base_url} broke before its answer "
                        f"arrived ({exc}); the request is not retried because it may have run."
                    ) from exc
                failure = exc
            else:
                return response
            if attempt == self._attempts:
                raise ServerUnreachable(
                    f"Cannot reach the DB-API at {self.base_url} (database_api_host) after "
                    f"{attempt} attempts: {failure}. Is the server running?"
                ) from failure
            time.sleep(delay)
            delay *= 4
        raise AssertionError("unreachable")  # pragma: no cover

    def _parse(self, response: urllib3.BaseHTTPResponse) -> Any:
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
            txn_state=envelope.get("txn_state"),
            refused={k: envelope[k] for k in REFUSAL_FIELDS if k in envelope})


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
