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


MYSQL_ADMIN_URL = os.environ.get("DBSESSION_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/")


def fresh_database(admin_url: str, what: str, drop_suffix: str = "") -> Iterator[sa.URL]:
    """A new database on the server behind *admin_url*, yielded as a URL and dropped afterwards.

    An unreachable server fails the tests when ``$CI`` is set and skips them otherwise.
    """
    admin = guard.exempt(sa.create_engine(admin_url, isolation_level="AUTOCOMMIT"))
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as exc:
        admin.dispose()
        reason = f"{what} at {admin_url} is unreachable ({type(exc).__name__})"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {reason}", pytrace=False)
        pytest.skip(reason)
    name = f"dbs_test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield sa.make_url(admin_url).set(database=name)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{drop_suffix}")
        admin.dispose()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[sa.URL]:
    """A fresh PostgreSQL database for one test module, dropped afterwards."""
    yield from fresh_database(PG_ADMIN_URL, "PostgreSQL", drop_suffix=" WITH (FORCE)")


@pytest.fixture(scope="module")
def mariadb_url() -> Iterator[sa.URL]:
    """A fresh MariaDB database for one test module (``DBSESSION_TEST_MYSQL=0`` leaves MariaDB out)."""
    if os.environ.get("DBSESSION_TEST_MYSQL", "1") == "0":
        pytest.skip("MariaDB left out (DBSESSION_TEST_MYSQL=0)")
    yield from fresh_database(MYSQL_ADMIN_URL, "MariaDB")


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
