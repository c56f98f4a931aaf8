"""The differential comparison machinery shared by the tests.

``run_op`` runs one corpus operation on a fresh session and returns its
*outcome*: ``("ok", canonical(result))`` or ``("raised", exception class)``.
``compare_op`` runs an operation on the reference side (database A) and on the
side under test (database B) and returns the list of differences: the empty
list means "identical".
"""

from __future__ import annotations

import difflib
import pprint
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .canonical import canonical, diff_fingerprints, fingerprint, qualname
from .corpus import Op

SessionFactory = Callable[[], Session]


@dataclass
class Outcome:
    kind: str  # "ok" | "raised" | "canonical-raised"
    value: Any
    exc: BaseException | None = None

    def comparable(self) -> tuple:
        return (self.kind, self.value)


def run_op(op: Op, make_session: SessionFactory) -> Outcome:
    """Run ``op`` on a new session from ``make_session``; always closes it.

    The result is canonicalised while the session is still open.
    """
    session = make_session()
    try:
        try:
            result = op.fn(session)
        except Exception as exc:
            return Outcome("raised", qualname(type(exc)), exc)
        try:
            return Outcome("ok", canonical(result))
        except Exception as exc:
            return Outcome("canonical-raised", qualname(type(exc)), exc)
    finally:
        session.close()


MAX_DIFF_LINES = 120


def readable_diff(a: Any, b: Any, label_a: str = "A (reference)", label_b: str = "B (under test)") -> str:
    """A unified diff of the pretty-printed structures, cut after MAX_DIFF_LINES lines."""
    text_a = pprint.pformat(a, width=110).splitlines()
    text_b = pprint.pformat(b, width=110).splitlines()
    lines = list(difflib.unified_diff(text_a, text_b, label_a, label_b, lineterm="", n=2))
    if len(lines) > MAX_DIFF_LINES:
        lines = [*lines[:MAX_DIFF_LINES], f"... ({len(lines) - MAX_DIFF_LINES} more diff lines)"]
    return "\n".join(lines)


def _summary(out: Outcome) -> str:
    if out.exc is not None:
        return f"{out.kind} {qualname(type(out.exc))}: {str(out.exc)[:500]}"
    return out.kind


def compare_outcomes(a: Outcome, b: Outcome) -> list[str]:
    """Differences between two outcomes: a one-line summary of each side, then the diff."""
    if a.comparable() == b.comparable():
        return []
    msg = [
        "results differ:",
        f"  A (reference):  {_summary(a)}",
        f"  B (under test): {_summary(b)}",
        readable_diff(a.comparable(), b.comparable()),
    ]
    return ["\n".join(msg)]


def check_reference(op: Op, outcome: Outcome) -> list[str]:
    """Problems with the reference outcome itself (a bug in the operation).

    An operation may only raise on the reference side if it declared the
    exception class (``raises=``); anything else means the op is broken and
    would otherwise pass trivially as "both raised AttributeError".
    """
    if outcome.kind == "canonical-raised":
        return [f"canonical() failed on the reference result: {outcome.value}: {outcome.exc}"]
    if outcome.kind == "raised":
        assert outcome.exc is not None
        if not isinstance(outcome.exc, op.raises or ()):
            message = (
                f"operation {op.name} raised an undeclared {outcome.value} on the reference side: "
                f"{str(outcome.exc)[:500]}"
            )
            return [message]
    return []


def check_refusal(op: Op, outcome: Outcome, engine: sa.Engine, baseline: tuple | None) -> list[str]:
    """The side under test must refuse exactly as documented, and change nothing."""
    problems = []
    if outcome.kind != "raised" or not isinstance(outcome.exc, op.refused or ()):
        problems.append(f"expected the documented refusal {qualname(op.refused)}, got {_summary(outcome)}")
    if baseline is not None:
        diff = diff_fingerprints(baseline, fingerprint(engine))
        if diff:
            problems.append("a refused operation changed database B:\n  " + "\n  ".join(diff))
    return problems


@dataclass
class Comparison:
    outcome_a: Outcome
    outcome_b: Outcome
    problems: list[str]


def compare_op(
    op: Op,
    make_a: Any,
    make_b: Any,
    engine_a: sa.Engine,
    engine_b: sa.Engine,
    baseline: tuple | None = None,
    run_a: Callable[[Op, Any], Outcome] = run_op,
    run_b: Callable[[Op, Any], Outcome] = run_op,
) -> Comparison:
    """Run ``op`` on both sides and compare results and database state.

    For read operations (``writes=False``) both databases must still equal
    ``baseline`` (the seeded fingerprint) afterwards; for write operations the
    two fingerprints must be equal to each other. *run_a* / *run_b* run the
    operation with a session from *make_a* / *make_b* (default :func:`run_op`;
    the async corpus passes the runners of :mod:`.harness_async`).
    """
    out_a = run_a(op, make_a)
    out_b = run_b(op, make_b)
    if op.refused is not None:
        return Comparison(out_a, out_b, check_reference(op, out_a) + check_refusal(op, out_b, engine_b, baseline))
    problems = check_reference(op, out_a)
    problems += compare_outcomes(out_a, out_b)
    fp_a = fingerprint(engine_a)
    fp_b = fingerprint(engine_b)
    if op.writes or baseline is None:
        diff = diff_fingerprints(fp_a, fp_b)
        if diff:
            problems.append("database state differs after the operation:\n  " + "\n  ".join(diff))
    else:
        for label, fp in (("A", fp_a), ("B", fp_b)):
            diff = diff_fingerprints(baseline, fp)
            if diff:
                problems.append(
                    f"read-only operation changed database {label} (declare writes=True?):\n  "
                    + "\n  ".join(diff)
                )
    return Comparison(out_a, out_b, problems)
