"""Compiled database roles against a live PostgreSQL catalog: plan, apply, verify, drop.

:func:`plan` reads what the database holds - the namespace's roles, their attributes, memberships
and every privilege (``aclexplode`` over tables, columns, sequences and schemas; ``pg_shdepend``
for anything else), the row-level-security policies - and answers the SQL that makes it match
the compiled policy, plus the problems SQL from here cannot fix (a privilege granted to
``PUBLIC``, a role the wall did not create with a wall role's name, a privilege granted by
another user). :func:`apply` runs that SQL in one transaction (PostgreSQL's GRANT, CREATE ROLE
and CREATE POLICY are transactional), plans again and commits only when nothing is left to do:
re-running converges, including revoking what the policy no longer grants and dropping roles
the policy no longer has. :func:`verify` is :func:`plan` read-only, plus the *effective*
privileges (``has_column_privilege``: grants to ``PUBLIC`` count) compared with the policy.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .db_roles import (
    OTHERS_POLICY,
    POLICY_COMMENT_PREFIX,
    ROLE_COMMENT_PREFIX,
    DatabaseRole,
    DatabaseRoles,
    others_policy_sql,
)

__all__ = ["DatabaseRolesError", "RolesPlan", "apply", "drop", "plan", "verify"]

_ATTRIBUTES = ("NOLOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "NOINHERIT", "NOREPLICATION",
               "NOBYPASSRLS")
_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
_LOCK = 0x6462735F77616C6C  # pg_advisory_xact_lock key: "dbs_wall"
_ALL_ROWS = " (all rows)"  # ends the comment of a policy that filters nothing


class DatabaseRolesError(RuntimeError):
    """The database's roles do not match the policy and cannot be made to from here."""


@dataclass
class RolesPlan:
    statements: list[str] = field(default_factory=list)  # SQL converging the database on the policy
    problems: list[str] = field(default_factory=list)  # what that SQL cannot fix


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _rows(conn: sa.Connection, sql: str, **params: Any) -> list[Any]:
    return list(conn.execute(sa.text(sql), params))


def _quote(conn: sa.Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def plan(conn: sa.Connection, roles: DatabaseRoles, *, member: str | None = None) -> RolesPlan:
    """What to run so the database holds exactly *roles* (and nothing more for the namespace)."""
    out = RolesPlan()
    member = member or conn.execute(sa.text("SELECT session_user")).scalar_one()
    existing = _namespace_roles(conn, roles)
    wanted = {r.name: r for r in roles.roles.values()}
    for name, comment in existing.items():
        if name in wanted and comment != roles_comment(roles, wanted[name]):
            out.problems.append(f"A role named {name} exists but was not created for this policy role and "
                                "namespace; drop or rename it.")
    tables = _resolve_tables(conn, roles, out)
    for role in wanted.values():
        _plan_role(conn, roles, role, role.name in existing, member, tables, out)
    rls_drops = _plan_row_security(conn, roles, tables, set(existing) | set(wanted), out)
    for name in sorted(set(existing) - set(wanted)):  # the policy no longer has this role
        _plan_privileges(conn, name, {}, out)
        out.statements.append(f"DROP ROLE {_quote(conn, name)}")
    out.statements[:0] = rls_drops
    return out


def roles_comment(roles: DatabaseRoles, role: DatabaseRole) -> str:
    return f"{role.comment} in namespace {roles.namespace!r}"


def _namespace_roles(conn: sa.Connection, roles: DatabaseRoles) -> dict[str, str]:
    """Roles of this namespace (by their comment) and roles holding a wanted name: name -> comment."""
    suffix = f" in namespace {roles.namespace!r}"
    names = [r.name for r in roles.roles.values()]
    found = _rows(conn, "SELECT rolname, coalesce(shobj_description(oid, 'pg_authid'), '') FROM pg_roles "
                        "WHERE rolname = ANY(:names) OR shobj_description(oid, 'pg_authid') LIKE :prefix",
                  names=names, prefix=ROLE_COMMENT_PREFIX + "%")
    return {name: comment for name, comment in found if name in names or comment.endswith(suffix)}


@dataclass
class _Table:
    oid: int
    sql: str  # the name as SQL (regclass text: quoted, schema-qualified where needed)
    schema_oid: int
    schema_sql: str
    columns: dict[str, str]  # column name -> quoted
    sequences: list[tuple[int, str]]  # the sequences its column defaults draw from


def _resolve_tables(conn: sa.Connection, roles: DatabaseRoles, out: RolesPlan) -> dict[sa.Table, _Table]:
    preparer = conn.dialect.identifier_preparer
    wanted = set(roles.all_tables) | {t.table for r in roles.roles.values() for t in r.tables}
    names = {preparer.format_table(t): t for t in wanted}
    found: dict[sa.Table, _Table] = {}
    for name, oid, sql, nsp, nsp_sql in _rows(
            conn, "SELECT n, c.oid, c.oid::regclass::text, c.relnamespace, quote_ident(s.nspname) "
                  "FROM unnest(CAST(:names AS text[])) AS n LEFT JOIN pg_class c ON c.oid = to_regclass(n) "
                  "LEFT JOIN pg_namespace s ON s.oid = c.relnamespace", names=sorted(names)):
        if oid is None:
            out.problems.append(f"The table {name} of the server's metadata is not in the database.")
            continue
        found[names[name]] = _Table(oid, sql, nsp, nsp_sql, {}, [])
    by_oid = {t.oid: t for t in found.values()}
    for relid, attname, quoted in _rows(
            conn, "SELECT attrelid, attname, quote_ident(attname) FROM pg_attribute WHERE attrelid = "
                  "ANY(CAST(:oids AS oid[])) AND attnum > 0 AND NOT attisdropped", oids=list(by_oid)):
        by_oid[relid].columns[attname] = quoted
    for relid, seq, seq_sql in _rows(
            conn, "SELECT DISTINCT d.adrelid, s.oid, s.oid::regclass::text FROM pg_attrdef d JOIN pg_depend dep "
                  "ON dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid AND dep.refclassid = "
                  "'pg_class'::regclass JOIN pg_class s ON s.oid = dep.refobjid AND s.relkind = 'S' "
                  "WHERE d.adrelid = ANY(CAST(:oids AS oid[]))", oids=list(by_oid)):
        by_oid[relid].sequences.append((seq, seq_sql))
    for table, info in found.items():  # SQLAlchemy Sequence() defaults are rendered into the INSERT
        for column in table.c:
            seq_default = column.default
            if isinstance(seq_default, sa.Sequence):
                seq_name = preparer.format_sequence(seq_default)
                seq_oid = conn.execute(sa.text("SELECT to_regclass(:n)::oid"), {"n": seq_name}).scalar()
                if seq_oid is not None:
                    info.sequences.append((seq_oid, seq_name))
        for column_name in sorted({c.name for c in table.c} - set(info.columns)):
            out.problems.append(f"The column {column_name} of {info.sql} is not in the database.")
    return found


# privilege key: (kind, oid, column or None, privilege); kind: "rel" (table, view), "seq", "nsp"
_Key = tuple[str, int, str | None, str]


def _wanted_privileges(role: DatabaseRole, tables: dict[sa.Table, _Table]) -> dict[_Key, str]:
    """Each privilege the role must hold -> the object as SQL."""
    wanted: dict[_Key, str] = {}
    for privileges in role.tables:
        info = tables.get(privileges.table)
        if info is None:
            continue
        for privilege in _PRIVILEGES:
            if not privileges.has(privilege):
                continue
            columns = privileges.columns(privilege)
            if columns is None:
                wanted["rel", info.oid, None, privilege] = info.sql
            else:
                for name in columns:
                    if name in info.columns:
                        wanted["rel", info.oid, name, privilege] = f"{info.sql}|{info.columns[name]}"
        if privileges.inserts:
            for seq_oid, seq_sql in info.sequences:
                wanted["seq", seq_oid, None, "USAGE"] = seq_sql
        wanted["nsp", info.schema_oid, None, "USAGE"] = info.schema_sql
    return wanted


def _held_privileges(conn: sa.Connection, role: str, out: RolesPlan) -> dict[_Key, str]:
    held: dict[_Key, str] = {}
    for oid, sql, kind, privilege, grantable in _rows(
            conn, "SELECT c.oid, c.oid::regclass::text, c.relkind, a.privilege_type, a.is_grantable FROM pg_class c "
                  "CROSS JOIN LATERAL aclexplode(c.relacl) a WHERE a.grantee = to_regrole(:r)", r=role):
        held["seq" if kind == "S" else "rel", oid, None, privilege] = sql
        if grantable:
            out.statements.append(f"REVOKE GRANT OPTION FOR {privilege} ON {sql} FROM {_quote(conn, role)}")
    for oid, sql, column, quoted, privilege in _rows(
            conn, "SELECT att.attrelid, att.attrelid::regclass::text, att.attname, quote_ident(att.attname), "
                  "a.privilege_type FROM pg_attribute att CROSS JOIN LATERAL aclexplode(att.attacl) a "
                  "WHERE a.grantee = to_regrole(:r) AND NOT att.attisdropped", r=role):
        held["rel", oid, column, privilege] = f"{sql}|{quoted}"
    for oid, sql, privilege in _rows(
            conn, "SELECT n.oid, quote_ident(n.nspname), a.privilege_type FROM pg_namespace n "
                  "CROSS JOIN LATERAL aclexplode(n.nspacl) a WHERE a.grantee = to_regrole(:r)", r=role):
        held["nsp", oid, None, privilege] = sql
    for what, deptype, here in _rows(
            conn, "SELECT classid::regclass::text || ' ' || objid, deptype, dbid IN (0, (SELECT oid FROM "
                  "pg_database WHERE datname = current_database())) FROM pg_shdepend WHERE refobjid = "
                  "to_regrole(:r) AND refclassid = 'pg_authid'::regclass AND (deptype = 'o' OR deptype = 'a' AND "
                  "(classid NOT IN ('pg_class'::regclass, 'pg_namespace'::regclass) OR NOT dbid IN (0, (SELECT "
                  "oid FROM pg_database WHERE datname = current_database()))))", r=role):
        reason = "owns" if deptype == "o" else "holds a privilege on"
        where = "" if here else " in another database"
        out.problems.append(f"The role {role} {reason} {what}{where}; a wall role may not (remove it by hand).")
    return held


def _grant_sql(conn: sa.Connection, verb: str, privilege: str, kind: str, objects: Iterable[str], role: str) -> list[str]:
    """GRANT / REVOKE statements, one per object, columns of one table grouped."""
    by_object: dict[str, list[str]] = defaultdict(list)
    for obj in objects:
        table, _, column = obj.partition("|")
        by_object[table].append(column)
    target = {"rel": "TABLE", "seq": "SEQUENCE", "nsp": "SCHEMA"}[kind]
    direction = "TO" if verb == "GRANT" else "FROM"
    statements = []
    for obj, columns in sorted(by_object.items()):
        listed = f" ({', '.join(sorted(c for c in columns if c))})" if any(columns) else ""
        statements.append(f"{verb} {privilege}{listed} ON {target} {obj} {direction} {_quote(conn, role)}")
    return statements


def _plan_privileges(conn: sa.Connection, role: str, wanted: dict[_Key, str], out: RolesPlan) -> None:
    held = _held_privileges(conn, role, out)
    extra = {k: v for k, v in held.items() if k not in wanted}
    # revoking a table-level privilege also revokes it on every column: grant the wanted columns again
    regrant = {(k[1], k[3]) for k in extra if k[0] == "rel" and k[2] is None}
    missing = {k: v for k, v in wanted.items() if k not in held or (k[0] == "rel" and (k[1], k[3]) in regrant)}
    for verb, found in (("REVOKE", extra), ("GRANT", missing)):
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for (kind, _, _, privilege), obj in found.items():
            groups[kind, privilege].append(obj)
        for (kind, privilege), objects in sorted(groups.items()):
            out.statements.extend(_grant_sql(conn, verb, privilege, kind, objects, role))
    for (granted,) in _rows(conn, "SELECT roleid::regrole::text FROM pg_auth_members WHERE member = to_regrole(:r)",
                            r=role):
        out.statements.append(f"REVOKE {granted} FROM {_quote(conn, role)}")


def _plan_role(conn: sa.Connection, roles: DatabaseRoles, role: DatabaseRole, exists: bool, member: str,
               tables: dict[sa.Table, _Table], out: RolesPlan) -> None:
    name = _quote(conn, role.name)
    if not exists:
        out.statements.append(f"CREATE ROLE {name} {' '.join(_ATTRIBUTES)}")
        out.statements.append(f"COMMENT ON ROLE {name} IS {_literal(roles_comment(roles, role))}")
    elif conn.execute(sa.text(
            "SELECT rolcanlogin OR rolsuper OR rolcreatedb OR rolcreaterole OR rolinherit OR rolreplication OR "
            "rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": role.name}).scalar_one():
        out.statements.append(f"ALTER ROLE {name} {' '.join(_ATTRIBUTES)}")
    if not conn.execute(sa.text("SELECT EXISTS (SELECT FROM pg_auth_members WHERE roleid = to_regrole(:r) AND "
                                "member = to_regrole(:m))"), {"r": role.name, "m": member}).scalar_one():
        out.statements.append(f"GRANT {name} TO {_quote(conn, member)}")
    _plan_privileges(conn, role.name, _wanted_privileges(role, tables), out)


def _policy_hash(definition: str) -> str:
    return hashlib.sha256(definition.encode()).hexdigest()[:16]


def _plan_row_security(conn: sa.Connection, roles: DatabaseRoles, tables: dict[sa.Table, _Table],
                       namespace_roles: set[str], out: RolesPlan) -> list[str]:
    """Row-level security: enable it where a row filter needs it, one policy per (role, granted
    table), and the pass-through policy for every other role. Returns the drops, which run first."""
    filtered = {tables[t].oid for t in roles.filtered_tables if t in tables}
    by_oid = {info.oid: info for info in tables.values()}
    enabled = {oid for oid, on in _rows(conn, "SELECT oid, relrowsecurity FROM pg_class WHERE oid = "
                                              "ANY(CAST(:oids AS oid[]))", oids=list(by_oid)) if on}
    policies = _rows(conn, "SELECT p.polrelid, p.polrelid::regclass::text, p.polname, p.polpermissive, "
                           "p.polroles::regrole[]::text[], coalesce(obj_description(p.oid, 'pg_policy'), '') "
                           "FROM pg_policy p")
    ours = {(relid, name): comment for relid, _, name, _, _, comment in policies
            if name in namespace_roles and comment.startswith(POLICY_COMMENT_PREFIX)}
    table_sql = {relid: sql for relid, sql, *_ in policies} | {oid: info.sql for oid, info in by_oid.items()}
    switched = {relid for relid, _, name, *_ in policies if name == OTHERS_POLICY}  # RLS we turned on
    check = others_policy_sql()
    others_comment = f"{POLICY_COMMENT_PREFIX} {_policy_hash(check)} (other roles)"
    stale_others = {relid for relid, _, name, _, _, comment in policies
                    if name == OTHERS_POLICY and comment != others_comment}
    # policies that need row security: anyone else's, and other namespaces' row filters (theirs
    # for all rows are as inert as ours)
    foreign = {relid for relid, _, name, _, _, comment in policies if name != OTHERS_POLICY
               and (relid, name) not in ours and not comment.endswith(_ALL_ROWS)}
    # RLS stays on where a filter needs it, where someone else turned it on, or where other policies rely on it
    keep = filtered | (enabled - switched) | (switched & foreign)
    drops: list[str] = []
    wanted: dict[tuple[int, str], str] = {}
    for oid in sorted(filtered - enabled):
        out.statements.append(f"ALTER TABLE {table_sql[oid]} ENABLE ROW LEVEL SECURITY")
    for oid in sorted((filtered - switched - enabled) | (stale_others & keep)):
        if oid in stale_others:
            drops.append(f"DROP POLICY {OTHERS_POLICY} ON {table_sql[oid]}")
        out.statements.append(f"CREATE POLICY {OTHERS_POLICY} ON {table_sql[oid]} AS PERMISSIVE FOR ALL TO PUBLIC "
                              f"USING ({check}) WITH CHECK ({check})")
        out.statements.append(f"COMMENT ON POLICY {OTHERS_POLICY} ON {table_sql[oid]} IS {_literal(others_comment)}")
    for role in roles.roles.values():
        for privileges in role.tables:
            info = tables.get(privileges.table)
            if info is None:
                continue
            # every granted table gets one, "true" without a filter: inert while the table has no
            # row-level security, and the role keeps its rows when someone (another namespace, the
            # DBA) switches it on - a role without a policy there would see nothing
            expression = roles.row_policy_sql(privileges) if info.oid in filtered else "true"
            definition = (f"CREATE POLICY {_quote(conn, role.name)} ON {info.sql} AS PERMISSIVE FOR ALL TO "
                          f"{_quote(conn, role.name)} USING ({expression}) WITH CHECK ({expression})")
            marker = _ALL_ROWS if expression == "true" else " (row filter)"
            comment = f"{POLICY_COMMENT_PREFIX} {_policy_hash(definition)}{marker}"
            wanted[info.oid, role.name] = comment
            if ours.get((info.oid, role.name)) != comment:
                out.statements.append(definition)
                out.statements.append(f"COMMENT ON POLICY {_quote(conn, role.name)} ON {info.sql} IS {_literal(comment)}")
    for (relid, name), comment in sorted(ours.items()):
        if wanted.get((relid, name)) != comment:
            drops.append(f"DROP POLICY {_quote(conn, name)} ON {table_sql[relid]}")
    for relid, _, name, permissive, members, _ in policies:
        if (permissive and relid in filtered and name != OTHERS_POLICY and (relid, name) not in ours
                and ("-" in members or set(members) & namespace_roles)):
            out.problems.append(f"The permissive policy {name} on {table_sql[relid]} also applies to the wall's "
                                "roles and widens the rows they see; make it restrictive or limit its roles.")
    for relid in sorted(switched - keep):  # nothing needs the row security we turned on: undo it
        drops.append(f"DROP POLICY {OTHERS_POLICY} ON {table_sql[relid]}")
        drops.append(f"ALTER TABLE {table_sql[relid]} DISABLE ROW LEVEL SECURITY")
    return drops


def _effective_problems(conn: sa.Connection, roles: DatabaseRoles, tables: dict[sa.Table, _Table]) -> list[str]:
    """Privileges a role holds beyond the policy through grants to PUBLIC (or anything else)."""
    problems = []
    for role in roles.roles.values():
        granted = {p.table: p for p in role.tables}
        for table, info in sorted(tables.items(), key=lambda item: item[1].sql):
            privileges = granted.get(table)
            for column, can_select, can_insert, can_update in _rows(
                    conn, "SELECT attname, has_column_privilege(:r, attrelid, attnum, 'SELECT'), has_column_privilege("
                          ":r, attrelid, attnum, 'INSERT'), has_column_privilege(:r, attrelid, attnum, 'UPDATE') "
                          "FROM pg_attribute WHERE attrelid = CAST(:t AS oid) AND attnum > 0 AND NOT attisdropped",
                    r=role.name, t=info.oid):
                for privilege, has in (("SELECT", can_select), ("INSERT", can_insert), ("UPDATE", can_update)):
                    columns = privileges.columns(privilege) if privileges and privileges.has(privilege) else frozenset()
                    if has and columns is not None and column not in columns:
                        problems.append(f"The role {role.name} can {privilege} {info.sql}.{column}, which the "
                                        "policy does not grant (a grant to PUBLIC?).")
            table_level = ("DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
            held = conn.execute(sa.text(
                "SELECT " + ", ".join(f"has_table_privilege(:r, CAST(:t AS oid), '{p}')" for p in table_level)),
                {"r": role.name, "t": info.oid}).one()
            for privilege, has in zip(table_level, held, strict=True):
                if has and not (privilege == "DELETE" and privileges is not None and privileges.delete):
                    problems.append(f"The role {role.name} can {privilege} {info.sql}, which the policy does not "
                                    "grant (a grant to PUBLIC?).")
    return problems


def verify(engine: sa.Engine, roles: DatabaseRoles, *, member: str | None = None) -> list[str]:
    """What is wrong: empty when the database holds exactly the compiled roles."""
    with engine.connect() as conn:
        found = plan(conn, roles, member=member)
        problems = list(found.problems)
        if found.statements:
            shown = "; ".join(found.statements[:3]) + ("; ..." if len(found.statements) > 3 else "")
            problems.append(f"The database roles are not in sync with the policy ({len(found.statements)} "
                            f"statements to run, `dbapi-server db-roles --apply`): {shown}")
        else:
            problems.extend(_effective_problems(conn, roles, _resolve_tables(conn, roles, RolesPlan())))
        conn.rollback()
    return problems


def apply(engine: sa.Engine, roles: DatabaseRoles, *, member: str | None = None) -> list[str]:
    """Converge the database on *roles* in one transaction; returns the statements run."""
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})  # one applier at a time
        found = plan(conn, roles, member=member)
        if found.problems:
            raise DatabaseRolesError("Cannot apply the database roles: " + " ".join(found.problems))
        cursor = conn.connection.cursor()  # the SQL as printed: no parameter markers to escape
        for statement in found.statements:
            try:
                cursor.execute(statement)
            except conn.dialect.loaded_dbapi.Error as exc:
                reason = str(exc).strip().split("\n", 1)[0]
                raise DatabaseRolesError(f"Cannot apply the database roles: {statement}: {reason} "
                                         "(the login role needs CREATEROLE and to own the tables).") from None
        again = plan(conn, roles, member=member)
        left = again.problems + again.statements
        left += _effective_problems(conn, roles, _resolve_tables(conn, roles, RolesPlan())) if not left else []
        if left:
            raise DatabaseRolesError("The database roles still differ from the policy after applying it "
                                     "(nothing was changed): " + " ".join(left))
    return found.statements


def drop(engine: sa.Engine, roles: DatabaseRoles, *, member: str | None = None) -> list[str]:
    """Remove every role, privilege and row-level-security policy of the namespace."""
    return apply(engine, DatabaseRoles(roles.namespace, {}, roles.unwalled, roles.row_security), member=member)
