"""Serving the application: granian (``dbapi-server serve``), or waitress (``--server waitress``, tests).

granian (a Rust HTTP server with a WSGI interface) measured fastest of the production servers we
tried with the real application: the least server CPU per request and the lowest latency, alone
and with concurrent clients (``bench/bench_http.py``; the numbers are in ``docs/architecture.md``).
It runs ONE worker process with *threads* blocking threads: a transaction lives in that process's
memory, so every request of it must reach the same process. The worker builds the application
itself (``factory``, called there): a process must not inherit another's database connections or
its transaction reaper thread. Its main process only supervises: SIGTERM or SIGINT stops it
gracefully (requests in flight finish, up to ``stop_timeout`` seconds), and a worker that dies is
started again - which, like a restart, ends its open transactions. A worker dies with its main
process, even one killed with SIGKILL: an orphan would go on serving, with its transactions and
remembered outcomes, beside the replacement a supervisor starts on the same port.

waitress stays for ``start_background`` (a server in a thread of the calling process, which
granian cannot do: it serves from processes it starts itself) and as ``--server waitress``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from waitress.server import create_server

__all__ = ["SERVERS", "BackgroundServer", "serve", "start_background"]

SERVERS = ("granian", "waitress")


def serve(factory: Callable[[], Any], host: str = "127.0.0.1", port: int = 9180, threads: int = 8, *,
          server: str = "granian", stop_timeout: int = 30) -> None:
    """Serve the WSGI application *factory* builds until interrupted.

    Under granian *factory* runs in the worker process (pass a picklable callable, such as a
    ``functools.partial`` of ``create_app``: Python 3.14 starts workers by spawning).
    """
    if server == "waitress":
        waitress = create_server(factory(), host=host, port=port, threads=threads, ident="dbapi-server",
                                 channel_timeout=300)
        waitress.print_listen("dbapi-server listening on http://{}:{}")
        waitress.run()
        return
    if server != "granian":
        raise ValueError(f"server must be one of {', '.join(SERVERS)}, got {server!r}")
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server import Server

    print(f"dbapi-server listening on http://{host}:{port} (granian, 1 worker, {threads} threads)", flush=True)
    Server(
        "dbapi_server:create_app",  # a label only: the worker loads the app through target_loader
        address=host, port=port, interface=Interfaces.WSGI, workers=1, blocking_threads=threads,
        respawn_failed_workers=True, workers_kill_timeout=stop_timeout, log_level=LogLevels.warning,
    ).serve(target_loader=_InWorker(factory, os.getpid()), wrap_loader=False)


@dataclass(frozen=True)
class _InWorker:
    """Builds the application in a granian worker, first tying the worker's life to its parent's."""

    factory: Callable[[], Any]
    parent: int

    def __call__(self) -> Any:
        if sys.platform == "linux":
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        else:
            threading.Thread(target=self._watch_parent, name="dbapi-parent-watch", daemon=True).start()
        if os.getppid() != self.parent:  # it died before the line above took effect
            os._exit(1)
        return self.factory()

    def _watch_parent(self) -> None:
        while os.getppid() == self.parent:
            time.sleep(0.5)
        os._exit(1)


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
    server = create_server(app, host=host, port=port, threads=threads, ident="dbapi-server")
    thread = threading.Thread(target=server.run, name="dbapi-server", daemon=True)
    thread.start()
    # effective_port is set in BaseWSGIServer.__init__ but missing from types-waitress
    return BackgroundServer(f"http://{host}:{server.effective_port}", server, thread)  # type: ignore[union-attr]
