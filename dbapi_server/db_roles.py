"""The policy compiled into PostgreSQL roles: a second wall, in the database itself.

Each role of the policy becomes a database role holding exactly the table and column privileges
the policy grants (``SELECT`` / ``INSERT`` / ``UPDATE`` on the granted columns, ``DELETE``,
``USAGE`` on the sequences its inserts draw from, ``USAGE`` on the tables' schemas - nothing
else), and every request of that role runs under it (:mod:`dbapi_server.db_wall`). A statement
the application-level check wrongly lets through is then still refused by the database. Row
filters can also become row-level-security policies that read the token's claims from settings
the server puts on the connection (``dbsession.claim_<name>``).

Role names are derived, never taken from the policy as SQL: ``dbs_<namespace>_<role>_<hash>``,
where the namespace defaults to the database's name (roles are cluster-wide: two DB-APIs on two
databases of one cluster must not share them) and the hash, of the exact namespace and role
name, keeps two policy roles that differ only in case or punctuation apart. The roles are
``NOLOGIN``, ``NOINHERIT``, own nothing and are members of nothing; the server's login role is a
member of each, which is what lets it ``SET ROLE``. Creating, checking and removing them against
a database is :mod:`dbapi_server._db_catalog`; ``docs/security.md`` has the whole story.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .auth import Principal
from .policy import Policy, RolePolicy, TableGrant

__all__ = ["CLAIM_SETTING_PREFIX", "ROLE_COMMENT_PREFIX", "DatabaseRole", "DatabaseRoles", "Identity",
           "TablePrivileges", "role_name"]

ROLE_PREFIX = "dbs_"
ROLE_COMMENT_PREFIX = "dbsession wall role"  # every generated role's COMMENT starts with this
POLICY_COMMENT_PREFIX = "dbsession wall policy"  # ... and every row-level-security policy's
OTHERS_POLICY = "dbsession_others"  # lets every role that is not a wall role see all rows
CLAIM_SETTING_PREFIX = "dbsession.claim_"
_SLUG = re.compile(r"[^a-z0-9]+")
_PLAIN_CLAIM = re.compile(r"[a-z_][a-z0-9_]{0,40}")
_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def _slug(text: str, size: int) -> str:
    return _SLUG.sub("_", text.lower()).strip("_")[:size] or "x"


def role_name(namespace: str, policy_role: str | None) -> str:
    """The database role of *policy_role* (``None``: the policy's fallback) in *namespace*."""
    key = f"{namespace}\0{policy_role}" if policy_role is not None else f"{namespace}\0\0fallback"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    shown = _slug(policy_role, 24) if policy_role is not None else "fallback"
    return f"{ROLE_PREFIX}{_slug(namespace, 20)}_{shown}_{digest}"  # at most 63 bytes


def claim_setting(claim: str) -> str:
    """The custom setting that carries *claim* (PostgreSQL wants ``prefix.identifier`` names)."""
    if _PLAIN_CLAIM.fullmatch(claim):
        return CLAIM_SETTING_PREFIX + claim
    return f"{CLAIM_SETTING_PREFIX}x{hashlib.sha256(claim.encode()).hexdigest()[:12]}"


def claim_value(value: Any) -> str:
    """A claim as the setting holds it: a JSON array of strings; ``''`` (no rows) when the token
    lacks it or it is not a string, a number or a list of those."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
        return ""
    return json.dumps([str(v) for v in items])


@dataclass(frozen=True)
class TablePrivileges:
    """One table's privileges for one database role; ``None`` means the whole table."""

    table: sa.Table
    select: frozenset[str] | None
    insert: frozenset[str] | None
    update: frozenset[str] | None
    delete: bool
    row_filter: Mapping[str, str]  # column -> claim

    def has(self, privilege: str) -> bool:
        if privilege == "DELETE":
            return self.delete
        columns: frozenset[str] | None = getattr(self, privilege.lower())
        return columns is None or bool(columns)

    def columns(self, privilege: str) -> frozenset[str] | None:
        """The columns *privilege* is granted on (``None``: table-level)."""
        if privilege == "DELETE":
            return None
        columns: frozenset[str] | None = getattr(self, privilege.lower())
        return columns

    @property
    def inserts(self) -> bool:
        return self.has("INSERT")


@dataclass(frozen=True)
class DatabaseRole:
    """The database role one policy role runs under."""

    policy_role: str | None  # None: the policy's fallback, for callers whose role is not listed
    name: str
    tables: tuple[TablePrivileges, ...]
    claims: tuple[str, ...]  # the claims its row filters read, in setting order

    @property
    def comment(self) -> str:
        shown = "(fallback)" if self.policy_role is None else json.dumps(self.policy_role)
        return f"{ROLE_COMMENT_PREFIX} of policy role {shown}"


@dataclass(frozen=True)
class Identity:
    """What a connection runs as: a database role (``None``: the login role) and claim settings.

    ``deny``: the caller's role has no database role (the wall refuses it); ``sql_text``: the
    caller may send SQL text, after which nothing is known about what the session holds.
    """

    role: str | None
    settings: tuple[tuple[str, str], ...] = ()
    deny: bool = False
    sql_text: bool = False


LOGIN = Identity(None)


@dataclass
class DatabaseRoles:
    """A policy compiled into database roles for one namespace."""

    namespace: str
    roles: Mapping[str | None, DatabaseRole]  # by policy role; None: the fallback
    unwalled: frozenset[str | None]  # policy roles that run as the login role (raw SQL / DDL)
    row_security: bool = True
    all_tables: tuple[sa.Table, ...] = ()  # every table of the metadata (checked for stray privileges)

    @classmethod
    def from_policy(cls, policy: Policy, metadata: sa.MetaData, *, namespace: str,
                    row_security: bool = True) -> DatabaseRoles:
        """Compile *policy* (checked against *metadata*) into the roles of *namespace*.

        A role allowed raw SQL or DDL is not walled: SQL text can ``RESET ROLE``, so such a role
        is trusted with the login role's privileges (as ``docs/security.md`` already says).
        """
        policy.validate(metadata)
        by_name: dict[str | None, RolePolicy] = {name: role for name, role in policy.roles.items()}
        if policy.fallback is not None:
            by_name[None] = policy.fallback
        roles: dict[str | None, DatabaseRole] = {}
        unwalled: set[str | None] = set()
        for name, role in by_name.items():
            if role.raw_sql or role.ddl:
                unwalled.add(name)
                continue
            tables = tuple(_privileges(table, grant) for table, grant in _grants(role, metadata))
            claims = sorted({claim for t in tables for claim in t.row_filter.values()})
            roles[name] = DatabaseRole(name, role_name(namespace, name), tables, tuple(claims))
        everything = tuple(sorted(metadata.tables.values(), key=lambda t: t.fullname))
        return cls(namespace, roles, frozenset(unwalled), row_security, everything)

    def identity(self, principal: Principal) -> Identity:
        """What *principal*'s requests run as."""
        policy_role = principal.role
        listed = policy_role is not None and (policy_role in self.roles or policy_role in self.unwalled)
        key_role = policy_role if listed else None
        if key_role in self.unwalled:
            return Identity(None, sql_text=True)
        role = self.roles.get(key_role)
        if role is None:
            return Identity(None, deny=True)
        if not (self.row_security and role.claims):
            return Identity(role.name)
        settings = tuple((claim_setting(c), claim_value(principal.claims.get(c))) for c in role.claims)
        return Identity(role.name, settings)

    @property
    def warnings(self) -> list[str]:
        """Grants the database will read more strictly than the policy does."""
        found = []
        for role in self.roles.values():
            for privileges in role.tables:
                key = {c.name for c in privileges.table.primary_key.columns}
                if privileges.inserts and privileges.select is not None and not key <= privileges.select:
                    shown = "(fallback)" if role.policy_role is None else repr(role.policy_role)
                    found.append(
                        f"policy role {shown}: {privileges.table.fullname} is insertable but its primary key is "
                        "not readable; PostgreSQL checks SELECT on what INSERT ... RETURNING returns, so the "
                        f"database refuses ORM inserts there - grant read on {', '.join(sorted(key - privileges.select))}.")
        return found

    @property
    def filtered_tables(self) -> frozenset[sa.Table]:
        """The tables some role's row filter restricts (row-level security on them)."""
        if not self.row_security:
            return frozenset()
        return frozenset(t.table for r in self.roles.values() for t in r.tables if t.row_filter)

    def row_policy_sql(self, privileges: TablePrivileges) -> str:
        """The ``USING`` / ``WITH CHECK`` expression of a role's row-level-security policy."""
        if not privileges.row_filter:
            return "true"
        preparer = _DIALECT.identifier_preparer
        parts = []
        for column_name, claim in sorted(privileges.row_filter.items()):
            column = next(c for c in privileges.table.c if c.name == column_name)
            sql_type = column.type.compile(dialect=_DIALECT)
            setting = claim_setting(claim)
            parts.append(
                f"{preparer.quote(column.name)} = ANY (ARRAY(SELECT pg_catalog.jsonb_array_elements_text("
                f"NULLIF(pg_catalog.current_setting('{setting}', true), '')::jsonb))::{sql_type}[])")
        return " AND ".join(parts)


def others_policy_sql() -> str:
    """True for every role that is not a wall role: with row-level security switched on for the
    wall, the application's other non-owner roles keep seeing every row. A wall role is known by
    its comment; evaluated once per query (an InitPlan), about 0.02 ms."""
    return ("(SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_shdescription d WHERE d.objoid = "
            "pg_catalog.quote_ident(current_user)::regrole AND d.classoid = 'pg_catalog.pg_authid'::regclass "
            f"AND d.description LIKE '{ROLE_COMMENT_PREFIX}%'))")


def _grants(role: RolePolicy, metadata: sa.MetaData) -> list[tuple[sa.Table, TableGrant]]:
    found = []
    for table in sorted(metadata.tables.values(), key=lambda t: t.fullname):
        grant = role.grant(table.fullname)
        if grant is not None:
            found.append((table, grant))
    return found


def _privileges(table: sa.Table, grant: TableGrant) -> TablePrivileges:
    """A table grant as database privileges.

    The row filter's columns are readable too: the server's own filter (the derived table and
    the WHERE of an UPDATE / DELETE) names them, and PostgreSQL checks a WHERE's columns.
    """
    every = frozenset(c.name for c in table.c)

    def columns(names: frozenset[str] | None) -> frozenset[str] | None:
        return None if names is None or names >= every else names

    read = grant.read
    if read is not None and grant.row_filter:
        read = read | frozenset(grant.row_filter)
    return TablePrivileges(table, columns(read), columns(grant.insert), columns(grant.update), grant.delete,
                           dict(grant.row_filter))
