"""The tables the fault-injection servers serve (imported by ``dbapi-server serve`` subprocesses)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Entry(Base):
    """A ledger entry: the unique ``ref`` makes "committed exactly once" countable."""

    __tablename__ = "fault_entries"
    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(sa.String(80), unique=True)
    note: Mapped[str] = mapped_column(sa.String(40), default="")
    amount: Mapped[int] = mapped_column(default=0)


METADATA_PATH = "tests.faults.models:Base.metadata"
