"""Who is calling: bearer-token verification behind one seam.

``Authenticator.authenticate(authorization_header) -> Principal``. The JWT implementation
verifies with PyJWT against a fixed algorithm allowlist, audience and (optionally) issuer, with a
small clock skew; verified tokens are cached until they expire so the signature is checked once
per token, not once per request. The full security model (asymmetric keys by ``kid``, JWKS,
per-task scopes) extends this seam; it is not built yet.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt

from .errors import APIError

__all__ = ["AllowAll", "Authenticator", "JWTAuthenticator", "Principal", "Unauthenticated", "mint_token"]

DEFAULT_AUDIENCE = "dbsession"


class Unauthenticated(APIError):
    status = 401
    code = "unauthenticated"


@dataclass(frozen=True)
class Principal:
    """The verified caller."""

    subject: str | None
    claims: Mapping[str, Any] = field(default_factory=dict)

    @property
    def role(self) -> str | None:
        return self.claims.get("role")


class Authenticator(Protocol):
    def authenticate(self, authorization: str | None) -> Principal: ...


class AllowAll:
    """No authentication at all - for local development and the demo only."""

    def authenticate(self, authorization: str | None) -> Principal:
        return Principal(subject=None)


class JWTAuthenticator:
    """Verifies ``Authorization: Bearer <jwt>``."""

    def __init__(self, key: Any, *, algorithms: Iterable[str] = ("EdDSA", "RS256"),
                 audience: str = DEFAULT_AUDIENCE, issuer: str | None = None,
                 leeway: float = 10.0, cache_size: int = 4096) -> None:
        self.key = key
        self.algorithms = list(algorithms)
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self._cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthenticated("A bearer token is required: send 'Authorization: Bearer <token>'.")
        token = authorization[7:].strip()
        now = time.time()
        with self._lock:
            hit = self._cache.get(token)
        if hit is not None and hit[0] + self.leeway > now:
            return hit[1]
        principal, expires = self._verify(token)
        with self._lock:
            self._cache[token] = (expires, principal)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(token, self.key, algorithms=self.algorithms, audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway,
                                options={"require": ["exp", "aud"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("The token has expired; ask the trusted side for a fresh one.") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"The token was rejected: {exc}.") from None
        return Principal(subject=claims.get("sub"), claims=claims), float(claims["exp"])


def mint_token(key: Any, *, subject: str, algorithm: str = "EdDSA", audience: str = DEFAULT_AUDIENCE,
               issuer: str | None = None, ttl: float = 600.0, **claims: Any) -> str:
    """Trusted side: sign a short-lived token for *subject*."""
    now = int(time.time())
    payload = {"sub": subject, "aud": audience, "iat": now, "nbf": now, "exp": now + int(ttl), **claims}
    if issuer:
        payload["iss"] = issuer
    return jwt.encode(payload, key, algorithm=algorithm)
