"""Fixtures shared by the unit-level test packages (the conformance suite has its own)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import dbsession
from dbsession import guard

pytest_plugins = ["pytester"]  # tests/dbsession/test_pytest_plugin.py runs sample projects

PG_ADMIN_URL = os.environ.get("DBSESSION_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[sa.URL]:
    """A fresh PostgreSQL database for one test module, dropped afterwards.

    Unreachable PostgreSQL fails the tests when ``$CI`` is set and skips them otherwise.
    """
    admin = guard.exempt(sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT"))
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as exc:
        admin.dispose()
        reason = f"PostgreSQL at {PG_ADMIN_URL} is unreachable ({type(exc).__name__})"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)
    name = f"dbs_test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@pytest.fixture
def isolation_reset() -> Iterator[None]:
    """No installed guard and no ``configure()`` settings, before and after the test.

    The guard is process-wide: any isolated session (here or in another suite) installs it.
    """
    guard.uninstall()
    dbsession.reset_configuration()
    yield
    guard.uninstall()
    dbsession.reset_configuration()
