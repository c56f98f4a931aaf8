"""A small application whose database code the plugin sample tests (run in both modes by CI).

It does what a worker would: ORM reads and writes through ``DBSession``, a locking read, an
error path that must roll back. It takes a bind so the same code runs directly and isolated.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from dbsession import DBSession


class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Stock(Base):
    __tablename__ = "plugin_sample_stock"
    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(sa.String(40), unique=True)
    quantity: Mapped[int] = mapped_column(default=0)


class OutOfStock(Exception):
    """Fewer items are left than were asked for."""


def sessions(bind: Any = None) -> sessionmaker[DBSession]:
    """Sessions of the application: ``bind`` in direct mode, none in an isolated worker."""
    return sessionmaker(class_=DBSession, bind=bind)


def receive(factory: sessionmaker[DBSession], sku: str, quantity: int) -> int:
    """Add *quantity* of *sku* (creating it); returns the new stock level."""
    with factory.begin() as session:
        stock = session.scalars(sa.select(Stock).where(Stock.sku == sku).with_for_update()).one_or_none()
        if stock is None:
            stock = Stock(sku=sku, quantity=0)
            session.add(stock)
        stock.quantity += quantity
        session.flush()
        return stock.quantity


def take(factory: sessionmaker[DBSession], sku: str, quantity: int) -> int:
    """Remove *quantity* of *sku*; :class:`OutOfStock` (and nothing changed) if too few are left."""
    with factory.begin() as session:
        stock = session.scalars(sa.select(Stock).where(Stock.sku == sku).with_for_update()).one()
        stock.quantity -= quantity
        session.flush()
        if stock.quantity < 0:
            raise OutOfStock(f"only {stock.quantity + quantity} of {sku} left")
        return stock.quantity


def levels(factory: sessionmaker[DBSession]) -> dict[str, int]:
    with factory() as session:
        rows = session.execute(sa.select(Stock.sku, Stock.quantity).order_by(Stock.sku))
        return {sku: quantity for sku, quantity in rows}
