"""The instance dies between COMMIT and its answer; the client's retry learns "committed" elsewhere.

Three ``dbapi-server serve`` instances behind HAProxy, each with the test hook
``DBAPI_TEST_HOOK_KILL_AFTER_COMMIT`` (honoured because ``DBAPI_TEST_HOOKS=enable``): after
committing a transaction of the subject ``victim`` the instance SIGKILLs itself, before writing the
answer. HAProxy answers the client 502; the client asks again (its commit keeps asking until its
deadline); the retry reaches another instance - the dead one's address refuses, HAProxy
redispatches - which does not hold the transaction and answers from the commit outcome table:
``committed``. The work is in the database exactly once, and ``commit()`` returns normally.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbsession import DBSession
from tests.faults.conftest import entries
from tests.faults.models import Entry
from tests.servers import dbapi_process

from .conftest import Cluster, cluster
from .test_load_balancer import metric

pytestmark = pytest.mark.postgresql

HOOKED = {"DBAPI_TEST_HOOKS": "enable", "DBAPI_TEST_HOOK_KILL_AFTER_COMMIT": "victim"}


@pytest.fixture
def hooked(pg_url: sa.URL, database: sa.Engine, tmp_path: Path) -> Iterator[Cluster]:
    with cluster(pg_url, tmp_path, size=3, env=HOOKED) as running:
        yield running


def dead(cluster: Cluster) -> list[str]:
    """Instances that have exited (marked stopped, so the fixture expects it)."""
    found = []
    for name, instance in cluster.instances.items():
        if instance.process.poll() is not None:
            instance.kill()  # marks it stopped; it is gone already
            found.append(name)
    return found


def answered_elsewhere(cluster: Cluster, died: str) -> str:
    """The instance that answered (200) the retry of the commit *died* ran: found by request id."""
    killed = [json.loads(line) for line in cluster.instances[died].output().splitlines()
              if "killing this instance after the commit" in line]
    assert len(killed) == 1, killed
    request_id = killed[0]["request_id"]
    answered = [name for name, p in cluster.instances.items() if name != died
                for line in p.output().splitlines()
                if line.startswith("{") and (record := json.loads(line)).get("request_id") == request_id
                and record.get("status") == 200 and record.get("kind") == "commit"]
    assert len(answered) == 1, answered
    return answered[0]


def test_killed_between_commit_and_answer_the_retry_learns_committed_exactly_once(
        hooked: Cluster, clients: list[DBSession], database: sa.Engine) -> None:
    ref = f"crash-{uuid.uuid4().hex[:8]}"
    with database.begin() as conn:
        conn.execute(sa.insert(Entry).values(ref=f"{ref}-account", amount=100))
    victim = hooked.session(clients, subject="victim")
    bystander = hooked.session(clients, subject="bystander")

    # new rows: committed, the instance dies before answering, the client is told "committed"
    victim.add_all([Entry(ref=f"{ref}-a", amount=1), Entry(ref=f"{ref}-b", amount=2)])
    started = time.monotonic()
    victim.commit()
    first_death = dead(hooked)
    assert len(first_death) == 1, first_death
    assert answered_elsewhere(hooked, first_death[0]) != first_death[0]
    assert time.monotonic() - started < 25  # well within the commit's deadline (30 s)

    # not idempotent: an increment applied twice would show
    victim.execute(sa.update(Entry).where(Entry.ref == f"{ref}-account").values(amount=Entry.amount + 5))
    victim.commit()
    second_death = [name for name in dead(hooked) if name not in first_death]
    assert len(second_death) == 1, second_death
    answered_elsewhere(hooked, second_death[0])

    assert entries(database, ref) == [(f"{ref}-a", 1), (f"{ref}-account", 105), (f"{ref}-b", 2)]
    # the session goes on (reads its own committed rows), and so do other callers
    assert victim.scalar(sa.select(Entry.amount).where(Entry.ref == f"{ref}-account")) == 105
    victim.rollback()
    bystander.add(Entry(ref=f"{ref}-c", amount=3))
    bystander.commit()
    assert entries(database, ref)[-1] == (f"{ref}-c", 3)
    answered = [answered_elsewhere(hooked, first_death[0]), answered_elsewhere(hooked, second_death[0])]
    settled = sum(metric(hooked.instances[name].url, "dbapi_commits_settled_total", 'outcome="committed"')
                  for name in set(answered) if hooked.instances[name].process.poll() is None)
    assert settled >= 1  # the survivors answered from the outcome table
    survivor = next(p for name, p in hooked.instances.items() if name not in first_death + second_death)
    assert "Traceback" not in survivor.output()


def test_the_hook_is_ignored_unless_test_hooks_are_enabled(
        pg_url: sa.URL, database: sa.Engine, clients: list[DBSession]) -> None:
    env = {"DBAPI_TEST_HOOK_KILL_AFTER_COMMIT": "victim"}
    with dbapi_process(pg_url, "tests.faults.models:Base.metadata", env=env) as server:
        session = DBSession(database_access_isolation=True, database_api_host=server.url,
                            token=server.mint("victim"))
        clients.append(session)
        ref = f"nohook-{uuid.uuid4().hex[:8]}"
        session.add(Entry(ref=ref, amount=1))
        session.commit()
        assert server.process.poll() is None
        assert "ignored: test hooks are not enabled" in server.output()
    assert entries(database, ref) == [(ref, 1)]
