"""Round trip of Core and ORM statements through the wire format, and every way a document fails.

A statement is compiled the way an isolated client compiles it (the client dialect built from
the server's dialect state), encoded with ``to_wire``, sent through ``orjson``, rebuilt with
``from_wire`` against the server's metadata and compiled with the server's own dialect: both
compilations must have the same ``sql_fingerprint`` - exactly the check the DB-API makes before it
executes anything.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Query,
    aliased,
    column_property,
    joinedload,
    mapped_column,
    relationship,
)

from dbapi_server.state import dialect_state
from dbsession import guard
from dbsession.dialect import isolated_dialect_class
from query_translation import (
    WIRE_VERSION,
    MalformedStatementError,
    StatementInfo,
    TypeResolver,
    UnknownColumnError,
    UnknownEnumError,
    UnknownNodeError,
    UnknownTableError,
    UnsupportedStatementError,
    WireVersionError,
    decode_params,
    encode_value,
    from_wire,
    to_wire,
)
from query_translation.fingerprint import sql_fingerprint
from query_translation.schemas import MAX_DEPTH


# -- the model ------------------------------------------------------------------------------------
class Base(DeclarativeBase):
    metadata = sa.MetaData()


class Status(enum.Enum):
    active = "A"
    retired = "R"


class Unlisted(enum.Enum):
    """An enum no column of the metadata uses: never decodable on the server."""

    x = 1


class Address(Base):
    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    email: Mapped[str] = mapped_column(sa.String(100))
    user: Mapped[User] = relationship(back_populates="addresses")


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    status: Mapped[Status] = mapped_column(sa.Enum(Status), default=Status.active)
    balance: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2), default=Decimal("0.00"))
    created: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("users.id"))
    settings: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    addresses: Mapped[list[Address]] = relationship(back_populates="user")
    address_count = column_property(
        sa.select(sa.func.count(Address.id)).where(Address.user_id == id).correlate_except(Address)
        .scalar_subquery())


# PostgreSQL-only types; compiled, never created
docs = sa.Table(
    "docs", Base.metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("data", pg.JSONB),
    sa.Column("tags", pg.ARRAY(sa.Integer)),
)

METADATA = Base.metadata
users = User.__table__
addresses = Address.__table__


# -- the two dialects -----------------------------------------------------------------------------
class Dialects:
    def __init__(self, server_engine: sa.Engine) -> None:
        with server_engine.connect():
            pass  # initializes the server dialect, as the DB-API does at start-up
        self.server = server_engine.dialect
        info = {"dialect": self.server.name, "driver": self.server.driver,
                "dialect_state": dialect_state(self.server)}
        self.client = isolated_dialect_class(info)()
        self.name = self.server.name


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def dialects(request: pytest.FixtureRequest) -> Iterator[Dialects]:
    if request.param == "sqlite":
        engine = guard.exempt(sa.create_engine("sqlite://"))
    else:
        engine = guard.exempt(sa.create_engine(request.getfixturevalue("pg_url")))
    try:
        yield Dialects(engine)
    finally:
        engine.dispose()


def encode(stmt: Any, dialect: sa.Dialect) -> tuple[dict[str, Any], Any]:
    """Compile like an isolated client and encode: (wire document, client compilation)."""
    compiled = stmt.compile(dialect=dialect)
    state = getattr(compiled, "compile_state", None)
    root = state.statement if state is not None and getattr(state, "statement", None) is not None \
        else compiled.statement
    return to_wire(root, compiled=compiled, core_statements=compiled._dbs_core), compiled


def round_trip(stmt: Any, dialects: Dialects) -> tuple[Any, Any, StatementInfo, dict[str, Any]]:
    """(client compilation, server compilation, info, document as it crossed the wire)."""
    document, client = encode(stmt, dialects.client)
    wire = orjson.loads(orjson.dumps(document))
    assert wire == document  # nothing orjson cannot carry exactly
    rebuilt, info = from_wire(wire, METADATA)
    return client, rebuilt.compile(dialect=dialects.server), info, wire


# -- the corpus -----------------------------------------------------------------------------------
def _recursive_cte() -> Any:
    tree = sa.select(users.c.id, users.c.parent_id).where(users.c.id == 1).cte("tree", recursive=True)
    tree = tree.union_all(sa.select(users.c.id, users.c.parent_id).join(tree, users.c.parent_id == tree.c.id))
    return sa.select(tree.c.id)


def _orm_subquery_join() -> Any:
    counts = (sa.select(Address.user_id, sa.func.count().label("n"))
              .group_by(Address.user_id).subquery())
    return sa.select(User.name, counts.c.n).join(counts, User.id == counts.c.user_id).where(counts.c.n > 1)


def _orm_union_entity() -> Any:
    union = sa.union(sa.select(User).where(User.name == "a"), sa.select(User).where(User.id > 5)).subquery()
    alias = aliased(User, union)
    return sa.select(alias).order_by(alias.id)


def _orm_self_join() -> Any:
    parent = aliased(User, name="parent")
    return sa.select(User.name, parent.name).join(parent, User.parent_id == parent.id)


def _orm_aliased_subquery_entity() -> Any:
    recent = sa.select(Address).where(Address.email.like("%@x.org")).subquery()
    alias = aliased(Address, recent)
    return sa.select(User, alias).join(alias, User.addresses.of_type(alias))


CORE: dict[str, Callable[[], Any]] = {
    "select-eq": lambda: sa.select(users).where(users.c.name == "x"),
    "select-columns-and-or-not": lambda: sa.select(users.c.id, users.c.name).where(
        sa.or_(sa.and_(users.c.id > 1, users.c.id <= 10), sa.not_(users.c.name.is_(None)))),
    "in-list": lambda: sa.select(users.c.id).where(users.c.id.in_([1, 2, 3])),
    "not-in-and-empty-in": lambda: sa.select(users.c.id).where(
        users.c.name.not_in(["a", "b"]), users.c.id.in_([])),
    "tuple-in": lambda: sa.select(users.c.id).where(
        sa.tuple_(users.c.id, users.c.name).in_([(1, "a"), (2, "b")])),
    "between": lambda: sa.select(users.c.id).where(users.c.id.between(1, 5)),
    "like-family": lambda: sa.select(users.c.id).where(users.c.name.like("a%"), users.c.name.startswith("b"),
        users.c.name.contains("c"), users.c.name.endswith("d"), users.c.name.ilike("E%")),
    "is-null-is-not-null": lambda: sa.select(users.c.id).where(
        users.c.created.is_(None), users.c.parent_id.is_not(None)),
    "order-limit-offset": lambda: sa.select(users).order_by(
        users.c.name.desc(), users.c.id.asc().nulls_last()).limit(10).offset(20),
    "group-by-having": lambda: sa.select(addresses.c.user_id, sa.func.count(addresses.c.id).label("n"))
    .group_by(addresses.c.user_id).having(sa.func.count(addresses.c.id) > 2),
    "functions": lambda: sa.select(
        sa.func.lower(users.c.name), sa.func.coalesce(users.c.parent_id, 0), sa.func.max(users.c.id),
        sa.func.sum(users.c.balance), sa.func.length(users.c.name), sa.func.count()),
    "count-star": lambda: sa.select(sa.func.count()).select_from(users),
    "distinct": lambda: sa.select(users.c.name).distinct(),
    "join-and-outerjoin": lambda: sa.select(users.c.name, addresses.c.email).select_from(
        users.join(addresses, users.c.id == addresses.c.user_id).outerjoin(
            addresses.alias("a2"), sa.literal(True))),
    "self-join-alias": lambda: (lambda parent: sa.select(users.c.name, parent.c.name).join(
        parent, users.c.parent_id == parent.c.id))(users.alias("parent")),
    "anonymous-alias": lambda: (lambda a: sa.select(a.c.id).where(a.c.name == "x"))(users.alias()),
    "subquery-in-from": lambda: (lambda sq: sa.select(sq.c.id).where(sq.c.id > 3))(
        sa.select(users.c.id).where(users.c.name != "x").subquery()),
    "correlated-scalar-subquery": lambda: sa.select(
        users.c.name,
        sa.select(sa.func.count(addresses.c.id)).where(addresses.c.user_id == users.c.id)
        .scalar_subquery().label("n")),
    "exists-and-not-exists": lambda: sa.select(users.c.id).where(
        sa.exists().where(addresses.c.user_id == users.c.id),
        ~sa.exists(sa.select(addresses.c.id).where(addresses.c.email == "x"))),
    "cte": lambda: (lambda c: sa.select(c.c.user_id).where(c.c.user_id > 1))(
        sa.select(addresses.c.user_id).distinct().cte("owners")),
    "recursive-cte": _recursive_cte,
    "union-all-ordered-limited": lambda: (lambda u: u.order_by(u.selected_columns.id.desc()).limit(5))(
        sa.union_all(sa.select(users.c.id).where(users.c.id < 3), sa.select(addresses.c.id))),
    "union-except-intersect": lambda: sa.except_(
        sa.union(sa.select(users.c.id), sa.select(addresses.c.user_id)).subquery().select(),
        sa.intersect(sa.select(users.c.id), sa.select(users.c.parent_id))),
    "case": lambda: sa.select(sa.case((users.c.id < 5, "low"), (users.c.id < 10, "mid"), else_="high")),
    "case-with-value": lambda: sa.select(sa.case({1: "one", 2: "two"}, value=users.c.id)),
    "cast-and-type-coerce": lambda: sa.select(
        sa.cast(users.c.id, sa.String(20)), sa.type_coerce(users.c.name, sa.Text)),
    "label-order-by-name": lambda: sa.select(sa.func.lower(users.c.name).label("lname")).order_by("lname"),
    "window-functions": lambda: sa.select(
        users.c.id,
        sa.func.row_number().over(partition_by=users.c.status, order_by=users.c.id.desc()),
        sa.func.rank().over(order_by=users.c.name)),
    "arithmetic-and-concat": lambda: sa.select(
        (users.c.id + 1) * 2, -users.c.id, users.c.id % 3, users.c.name + "-suffix",
        sa.func.concat(users.c.name, "x")),
    "literals-true-false-null": lambda: sa.select(users.c.id, sa.true(), sa.false()).where(
        users.c.created == sa.null()),
    "typed-binds": lambda: sa.select(
        sa.literal(5, sa.Integer), sa.bindparam("named", "v", type_=sa.String(20)),
        sa.literal(Decimal("1.50"), sa.Numeric(10, 2))).where(users.c.balance > Decimal("1.25")),
    "enum-datetime-comparisons": lambda: sa.select(users.c.id).where(
        users.c.status == Status.active,
        users.c.created > datetime(2024, 1, 1, 12, 0)),
    "json-index": lambda: sa.select(users.c.id).where(users.c.settings["theme"].as_string() == "dark"),
    "custom-operator": lambda: sa.select(users.c.id).where(users.c.id.op("&")(3) == 1),
    "extract": lambda: sa.select(sa.extract("year", users.c.created)),
    "insert-values": lambda: sa.insert(users).values(name="x", status=Status.retired, balance=Decimal("2.50")),
    "insert-sql-expression": lambda: sa.insert(users).values(name=sa.func.lower("X")),
    "insert-multi-values": lambda: sa.insert(addresses).values(
        [{"user_id": 1, "email": "a@x"}, {"user_id": 2, "email": "b@x"}]),
    "insert-from-select": lambda: sa.insert(addresses).from_select(
        ["user_id", "email"], sa.select(users.c.id, users.c.name + "@x").where(users.c.id > 1)),
    "insert-returning": lambda: sa.insert(users).values(name="x").returning(users.c.id, users.c.name),
    "update-expression-values": lambda: sa.update(users).where(users.c.id.in_([1, 2])).values(
        balance=users.c.balance + 1, name=sa.func.upper(users.c.name)),
    "update-returning": lambda: sa.update(users).where(users.c.id == 1).values(name="y").returning(users.c.id),
    "update-ordered-values": lambda: sa.update(users).ordered_values(
        (users.c.name, "z"), (users.c.balance, 0)),
    "update-correlated-subquery": lambda: sa.update(users).values(
        name=sa.select(addresses.c.email).where(addresses.c.user_id == users.c.id).limit(1)
        .scalar_subquery()),
    "delete-where": lambda: sa.delete(addresses).where(addresses.c.email.like("%@old")),
    "delete-returning": lambda: sa.delete(users).where(users.c.id == 3).returning(users.c.name),
    "delete-where-exists": lambda: sa.delete(users).where(
        ~sa.exists().where(addresses.c.user_id == users.c.id)),
}

ORM: dict[str, Callable[[], Any]] = {
    "orm-select-entity": lambda: sa.select(User).where(User.name == "a"),
    "orm-filter-by-order-limit": lambda: sa.select(User).filter_by(name="a").order_by(User.id).limit(2),
    "orm-legacy-query": lambda: Query(User).filter(User.id > 1).order_by(User.name).offset(1).statement,
    "orm-in-and-order": lambda: sa.select(User).where(User.name.in_(["a", "b"])).order_by(User.id.desc()),
    "orm-join-relationship": lambda: sa.select(User).join(User.addresses).where(Address.email.like("%x")),
    "orm-joinedload": lambda: sa.select(User).options(joinedload(User.addresses)).where(User.id == 1),
    "orm-joinedload-limit": lambda: sa.select(User).options(joinedload(User.addresses)).limit(3),
    "orm-selectin-style-load": lambda: sa.select(Address).where(Address.user_id.in_([1, 2, 3])),
    "orm-any-has": lambda: sa.select(User).where(
        User.addresses.any(Address.email.like("%x")), ~User.addresses.any()),
    "orm-has": lambda: sa.select(Address).where(Address.user.has(User.name == "a")),
    "orm-aliased-self-join": _orm_self_join,
    "orm-aggregate": lambda: sa.select(User.name, sa.func.count(Address.id)).join(User.addresses)
    .group_by(User.name).order_by(sa.func.count(Address.id).desc()),
    "orm-subquery-join": _orm_subquery_join,
    "orm-union-entity": _orm_union_entity,
    "orm-aliased-subquery-entity": _orm_aliased_subquery_entity,
    "window-rows-unbounded-current": lambda: sa.select(
        User.id, sa.func.sum(User.balance).over(order_by=User.id, rows=(None, 0))),
    "window-rows-preceding-following": lambda: sa.select(
        User.id, sa.func.avg(User.balance).over(partition_by=User.status, order_by=User.id, rows=(-2, 2))),
    "window-range-unbounded": lambda: sa.select(
        User.id, sa.func.count().over(order_by=User.id, range_=(None, None))),
    "window-range-preceding-current": lambda: sa.select(
        User.id, sa.func.max(User.id).over(order_by=User.id, range_=(-5, 0))),
    "orm-exists": lambda: sa.select(User.id).where(sa.exists().where(Address.user_id == User.id)),
    "orm-for-update": lambda: sa.select(User).where(User.id == 1).with_for_update(),
    "orm-insert": lambda: sa.insert(User).values(name="n", status=Status.active),
    "orm-insert-returning": lambda: sa.insert(User).values(name="n").returning(User.id),
    "orm-bulk-update": lambda: sa.update(User).where(User.name == "a").values(name="b"),
    "orm-bulk-update-no-sync": lambda: sa.update(User).where(User.id > 1).values(
        balance=User.balance * 2).execution_options(synchronize_session=False),
    "orm-bulk-delete": lambda: sa.delete(User).where(User.status == Status.retired),
}

POSTGRESQL: dict[str, Callable[[], Any]] = {
    "pg-for-update-variants": lambda: sa.select(users).where(users.c.id == 1).with_for_update(
        nowait=True, of=users),
    "pg-skip-locked-key-share": lambda: sa.select(users.c.id).with_for_update(skip_locked=True, key_share=True),
    "pg-for-share": lambda: sa.select(users.c.id).with_for_update(read=True),
    "pg-distinct-on": lambda: sa.select(users).ext(pg.distinct_on(users.c.status)).order_by(
        users.c.status, users.c.id),
    "pg-lateral": lambda: (lambda lat: sa.select(users.c.name, lat.c.email).select_from(users).join(
        lat, sa.true()))(sa.select(addresses.c.email).where(addresses.c.user_id == users.c.id)
                        .limit(1).lateral("last")),
    "pg-fetch-first": lambda: sa.select(users.c.id).order_by(users.c.id).fetch(5, with_ties=True),
    "pg-filter-within-group": lambda: sa.select(
        sa.func.count(users.c.id).filter(users.c.name == "x"),
        sa.func.percentile_cont(0.5).within_group(users.c.balance)),
    "pg-jsonb": lambda: sa.select(docs.c.id).where(
        docs.c.data["k"].astext == "v", docs.c.data.contains({"a": 1}), docs.c.data.has_key("z")),
    "pg-array": lambda: sa.select(docs.c.id).where(docs.c.tags.contains([1, 2]), docs.c.tags[1] == 5,
                                                   sa.literal(3) == sa.any_(docs.c.tags)),
    "pg-ilike-regexp": lambda: sa.select(users.c.id).where(
        users.c.name.ilike("%a%"), users.c.name.regexp_match("^a")),
    "pg-delete-using": lambda: sa.delete(addresses).where(
        addresses.c.user_id == users.c.id, users.c.name == "x"),
    "pg-update-from": lambda: sa.update(users).where(
        users.c.id == addresses.c.user_id, addresses.c.email == "x").values(name="y"),
    "pg-insert-from-select-returning": lambda: sa.insert(users).from_select(
        ["name"], sa.select(addresses.c.email)).returning(users.c.id),
}


def _cases() -> list[Any]:
    cases = [pytest.param(name, build, False, id=name) for name, build in {**CORE, **ORM}.items()]
    cases += [pytest.param(name, build, True, id=name) for name, build in POSTGRESQL.items()]
    return cases


@pytest.mark.parametrize(("name", "build", "pg_only"), _cases())
def test_round_trip_compiles_to_the_same_sql(name: str, build: Callable[[], Any], pg_only: bool,
                                             dialects: Dialects) -> None:
    if pg_only and dialects.name != "postgresql":
        pytest.skip("PostgreSQL-only construct")
    client, server, _, _ = round_trip(build(), dialects)
    assert server.string == client.string
    assert sql_fingerprint(server) == sql_fingerprint(client)


def test_corpus_exercises_most_node_kinds(dialects: Dialects) -> None:
    """The corpus above is worth what it covers: count the node kinds it puts on the wire."""
    seen: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("t"), str):
                seen.add(value["t"])
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    builders = {**CORE, **ORM, **(POSTGRESQL if dialects.name == "postgresql" else {})}
    for build in builders.values():
        try:
            walk(encode(build(), dialects.client)[0])
        except Exception:  # reported by the round-trip test of that statement
            pass
    expected = {"select", "compound_select", "insert", "update", "delete", "table", "alias", "subquery",
                "cte", "join", "col", "bind", "label", "binary", "unary", "exists", "boolean_list",
                "clause_list", "grouping", "scalar_select", "cast", "type_coerce", "case", "over",
                "function", "tuple", "null", "true", "false", "ref", "extract"}
    assert expected <= seen


def test_bind_values_follow_the_document_positionally(dialects: Dialects) -> None:
    """Executing the rebuilt statement with the client's parameters gives the same bound values."""
    stmt = sa.select(users.c.id).where(users.c.name == "a", users.c.id > 7, users.c.balance < Decimal("3"))
    client, server, _, _ = round_trip(stmt, dialects)
    params = client.construct_params()
    assert server.construct_params(params) == params
    assert client.positiontup == server.positiontup


# -- orjson ---------------------------------------------------------------------------------------
def test_document_survives_orjson_and_stays_versioned() -> None:
    stmt = sa.insert(users).values(name="x", balance=Decimal("1.50"), status=Status.active,
                                   created=datetime(2024, 1, 1), settings={"a": [1, None]})
    document = to_wire(stmt)
    assert document["version"] == WIRE_VERSION
    assert orjson.loads(orjson.dumps(document)) == document
    rebuilt, info = from_wire(orjson.loads(orjson.dumps(document)), METADATA)
    assert str(rebuilt.compile()) == str(stmt.compile())
    assert info.kind == "insert" and info.write_table == "users"


# -- StatementInfo --------------------------------------------------------------------------------
def info_of(stmt: Any) -> StatementInfo:
    return from_wire(to_wire(stmt), METADATA)[1]


def test_info_records_read_tables_and_functions() -> None:
    info = info_of(sa.select(sa.func.lower(users.c.name), sa.func.count(addresses.c.id))
                   .join_from(users, addresses).group_by(users.c.name))
    assert info.kind == "select" and info.is_read_only
    assert info.read_tables == {"users", "addresses"}
    assert info.write_table is None
    assert info.functions == {"lower", "count"}
    assert ("users", "name") in info.columns
    assert info.literal_sql == []


def test_info_records_the_write_table_apart_from_what_is_read() -> None:
    info = info_of(sa.insert(addresses).from_select(["user_id", "email"], sa.select(users.c.id, users.c.name)))
    assert info.kind == "insert" and not info.is_read_only
    assert info.write_table == "addresses"
    assert info.read_tables == {"users"}

    info = info_of(sa.delete(users).where(~sa.exists().where(addresses.c.user_id == users.c.id)))
    assert (info.kind, info.write_table, info.read_tables) == ("delete", "users", {"addresses"})

    info = info_of(sa.update(users).values(name=sa.func.upper(users.c.name)))
    assert (info.kind, info.write_table, info.functions) == ("update", "users", {"upper"})


def test_info_marks_locking_reads_as_not_read_only() -> None:
    info = info_of(sa.select(users.c.id).with_for_update())
    assert info.for_update and not info.is_read_only


def test_info_records_custom_operators() -> None:
    assert info_of(sa.select(users.c.id).where(users.c.id.op("&")(3) == 1)).custom_operators == {"&"}


def test_text_is_encoded_and_recorded_as_literal_sql() -> None:
    stmt = sa.text("SELECT id FROM users WHERE name = :name").bindparams(name="x")
    document = to_wire(stmt)
    assert document["statement"]["t"] == "text"
    rebuilt, info = from_wire(document, METADATA)
    assert info.literal_sql == ["SELECT id FROM users WHERE name = :name"]
    assert str(rebuilt.compile()) == str(stmt.compile())


def test_text_inside_a_select_is_recorded_too() -> None:
    info = info_of(sa.select(users.c.id).where(sa.text("1 = 1")))
    assert info.literal_sql == ["1 = 1"]
    info = info_of(sa.select(sa.literal_column("name || 'x'")).select_from(users))
    assert info.literal_sql == ["name || 'x'"]


def test_count_star_is_literal_star_only() -> None:
    assert info_of(sa.select(sa.func.count()).select_from(users)).literal_sql == ["*"]


# -- failures -------------------------------------------------------------------------------------
def base_document() -> dict[str, Any]:
    """``SELECT users.id FROM users WHERE users.name = :name_1 AND users.id > :id_1``."""
    document = to_wire(sa.select(users.c.id).where(users.c.name == "x", users.c.id > 3))
    return copy.deepcopy(document)


def where(document: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return document["statement"]["where"][index]


def test_base_document_decodes() -> None:
    rebuilt, _ = from_wire(base_document(), METADATA)
    assert "WHERE users.name = :name_1 AND users.id > :id_1" in str(rebuilt.compile())


@pytest.mark.parametrize("place", ["statement", "nested"])
def test_unknown_node_type_is_named(place: str) -> None:
    document = base_document()
    if place == "statement":
        document["statement"]["t"] = "frobnicate"
    else:
        where(document)["left"]["t"] = "frobnicate"
    with pytest.raises(UnknownNodeError, match="'frobnicate'") as caught:
        from_wire(document, METADATA)
    assert caught.value.node_type == "frobnicate"


def _mutate(path: tuple[Any, ...], value: Any, delete: bool = False) -> dict[str, Any]:
    document = base_document()
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


@pytest.mark.parametrize(("path", "value", "delete", "errors"), [
    pytest.param(("statement", "cols"), None, True,
                 {"statement": {"cols": ["Missing data for required field."]}}, id="missing-field"),
    pytest.param(("statement", "where", 0, "left", "key"), None, True,
                 {"statement": {"where": {0: {"left": {"key": ["Missing data for required field."]}}}}},
                 id="missing-nested-field"),
    pytest.param(("statement", "where", 1, "bogus"), 1, False,
                 {"statement": {"where": {1: {"bogus": ["Unknown field."]}}}}, id="extra-field"),
    pytest.param(("extra",), 1, False, {"extra": ["Unknown field."]}, id="extra-top-level-field"),
    pytest.param(("statement", "cols"), "users", False, {"statement": {"cols": ["Not a valid list."]}},
                 id="list-as-string"),
    pytest.param(("statement", "where", 0, "left", "key"), 5, False,
                 {"statement": {"where": {0: {"left": {"key": ["Not a valid string."]}}}}}, id="int-as-string"),
    pytest.param(("statement", "where", 0), "users.id = 1", False,
                 {"statement": {"where": {0: ["Expected a node object."]}}}, id="sql-string-as-node"),
    pytest.param(("statement", "where", 0, "t"), 7, False,
                 {"statement": {"where": {0: ["A node needs a string field 't'."]}}}, id="node-kind-not-string"),
], )
def test_malformed_documents_report_errors_by_path(path: tuple[Any, ...], value: Any, delete: bool,
                                                   errors: dict[str, Any]) -> None:
    with pytest.raises(MalformedStatementError, match="malformed") as caught:
        from_wire(_mutate(path, value, delete), METADATA)
    assert caught.value.errors == errors


@pytest.mark.parametrize(("path", "value"), [
    pytest.param(("statement", "distinct"), "false", id="bool-as-string"),
    pytest.param(("statement", "distinct"), 1, id="bool-as-int"),
    pytest.param(("version",), "1", id="version-as-string"),
    pytest.param(("statement", "where", 0, "right", "expanding"), "no", id="nested-bool-as-string"),
])
def test_scalar_fields_are_not_coerced(path: tuple[Any, ...], value: Any) -> None:
    """The decoder reads the raw document, so validation must accept only what it means.

    ``"distinct": "false"`` is truthy for the decoder: a coercing validator lets it through and
    the rebuilt statement silently differs from what the client sent.
    """
    with pytest.raises(MalformedStatementError) as caught:
        from_wire(_mutate(path, value), METADATA)
    assert path[-1] in str(caught.value.errors)


def test_not_a_document_at_all() -> None:
    with pytest.raises(MalformedStatementError) as caught:
        from_wire([], METADATA)  # type: ignore[arg-type]
    assert caught.value.errors == {"_schema": ["Invalid input type."]}
    with pytest.raises(MalformedStatementError) as caught:
        from_wire({"version": 1}, METADATA)
    assert caught.value.errors == {"statement": ["Missing data for required field."]}


def _nested(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"t": "null"}
    for _ in range(levels):
        node = {"t": "grouping", "element": node}
    document = base_document()
    document["statement"]["where"] = [node]
    return document


def test_too_deep_nesting_is_malformed() -> None:
    with pytest.raises(MalformedStatementError, match=f"more than {MAX_DEPTH} levels") as caught:
        from_wire(_nested(MAX_DEPTH * 5), METADATA)
    assert caught.value.errors == {"statement": ["too deep"]}


@pytest.mark.parametrize("levels", [MAX_DEPTH // 2, MAX_DEPTH * 3 // 4, MAX_DEPTH - 10])
def test_nesting_below_the_limit_never_exhausts_the_stack(levels: int) -> None:
    """Either the document decodes or it is refused as malformed: a RecursionError is a 500."""
    try:
        from_wire(_nested(levels), METADATA)
    except MalformedStatementError:
        pass


def test_dangling_reference() -> None:
    document = base_document()
    where(document)["left"]["from"] = {"t": "ref", "@": 99}
    with pytest.raises(MalformedStatementError, match="@99") as caught:
        from_wire(document, METADATA)
    assert list(caught.value.errors) == ["@"]


def test_reference_needs_its_number() -> None:
    document = base_document()
    where(document)["left"]["from"] = {"t": "ref"}
    with pytest.raises(MalformedStatementError) as caught:
        from_wire(document, METADATA)
    assert caught.value.errors == {"statement": {"where": {0: {"left": {"from": {"@": [
        "Missing data for required field."]}}}}}}


@pytest.mark.parametrize("version", [0, WIRE_VERSION - 1, WIRE_VERSION + 1, 999])
def test_wrong_version(version: int) -> None:
    document = base_document()
    document["version"] = version
    with pytest.raises(WireVersionError, match=f"wire version {version}"):
        from_wire(document, METADATA)


def test_unknown_table() -> None:
    document = to_wire(sa.select(sa.table("secrets", sa.column("x"))))
    with pytest.raises(UnknownTableError, match="'secrets'"):
        from_wire(document, METADATA)


def test_unknown_column() -> None:
    document = base_document()
    where(document)["left"]["key"] = "password"
    with pytest.raises(UnknownColumnError, match="'password'"):
        from_wire(document, METADATA)


@pytest.mark.parametrize("name", ["frobnicate", "__class__", "attrgetter", "system"])
def test_unknown_operator(name: str) -> None:
    document = base_document()
    where(document)["op"] = name
    with pytest.raises(MalformedStatementError, match=f"Unknown operator '{name}'") as caught:
        from_wire(document, METADATA)
    assert caught.value.errors == {"op": [f"unknown operator {name!r}"]}


@pytest.mark.parametrize(("wire_type", "match"), [
    pytest.param({"n": "Frobnicate"}, "Unknown SQL type 'Frobnicate'", id="unknown-name"),
    pytest.param({"n": "os.system", "r": "system('id')"}, "not used by any column", id="import-path"),
])
def test_type_outside_the_allowlist(wire_type: dict[str, Any], match: str) -> None:
    document = base_document()
    where(document)["right"]["type"] = wire_type
    with pytest.raises(UnsupportedStatementError, match=match):
        from_wire(document, METADATA)


def test_enum_type_of_a_class_outside_the_allowlist() -> None:
    document = base_document()
    where(document)["right"]["type"] = {"n": "Enum", "k": {"enum_class": "os:Unlisted"}}
    with pytest.raises(UnknownEnumError, match="os:Unlisted"):
        from_wire(document, METADATA)


def test_type_reference_to_unknown_column() -> None:
    document = base_document()
    where(document)["right"]["type"] = {"col": ["users", "password"]}
    with pytest.raises(MalformedStatementError, match=r"users\.password"):
        from_wire(document, METADATA)


def test_enum_values_decode_only_for_classes_the_metadata_uses() -> None:
    resolver = TypeResolver(METADATA).resolve_enum
    assert decode_params([{"s": encode_value(Status.retired)}], enum_resolver=resolver) == [{"s": Status.retired}]
    with pytest.raises(UnknownEnumError, match="Unlisted"):
        decode_params([{"s": encode_value(Unlisted.x)}], enum_resolver=resolver)
    with pytest.raises(UnknownEnumError, match="'nope'"):
        decode_params([{"s": {"$e": [encode_value(Status.active)["$e"][0], "nope"]}}], enum_resolver=resolver)


def test_info_marks_a_select_writing_through_a_cte_as_not_read_only() -> None:
    # found by tests/security: WITH x AS (INSERT ... RETURNING) SELECT ... ran as a one-shot read,
    # outside any transaction, on an autocommit connection - a committed write nobody began
    written = sa.insert(users).values(name="x").returning(users.c.id).cte("written")
    info = info_of(sa.select(written.c.id))
    assert (info.kind, info.write_table) == ("select", "users")
    assert not info.is_read_only


def test_a_statement_writing_two_tables_is_refused() -> None:
    # the policy judges one write target; a second data-modifying CTE would write unseen
    first = sa.insert(users).values(name="x").returning(users.c.id).cte("first")
    second = sa.delete(addresses).returning(addresses.c.id).cte("second")
    with pytest.raises(UnsupportedStatementError, match="writes to users and addresses|writes to addresses and users"):
        info_of(sa.select(first.c.id, second.c.id))


def test_columns_keyed_by_anonymous_names_travel_by_position(dialects: Dialects) -> None:
    # found by SQLAlchemy's test suite (inheritance subqueryload of an aliased class): a labelled
    # subquery of an anonymous alias keys its columns "%(<seed> users)s_id", a seed of this process
    anon = users.alias()
    subq = sa.select(anon).set_label_style(sa.LABEL_STYLE_TABLENAME_PLUS_COL).subquery()
    key = next(k for k in subq.c.keys() if k.endswith("_id"))
    assert "%(" in key
    stmt = sa.select(subq.c[key]).where(subq.c[key] > 5)
    client, server, _, wire = round_trip(stmt, dialects)
    assert server.string == client.string
    assert '"pos"' in orjson.dumps(wire).decode()


@pytest.mark.parametrize("node,problem", [
    ({"t": "col", "from": {"t": "table", "name": "users"}, "pos": 99}, "position"),
    ({"t": "col", "from": {"t": "table", "name": "users"}, "pos": 0, "key": "id"}, "malformed"),
])
def test_column_positions_are_checked(node: dict[str, Any], problem: str) -> None:
    with pytest.raises(MalformedStatementError, match=problem):
        from_wire({"version": WIRE_VERSION, "statement": {"t": "select", "cols": [node]}}, METADATA)


@pytest.mark.parametrize("name", [None, "named_cte"])
def test_an_alias_of_a_cte_stays_an_alias(name: str | None, dialects: Dialects) -> None:
    # found by SQLAlchemy's test suite (aliased() of an entity aliased against a CTE): the server
    # rebuilt cte.alias() as the CTE itself, "FROM anon_1" instead of "FROM anon_2 AS anon_1"
    cte = sa.select(users).where(users.c.id > 5).cte(name)
    alias = cte.alias()
    stmt = sa.select(alias.c.id, cte.c.name).where(alias.c.id == cte.c.id)
    client, server, _, _ = round_trip(stmt, dialects)
    assert " AS anon_1" in client.string
    assert server.string == client.string


def test_columns_of_an_orm_subquery_keyed_by_attribute_travel_by_position(dialects: Dialects) -> None:
    # found by SQLAlchemy's test suite (RowLabelingTest): the subquery of an ORM select keys a
    # column by its attribute ("uname"), the Core select the server rebuilds by its name ("name")
    from sqlalchemy.orm import registry

    class Renamed:
        pass

    registry().map_imperatively(Renamed, users, properties={"uname": users.c.name})
    u1 = sa.select(Renamed.id, Renamed.uname).subquery("u1")  # type: ignore[attr-defined]
    stmt = sa.select(u1.c.uname).where(u1.c.id > 1)
    client, server, _, _ = round_trip(stmt, dialects)
    assert server.string == client.string


def _upserts(dialect_name: str) -> list[Any]:
    from sqlalchemy.dialects import sqlite

    module = pg if dialect_name == "postgresql" else sqlite
    ins = module.insert(users).values(id=1, name="a")
    out = [
        ins.on_conflict_do_nothing(),
        ins.on_conflict_do_nothing(index_elements=["id"]),
        ins.on_conflict_do_update(index_elements=[users.c.id], set_={"name": ins.excluded.name},
                                  where=users.c.name != "x"),
        ins.on_conflict_do_update(index_elements=["id"], index_where=users.c.id > 0,
                                  set_={users.c.name: "fixed"}).returning(users.c.id),
    ]
    if dialect_name == "postgresql":
        out.append(ins.on_conflict_do_update(constraint="users_pkey", set_={"name": "y"}))
    return out


def test_upserts_round_trip(dialects: Dialects) -> None:
    # found by SQLAlchemy's test suite (ORM bulk upserts, 82 tests): INSERT ... ON CONFLICT was
    # refused by the encoder as a raw SQL fragment
    for stmt in _upserts(dialects.name):
        client, server, info, _ = round_trip(stmt, dialects)
        assert "ON CONFLICT" in client.string
        assert server.string == client.string
        assert info.write_table == "users"


def test_mysql_upsert_is_refused_by_name() -> None:
    # MySQL / MariaDB's ON DUPLICATE KEY UPDATE has no wire node yet: the refusal must name it,
    # not call it a raw SQL fragment the user never wrote
    from sqlalchemy.dialects import mysql

    stmt = mysql.insert(users).values(id=1, name="a").on_duplicate_key_update(name="b")
    with pytest.raises(UnsupportedStatementError, match="on_duplicate_key_update cannot be sent"):
        to_wire(stmt)


def test_override_binds_travel_as_the_element_they_wrap(dialects: Dialects) -> None:
    # found by SQLAlchemy's test suite (relationship criteria and with_expression() reused from
    # the cache with new values: 8 tests): _OverrideBinds had no wire node
    from sqlalchemy.sql import elements as sql_elements

    original = sa.bindparam("p", "a")
    wrapped = sql_elements._OverrideBinds(users.c.name == original, [sa.bindparam("p", "b")], [original])
    client, server, _, _ = round_trip(sa.select(users.c.id).where(wrapped), dialects)
    assert server.string == client.string


@pytest.mark.parametrize("kind", ["update", "delete"])
def test_dml_on_an_aliased_table_writes_the_table(kind: str, dialects: Dialects) -> None:
    # found by SQLAlchemy's test suite (ORM update(aliased(Document)), 6 tests): the decoder
    # took the alias for a table; the policy must see the table written, not the alias
    alias = users.alias("u1")
    stmt = (sa.update(alias).values(name="x") if kind == "update" else sa.delete(alias)).where(alias.c.id == 5)
    client, server, info, _ = round_trip(stmt, dialects)
    assert server.string == client.string
    assert info.write_table == "users"


def test_function_as_comparison_round_trips(dialects: Dialects) -> None:
    # found by SQLAlchemy's test suite (FunctionAsPrimaryJoinTest: a relationship joined on
    # func.instr(...).as_comparison(1, 2)); rebuilt as a plain binary it lost its function
    other = users.alias("u2")
    cond = sa.func.instr(other.c.name, users.c.name + "/").as_comparison(1, 2)
    stmt = sa.select(users.c.id, other.c.id).join_from(users, other, cond)
    client, server, info, _ = round_trip(stmt, dialects)
    assert server.string == client.string
    assert "instr" in info.functions


def test_a_cloned_cte_stays_the_same_cte(dialects: Dialects) -> None:
    # found by SQLAlchemy's test suite (test_cte_clone_issue: the ORM clones a named CTE while
    # adapting a statement); rebuilt as two objects they were "Multiple, unrelated CTEs"
    cte = sa.select(users.c.id, users.c.name).where(users.c.id > 1).cte("test_cte")
    clone = cte._clone()
    stmt = sa.select(cte.c.name).where(cte.c.id.in_(sa.select(clone.c.id).scalar_subquery()))
    client, server, _, _ = round_trip(stmt, dialects)
    assert client.string.count("test_cte AS") == 1
    assert server.string == client.string


def test_a_lambda_element_travels_as_what_it_resolved_to(dialects: Dialects) -> None:
    # found by SQLAlchemy's test suite (subqueryload of a lambda statement): LambdaElement had
    # no wire node
    from sqlalchemy.sql import lambdas, roles

    limit = 5
    criteria = lambdas.LambdaElement(lambda: users.c.id > limit, roles.WhereHavingRole)
    client, server, _, _ = round_trip(sa.select(users.c.id).where(criteria), dialects)
    assert server.string == client.string


@pytest.mark.parametrize("node", [
    {"t": "tuple", "clauses": [{"t": "col", "from": {"t": "table", "name": "untyped"}, "key": "id"}]},
    {"t": "case", "whens": [[{"t": "true"}, {"t": "col", "from": {"t": "table", "name": "untyped"}, "key": "id"}]]},
    {"t": "function", "name": "coalesce", "args": [{"t": "col", "from": {"t": "table", "name": "untyped"}, "key": "id"}]},
])
def test_a_node_without_its_type_keeps_the_constructors(node: dict[str, Any]) -> None:
    """A hand-written document may leave "type" out: the element keeps the type SQLAlchemy's own
    constructor gives it. Assigning None left elements that crashed the compiler (a 500 the
    bounded-work generators found)."""
    metadata = sa.MetaData()
    sa.Table("untyped", metadata, sa.Column("id", sa.Integer, primary_key=True))
    stmt, _ = from_wire({"version": 2, "statement": {"t": "select", "cols": [{"t": "label", "name": "x", "element": node}]}},
                        metadata)
    element = stmt.selected_columns[0].element
    assert element.type is not None
    if node["t"] == "tuple":  # SQLAlchemy's own refusal, as a direct connection raises it
        with pytest.raises(sa.exc.CompileError, match="tuple"):
            stmt.compile()
    else:
        assert "untyped.id" in str(stmt.compile())
