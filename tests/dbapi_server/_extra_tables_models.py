"""An application's ORM metadata for tests/dbapi_server/test_extra_tables.py: no alembic_version."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
things = sa.Table("things", metadata, sa.Column("id", sa.Integer, primary_key=True),
                  sa.Column("name", sa.String(30), nullable=False))
