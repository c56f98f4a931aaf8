"""Verification keys chosen by a token's ``kid``: PEM files, JWKS documents, a JWKS URL.

The DB-API holds public keys only. Each key is bound to exactly one algorithm when it is loaded
(an Ed25519 key to ``EdDSA``, an RSA key to ``RS256`` unless its JWK names another ``alg``), and
PyJWT refuses a token whose header names any other algorithm for that key - so a token "signed"
with HS256 using a public key as the secret can never verify (key confusion).

Sources, all behind one small interface (``get(kid)``, ``has(kid)``):

=================  ========================================================================
``StaticKeys``     keys given in code (one PEM key, a JWKS dict); never change
``KeyFiles``       PEM public keys and JWKS documents in files and/or directories; re-read
                   when they change (checked at most every ``check_interval`` seconds)
``RemoteJWKS``     a JWKS URL, fetched and cached by PyJWT's ``PyJWKClient``; an unknown
                   ``kid`` forces one re-fetch, at most every ``cooldown`` seconds
``CombinedKeys``   several of the above; the first that knows the ``kid`` wins
=================  ========================================================================

A PEM key's ``kid`` is its RFC 7638 JWK thumbprint (``dbapi-server keygen`` prints it and
``mint_token`` uses it by default); a JWKS document carries its own ``kid`` values (a JWK without
one gets its thumbprint).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from jwt import PyJWK
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

__all__ = [
    "CombinedKeys",
    "KeyFileError",
    "KeyFiles",
    "KeySet",
    "KeySourceUnavailable",
    "RemoteJWKS",
    "StaticKeys",
    "UnknownKey",
    "jwks_document",
    "public_jwk",
    "thumbprint",
]

log = logging.getLogger("dbapi_server.keys")

#: Files a key directory is scanned for; anything else (private ``*.key`` files, notes) is ignored.
KEY_FILE_SUFFIXES = (".pub", ".pem", ".json", ".jwks")

# RFC 7638 section 3.2: the members of the thumbprint, per key type
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x"),
                       "EC": ("crv", "kty", "x", "y"), "oct": ("k", "kty")}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")
_PRIVATE_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                      ed448.Ed448PrivateKey)


class KeyFileError(ValueError):
    """A key file or JWKS document cannot be used for verification."""


class UnknownKey(LookupError):
    """No verification key has the token's ``kid``."""


class KeySourceUnavailable(RuntimeError):
    """A remote key source (JWKS URL) could not be reached; the token cannot be checked now."""


class KeySet(Protocol):
    def get(self, kid: str) -> PyJWK:
        """The key for *kid*; raises :class:`UnknownKey`."""

    def has(self, kid: str) -> bool:
        """Whether *kid* is still a verification key (used to drop cached tokens of removed keys)."""


# -- JWKs -----------------------------------------------------------------------------------------
def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of *jwk*, base64url without padding."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise KeyFileError(f"Cannot take the thumbprint of a key of type {jwk.get('kty')!r}.")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _public_key_object(key: Any) -> Any:
    """A cryptography public key from a PEM (public or private) or a key object."""
    if isinstance(key, str):
        key = key.encode()
    if isinstance(key, bytes):
        if b"-----BEGIN PUBLIC KEY-----" in key:
            return load_pem_public_key(key)
        if b"PRIVATE KEY-----" in key:
            return load_pem_private_key(key, password=None).public_key()
        raise KeyFileError("Not a PEM key: expected '-----BEGIN PUBLIC KEY-----'.")
    if isinstance(key, (ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey)):
        return key.public_key()
    return key


def public_jwk(key: Any, *, kid: str | None = None, alg: str | None = None) -> dict[str, Any]:
    """The public JWK of *key* (PEM or key object; a private key gives its public half).

    ``kid`` defaults to the RFC 7638 thumbprint; ``alg`` to ``EdDSA`` / ``RS256`` by key type.
    """
    public = _public_key_object(key)
    jwk: dict[str, Any]
    if isinstance(public, ed25519.Ed25519PublicKey):
        jwk, default_alg = OKPAlgorithm.to_jwk(public, as_dict=True), "EdDSA"
    elif isinstance(public, rsa.RSAPublicKey):
        jwk, default_alg = RSAAlgorithm.to_jwk(public, as_dict=True), "RS256"
    else:
        raise KeyFileError(f"Unsupported key type {type(public).__name__}: use Ed25519 (EdDSA) or RSA (RS256).")
    jwk.pop("kid", None)
    jwk.pop("alg", None)
    return {**jwk, "kid": kid or thumbprint(jwk), "alg": alg or default_alg, "use": "sig"}


def jwks_document(keys: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A JWKS document (``{"keys": [...]}``) of public JWKs."""
    return {"keys": [dict(k) for k in keys]}


def _verification_key(jwk: Mapping[str, Any], source: str, *, allow_symmetric: bool = False) -> PyJWK:
    """A PyJWK bound to one algorithm; private or secret keys are refused."""
    if jwk.get("kty") == "oct" and not allow_symmetric:
        raise KeyFileError(f"{source}: a shared-secret key (kty 'oct') is not a public key; the DB-API "
                           "verifies asymmetric signatures only unless HS256 is configured explicitly.")
    if jwk.get("kty") != "oct" and any(m in jwk for m in _PRIVATE_MEMBERS):
        raise KeyFileError(f"{source}: holds a PRIVATE key; give the DB-API the public key only "
                           "(the private key stays on the trusted side).")
    if jwk.get("use") not in (None, "sig"):
        raise KeyFileError(f"{source}: key {jwk.get('kid')!r} is for use {jwk.get('use')!r}, not 'sig'.")
    data = dict(jwk)
    data.setdefault("kid", thumbprint(data))
    try:
        return PyJWK(data)
    except jwt.PyJWTError as exc:
        raise KeyFileError(f"{source}: key {data.get('kid')!r} is unusable: {exc}") from None


def _keys_from_document(document: Any, source: str) -> dict[str, PyJWK]:
    if not isinstance(document, dict):
        raise KeyFileError(f"{source}: a JWKS document must be a JSON object.")
    entries = document["keys"] if "keys" in document else [document]  # a JWKS or one JWK
    if not isinstance(entries, list):
        raise KeyFileError(f"{source}: 'keys' must be a list of JWKs.")
    keys: dict[str, PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise KeyFileError(f"{source}: every entry of 'keys' must be a JWK object.")
        key = _verification_key(entry, source)
        assert key.key_id is not None
        if key.key_id in keys:
            raise KeyFileError(f"{source}: kid {key.key_id!r} appears twice.")
        keys[key.key_id] = key
    return keys


def load_key_file(path: str | Path) -> dict[str, PyJWK]:
    """The verification keys in one file: a PEM public key, a JWK or a JWKS document."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"Cannot read the key file {path}: {exc.strerror}.") from None
    if data.lstrip().startswith(b"{"):
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise KeyFileError(f"{path}: not valid JSON ({exc}).") from None
        return _keys_from_document(document, str(path))
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(f"{path} holds a PRIVATE key; give the DB-API the public key only "
                           "(the private key stays on the trusted side).")
    try:
        jwk = public_jwk(data)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    return {jwk["kid"]: _verification_key(jwk, str(path))}


# -- sources --------------------------------------------------------------------------------------
class StaticKeys:
    """A fixed set of verification keys."""

    def __init__(self, keys: Mapping[str, PyJWK]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_key(cls, key: Any, *, kid: str | None = None, symmetric: bool = False) -> StaticKeys:
        """One key: a PEM public key / key object, or (``symmetric``) an HS shared secret."""
        if symmetric:
            secret = key.encode() if isinstance(key, str) else bytes(key)
            jwk = {"kty": "oct", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode(), "alg": "HS256"}
            jwk["kid"] = kid or thumbprint(jwk)
            return cls({jwk["kid"]: _verification_key(jwk, "shared secret", allow_symmetric=True)})
        if isinstance(key, (bytes, str)) and b"PRIVATE KEY-----" in (key.encode() if isinstance(key, str) else key):
            raise KeyFileError("JWTAuthenticator was given a PRIVATE key; it verifies with the public key.")
        jwk = public_jwk(key, kid=kid)
        return cls({jwk["kid"]: _verification_key(jwk, "key")})

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any]) -> StaticKeys:
        return cls(_keys_from_document(dict(document), "JWKS document"))

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    def get(self, kid: str) -> PyJWK:
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKey(kid) from None

    def has(self, kid: str) -> bool:
        return kid in self._keys


class KeyFiles:
    """PEM public keys and JWKS documents in files and directories, re-read when they change.

    Rotation: drop the new public key into the directory (or add it to the JWKS file), start
    minting with it, and remove the old one once its tokens have expired. A file that fails to
    load at startup is an error; later, a broken file is logged and skipped while the others
    stay in force (a half-copied file must not lock every worker out).
    """

    def __init__(self, paths: Sequence[str | Path], *, check_interval: float = 1.0) -> None:
        if not paths:
            raise KeyFileError("No key files given.")
        self.paths = [Path(p) for p in paths]
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._signature = self._scan_signature()
        self._keys = self._load(strict=True)

    @property
    def kids(self) -> list[str]:
        self._refresh()
        return sorted(self._keys)

    def get(self, kid: str) -> PyJWK:
        self._refresh()
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKey(kid) from None

    def has(self, kid: str) -> bool:
        self._refresh()
        return kid in self._keys

    def _files(self) -> list[Path]:
        files: list[Path] = []
        for path in self.paths:
            if path.is_dir():
                files.extend(sorted(p for p in path.iterdir() if p.suffix in KEY_FILE_SUFFIXES
                                    and not p.name.startswith(".") and p.is_file()))
            else:
                files.append(path)
        return files

    def _scan_signature(self) -> tuple[Any, ...]:
        entries: list[Any] = []
        for path in [*self.paths, *self._files()]:
            try:
                st = path.stat()
            except OSError:
                entries.append((str(path), None))
                continue
            entries.append((str(path), st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(entries)

    def _load(self, *, strict: bool) -> dict[str, PyJWK]:
        keys: dict[str, PyJWK] = {}
        for path in self._files():
            try:
                found = load_key_file(path)
            except KeyFileError as exc:
                if strict:
                    raise
                log.error("skipping key file: %s", exc)
                continue
            for kid, key in found.items():
                if kid in keys and strict:
                    raise KeyFileError(f"kid {kid!r} is defined twice (again in {path}).")
                keys.setdefault(kid, key)
        if strict and not keys:
            raise KeyFileError(f"No verification keys found in {', '.join(map(str, self.paths))}.")
        return keys

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_interval:
            return
        with self._lock:
            if now - self._checked < self.check_interval:
                return
            self._checked = now
            signature = self._scan_signature()
            if signature == self._signature:
                return
            self._signature = signature
            keys = self._load(strict=False)
            added, removed = set(keys) - set(self._keys), set(self._keys) - set(keys)
            self._keys = keys
            log.info("verification keys reloaded: added %s, removed %s", sorted(added), sorted(removed))


class RemoteJWKS:
    """A JWKS URL, fetched and cached with PyJWT's ``PyJWKClient``.

    The document is cached for ``lifespan`` seconds: a removed key stops verifying within that
    time. A token with an unknown ``kid`` forces one re-fetch, at most once per ``cooldown``
    seconds, so forged ``kid`` values cannot make the server hammer the key service.
    """

    def __init__(self, url: str, *, lifespan: float = 300.0, cooldown: float = 30.0, timeout: float = 5.0) -> None:
        self.url = url
        try:
            self._client = jwt.PyJWKClient(url, lifespan=lifespan, cooldown_duration=cooldown, timeout=timeout)
        except jwt.PyJWKClientError as exc:
            raise KeyFileError(f"JWKS URL {url}: {exc}") from None

    def get(self, kid: str) -> PyJWK:
        try:
            key = self._client.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as exc:
            raise KeySourceUnavailable(f"The JWKS at {self.url} could not be fetched: {exc}") from None
        except (jwt.PyJWKClientError, jwt.PyJWKSetError):
            raise UnknownKey(kid) from None
        return self._checked(key)

    def has(self, kid: str) -> bool:
        try:
            jwk_set = self._client.get_jwk_set()
        except jwt.PyJWKClientConnectionError as exc:
            raise KeySourceUnavailable(f"The JWKS at {self.url} could not be fetched: {exc}") from None
        except (jwt.PyJWKClientError, jwt.PyJWKSetError):
            return False
        return any(key.key_id == kid for key in jwk_set.keys)

    def _checked(self, key: PyJWK) -> PyJWK:
        if key.key_type == "oct" or isinstance(key.key, _PRIVATE_KEY_TYPES):
            raise UnknownKey(str(key.key_id))  # a secret or private key is never a verification key
        return key


class CombinedKeys:
    """Several sources; a ``kid`` is looked up in each, in order."""

    def __init__(self, sources: Sequence[KeySet]) -> None:
        self.sources = list(sources)

    def get(self, kid: str) -> PyJWK:
        for source in self.sources:
            try:
                return source.get(kid)
            except UnknownKey:
                continue
        raise UnknownKey(kid)

    def has(self, kid: str) -> bool:
        return any(source.has(kid) for source in self.sources)


def key_set_from_config(key_files: Sequence[str | Path] = (), jwks_url: str | None = None, *,
                        check_interval: float = 1.0, jwks_lifespan: float = 300.0,
                        jwks_cooldown: float = 30.0) -> KeySet:
    """Key files and/or a JWKS URL as one key set (what ``DBAPI_JWT_KEY_FILE``/``_JWKS_URL`` name)."""
    sources: list[KeySet] = []
    if key_files:
        sources.append(KeyFiles(key_files, check_interval=check_interval))
    if jwks_url:
        sources.append(RemoteJWKS(jwks_url, lifespan=jwks_lifespan, cooldown=jwks_cooldown))
    if not sources:
        raise KeyFileError("No verification keys configured: give key files or a JWKS URL.")
    return sources[0] if len(sources) == 1 else CombinedKeys(sources)


def split_paths(value: str) -> list[str]:
    """``DBAPI_JWT_KEY_FILE`` may name several files/directories separated by ``os.pathsep``."""
    return [p for p in value.split(os.pathsep) if p.strip()]
