"""A real TCP proxy between a client and the DB-API that can lose one chosen request or answer.

It forwards HTTP/1.1 keep-alive traffic request by request (``Content-Length`` framing, which is
all the client and waitress use here). A fault is armed for the next request whose request line
contains a given text, and fires once:

``"request"``   the request never reaches the server: the client's connection is closed instead;
``"response"``  the server handles the request and answers; the answer is dropped and the
                client's connection closed;
``"cut"``       the request is forwarded and the client's connection is closed at once, while the
                server is still working on it (its answer is read and thrown away).

Slow faults deliver everything, late, by ``hold`` seconds (for cancelling a client mid-request):

``"slow_request"``   the request reaches the server only after *hold* seconds;
``"slow_response"``  the server answers at once; the answer reaches the client after *hold* seconds;
``"half_response"``  the first half of the answer at once, the rest after *hold* seconds.

Armed with ``then_down=seconds`` (``math.inf``: until :meth:`FaultProxy.up`), the proxy goes down
the moment the fault fires, before the client sees its connection closed: every open connection
is dropped and, with ``down_as="refuse"``, the listening socket is closed (new connections are
refused, as when the DB-API's host is unreachable); with ``down_as="503"`` connections are
accepted and every request is answered ``503`` without the DB-API's error envelope, as a load
balancer answers when it has no healthy backend. Nothing reaches the server while it is down.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaultProxy"]

FAULTS = ("request", "response", "cut", "slow_request", "slow_response", "half_response")
DOWN_AS = ("refuse", "503")
_UNAVAILABLE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 19\r\nConnection: close\r\n\r\nno healthy upstream")


class _Closed(Exception):
    """The peer closed the connection between messages."""


def _read_message(sock: socket.socket, buffer: bytearray) -> bytes:
    """One HTTP message (head and Content-Length body) from *sock*; leftovers stay in *buffer*."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise _Closed
        buffer += chunk
    head_end = buffer.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buffer[:head_end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError("the fault proxy only frames Content-Length messages")
    while len(buffer) < head_end + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise _Closed
        buffer += chunk
    message = bytes(buffer[:head_end + length])
    del buffer[:head_end + length]
    return message


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    fired: list[tuple[str, str]] = field(default_factory=list)  # (fault, request line)
    forwarded: list[str] = field(default_factory=list)  # request lines that reached the server
    connections: int = 0  # client connections accepted
    in_flight: int = 0  # requests read from a client whose exchange is not over yet
    _armed: list[tuple[str, str, float | None, str, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sockets: set[socket.socket] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._closed = False
        self._down: str | None = None  # None (up), "refuse" or "503"
        self._timer: threading.Timer | None = None
        self._listener: socket.socket | None = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._spawn(self._accept_loop, self._listener)

    def arm(self, fault: str, request_contains: str, *, then_down: float | None = None,
            down_as: str = "refuse", hold: float = 0.0) -> None:
        """Lose the next request (or its answer) whose request line contains *request_contains*.

        With *then_down*, the proxy then stays down for that many seconds (see the module doc).
        """
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        if down_as not in DOWN_AS:
            raise ValueError(f"down_as must be one of {DOWN_AS}, got {down_as!r}")
        with self._lock:
            self._armed.append((fault, request_contains, then_down, down_as, hold))

    def _take(self, request_line: str) -> tuple[str, float | None, str, float] | None:
        with self._lock:
            for armed in self._armed:
                if armed[1] in request_line:
                    self._armed.remove(armed)
                    self.fired.append((armed[0], request_line))
                    return armed[0], armed[2], armed[3], armed[4]
        return None

    @property
    def is_down(self) -> bool:
        return self._down is not None

    def down(self, seconds: float = math.inf, down_as: str = "refuse") -> None:
        """Go down now: drop every connection; refuse new ones or answer them 503."""
        with self._lock:
            if self._closed:
                return
            self._down = down_as
            listener, sockets = self._listener, list(self._sockets)
            if down_as == "refuse":
                self._listener = None
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            if seconds != math.inf:
                self._timer = threading.Timer(seconds, self.up)
                self._timer.daemon = True
                self._timer.start()
        if down_as == "refuse" and listener is not None:
            _close_listener(listener)
        for sock in sockets:
            _shutdown(sock)

    def up(self) -> None:
        """Serve again, on the same port."""
        with self._lock:
            if self._closed or self._down is None:
                return
            if self._listener is None:
                self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR
                self._spawn(self._accept_loop, self._listener)
            self._down = None

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="fault-proxy")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.connections += 1
            self._spawn(self._relay, client)

    def _relay(self, client: socket.socket) -> None:
        if self._down == "503":
            self._unavailable(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()  # the server is down: the client sees its connection closed
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets.update((client, upstream))
        from_client, from_server = bytearray(), bytearray()
        try:
            while True:
                request = _read_message(client, from_client)
                with self._lock:
                    self.in_flight += 1
                try:
                    if not self._exchange(client, upstream, request, from_server):
                        return
                finally:
                    with self._lock:
                        self.in_flight -= 1
        except (_Closed, OSError):
            return
        finally:
            for sock in (client, upstream):
                sock.close()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until no exchange is under way (a held request or answer has been delivered)."""
        deadline = time.monotonic() + timeout
        while self.in_flight:
            if time.monotonic() > deadline:
                raise AssertionError(f"the proxy still has {self.in_flight} exchange(s) under way")
            time.sleep(0.01)

    def _exchange(self, client: socket.socket, upstream: socket.socket, request: bytes,
                  from_server: bytearray) -> bool:
        """Relay one request and its answer (or the armed fault); whether the connection goes on."""
        if self._down is not None:  # went down while this connection was idle
            if self._down == "503":
                client.sendall(_UNAVAILABLE)
            return False
        request_line = request.split(b"\r\n", 1)[0].decode("latin-1")
        taken = self._take(request_line)
        fault, then_down, down_as, hold = taken if taken else (None, None, "refuse", 0.0)
        if fault == "slow_request":
            time.sleep(hold)
        if fault == "request":
            if then_down is not None:
                self.down(then_down, down_as)
            return False
        self.forwarded.append(request_line)
        upstream.sendall(request)
        if fault == "cut":
            if then_down is not None:
                self.down(then_down, down_as)
            client.close()
            _read_message(upstream, from_server)  # let the server finish; discard
            return False
        response = _read_message(upstream, from_server)
        if fault == "response":
            if then_down is not None:
                self.down(then_down, down_as)  # before the client learns of the loss
            return False
        if fault == "slow_response":
            time.sleep(hold)
        elif fault == "half_response":
            half = len(response) // 2
            client.sendall(response[:half])
            time.sleep(hold)
            response = response[half:]
        client.sendall(response)
        return True

    def _unavailable(self, client: socket.socket) -> None:
        """Down as a load balancer without a backend: every request gets a bare 503."""
        with self._lock:
            self._sockets.add(client)
        buffer = bytearray()
        try:
            _read_message(client, buffer)
            client.sendall(_UNAVAILABLE)
        except (_Closed, OSError):
            pass
        finally:
            client.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            listener, self._listener = self._listener, None
            if self._timer is not None:
                self._timer.cancel()
            sockets = list(self._sockets)
        if listener is not None:
            _close_listener(listener)
        for sock in sockets:
            _shutdown(sock)
        for thread in list(self._threads):
            thread.join(timeout=10)


def _close_listener(listener: socket.socket) -> None:
    _shutdown(listener)  # wakes the blocked accept() (Linux)
    listener.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
