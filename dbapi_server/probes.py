"""Liveness and readiness probes (blueprint ``dbapi_probes``, mounted at ``/dbapi/v1``).

======  ==========  ==========================================================================
GET     ``/live``   the process answers (200). No database, no token: a liveness probe that
                    fails only when the process is stuck, so a database outage never makes
                    the orchestrator restart every instance
GET     ``/ready``  200 when this instance should get new work: the database answers a round
                    trip, the instance is not shutting down, and its connection pool has room.
                    503 otherwise, with ``reason`` ``draining``, ``pool_exhausted``,
                    ``database_unreachable`` or ``database_busy``
GET     ``/health`` deprecated (kept for existing checks): the database round trip of
                    ``/ready``, answered as before; use ``/live`` and ``/ready``
======  ==========  ==========================================================================

No probe needs a token: they say nothing about the data (the answer counts open transactions).
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from flask import Blueprint, Response, current_app

from .connect_wait import no_wait
from .state import ServerState

__all__ = ["probes", "readiness"]

probes = Blueprint("dbapi_probes", __name__, url_prefix="/dbapi/v1")


def _state() -> ServerState:
    return current_app.extensions["dbapi_server"]  # type: ignore[no-any-return]


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status=status, mimetype="application/json")


@probes.get("/live")
def live() -> Response:
    return _json({"status": "alive"})


@probes.get("/ready")
def ready() -> Response:
    ok, body = readiness(_state())
    return _json(body, 200 if ok else 503)


@probes.get("/health")
def health() -> Response:
    state = _state()
    problem = _database_problem(state)
    if problem is not None:
        return _json({"status": "unhealthy", "database": problem.removeprefix("database_")}, 503)
    return _json({"status": "ok", "database": "ok", "transactions": state.transactions.stats()})


def readiness(state: ServerState) -> tuple[bool, dict[str, Any]]:
    """Whether *state*'s instance should take new work, and the probe's answer."""
    body: dict[str, Any] = {"transactions": state.transactions.stats()}
    if state.draining:
        return False, {"status": "not_ready", "reason": "draining", **body}
    if _pool_exhausted(state.engine.pool):
        # checked before the round trip: with every connection held, connecting would wait for
        # the pool timeout, and this instance is full anyway
        return False, {"status": "not_ready", "reason": "pool_exhausted", **body}
    problem = _database_problem(state)
    if problem is not None:
        return False, {"status": "not_ready", "reason": problem, **body}
    return True, {"status": "ready", **body}


def _pool_exhausted(pool: sa.pool.Pool) -> bool:
    checked_out, size = getattr(pool, "checkedout", None), getattr(pool, "size", None)
    max_overflow = getattr(pool, "_max_overflow", None)
    if not (callable(checked_out) and callable(size) and isinstance(max_overflow, int)) or max_overflow < 0:
        return False  # a pool without a bound (NullPool, StaticPool...)
    return int(checked_out()) >= int(size()) + max_overflow


def _database_problem(state: ServerState) -> str | None:
    try:
        with no_wait(), state.engine.connect() as conn:  # not ready now: the probe does not wait
            conn.execute(sa.select(sa.literal(1)))
    except sa.exc.DBAPIError:
        return "database_unreachable"
    except sa.exc.TimeoutError:  # every pooled connection is held
        return "database_busy"
    return None
