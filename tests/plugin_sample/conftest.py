"""The sample project's side of the plugin: its tables, its session factory, a seeded row."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from dbsession import DBSession

from .app import Base, Stock, sessions


@pytest.fixture(scope="session")
def db_metadata() -> sa.MetaData:
    return Base.metadata


@pytest.fixture
def factory(dbsession_bind: sa.Engine) -> sessionmaker[DBSession]:
    return sessions(dbsession_bind)


@pytest.fixture
def seeded(trusted_engine: sa.Engine) -> Iterator[str]:
    """One stocked item, written directly - a fixture may seed through the trusted engine."""
    with Session(trusted_engine) as session, session.begin():
        session.execute(sa.delete(Stock))
        session.add(Stock(sku="bolt", quantity=10))
    yield "bolt"
    with Session(trusted_engine) as session, session.begin():
        session.execute(sa.delete(Stock))
