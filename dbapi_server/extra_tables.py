"""Tables the DB-API serves beyond the application's metadata, reflected from the database.

Applications read tables their ORM metadata does not declare: Airflow and MLflow check their
migration head in ``alembic_version`` (alembic's ``MigrationContext`` builds that ``Table`` on the
fly) before they do anything else. Such tables are named in the server's configuration
(``DBAPI_EXTRA_TABLES=alembic_version`` or ``extra_tables = ["alembic_version"]`` in the policy
file), reflected from the database once at start, and served like the application's own: the
decoder resolves them by name, the policy grants them per role. Under the presets (no policy
file, or ``preset = ...``) they are **read-only**; a policy file's role reads or writes one only as
far as its ``[roles.<role>.tables.<name>]`` grants.

The application's ``MetaData`` is never changed: the served metadata is a new ``MetaData`` that
holds the application's very ``Table`` objects (identity kept, so types, enum classes and named
methods see what they always saw) plus the reflected ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

__all__ = ["ExtraTableError", "parse_names", "served_metadata"]


class ExtraTableError(ValueError):
    """An extra table is named wrongly, or the database does not have it."""


def parse_names(value: str | Iterable[str] | None) -> frozenset[str]:
    """``"alembic_version, other.audit"`` (or a list of names) -> the set of table keys."""
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = set()
    for item in items:
        if not isinstance(item, str):
            raise ExtraTableError(f"An extra table is named by a string, not {item!r}.")
        name = item.strip()
        if not name:
            continue
        if any(not part or part != part.strip() for part in name.split(".")) or name.count(".") > 1:
            raise ExtraTableError(f"{item!r} is not a table name ('name' or 'schema.name').")
        names.add(name)
    return frozenset(names)


def served_metadata(metadata: sa.MetaData, engine: sa.Engine, names: Iterable[str]) -> sa.MetaData:
    """*metadata*'s tables plus the named ones, reflected through *engine*; *metadata* itself
    when there are none."""
    wanted = sorted(set(names))
    if not wanted:
        return metadata
    served = sa.MetaData(schema=metadata.schema, naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        served._add_table(table.name, table.schema, table)  # the same object, not a copy
    for key in wanted:
        if key in metadata.tables:
            raise ExtraTableError(f"The extra table {key!r} is already part of the application's metadata.")
        schema, _, name = key.rpartition(".")
        try:
            # its own columns only: foreign keys are not followed into other tables
            sa.Table(name, served, schema=schema or None, autoload_with=engine, resolve_fks=False)
        except sa.exc.NoSuchTableError:
            raise ExtraTableError(f"The extra table {key!r} is not in the database (has it been migrated?).") \
                from None
    return served
