"""Tables of the commit-batch differential test (imported by the DB-API process as its metadata)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = sa.MetaData()


class Base(DeclarativeBase):
    metadata = metadata


class Item(Base):
    __tablename__ = "batch_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(40), unique=True)
    qty: Mapped[int] = mapped_column(default=0)


class Part(Base):
    __tablename__ = "batch_parts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(sa.String(40))
