"""The ``documents`` table of ``test_engine_options.py``: what its DB-API processes import (``--metadata``)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData()
documents = sa.Table("documents", metadata, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("body", sa.Text().with_variant(mysql.LONGTEXT(), "mysql"), nullable=False))
