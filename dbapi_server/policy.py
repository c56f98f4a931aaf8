"""What a caller may execute: a declarative, per-role policy, deny by default.

The server knows exactly what each statement touches (the decoder rebuilt it against the server's
own tables), so the policy judges structure, never SQL text. A :class:`Policy` maps the token's
``role`` claim to a :class:`RolePolicy`: the tables it may read / insert / update / delete (each
with all columns or a list), the SQL functions it may call, the named methods it may invoke,
whether raw SQL or DDL is allowed, row filters bound to token claims, and limits. Whatever is not
granted is refused, with a 403 naming the table, column, function, method or role.

Presets: :meth:`Policy.open` (every table of the metadata, raw SQL refused - what a server without
a policy file runs; :class:`DefaultPolicy` is that preset with today's keyword arguments) and
:meth:`Policy.for_testing` (everything, raw SQL and DDL included). The file format (TOML) is in
``docs/security.md`` and :mod:`dbapi_server._policy_file`.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from os import PathLike
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import elements

from query_translation.decode import StatementInfo
from query_translation.driver_sql import DRIVER_SQL_KINDS
from query_translation.size import DocumentSize

from . import _statement_scan
from ._node_rules import NODE_RULES
from .auth import Principal
from .connection_settings import sqlite_pragma
from .refusals import LimitExceeded, PolicyViolation
from .row_filters import BIND_PREFIX, ROW_FILTER_BIND, filtered_statement

__all__ = ["DANGEROUS_FUNCTIONS", "DEFAULT_FUNCTIONS", "DefaultPolicy", "Limits", "Plan", "Policy",
           "PolicyError", "PolicyViolation", "RolePolicy", "TableGrant", "WORK_LIMITS"]

# functions that read files, run programs, sleep, or reach other servers: refused for every role
DANGEROUS_FUNCTIONS = frozenset({
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import", "lo_export",
    "pg_sleep", "pg_terminate_backend", "pg_cancel_backend", "dblink", "dblink_exec",
    "pg_reload_conf", "set_config", "current_setting", "load_extension", "sleep", "benchmark",
    "load_file", "sys_exec", "sys_eval", "readfile", "writefile", "fts3_tokenizer",
})

# what the ORM and ordinary queries emit: aggregates, common scalar functions, window functions
DEFAULT_FUNCTIONS = frozenset({
    "count", "sum", "min", "max", "avg", "coalesce", "nullif", "greatest", "least", "abs", "round",
    "floor", "ceil", "ceiling", "mod", "lower", "upper", "length", "char_length", "character_length",
    "trim", "ltrim", "rtrim", "substr", "substring", "replace", "concat", "now", "current_timestamp",
    "current_date", "current_time", "localtimestamp", "localtime", "date", "datetime", "strftime",
    "date_trunc", "utc_timestamp", "sysdate", "row_number", "rank", "dense_rank", "percent_rank",
    "cume_dist", "ntile", "lag", "lead", "first_value", "last_value", "nth_value", "array_agg",
    "string_agg", "group_concat", "json_extract", "json_array_length", "jsonb_array_length",
    "bool_and", "bool_or", "every",
})

# What a custom operator (``column.op("@>")``) may render. Its string goes into the SQL verbatim,
# so anything else - ``= (SELECT ... FROM other_table) OR 1 =`` - would be raw SQL in disguise.
# SQLAlchemy's own dialect operators (JSON, arrays, ranges, full text) and the common symbolic and
# keyword operators; compared case-insensitively with whitespace collapsed.
SAFE_CUSTOM_OPERATORS = frozenset({
    "->", "->>", "#>", "#>>", "#-", "?", "?&", "?|", "@?", "@@", "@@@", "@>", "<@", "&&", "<<", ">>",
    "&<", "&>", "-|-", "<<=", ">>=", "@", "||", "&", "|", "^", "#", "~", "!~", "~*", "!~*", "~~", "!~~",
    "~~*", "!~~*", "<->", "<#>", "<=>", "+", "-", "*", "/", "%", "=", "==", "!=", "<>", "<", ">", "<=",
    ">=", "like", "not like", "ilike", "not ilike", "regexp", "not regexp", "rlike", "glob", "match",
    "similar to", "not similar to", "is", "is not", "is distinct from", "is not distinct from", "div",
    "mod", "xor",
})

ALL = "*"

# Transaction-scoped settings a client may make as SQL text (PostgreSQL ``SET LOCAL``): applications
# bound their own lock waits (Airflow's ``with_db_lock_timeout``). ``SET LOCAL`` ends with the
# transaction, so it never reaches another caller's requests on a pooled connection; the value is
# a plain duration. ``statement_timeout`` is not here: it would lift the policy's own limit.
DEFAULT_SETTINGS = frozenset({"lock_timeout", "idle_in_transaction_session_timeout"})
_SET_LOCAL = re.compile(r"\s*SET\s+LOCAL\s+([A-Za-z_]{1,63})\s*(?:=|\s+TO\s)\s*'?\d{1,9}(?:ms|s|min)?'?\s*;?\s*",
                        re.IGNORECASE)


_PLAN_CACHE_SIZE = 8192  # plans kept per policy (statements x roles x key sets); cleared when full


class PolicyError(ValueError):
    """A policy (file or object) is malformed or names tables/columns the metadata lacks."""



def _names(value: Any, what: str) -> frozenset[str] | None:
    """``"*"`` / ``True`` -> None (everything); ``False`` / ``None`` -> nothing; else the names."""
    if value is True or value == ALL:
        return None
    if value is False or value is None:
        return frozenset()
    if isinstance(value, str) or not isinstance(value, Iterable) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{what} must be \"*\", true/false or a list of names, not {value!r}.")
    return frozenset(value)


def _allows(names: frozenset[str] | None, name: str) -> bool:
    return names is None or name in names


@dataclass(frozen=True)
class Limits:
    """Per statement / request limits; ``None`` means "not limited" (or: inherit, for a role)."""

    max_depth: int | None = None  # nesting depth of the statement document (400)
    max_body_bytes: int | None = None  # request body (413)
    max_rows: int | None = None  # rows one result may hand back (413)
    statement_timeout: float | None = None  # seconds; the database's own statement timeout
    # the work one statement may cost the server before the database sees it (400 / 413); a
    # policy that leaves them unset gets WORK_LIMITS, so they always hold
    max_nodes: int | None = None  # nodes of the statement, references expanded (400)
    max_columns: int | None = None  # the widest select list, RETURNING list or VALUES row (400)
    max_params: int | None = None  # parameter values of one request, all sets together (413)

    def over(self, base: Limits) -> Limits:
        """These limits where set, *base*'s elsewhere."""
        return Limits(**{f.name: getattr(self, f.name) if getattr(self, f.name) is not None else getattr(base, f.name)
                         for f in fields(self)})


# Always in force (a policy may lower or raise them): a statement is refused by its size before it
# is validated, decoded, checked or compiled. Each is far above what ORM code sends (an ORM SELECT
# is tens to hundreds of nodes - but a self-referential query of SQLAlchemy's own ORM suite
# expands to 33,369 - PostgreSQL refuses more than 1664 result columns, SQLite 2000,
# MariaDB 4096) and bounds the server's CPU per request (docs/security.md, "Bounded work").
WORK_LIMITS = Limits(max_nodes=100_000, max_columns=2_000, max_params=1_000_000)


@dataclass(frozen=True, init=False)
class TableGrant:
    """What one role may do with one table.

    ``read`` / ``insert`` / ``update``: ``"*"`` (all columns), a list of column names, or nothing.
    ``delete``: a bool. ``row_filter``: ``{column: claim}`` - every row the role reads, updates or
    deletes must have ``column == claims[claim]`` (``IN`` for a list-valued claim), and every row
    it inserts must carry that value.
    """

    read: frozenset[str] | None
    insert: frozenset[str] | None
    update: frozenset[str] | None
    delete: bool
    row_filter: Mapping[str, str]

    def __init__(self, read: Any = None, insert: Any = None, update: Any = None, delete: bool = False,
                 row_filter: Mapping[str, str] | None = None) -> None:
        object.__setattr__(self, "read", _names(read, "read"))
        object.__setattr__(self, "insert", _names(insert, "insert"))
        object.__setattr__(self, "update", _names(update, "update"))
        if not isinstance(delete, bool):
            raise PolicyError(f"delete must be true or false, not {delete!r}.")
        object.__setattr__(self, "delete", delete)
        row_filter = dict(row_filter or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in row_filter.items()):
            raise PolicyError("row_filter maps column names to claim names (both strings).")
        object.__setattr__(self, "row_filter", row_filter)

    @classmethod
    def full(cls) -> TableGrant:
        return cls(read=ALL, insert=ALL, update=ALL, delete=True)

    def columns_for(self, action: str) -> frozenset[str] | None:
        names: frozenset[str] | None = getattr(self, action)
        return names

    @property
    def is_full(self) -> bool:
        return (self.read is None and self.insert is None and self.update is None and self.delete
                and not self.row_filter)


READ_ONLY = TableGrant(read=ALL)


@dataclass(frozen=True)
class RolePolicy:
    """Everything one role may do. Tables not in ``tables`` are refused unless ``any_table`` is set."""

    tables: Mapping[str, TableGrant] = field(default_factory=dict)
    functions: frozenset[str] | None = DEFAULT_FUNCTIONS  # None: any (except the dangerous ones)
    methods: frozenset[str] | None = frozenset()  # named methods; None: any
    raw_sql: bool = False
    ddl: bool = False
    limits: Limits = Limits()
    any_table: TableGrant | None = None  # presets: this grant for every table not listed
    denied_tables: frozenset[str] = frozenset()
    # presets: tables ``any_table`` grants only reading (the served extra tables, extra_tables.py)
    read_only_tables: frozenset[str] = frozenset()

    def grant(self, table: str) -> TableGrant | None:
        if table in self.denied_tables:
            return None
        found = self.tables.get(table)
        if found is not None:
            return found
        if self.any_table is not None and table in self.read_only_tables:
            return READ_ONLY
        return self.any_table

    def unrestricted_for(self, info: StatementInfo) -> bool:
        """:attr:`unrestricted`, unless the statement touches a read-only table of a preset."""
        if not self.unrestricted:
            return False
        if not self.read_only_tables:
            return True
        return not (self.read_only_tables & (info.read_tables | {info.write_table}))

    @cached_property
    def row_filtered(self) -> bool:
        """Some table of this role has a row filter (its plans depend on claims and values)."""
        grants = [*self.tables.values(), *([self.any_table] if self.any_table is not None else [])]
        return any(grant.row_filter for grant in grants)

    @cached_property
    def unrestricted(self) -> bool:
        """Every table, every column, no row filter: the statement needs no column-level walk."""
        return (self.any_table is not None and self.any_table.is_full
                and all(g.is_full for g in self.tables.values()))


@dataclass(frozen=True)
class Plan:
    """How to run one allowed statement: what to execute and under which limits.

    ``original`` is set when row filters rewrote the statement: the client's SQL fingerprint is
    then checked against the original's compile, and the rewritten one runs with
    ``filter_params`` added to every parameter set.
    """

    statement: Any
    limits: Limits
    original: Any = None
    filter_params: Mapping[str, Any] = field(default_factory=dict)


class Policy:
    """Roles by name, global limits, and the rules every role shares."""

    def __init__(self, roles: Mapping[str, RolePolicy] | None = None, *, limits: Limits = Limits(),
                 fallback: RolePolicy | None = None, denied_functions: frozenset[str] = DANGEROUS_FUNCTIONS,
                 allowed_literals: frozenset[str] = frozenset({"*"}),
                 allowed_custom_operators: frozenset[str] = SAFE_CUSTOM_OPERATORS,
                 extra_tables: Iterable[str] = (), allowed_settings: frozenset[str] = DEFAULT_SETTINGS) -> None:
        self.roles = dict(roles or {})
        self.limits = limits
        # tables outside the metadata the server reflects and serves (policy file's extra_tables)
        self.extra_tables = frozenset(extra_tables)
        self.allowed_settings = allowed_settings
        self.fallback = fallback  # the role of every caller whose role is not listed (presets only)
        self.denied_functions = denied_functions
        self.allowed_literals = allowed_literals
        self.allowed_custom_operators = allowed_custom_operators
        every = [self.limits, *(r.limits for r in self.roles.values())]
        if fallback is not None:
            every.append(fallback.limits)
        self.uses_timeouts = any(lim.statement_timeout is not None for lim in every)
        self._merged_limits: dict[int, Limits] = {}
        # plans of roles without row filters, by (statement, role, parameter keys, column keys,
        # dialect): what plan() answers then depends on nothing else (see plan())
        self._plans: dict[tuple[Any, ...], tuple[weakref.ref[Any], RolePolicy, Limits]] = {}

    # -- presets and loading --------------------------------------------------------------------
    @classmethod
    def open(cls, *, limits: Limits = Limits(), raw_sql: bool = False, ddl: bool = False,
             denied_tables: Iterable[str] = ()) -> Policy:
        """Every caller may use every table of the metadata; raw SQL and DDL refused (by default)."""
        return cls(limits=limits, fallback=RolePolicy(any_table=TableGrant.full(), functions=None, methods=None,
                                                      raw_sql=raw_sql, ddl=ddl,
                                                      denied_tables=frozenset(denied_tables)))

    @classmethod
    def for_testing(cls) -> Policy:
        """Everything, raw SQL and DDL included: for running test suites, never production."""
        return cls(fallback=RolePolicy(any_table=TableGrant.full(), functions=None, methods=None,
                                       raw_sql=True, ddl=True))

    @classmethod
    def from_file(cls, path: str | PathLike[str], metadata: sa.MetaData | None = None) -> Policy:
        """Load a TOML policy file; with *metadata*, also check every table and column it names."""
        from ._policy_file import load_file

        policy = load_file(path)
        if metadata is not None:
            policy.validate(metadata)
        return policy

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """The policy a parsed TOML document describes (see ``docs/security.md``)."""
        from ._policy_file import policy_from_dict

        return policy_from_dict(data)

    def serve_extra_tables(self, names: Iterable[str]) -> None:
        """The served metadata has these extra tables: the preset role may only read them.

        A listed role reads or writes them only as its own grants say (deny by default)."""
        names = frozenset(names)
        if self.fallback is not None and names:
            self.fallback = replace(self.fallback, read_only_tables=self.fallback.read_only_tables | names)

    def validate(self, metadata: sa.MetaData) -> None:
        """Raise :class:`PolicyError` naming the first table or column *metadata* does not have."""
        for role_name, role in self.roles.items():
            for table_name, grant in role.tables.items():
                table = metadata.tables.get(table_name)
                where = f"roles.{role_name}.tables.{table_name}"
                if table is None:
                    raise PolicyError(f"{where}: the table {table_name!r} is not in the server's metadata.")
                known = {c.name for c in table.c}
                for action in ("read", "insert", "update"):
                    for name in sorted(grant.columns_for(action) or ()):
                        if name not in known:
                            raise PolicyError(f"{where}.{action}: {table_name!r} has no column {name!r}.")
                for name in grant.row_filter:
                    if name not in known:
                        raise PolicyError(f"{where}.row_filter: {table_name!r} has no column {name!r}.")

    # -- lookups --------------------------------------------------------------------------------
    def role_for(self, principal: Principal) -> RolePolicy:
        role = principal.role
        found = self.roles.get(role) if isinstance(role, str) else None
        if found is not None:
            return found
        if self.fallback is not None:
            return self.fallback
        raise PolicyViolation(f"The role {role!r} has no access under the DB-API's policy; the token "
                              "must carry a role the policy lists.", role=role if isinstance(role, str) else None)

    def limits_for(self, principal: Principal) -> Limits:
        return self._limits_of(self.role_for(principal))

    def _limits_of(self, role: RolePolicy) -> Limits:
        merged = self._merged_limits.get(id(role))
        if merged is None:  # computed once per role (policies are immutable)
            merged = self._merged_limits[id(role)] = role.limits.over(self.limits).over(WORK_LIMITS)
        return merged

    # -- checks ---------------------------------------------------------------------------------
    def check(self, info: StatementInfo, principal: Principal) -> None:
        """The statement-level rules: role, depth, raw SQL, operators, functions, tables."""
        role = self.role_for(principal)
        self._check_statement(info, role, self._limits_of(role))

    def _check_statement(self, info: StatementInfo, role: RolePolicy, limits: Limits) -> None:
        if info.kind == "ddl":  # SQL text the client's DDL compiler wrote: a permission of its own
            if not role.ddl:
                raise PolicyViolation("DDL (CREATE / ALTER / DROP) is not allowed by the DB-API's policy.",
                                      statement="ddl")
            return
        if info.kind == "driver_sql":  # exec_driver_sql and SQL text rewritten by client listeners
            if not role.raw_sql:
                raise PolicyViolation("Raw SQL strings (exec_driver_sql) are not allowed by the DB-API's "
                                      "policy; express the statement with SQLAlchemy constructs.",
                                      statement="driver_sql")
            return
        for node_type in sorted(info.node_types):
            if node_type not in NODE_RULES:  # deny by default: a node type nobody wrote a rule for
                raise PolicyViolation("The statement uses a node type the DB-API's policy has no access rule for.",
                                      node=node_type if node_type.isidentifier() and len(node_type) <= 40
                                      else "<invalid>")
        if self.is_allowed_setting(info):
            return
        self._check_depth(info.depth, limits)
        self._check_literal_sql(info, role)
        self._check_custom_operators(info.custom_operators, role)
        self._check_functions(info.functions, role)
        for table in info.read_tables | ({info.write_table} if info.write_table else set()):
            if role.grant(table) is None:
                raise PolicyViolation(f"Access to the table {table!r} is not allowed by the DB-API's policy.",
                                      table=table)

    def plan(self, statement: Any, info: StatementInfo, principal: Principal, *,
             params: list[dict[str, Any]] | None = None, column_keys: Iterable[str] | None = None,
             dialect: str | sa.Dialect | None = None) -> Plan:
        """Check *statement* fully and say how to run it (row filters applied), or refuse.

        *dialect* (the server's dialect, or its name) lets row filters fence their derived tables.
        *params* are the client's values as the driver binds them (processed by the client); with a
        dialect object, the claim values row filters compare and bind are processed by the column
        types' bind processors too, so both sides are compared - and bound - in that same form.
        """
        role = self.role_for(principal)
        if role.row_filtered:  # the plan depends on the caller's claims and the values sent
            return self._plan(statement, info, role, principal, params, column_keys, dialect)
        # Otherwise it depends only on the statement (its structure: one object per decoded
        # structure), the role, which parameter keys and column keys name written columns, and the
        # dialect - never on values or claims. Only allowed plans are kept; a refusal is judged anew.
        key = (id(statement), id(role), frozenset().union(*params) if params else None,
               tuple(column_keys) if column_keys is not None else None,
               dialect if dialect is None or isinstance(dialect, str) else id(dialect))
        hit = self._plans.get(key)
        if hit is not None and hit[0]() is statement and hit[1] is role:
            return Plan(statement, hit[2])
        plan = self._plan(statement, info, role, principal, params, column_keys, dialect)
        if plan.statement is not statement or plan.original is not None:
            return plan  # (never without row filters; kept only in the form the hit rebuilds)
        try:  # weakly: a statement too large for the decode cache is not kept alive here either
            ref = weakref.ref(statement)
        except TypeError:
            return plan
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[key] = (ref, role, plan.limits)  # a dead statement's entry never matches a new one
        return plan

    def _plan(self, statement: Any, info: StatementInfo, role: RolePolicy, principal: Principal,
              params: list[dict[str, Any]] | None, column_keys: Iterable[str] | None,
              dialect: str | sa.Dialect | None) -> Plan:
        limits = self._limits_of(role)
        self._check_statement(info, role, limits)
        if role.unrestricted_for(info) or self.is_allowed_setting(info) or info.kind in DRIVER_SQL_KINDS or info.kind in (
                "savepoint", "rollback_to_savepoint", "release_savepoint"):
            return Plan(statement, limits)
        if info.literal_sql and role.raw_sql:
            return Plan(statement, limits)  # raw SQL allowed: its tables are not knowable
        access = _statement_scan.scan(statement, dialect.name if isinstance(dialect, sa.engine.Dialect) else dialect)
        for key in access.bind_keys:
            if key.startswith(BIND_PREFIX):
                raise PolicyViolation(f"Bind parameter names starting with {BIND_PREFIX!r} are reserved.")
        written = self._written_columns(access, params, column_keys)
        _check_access(role, access, written)
        _check_nested_writes(role, access, lambda nested: self._written_columns(nested, params, column_keys))
        return self._filtered(statement, access, role, principal, params or [{}], written, limits,
                              dialect if isinstance(dialect, sa.engine.Dialect) else None,
                              dialect.name if isinstance(dialect, sa.engine.Dialect) else dialect)

    def is_allowed_setting(self, info: StatementInfo) -> bool:
        """A whole statement ``SET LOCAL <allowed setting> = <duration>`` (``DEFAULT_SETTINGS``), or
        a known SQLite ``PRAGMA name = value``, which is checked against the connection and never
        run (:mod:`dbapi_server.connection_settings`)."""
        if info.kind != "text" or len(info.literal_sql) != 1 or info.read_tables or info.functions:
            return False
        if sqlite_pragma(info) is not None:
            return True
        found = _SET_LOCAL.fullmatch(info.literal_sql[0])
        return found is not None and found.group(1).lower() in self.allowed_settings

    def check_method(self, name: str, principal: Principal) -> None:
        """Refuse a named method the caller's role may not invoke."""
        role = self.role_for(principal)
        if not _allows(role.methods, name):
            raise PolicyViolation(f"The named method {name!r} is not allowed for this role by the "
                                  "DB-API's policy.", method=name)

    def check_ddl(self, principal: Principal) -> None:
        """Refuse DDL (CREATE / DROP / ALTER) unless the caller's role allows it."""
        if not self.role_for(principal).ddl:
            raise PolicyViolation("DDL is not allowed for this role by the DB-API's policy.", statement="ddl")

    def check_size(self, size: DocumentSize, param_values: int, principal: Principal) -> None:
        """Refuse a statement too large to handle, by its measured size (before any other work)."""
        limits = self.limits_for(principal)
        if limits.max_nodes is not None and size.expanded > limits.max_nodes:
            shown = f"{size.expanded}" if size.expanded < 10**9 else f"about 2**{size.expanded.bit_length() - 1}"
            raise LimitExceeded(f"The statement has {shown} nodes once its references are expanded; this "
                                f"role may send at most {limits.max_nodes}.", limit="statement_nodes",
                                maximum=limits.max_nodes, status=400)
        if limits.max_columns is not None and size.columns > limits.max_columns:
            raise LimitExceeded(f"The statement has a list of {size.columns} columns; this role may send at most "
                                f"{limits.max_columns}.", limit="statement_columns", maximum=limits.max_columns,
                                status=400)
        if limits.max_params is not None and param_values > limits.max_params:
            raise LimitExceeded(f"The request carries {param_values} parameter values; this role may send at "
                                f"most {limits.max_params}.", limit="parameter_values", maximum=limits.max_params)

    def largest_body(self) -> int | None:
        """The largest body any caller may send (``None``: some role has no limit)."""
        roles = [*self.roles.values(), *([self.fallback] if self.fallback is not None else [])]
        limits = [self._limits_of(role).max_body_bytes for role in roles]
        return max(limits) if limits and None not in limits else None  # type: ignore[type-var]

    def check_body_size(self, size: int, principal: Principal) -> None:
        limit = self.limits_for(principal).max_body_bytes
        if limit is not None and size > limit:
            raise LimitExceeded(f"The request body ({size} bytes) is larger than this role may send "
                                f"({limit} bytes).", limit="body_bytes", maximum=limit)

    # -- rules ----------------------------------------------------------------------------------
    @staticmethod
    def _check_depth(depth: int, limits: Limits) -> None:
        if limits.max_depth is not None and depth > limits.max_depth:
            raise LimitExceeded(f"The statement nests {depth} levels deep; this role may send at most "
                                f"{limits.max_depth}.", limit="statement_depth", maximum=limits.max_depth,
                                status=400)

    def _check_literal_sql(self, info: StatementInfo, role: RolePolicy) -> None:
        if role.raw_sql:
            return
        for index, fragment in enumerate(info.literal_sql):
            # "*" and bare integers are what SQLAlchemy itself emits (count(*), EXISTS (SELECT 1));
            # ASCII digits exactly: str.isdigit() also takes "²" or "١", which reach the database
            # as identifiers (where "*" may stand is the statement walk's rule)
            if fragment not in self.allowed_literals and not _statement_scan.DIGITS.fullmatch(fragment):
                # the construct, and the caller's own fragment: the one echo (docs/security.md)
                shown = fragment if len(fragment) <= 200 else fragment[:200] + "..."
                raise PolicyViolation(
                    f"Raw SQL text is not allowed by the DB-API's policy ({info.origin_of(index)}); express "
                    "the statement with SQLAlchemy constructs (select(), text() is refused). "
                    f"The raw SQL: {shown!r}", raw_sql=True)

    def _check_custom_operators(self, opstrings: Iterable[str], role: RolePolicy) -> None:
        if role.raw_sql:
            return
        for opstring in opstrings:
            if " ".join(opstring.split()).lower() not in self.allowed_custom_operators:
                shown = f" {opstring!r}" if len(opstring) <= 12 else ""  # never echo SQL back
                raise PolicyViolation(
                    f"The custom SQL operator{shown} is not allowed by the DB-API's policy; use "
                    "SQLAlchemy's operators, or add it to the policy's allowed_custom_operators.")

    def _check_functions(self, names: Iterable[str], role: RolePolicy) -> None:
        for name in names:
            short = name.rsplit(".", 1)[-1]
            if short in self.denied_functions or not (_allows(role.functions, name)):
                raise PolicyViolation(f"The SQL function {_shown(name)}() is not allowed by the DB-API's policy.",
                                      function=_shown(name))

    @staticmethod
    def _written_columns(access: _statement_scan.Access, params: list[dict[str, Any]] | None,
                         column_keys: Iterable[str] | None) -> frozenset[str]:
        """The target columns an INSERT / UPDATE writes: its own VALUES / SET plus the parameter
        keys naming target columns (what SQLAlchemy's crud compiles into VALUES / SET)."""
        if access.kind not in ("insert", "update") or access.target is None:
            return frozenset()
        keys = set(column_keys or ())
        for param_set in params or ():
            keys.update(param_set)
        by_key = {c.key: c.name for c in access.target.c}
        return access.value_columns | {by_key[k] for k in keys if k in by_key}

    def _filtered(self, statement: Any, access: _statement_scan.Access, role: RolePolicy,
                  principal: Principal, params: list[dict[str, Any]], written: frozenset[str],
                  limits: Limits, driver: sa.Dialect | None, dialect: str | None) -> Plan:
        filters: list[Any] = []
        values: dict[str, Any] = {}
        counter = 0
        touched = sorted(access.tables | ({access.target} if access.target is not None else set()),
                         key=lambda t: t.fullname)
        for table in touched:
            grant = role.grant(table.fullname)
            if grant is None or not grant.row_filter:
                continue
            comparisons = []
            for column_name, claim in sorted(grant.row_filter.items()):
                value = _claim_value(principal, claim, table, column_name)
                bind = ROW_FILTER_BIND.format(counter)
                counter += 1
                # bound as the client's values are: processed (the statement runs without processors)
                values[bind] = _driver_level(value, table, column_name, driver)
                comparisons.append((column_name, bind, isinstance(value, list)))
            filters.append((table, tuple(comparisons)))
            if table is access.target and access.upsert_columns is not None:
                raise PolicyViolation(f"An upsert (ON CONFLICT DO UPDATE) into the row-filtered table {table.name!r} "
                                      "is not allowed: the row it collides with may lie outside the filter.",
                                      table=table.name)
            if table is access.target and access.kind in ("insert", "update"):
                _check_written_values(statement, access, table, grant.row_filter, principal, params, written,
                                      driver)
        if not filters:
            return Plan(statement, limits)
        if access.kind == "insert" and access.target is not None and any(t is access.target for t, _ in filters):
            if access.target in access.tables:
                raise PolicyViolation(f"An INSERT into the row-filtered table {access.target.name!r} may not "
                                      "read that table.", table=access.target.name)
            filters = [f for f in filters if f[0] is not access.target]
            if not filters:
                return Plan(statement, limits)
        shape = tuple((t.fullname, c) for t, c in filters)
        readable = {t: g.read for t, _ in filters if (g := role.grant(t.fullname)) is not None}
        template = filtered_statement(statement, filters, (id(role), shape), dialect, readable)
        return Plan(template.statement, limits, original=statement, filter_params=values)


def _check_access(role: RolePolicy, access: _statement_scan.Access, written: frozenset[str]) -> None:
    """Tables and columns: every read needs a read grant, every write the action's grant."""
    target = access.target
    for table in access.tables:
        grant = role.grant(table.fullname)
        if grant is None or (grant.read is not None and not grant.read and table is not target):
            raise PolicyViolation(f"Reading the table {table.fullname!r} is not allowed by the DB-API's policy.",
                                  table=table.fullname)
    for table, column in access.columns:
        grant = role.grant(table.fullname)
        if grant is None or not _allows(grant.read, column):
            raise PolicyViolation(f"Reading the column {table.fullname}.{column} is not allowed by the "
                                  "DB-API's policy.", table=table.fullname, column=column)
    _check_bare_names(role, access)
    if target is None:
        return
    grant = role.grant(target.fullname)
    action = access.kind
    if grant is None:
        raise PolicyViolation(f"Writing the table {target.fullname!r} is not allowed by the DB-API's policy.",
                              table=target.fullname, action=action)
    if action == "delete":
        if not grant.delete:
            raise PolicyViolation(f"Deleting from the table {target.fullname!r} is not allowed by the DB-API's "
                                  "policy.", table=target.fullname, action=action)
        return
    allowed = grant.columns_for(action)
    if allowed is not None and not allowed:
        raise PolicyViolation(f"{action.capitalize()} on the table {target.fullname!r} is not allowed by the "
                              "DB-API's policy.", table=target.fullname, action=action)
    for column in sorted(written):
        if not _allows(allowed, column):
            raise PolicyViolation(f"Writing the column {target.fullname}.{column} ({action}) is not allowed by "
                                  "the DB-API's policy.", table=target.fullname, column=column, action=action)
    if access.upsert_columns is not None:  # ON CONFLICT DO UPDATE: an UPDATE of the row it collides with
        _check_access(role, replace(access, kind="update", upsert_columns=None), access.upsert_columns)


# names a database resolves to a column of every table that no metadata declares: SQLite's rowid
# aliases, PostgreSQL's system columns, MariaDB's _rowid (the integer primary key)
_SYSTEM_COLUMNS = ("rowid", "oid", "_rowid_", "_rowid", "ctid", "xmin", "xmax", "cmin", "cmax", "tableoid")
_ANONYMOUS = re.compile(r"%\(\d+ (.*)\)s")


def _check_bare_names(role: RolePolicy, access: _statement_scan.Access) -> None:
    """Names the database resolves itself (``column("x")``, ``order_by("x")``, a label rendered by
    name in ORDER BY / GROUP BY), compared as the databases compare them: case-insensitively (SQLite
    and MariaDB fold column names; PostgreSQL folds what SQLAlchemy leaves unquoted, and an exact
    match is a case-insensitive one), against the column names and keys of every table in the
    statement (an inner name may resolve to an outer query's table), and only for ASCII names
    (MariaDB also ignores accents). Each candidate column must be readable; a name equal to a FROM
    item's is a whole-row reference on PostgreSQL; a name matching no column and no label would
    resolve to something the policy does not know (``rowid``, ``ctid``, ``xmin``)."""
    if not access.bare_names:
        return
    tables = sorted(access.tables | ({access.target} if access.target is not None else set()),
                    key=lambda t: t.fullname)
    scopes = {n.lower() for n in access.scope_names}
    outputs = {n.lower() for n in access.output_names if not isinstance(n, elements._anonymous_label)}
    for name in sorted(access.bare_names):
        anonymous = _ANONYMOUS.fullmatch(name) if isinstance(name, elements._anonymous_label) else None
        if anonymous is not None:  # rendered as <base>_<n>: any such name may be meant
            pattern = re.compile(re.escape(anonymous.group(1).lower()) + r"_\d+")
            matches: Any = pattern.fullmatch
            matched = True
        elif _statement_scan.ASCII_NAME.fullmatch(name):
            folded = name.lower()
            matches = folded.__eq__
            matched = folded in outputs
        else:
            raise PolicyViolation("A name the database resolves unqualified must be an ASCII identifier; "
                                  "qualify the column.", column="<name>")
        if any(matches(system) for system in _SYSTEM_COLUMNS):
            raise PolicyViolation("An unqualified name in the statement is a system column's name (rowid, ctid, "
                                  "xmin, ...), which the database may resolve to the system column; rename the "
                                  "label or qualify the column.")
        if any(matches(scope) for scope in scopes):
            raise PolicyViolation("An unqualified name in the statement is also the name of a table, alias or "
                                  "subquery (a whole-row reference on PostgreSQL); qualify the column.")
        for table in tables:
            grant = role.grant(table.fullname)
            for column in table.c:
                if matches(column.name.lower()) or matches(column.key.lower()):
                    matched = True
                    if grant is None or not _allows(grant.read, column.name):
                        raise PolicyViolation(f"Reading the column {table.fullname}.{column.name} is not allowed "
                                              "by the DB-API's policy.", table=table.fullname, column=column.name)
        if not matched:
            raise PolicyViolation("An unqualified name in the statement is neither a column of its tables nor "
                                  "one of its labels; the database would resolve it to something the DB-API's "
                                  "policy does not know (rowid, ctid, xmin).")


def _check_nested_writes(role: RolePolicy, access: _statement_scan.Access,
                         written: Any) -> None:
    """An INSERT / UPDATE / DELETE inside a CTE (PostgreSQL runs them): the policy's write rules,
    as for the same statement on its own; on a row-filtered table refused (the filter rewrite
    applies to the top-level statement's target only)."""
    for nested in access.nested_writes:
        target = nested.target
        assert target is not None
        grant = role.grant(target.fullname)
        if grant is not None and grant.row_filter:
            raise PolicyViolation(f"An INSERT / UPDATE / DELETE inside a CTE may not write the row-filtered "
                                  f"table {target.fullname!r}.", table=target.fullname, action=nested.kind)
        _check_access(role, nested, written(nested))


def _claim_value(principal: Principal, claim: str, table: sa.Table, column_name: str) -> Any:
    value = principal.claims.get(claim)
    if value is None:
        raise PolicyViolation(f"The table {table.fullname!r} is row-filtered by the token claim {claim!r}, "
                              "which this token does not carry.", table=table.fullname, claim=claim)
    column = next(c for c in table.c if c.name == column_name)
    if isinstance(value, list):
        return [_coerce(v, column, claim) for v in value]
    return _coerce(value, column, claim)


def _driver_level(value: Any, table: sa.Table, column_name: str, dialect: sa.Dialect | None) -> Any:
    """A claim's value as the driver binds it: through the column type's bind processor."""
    if dialect is None:
        return value
    column = next(c for c in table.c if c.name == column_name)
    process = column.type._cached_bind_processor(dialect)
    if process is None:
        return value
    return [process(v) for v in value] if isinstance(value, list) else process(value)


def _coerce(value: Any, column: sa.Column[Any], claim: str) -> Any:
    """A claim value as the column's Python type (JSON claims are strings and numbers)."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return value
    if isinstance(value, python_type) and not (isinstance(value, bool) and python_type is not bool):
        return value
    try:
        if python_type in (int, float) and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return python_type(value)
        if python_type is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    except ValueError:
        pass
    raise PolicyViolation(f"The token claim {claim!r} does not fit the column {column.name!r}.", claim=claim)


def _check_written_values(statement: Any, access: _statement_scan.Access, table: sa.Table,
                          row_filter: Mapping[str, str], principal: Principal,
                          params: list[dict[str, Any]], written: frozenset[str],
                          dialect: sa.Dialect | None = None) -> None:
    """An INSERT must carry the claims' values in the filtered columns; an UPDATE may only set them
    to those values. Compared as the driver binds them (the client sent its values processed)."""
    if access.kind == "insert" and getattr(statement, "select", None) is not None:
        raise PolicyViolation(f"INSERT ... SELECT into the row-filtered table {table.name!r} is not allowed.",
                              table=table.name)
    if access.kind == "insert" and getattr(statement, "_multi_values", None):
        raise PolicyViolation(f"A multi-row VALUES insert into the row-filtered table {table.name!r} is not "
                              "allowed; insert the rows with executemany.", table=table.name)
    statement_values = {_statement_scan._column_name(table, k): v
                        for k, v in _statement_scan._set_pairs(statement)}
    for column_name, claim in row_filter.items():
        if column_name not in written:
            if access.kind == "insert":
                raise PolicyViolation(f"An INSERT into {table.name!r} must set {column_name!r} to the token's "
                                      f"{claim!r} claim.", table=table.name, column=column_name)
            continue
        allowed = _driver_level(_claim_value(principal, claim, table, column_name), table, column_name, dialect)
        allowed_set = allowed if isinstance(allowed, list) else [allowed]
        key = next(c.key for c in table.c if c.name == column_name)
        bound = statement_values.get(column_name)
        if column_name not in statement_values:
            sent = [p.get(key, _UNKNOWN) for p in params]
        elif isinstance(bound, sa.BindParameter):
            # crud names an anonymous VALUES / SET parameter after the column; a parameter set
            # overrides the value the statement carries, exactly as at execution
            name = key if isinstance(bound.key, elements._anonymous_label) else bound.key
            sent = [p.get(name, bound.value) for p in params]
        else:
            sent = [_UNKNOWN]  # an SQL expression: its value is not knowable here
        for value in sent:
            if value is _UNKNOWN or isinstance(value, bool) or value not in allowed_set:
                raise PolicyViolation(f"The value written to {table.name}.{column_name} must equal the token's "
                                      f"{claim!r} claim.", table=table.name, column=column_name, claim=claim)


_UNKNOWN = object()


def _shown(name: str) -> str:
    """A function name safe to put in a message (names come from the wire)."""
    return name if len(name) <= 64 and name.replace(".", "").replace("_", "").isalnum() else "<invalid name>"


class DefaultPolicy(Policy):
    """The open preset with the keyword arguments the first policy had (kept for existing callers)."""

    def __init__(self, *, allow_raw_sql: bool = False, allow_ddl: bool = False, allowed_literals: frozenset[str] = frozenset({"*"}),
                 denied_functions: frozenset[str] = DANGEROUS_FUNCTIONS,
                 denied_tables: frozenset[str] = frozenset(),
                 allowed_custom_operators: frozenset[str] = SAFE_CUSTOM_OPERATORS,
                 denied_methods: frozenset[str] = frozenset(), limits: Limits = Limits()) -> None:
        preset = Policy.open(raw_sql=allow_raw_sql, ddl=allow_ddl, denied_tables=denied_tables)
        super().__init__(limits=limits, fallback=preset.fallback, denied_functions=denied_functions,
                         allowed_literals=allowed_literals, allowed_custom_operators=allowed_custom_operators)
        self.allow_raw_sql = allow_raw_sql
        self.allow_ddl = allow_ddl
        self.denied_tables = denied_tables
        self.denied_methods = denied_methods

    @classmethod
    def for_testing(cls) -> DefaultPolicy:
        """Raw SQL and DDL allowed: for a scratch database a test suite creates and drops."""
        return cls(allow_raw_sql=True, allow_ddl=True)

    def check_method(self, name: str, principal: Principal) -> None:
        if name in self.denied_methods:
            raise PolicyViolation(f"The named method {name!r} is not allowed by the DB-API's policy.",
                                  method=name)
        super().check_method(name, principal)

