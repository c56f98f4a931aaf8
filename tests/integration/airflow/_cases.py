"""Run one operation of Airflow's own code on both twins and compare (``_twins``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.integration.airflow._twins import TALLY, Side, airflow_on, outcome

RUN_ID = "manual__2026-03-01T00:00:00+00:00"


def both(sides: tuple[Side, Side], name: str, op: Callable[[Side], Any]) -> Any:
    """*op* on the direct twin, then on the isolated one; their outcomes must be identical."""
    results = []
    for side in sides:
        with airflow_on(side):
            results.append(outcome(lambda side=side: op(side)))  # type: ignore[misc]
    identical = results[0] == results[1]
    TALLY.record(name, identical)
    assert results[1] == results[0], f"{name}: isolated {results[1]!r}\n   direct {results[0]!r}"
    return results[0]
