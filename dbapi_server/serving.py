"""Serving the application with waitress, in the foreground (CLI) or in a thread (tests, demo)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from waitress.server import create_server

__all__ = ["BackgroundServer", "serve", "start_background"]


def serve(app: Any, host: str = "127.0.0.1", port: int = 9180, threads: int = 8) -> None:
    """Serve *app* until interrupted."""
    server = create_server(app, host=host, port=port, threads=threads, ident="dbapi-server",
                           channel_timeout=300)
    server.print_listen("dbapi-server listening on http://{}:{}")
    server.run()


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
