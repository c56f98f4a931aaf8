"""A real TCP proxy between a client and the DB-API that can lose one chosen request or answer.

It forwards HTTP/1.1 keep-alive traffic request by request (``Content-Length`` framing, which is
all the client and waitress use here). A fault is armed for the next request whose request line
contains a given text, and fires once:

``"request"``   the request never reaches the server: the client's connection is closed instead;
``"response"``  the server handles the request and answers; the answer is dropped and the
                client's connection closed;
``"cut"``       the request is forwarded and the client's connection is closed at once, while the
                server is still working on it (its answer is read and thrown away).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaultProxy"]

FAULTS = ("request", "response", "cut")


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
    _armed: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sockets: set[socket.socket] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._spawn(self._accept_loop)

    def arm(self, fault: str, request_contains: str) -> None:
        """Lose the next request (or its answer) whose request line contains *request_contains*."""
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        with self._lock:
            self._armed.append((fault, request_contains))

    def _take(self, request_line: str) -> str | None:
        with self._lock:
            for armed in self._armed:
                if armed[1] in request_line:
                    self._armed.remove(armed)
                    self.fired.append((armed[0], request_line))
                    return armed[0]
        return None

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="fault-proxy")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._spawn(self._relay, client)

    def _relay(self, client: socket.socket) -> None:
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
                fault = self._take(request.split(b"\r\n", 1)[0].decode("latin-1"))
                if fault == "request":
                    return
                upstream.sendall(request)
                if fault == "cut":
                    client.close()
                    _read_message(upstream, from_server)  # let the server finish; discard
                    return
                response = _read_message(upstream, from_server)
                if fault == "response":
                    return
                client.sendall(response)
        except (_Closed, OSError):
            return
        finally:
            for sock in (client, upstream):
                sock.close()

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=10)
