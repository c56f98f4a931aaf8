"""Policy on PostgreSQL: its operators stay usable, its syntax cannot smuggle SQL past the policy."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from dbapi_server import DefaultPolicy
from query_translation import decode_rows

from ._support import RawApi

pytestmark = pytest.mark.postgresql

SECRET = "TOPSECRET-pg-51c2"

metadata = sa.MetaData()
docs = sa.Table(
    "docs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("data", pg.JSONB, nullable=False),
    sa.Column("tags", pg.ARRAY(sa.Integer), nullable=False),
    sa.Column("created", sa.DateTime, nullable=False),
)
secrets = sa.Table(
    "secrets", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("token", sa.String(40), nullable=False),
)

DATABASE = "postgresql"
POLICY = DefaultPolicy(denied_tables=frozenset({"secrets"}))
SECRETS = [SECRET]


def seed(conn: sa.Connection) -> None:
    conn.execute(docs.insert().values(id=1, data={"k": "v", "n": {"a": 1}}, tags=[1, 2, 3], created=sa.func.now()))
    conn.execute(secrets.insert().values(token=SECRET))


@pytest.mark.parametrize("where", [
    pytest.param(lambda: docs.c.data.contains({"k": "v"}), id="jsonb-contains"),
    pytest.param(lambda: docs.c.data.has_key("k"), id="jsonb-has-key"),
    pytest.param(lambda: docs.c.data.has_any(sa.bindparam("keys", ["k", "z"], type_=pg.ARRAY(sa.Text))),
                 id="jsonb-has-any"),
    pytest.param(lambda: docs.c.data["k"].astext == "v", id="jsonb-astext"),
    pytest.param(lambda: docs.c.data[("n", "a")].astext == "1", id="jsonb-path-astext"),
    pytest.param(lambda: docs.c.tags.contains([2]), id="array-contains"),
    pytest.param(lambda: docs.c.tags.overlap([3, 9]), id="array-overlap"),
    pytest.param(lambda: docs.c.tags.contained_by([1, 2, 3, 4]), id="array-contained-by"),
])
def test_postgresql_operators_pass_the_policy(api: RawApi, where: Callable[[], sa.ColumnElement[bool]]) -> None:
    reply = api.execute(sa.select(docs.c.id).where(where()))
    assert reply.status == 200, reply.body
    assert decode_rows(reply.json["rows"]) == [(1,)]


def test_extract_field_cannot_smuggle_sql(api: RawApi) -> None:
    """``EXTRACT(<field> FROM ...)`` renders the field verbatim: it must be a known field name."""
    field = ("year FROM docs.created) AS x FROM docs UNION SELECT length(token) FROM secrets "
             "UNION SELECT EXTRACT(year")
    reply = api.execute(sa.select(sa.extract(field, docs.c.created)))
    assert 400 <= reply.status < 500 and reply.status != 422, reply.body


def test_ordinary_extract_works(api: RawApi) -> None:
    reply = api.execute(sa.select(sa.extract("year", docs.c.created) > 2000))
    assert decode_rows(reply.json["rows"]) == [(True,)]
