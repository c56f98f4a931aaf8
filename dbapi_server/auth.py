"""Who is calling: bearer-token verification behind one seam.

``Authenticator.authenticate(authorization_header) -> Principal``. ``JWTAuthenticator`` verifies
asymmetric JWTs (EdDSA, RS256; HS256 only when named explicitly) with PyJWT:

- the key is chosen by the token header's ``kid`` from a key set (:mod:`dbapi_server.keyset`:
  PEM files, JWKS files, a JWKS URL), and each key is bound to one algorithm;
- the algorithm allowlist, audience and issuer are fixed by the server, never taken from the token;
- ``sub``, ``iss``, ``aud``, ``exp``, ``iat`` and ``jti`` are required, ``nbf`` is checked when
  present, with a small clock skew (``leeway``), and ``exp - iat`` may not exceed ``max_lifetime``;
- verified tokens are cached so the signature is checked once per token, not once per request; a
  cached token stops working when it expires or when its ``kid`` leaves the key set.

Every refusal is :class:`Unauthenticated` (HTTP 401; an expired token has the code
``token_expired`` so a client knows a fresh token may help). Nothing runs before this check.
See ``docs/tokens.md``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt

from .errors import APIError
from .keyset import (
    KeyFileError,
    KeySet,
    KeySourceUnavailable,
    StaticKeys,
    UnknownKey,
    key_set_from_config,
    split_paths,
)
from .telemetry import label

__all__ = [
    "DEFAULT_AUDIENCE",
    "DEFAULT_ISSUER",
    "REQUIRED_CLAIMS",
    "AllowAll",
    "Authenticator",
    "JWTAuthenticator",
    "Principal",
    "TokenExpired",
    "Unauthenticated",
    "authenticator_from_env",
]

log = logging.getLogger("dbapi_server")

DEFAULT_AUDIENCE = "dbsession"
DEFAULT_ISSUER = "dbsession-trusted"
REQUIRED_CLAIMS = ("sub", "iss", "aud", "exp", "iat", "jti")
ASYMMETRIC_ALGORITHMS = ("EdDSA", "RS256")


class Unauthenticated(APIError):
    """A refused token; ``reason`` (one of ``telemetry.TOKEN_FAILURES``) is for the metrics and the
    log, not the answer."""

    status = 401
    code = "unauthenticated"
    reason = "invalid"

    def __init__(self, message: str, *, reason: str | None = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        if reason is not None:
            self.reason = reason


class TokenExpired(Unauthenticated):
    code = "token_expired"
    reason = "expired"


class KeyServiceUnavailable(APIError):
    status = 503
    code = "key_service_unavailable"


@dataclass(frozen=True)
class Principal:
    """The verified caller: the token's subject and all its claims."""

    subject: str | None
    claims: Mapping[str, Any] = field(default_factory=dict)

    @property
    def role(self) -> str | None:
        role = self.claims.get("role")
        return role if isinstance(role, str) else None

    @property
    def scopes(self) -> frozenset[str]:
        """The ``scope`` claim: space-separated (RFC 8693), or a list of strings."""
        scope = self.claims.get("scope")
        if isinstance(scope, str):
            return frozenset(scope.split())
        if isinstance(scope, list):
            return frozenset(s for s in scope if isinstance(s, str))
        return frozenset()


class Authenticator(Protocol):
    def authenticate(self, authorization: str | None) -> Principal: ...


class AllowAll:
    """No authentication at all - for local development and the demo only."""

    def authenticate(self, authorization: str | None) -> Principal:
        return Principal(subject=None)


def _shown(value: Any) -> str:
    """A header value from the token, safe to echo: short and repr-quoted."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class JWTAuthenticator:
    """Verifies ``Authorization: Bearer <jwt>`` against a key set chosen by ``kid``.

    *keys* is a :class:`~dbapi_server.keyset.KeySet`, or a single key (PEM public key or key
    object; with an ``HS*`` algorithm in *algorithms*, a shared secret) whose ``kid`` is its
    RFC 7638 thumbprint - the ``kid`` :func:`mint_token` writes by default.
    """

    def __init__(self, keys: KeySet | Any, *, algorithms: Iterable[str] = ASYMMETRIC_ALGORITHMS,
                 audience: str = DEFAULT_AUDIENCE, issuer: str = DEFAULT_ISSUER, leeway: float = 10.0,
                 max_lifetime: float = 3600.0, cache_size: int = 4096) -> None:
        self.algorithms = list(algorithms)
        if not self.algorithms or "none" in (a.lower() for a in self.algorithms):
            raise ValueError("JWTAuthenticator needs an allowlist of real signature algorithms.")
        if not audience or not issuer:
            raise ValueError("JWTAuthenticator needs a fixed audience and issuer.")
        if not hasattr(keys, "get") or not hasattr(keys, "has"):
            symmetric = any(a.startswith("HS") for a in self.algorithms) and not _looks_asymmetric(keys)
            keys = StaticKeys.from_key(keys, symmetric=symmetric)
        self.keys: KeySet = keys
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self._cache: OrderedDict[str, tuple[float, Principal, str]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> Principal:
        try:
            return self._authenticate(authorization)
        except Unauthenticated as exc:
            label(token_failure=exc.reason)
            raise
        except KeyServiceUnavailable:
            label(token_failure="key_service")
            raise

    def _authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthenticated("A bearer token is required: send 'Authorization: Bearer <token>'.",
                                  reason="missing")
        token = authorization[7:].strip()
        now = time.time()
        with self._lock:
            hit = self._cache.get(token)
        if hit is not None and hit[0] + self.leeway > now and self._key_still_valid(hit[2]):
            return hit[1]
        principal, expires, kid = self._verify(token)
        with self._lock:
            self._cache[token] = (expires, principal, kid)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal

    def _key_still_valid(self, kid: str) -> bool:
        try:
            return self.keys.has(kid)
        except KeySourceUnavailable:
            return True  # the key set cannot be refreshed right now: keep what was verified

    def _verify(self, token: str) -> tuple[Principal, float, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"The token is not a well-formed JWT: {exc}.", reason="malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:
            raise Unauthenticated(f"The token is signed with algorithm {_shown(alg)}; this server accepts "
                                  f"{', '.join(self.algorithms)} only.", reason="algorithm")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("The token has no 'kid' header naming the key that signed it; mint it "
                                  "with dbapi_server.mint_token or 'dbapi-server mint-token'.", reason="no_kid")
        try:
            key = self.keys.get(kid)
        except UnknownKey:
            raise Unauthenticated(f"The token's key id (kid) {_shown(kid)} is not one of this server's "
                                  "verification keys (a rotated-out key, or another issuer's token).",
                                  reason="unknown_kid") from None
        except KeySourceUnavailable as exc:
            raise KeyServiceUnavailable(f"The token cannot be checked now: {exc}.", retryable=True) from None
        claims = self._decode(token, key)
        return Principal(subject=claims["sub"], claims=claims), float(claims["exp"]), kid

    def _decode(self, token: str, key: Any) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=self.algorithms, audience=self.audience, issuer=self.issuer,
                leeway=self.leeway, options={"require": list(REQUIRED_CLAIMS), "strict_aud": False})
        except jwt.ExpiredSignatureError:
            raise TokenExpired("The token has expired; ask the trusted side for a fresh one.") from None
        except jwt.InvalidTokenError as exc:
            reason = "signature" if isinstance(exc, jwt.InvalidSignatureError) else "claims"
            raise Unauthenticated(f"The token was rejected: {exc}.", reason=reason) from None
        if not claims["sub"] or not isinstance(claims["iat"], int | float):
            raise Unauthenticated("The token was rejected: 'sub' must be a non-empty string and 'iat' a number.",
                                  reason="claims")
        lifetime = float(claims["exp"]) - float(claims["iat"])
        if lifetime > self.max_lifetime:
            raise Unauthenticated(f"The token was rejected: it lives {lifetime:.0f}s, longer than the "
                                  f"{self.max_lifetime:.0f}s this server accepts; mint shorter tokens "
                                  "and refresh them.", reason="lifetime")
        return claims


def _looks_asymmetric(key: Any) -> bool:
    if isinstance(key, str):
        key = key.encode()
    return not isinstance(key, bytes) or b"-----BEGIN" in key



def authenticator_from_env(environ: Mapping[str, str]) -> Authenticator:
    """The authenticator the ``DBAPI_*`` variables describe; ``ValueError`` says what is wrong.

    =========================  ===============================================================
    ``DBAPI_AUTH``             ``jwt`` (default) or ``none`` (development only)
    ``DBAPI_JWT_KEY_FILE``     public keys: PEM files, JWKS files and/or directories of them,
                               several separated by ``os.pathsep``; re-read when they change
    ``DBAPI_JWT_JWKS_URL``     a JWKS document to fetch and cache (``DBAPI_JWT_JWKS_LIFESPAN``
                               seconds, default 300; unknown kid re-fetch at most every
                               ``DBAPI_JWT_JWKS_COOLDOWN`` seconds, default 30)
    ``DBAPI_JWT_SECRET``       shared HS256 secret - only if ``DBAPI_JWT_ALGORITHMS`` names HS256
    ``DBAPI_JWT_ALGORITHMS``   comma-separated allowlist, default ``EdDSA,RS256``
    ``DBAPI_JWT_AUDIENCE``     expected ``aud``, default ``dbsession``
    ``DBAPI_JWT_ISSUER``       expected ``iss``, default ``dbsession-trusted``
    ``DBAPI_JWT_LEEWAY``       clock skew in seconds, default 10
    ``DBAPI_JWT_MAX_LIFETIME`` longest accepted ``exp - iat`` in seconds, default 3600
    =========================  ===============================================================
    """
    if environ.get("DBAPI_AUTH", "jwt").lower() == "none":
        log.warning("DBAPI_AUTH=none: the DB-API accepts every caller; never do this in production")
        return AllowAll()
    algorithms = [a.strip() for a in environ.get("DBAPI_JWT_ALGORITHMS", "EdDSA,RS256").split(",") if a.strip()]
    keys: KeySet
    try:
        if environ.get("DBAPI_JWT_KEY_FILE") or environ.get("DBAPI_JWT_JWKS_URL"):
            keys = key_set_from_config(split_paths(environ.get("DBAPI_JWT_KEY_FILE", "")),
                                       environ.get("DBAPI_JWT_JWKS_URL") or None,
                                       jwks_lifespan=float(environ.get("DBAPI_JWT_JWKS_LIFESPAN", "300")),
                                       jwks_cooldown=float(environ.get("DBAPI_JWT_JWKS_COOLDOWN", "30")))
        elif environ.get("DBAPI_JWT_SECRET"):
            if not any(a.startswith("HS") for a in algorithms):
                raise ValueError("DBAPI_JWT_SECRET is a shared secret: set DBAPI_JWT_ALGORITHMS=HS256 "
                                 "explicitly to accept symmetric tokens (asymmetric keys are safer).")
            keys = StaticKeys.from_key(environ["DBAPI_JWT_SECRET"], symmetric=True)
        else:
            raise ValueError("Set DBAPI_JWT_KEY_FILE (public keys) or DBAPI_JWT_JWKS_URL to verify tokens, "
                             "or DBAPI_AUTH=none for local development.")
        return JWTAuthenticator(keys, algorithms=algorithms,
                                audience=environ.get("DBAPI_JWT_AUDIENCE") or DEFAULT_AUDIENCE,
                                issuer=environ.get("DBAPI_JWT_ISSUER") or DEFAULT_ISSUER,
                                leeway=float(environ.get("DBAPI_JWT_LEEWAY", "10")),
                                max_lifetime=float(environ.get("DBAPI_JWT_MAX_LIFETIME", "3600")))
    except KeyFileError as exc:
        raise ValueError(f"Token verification keys: {exc}") from None
