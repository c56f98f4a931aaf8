"""Property: under the worker policy, no generated statement reveals or changes anything beyond the
worker's grants - on SQLite, PostgreSQL and MariaDB, against ``dbapi-server serve`` in its own process.

The worker (``examples/policies/airflow_worker.toml``, dag run etl/r1) may read its own run's rows of
``dag_run`` (not ``conf``), ``task_instance`` and ``xcom``, and ``variable`` (not ``description``);
it may update ``task_instance.state`` / ``hostname`` and insert and delete ``xcom`` rows of its run.
Every value outside that is marked (``_worker_fuzz.hide_rows``), and a second database of the same
kind holds exactly what the worker may read (``fill_visible``: its run's rows, hidden columns NULL,
unreadable tables empty). For every statement the generators of ``_statement_gen`` make (DML
wherever a statement can nest, every way a name reaches the database, every node repeated):

- an answer equals, as a multiset of rows, what the same statement answers on that copy - so it
  reveals nothing a database holding only the worker's grants would not;
- no answer and no error message holds a marked value;
- after the statement and a COMMIT, the database is unchanged outside the worker's grants (what
  changed inside them is put back, so that the copy stays exact);
- the server never answers 5xx.

``DBSESSION_RULES_EXAMPLES`` (default 40) sets the examples per generator and database; a CI step
runs more (``DBSESSION_RULES_EXAMPLES=600``). The counts per outcome are printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dbsession import DBSession, guard
from dbsession.exceptions import DBAPIRequestError, ServerError
from query_translation import WIRE_VERSION, from_wire, to_wire
from query_translation.fingerprint import sql_fingerprint
from tests.conftest import MYSQL_ADMIN_URL, PG_ADMIN_URL, fresh_database
from tests.dbapi_server._support import RawApi
from tests.servers import DBAPIProcess, dbapi_process

from . import _statement_gen as gen
from ._policy_support import MINE, POLICY_FILE, Base, TaskInstance, XCom, make_engine
from ._worker_fuzz import HIDDEN_VALUES, fill_visible, hide_rows

EXAMPLES = int(os.environ.get("DBSESSION_RULES_EXAMPLES", "40"))
PROPERTY_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck))
METADATA = "tests.security._policy_support:Base.metadata"


@dataclass
class World:
    name: str
    engine: sa.Engine
    copy: sa.Engine  # what the worker may read, on a database of the same kind
    server: DBAPIProcess
    api: RawApi
    token: str
    baseline: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def worker(self) -> DBSession:
        return DBSession(database_access_isolation=True, database_api_host=self.server.url, token=self.token)


@contextlib.contextmanager
def _second_database(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    if name == "sqlite":
        url: Any = f"sqlite:///{tmp_path_factory.mktemp('visible') / 'visible.sqlite'}"
        engine = guard.exempt(sa.create_engine(url))
        try:
            yield engine
        finally:
            engine.dispose()
        return
    admin, what, suffix = (PG_ADMIN_URL, "PostgreSQL", " WITH (FORCE)") if name == "postgresql" else \
        (MYSQL_ADMIN_URL, "MariaDB", "")
    with contextlib.contextmanager(fresh_database)(admin, what, suffix) as url:
        engine = guard.exempt(sa.create_engine(url))
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql),
                                        pytest.param("mariadb", marks=pytest.mark.mysql)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    engine = make_engine(request.param, request, tmp_path_factory)
    hide_rows(engine)
    try:
        with _second_database(request.param, tmp_path_factory) as copy, \
                dbapi_process(engine.url, METADATA, policy=POLICY_FILE, env={"DBAPI_DB_ROLES": "off"}) as server:
            fill_visible(engine, copy)
            token = server.mint(role="worker", **MINE)
            world = World(request.param, engine, copy, server, RawApi(server), token)  # type: ignore[arg-type]
            world.baseline = _everything(engine)
            yield world
            assert _everything(engine) == world.baseline
    finally:
        engine.dispose()


# -- the database, inside and outside the worker's grants --------------------------------------------
def _everything(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {t.name: sorted((tuple(r) for r in conn.execute(sa.select(t))), key=repr)
                for t in Base.metadata.sorted_tables}


def _mine(row: Any) -> bool:
    return (row.dag_id, row.run_id) == (MINE["dag_id"], MINE["run_id"])


def _outside(engine: sa.Engine) -> dict[str, list[Any]]:
    """Everything the worker may not change: all but its run's xcom rows and its task instances'
    state and hostname."""
    with engine.connect() as conn:
        out: dict[str, list[Any]] = {}
        for table in Base.metadata.sorted_tables:
            rows = []
            for row in conn.execute(sa.select(table)):
                if table.name == "xcom" and _mine(row):
                    continue
                values = row._asdict()
                if table.name == "task_instance" and _mine(row):
                    values.update(state=None, hostname=None)
                rows.append(tuple(values.values()))
            out[table.name] = sorted(rows, key=repr)
        return out


def _restore(world: World) -> None:
    """Put back what an allowed write changed inside the grants (the copy must stay exact)."""
    if _everything(world.engine) == world.baseline:
        return
    xcom, ti = XCom.__table__, TaskInstance.__table__  # type: ignore[attr-defined]
    with world.engine.begin() as conn:
        conn.execute(sa.delete(xcom).where(xcom.c.dag_id == MINE["dag_id"], xcom.c.run_id == MINE["run_id"]))
        mine = [dict(zip(xcom.c.keys(), row, strict=True)) for row in world.baseline["xcom"]]
        conn.execute(sa.insert(xcom), [r for r in mine if (r["dag_id"], r["run_id"]) == (MINE["dag_id"],
                                                                                        MINE["run_id"])])
        for row in world.baseline["task_instance"]:
            values = dict(zip(ti.c.keys(), row, strict=True))
            conn.execute(sa.update(ti).where(ti.c.id == values["id"]).values(state=values["state"],
                                                                             hostname=values["hostname"]))
    world.counts["writes inside the grants, put back"] += 1
    assert _everything(world.engine) == world.baseline


def _no_marker(text: str) -> None:
    for marker in HIDDEN_VALUES:
        assert marker not in text, f"leaks {marker!r}: {text[:600]}"


# -- running one statement -----------------------------------------------------------------------------
def _compiles(world: World, stmt: Any) -> bool:
    """Whether the client can compile *stmt* at all (what it cannot, it never sends)."""
    try:
        stmt.compile(dialect=world.engine.dialect)
    except sa.exc.CompileError:
        return False
    return True


def _run(world: World, family: str, stmt: Any) -> None:
    """*stmt* as the worker, then COMMIT; the answer against the copy, the database against before."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sa.exc.SAWarning)  # cartesian products are statements too
        if not _compiles(world, stmt):
            world.counts[f"{family}: not compilable on {world.name} (not sent)"] += 1
            assume(False)
        _run_compilable(world, family, stmt)


def _run_compilable(world: World, family: str, stmt: Any) -> None:
    before = _outside(world.engine)
    rows: list[Any] | None = None
    try:
        with world.worker() as s:
            result = s.execute(stmt)
            rows = [tuple(r) for r in result.all()] if getattr(result, "returns_rows", True) else None
            s.commit()
        outcome = "200"
    except ServerError as exc:  # 5xx: a crash is never the caller's fault, nor an answer
        raise AssertionError(f"5xx for {family}: {exc}") from exc
    except DBAPIRequestError as exc:
        _no_marker(str(exc))
        outcome = f"{exc.status} {exc.code}"
    except sa.exc.DBAPIError as exc:  # the database's own error, as the client raises it
        _no_marker(str(exc))
        outcome = "database error"
    except sa.exc.SQLAlchemyError as exc:  # the client could not compile it: nothing was sent
        outcome = f"client {type(exc).__name__}"
    world.counts[f"{family}: {outcome}"] += 1
    assert _outside(world.engine) == before, f"{family} changed the database outside the grants"
    if rows is not None:
        _no_marker(repr(rows))
        if isinstance(stmt, (sa.Select, sa.CompoundSelect)):
            with world.copy.connect() as conn:
                want = [tuple(r) for r in conn.execute(stmt).all()]
            assert sorted(map(repr, rows)) == sorted(map(repr, want)), \
                f"{family}: the answer differs from the worker's copy"
            world.counts[f"{family}: answer equals the copy's"] += 1
    _restore(world)


def _report(world: World, family: str) -> None:
    counts = {k: v for k, v in sorted(world.counts.items()) if k.startswith(family)}
    print(f"\nstatement property summary: {json.dumps({'database': world.name, 'family': family, 'examples': EXAMPLES, 'outcomes': counts})}")
    directory = os.environ.get("DBSESSION_FUZZ_REPORT")
    if directory:
        path = os.path.join(directory, f"statement-property-{world.name}-{family}.json")
        with open(path, "w") as out:
            json.dump({"database": world.name, "family": family, "outcomes": counts}, out, indent=1)


# -- the properties ------------------------------------------------------------------------------------
@PROPERTY_SETTINGS
@given(data=st.data())
def _nested_dml(world: World, data: st.DataObject) -> None:
    _run(world, "nested_dml", data.draw(gen.nested_dml(), label="statement"))


def test_dml_nested_anywhere_changes_nothing_outside_the_grants(world: World,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    _nested_dml(world)
    with capsys.disabled():
        _report(world, "nested_dml")


@PROPERTY_SETTINGS
@given(data=st.data())
def _wire_slots(world: World, data: st.DataObject) -> None:
    base, document = data.draw(gen.dml_in_wire_slots(to_wire), label="document")
    stmt = {"version": WIRE_VERSION, "statement": document}
    body: dict[str, Any] = {"stmt": stmt, "sql": "0" * 64, "params": []}
    try:  # the fingerprint of what it says, as an attacker computes it: the policy must meet it
        statement, _ = from_wire(stmt, Base.metadata)
        body["sql"] = sql_fingerprint(statement.compile(dialect=world.engine.dialect, column_keys=[]))
    except Exception:
        pass
    before = _outside(world.engine)
    reply = world.api.post("/execute", body, token=world.token)
    assert reply.status < 500, f"5xx for DML in a {base} slot: {reply.body[:300]!r}"
    _no_marker(reply.body.decode("utf-8", "replace"))
    code = reply.json.get("error", {}).get("code", "") if reply.status != 200 else ""
    world.counts[f"wire_slots: {reply.status} {code}".rstrip()] += 1
    assert _outside(world.engine) == before, f"DML in a {base} slot changed the database outside the grants"
    _restore(world)


def test_dml_in_every_wire_slot_changes_nothing_outside_the_grants(world: World,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _wire_slots(world)
    with capsys.disabled():
        _report(world, "wire_slots")


@PROPERTY_SETTINGS
@given(data=st.data())
def _names(world: World, data: st.DataObject) -> None:
    stmt = data.draw(gen.names(), label="statement")
    _run(world, "names", stmt)


def test_every_way_a_name_reaches_the_database_reveals_nothing_beyond_the_grants(
        world: World, capsys: pytest.CaptureFixture[str]) -> None:
    _names(world)
    with capsys.disabled():
        _report(world, "names")


@PROPERTY_SETTINGS
@given(data=st.data())
def _repeats(world: World, data: st.DataObject) -> None:
    _run(world, "repeats", data.draw(gen.repeats(), label="statement"))


def test_a_repeated_element_reveals_nothing_beyond_the_grants(world: World,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _repeats(world)
    with capsys.disabled():
        _report(world, "repeats")
