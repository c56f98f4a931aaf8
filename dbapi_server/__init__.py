"""The DB-API: a Flask application that executes isolated clients' statements on the real database.

``create_app()`` builds it; ``flask --app dbapi_server run`` and the ``dbapi-server serve``
command (granian; ``--server waitress``) serve it. See ``docs/architecture.md``.
"""

from __future__ import annotations

from ._db_catalog import DatabaseRolesError
from .app import ConfigError, create_app, load_metadata
from .auth import AllowAll, JWTAuthenticator, Principal
from .db_roles import DatabaseRoles
from .errors import APIError
from .keyset import KeyFiles, RemoteJWKS, StaticKeys
from .minting import TokenFileRefresher, mint_token, write_token_file
from .policy import WORK_LIMITS, DefaultPolicy, Limits, Policy, PolicyError, RolePolicy, TableGrant
from .refusals import LimitExceeded, PolicyViolation
from .transactions import TransactionManager

__all__ = [
    "WORK_LIMITS",
    "APIError",
    "AllowAll",
    "ConfigError",
    "DatabaseRoles",
    "DatabaseRolesError",
    "DefaultPolicy",
    "JWTAuthenticator",
    "KeyFiles",
    "LimitExceeded",
    "Limits",
    "Policy",
    "PolicyError",
    "PolicyViolation",
    "Principal",
    "RemoteJWKS",
    "RolePolicy",
    "StaticKeys",
    "TableGrant",
    "TokenFileRefresher",
    "TransactionManager",
    "create_app",
    "load_metadata",
    "mint_token",
    "write_token_file",
]
