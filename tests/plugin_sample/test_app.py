"""The sample application's tests: they pass unchanged with and without ``--db-isolation``."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

import dbsession
from dbsession import DBSession

from .app import OutOfStock, Stock, levels, receive, take


def stored(engine: sa.Engine, sku: str) -> int | None:
    with engine.connect() as conn:
        return conn.scalar(sa.select(Stock.quantity).where(Stock.sku == sku))


def test_receive_creates_and_adds(factory: sessionmaker[DBSession], seeded: str,
                                  trusted_engine: sa.Engine) -> None:
    assert receive(factory, "nut", 5) == 5
    assert receive(factory, seeded, 5) == 15
    assert stored(trusted_engine, "nut") == 5 and stored(trusted_engine, seeded) == 15


def test_take_too_many_changes_nothing(factory: sessionmaker[DBSession], seeded: str,
                                       trusted_engine: sa.Engine) -> None:
    assert take(factory, seeded, 4) == 6
    with pytest.raises(OutOfStock, match="only 6 of bolt left"):
        take(factory, seeded, 7)
    assert stored(trusted_engine, seeded) == 6
    assert levels(factory) == {seeded: 6}


def test_bind_matches_the_mode(dbsession_bind: sa.Engine, seeded: str) -> None:
    isolated = dbsession.get_settings().database_access_isolation
    assert bool(getattr(dbsession_bind.dialect, "is_dbsession", False)) is isolated
    if isolated:  # an isolated worker's DBSession needs no bind at all
        with DBSession() as session:
            assert session.scalar(sa.select(Stock.quantity).where(Stock.sku == seeded)) == 10


@pytest.mark.trusted
def test_trusted_test_may_use_its_own_engine(dbsession_bind: sa.Engine, trusted_engine: sa.Engine,
                                             seeded: str) -> None:
    engine = sa.create_engine(trusted_engine.url)  # would be a violation without the marker
    try:
        assert stored(engine, seeded) == 10
    finally:
        engine.dispose()
