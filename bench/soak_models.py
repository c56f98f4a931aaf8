"""The soak run's tables (imported by the DB-API instances as ``bench.soak_models:Base.metadata``).

``soak_ledger`` has no unique constraint on ``ref`` on purpose: a commit applied twice shows as two
rows, and as a balance that does not add up.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Account(Base):
    __tablename__ = "soak_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int] = mapped_column(default=0)


class Ledger(Base):
    __tablename__ = "soak_ledger"
    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(sa.String(60), index=True)
    account_id: Mapped[int] = mapped_column(index=True)
    amount: Mapped[int]


ACCOUNTS = 20
METADATA_PATH = "bench.soak_models:Base.metadata"
