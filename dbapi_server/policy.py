"""What a caller may execute.

The server knows exactly what each statement touches (the decoder records tables, columns,
functions, operators and any literal SQL while rebuilding it), so the policy judges structure,
never SQL text. This default policy - the seam the per-role, per-column, row-filter policy grows from
(not built yet) - allows the application's own tables, refuses literal SQL except ``*`` and bare integers (``count(*)``, ``EXISTS (SELECT 1 ...)``) and
refuses functions that reach outside the database's data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from query_translation.decode import StatementInfo

from .auth import Principal
from .errors import APIError

__all__ = ["DefaultPolicy", "PolicyViolation"]

# functions that read files, run programs, sleep, or reach other servers
DANGEROUS_FUNCTIONS = frozenset({
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import", "lo_export",
    "pg_sleep", "pg_terminate_backend", "pg_cancel_backend", "dblink", "dblink_exec",
    "pg_reload_conf", "set_config", "current_setting", "load_extension", "sleep", "benchmark",
    "load_file", "sys_exec", "sys_eval", "readfile", "writefile", "fts3_tokenizer",
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


class PolicyViolation(APIError):
    status = 403
    code = "policy_violation"


@dataclass
class DefaultPolicy:
    """Allow the metadata's tables; refuse raw SQL and dangerous functions."""

    allow_raw_sql: bool = False
    allow_ddl: bool = False
    allowed_literals: frozenset[str] = frozenset({"*"})
    denied_functions: frozenset[str] = DANGEROUS_FUNCTIONS
    denied_tables: frozenset[str] = field(default_factory=frozenset)
    allowed_custom_operators: frozenset[str] = SAFE_CUSTOM_OPERATORS

    @classmethod
    def for_testing(cls) -> DefaultPolicy:
        """Raw SQL and DDL allowed: for a scratch database a test suite creates and drops."""
        return cls(allow_raw_sql=True, allow_ddl=True)

    def check(self, info: StatementInfo, principal: Principal) -> None:
        if info.kind == "ddl":
            if not self.allow_ddl:
                raise PolicyViolation("DDL (CREATE / ALTER / DROP) is not allowed by the DB-API's policy.")
            return
        if info.kind == "driver_sql":
            if not self.allow_raw_sql:
                raise PolicyViolation(
                    "Raw SQL strings (exec_driver_sql) are not allowed by the DB-API's policy; "
                    "express the statement with SQLAlchemy constructs.")
            return
        self._check_literal_sql(info.literal_sql)
        self._check_custom_operators(info.custom_operators)
        self._check_functions(info.functions)
        self._check_tables(info.read_tables | ({info.write_table} if info.write_table else set()))

    def _check_literal_sql(self, fragments: Iterable[str]) -> None:
        if self.allow_raw_sql:
            return
        for fragment in fragments:
            # "*" and bare integers are what SQLAlchemy itself emits (count(*), EXISTS (SELECT 1))
            if fragment not in self.allowed_literals and not fragment.isdigit():
                raise PolicyViolation(
                    "Raw SQL text is not allowed by the DB-API's policy; express the statement "
                    "with SQLAlchemy constructs (select(), text() is refused).")

    def _check_custom_operators(self, opstrings: Iterable[str]) -> None:
        if self.allow_raw_sql:
            return
        for opstring in opstrings:
            if " ".join(opstring.split()).lower() not in self.allowed_custom_operators:
                shown = f" {opstring!r}" if len(opstring) <= 12 else ""  # never echo SQL back
                raise PolicyViolation(
                    f"The custom SQL operator{shown} is not allowed by the DB-API's policy; use "
                    "SQLAlchemy's operators, or add it to the policy's allowed_custom_operators.")

    def _check_functions(self, names: Iterable[str]) -> None:
        for name in names:
            if name.rsplit(".", 1)[-1] in self.denied_functions:
                raise PolicyViolation(f"The SQL function {name}() is not allowed by the DB-API's policy.")

    def _check_tables(self, tables: Iterable[str]) -> None:
        for table in tables:
            if table in self.denied_tables:
                raise PolicyViolation(f"Access to the table {table!r} is not allowed by the DB-API's policy.")
