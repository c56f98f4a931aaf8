"""The schema and value classes of the differential value test (``test_values_differential``).

One wide table, a column per SQLAlchemy type (and PostgreSQL's JSONB and integer arrays where the
database has them), and the application-style value classes the test binds: subclasses of
builtins, ``str`` / ``int`` mixin enums, a hand-written ``tzinfo``, an Airflow-style ``UtcDateTime``
``TypeDecorator``. A DB-API started in its own process imports this module as its metadata
(``tests.conformance.values_models:metadata``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.mutable import MutableDict
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Color(enum.Enum):
    RED = 1
    GREEN = "green"


class Shade(str, enum.Enum):  # noqa: UP042 - a str-mixin enum (Airflow's TaskInstanceState is one)
    LIGHT = "light"
    DARK = "dark"


class Level(enum.StrEnum):
    LOW = "low"
    HIGH = "high"


class Size(int, enum.Enum):  # an int-mixin enum that is not an IntEnum: str() is "Size.SMALL"
    SMALL = 1
    LARGE = 1000


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2**40


class Perm(enum.IntFlag):
    R = 4
    W = 2
    X = 1


class Text(str):
    """A plain ``str`` subclass (SQLAlchemy's ``quoted_name`` is one)."""


class Count(int):
    pass


class Ratio(float):
    pass


class Money(decimal.Decimal):
    pass


class Stamp(dt.datetime):
    pass


class Day(dt.date):
    pass


class Token(uuid.UUID):
    pass


class HandTZ(dt.tzinfo):
    """A hand-written tzinfo: +05:30, no DST."""

    def utcoffset(self, when: Any) -> dt.timedelta:
        return dt.timedelta(hours=5, minutes=30)

    def dst(self, when: Any) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, when: Any) -> str:
        return "HAND"

    def __repr__(self) -> str:
        return "HandTZ()"


class UtcDateTime(sa.TypeDecorator[dt.datetime]):
    """Airflow's ``UtcDateTime``: aware datetimes only, stored in UTC, read back in UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected datetime.datetime, not {value!r}")
        if value.tzinfo is None:
            raise ValueError("naive datetime is disallowed")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    pass


class Probe(Base):
    """One row per example: the example's column holds its value, the others NULL."""

    __tablename__ = "value_probe"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    c_string = mapped_column(sa.String(300))
    c_text = mapped_column(sa.Text)
    c_integer = mapped_column(sa.Integer)
    c_bigint = mapped_column(sa.BigInteger)
    c_numeric = mapped_column(sa.Numeric(30, 10))
    c_float = mapped_column(sa.Float)
    c_boolean = mapped_column(sa.Boolean)
    c_datetime = mapped_column(sa.DateTime)
    c_datetime_tz = mapped_column(sa.DateTime(timezone=True))
    c_utc_datetime = mapped_column(UtcDateTime)
    c_date = mapped_column(sa.Date)
    c_time = mapped_column(sa.Time)
    c_interval = mapped_column(sa.Interval)
    c_binary = mapped_column(sa.LargeBinary)
    c_uuid = mapped_column(sa.Uuid)
    c_json = mapped_column(sa.JSON)
    c_mutable_json = mapped_column(MutableDict.as_mutable(sa.JSON))
    c_enum = mapped_column(sa.Enum(Color, name="probe_color"))
    c_pickle = mapped_column(sa.PickleType)
    # PostgreSQL's own types where the database has them, the generic ones elsewhere
    c_jsonb = mapped_column(sa.JSON().with_variant(postgresql.JSONB(), "postgresql"))
    c_int_array = mapped_column(sa.JSON().with_variant(postgresql.ARRAY(sa.Integer), "postgresql"))


metadata = Base.metadata
COLUMNS = [c.key for c in Probe.__table__.c if c.key != "id"]
