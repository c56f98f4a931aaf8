"""Serving the application with waitress, in the foreground (CLI) or in a thread (tests, demo)."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waitress.server import create_server

__all__ = ["BackgroundServer", "serve", "start_background"]


def serve(app: Any, host: str = "127.0.0.1", port: int = 9180, threads: int = 8,
          port_file: str | os.PathLike[str] | None = None) -> None:
    """Serve *app* until interrupted (SIGINT or SIGTERM), then stop taking requests and return.

    ``port=0`` binds a free port. The bound port is printed and, with *port_file*, written to
    that file (atomically, once the socket listens), so whoever started the server learns it
    without racing another process for a port it picked in advance.
    """
    server = create_server(app, host=host, port=port, threads=threads, ident="dbapi-server",
                           channel_timeout=300)
    # effective_port is set in BaseWSGIServer.__init__ but missing from types-waitress
    bound = int(server.effective_port)  # type: ignore[union-attr]
    if port_file is not None:
        _write_port_file(Path(port_file), bound)
    # printed, not logged: waitress logs this line at INFO, which an unconfigured logging drops
    print(f"dbapi-server listening on http://{server.effective_host}:{bound}", flush=True)  # type: ignore[union-attr]
    # SIGTERM (what service managers and container runtimes send) stops the server as SIGINT
    # does: waitress leaves its loop on SystemExit, and the caller closes the application
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _write_port_file(path: Path, port: int) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(f"{port}\n")
    os.replace(partial, path)  # a reader sees no file or the whole number, never a part


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
    """Serve *app* on a real loopback socket from a daemon thread; ``port=0`` picks a free one."""
    server = create_server(app, host=host, port=port, threads=threads, ident="dbapi-server")
    thread = threading.Thread(target=server.run, name="dbapi-server", daemon=True)
    thread.start()
    # effective_port is set in BaseWSGIServer.__init__ but missing from types-waitress
    return BackgroundServer(f"http://{host}:{server.effective_port}", server, thread)  # type: ignore[union-attr]
