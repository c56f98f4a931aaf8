"""The lean HTTP/1.1 client under the transport: framing edge cases, stale sockets, retry safety.

Each test talks to a real loopback socket. A scripted server (below) writes exactly the bytes a
test needs - split reads, chunked answers, a keep-alive socket closed while idle, a connection
closed after the request was read - and counts the connections and requests that reached it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dbsession import ConfigurationError, DBSession, guard
from dbsession._http import AnswerLost, ConnectionPool, NotSent, _Connection
from dbsession.auth import TokenSource
from dbsession.session import release_api_host
from dbsession.transport import ServerUnreachable, Transport
from tests.servers import RunningServer, running_dbapi

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\": 1}\r\n"


def read_request(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """One request (head and Content-Length body) from *sock*, or None at the end of the stream."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            return None
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    while len(buffer) < end + length:
        buffer += sock.recv(65536)
    request = bytes(buffer[:end + length])
    del buffer[:end + length]
    return request


Script = Callable[["Peer"], None]


@dataclass
class Peer:
    """The server's side of one connection, handed to a test's script."""

    sock: socket.socket
    server: ScriptedServer
    buffer: bytearray = field(default_factory=bytearray)

    def request(self) -> bytes | None:
        request = read_request(self.sock, self.buffer)
        if request is not None:
            self.server.requests.append(request)
        return request

    def send(self, data: bytes, *, in_pieces_of: int = 0) -> None:
        if not in_pieces_of:
            self.sock.sendall(data)
            return
        for i in range(0, len(data), in_pieces_of):
            self.sock.sendall(data[i:i + in_pieces_of])
            time.sleep(0.001)  # separate segments: the client sees many short reads


class ScriptedServer:
    """A loopback server that runs *script* for each accepted connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.pools: list[ConnectionPool] = []  # the clients' pools, closed with the server
        self.connections = 0
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            try:
                self.script(Peer(sock, self))
            except OSError:
                pass

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)


@pytest.fixture
def serve() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def pool_for(server: ScriptedServer, read_timeout: float = 5.0) -> ConnectionPool:
    pool = ConnectionPool("http", "127.0.0.1", server.port, connect_timeout=2, read_timeout=read_timeout, maxsize=4)
    server.pools.append(pool)
    return pool


def get(path: str = "/x") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def keep_answering(*answers: bytes, in_pieces_of: int = 0) -> Script:
    """Answer each request on the connection with the next of *answers* (the last one repeats)."""
    def script(peer: Peer) -> None:
        n = 0
        while peer.request() is not None:
            peer.send(answers[min(n, len(answers) - 1)], in_pieces_of=in_pieces_of)
            n += 1
    return script


# -- framing ---------------------------------------------------------------------------------------
def test_an_answer_arriving_a_few_bytes_at_a_time_is_assembled(serve: Callable[[Script], ScriptedServer]) -> None:
    body = b'{"rows": [' + b", ".join(b"%d" % i for i in range(400)) + b"]}"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Many: a\r\nX-Many: b\r\n\r\n%s" % (len(body), body)
    server = serve(keep_answering(answer, in_pieces_of=7))
    pool = pool_for(server)
    for _ in range(2):
        response = pool.request("GET", get())
        assert (response.status, response.data) == (200, body)
        assert response.headers["x-many"] == "a, b"
    assert server.connections == 1  # kept alive across the split answers


def test_a_chunked_answer_with_extensions_and_trailers(serve: Callable[[Script], ScriptedServer]) -> None:
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"4;name=value\r\n{\"a\"\r\n19\r\n: [1, 2, 3], \"b\": \"xyzw\"}\r\n0\r\nX-Trailer: t\r\n\r\n")
    server = serve(keep_answering(answer, in_pieces_of=5))
    pool = pool_for(server)
    for _ in range(3):
        assert pool.request("GET", get()).data == b'{"a": [1, 2, 3], "b": "xyzw"}'
    assert server.connections == 1


def test_a_large_answer_is_read_whole(serve: Callable[[Script], ScriptedServer]) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: many reads into one buffer
    server = serve(keep_answering(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)))
    assert pool_for(server).request("GET", get()).data == body


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: Close\r\n\r\nuntil the end",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nuntil the end",
], ids=["no-length-close", "http-1.0", "connection-close", "coding-without-chunked"])
def test_an_answer_that_ends_the_connection_is_not_reused(serve: Callable[[Script], ScriptedServer],
                                                           answer: bytes) -> None:
    def script(peer: Peer) -> None:
        if peer.request() is not None:
            peer.send(answer)

    server = serve(script)
    pool = pool_for(server)
    assert pool.request("GET", get()).data == b"until the end"
    assert pool.request("GET", get()).data == b"until the end"
    assert server.connections == 2


def test_transfer_encoding_overrides_content_length_and_retires_the_connection(
        serve: Callable[[Script], ScriptedServer]) -> None:
    """Both framings at once (RFC 9112 6.3): chunked wins, and the connection, out of step with
    whatever sent it, is not used again."""
    server = serve(keep_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"5\r\nhello\r\n0\r\n\r\n"))
    pool = pool_for(server)
    assert [pool.request("GET", get()).data for _ in range(2)] == [b"hello", b"hello"]
    assert server.connections == 2


def test_interim_answers_are_skipped(serve: Callable[[Script], ScriptedServer]) -> None:
    server = serve(keep_answering(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK))
    response = pool_for(server).request("POST", get())
    assert (response.status, response.data) == (200, b'{"ok": 1}\r\n')


def test_an_answer_without_a_body_by_status(serve: Callable[[Script], ScriptedServer]) -> None:
    server = serve(keep_answering(b"HTTP/1.1 204 No Content\r\n\r\n", OK))
    pool = pool_for(server)
    assert pool.request("GET", get()).data == b""
    assert pool.request("GET", get()).status == 200
    assert server.connections == 1


@pytest.mark.parametrize(("answer", "message"), [
    (b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"x" * 70_000 + b"\r\n\r\n", "head is larger than"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"Content-Length: 0\r\n\r\n", "more than 100 headers"),
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not HTTP/1.x"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "not HTTP/1.x"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "conflicting Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd", "not followed by CRLF"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 5000, "line .* too long"),
    (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut short", "closed the connection before its answer"),
    (b"", "closed the connection before its answer"),
], ids=["huge-head", "many-headers", "not-http", "bad-status", "two-lengths", "negative-length",
        "unicode-digit", "chunk-size", "negative-chunk", "chunk-crlf", "chunk-line", "space-in-name",
        "obs-fold", "truncated", "closed"])
def test_a_malformed_or_cut_answer_means_the_answer_is_lost(serve: Callable[[Script], ScriptedServer],
                                                            answer: bytes, message: str) -> None:
    def script(peer: Peer) -> None:
        if peer.request() is not None:
            peer.send(answer)
            peer.sock.shutdown(socket.SHUT_WR)
            time.sleep(0.2)

    server = serve(script)
    with pytest.raises(AnswerLost, match=message):
        pool_for(server).request("GET", get())
    assert len(server.requests) == 1


def test_a_read_timeout_means_the_answer_is_lost(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(peer: Peer) -> None:
        peer.request()
        time.sleep(1.0)

    server = serve(script)
    with pytest.raises(AnswerLost, match="read timeout"):
        pool_for(server, read_timeout=0.2).request("GET", get())


# -- what is provably not sent ---------------------------------------------------------------------
def test_a_keep_alive_socket_the_server_closed_while_idle_is_replaced(serve: Callable[[Script], ScriptedServer]) -> None:
    """The server's idle timeout closes the socket; the next request goes out once, on a new one -
    even one that is not replay-safe: nothing of it was written to the closed socket."""
    def script(peer: Peer) -> None:  # answer one request, then close the idle connection
        if peer.request() is not None:
            peer.send(OK)
        time.sleep(0.05)

    server = serve(script)
    transport = Transport(server.url, TokenSource("t"))
    try:
        assert transport.post("/a", {}, replay_safe=False) == {"ok": 1}
        time.sleep(0.3)  # the server closed its end meanwhile
        assert transport.post("/b", {}, replay_safe=False) == {"ok": 1}
    finally:
        transport.close()
    assert server.connections == 2
    assert [r.split(b" ", 2)[1] for r in server.requests] == [b"/dbapi/v1/a", b"/dbapi/v1/b"]


def test_a_reset_idle_socket_is_replaced(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(peer: Peer) -> None:  # answer, then reset the connection (SO_LINGER 0)
        if peer.request() is not None:
            peer.send(OK)
            time.sleep(0.05)
            peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    server = serve(script)
    pool = pool_for(server)
    pool.request("GET", get())
    time.sleep(0.3)
    assert pool.request("GET", get()).status == 200
    assert (server.connections, len(server.requests)) == (2, 2)


def test_stray_bytes_on_an_idle_socket_retire_it(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(peer: Peer) -> None:  # an answer with bytes after it: that socket is out of step
        while peer.request() is not None:
            peer.send(OK)
            time.sleep(0.05)
            peer.send(b"HTTP/1.1 200 OK\r\n")

    server = serve(script)
    pool = pool_for(server)
    pool.request("GET", get())
    time.sleep(0.2)
    assert pool.request("GET", get()).data == b'{"ok": 1}\r\n'
    assert server.connections == 2


def test_a_failed_first_write_is_not_sent() -> None:
    ours, theirs = socket.socketpair()
    theirs.close()
    with pytest.raises(NotSent, match="before the request was written"):
        _Connection(ours, tls=False).send(get())
    ours.close()


def test_a_request_the_server_read_before_closing_may_have_run(serve: Callable[[Script], ScriptedServer]) -> None:
    """Read, then closed without an answer: a server (or proxy) that died, or the idle-close race.
    The client cannot tell them apart, so only a replay-safe request is sent again."""
    def script(peer: Peer) -> None:
        if peer.request() is not None and len(peer.server.requests) > 2:
            peer.send(OK)  # the second attempt of the second request is answered

    server = serve(script)
    transport = Transport(server.url, TokenSource("t"))
    try:
        with pytest.raises(ServerUnreachable, match="not retried because it may have run") as lost:
            transport.post("/once", {}, replay_safe=False)
        assert lost.value.answer_lost and len(server.requests) == 1
        assert transport.post("/again", {}, replay_safe=True) == {"ok": 1}
        assert len(server.requests) == 3
    finally:
        transport.close()


def test_a_refused_connection_is_retried_and_reported_as_never_reached() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        transport = Transport(f"http://127.0.0.1:{port}", TokenSource("t"), connect_attempts=2)
        with pytest.raises(ServerUnreachable, match="after 2 attempts") as refused:
            transport.post("/x", {}, replay_safe=False, deadline=30)
        assert not refused.value.answer_lost


# -- pool and process life -------------------------------------------------------------------------
def test_many_threads_share_one_transport(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(peer: Peer) -> None:
        while (request := peer.request()) is not None:
            body = request.split(b"\r\n\r\n", 1)[1]
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    server = serve(script)
    transport = Transport(server.url, TokenSource("t"), maxsize=3)
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(40):
                assert transport.post("/echo", {"n": n, "i": i}, replay_safe=True) == {"n": n, "i": i}
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    transport.close()
    assert not failures
    assert len(server.requests) == 320
    assert len(transport._pool._idle) == 0  # closed


def test_a_forked_child_does_not_share_the_parents_sockets(serve: Callable[[Script], ScriptedServer]) -> None:
    server = serve(keep_answering(OK))
    code = f"""
import os
from dbsession._http import ConnectionPool
pool = ConnectionPool("http", "127.0.0.1", {server.port}, connect_timeout=2, read_timeout=5)
request = b"GET / HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n"
pool.request("GET", request)
pid = os.fork()
if pid == 0:
    pool.request("GET", request)
    os._exit(0)
os.waitpid(pid, 0)
pool.request("GET", request)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert (server.connections, len(server.requests)) == (2, 3)


def test_a_token_that_cannot_be_a_header_is_refused(serve: Callable[[Script], ScriptedServer]) -> None:
    server = serve(keep_answering(OK))
    transport = Transport(server.url, TokenSource("abc\r\nX-Injected: 1"))
    with pytest.raises(ConfigurationError, match="cannot travel in an HTTP header"):
        transport.get("/info")
    transport.close()
    assert not server.requests


# -- TLS -------------------------------------------------------------------------------------------
class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Widget(Base):
    __tablename__ = "widgets"
    id: Mapped[int] = mapped_column(primary_key=True)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key (PEM files: certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dbapi test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class TLSTerminator:
    """TLS on a loopback port in front of a plain HTTP server, as a terminating proxy does."""

    def __init__(self, upstream_port: int, cert_file: Path, key_file: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self.listener = context.wrap_socket(socket.create_server(("127.0.0.1", 0)), server_side=True)
        self.port = self.listener.getsockname()[1]
        self.upstream_port = upstream_port
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except ssl.SSLError:
                continue  # a client that refused our certificate
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture(scope="module")
def tls_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, RunningServer, Path]]:
    """(https URL, the DB-API behind it, the certificate a client must trust)."""
    directory = tmp_path_factory.mktemp("tls")
    engine = guard.exempt(sa.create_engine(f"sqlite:///{directory / 'w.sqlite'}"))
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([Widget(id=1), Widget(id=2)])
        s.commit()
    cert_file, key_file = self_signed(directory)
    with running_dbapi(engine, Base.metadata) as server:
        terminator = TLSTerminator(int(server.url.rsplit(":", 1)[1]), cert_file, key_file)
        url = f"https://127.0.0.1:{terminator.port}"
        try:
            yield url, server, cert_file
        finally:
            release_api_host(url)
            terminator.close()
    engine.dispose()


def test_a_session_over_tls_trusting_the_certificate(tls_api: tuple[str, RunningServer, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url, server, cert_file = tls_api
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # OpenSSL's standard way to add a CA
    with DBSession(database_access_isolation=True, database_api_host=url, token=server.token) as s:
        assert s.scalars(sa.select(Widget.id).order_by(Widget.id)).all() == [1, 2]
        s.add(Widget(id=3))
        s.commit()
        assert s.get(Widget, 3) is not None
        s.delete(s.get(Widget, 3))
        s.commit()


def test_a_certificate_the_client_does_not_trust_is_refused(tls_api: tuple[str, RunningServer, Path]) -> None:
    url, server, cert_file = tls_api
    transport = Transport(url, TokenSource(server.token), connect_attempts=1)
    with pytest.raises(ServerUnreachable, match="CERTIFICATE_VERIFY_FAILED") as refused:
        transport.get("/info")
    assert not refused.value.answer_lost  # nothing was sent: the handshake failed
    transport.close()
    trusting = Transport(url, TokenSource(server.token),
                         ssl_context=ssl.create_default_context(cafile=str(cert_file)))
    assert trusting.get("/info")["dialect"] == "sqlite"
    trusting.close()


def test_a_path_that_would_break_the_request_line_is_refused(serve: Callable[[Script], ScriptedServer]) -> None:
    server = serve(keep_answering(OK))
    transport = Transport(server.url, TokenSource("t"))
    for path in ("/cursors/x HTTP/1.1\r\nX-Injected: 1\r\n\r\n/fetch", "/cursors/\u00e9/fetch", "/a b"):
        with pytest.raises(ValueError, match="Not a DB-API request path"):
            transport.post(path, {}, replay_safe=True)
    transport.close()
    assert not server.requests
