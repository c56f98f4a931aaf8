"""Hypothesis generators of statements by class, for the worker policy's property tests.

Three classes, each generated whole rather than listed:

- :func:`nested_dml` - an INSERT / UPDATE / DELETE into any table, wherever a statement can nest:
  a CTE (read by a SELECT, an UPDATE, an INSERT ... FROM SELECT, another CTE, a compound SELECT),
  and - through the wire grammar, since SQLAlchemy itself will not build them - any slot of a
  subquery, alias, lateral, scalar subquery, EXISTS, IN, compound SELECT or INSERT ... SELECT
  (:func:`dml_in_wire_slots`);
- :func:`names` - every way a name reaches the database: a bare ``column()``, a qualified one, a
  textual label reference, ``order_by`` / ``group_by`` / DISTINCT ON by string, a label rendered
  by name, raw ``literal_column`` / ``text``; the names are every table's columns (granted or
  not), table and alias names, system columns, in any case, accented; in the select list,
  WHERE, ORDER BY, GROUP BY, HAVING, and correlated from a subquery;
- :func:`repeats` - one element (label, bare name, textual reference, subquery, scalar subquery,
  CTE, column) used in several positions of one statement: the encoder sends it once and refers
  to it (``{"t": "ref"}``) everywhere else.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import sqlalchemy as sa
from hypothesis import strategies as st
from sqlalchemy.sql import elements

from ._policy_support import MINE, Connection, DagCode, DagRun, TaskInstance, Variable, XCom

__all__ = ["dml_in_wire_slots", "names", "nested_dml", "repeats"]

ENTITIES = (Variable, XCom, TaskInstance, DagRun, DagCode, Connection)
READABLE = (Variable, XCom, TaskInstance, DagRun)
_TABLES: tuple[sa.Table, ...] = tuple(e.__table__ for e in ENTITIES)  # type: ignore[attr-defined]
SYSTEM_NAMES = ("rowid", "oid", "_rowid_", "ctid", "xmin", "xmax", "tableoid", "cmin")
ALIAS = "o"


# -- nested DML ---------------------------------------------------------------------------------------
def _dml(draw: st.DrawFn, entity: Any) -> Any:
    """An INSERT / UPDATE / DELETE of *entity*'s table RETURNING its id (values from its own columns or
    parameters; an insert of the worker's own run where the table has dag_id / run_id)."""
    table: sa.Table = entity.__table__
    kind = draw(st.sampled_from(("insert", "update", "delete")), label="dml kind")
    text_columns = [c for c in table.c if isinstance(c.type, (sa.String, sa.Text)) and not c.primary_key]
    if kind == "insert":
        values: dict[str, Any] = {"id": draw(st.integers(800_000, 899_999), label="new id")}
        for column in table.c:
            if column.name in MINE:
                values[column.name] = MINE[column.name]
            elif column.name == "ti_id":
                values[column.name] = 1
            elif not column.primary_key and not column.nullable or column in text_columns[:1]:
                values[column.name] = "gen" if isinstance(column.type, (sa.String, sa.Text)) else 1
        dml: Any = sa.insert(table).values(**values)
    elif kind == "update":
        column = draw(st.sampled_from(text_columns), label="updated column")
        value = draw(st.sampled_from(("gen", None)), label="value")
        dml = sa.update(table).values({column.name: value if value is not None else table.c.id.cast(sa.String)})
        if draw(st.booleans(), label="where"):
            dml = dml.where(table.c.id == draw(st.sampled_from((1, 2, 5)), label="row"))
    else:
        dml = sa.delete(table)
        if draw(st.booleans(), label="where"):
            dml = dml.where(table.c.id == draw(st.sampled_from((1, 2, 5)), label="row"))
    return dml.returning(table.c.id)


@st.composite
def nested_dml(draw: st.DrawFn) -> Any:
    """A DML statement inside a CTE, in every place SQLAlchemy lets a CTE be read from."""
    entity = draw(st.sampled_from(ENTITIES), label="written table")
    cte = _dml(draw, entity).cte("w")
    place = draw(st.sampled_from(("select", "select_where", "join", "update", "delete", "insert_from_select",
                                  "cte_in_cte", "union", "scalar", "exists")), label="place")
    ti, xcom = TaskInstance, XCom
    if place == "select":
        return sa.select(cte.c.id)
    if place == "select_where":
        return sa.select(ti.id).where(ti.id.in_(sa.select(cte.c.id)))
    if place == "join":
        return sa.select(ti.id, cte.c.id).join_from(ti, cte, cte.c.id == ti.id, isouter=True)
    if place == "update":
        return sa.update(ti).where(ti.id.in_(sa.select(cte.c.id))).values(state="gen")
    if place == "delete":
        return sa.delete(xcom).where(xcom.id.in_(sa.select(cte.c.id)))
    if place == "insert_from_select":
        return sa.insert(xcom).from_select(
            ["id", "ti_id", "dag_id", "run_id", "key"],
            sa.select(cte.c.id + 700_000, sa.literal(1), sa.literal(MINE["dag_id"]), sa.literal(MINE["run_id"]),
                      sa.literal("gen")))
    if place == "cte_in_cte":
        return sa.select(sa.select(cte.c.id).cte("outer").c.id)
    if place == "union":
        return sa.union(sa.select(ti.id), sa.select(cte.c.id))
    if place == "scalar":
        return sa.select(ti.id, sa.select(sa.func.max(cte.c.id)).scalar_subquery())
    return sa.select(ti.id).where(sa.exists(sa.select(cte.c.id)))


# Base statements whose marked node (a nested SELECT) the wire generator replaces with a DML node.
# The DML has no parameters (values from the target's own columns): the body needs none.
_WIRE_BASES = {
    "subquery": lambda: sa.select(sa.select(TaskInstance.id).subquery("s").c.id),
    "lateral": lambda: sa.select(TaskInstance.id, sa.select(TaskInstance.id).lateral("l").c.id),
    "scalar_select": lambda: sa.select(sa.select(TaskInstance.id).scalar_subquery()),
    "exists": lambda: sa.select(TaskInstance.id).where(sa.exists(sa.select(TaskInstance.id))),
    "in": lambda: sa.select(TaskInstance.id).where(TaskInstance.id.in_(sa.select(TaskInstance.id))),
    "union": lambda: sa.union(sa.select(TaskInstance.id), sa.select(TaskInstance.id)),
    "insert_from_select": lambda: sa.insert(XCom).from_select(["id"], sa.select(TaskInstance.id)),
    "cte": lambda: sa.select(sa.select(TaskInstance.id).cte("c").c.id),
    "select_grouping": lambda: sa.union(sa.select(TaskInstance.id).limit(5), sa.select(TaskInstance.id)),
}


def _parameterless_dml(draw: st.DrawFn) -> Any:
    entity = draw(st.sampled_from(ENTITIES), label="written table")
    table: sa.Table = entity.__table__
    kind = draw(st.sampled_from(("insert", "update", "delete")), label="dml kind")
    if kind == "update":
        column = next(c for c in table.c if isinstance(c.type, (sa.String, sa.Text)) and not c.primary_key)
        stmt: Any = sa.update(table).values({column.name: sa.cast(table.c.id, column.type)})
    elif kind == "delete":
        stmt = sa.delete(table)
    else:
        stmt = sa.insert(table).from_select([c.name for c in table.c],
                                            sa.select(*[c + 800_000 if c.primary_key else c for c in table.c]))
    return stmt.returning(table.c.id)


def _renumber(node: Any, offset: int) -> Any:
    if isinstance(node, dict):
        out = {k: _renumber(v, offset) for k, v in node.items()}
        if "@" in out and isinstance(out["@"], int):
            out["@"] += offset
        return out
    if isinstance(node, list):
        return [_renumber(v, offset) for v in node]
    return node


def _slots(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every nested SELECT node (not the top one)."""
    found: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        if node.get("t") in ("select", "compound_select") and path:
            found.append(path)
        for key, value in node.items():
            found += _slots(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _slots(value, (*path, index))
    return found


@st.composite
def dml_in_wire_slots(draw: st.DrawFn, to_wire: Any) -> tuple[str, dict[str, Any]]:
    """(base name, wire statement): a parameterless DML node where a nested SELECT stood."""
    base = draw(st.sampled_from(sorted(_WIRE_BASES)), label="base")
    document = copy.deepcopy(to_wire(_WIRE_BASES[base]())["statement"])
    slot = draw(st.sampled_from(_slots(document)), label="slot")
    dml = _renumber(to_wire(_parameterless_dml(draw))["statement"], 100_000)
    parent: Any = document
    for key in slot[:-1]:
        parent = parent[key]
    parent[slot[-1]] = dml
    return base, document


# -- names -------------------------------------------------------------------------------------------
def _cased(draw: st.DrawFn, name: str) -> str:
    how = draw(st.sampled_from(("same", "upper", "title", "random", "accent")), label="case")
    if how == "upper":
        return name.upper()
    if how == "title":
        return name.title()
    if how == "random":
        flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)), label="flips")
        return "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True))
    if how == "accent":
        return name.replace("e", "é", 1).replace("o", "ö", 1)
    return name


def _a_name(draw: st.DrawFn) -> str:
    source = draw(st.sampled_from(("column", "column", "column", "table", "alias", "system")), label="name source")
    if source == "column":
        table = draw(st.sampled_from(_TABLES), label="name's table")
        name = draw(st.sampled_from([c.name for c in table.c]), label="column name")
    elif source == "table":
        name = draw(st.sampled_from([t.name for t in _TABLES]), label="table name")
    elif source == "alias":
        name = ALIAS
    else:
        name = draw(st.sampled_from(SYSTEM_NAMES), label="system name")
    return _cased(draw, name)


@st.composite
def names(draw: st.DrawFn) -> Any:
    """A SELECT over readable tables in which one name reaches the database in one way, somewhere."""
    entity = draw(st.sampled_from(READABLE), label="from")
    table: sa.Table = entity.__table__
    source: Any = table.alias(ALIAS) if draw(st.booleans(), label="aliased") else table
    name = _a_name(draw)
    how = draw(st.sampled_from(("bare", "qualified", "textual", "order_by_string", "group_by_string", "label_by_name",
                                "literal", "text", "distinct_on")), label="how")
    where = draw(st.sampled_from(("columns", "where", "order_by", "group_by", "having", "correlated")),
                 label="where")
    if how == "bare":
        element: Any = sa.column(name)
    elif how == "qualified":
        element = sa.column(name, _selectable=source)
    elif how == "textual":
        element = elements._textual_label_reference(name)
    elif how == "literal":
        element = sa.literal_column(name)
    elif how == "text":
        element = sa.text(name)
    else:
        element = None
    readable = source.c.id
    stmt: Any = sa.select(readable).select_from(source)
    if how == "order_by_string":
        return stmt.order_by(name)
    if how == "group_by_string":
        return sa.select(sa.func.count()).select_from(source).group_by(name)
    if how == "distinct_on":
        from sqlalchemy.dialects.postgresql import distinct_on

        return stmt.ext(distinct_on(name))
    if how == "label_by_name":
        label = readable.label(name)
        clause = draw(st.sampled_from(("order_by", "group_by", "where")), label="label used in")
        stmt = sa.select(label, sa.func.count()).select_from(source).group_by(readable)
        if clause == "order_by":
            return stmt.order_by(elements._label_reference(label))
        if clause == "group_by":
            return sa.select(label).select_from(source).group_by(elements._label_reference(label))
        return sa.select(label).select_from(source).where(sa.Grouping(elements._textual_label_reference(name))
                                                          .is_not(None))
    if where == "columns":
        return sa.select(readable, element).select_from(source)
    if where == "where":
        return stmt.where(sa.cast(element, sa.String).like("%SECRET%"))
    if where == "order_by":
        return stmt.order_by(element)
    if where == "group_by":
        return sa.select(sa.func.count()).select_from(source).group_by(element)
    if where == "having":
        return sa.select(sa.func.count()).select_from(source).group_by(readable).having(
            sa.func.max(sa.cast(element, sa.String)) > "")
    inner_entity = draw(st.sampled_from(READABLE), label="inner table")
    return stmt.where(sa.exists(sa.select(inner_entity.id).where(sa.cast(element, sa.String) != "")))


# -- repeats -----------------------------------------------------------------------------------------
_counter = itertools.count()


@st.composite
def repeats(draw: st.DrawFn) -> Any:
    """One element used in several positions of a SELECT over a readable table (and its own FROM)."""
    entity = draw(st.sampled_from(READABLE), label="from")
    table: sa.Table = entity.__table__
    column = draw(st.sampled_from(list(table.c)), label="column")
    other = draw(st.sampled_from(ENTITIES), label="other table").__table__
    kind = draw(st.sampled_from(("label", "hidden_label", "bare", "textual", "subquery", "scalar", "cte",
                                 "column")), label="repeated")
    if kind == "label":
        element: Any = column.label(_cased(draw, draw(st.sampled_from([c.name for c in table.c]), label="label")))
    elif kind == "hidden_label":
        element = draw(st.sampled_from(list(other.c)), label="other column").label("x")
    elif kind == "bare":
        element = sa.column(_a_name(draw))
    elif kind == "textual":
        element = elements._textual_label_reference(_a_name(draw))
    elif kind == "subquery":
        element = sa.select(draw(st.sampled_from(list(other.c)), label="sub column")).subquery(f"s{next(_counter)}")
    elif kind == "scalar":
        element = sa.select(sa.func.max(draw(st.sampled_from(list(other.c)), label="sub column"))).scalar_subquery()
    elif kind == "cte":
        element = sa.select(draw(st.sampled_from(list(other.c)), label="cte column")).cte(f"c{next(_counter)}")
    else:
        element = column
    places = draw(st.lists(st.sampled_from(("columns", "where", "order_by", "group_by", "from")), min_size=2,
                           max_size=4), label="places")
    if isinstance(element, (sa.Subquery, sa.CTE)):
        value = list(element.c)[0]
        stmt: Any = sa.select(table.c.id).select_from(table)
        for i, place in enumerate(places):
            if place == "from" or place == "columns":
                stmt = stmt.add_columns(value.label(f"r{i}"))
            elif place == "where":
                stmt = stmt.where(sa.cast(value, sa.String) != "")
            else:
                stmt = stmt.order_by(value)
        return stmt
    stmt = sa.select(table.c.id).select_from(table)
    grouped = "group_by" in places
    for i, place in enumerate(places):
        if place in ("columns", "from"):
            stmt = stmt.add_columns(element if i == 0 and isinstance(element, sa.Label) else
                                    sa.cast(element, sa.String).label(f"r{i}"))
        elif place == "where":
            stmt = stmt.where(sa.cast(element, sa.String).is_not(None))
        elif place == "order_by":
            stmt = stmt.order_by(element)
        else:
            stmt = stmt.group_by(element)
    if grouped:
        stmt = stmt.group_by(table.c.id)
    return stmt
