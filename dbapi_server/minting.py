"""The trusted side's token tools: mint short-lived tokens, hand them over in a file, refresh it.

Only the trusted side (scheduler, executor, API server) imports this: it holds the private key.
A task gets a token file (mode 0600); :class:`TokenFileRefresher` rewrites that file atomically
well before the token expires, and the client re-reads it when it changes, so a long task is
never cut off - not even mid-transaction, because server transactions are bound to the token's
``sub``, which a refreshed token keeps. See ``docs/tokens.md``.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from .keyset import StaticKeys, public_jwk

__all__ = ["DEFAULT_TTL", "RESERVED_CLAIMS", "TokenFileRefresher", "atomic_write", "mint_token", "write_token_file"]

log = logging.getLogger("dbapi_server.minting")

DEFAULT_TTL = 600.0
RESERVED_CLAIMS = frozenset({"sub", "iss", "aud", "exp", "iat", "nbf", "jti"})


def _signing_key(private_key: Any, algorithm: str | None) -> tuple[Any, str, str]:
    """(key object or secret, algorithm, default kid) for *private_key*."""
    if algorithm is not None and algorithm.startswith("HS"):
        secret = private_key.encode() if isinstance(private_key, str) else private_key
        kid = StaticKeys.from_key(secret, symmetric=True).kids[0]
        return secret, algorithm, kid
    key = private_key
    if isinstance(key, str):
        key = key.encode()
    if isinstance(key, bytes):
        key = load_pem_private_key(key, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        default = "EdDSA"
    elif isinstance(key, rsa.RSAPrivateKey):
        default = "RS256"
    else:
        raise TypeError(f"mint_token needs an Ed25519 or RSA private key, got {type(key).__name__}.")
    return key, algorithm or default, public_jwk(key)["kid"]


def mint_token(private_key: Any, *, subject: str, role: str | None = None,
               scopes: Iterable[str] | str | None = None, ttl: float = DEFAULT_TTL,
               kid: str | None = None, issuer: str = DEFAULT_ISSUER, audience: str = DEFAULT_AUDIENCE,
               algorithm: str | None = None, now: float | None = None, **claims: Any) -> str:
    """Sign a short-lived token for *subject* with the trusted side's private key.

    *private_key* is a PEM (bytes/str) or a cryptography key object; the algorithm follows its
    type (Ed25519: ``EdDSA``, RSA: ``RS256``) and ``kid`` defaults to the public key's RFC 7638
    thumbprint, which is the ``kid`` the DB-API derives for the matching public key file. Extra
    keyword arguments become claims for the policy (``dag_id=...``, ``run_id=...``); the
    registered claims are set here and cannot be overridden that way. ``jti`` is random.
    """
    if not isinstance(subject, str) or not subject:
        raise ValueError("mint_token needs a non-empty subject (who the token is for).")
    reserved = RESERVED_CLAIMS & set(claims)
    if reserved:
        raise ValueError(f"{', '.join(sorted(reserved))} cannot be passed as extra claims; use "
                         "subject=, issuer=, audience= and ttl=.")
    key, algorithm, default_kid = _signing_key(private_key, algorithm)
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"sub": subject, "iss": issuer, "aud": audience, "iat": issued,
                               "nbf": issued, "exp": issued + int(ttl), "jti": secrets.token_urlsafe(16)}
    if role is not None:
        payload["role"] = role
    if scopes is not None:
        payload["scope"] = scopes if isinstance(scopes, str) else " ".join(scopes)
    payload.update(claims)
    return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid or default_kid})


def write_token_file(path: str | Path, token: str) -> Path:
    """Write *token* to *path* atomically, mode 0600.

    The token goes to a hidden temporary file created 0600 in the same directory (never readable
    by others, not even briefly) and is renamed over *path*, so a reader sees the old token or the
    new one, never a half-written file.
    """
    return atomic_write(path, token, mode=0o600)


def atomic_write(path: str | Path, text: str, *, mode: int) -> Path:
    """Replace *path* by a file holding *text*, created with *mode* (no window with wider access)."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; never widened beyond *mode*
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def _lifetime(token: str) -> tuple[float, float]:
    claims = jwt.decode(token, options={"verify_signature": False})
    return float(claims.get("iat", time.time())), float(claims["exp"])


class TokenFileRefresher:
    """Keep a task's token file fresh: rewrite it with a new token before the old one expires.

    *mint* returns a new token (same ``sub``, so server transactions continue). The first token
    is written by :meth:`start`, before the task is started; then a daemon thread rewrites the
    file when ``refresh_at`` of the current token's lifetime has passed (default: half way).
    Use as a context manager around the task's lifetime.
    """

    def __init__(self, path: str | Path, mint: Callable[[], str], *, refresh_at: float = 0.5,
                 retry_interval: float = 5.0) -> None:
        if not 0.0 < refresh_at < 1.0:
            raise ValueError("refresh_at is a fraction of the token lifetime, between 0 and 1.")
        self.path = Path(path)
        self._mint = mint
        self._refresh_at = refresh_at
        self._retry = retry_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"TokenFileRefresher(path={str(self.path)!r}, refreshes={self.refreshes})"

    def start(self) -> TokenFileRefresher:
        due = self._write()
        self._thread = threading.Thread(target=self._run, args=(due,), name=f"token-refresher:{self.path.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> TokenFileRefresher:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _write(self) -> float:
        """Write a fresh token; return when (wall clock) the next one is due."""
        token = self._mint()
        issued, expires = _lifetime(token)
        write_token_file(self.path, token)
        return issued + (expires - issued) * self._refresh_at

    def _run(self, due: float) -> None:
        while not self._stop.wait(max(0.0, due - time.time())):
            try:
                due = self._write()
                self.refreshes += 1
            except Exception:
                log.exception("refreshing the token file %s failed; retrying in %.0fs", self.path, self._retry)
                due = time.time() + self._retry
