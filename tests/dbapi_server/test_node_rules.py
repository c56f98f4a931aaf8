"""The statement check is exhaustive: every node type of the wire grammar, every class it decodes
to, every attribute SQLAlchemy traverses has an access rule - and what has none is refused.

The grammar is walked three ways: the decoder's node types (``NODE_TYPES``), the schema's node
specs (``NODE_SPECS``), and real statements encoded by the client and decoded by the server, one
at least per node type. A node type added to the decoder without a rule in
``dbapi_server._node_rules`` fails here, and so does an element class or a traversed attribute
(a new SQLAlchemy version's) without one in ``dbapi_server._statement_scan``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import elements, visitors
from sqlalchemy.sql import expression as sql_expr

from dbapi_server import Policy, PolicyViolation
from dbapi_server import _statement_scan as scan_module
from dbapi_server._node_rules import NODE_RULES
from dbapi_server.auth import Principal
from query_translation import NODE_TYPES, from_wire, to_wire
from query_translation.decode import StatementInfo
from query_translation.schemas import NODE_SPECS
from tests.security._policy_support import POLICY_FILE, Base, DagRun, TaskInstance, Variable, XCom

V, TI = Variable, TaskInstance
WORKER = Principal(subject="w", claims={"role": "worker", "dag_id": "etl", "run_id": "r1"})


def _examples() -> dict[str, Callable[[], Any]]:
    """Statements that, encoded by the client, use every node type of the grammar between them."""
    ti_alias = TI.__table__.alias("t")  # type: ignore[attr-defined]
    label = V.val.label("v")
    return {
        "select": lambda: sa.select(V.id, V.key.label("k")).where(V.id > 1).order_by("k"),
        "alias_join": lambda: sa.select(ti_alias.c.id).join_from(ti_alias, XCom, XCom.ti_id == ti_alias.c.id),
        "nested_join": lambda: sa.select(TI.id).select_from(
            sa.join(TI, sa.join(XCom, DagRun, XCom.run_id == DagRun.run_id), XCom.ti_id == TI.id)),
        "subquery": lambda: sa.select(sa.select(V.id).subquery("s").c.id),
        "lateral": lambda: sa.select(V.id, sa.select(TI.id).where(TI.id == V.id).lateral("l").c.id),
        "cte": lambda: sa.select(sa.select(V.id).cte("c").c.id),
        "union": lambda: sa.union(sa.select(V.id).limit(1), sa.select(TI.id)).order_by("id"),
        "exists_scalar": lambda: sa.select(V.id, sa.select(sa.func.max(TI.id)).scalar_subquery())
        .where(sa.exists().where(TI.id == V.id)),
        "reused_label": lambda: sa.select(label, sa.func.count()).group_by(label).order_by(label),
        "operators": lambda: sa.select(V.id).where(
            sa.and_(V.id.between(1, 2), sa.not_(sa.literal(True)), sa.tuple_(V.id, V.key).in_([(1, "a")]),
                    V.id == sa.any_(sa.literal([1, 2], sa.ARRAY(sa.Integer))), sa.or_(V.key.is_(None), sa.true()),
                    (V.id + 1) * 2 > 0, V.key != sa.null(), sa.false() == sa.false())),
        "expressions": lambda: sa.select(
            sa.cast(V.id, sa.String), sa.type_coerce(V.key, sa.String), sa.case((V.id == 1, "a"), else_="b"),
            sa.func.row_number().over(order_by=V.id, rows=(None, 0)), sa.func.count().filter(V.id > 1),
            sa.func.percentile_cont(0.5).within_group(V.id), sa.extract("year", sa.func.now()),
            sa.desc(V.id), sa.distinct(V.id)),
        "function_as_binary": lambda: sa.select(V.id).where(sa.func.f(V.id, V.key).as_comparison(1, 2)),
        "literals": lambda: sa.select(sa.literal_column("1"), sa.text("2"), sa.column("key")).select_from(V),
        "textual_select": lambda: sa.text("SELECT 1 AS x").columns(sa.column("x")),
        "insert": lambda: sa.insert(XCom).values(id=1, ti_id=1, key="k", dag_id="etl", run_id="r1")
        .returning(XCom.id),
        "upsert": lambda: postgresql.insert(XCom).values(id=1, ti_id=1, key="k", dag_id="etl", run_id="r1")
        .on_conflict_do_update(index_elements=["id"], set_={"key": "j"}),
        "update": lambda: sa.update(TI).where(TI.id == 1).values(state="x"),
        "delete": lambda: sa.delete(XCom).where(XCom.id == 1),
        "savepoint": lambda: sql_expr.SavepointClause("sp"),  # type: ignore[no-untyped-call]
        "rollback_to_savepoint": lambda: sql_expr.RollbackToSavepointClause("sp"),  # type: ignore[no-untyped-call]
        "release_savepoint": lambda: sql_expr.ReleaseSavepointClause("sp"),  # type: ignore[no-untyped-call]
        "textual_label_reference": lambda: sa.select(V.id, elements._textual_label_reference("id")),
        # a grouping inside a statement: a document whose top node is no statement is refused
        "grouping_select": lambda: sa.union(sa.select(V.id).where(V.id.in_(sa.select(TI.id))).limit(1),
                                            sa.select(TI.id)),
    }


EXAMPLES = _examples()


def _decoded(name: str) -> tuple[Any, StatementInfo]:
    return from_wire(to_wire(EXAMPLES[name]()), Base.metadata)


def test_every_node_type_of_the_grammar_has_a_rule() -> None:
    assert set(NODE_RULES) == set(NODE_TYPES) == set(NODE_SPECS)
    for node, rule in NODE_RULES.items():
        assert rule.reads and rule.writes and rule.names, node


def test_the_documented_rule_table_lists_every_node_type() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    table = docs.split("### The statement check", 1)[1].split("\n## ", 1)[0]
    for node in NODE_RULES:
        assert f"| `{node}` |" in table, node


def test_the_examples_use_every_node_type() -> None:
    used: set[str] = set()
    for name in EXAMPLES:
        used |= _decoded(name)[1].node_types
    assert set(NODE_TYPES) - used == set()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_element_a_node_decodes_to_has_a_rule(name: str) -> None:
    statement, info = _decoded(name)
    for element in visitors.iterate(statement):
        assert scan_module.rule_for(element) is not None, (name, type(element))
    classes = {c for node in info.node_types for c in NODE_RULES[node].classes}
    for element in visitors.iterate(statement):
        if not isinstance(element, sa.sql.functions.FunctionElement) and type(element) not in classes:
            # an element the decoder builds must be one its node types declare
            assert any(isinstance(element, c) for c in classes), (name, type(element))


def test_every_declared_class_has_an_element_rule() -> None:
    for node, rule in NODE_RULES.items():
        for cls in rule.classes:
            assert cls in scan_module.ELEMENT_RULES, (node, cls)


def test_statements_walked_attribute_by_attribute_cover_every_traversed_attribute() -> None:
    for cls, rule in scan_module.ELEMENT_RULES.items():
        if rule.attributes is None:
            continue  # walked through get_children(): SQLAlchemy's own traversal, all of it
        traversed = {name for name, _ in cls._traverse_internals}  # type: ignore[attr-defined]
        assert traversed <= rule.attributes, (cls, traversed - rule.attributes)
    for cls in (sa.Insert, sa.Update, sa.Delete, postgresql.Insert):
        traversed = {name for name, _ in cls._traverse_internals}
        known = scan_module._INERT | scan_module._MUST_BE_EMPTY | scan_module._HINT_ATTRIBUTES | \
            scan_module._DML_SPECIAL | set(scan_module._DML_POSITIONS)
        assert traversed <= known, (cls, traversed - known)


def test_a_node_type_without_a_rule_is_refused() -> None:
    policy = Policy.from_file(POLICY_FILE, Base.metadata)
    info = StatementInfo(kind="select", read_tables={"variable"}, node_types={"select", "col", "table", "new_node"})
    with pytest.raises(PolicyViolation, match="node type"):
        policy.check(info, WORKER)
    info.node_types.discard("new_node")
    policy.check(info, WORKER)


@pytest.mark.parametrize("statement", [
    pytest.param(lambda: sa.select(sa.func.json_each(V.key).table_valued("value").c.value), id="table_valued"),
    pytest.param(lambda: sa.select(sa.values(sa.column("a", sa.Integer), name="v").data([(1,)])), id="values"),
    pytest.param(lambda: sa.select(sa.table("variable", sa.column("description")).c.description),
                 id="lightweight_table"),
    pytest.param(lambda: sa.select(V.id).prefix_with("HIGH_PRIORITY"), id="prefix"),
    pytest.param(lambda: sa.select(V.id).suffix_with("FOR SHARE"), id="suffix"),
])
def test_an_element_or_clause_without_a_rule_is_refused(statement: Callable[[], Any]) -> None:
    # built in this process: the decoder cannot build these, the walk must refuse them anyway
    with pytest.raises(PolicyViolation):
        scan_module.scan(statement())


# -- a DML statement inside a CTE: the write rules, as for the statement on its own ---------------
EDITOR = Principal(subject="e", claims={"role": "editor", "dag_id": "etl", "run_id": "r1"})


def _editor_policy() -> Policy:
    return Policy.from_dict({"roles": {"editor": {"tables": {
        "variable": {"read": ["id", "key", "val"], "update": ["val"], "insert": ["id", "key", "val"]},
        "xcom": {"read": "*", "insert": "*", "row_filter": {"dag_id": "dag_id", "run_id": "run_id"}},
        "task_instance": {"read": "*"},
    }}}})


def _plan(statement: Any) -> Any:
    statement, info = from_wire(to_wire(statement), Base.metadata)
    return _editor_policy().plan(statement, info, EDITOR, dialect="postgresql")


def test_a_data_modifying_cte_within_the_write_grants_is_allowed() -> None:
    upd = sa.update(V).where(V.id == 1).values(val="x").returning(V.id).cte("u")
    assert _plan(sa.select(upd.c.id)).statement is not None
    ins = sa.insert(V).values(id=5, key="k", val="v").returning(V.id).cte("i")
    assert _plan(sa.select(TI.id).where(TI.id.in_(sa.select(ins.c.id)))).statement is not None


@pytest.mark.parametrize(("name", "statement", "match"), [
    ("ungranted column", lambda: sa.update(V).values(description="x").returning(V.id), "description"),
    ("no delete grant", lambda: sa.delete(V).returning(V.id), "Deleting"),
    ("reads a hidden column", lambda: sa.update(V).values(val=V.description).returning(V.id), "description"),
    ("returns a hidden column", lambda: sa.update(V).values(val="x").returning(V.description), "description"),
    ("row-filtered table", lambda: sa.insert(XCom).values(id=9, ti_id=1, key="k", dag_id="etl", run_id="r1")
     .returning(XCom.id), "row-filtered"),
    ("table without a grant", lambda: sa.delete(DagRun).returning(DagRun.id), "dag_run"),
])
def test_a_data_modifying_cte_outside_the_write_grants_is_refused(name: str, statement: Callable[[], Any],
                                                                  match: str) -> None:
    cte = statement().cte("w")
    with pytest.raises(PolicyViolation, match=match):
        _plan(sa.select(list(cte.c)[0]))
