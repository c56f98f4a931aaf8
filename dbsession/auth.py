"""Where the isolated client's bearer token comes from.

The untrusted side never holds a signing key: it receives a token minted by the trusted side, as
an environment variable (``DATABASE_API_TOKEN``) or a file (``DATABASE_API_TOKEN_FILE``).

- A token file must be private to its owner: one with any group or other permission bit is
  refused with a message naming the file, its mode and ``chmod 600``.
- The file is re-read whenever it changes (checked with one ``stat`` per request), so the
  trusted side refreshes a long task's token by rewriting it; the transport also forces a
  re-read when the DB-API answers 401, and retries once with the new token if there is one.
- The token never appears in a ``repr``, a log record or an exception message.
"""

from __future__ import annotations

import os
import stat
import threading

from .exceptions import ConfigurationError

__all__ = ["TokenSource", "check_token_file"]


def check_token_file(path: str) -> os.stat_result:
    """``stat`` *path*, refusing a token file that others could read or write."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the token file {path}: {exc.strerror}.") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigurationError(f"The token file {path} is not a regular file.")
    if os.name == "posix" and st.st_mode & 0o077:
        raise ConfigurationError(
            f"The token file {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others may access "
            f"it, so the token is refused. Make it private to its owner: chmod 600 {path}")
    return st


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_mtime_ns, st.st_size


class TokenSource:
    """A token given directly, or read from a file (re-read when it changes)."""

    def __init__(self, token: str | None = None, token_file: str | None = None) -> None:
        self._token = token.strip() if token else None
        self._file = token_file
        self._signature: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        if token_file:
            self._reload(check_token_file(token_file))

    def __repr__(self) -> str:  # never show the token itself
        source = f"file={self._file!r}" if self._file else ("set" if self._token else "none")
        return f"TokenSource({source})"

    def get(self) -> str | None:
        if self._file:
            st = check_token_file(self._file)
            if _signature(st) != self._signature:
                self._reload(st)
        return self._token

    def reload(self) -> bool:
        """Re-read the token file even if it looks unchanged; whether the token is now different.

        The transport calls this after a 401: the trusted side may have rewritten the file in
        a way ``stat`` cannot see, or just after the request left.
        """
        if not self._file:
            return False
        before = self._token
        self._reload(check_token_file(self._file))
        return self._token != before

    def _reload(self, st: os.stat_result) -> None:
        assert self._file is not None
        with self._lock:
            try:
                with open(self._file, encoding="utf-8") as handle:
                    token = handle.read().strip() or None
            except OSError as exc:
                raise ConfigurationError(f"Cannot read the token file {self._file}: {exc.strerror}.") from None
            self._token, self._signature = token, _signature(st)
