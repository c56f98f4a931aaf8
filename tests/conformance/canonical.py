"""Canonical, comparable, type-preserving representations of results.

``canonical(value)`` turns whatever an operation returned into nested tuples
of plain strings / ints / bools so that two results compare equal with ``==``
only if they hold the same values *of the same Python types*:

* scalars become ``(qualified type name, normalised value)``, so ``1``,
  ``True``, ``1.0`` and ``Decimal("1")`` are all different;
* ``Decimal`` keeps its exact string (``"0.0100"`` != ``"0.01"``);
* datetimes keep the ISO value, ``utcoffset()``, the tzinfo class and ``fold``;
* floats are compared through ``repr`` (nan-safe, keeps ``-0.0``);
* ORM instances become ``("ORM", ClassName, {attr: value})`` over the mapper's
  column attributes; attributes that are not loaded are shown as
  ``("<unloaded>",)`` (canonicalising never emits SQL for ORM objects), the
  instance's lifecycle state is recorded under ``"<state>"``, and loaded
  relationships are included recursively under ``"rel:<name>"``.  An instance
  seen a second time (a cycle or a shared reference) becomes
  ``("ORM-REF", ClassName, n)`` where ``n`` is the order of first appearance,
  which also captures identity-map sharing.

``fingerprint(engine)`` is the canonical content of the whole database.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import inspect
from sqlalchemy.engine import Result, Row, RowMapping
from sqlalchemy.orm.base import instance_state
from sqlalchemy.orm.exc import UnmappedInstanceError

from .models import metadata

# Columns whose *value* legitimately differs between database A and database B.
# log.dttm has ``server_default=func.now()``: rows inserted by a write operation
# get the insertion instant, which differs between the two databases.  The
# fingerprint records only whether the value is NULL.
NONDETERMINISTIC_COLUMNS: frozenset[tuple[str, str]] = frozenset({("log", "dttm")})

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def qualname(tp: type) -> str:
    return f"{tp.__module__}.{tp.__qualname__}"


def canonical(value: Any) -> Any:
    """Return the canonical form of ``value`` (see the module docstring)."""
    return _Canon().canon(value)


class _Canon:
    def __init__(self) -> None:
        self.seen: dict[int, int] = {}
        self.keepalive: list[Any] = []  # keep ids stable while we walk

    def canon(self, v: Any) -> Any:
        if v is None:
            return ("NoneType", None)
        tp = type(v)
        name = qualname(tp)
        # Enum must come before bool/int/str (str- and int-mixin enums).
        if isinstance(v, enum.Enum):
            return (name, v.name, self.canon(v.value))
        if tp is bool:
            return (name, v)
        if isinstance(v, int):
            return (name, int(v))
        if isinstance(v, float):
            if math.isnan(v):
                return (name, "nan")
            return (name, repr(float(v)))
        if isinstance(v, decimal.Decimal):
            return (name, str(v))
        if isinstance(v, str):
            return (name, str(v))
        if isinstance(v, (bytes, bytearray, memoryview)):
            return (name, bytes(v).hex())
        if isinstance(v, dt.datetime):
            off = v.utcoffset()
            return (
                name,
                v.isoformat(),
                None if off is None else off.total_seconds(),
                None if v.tzinfo is None else qualname(type(v.tzinfo)),
                v.fold,
            )
        if isinstance(v, dt.date):
            return (name, v.isoformat())
        if isinstance(v, dt.time):
            return (
                name,
                v.isoformat(),
                None if v.tzinfo is None else qualname(type(v.tzinfo)),
                v.fold,
            )
        if isinstance(v, dt.timedelta):
            return (name, v.days, v.seconds, v.microseconds)
        if isinstance(v, uuid.UUID):
            return (name, str(v))
        if isinstance(v, BaseException):
            return ("EXC", name)
        if isinstance(v, Row):
            return ("Row", tuple(v._fields), tuple(self.canon(x) for x in v))
        if isinstance(v, RowMapping):
            return ("RowMapping", tuple((str(k), self.canon(x)) for k, x in v.items()))
        if isinstance(v, Result):
            return ("Result", tuple(v.keys()), tuple(self.canon(r) for r in v.all()))
        if isinstance(v, type):
            return ("type", qualname(v))
        orm = self._orm(v)
        if orm is not None:
            return orm
        if isinstance(v, Mapping):
            return (
                "dict",
                name,
                tuple((self.canon(k), self.canon(x)) for k, x in v.items()),
            )
        if isinstance(v, (set, frozenset)):
            items = [self.canon(x) for x in v]
            return ("set", name, tuple(sorted(items, key=repr)))
        if isinstance(v, (list, tuple)):
            return ("seq", name, tuple(self.canon(x) for x in v))
        if hasattr(v, "__iter__") and not isinstance(v, (str, bytes)):
            # e.g. InstrumentedList subclasses, IdentitySet, ScalarResult
            return ("iter", name, tuple(self.canon(x) for x in v))
        # Unknown object: fall back to its repr without memory addresses.
        return ("other", name, _ADDRESS.sub("", repr(v)))

    def _orm(self, obj: Any) -> Any:
        try:
            state = instance_state(obj)
        except (AttributeError, UnmappedInstanceError):
            return None
        mapper = state.mapper
        cls = mapper.class_.__name__
        key = id(obj)
        if key in self.seen:
            return ("ORM-REF", cls, self.seen[key])
        self.seen[key] = len(self.seen)
        self.keepalive.append(obj)
        unloaded = state.unloaded
        attrs: dict[str, Any] = {"<state>": _lifecycle(state)}
        for prop in mapper.column_attrs:
            if prop.key in unloaded:
                attrs[prop.key] = ("<unloaded>",)
            else:
                attrs[prop.key] = self.canon(state.dict.get(prop.key))
        for rel in mapper.relationships:
            if rel.key in unloaded or rel.key not in state.dict:
                continue
            attrs["rel:" + rel.key] = self.canon(state.dict[rel.key])
        return ("ORM", cls, attrs)


def _lifecycle(state: Any) -> str:
    for flag in ("transient", "pending", "persistent", "deleted", "detached"):
        if getattr(state, flag):
            return flag
    return "unknown"  # pragma: no cover


def fingerprint(engine: sa.Engine) -> tuple:
    """The canonical content of every table in ``metadata``, rows ordered by primary key.

    Values are read *raw* (no SQLAlchemy type processing, only what the driver
    returns): the fingerprint describes what is stored, so e.g. a datetime
    stored in a different string format on SQLite, or a value the ORM type
    cannot read back (an unknown enum name), still shows up.
    Columns in :data:`NONDETERMINISTIC_COLUMNS` are replaced by a NOT NULL flag.
    JSON columns additionally record ``IS NULL`` so JSON ``null`` and SQL ``NULL``
    (which may both read back as ``None``) are distinguished.
    """
    out = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            cols: list[Any] = []
            names: list[str] = []
            for col in table.columns:
                if (table.name, col.name) in NONDETERMINISTIC_COLUMNS:
                    cols.append(col.is_not(None).label(f"{col.name}__not_null"))
                    names.append(f"{col.name}__not_null")
                    continue
                cols.append(sa.type_coerce(col, sa.types.NullType()).label(col.name))
                names.append(col.name)
                if isinstance(col.type, sa.JSON):
                    cols.append(col.is_(None).label(f"{col.name}__sql_null"))
                    names.append(f"{col.name}__sql_null")
            stmt = sa.select(*cols).order_by(*table.primary_key.columns)
            rows = conn.execute(stmt).all()
            c = _Canon()
            out.append(
                (
                    table.name,
                    tuple(names),
                    tuple(tuple(c.canon(x) for x in row) for row in rows),
                )
            )
    return tuple(out)


def row_count_summary(fp: tuple) -> dict[str, int]:
    return {name: len(rows) for name, _cols, rows in fp}


def diff_fingerprints(fp_a: tuple, fp_b: tuple) -> list[str]:
    """Human readable differences between two fingerprints (empty if equal)."""
    problems: list[str] = []
    tables_a = {t[0]: t for t in fp_a}
    tables_b = {t[0]: t for t in fp_b}
    for name in sorted(set(tables_a) | set(tables_b)):
        ta, tb = tables_a.get(name), tables_b.get(name)
        if ta is None or tb is None:
            problems.append(f"table {name}: present only in {'B' if ta is None else 'A'}")
            continue
        if ta == tb:
            continue
        _n, cols, rows_a = ta
        _n, _cols, rows_b = tb
        if len(rows_a) != len(rows_b):
            problems.append(f"table {name}: {len(rows_a)} rows in A, {len(rows_b)} rows in B")
        for i, (ra, rb) in enumerate(zip(rows_a, rows_b)):
            if ra != rb:
                diffs = [f"{col}: A={va!r} B={vb!r}" for col, va, vb in zip(cols, ra, rb) if va != vb]
                problems.append(f"table {name} row #{i}: " + "; ".join(diffs))
                if len(problems) > 20:
                    problems.append("... (more differences omitted)")
                    return problems
        extra = rows_a[len(rows_b) :] or rows_b[len(rows_a) :]
        for row in extra[:5]:
            problems.append(f"table {name} extra row in {'A' if len(rows_a) > len(rows_b) else 'B'}: {row!r}")
    return problems


def inspect_identity(obj: Any) -> Any:
    """The identity key tuple of a persistent ORM instance (for operations)."""
    return inspect(obj).identity
