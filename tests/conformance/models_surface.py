"""An extra table of the differential conformance corpus, for the wider ORM surface.

``surface_item`` is defined on the corpus's own ``metadata`` (``tests.conformance.models``), so
the fixtures create, reset and fingerprint it like every other table, and the DB-API server of
the side under test knows it. It is imported by the ``surface_*`` corpus modules, which the
corpus package imports at collection time, i.e. before any fixture creates the schema.

The table is empty after seeding: the operations that use it insert their own rows.

* ``secret`` is an :class:`EncText` - a ``TypeDecorator`` whose processing is *not* idempotent:
  binding prefixes ``"enc:"`` (and refuses a value that already has the prefix), reading strips
  exactly one prefix (and refuses a stored value with none or with two). A bound value processed
  twice, or a result value processed twice (or never), raises or shows up in the fingerprint.
* ``blob`` / ``body`` / ``ts`` / ``at_time`` use MariaDB variants (LONGBLOB, LONGTEXT,
  DATETIME(6), TIME(6)) so 1 MiB values and microseconds fit on every backend.
* ``version`` is a ``version_id_col``: stale updates and deletes raise ``StaleDataError``.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base

PREFIX = "enc:"


class EncText(sa.TypeDecorator[str]):
    """``"enc:"`` + value in the database, the value in Python; processing twice is an error."""

    impl = sa.String(200)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.startswith(PREFIX):
            raise ValueError(f"EncText: {value!r} is already encoded (bind processed twice?)")
        return PREFIX + value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if not value.startswith(PREFIX) or value.startswith(PREFIX + PREFIX):
            raise ValueError(f"EncText: stored value {value!r} does not carry exactly one prefix")
        return value[len(PREFIX) :]


_MARIADB = ("mysql", "mariadb")


class SurfaceItem(Base):
    __tablename__ = "surface_item"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    label: Mapped[str] = mapped_column(sa.String(100), unique=True, nullable=False)
    secret: Mapped[str | None] = mapped_column(EncText(), nullable=True)
    blob: Mapped[bytes | None] = mapped_column(
        sa.LargeBinary().with_variant(mysql.LONGBLOB(), *_MARIADB), nullable=True
    )
    body: Mapped[str | None] = mapped_column(sa.Text().with_variant(mysql.LONGTEXT(), *_MARIADB), nullable=True)
    amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(20, 10), nullable=True)
    ts: Mapped[dt.datetime | None] = mapped_column(
        sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *_MARIADB), nullable=True
    )
    at_time: Mapped[dt.time | None] = mapped_column(
        sa.Time().with_variant(mysql.TIME(fsp=6), *_MARIADB), nullable=True
    )
    doc: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    version: Mapped[int] = mapped_column(sa.Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}

    def __repr__(self) -> str:
        return f"SurfaceItem({self.id!r})"


__all__ = ["EncText", "SurfaceItem"]
