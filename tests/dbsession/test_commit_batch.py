"""The commit travelling with the last flush (``dbsession._commit_batch``), differentially.

Twin databases - one for a plain ``Session`` on the driver, one behind a DB-API in its own
process - get the same rows; each scenario runs on both and must give the same outcome: the same
exception class from the same call (``StaleDataError`` with the ORM's message word for word; the
same ``IntegrityError`` statement and parameters), the same session state after the failure and
after the rollback, the same rows in the database. The isolated side also counts its HTTP requests:
get + modify + commit is two (a read, then the UPDATE and the COMMIT in one ``POST /batch``), and
the cases the module docstring excludes take the ordinary path.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm import exc as orm_exc

from dbsession import DBSession, guard
from dbsession.transport import Transport
from tests.conftest import MYSQL_ADMIN_URL, PG_ADMIN_URL, fresh_database
from tests.dbsession._batch_models import Item, Part, metadata
from tests.servers import DBAPIProcess, dbapi_process

METADATA = "tests.dbsession._batch_models:metadata"


@dataclass
class Twins:
    backend: str
    direct: sa.Engine  # the direct side's database
    mirror: sa.Engine  # the isolated side's database, seen directly (setup and checks)
    server: DBAPIProcess

    def sessions(self) -> tuple[Callable[[], Session], Callable[[], Session]]:
        return (sessionmaker(bind=self.direct),
                sessionmaker(class_=DBSession, database_access_isolation=True, database_api_host=self.server.url,
                             token=self.server.token))


@contextlib.contextmanager
def _database(backend: str, tmp: Any, name: str) -> Iterator[sa.URL]:
    if backend == "sqlite":
        yield sa.make_url(f"sqlite:///{tmp / (name + '.sqlite')}")
    else:
        admin = PG_ADMIN_URL if backend == "postgresql" else MYSQL_ADMIN_URL
        yield from fresh_database(admin, backend, drop_suffix=" WITH (FORCE)" if backend == "postgresql" else "")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql),
                                        pytest.param("mariadb", marks=pytest.mark.mysql)])
def twins(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twins]:
    tmp = tmp_path_factory.mktemp("batch")
    with contextlib.ExitStack() as stack:
        direct_url = stack.enter_context(_database(request.param, tmp, "direct"))
        mirror_url = stack.enter_context(_database(request.param, tmp, "mirror"))
        engines = [guard.exempt(sa.create_engine(u)) for u in (direct_url, mirror_url)]
        for engine in engines:
            stack.callback(engine.dispose)
            metadata.create_all(engine)
        server = stack.enter_context(dbapi_process(mirror_url, METADATA))
        yield Twins(request.param, engines[0], engines[1], server)


@contextlib.contextmanager
def counting() -> Iterator[Counter[str]]:
    """The isolated client's HTTP requests by route while active."""
    counts: Counter[str] = Counter()
    original = Transport._request

    def wrapper(self: Any, method: str, path: str, *args: Any, **kw: Any) -> Any:
        counts[path.rsplit("/", 1)[-1] if path.startswith("/transactions/") else path.lstrip("/")] += 1
        return original(self, method, path, *args, **kw)

    Transport._request = wrapper  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        Transport._request = original  # type: ignore[method-assign]


def reset(engine: sa.Engine, *rows: tuple[int, str, int]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(Item))
        conn.execute(sa.delete(Part))
        if rows:
            conn.execute(sa.insert(Item), [{"id": i, "name": n, "qty": q} for i, n, q in rows])


def rows(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(Item.id, Item.name, Item.qty).order_by(Item.id))]


def state_of(session: Session, objects: list[Any]) -> dict[str, Any]:
    """What an application can observe of the session and its objects (without loading)."""
    seen: dict[str, Any] = {"in_transaction": session.in_transaction(), "is_active": session.is_active,
                            "dirty": len(session.dirty), "new": len(session.new)}
    for n, obj in enumerate(objects):
        info = sa.inspect(obj)
        seen[f"obj{n}"] = (info.persistent, info.detached, info.transient, obj in session,
                           sorted(info.unloaded), {k: v for k, v in info.dict.items() if not k.startswith("_")})
    return seen


def outcome(exc: BaseException | None) -> tuple[Any, ...]:
    if exc is None:
        return (None,)
    if isinstance(exc, sa.exc.DBAPIError):
        return (type(exc), exc.statement, exc.params, exc.connection_invalidated)
    return (type(exc), str(exc))


def run(scenario: Callable[[Session, sa.Engine], list[Any]], make: Callable[[], Session],
        engine: sa.Engine, counts: Counter[str] | None = None) -> dict[str, Any]:
    """Run *scenario* (it ends with the commit); observe the outcome, the state, and after a rollback.

    *counts*, if given, is left holding the requests of the scenario alone.
    """
    observed: dict[str, Any] = {}
    with make() as session:
        objects: list[Any] = []
        try:
            objects = scenario(session, engine)
            error = None
        except Exception as exc:  # the comparison is the point: any class, from the same call
            error = exc
            objects = getattr(exc, "_objects", objects)
        if counts is not None:
            scenario_counts = Counter(counts)
        observed["commit"] = outcome(error)
        observed["after"] = state_of(session, objects)
        if error is not None:
            try:
                session.commit()  # a failed flush needs a rollback first
                observed["again"] = (None,)
            except Exception as exc:
                observed["again"] = (type(exc),)
            session.rollback()
        observed["rolled_back"] = state_of(session, objects)
        reloaded = []
        for obj in objects:
            try:
                reloaded.append((obj.id, obj.name, obj.qty) if isinstance(obj, Item) else (obj.id,))
            except Exception as exc:
                reloaded.append((type(exc).__name__,))
        observed["reloaded"] = reloaded
    observed["database"] = rows(engine)
    if counts is not None:
        counts.clear()
        counts.update(scenario_counts)
    return observed


def differential(twins: Twins, scenario: Callable[[Session, sa.Engine], list[Any]],
                 *seed: tuple[int, str, int]) -> tuple[dict[str, Any], Counter[str]]:
    make_direct, make_isolated = twins.sessions()
    reset(twins.direct, *seed)
    reset(twins.mirror, *seed)
    direct = run(scenario, make_direct, twins.direct)
    with counting() as counts:
        isolated = run(scenario, make_isolated, twins.mirror, counts)
    assert isolated == direct
    return direct, counts


def carried(scenario: Callable[[Session, sa.Engine], list[Any]]) -> Callable[[Session, sa.Engine], list[Any]]:
    """*scenario*, with the objects it loaded kept on the exception it raised (for the observation)."""
    def wrapped(session: Session, engine: sa.Engine) -> list[Any]:
        objects: list[Any] = []
        try:
            return scenario(session, engine, objects)  # type: ignore[call-arg]
        except Exception as exc:
            exc._objects = objects  # type: ignore[attr-defined]
            raise
    return wrapped


# -- the scenarios -----------------------------------------------------------------------------------
@carried
def modify_commit(session: Session, engine: sa.Engine, objects: list[Any]) -> list[Any]:
    item = session.get(Item, 1)
    objects.append(item)
    item.qty += 1
    session.commit()
    return objects


@carried
def stale(session: Session, engine: sa.Engine, objects: list[Any]) -> list[Any]:
    item = session.get(Item, 1)
    objects.append(item)
    with engine.begin() as conn:  # another process deletes the row behind the session's back
        conn.execute(sa.delete(Item).where(Item.id == 1))
    item.qty += 1
    session.commit()
    return objects


@carried
def duplicate(session: Session, engine: sa.Engine, objects: list[Any]) -> list[Any]:
    first, second = session.get(Item, 1), session.get(Item, 2)
    objects += [first, second]
    first.qty = 10
    second.name = "one"  # the unique name the first row has
    session.commit()
    return objects


@carried
def stale_second(session: Session, engine: sa.Engine, objects: list[Any]) -> list[Any]:
    first, second = session.get(Item, 1), session.get(Item, 2)
    objects += [first, second]
    with engine.begin() as conn:
        conn.execute(sa.delete(Item).where(Item.id == 2))
    first.qty, second.qty = 11, 12
    session.commit()
    return objects


@carried
def flushed_then_committed(session: Session, engine: sa.Engine, objects: list[Any]) -> list[Any]:
    first = session.get(Item, 1)
    objects.append(first)
    first.qty = 5
    session.flush()  # an earlier flush in the same transaction: the batch continues it
    second = session.get(Item, 2)
    objects.append(second)
    second.name = "two-bis"
    first.name = "uno"
    session.commit()
    return objects


@carried
def many_rows(session: Session, engine: sa.Engine, objects: list[Any]) -> list[Any]:
    items = session.scalars(sa.select(Item).order_by(Item.id)).all()
    objects += items
    for item in items:
        item.qty += 100  # one executemany UPDATE with three parameter sets
    session.commit()
    return objects


SEED = ((1, "one", 1), (2, "two", 2), (3, "three", 3))


def test_get_modify_commit_is_two_requests(twins: Twins) -> None:
    differential(twins, modify_commit, *SEED)  # the first also does the handshake
    observed, counts = differential(twins, modify_commit, *SEED)
    assert observed["database"][0] == (1, "one", 2)
    assert counts == Counter({"execute": 1, "batch": 1})


def test_a_stale_row_raises_stale_data_error_from_commit(twins: Twins) -> None:
    observed, counts = differential(twins, stale, *SEED)
    assert observed["commit"][0] is orm_exc.StaleDataError
    assert observed["again"] == (sa.exc.PendingRollbackError,)
    assert counts["batch"] == 1 and counts["commit"] == 0


def test_a_unique_violation_raises_integrity_error_from_commit_and_commits_nothing(twins: Twins) -> None:
    observed, counts = differential(twins, duplicate, *SEED)
    assert observed["commit"][0] is sa.exc.IntegrityError
    assert observed["database"] == list(SEED)  # the first UPDATE, which matched, is not committed
    assert counts["batch"] == 1 and counts["commit"] == 0


def test_the_second_of_two_updates_stale(twins: Twins) -> None:
    observed, _ = differential(twins, stale_second, *SEED)
    assert observed["commit"][0] is orm_exc.StaleDataError
    assert observed["database"] == [SEED[0], SEED[2]]


def test_an_earlier_flush_in_the_transaction(twins: Twins) -> None:
    observed, counts = differential(twins, flushed_then_committed, *SEED)
    assert observed["commit"] == (None,)
    assert counts["batch"] == 1 and counts["commit"] == 0


def test_an_earlier_flush_then_a_failing_batch_rolls_back_both(twins: Twins) -> None:
    @carried
    def scenario(session: Session, engine: sa.Engine, objects: list[Any]) -> list[Any]:
        first, second = session.get(Item, 1), session.get(Item, 2)
        objects += [first, second]
        first.qty = 50
        session.flush()
        second.name = "one"
        session.commit()
        return objects

    observed, _ = differential(twins, scenario, *SEED)
    assert observed["commit"][0] is sa.exc.IntegrityError
    assert observed["database"] == list(SEED)


def test_executemany_update(twins: Twins) -> None:
    observed, counts = differential(twins, many_rows, *SEED)
    assert [r[2] for r in observed["database"]] == [101, 102, 103]
    assert counts["batch"] == 1 and counts["commit"] == 0


def test_a_session_with_new_objects_takes_the_ordinary_path(twins: Twins) -> None:
    @carried
    def scenario(session: Session, engine: sa.Engine, objects: list[Any]) -> list[Any]:
        item = session.get(Item, 1)
        objects.append(item)
        item.qty = 7
        session.add(Part(id=1, label="new"))
        session.commit()
        return objects

    _, counts = differential(twins, scenario, *SEED)
    assert counts["batch"] == 0 and counts["commit"] == 1


def test_a_persistence_listener_takes_the_ordinary_path(twins: Twins) -> None:
    seen: list[str] = []

    def listener(mapper: Any, connection: Any, target: Any) -> None:
        seen.append(target.name)

    event.listen(Part, "after_update", listener)  # any mapper of the registry counts
    try:
        observed, counts = differential(twins, duplicate, *SEED)
    finally:
        event.remove(Part, "after_update", listener)
    assert observed["commit"][0] is sa.exc.IntegrityError
    assert counts["batch"] == 0 and counts["commit"] == 0 and counts["rollback"] == 1


def test_a_commit_that_fails_after_the_flush_raises_from_the_commit(twins: Twins) -> None:
    """A deferred unique constraint: every UPDATE matches, the COMMIT fails (PostgreSQL)."""
    if twins.backend != "postgresql":
        pytest.skip("deferrable constraints: PostgreSQL")
    for engine in (twins.direct, twins.mirror):
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE batch_parts ADD COLUMN IF NOT EXISTS code integer")
            conn.exec_driver_sql("ALTER TABLE batch_parts DROP CONSTRAINT IF EXISTS batch_parts_label_key")
            conn.exec_driver_sql("ALTER TABLE batch_parts ADD CONSTRAINT batch_parts_label_key UNIQUE (label) "
                                 "DEFERRABLE INITIALLY DEFERRED")

    @carried
    def scenario(session: Session, engine: sa.Engine, objects: list[Any]) -> list[Any]:
        item = session.get(Item, 1)
        objects.append(item)
        with engine.begin() as conn:
            conn.execute(sa.insert(Part), [{"id": 1, "label": "a"}, {"id": 2, "label": "b"}])
        part = session.get(Part, 2)
        objects.append(part)
        part.label = "a"
        session.commit()
        return objects

    try:
        observed, counts = differential(twins, scenario, *SEED)
    finally:
        for engine in (twins.direct, twins.mirror):
            with engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE batch_parts DROP CONSTRAINT IF EXISTS batch_parts_label_key")
    assert observed["commit"][0] is sa.exc.IntegrityError
    assert counts["batch"] == 1 and counts["commit"] == 0


@pytest.mark.postgresql
def test_a_committing_batch_asked_again_of_another_instance_is_answered_from_the_outcome_table(
        pg_url: sa.URL) -> None:
    """Its first instance committed and died before answering; the retry reaches another one (a
    load balancer's choice): that instance runs nothing twice - the outcome row the commit wrote
    tells it the batch committed."""
    import urllib3

    from dbsession.session import release_api_host
    from tests.servers import running_dbapi

    engines = [guard.exempt(sa.create_engine(pg_url)) for _ in range(2)]
    metadata.create_all(engines[0])
    reset(engines[0], *SEED)
    sent: list[dict[str, Any]] = []
    original = Transport.post

    def keep(self: Transport, path: str, payload: Any, **kw: Any) -> Any:
        if path == "/batch":
            sent.append(orjson.loads(orjson.dumps(payload)))
        return original(self, path, payload, **kw)

    try:
        with running_dbapi(engines[0], metadata) as first, running_dbapi(engines[1], metadata) as second:
            Transport.post = keep  # type: ignore[method-assign]
            try:
                with DBSession(database_access_isolation=True, database_api_host=first.url,
                               token=first.token) as session:
                    modify_commit(session, engines[0])
            finally:
                Transport.post = original  # type: ignore[method-assign]
            release_api_host(first.url)
            assert rows(engines[0])[0] == (1, "one", 2) and len(sent) == 1 and sent[0].get("begin")
            answer = urllib3.request("POST", f"{second.url}/dbapi/v1/batch", body=orjson.dumps(sent[0]),
                                     headers={"Authorization": f"Bearer {second.token}",
                                              "Content-Type": "application/json"})
            assert (answer.status, orjson.loads(answer.data)) == (200, {"outcome": "committed"})
            assert rows(engines[0])[0] == (1, "one", 2)  # applied once
    finally:
        for engine in engines:
            engine.dispose()
