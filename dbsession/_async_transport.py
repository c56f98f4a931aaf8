"""The async transport: the sync :class:`~dbsession.transport.Transport`, with async I/O underneath.

The isolated async engine runs SQLAlchemy's sync engine code - and with it the stand-in driver's
``Connection`` - inside SQLAlchemy's greenlet (``greenlet_spawn``), as its asyncpg, aiosqlite and
asyncmy dialects do. :class:`AsyncTransport` is a :class:`Transport` whose two I/O primitives are
awaited there (``await_``): one HTTP exchange (:meth:`AsyncTransport._attempt`, aiohttp) and the
pause between attempts (``asyncio.sleep``). The retry rules, the deadline of a commit, the 401
token refresh and the parsing of answers and error envelopes are the sync transport's own code.

aiohttp was chosen by measurement against httpx (``bench/bench_http_clients.py``, numbers in
``docs/architecture.md``): a quarter of httpx's client CPU per request with one task, a small
fraction of it with 50 concurrent tasks.

Cancellation. A task cancelled (or timed out) while a request is on the wire must neither leave
the HTTP connection half-read nor lose track of what the server did. So every exchange runs in a
task of its own that the caller awaits through ``asyncio.shield``: a cancelled caller gets its
``CancelledError`` at once while the exchange finishes in the background, reading the whole
answer, and its HTTP connection goes back to the pool intact. The requests of one client
connection stay in order: the next one (typically the rollback SQLAlchemy sends when it
invalidates the connection after the cancellation) waits for the abandoned one first, so the
server sees its sequence numbers in order and never gets a ``begin`` after the rollback that was
meant to end it. The abandoned answers are kept (:meth:`AsyncTransport.take_abandoned`) so the
connection can close a streamed result the cancelled caller never heard of.

One aiohttp ``ClientSession`` (one keep-alive pool) per DB-API host and event loop: sessions are
bound to their loop. Each is closed when its loop shuts down (``asyncio.run`` and
``asyncio.Runner`` close a loop's open async generators before closing it; a parked generator per
session does the closing).
"""

from __future__ import annotations

import asyncio
import io
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, NamedTuple

from sqlalchemy.util import concurrency

try:
    import aiohttp
except ImportError as exc:  # pragma: no cover - the async extra is not installed
    raise ImportError("The isolated async engine needs aiohttp: pip install 'dbsession[async]'.") from exc

from ._http import AnswerLost, NotSent, Response
from .auth import TokenSource
from .transport import ROUTE_HEADER, Transport, _check_path, trace_context

__all__ = ["AsyncTransport", "HostClients", "discard_hosts", "host_clients", "keep_alive", "sa_await"]

sa_await: Callable[[Awaitable[Any]], Any] = getattr(concurrency, "await_", None) or concurrency.await_only
"""SQLAlchemy's ``await_`` (2.1) / ``await_only`` (2.0): await from sync code in its greenlet."""

_background: set[asyncio.Future[Any]] = set()  # the loop holds tasks only weakly
_LARGE_BODY = 2**20


def keep_alive(task: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """Hold *task* until it is done; its exception, if any, is retrieved (it has no awaiter left)."""
    _background.add(task)
    task.add_done_callback(_forget)
    return task


def _forget(task: asyncio.Future[Any]) -> None:
    _background.discard(task)
    if not task.cancelled():
        task.exception()


class _LoopSession(NamedTuple):
    session: aiohttp.ClientSession
    closer: AsyncGenerator[None, None]  # parked: closing it (at loop shutdown) closes the session


async def _close_at_shutdown(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await session.close()


class HostClients:
    """The aiohttp sessions of one DB-API host (one per event loop) and its token source."""

    def __init__(self, host: str, token: TokenSource, timeout: float, limit: int = 100) -> None:
        self.host = host
        self.token = token
        self.timeout = timeout
        self._limit = limit
        self._timeouts = aiohttp.ClientTimeout(total=None, connect=min(timeout, 5.0), sock_read=timeout)
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSession] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()

    async def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        found = self._sessions.get(loop)
        if found is not None and not found.session.closed:
            return found.session
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._limit), timeout=self._timeouts,
            auto_decompress=False, skip_auto_headers=("User-Agent",))
        closer = _close_at_shutdown(session)
        await closer.__anext__()  # registers it with this loop's shutdown_asyncgens()
        with self._lock:
            self._sessions[loop] = _LoopSession(session, closer)
        return session

    async def attempt(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> Response:
        """One exchange with *url* (absolute), read to its end; failures as the sync client's:
        :class:`NotSent` (nothing reached the server) or :class:`AnswerLost` (it may have run)."""
        session = await self.session()
        # one pass of the loop first: a pooled connection the server has closed is then seen as
        # closed and not reused (the sync client polls its idle sockets for the same reason);
        # reused, it would fail after sending, and a commit would count as possibly reached
        await asyncio.sleep(0)
        # a body over 1 MiB goes as a stream: aiohttp warns (ResourceWarning) that writing one
        # that size from bytes in one go may hold up the loop
        data: bytes | io.BytesIO | None = io.BytesIO(body) if body and len(body) > _LARGE_BODY else body
        try:
            async with session.request(method, url, data=data, headers=headers,
                                       allow_redirects=False) as response:
                return Response(response.status, {k.lower(): v for k, v in response.headers.items()},
                                await response.read())
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise NotSent(f"could not connect ({exc})") from exc  # nothing was sent
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise AnswerLost(f"no complete answer ({type(exc).__name__}: {exc})") from exc

    def close(self) -> None:
        """Close the sessions of loops that are still open (from outside them: scheduled)."""
        with self._lock:
            entries = list(self._sessions.items())
            self._sessions.clear()
        for loop, entry in entries:
            if loop.is_closed() or entry.session.closed:
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                keep_alive(loop.create_task(_aclose(entry.closer)))
            else:
                asyncio.run_coroutine_threadsafe(_aclose(entry.closer), loop)


async def _aclose(closer: AsyncGenerator[None, None]) -> None:
    await closer.aclose()


_hosts_lock = threading.Lock()
_hosts: dict[tuple[str, str | None, str | None], HostClients] = {}


def host_clients(host: str, token: str | None, token_file: str | None, timeout: float) -> HostClients:
    """The shared sessions and token source for (host, token source); created on first use."""
    key = (host, token, token_file)
    with _hosts_lock:
        found = _hosts.get(key)
        if found is None:
            found = _hosts[key] = HostClients(host, TokenSource(token, token_file), timeout)
        return found


def discard_hosts(host: str) -> None:
    """Close and forget the sessions for *host* (its DB-API went away)."""
    with _hosts_lock:
        found = [_hosts.pop(key) for key in [k for k in _hosts if k[0] == host]]
    for clients in found:
        clients.close()


class AsyncTransport(Transport):
    """One per client connection: the sync transport's rules over the host's shared aiohttp pool."""

    def __init__(self, clients: HostClients, *, connect_attempts: int = 4) -> None:
        self._clients = clients
        super().__init__(clients.host, clients.token, timeout=clients.timeout,
                         connect_attempts=connect_attempts)
        self._pending: asyncio.Future[Response] | None = None
        self._abandoned: list[asyncio.Future[Response]] = []

    def _open_pool(self, scheme: str, host: str, port: int, timeout: float, maxsize: int,
                   ssl_context: Any) -> Any:
        return self._clients

    def close(self) -> None:
        return None  # the pool is the host's, shared by every connection

    def _attempt(self, method: str, path: str, body: bytes | None, request_id: str,
                 route: str | None = None) -> Response:
        _check_path(path)
        token = self._checked_token()
        headers = {"X-Request-Id": request_id, "Accept": "application/json", "User-Agent": "dbsession",
                   **trace_context()}
        if route is not None:
            _check_path(route)
            headers[ROUTE_HEADER] = route
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        url = f"{self.base_url}{self._prefix}{path}"
        answer: Response = sa_await(self._in_order(lambda: self._clients.attempt(method, url, body, headers)))
        return answer

    def _pause(self, seconds: float) -> None:
        sa_await(asyncio.sleep(seconds))

    async def _in_order(self, exchange: Callable[[], Awaitable[Response]]) -> Response:
        await self.settle()
        task = keep_alive(asyncio.ensure_future(exchange()))
        self._pending = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                self._abandoned.append(task)  # finishes in the background; its answer is kept
            raise
        finally:
            if self._pending is task and task.done():
                self._pending = None

    async def settle(self) -> None:
        """Wait for the exchange a cancelled caller left running, if any."""
        pending = self._pending
        if pending is not None and not pending.done():
            await asyncio.wait([pending])
        self._pending = None

    def take_abandoned(self) -> list[Any]:
        """The parsed answers of exchanges whose caller was cancelled (after :meth:`settle`)."""
        found, self._abandoned = self._abandoned, []
        answers = []
        for task in found:
            if task.done() and not task.cancelled() and task.exception() is None:
                try:
                    answers.append(self._parse(task.result(), ""))
                except Exception:  # an error answer holds nothing to clean up
                    continue
        return answers
