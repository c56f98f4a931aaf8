"""The differential harness: the same Airflow code on a direct and an isolated twin database."""

from __future__ import annotations

import datetime as dt
import enum
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import scoped_session, sessionmaker

from dbsession import guard

_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")
NEAR_NOW = dt.timedelta(hours=2)  # a datetime this close to now was made by the clock: masked


@dataclass
class Side:
    """One twin: how Airflow reaches it (engine, session factory) and how the test inspects it."""

    name: str
    engine: sa.Engine
    sessions: sessionmaker[Any]
    inspect_url: sa.URL  # a direct URL, for reading the resulting tables (trusted)


@contextmanager
def airflow_on(side: Side) -> Iterator[None]:
    """What ``airflow.settings.configure_orm`` sets up, pointed at *side*."""
    from airflow import settings

    saved = settings.engine, settings.Session, settings.NonScopedSession
    settings.engine, settings.NonScopedSession = side.engine, side.sessions
    settings.Session = scoped_session(side.sessions)
    try:
        yield
    finally:
        settings.Session.remove()
        settings.engine, settings.Session, settings.NonScopedSession = saved


def comparable(value: Any, now: dt.datetime | None = None) -> Any:
    """*value* with its Python types, clock-made datetimes and generated UUIDs masked."""
    now = now or dt.datetime.now(dt.UTC)
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        shown = "<now>" if abs(aware - now) < NEAR_NOW else value.isoformat()
        return (type(value).__name__, type(value.tzinfo).__name__ if value.tzinfo else None, shown)
    if isinstance(value, uuid.UUID):
        return ("UUID", "<uuid>")
    if isinstance(value, str) and _looks_like_uuid(value):
        return (type(value).__name__, "<uuid>")
    if isinstance(value, str) and _TRACEPARENT.fullmatch(value):  # a random W3C trace id
        return (type(value).__name__, "<traceparent>")
    if isinstance(value, str) and _ISO_TIME.match(value):  # a JSON answer's timestamp
        try:
            stamp = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if abs((stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)) - now) < NEAR_NOW:
                return (type(value).__name__, "<now>")
    if isinstance(value, enum.Enum):
        return (type(value).__name__, value.value)
    if isinstance(value, dict):
        return (type(value).__name__, {str(k): comparable(v, now) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [comparable(v, now) for v in value])
    if isinstance(value, (str, int, float, bool, bytes, Decimal, dt.date, type(None))):
        return (type(value).__name__, value)
    mapper = sa.inspect(value, raiseerr=False)
    if mapper is not None and hasattr(mapper, "mapper"):
        attrs = {c.key: comparable(getattr(value, c.key), now) for c in mapper.mapper.column_attrs}
        return (type(value).__name__, attrs)
    if hasattr(value, "model_dump"):  # pydantic (the execution API's answers)
        return (type(value).__name__, comparable(value.model_dump(), now))
    return (type(value).__name__, repr(value))


def _looks_like_uuid(text: str) -> bool:
    if len(text) != 36:
        return False
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    """What a call did: its value (comparable), or the class of what it raised."""
    try:
        return ("returned", comparable(call()))
    except Exception as exc:  # the exception class is the outcome
        return ("raised", f"{type(exc).__module__}.{type(exc).__qualname__}")


def table_state(url: sa.URL, metadata: sa.MetaData) -> dict[str, list[Any]]:
    """Every table's rows, masked and sorted: the database state two twins must share."""
    now = dt.datetime.now(dt.UTC)
    state: dict[str, list[Any]] = {}
    with guard.trusted():
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                for table in metadata.sorted_tables:
                    rows = conn.execute(sa.select(table)).mappings().all()
                    state[table.name] = sorted(repr(comparable(_unmeasured(r), now)) for r in rows)
        finally:
            engine.dispose()
    return state


def _unmeasured(row: Any) -> dict[str, Any]:
    """A row without what the clock and the process decide: durations and process ids."""
    return {k: "<measured>" if k.endswith("duration") or k == "pid" else v for k, v in row.items()}


def differences(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> dict[str, Any]:
    """The tables whose rows differ, with the rows only one side has."""
    out: dict[str, Any] = {}
    for name in sorted(set(a) | set(b)):
        left, right = a.get(name, []), b.get(name, [])
        if left != right:
            out[name] = {"direct only": [r for r in left if r not in right][:5],
                         "isolated only": [r for r in right if r not in left][:5]}
    return out


@dataclass
class Tally:
    """Counts of identical outcomes, printed at the end of the run."""

    cases: dict[str, bool] = field(default_factory=dict)

    def record(self, name: str, identical: bool) -> None:
        self.cases[name] = identical

    def summary(self) -> str:
        same = sum(self.cases.values())
        lines = [f"airflow differential: {same}/{len(self.cases)} identical"]
        lines += [f"  DIFFERS: {name}" for name, ok in self.cases.items() if not ok]
        return "\n".join(lines)


TALLY = Tally()
