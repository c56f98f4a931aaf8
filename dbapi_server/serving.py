"""Serving the application: granian (``dbapi-server serve``), or waitress (``--server waitress``, tests).

granian (a Rust HTTP server with a WSGI interface) measured fastest of the production servers we
tried with the real application: the least server CPU per request and the lowest latency, alone
and with concurrent clients (``bench/bench_http.py``; the numbers are in ``docs/architecture.md``).
It runs ONE worker process with *threads* blocking threads: a transaction lives in that process's
memory, so every request of it must reach the same process. The worker builds the application
itself (``factory``, called there): a process must not inherit another's database connections or
its transaction reaper thread, and it closes the application when it stops (open transactions
rolled back, pool disposed). Its main process only supervises: SIGTERM or SIGINT stops it
gracefully (requests in flight finish, up to ``stop_timeout`` seconds), and a worker that dies is
started again - which, like a restart, ends its open transactions. A worker dies with its main
process, even one killed with SIGKILL: an orphan would go on serving, with its transactions and
remembered outcomes, beside the replacement a supervisor starts on the same port.

On Linux granian binds with ``SO_REUSEPORT``, so a second server on a port would silently share
its traffic - and split transactions between two memories. The port is therefore checked (and,
for ``port=0``, chosen) with a socket of our own that refuses to share with a listening one, and
held until the worker listens.

waitress stays for ``start_background`` (a server in a thread of the calling process, which
granian cannot do: it serves from processes it starts itself) and as ``--server waitress``.

Stopping is graceful under both (:mod:`dbapi_server.shutdown`): the first SIGTERM or SIGINT starts
the application's drain - no new transactions, the open ones may finish within the grace - while
the server goes on serving; when the drain is over the server stops. Under granian the main
process receives the signal and sends SIGTERM to the worker (so does a service manager that
signals the whole process group); granian's worker would stop serving at once, so the worker
installs its own handler instead of granian's (see :func:`_drain_then_stop_granian`), and the
main process waits ``grace`` plus ``stop_timeout`` seconds for it before killing it.
"""

from __future__ import annotations

import _thread
import ctypes
import importlib
import math
import multiprocessing.util
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._waitress import create_waitress_server

__all__ = ["SERVERS", "BackgroundServer", "serve", "start_background"]

SERVERS = ("granian", "waitress")


def serve(factory: Callable[[], Any], host: str = "127.0.0.1", port: int = 9180, threads: int = 8, *,
          server: str = "granian", port_file: str | os.PathLike[str] | None = None, stop_timeout: int = 30,
          grace: float = 30.0) -> None:
    """Serve the WSGI application *factory* builds until interrupted (SIGINT or SIGTERM).

    ``port=0`` binds a free port. The bound port is printed and, with *port_file*, written to that
    file (atomically, once the server listens), so whoever started the server learns it without
    racing another process for a port it picked in advance. Under granian *factory* runs in the
    worker process (pass a picklable callable, such as a ``functools.partial`` of ``create_app``:
    Python 3.14 starts workers by spawning); under waitress it runs here. *grace* is the
    application's shutdown grace (``DBAPI_SHUTDOWN_GRACE``): how long granian's main process lets
    the worker drain, on top of *stop_timeout*.
    """
    if server == "waitress":
        _serve_waitress(factory(), host, port, threads, port_file)
    elif server == "granian":
        _serve_granian(factory, host, port, threads, port_file, stop_timeout + math.ceil(grace))
    else:
        raise ValueError(f"server must be one of {', '.join(SERVERS)}, got {server!r}")


def _serve_waitress(app: Any, host: str, port: int, threads: int, port_file: str | os.PathLike[str] | None) -> None:
    server = create_waitress_server(app, host=host, port=port, threads=threads, ident="dbapi-server",
                           channel_timeout=300)
    # effective_port is set in BaseWSGIServer.__init__ but missing from types-waitress
    bound = int(server.effective_port)  # type: ignore[union-attr]
    _announce(str(server.effective_host), bound, port_file)  # type: ignore[union-attr]
    # SIGTERM (what service managers and container runtimes send) and SIGINT drain the
    # application while waitress goes on serving, then stop it: waitress leaves its loop on
    # SystemExit, and the caller closes the application
    handler = _DrainThenExit(_drain_of(app))
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        server.close()


def _drain_of(app: Any) -> Callable[[], None] | None:
    """The application's graceful shutdown (``ServerState.drain.run``), if it is a DB-API."""
    state = getattr(app, "extensions", {}).get("dbapi_server")
    return state.drain.run if state is not None else None


class _DrainThenExit:
    """A signal handler for a server whose loop runs in the main thread (waitress).

    The first signal starts the drain in a thread and returns, so the loop goes on serving; when
    the drain is over, the thread signals the main thread again, and this time the handler
    raises ``SystemExit``. Signals in between change nothing.
    """

    def __init__(self, drain: Callable[[], None] | None) -> None:
        self.drain = drain
        self.drained = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.drain is None or self.drained.is_set():
            raise SystemExit(0)
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="dbapi-drain", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        assert self.drain is not None
        try:
            self.drain()
        finally:
            self.drained.set()
            _thread.interrupt_main(signal.SIGTERM)  # the handler, in the main thread: SystemExit


def _serve_granian(factory: Callable[[], Any], host: str, port: int, threads: int,
                   port_file: str | os.PathLike[str] | None, stop_timeout: int) -> None:
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server import Server

    _granian_signals()  # here, not only in the worker: a worker failing to load would be respawned
    reservation = _reserve(host, port)
    bound = reservation.getsockname()[1]
    # The announcing thread runs while granian forks its worker. A lock it holds at that moment
    # stays held forever in the worker: its first connect() imports the idna codec (getaddrinfo
    # encodes host names with it), and a worker forked during that import deadlocked on the
    # import lock at its first request (werkzeug encodes the Host header with idna too). Imported
    # here, before any thread runs, the codec is only looked up from the registry later.
    importlib.import_module("encodings.idna")
    threading.Thread(target=_announce_when_listening, args=(reservation, host, bound, port_file),
                     name="dbapi-announce", daemon=True).start()
    Server(
        "dbapi_server:create_app",  # a label only: the worker loads the app through target_loader
        address=host, port=bound, interface=Interfaces.WSGI, workers=1, blocking_threads=threads,
        respawn_failed_workers=True, workers_kill_timeout=stop_timeout, log_level=LogLevels.warning,
    ).serve(target_loader=_InWorker(factory, os.getpid()), wrap_loader=False)


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to (*host*, *port*) - refused if something listens there - that granian's
    ``SO_REUSEPORT`` listener can then share while nobody else can bind the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT are fine
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise OSError(exc.errno, f"Cannot serve on {host}:{port}: {exc.strerror} (is another server "
                                     "running there?)") from None
        if hasattr(socket, "SO_REUSEPORT") and sys.platform == "linux":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # now granian may join it
    except BaseException:
        sock.close()
        raise
    if sys.platform != "linux":  # granian binds one shared socket itself: free the port for it
        sock.close()
    return sock


def _announce_when_listening(reservation: socket.socket, host: str, port: int,
                             port_file: str | os.PathLike[str] | None) -> None:
    probe_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection((probe_host, port), timeout=1).close()
        except OSError:
            time.sleep(0.02)
            continue
        _announce(host, port, port_file)
        break
    reservation.close()


def _announce(host: str, port: int, port_file: str | os.PathLike[str] | None) -> None:
    if port_file is not None:
        _write_port_file(Path(port_file), port)
    print(f"dbapi-server listening on http://{host}:{port}", flush=True)


def _write_port_file(path: Path, port: int) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(f"{port}\n")
    os.replace(partial, path)  # a reader sees no file or the whole number, never a part


@dataclass(frozen=True)
class _InWorker:
    """Builds the application in a granian worker, first tying the worker's life to its parent's."""

    factory: Callable[[], Any]
    parent: int

    def __call__(self) -> Any:
        # Stop signals are taken by one thread of ours with sigwait() (see _drain_then_stop_granian):
        # blocked here, before any other thread of this process exists, so every thread started
        # later - ours and granian's Rust threads alike - inherits the block.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        if sys.platform == "linux":
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        else:
            threading.Thread(target=self._watch_parent, name="dbapi-parent-watch", daemon=True).start()
        if os.getppid() != self.parent:  # it died before the line above took effect
            os._exit(1)
        app = self.factory()
        state = getattr(app, "extensions", {}).get("dbapi_server")
        if state is not None:  # run when the worker process ends its serving (multiprocessing's exit)
            multiprocessing.util.Finalize(state, state.close, exitpriority=10)
            _drain_then_stop_granian(state.drain.run)
        else:  # not a DB-API: granian's own handlers take the signals, in this (the main) thread
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        return app

    def _watch_parent(self) -> None:
        while os.getppid() == self.parent:
            time.sleep(0.5)
        os._exit(1)


def _drain_then_stop_granian(drain: Callable[[], None]) -> None:
    """In granian's worker: the first SIGTERM / SIGINT drains the application, then stops serving.

    granian's WSGI worker (``MPServer._spawn_wsgi_worker``, granian 2.5-2.8) gets its stop signal
    from ``granian._signals.set_sync_signals()``, which it calls after loading the application
    (this runs while loading it): that installs a handler for SIGINT and SIGTERM setting the
    ``WorkerSignal`` the Rust server stops on - at once, closing the listener and keep-alive
    connections, so an open transaction could not send its commit. Replacing that function in
    this process hands the signals to a thread of ours that drains first - the server keeps
    serving meanwhile - and sets the ``WorkerSignal`` when it is over. ``tests/dbapi_server/test_shutdown.py``
    proves it on the granian installed; a granian without the hook fails loudly here.
    """
    _signals = _granian_signals()
    worker_signal = _signals.WorkerSignal

    def set_sync_signals() -> Any:
        stop = worker_signal()

        def await_stop_signal() -> None:
            # Not a Python signal handler: those run only in the main thread, which here waits in
            # threading.Event.wait() while the kernel may deliver a process-directed SIGTERM to any
            # of granian's threads - the handler then never ran, and the worker never drained
            # (about one stop in eight). The signals are blocked in every thread (_InWorker), so
            # they stay pending until this thread takes them.
            signal.sigwait(_STOP_SIGNALS)
            try:
                drain()
            finally:
                stop.set()

        threading.Thread(target=await_stop_signal, name="dbapi-stop-signal", daemon=True).start()
        return stop

    _signals.set_sync_signals = set_sync_signals


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # what granian's own set_main_signals covers


def _granian_signals() -> Any:
    """granian's worker signal module, checked for the hook the drain replaces."""
    from granian import _signals

    if not callable(getattr(_signals, "set_sync_signals", None)) or not hasattr(_signals, "WorkerSignal"):
        raise RuntimeError("This granian version has no granian._signals.set_sync_signals / WorkerSignal: "
                           "dbapi-server cannot drain open transactions on SIGTERM under it. Use granian "
                           "2.5-2.8, or --server waitress.")
    return _signals


@dataclass
class BackgroundServer:
    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        """Close the listener and every open keep-alive channel from inside the server's loop."""

        def close_all() -> None:
            for channel in list(self.server._map.values()):
                if channel is not self.server.trigger:
                    channel.close()
            self.server.trigger.close()  # the map is now empty: the loop returns

        # worker threads first: one finishing a response after the channels are closed would
        # wake the loop through a closed pipe (EBADF in that thread)
        self.server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        trigger = self.server.trigger
        # not trigger.pull_trigger(close_all): it appends the thunk, then writes to the pipe; a
        # wake-up from a worker thread in between runs close_all, which closes the pipe, and the
        # write fails (EBADF) - or lands in whatever reused the descriptor. The loop runs thunks
        # under trigger.lock, so holding it across both steps closes that window.
        with trigger.lock:
            trigger.thunks.append(close_all)
            trigger._physical_pull()
        self.thread.join(timeout=10)


def start_background(app: Any, host: str = "127.0.0.1", port: int = 0, threads: int = 8) -> BackgroundServer:
    """Serve *app* on a real loopback socket from a daemon thread (waitress); ``port=0`` picks a free one."""
    server = create_waitress_server(app, host=host, port=port, threads=threads, ident="dbapi-server")
    thread = threading.Thread(target=server.run, name="dbapi-server", daemon=True)
    thread.start()
    # effective_port is set in BaseWSGIServer.__init__ but missing from types-waitress
    return BackgroundServer(f"http://{host}:{server.effective_port}", server, thread)  # type: ignore[union-attr]
