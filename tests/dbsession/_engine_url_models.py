"""The application's tables of ``test_engine_url.py``: what its DB-API processes import (``--metadata``)."""

from __future__ import annotations

import sqlalchemy as sa

MD = sa.MetaData()
THINGS = sa.Table("things", MD, sa.Column("id", sa.Integer, primary_key=True),
                  sa.Column("name", sa.String(30), nullable=False), sa.Index("ix_things_name", "name"))
