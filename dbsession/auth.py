"""Where the isolated client's bearer token comes from.

The untrusted side never holds a signing key: it receives a token minted by the trusted side, as
an environment variable or a file. A token file is re-read when it changes, so the trusted side
can refresh a long-running task's token by rewriting the file.
"""

from __future__ import annotations

import os
import threading

from .exceptions import ConfigurationError

__all__ = ["TokenSource"]


class TokenSource:
    """A token given directly, or read from a file (re-read when its mtime changes)."""

    def __init__(self, token: str | None = None, token_file: str | None = None) -> None:
        self._token = token.strip() if token else None
        self._file = token_file
        self._mtime: float | None = None
        self._lock = threading.Lock()
        if token_file:
            self._reload()

    def __repr__(self) -> str:  # never show the token itself
        source = f"file={self._file!r}" if self._file else ("set" if self._token else "none")
        return f"TokenSource({source})"

    def get(self) -> str | None:
        if self._file:
            try:
                mtime = os.stat(self._file).st_mtime
            except OSError as exc:
                raise ConfigurationError(f"Cannot read the token file {self._file}: {exc}.") from None
            if mtime != self._mtime:
                self._reload()
        return self._token

    def _reload(self) -> None:
        assert self._file is not None
        with self._lock:
            try:
                with open(self._file, encoding="utf-8") as handle:
                    self._token = handle.read().strip() or None
                self._mtime = os.stat(self._file).st_mtime
            except OSError as exc:
                raise ConfigurationError(f"Cannot read the token file {self._file}: {exc}.") from None
