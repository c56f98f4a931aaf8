"""Sanity tests proving the comparison machinery can fail.

A differential harness that always says "identical" proves nothing, so these
tests feed it deliberately different results, fingerprints and session
factories and assert that it reports the difference.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from .canonical import canonical, diff_fingerprints, fingerprint
from .conftest import DatabasePair
from .corpus import OPS, Op
from .harness import Outcome, check_reference, compare_op, compare_outcomes, run_op
from .models import Dag, Log, TaskState, Variable

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1, True),
        (1, 1.0),
        (1, Decimal(1)),
        (Decimal("0.0100"), Decimal("0.01")),
        (0.0, -0.0),
        (float("nan"), None),
        ("1", 1),
        (b"", ""),
        (b"x", bytearray(b"x")),
        (
            dt.datetime(2024, 1, 1, 5, 30, tzinfo=IST),
            dt.datetime(2024, 1, 1, 0, 0, tzinfo=dt.UTC),
        ),
        (dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, tzinfo=dt.UTC)),
        (dt.datetime(2024, 1, 1, fold=0), dt.datetime(2024, 1, 1, fold=1)),
        (dt.date(2024, 1, 1), dt.datetime(2024, 1, 1)),
        (uuid.UUID(int=1), str(uuid.UUID(int=1))),
        (TaskState.SUCCESS, "SUCCESS"),
        (TaskState.SUCCESS, TaskState.FAILED),
        ([1, 2], (1, 2)),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        (None, "None"),
        (ValueError(), KeyError()),
    ],
)
def test_canonical_distinguishes(a, b) -> None:
    assert canonical(a) != canonical(b)


def test_canonical_is_nan_safe_and_stable() -> None:
    assert canonical([float("nan"), Decimal("1.50")]) == canonical([float("nan"), Decimal("1.50")])


def test_canonical_orm_instances() -> None:
    d1 = Dag(dag_id="x", owner="a", is_paused=False)
    d2 = Dag(dag_id="x", owner="b", is_paused=False)
    assert canonical(d1) != canonical(d2)
    assert canonical(d1) == canonical(Dag(dag_id="x", owner="a", is_paused=False))
    # shared references and cycles terminate and are visible
    assert canonical([d1, d1]) != canonical([d1, Dag(dag_id="x", owner="a", is_paused=False)])


def test_outcome_comparison_reports_difference() -> None:
    a = Outcome("ok", canonical([1, "x"]))
    assert compare_outcomes(a, Outcome("ok", canonical([1, "x"]))) == []
    problems = compare_outcomes(a, Outcome("ok", canonical([1, "y"])))
    assert problems and "results differ" in problems[0] and "'y'" in problems[0]
    raised = Outcome(
        "raised",
        "sqlalchemy.exc.IntegrityError",
        sa.exc.IntegrityError("s", {}, Exception("x")),
    )
    assert compare_outcomes(a, raised)
    other = Outcome("raised", "sqlalchemy.exc.OperationalError")
    assert compare_outcomes(raised, other)


def test_undeclared_reference_exception_is_a_problem() -> None:
    def broken(s: Session):
        raise AttributeError("typo in the operation")

    op = Op("sanity.broken", broken, False, None, ())
    out = Outcome("raised", "builtins.AttributeError", AttributeError("x"))
    assert check_reference(op, out)
    declared = Op("sanity.declared", broken, False, None, (AttributeError,))
    assert check_reference(declared, out) == []


def test_fingerprint_detects_changes(db_pair: DatabasePair) -> None:
    engine = db_pair.a.engine
    try:
        base = fingerprint(engine)
        assert diff_fingerprints(base, fingerprint(db_pair.b.engine)) == []
        with Session(engine) as s:
            s.get(Variable, 1).val = "changed"
            s.commit()
        changed = fingerprint(engine)
        assert changed != base
        problems = diff_fingerprints(base, changed)
        assert problems and "changed" in problems[0]
        # JSON null and SQL NULL both read back as None; the fingerprint must tell them apart
        with Session(engine) as s:
            log = s.scalars(sa.select(Log).where(Log.payload.is_(None)).order_by(Log.id).limit(1)).one()
            log.payload = sa.JSON.NULL  # JSON 'null' instead of SQL NULL
            s.commit()
        assert diff_fingerprints(changed, fingerprint(engine))
    finally:
        db_pair.dirty = True


def test_harness_catches_a_divergent_side(db_pair: DatabasePair) -> None:
    """compare_op must fail when the side under test diverges (here: different data in B)."""
    if db_pair.dirty:
        db_pair.reseed()
    a, b = db_pair.a.engine, db_pair.b.engine
    try:
        op = OPS["filter.eq"]
        same = compare_op(
            op,
            sessionmaker(bind=a),
            sessionmaker(bind=b),
            a,
            b,
            baseline=db_pair.baseline,
        )
        assert same.problems == []
        with Session(b) as s:
            s.get(Dag, "example_bash").owner = "tampered"
            s.commit()
        diverged = compare_op(
            op,
            sessionmaker(bind=a),
            sessionmaker(bind=b),
            a,
            b,
            baseline=db_pair.baseline,
        )
        text = "\n".join(diverged.problems)
        assert "results differ" in text and "tampered" in text
        assert "read-only operation changed database B" in text
        # a write operation run against the wrong database: results and state differ
        wop = OPS["write.modify_commit"]
        wrong = compare_op(wop, sessionmaker(bind=a), sessionmaker(bind=a), a, b)
        assert any("database state differs" in p for p in wrong.problems)
    finally:
        db_pair.dirty = True


def test_run_op_closes_session_and_captures_exceptions() -> None:
    closed = []

    class Tracking(Session):
        def close(self) -> None:
            closed.append(True)
            super().close()

    def boom(s: Session):
        raise sa.exc.NoResultFound("none")

    out = run_op(Op("sanity.boom", boom, False, None, ()), lambda: Tracking())
    assert out.kind == "raised" and out.value == "sqlalchemy.exc.NoResultFound"
    assert closed == [True]


def test_corpus_shape() -> None:
    assert len(OPS) >= 160
    categories = {o.category for o in OPS.values()}
    assert {
        "filter",
        "query",
        "select",
        "get",
        "order",
        "agg",
        "join",
        "subq",
        "load",
        "write",
        "error",
        "types",
        "txn",
    } <= categories
    assert sum(o.writes for o in OPS.values()) >= 40
