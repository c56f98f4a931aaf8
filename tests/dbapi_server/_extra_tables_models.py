"""An application's ORM metadata for the extra-tables and reflection tests: no alembic_version."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
things = sa.Table("things", metadata, sa.Column("id", sa.Integer, primary_key=True),
                  sa.Column("name", sa.String(30), nullable=False))
parts = sa.Table("parts", metadata, sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("thing_id", sa.ForeignKey("things.id", ondelete="CASCADE"), nullable=False),
                 sa.Column("label", sa.String(50), server_default="x", comment="shown"),
                 sa.Column("weight", sa.Numeric(10, 2)), sa.Column("seen", sa.DateTime(timezone=True)),
                 sa.Column("data", sa.JSON), sa.Column("kind", sa.Enum("a", "b", name="part_kind")),
                 sa.UniqueConstraint("thing_id", "label", name="uq_parts_label"),
                 sa.CheckConstraint("weight >= 0", name="ck_parts_weight"),
                 sa.Index("ix_parts_seen", "seen"))
