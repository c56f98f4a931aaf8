"""Hints and prefixes (``with_hint``, ``with_statement_hint``, ``prefix_with``, ``suffix_with``).

SQLAlchemy renders each of them only on the dialect it names (or on every dialect, ``"*"``), and
from-hints only on a dialect whose compiler renders them (SQLite's renders none). A hint or prefix
that does not render on the server's dialect is inert: it travels (the SQL must stay the same; an
empty suffix list still adds a space) and is no raw SQL for the policy. What renders is judged
here, on the server, never on the client's word:

* the index hints of MySQL / MariaDB - ``USE | FORCE | IGNORE {INDEX | KEY} [FOR {JOIN | ORDER BY |
  GROUP BY}] (name, ...)``, one or more - are *structure*: the server parses the hint text with
  this grammar (keywords, parentheses, commas, whitespace and index names, nothing else) and
  accepts it when every name is an index of the hinted table in the server's metadata
  (``PRIMARY`` for the primary key, an ``Index`` or a ``UniqueConstraint`` by name);
* PostgreSQL's one from-hint, ``ONLY`` (no inheritance children), is structure too;
* anything else is raw SQL text: allowed only by the raw-SQL policy, and refused naming the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.sql import selectable
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["IndexHint", "from_hint_renders", "hint_renders", "index_names", "parse_index_hints",
           "structured_from_hint"]

MYSQL_FAMILY = frozenset({"mysql", "mariadb"})

_NAME = r"(?:[A-Za-z_][A-Za-z0-9_$]*|`[^`\x00]+`)"
_ONE = (rf"(?P<action>USE|FORCE|IGNORE)\s+(?P<keyword>INDEX|KEY)"
        rf"(?:\s+FOR\s+(?P<scope>JOIN|ORDER\s+BY|GROUP\s+BY))?"
        rf"\s*\(\s*(?P<names>{_NAME}(?:\s*,\s*{_NAME})*)?\s*\)")
_HINT = re.compile(_ONE, re.IGNORECASE | re.ASCII)
_HINTS = re.compile(rf"\s*(?:{_ONE}\s*)+", re.IGNORECASE | re.ASCII)
_SPLIT_NAMES = re.compile(rf"{_NAME}", re.ASCII)


@dataclass(frozen=True)
class IndexHint:
    """One MySQL index hint, parsed."""

    action: str  # USE | FORCE | IGNORE
    scope: str | None  # JOIN | ORDER BY | GROUP BY | None (all of them)
    names: tuple[str, ...]  # unquoted; empty only for USE INDEX ()


def parse_index_hints(text: str) -> list[IndexHint] | None:
    """*text* as MySQL index hints, or ``None`` when it is anything else."""
    if not isinstance(text, str) or _HINTS.fullmatch(text) is None:
        return None
    hints = []
    for match in _HINT.finditer(text):
        action = match["action"].upper()
        names = tuple(n.strip("`") for n in _SPLIT_NAMES.findall(match["names"] or ""))
        if not names and action != "USE":  # only USE INDEX () may name no index
            return None
        scope = " ".join(match["scope"].upper().split()) if match["scope"] else None
        hints.append(IndexHint(action, scope, names))
    return hints


def index_names(from_: object) -> set[str] | None:
    """The index names (lower case) MySQL knows for the table behind *from_*, or ``None``."""
    while isinstance(from_, selectable.Alias):
        from_ = from_.element
    if not isinstance(from_, sa.Table):
        return None
    names = {"primary"} if from_.primary_key.columns else set()
    names.update(str(ix.name).lower() for ix in from_.indexes if ix.name is not None)
    names.update(str(c.name).lower() for c in from_.constraints
                 if isinstance(c, sa.UniqueConstraint) and not isinstance(c, sa.PrimaryKeyConstraint)
                 and isinstance(c.name, str))
    return names


def hint_renders(dialect_name: str | None, dialect: sa.Dialect | None) -> bool:
    """Whether a hint or prefix for *dialect_name* renders on *dialect* (``None``: unknown, assume so)."""
    return dialect is None or dialect_name in (None, "*", dialect.name)


_FROM_HINT_HOOKS = ("format_from_hint_text", "get_from_hint_text", "get_select_hint_text", "get_crud_hint_text")


def from_hint_renders(dialect_name: str | None, dialect: sa.Dialect | None) -> bool:
    """Whether a ``with_hint()`` for *dialect_name* renders on *dialect*.

    SQLAlchemy's base compiler renders no from-hint at all; a dialect renders them by overriding
    one of its hooks (MySQL returns the text, PostgreSQL turns ``ONLY`` into ``ONLY table``).
    """
    if dialect is None:
        return True
    compiler = dialect.statement_compiler
    return hint_renders(dialect_name, dialect) and any(
        getattr(compiler, hook, None) is not getattr(SQLCompiler, hook) for hook in _FROM_HINT_HOOKS)


def structured_from_hint(from_: object, text: str, dialect: sa.Dialect | None) -> bool:
    """Whether the from-hint *text* on *from_* is structure the server validated (see the module)."""
    server_dialect = None if dialect is None else dialect.name
    if server_dialect in MYSQL_FAMILY:
        hints = parse_index_hints(text)
        known = index_names(from_)
        return hints is not None and known is not None and all(
            name.lower() in known for hint in hints for name in hint.names)
    if server_dialect == "postgresql":
        return text.upper() == "ONLY"
    return False
