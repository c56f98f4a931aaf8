"""A lean HTTP/1.1 keep-alive client: the transport's socket layer (no retries, no JSON).

Why not urllib3 (what we used before): measured on this machine, a keep-alive ``GET`` through
urllib3 costs about 0.3-0.4 ms of client CPU (``http.client`` plus ``email`` header parsing, two
writes per request), a bare socket about 0.05 ms; see ``docs/architecture.md`` and
``bench/bench_http.py``. The DB-API answers small JSON documents to one client at a time per
connection, so the protocol subset needed is small and fully specified here:

* persistent sockets (TCP_NODELAY; TLS through an ``ssl`` context for ``https://``) in a small
  LIFO pool, thread-safe; idle ones beyond ``maxsize`` are closed; a forked child forgets the
  parent's sockets;
* one ``send`` of head and body together per request; on Linux a plain TCP socket stays blocking
  and the kernel keeps its timeout (no ``poll`` before each ``send``/``recv``); ``recv`` asks for
  32 KiB at a time (Python allocates what is asked before each call);
* answers framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or the connection's end;
  ``1xx`` interim answers skipped; ``Connection: close`` and HTTP/1.0 honoured; head size,
  header count and chunk-size lines bounded.

What the caller needs to decide retries is *whether the request can have reached the server*,
so every failure is one of two exceptions:

:class:`NotSent`     provably nothing of this request reached the server: the connection could
                     not be made (refused, timed out, name unknown, TLS handshake failed), or the
                     very first ``send`` of the request failed - the kernel took no byte of it (on
                     TLS the first ``send`` carries at most one record, and a partial record is
                     undecryptable).
:class:`AnswerLost`  bytes of the request were handed to the network and no complete answer came
                     back (end of stream, reset, timeout, or an answer that is not HTTP): it may
                     have run.

A pooled socket the server closed while it was idle (its keep-alive timeout) is detected before
anything is written - readable while idle means end of stream, reset or stray bytes, never a valid
state - and replaced by another one, without counting as a failure. The race where the server
closes it just as the request is written cannot be told apart from a server (or a proxy) that
read the request and then died, so it is :class:`AnswerLost` (RFC 9112 section 9.3.1 allows
automatic retries only where the request is known to be idempotent: the caller decides that).
"""

from __future__ import annotations

import atexit
import os
import select
import socket
import ssl
import struct
import sys
import threading
import weakref
from dataclasses import dataclass

__all__ = ["AnswerLost", "ConnectionPool", "HTTPClientError", "NotSent", "Response"]

MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one answer
MAX_HEADERS = 100
# Bytes asked of one recv(). Python allocates that many for every recv() before shrinking the
# result to what arrived: 256 KiB (above malloc's mmap threshold) cost an mmap/munmap pair, ~12 us of
# client CPU per answer; 32 KiB holds a typical answer whole, and a longer body with a
# Content-Length is read straight into its own buffer (_read_exact) anyway.
_RECV = 32 * 1024
_RECV_INTO = 256 * 1024  # recv_into() fills a buffer that exists: no allocation per call
_TLS_RECORD = 16 * 1024  # the most one TLS record carries
_NO_BODY = frozenset({204, 304})
_IDLE_EVENTS = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL


class HTTPClientError(Exception):
    """The exchange failed at the HTTP or socket level."""


class NotSent(HTTPClientError):
    """Nothing of the request reached the server: safe to send again."""


class AnswerLost(HTTPClientError):
    """The request may have reached the server, and no complete answer arrived."""


class _EndOfStream(Exception):
    """The server closed the connection."""


@dataclass(slots=True)
class Response:
    """A complete answer: status, headers (names lower-cased, latin-1) and the whole body."""

    status: int
    headers: dict[str, str]
    data: bytes


class _Connection:
    """One socket with its read buffer; used by one thread at a time."""

    __slots__ = ("_buffer", "_poll", "reused", "sock", "tls")

    def __init__(self, sock: socket.socket, tls: bool) -> None:
        self.sock = sock
        self.tls = tls
        self.reused = False
        self._buffer = b""
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLPRI)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def is_dropped(self) -> bool:
        """Whether the idle socket is unusable: the server closed or reset it, or sent stray bytes."""
        if self._buffer or (self.tls and self.sock.pending()):  # type: ignore[attr-defined]
            return True
        try:
            return any(events & _IDLE_EVENTS for _, events in self._poll.poll(0))
        except OSError:
            return True

    def send(self, data: bytes) -> None:
        """Write the whole request; :class:`NotSent` if not one byte of it left."""
        view = memoryview(data)
        try:
            sent = self.sock.send(view[:_TLS_RECORD] if self.tls else view)
        except OSError as exc:  # timeout, reset, broken pipe: the kernel took nothing
            reason = "timed out" if isinstance(exc, BlockingIOError) else exc  # SO_SNDTIMEO (_set_timeout)
            raise NotSent(f"the connection failed before the request was written ({reason})") from exc
        if sent < len(data):
            try:
                self.sock.sendall(view[sent:])
            except OSError as exc:
                reason = "timed out" if isinstance(exc, BlockingIOError) else exc
                raise AnswerLost(f"the connection failed while the request was written ({reason})") from exc

    def read_response(self, method: str) -> tuple[Response, bool]:
        """The next answer and whether the connection may be reused; skips ``1xx`` answers."""
        try:
            while True:
                status, version, headers = self._read_head()
                if not 100 <= status < 200 or status == 101:
                    break
            keep_alive = status != 101 and _keeps_alive(version, headers.get("connection", ""))
            coding = headers.get("transfer-encoding")
            if method == "HEAD" or status in _NO_BODY or 100 <= status < 200:
                body = b""
            elif coding is not None:  # it overrides Content-Length (RFC 9112 6.3)
                if coding.lower().rsplit(",", 1)[-1].strip() == "chunked":
                    body = self._read_chunked()
                else:  # a coding without chunked framing: the end of the connection ends it
                    body, keep_alive = self._read_to_end(), False
                if "content-length" in headers:  # both: out of step with some intermediary
                    keep_alive = False
            elif (length := headers.get("content-length")) is not None:
                body = self._read_exact(_content_length(length))
            else:  # delimited by the end of the connection
                body, keep_alive = self._read_to_end(), False
        except _EndOfStream:
            raise AnswerLost("the server closed the connection before its answer was complete") from None
        except BlockingIOError as exc:  # the kernel's SO_RCVTIMEO (_set_timeout)
            raise AnswerLost("no answer within the read timeout (timed out)") from exc
        except TimeoutError as exc:
            raise AnswerLost(f"no answer within the read timeout ({exc})") from exc
        except OSError as exc:
            raise AnswerLost(f"the connection failed while waiting for the answer ({exc})") from exc
        if self._buffer:  # bytes after the answer: nothing was asked for them
            keep_alive = False
        return Response(status, headers, body), keep_alive

    # -- framing ---------------------------------------------------------------------------------
    def _recv(self) -> bytes:
        data = self.sock.recv(_RECV)
        if not data:
            raise _EndOfStream
        return data

    def _read_head(self) -> tuple[int, bytes, dict[str, str]]:
        buffer = self._buffer or self._recv()
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise AnswerLost(f"the answer's head is larger than {MAX_HEAD_BYTES} bytes")
            buffer += self._recv()
        if end > MAX_HEAD_BYTES:
            raise AnswerLost(f"the answer's head is larger than {MAX_HEAD_BYTES} bytes")
        self._buffer = buffer[end + 4:]
        return _parse_head(buffer[:end])

    def _read_exact(self, length: int) -> bytes:
        buffer = self._buffer
        if len(buffer) >= length:
            self._buffer = buffer[length:]
            return buffer[:length]
        body = bytearray(length)
        view = memoryview(body)
        view[:len(buffer)] = buffer
        filled, self._buffer = len(buffer), b""
        while filled < length:
            n = self.sock.recv_into(view[filled:], min(length - filled, _RECV_INTO))
            if not n:
                raise _EndOfStream
            filled += n
        return bytes(body)

    def _read_line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > 4096:
                raise AnswerLost("a chunk-size or trailer line of the answer is too long")
            self._buffer += self._recv()
        line, self._buffer = self._buffer[:end], self._buffer[end + 2:]
        return line

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size_text = self._read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise AnswerLost(f"bad chunk size in the answer: {size_text[:20]!r}") from None
            if size < 0 or size_text.startswith((b"-", b"+", b"0x", b"0X")):
                raise AnswerLost(f"bad chunk size in the answer: {size_text[:20]!r}")
            if size == 0:
                break
            parts.append(self._read_exact(size))
            if self._read_exact(2) != b"\r\n":
                raise AnswerLost("a chunk of the answer is not followed by CRLF")
        trailers = 0
        while self._read_line():  # trailers, ignored
            trailers += 1
            if trailers > MAX_HEADERS:
                raise AnswerLost(f"the answer has more than {MAX_HEADERS} trailer lines")
        return b"".join(parts)

    def _read_to_end(self) -> bytes:
        parts, self._buffer = [self._buffer], b""
        while data := self.sock.recv(_RECV):
            parts.append(data)
        return b"".join(parts)


_BLANKS = " \t\n\r\x0b\x0c"  # what bytes.strip() strips (str.strip() would strip more)


def _parse_head(head: bytes) -> tuple[int, bytes, dict[str, str]]:
    """Status, version and headers of a head (*head*: without its final blank line).

    Decoded once as latin-1 (byte for byte, as decoding each name and value would be), then
    split: per field, one ``partition`` and the checks.
    """
    first = head.find(b"\r\n")
    status_line = head if first < 0 else head[:first]
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit() or rest[3:4] not in (b"", b" "):
        raise AnswerLost(f"the server's answer is not HTTP/1.x: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    if first < 0:
        return int(code), version, headers
    lines = head[first + 2:].decode("latin-1").split("\r\n")
    if len(lines) > MAX_HEADERS:
        raise AnswerLost(f"the answer has more than {MAX_HEADERS} headers")
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name or "\t" in name:
            raise AnswerLost(f"malformed header line in the answer: {line[:80].encode('latin-1')!r}")
        key = name.lower()
        text = value.strip(_BLANKS)
        if key not in headers:
            headers[key] = text
        elif key != "content-length":
            headers[key] = f"{headers[key]}, {text}"
        elif headers[key] != text:
            raise AnswerLost("the answer has conflicting Content-Length headers")
    return int(code), version, headers


def _keeps_alive(version: bytes, connection: str) -> bool:
    tokens = {t.strip() for t in connection.lower().split(",")} if connection else set()
    if version == b"HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _content_length(text: str) -> int:
    if not (text.isascii() and text.isdigit()):  # no sign, no spaces, no list (equal repeats were merged)
        raise AnswerLost(f"bad Content-Length in the answer: {text[:20]!r}")
    return int(text)


_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


class ConnectionPool:
    """Keep-alive connections to one ``scheme://host:port``; thread-safe."""

    def __init__(self, scheme: str, host: str, port: int, *, connect_timeout: float, read_timeout: float,
                 maxsize: int = 16, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.tls = host, port, scheme == "https"
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._maxsize = maxsize
        self._ssl = (ssl_context or _default_ssl_context()) if self.tls else None
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        _pools.add(self)

    def request(self, method: str, data: bytes) -> Response:
        """Send *data* (a complete request) and return the complete answer.

        A pooled connection found closed before writing is replaced, so :class:`NotSent` comes
        only from a connection that could not be made or written at all.
        """
        while True:
            conn = self._checkout()
            try:
                conn.send(data)
            except NotSent:
                conn.close()
                if conn.reused:
                    continue  # the server had closed it: take another
                raise
            except BaseException:
                conn.close()
                raise
            try:
                response, keep_alive = conn.read_response(method)
            except BaseException:
                conn.close()
                raise
            self._checkin(conn, keep_alive)
            return response

    def close(self) -> None:
        """Close the idle connections; connections in use are closed when they come back."""
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for conn in idle:
            conn.close()

    def _checkout(self) -> _Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._connect()
            if not conn.is_dropped():
                return conn
            conn.close()

    def _checkin(self, conn: _Connection, keep_alive: bool) -> None:
        if keep_alive:
            conn.reused = True
            with self._lock:
                if not self._closed and len(self._idle) < self._maxsize:
                    self._idle.append(conn)
                    return
        conn.close()

    def _connect(self) -> _Connection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self._connect_timeout)
        except OSError as exc:
            raise NotSent(f"cannot connect to {self.host}:{self.port} ({exc})") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self.host)  # handshake: nothing sent yet
                sock.settimeout(self._read_timeout)
            else:
                _set_timeout(sock, self._read_timeout)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise NotSent(f"cannot open a TLS connection to {self.host}:{self.port} ({exc})") from exc
        return _Connection(sock, self._ssl is not None)

    def _forget_after_fork(self) -> None:
        # the parent owns these sockets: closing our copies of the descriptors does not touch them
        idle, self._idle, self._lock = self._idle, [], threading.Lock()
        for conn in idle:
            conn.close()


_KERNEL_TIMEOUTS = sys.platform.startswith("linux")


def _set_timeout(sock: socket.socket, seconds: float | None) -> None:
    """The read/write timeout of a plain TCP socket, kept by the kernel where it can be.

    A Python socket with a timeout calls ``poll()`` before every ``send`` and ``recv``: three extra
    system calls per request. On Linux the socket stays blocking and the kernel applies the
    timeout (``SO_RCVTIMEO`` / ``SO_SNDTIMEO``); a call that times out fails with ``EAGAIN``
    (:class:`BlockingIOError`), which the connection reports as Python's timeout would be.
    """
    if not _KERNEL_TIMEOUTS or seconds is None or seconds <= 0:
        sock.settimeout(seconds)
        return
    whole = int(seconds)
    micros = int((seconds - whole) * 1e6)  # below 1e6
    if whole == 0 and micros == 0:
        micros = 1  # a zero timeval would mean no timeout at all
    timeval = struct.pack("@ll", whole, micros)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _default_ssl_context() -> ssl.SSLContext:
    """Certificate and host name checked against the system's CAs (``SSL_CERT_FILE`` honoured)."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool._forget_after_fork()


def _close_all_at_exit() -> None:
    # pooled sockets still idle at interpreter exit are closed here, not left to the garbage
    # collector, which would warn (ResourceWarning) about each one
    for pool in list(_pools):
        pool.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
