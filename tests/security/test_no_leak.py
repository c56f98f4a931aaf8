"""Error answers leak nothing, and every one can be found in the server's log by its error id.

The rule (docs/wire-format.md, "What an error may say"): an answer never carries SQL text, bound
parameters, a traceback, a file path, or the database's URL, host, port, user, password or name;
a database error keeps the first line of the database's own message (constraint, column, type
at fault) minus any statement excerpt. The server logs the full detail under ``error_id``; the
client's exception shows the same id. Checked on SQLite and on PostgreSQL (whose messages carry
the most: DETAIL lines with whole rows, statement excerpts, connection strings).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbapi_server import DefaultPolicy
from dbsession import DBSession, ServerError, guard
from tests.conftest import PG_ADMIN_URL
from tests.dbapi_server._support import RawApi, make_engine
from tests.servers import RunningServer, running_dbapi

from ._fuzzing import MARIADB, NEVER, secrets_of

PASSWORD = "pw-Never-Shown-7431"  # PostgreSQL's trust authentication ignores it; no answer may show it
SQL_MARKERS = ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", "VALUES (", "RETURNING", "DETAIL", "LINE 1")


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "nl_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(80), unique=True)
    secret_note: Mapped[str] = mapped_column(sa.String(80), default="row-secret-42")
    balance: Mapped[int] = mapped_column(default=0)
    __table_args__ = (sa.CheckConstraint("balance >= 0", name="nl_balance_ck"),)


class Missing(Base):  # served, but never created in the database: ProgrammingError / OperationalError
    __tablename__ = "nl_missing"
    id: Mapped[int] = mapped_column(primary_key=True)


class Server:
    def __init__(self, name: str, engine: sa.Engine, running: RunningServer) -> None:
        self.name, self.engine, self.running = name, engine, running
        self.secrets = [*secrets_of(engine), PASSWORD, "row-secret-42"]
        self.api = RawApi(running)

    def session(self) -> DBSession:
        return DBSession(database_access_isolation=True, database_api_host=self.running.url,
                         token=self.running.token)

    def assert_clean(self, text: str) -> None:
        for marker in (*NEVER, *SQL_MARKERS, *self.secrets):
            assert marker not in text, f"leaks {marker!r}: {text[:800]}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql", *MARIADB])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if request.param == "postgresql":
        url: Any = request.getfixturevalue("pg_url").set(password=PASSWORD)
    elif request.param == "mariadb":
        url = request.getfixturevalue("mariadb_url")
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('noleak') / 'noleak.sqlite'}"
    engine = make_engine(url, sa.MetaData())
    Account.__table__.create(engine)  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(sa.insert(Account), [{"email": "a@example.org"}])
    try:
        with running_dbapi(engine, Base.metadata) as running:
            yield Server(request.param, engine, running)
    finally:
        engine.dispose()


def _logged(caplog: pytest.LogCaptureFixture, error_id: str) -> str:
    records = [r for r in caplog.records if r.name.startswith("dbapi_server") and error_id in r.getMessage()]
    assert records, f"the server logged nothing under error id {error_id}"
    return "\n".join(r.getMessage() + (r.exc_text or "") for r in records)


def _error_id(exc: BaseException) -> str:
    found = re.search(r"error id ([0-9a-f]{16})", str(exc))
    assert found, f"the client's exception shows no error id: {exc}"
    return found.group(1)


def test_unique_violation_names_the_constraint_not_the_row(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dbapi_server")
    with server.session() as session, pytest.raises(sa.exc.IntegrityError) as raised:
        session.add(Account(email="a@example.org", secret_note="row-secret-42"))
        session.flush()
    error_id = _error_id(raised.value)
    assert raised.value.orig.error_id == error_id  # type: ignore[union-attr]
    orig_text = str(raised.value.orig)
    server.assert_clean(orig_text)
    assert re.search(r"unique|duplicate", orig_text, re.I), orig_text
    if server.name == "postgresql":
        assert "nl_accounts_email_key" in orig_text  # the constraint: what the caller needs to know
    logged = _logged(caplog, error_id)
    assert "INSERT INTO nl_accounts" in logged  # the full detail is on the server, under the id


def test_check_violation_does_not_echo_the_failing_row(server: Server) -> None:
    # PyMySQL classes MariaDB's error 4025 as OperationalError: so does a direct session
    expected = sa.exc.OperationalError if server.name == "mariadb" else sa.exc.IntegrityError
    with server.session() as session, pytest.raises(expected) as raised:
        session.add(Account(email="b@example.org", balance=-5))
        session.flush()
    server.assert_clean(str(raised.value.orig))
    assert "Failing row" not in str(raised.value.orig)
    _error_id(raised.value)


def test_a_missing_table_is_named_without_the_statement(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dbapi_server")
    reply = server.api.execute(sa.select(Missing).where(Missing.id == 123456789))
    assert reply.status == 422
    server.assert_clean(reply.body.decode())
    assert "123456789" not in reply.body.decode()  # no parameters either
    assert "nl_missing" in reply.error["message"]
    assert "SELECT" in _logged(caplog, reply.error["error_id"])


def test_statement_mismatch_and_malformed_input_say_no_sql(server: Server) -> None:
    payload = server.api.payload(sa.select(Account).where(Account.email == "x"))
    for body in ({**payload, "sql": "0" * 40}, {**payload, "stmt": {"version": 1, "statement": {"t": "select"}}},
                 {**payload, "params": [{"email_1": {"$dt": "no"}}]}, b"{not json"):
        reply = server.api.post("/execute", body)
        assert 400 <= reply.status < 500, reply.body
        server.assert_clean(reply.body.decode())
        assert re.fullmatch(r"[0-9a-f]{16}", reply.error["error_id"])


class _BrokenPolicy(DefaultPolicy):
    """A server component that fails with a message full of secrets, as a buggy plugin might."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def plan(self, statement: Any, info: Any, principal: Any, **kw: Any) -> Any:  # what /execute asks
        raise RuntimeError(f"policy store at {self.secret} failed: SELECT * FROM grants")


def test_an_internal_error_answers_only_its_id_and_logs_the_trace(server: Server,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    url = server.engine.url.render_as_string(hide_password=False)
    with running_dbapi(server.engine, Base.metadata, policy=_BrokenPolicy(url)) as broken:
        api = RawApi(broken)
        reply = api.execute(sa.select(Account))
        assert (reply.status, reply.error["code"]) == (500, "internal_error")
        server.assert_clean(reply.body.decode())
        error_id = reply.error["error_id"]
        assert error_id in reply.error["message"]
        logged = _logged(caplog, error_id)
        assert url in logged and "Traceback" in logged
        with DBSession(database_access_isolation=True, database_api_host=broken.url, token=broken.token) as session, \
                pytest.raises(ServerError) as raised:
            session.execute(sa.select(Account))
        assert raised.value.error_id and raised.value.error_id in str(raised.value)
        server.assert_clean(str(raised.value))


@pytest.mark.postgresql
def test_a_dead_database_reveals_no_host_port_or_name(caplog: pytest.LogCaptureFixture, pg_url: sa.URL) -> None:
    caplog.set_level(logging.INFO, logger="dbapi_server")
    name = f"{pg_url.database}_dead"
    admin = guard.exempt(sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT"))
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        engine = make_engine(pg_url.set(database=name, password=PASSWORD), Base.metadata)
        with running_dbapi(engine, Base.metadata) as running:
            api = RawApi(running)
            assert api.execute(sa.select(Account)).status == 200
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
            secrets = [*secrets_of(engine), PASSWORD, name]
            for expect in ("terminating connection", name):  # the lost connection, then connecting
                reply = api.execute(sa.select(Account))            # to a database that is gone
                assert reply.status in (422, 503), reply.body
                for marker in (*NEVER, *secrets):
                    assert marker not in reply.body.decode(), (marker, reply.body)
                if reply.status == 422:
                    assert reply.error["message"].startswith("The DB-API lost or could not open")
                    assert expect in _logged(caplog, reply.error["error_id"])  # the log has the detail
            health = api.get("/health")
            assert health.status == 503 and name not in health.body.decode()
            with DBSession(database_access_isolation=True, database_api_host=running.url,
                           token=running.token) as session, pytest.raises(sa.exc.OperationalError) as raised:
                session.execute(sa.select(Account))
            for marker in secrets:
                assert marker not in str(raised.value)
            _error_id(raised.value)
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
