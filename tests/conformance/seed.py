"""Deterministic seed data for the conformance databases.

``seed(session)`` inserts the same rows, in the same order, every time: no
``now()`` from Python, fixed UUIDs, autoincrement ids assigned by the
database in insertion order (so that, after a reset that restarts the
identity sequences, ids are equal on database A and database B).

Seeded ids (relied on by the corpus):

* ``dag_run.id``      1..12   (4 x example_bash, 3 x example_python, 3 x tutorial, 2 x etl_daily)
* ``task_instance``   60 rows  (5 per run: extract/transform/load at map_index -1, mapped at 0 and 1)
* ``xcom.id``         1..20
* ``variable.id``     1..10
* ``connection.id``   1..6
* ``log.id``          1..25 (26..28 only where special floats are supported)
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import uuid
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .models import (
    Connection,
    Dag,
    DagRun,
    Log,
    TaskInstance,
    TaskState,
    Variable,
    XCom,
)

UTC = dt.UTC
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))  # +05:30
NST = dt.timezone(dt.timedelta(hours=-3, minutes=-30))  # -03:30

DAG_IDS = ("example_bash", "example_python", "tutorial", "etl_daily", "zz_unused")
RUNS_PER_DAG = {"example_bash": 4, "example_python": 3, "tutorial": 3, "etl_daily": 2}
RUN_STATES = ("success", "failed", "running", "queued", "success", "success")
TASKS = (("extract", -1), ("transform", -1), ("load", -1), ("mapped", 0), ("mapped", 1))
TZS = (UTC, IST, NST)
TI_STATES = (
    TaskState.SUCCESS,
    TaskState.FAILED,
    TaskState.RUNNING,
    TaskState.QUEUED,
    TaskState.UP_FOR_RETRY,
    TaskState.SKIPPED,
    None,
)


def run_id_for(dag_id: str, n: int) -> str:
    """The run_id of the n-th (0-based) seeded run of ``dag_id``."""
    kind = "manual" if n == 2 else "scheduled"
    return f"{kind}__2024-01-{n + 1:02d}T00:00:00+00:00"


def fixed_uuid(n: int) -> uuid.UUID:
    return uuid.UUID(int=(0x1234_5678_9ABC_4DEF_8000_0000_0000_0000 + n * 0x1_0001_0001))


def _dags() -> list[Dag]:
    return [
        Dag(
            dag_id="example_bash",
            is_paused=False,
            description="Bash example",
            created_at=dt.datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC),
            fileloc="/opt/dags/example_bash.py",
            owner="airflow",
        ),
        Dag(
            dag_id="example_python",
            is_paused=True,
            description=None,
            created_at=dt.datetime(2024, 1, 2, 10, 30, 15, 123456, tzinfo=IST),
            fileloc="/opt/dags/example_python.py",
            owner="airflow",
        ),
        Dag(
            dag_id="tutorial",
            is_paused=False,
            description="Tutorial — üñíçødé ✓ 日本語 \U0001f680",
            created_at=dt.datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=NST),
            fileloc="/opt/dags/tutorial.py",
            owner="alice",
        ),
        Dag(
            dag_id="etl_daily",
            is_paused=False,
            description="",
            created_at=dt.datetime(2024, 2, 29, 12, 0, 0, 500000, tzinfo=UTC),
            fileloc="/opt/dags/etl/daily.py",
            owner="bob",
        ),
        Dag(
            dag_id="zz_unused",
            is_paused=True,
            description="no runs at all; 100% unused_",
            created_at=dt.datetime(2020, 6, 15, 8, 0, 0, tzinfo=IST),
            fileloc="/opt/dags/zz_unused.py",
            owner="alice",
        ),
    ]


_CONFS = (
    {"param": 1, "flag": True},
    None,  # SQL NULL (conf has none_as_null=True)
    {"nested": {"list": [1, 2.5, "three", None, False]}, "unicode": "ñ日本"},
    [],
    {},
    {"z": 1, "a": 2, "m": [{"k": "v"}]},
)


def _runs() -> list[DagRun]:
    runs = []
    i = 0
    for dag_id in DAG_IDS:
        for n in range(RUNS_PER_DAG.get(dag_id, 0)):
            tz = TZS[i % 3]
            runs.append(
                DagRun(
                    dag_id=dag_id,
                    run_id=run_id_for(dag_id, n),
                    state=RUN_STATES[i % len(RUN_STATES)],
                    execution_date=dt.datetime(2024, 1, n + 1, 0, 0, 0, i * 1000, tzinfo=tz),
                    data_interval_start=(
                        None if i % 5 == 4 else dt.datetime(2023, 12, 31 - n, 1, 2, 3, i * 7)
                    ),
                    conf=_CONFS[i % len(_CONFS)],
                    run_type="manual" if n == 2 else "scheduled",
                )
            )
            i += 1
    return runs


def _task_instances(runs: list[DagRun]) -> list[TaskInstance]:
    tis = []
    i = 0
    for run in runs:
        for task_id, map_index in TASKS:
            state = TI_STATES[i % len(TI_STATES)]
            tz = TZS[i % 3]
            started = state not in (TaskState.QUEUED, None)
            finished = started and state is not TaskState.RUNNING
            start = dt.datetime(2024, 1, 1 + i % 28, i % 24, i % 60, 0, i * 10, tzinfo=tz)
            tis.append(
                TaskInstance(
                    dag_id=run.dag_id,
                    task_id=task_id,
                    run_id=run.run_id,
                    map_index=map_index,
                    state=state,
                    try_number=i % 4,
                    start_date=start if started else None,
                    end_date=start + dt.timedelta(seconds=i * 1.5) if finished else None,
                    duration=(i * 1.5 if finished else None),
                    pool="default_pool" if i % 3 else "etl_pool",
                    priority_weight=(i * 7) % 11,
                    queued_dttm=(start - dt.timedelta(minutes=1)) if i % 4 else None,
                    hostname=None if i % 6 == 5 else f"worker-{i % 3}.example.com",
                    external_executor_id=fixed_uuid(i) if i % 2 == 0 else None,
                    note=(
                        None,
                        "",
                        "retry ✓",
                        "line1\nline2\ttab",
                        "quote ' and \" and \\",
                    )[i % 5],
                )
            )
            i += 1
    return tis


_XCOM_VALUES = (
    b"",
    b"\x00",
    b"\x00\xff\x80\x7f",
    b"plain ascii",
    "ünïcode".encode(),
    bytes(range(256)),
    b"\x80\x05\x95\x0b\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01K\x02e.",
)


def _xcoms(tis: list[TaskInstance]) -> list[XCom]:
    xcoms = []
    # every third task instance gets an xcom: 60 / 3 = 20 rows
    for i, ti in enumerate(tis[::3]):
        xcoms.append(
            XCom(
                dag_id=ti.dag_id,
                task_id=ti.task_id,
                run_id=ti.run_id,
                map_index=ti.map_index,
                key="return_value" if i % 4 else "custom_key",
                value=_XCOM_VALUES[i % len(_XCOM_VALUES)],
                timestamp=dt.datetime(2024, 3, 1 + i, 12, i, i, i * 111, tzinfo=TZS[i % 3]),
            )
        )
    return xcoms


def _variables() -> list[Variable]:
    vals = (
        ("api_url", "https://example.com/api", False, "The API"),
        ("empty", "", False, None),
        ("null_val", None, False, "val is NULL"),
        ("secret", "gAAAAABk-encrypted==", True, None),
        ("multiline", "a\nb\r\nc", False, ""),
        ("unicode", "Grüße, мир, 世界 \U0001f600", False, "unicode"),
        ("json_text", '{"a": [1, 2, {"b": null}]}', False, None),
        ("percent", "100% _done_ \\ back", True, "like-escape chars"),
        ("long", "x" * 5000, False, None),
        ("zz_last", "last", False, "sorts last"),
    )
    return [Variable(key=k, val=v, is_encrypted=e, description=d) for k, v, e, d in vals]


def _connections() -> list[Connection]:
    return [
        Connection(
            conn_id="postgres_default",
            conn_type="postgres",
            host="localhost",
            port=5432,
            extra={"sslmode": "disable", "options": ["-c", "search_path=public"]},
            password="p@ss",
        ),
        Connection(
            conn_id="mysql_default",
            conn_type="mysql",
            host="mysql",
            port=3306,
            extra=None,
            password=None,
        ),
        Connection(
            conn_id="http_default",
            conn_type="http",
            host="https://www.httpbin.org/",
            port=None,
            extra={"headers": {"X-Ünïcode": "✓"}, "timeout": 30.5, "verify": False},
            password="",
        ),
        Connection(
            conn_id="aws_default",
            conn_type="aws",
            host=None,
            port=None,
            extra=[1, "two", None],
            password=None,
        ),
        Connection(
            conn_id="sftp_x",
            conn_type="sftp",
            host="10.0.0.1",
            port=22,
            extra="just a string",
            password="x",
        ),
        Connection(
            conn_id="zz_empty",
            conn_type="generic",
            host="",
            port=0,
            extra={},
            password=None,
        ),
    ]


_AMOUNTS = (
    Decimal("12345678.1234"),
    Decimal("0.0100"),
    Decimal("-0.0001"),
    Decimal("0.0000"),
    None,
    Decimal("1.5000"),
    Decimal("-99999999.9999"),
    Decimal("42.0000"),
)
_DAYS = (
    dt.date(1, 1, 2),
    dt.date(9999, 12, 30),
    dt.date(2024, 2, 29),
    dt.date(1970, 1, 1),
    None,
    dt.date(2000, 1, 1),
)
_TIMES = (
    dt.time(0, 0, 0),
    dt.time(23, 59, 59, 999999),
    dt.time(12, 30, 0, 1),
    None,
    dt.time(6, 7, 8, 500000),
)
_RATIOS = (0.1, -1.5e-300, 1.7976931348623157e308, 0.0, None, 2.5, -0.5, 1 / 3)
_BIGS = (2**63 - 1, -(2**63), 0, None, 2**31, -1, 9007199254740993)
_MISSING = object()  # payload attribute not set at all -> SQL NULL
_PAYLOADS = (
    {"a": 1, "b": [1, 2]},
    None,  # JSON 'null' (none_as_null=False)
    _MISSING,  # SQL NULL
    [1, "two", 3.5, None, True],
    "just a string",
    1.5,
    True,
    {"nested": {"ü": [None, {"deep": "✓"}]}, "a": 2},
    0,
)
_EVENTS = ("trigger", "paused", "cli_task_run", "running", "success", "failed")
_OWNERS = ("airflow", "alice", None, "bob")
_LOG_DAGS = (
    "example_bash",
    "tutorial",
    None,
    "etl_daily",
    "example_python",
    "gone_dag",
)


def _logs(special_floats: bool) -> list[Log]:
    logs = []
    for i in range(25):
        kwargs: dict = {
            "dttm": dt.datetime(
                2024,
                5,
                1 + i,
                i % 24,
                (i * 7) % 60,
                (i * 13) % 60,
                i * 40001 % 1000000,
                tzinfo=TZS[i % 3],
            ),
            "event": _EVENTS[i % len(_EVENTS)],
            "dag_id": _LOG_DAGS[i % len(_LOG_DAGS)],
            "owner": _OWNERS[i % len(_OWNERS)],
            "extra": (None, "", "extra ✓ 日本", '{"k": 1}', "O'Reilly")[i % 5],
            "amount": _AMOUNTS[i % len(_AMOUNTS)],
            "day": _DAYS[i % len(_DAYS)],
            "at_time": _TIMES[i % len(_TIMES)],
            "ratio": _RATIOS[i % len(_RATIOS)],
            "big": _BIGS[i % len(_BIGS)],
        }
        if i >= 20:  # contiguous, so the seed needs few INSERT statements
            kwargs["event_seq"] = i  # otherwise the server default (7) applies
        payload = _PAYLOADS[i % len(_PAYLOADS)]
        if payload is not _MISSING:
            kwargs["payload"] = payload
        logs.append(Log(**kwargs))
    if special_floats:
        for i, value in enumerate((float("inf"), float("-inf"), float("nan"))):
            logs.append(
                Log(
                    dttm=dt.datetime(2024, 6, 1, 0, 0, i, tzinfo=UTC),
                    event="special_float",
                    ratio=value,
                    payload={"i": i},
                )
            )
    return logs


def _column_values(obj: object) -> dict:
    """The column attributes that were set on a (transient) ORM object."""
    state = sa.inspect(obj)
    return {k: v for k, v in state.dict.items() if k in state.mapper.column_attrs}


@functools.cache
def seed_rows(special_floats: bool) -> tuple[tuple[sa.Table, tuple[dict, ...]], ...]:
    """``(table, rows)`` pairs in insertion (dependency) order.

    Built once from ORM objects, so an attribute that was never set (e.g.
    ``log.payload`` -> SQL NULL, ``log.event_seq`` -> server default) stays absent
    from its row.
    """
    runs = _runs()
    tis = _task_instances(runs)
    groups = (_dags(), runs, tis, _xcoms(tis), _variables(), _connections(), _logs(special_floats))
    return tuple((type(objs[0]).__table__, tuple(_column_values(o) for o in objs)) for objs in groups)


def seed(session: Session, *, special_floats: bool | None = None) -> None:
    """Insert the deterministic seed rows and commit.

    Rows go in through Core executemany INSERTs, one per run of rows with the
    same columns (fast enough to re-seed after every write operation); ids are
    assigned by the database in row order.  ``special_floats`` adds three
    ``log`` rows with inf / -inf / nan ratios; by default it is on unless the
    session is bound to MySQL / MariaDB, which cannot store them.
    """
    if special_floats is None:
        special_floats = session.get_bind().dialect.name not in ("mysql", "mariadb")
    for table, rows in seed_rows(special_floats):
        for _keys, run in itertools.groupby(rows, key=lambda r: tuple(r)):
            session.execute(table.insert(), [dict(r) for r in run])
    session.commit()
