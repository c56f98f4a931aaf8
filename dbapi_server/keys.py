"""Signing keys for the trusted side: generate an Ed25519 (or RSA) pair, write PEM files."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["KEY_TYPES", "generate_keypair", "write_keypair"]

KEY_TYPES = ("ed25519", "rsa")


def generate_keypair(key_type: str = "ed25519") -> tuple[bytes, bytes]:
    """A fresh key pair as (private PEM, public PEM): Ed25519 (EdDSA) or RSA-3072 (RS256)."""
    key: Ed25519PrivateKey | rsa.RSAPrivateKey
    if key_type == "ed25519":
        key = Ed25519PrivateKey.generate()
    elif key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"Unknown key type {key_type!r}; use one of {', '.join(KEY_TYPES)}.")
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def write_keypair(directory: str | Path, name: str = "dbapi", key_type: str = "ed25519") -> tuple[Path, Path]:
    """Write ``<name>.key`` (mode 0600) and ``<name>.pub`` into *directory*."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private, public = generate_keypair(key_type)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; keys are never overwritten - move it away first.")
    # created 0600 atomically: the private key is never readable by others, not even briefly
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    public_path.write_bytes(public)
    return private_path, public_path
