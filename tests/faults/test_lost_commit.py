"""A commit (or statement) whose request or answer is lost: the client learns the true outcome.

A real TCP proxy sits between the client and a real ``dbapi-server serve`` process. The client's
transport retries; the server's transaction ids, sequence numbers and remembered outcomes must
turn every retry into the original answer: the work is applied exactly once and a committed
transaction is never reported as failed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from dbsession import DBSession

from .conftest import entries, isolated
from .models import Entry
from .processes import ServerProcess
from .proxy import FaultProxy

pytestmark = pytest.mark.postgresql


@pytest.fixture(scope="module")
def server(database: sa.Engine, pg_url: sa.URL, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with database.begin() as conn:  # commits of rows noted 'slow' take half a second
        conn.exec_driver_sql("""
            CREATE FUNCTION fault_slow_commit() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$""")
        conn.exec_driver_sql("""
            CREATE CONSTRAINT TRIGGER fault_slow_commit AFTER INSERT OR UPDATE ON fault_entries
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.note = 'slow')
            EXECUTE FUNCTION fault_slow_commit()""")
    server = ServerProcess.start(pg_url, tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[FaultProxy]:
    proxy = FaultProxy(("127.0.0.1", server.port))
    yield proxy
    proxy.close()


@pytest.fixture
def account(database: sa.Engine, ref: str) -> str:
    with database.begin() as conn:
        conn.execute(sa.insert(Entry).values(ref=ref, amount=100))
    return ref


def credit(session: DBSession, ref: str, amount: int, note: str = "") -> None:
    """Not idempotent on purpose: applied twice, the balance shows it."""
    session.execute(sa.update(Entry).where(Entry.ref == ref).values(amount=Entry.amount + amount, note=note))


@pytest.mark.parametrize("fault", ["request", "response"])
@pytest.mark.parametrize("target", ["/commit", "/execute"])
def test_lost_request_or_answer_is_applied_exactly_once(
        proxy: FaultProxy, clients: list[DBSession], database: sa.Engine, account: str,
        fault: str, target: str) -> None:
    session = isolated(clients, proxy.url)
    credit(session, account, 5)  # opens the server transaction
    proxy.arm(fault, target)
    credit(session, account, 7)
    session.commit()  # returns: the client was told the truth, "committed"
    assert [f for f, _ in proxy.fired] == [fault]
    assert target in proxy.fired[0][1]
    assert entries(database, account) == [(account, 112)]


def test_cut_while_the_server_is_still_committing(
        proxy: FaultProxy, clients: list[DBSession], database: sa.Engine, account: str,
        server: ServerProcess) -> None:
    """The retry arrives while the first commit is still running (it takes 0.5 s here)."""
    session = isolated(clients, proxy.url)
    credit(session, account, 5, note="slow")
    proxy.arm("cut", "/commit")
    session.commit()  # the retry waits for the running commit and answers its outcome
    assert proxy.fired and proxy.fired[0][0] == "cut"
    assert entries(database, account) == [(account, 105)]
    assert "Traceback" not in server.log.read_text()


def test_new_rows_of_a_lost_commit_exist_once(
        proxy: FaultProxy, clients: list[DBSession], database: sa.Engine, ref: str) -> None:
    session = isolated(clients, proxy.url)
    session.add_all([Entry(ref=f"{ref}-a", amount=1), Entry(ref=f"{ref}-b", amount=2)])
    proxy.arm("response", "/commit")
    session.commit()
    assert entries(database, ref) == [(f"{ref}-a", 1), (f"{ref}-b", 2)]
    assert session.get(Entry, session.scalars(sa.select(Entry.id).where(Entry.ref == f"{ref}-a")).one()).amount == 1
