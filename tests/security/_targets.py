"""The fuzzers' targets: one database behind one running DB-API, the client state and the tallies.

``Target`` serves the fuzz schema of ``_fuzzing`` with no policy; ``WorkerTarget`` the example
worker policy on ``_policy_support``'s schema, as a worker (``_worker_fuzz``). The fixtures that
start them are in ``test_fuzz.py``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa

from dbsession import DBSession
from query_translation import TypeResolver, decode_params, from_wire
from query_translation.fingerprint import sql_fingerprint
from tests.dbapi_server._support import RawApi
from tests.servers import RunningServer

from . import _fuzzing, _policy_support, _worker_fuzz
from ._fuzzing import Recorder, User, fingerprint_tables, seed_payloads

__all__ = ["Target", "WorkerTarget"]


class Target:
    """One database behind one running DB-API, the fuzzers' client state and their tallies."""

    served = _fuzzing.metadata
    statements = _fuzzing.SEEDS
    claims: dict[str, Any] = {}  # of every token the fuzzer mints (read only)
    hidden: tuple[str, ...] = ()  # values the served tables hold that no answer may contain

    def __init__(self, name: str, engine: sa.Engine, server: RunningServer) -> None:
        self.name, self.engine, self.server = name, engine, server
        self.api = RawApi(server)
        self.types = TypeResolver(self.served)
        self.seeds = seed_payloads(self.api, self.statements)
        self.recorder = Recorder(server.url, [*_fuzzing.secrets_of(engine), *self.hidden])
        self.token = server.mint("test-worker", ttl=3600, **self.claims)
        self.other_token = server.mint("someone-else", ttl=3600, **self.claims)
        self.expired_token = server.mint("test-worker", ttl=-60, **self.claims)
        self.odd_tokens = ["", "garbage", self.expired_token, self.other_token]
        self.rows_before = self.tables()
        self.writes_in_transactions = 0  # writes that ran (200) and must leave no trace
        self.last_left_open = 0.0
        self.left_to_reaper = 0  # transactions the fuzzer never ended: the reaper must undo them
        self.kept: Counter[str] = Counter()  # commit after a refusal: outcomes by status and code
        self.kept_rows: list[tuple[Any, ...]] = []  # the good writes committed so far

    def headers(self, token: str | None = None, content_type: str | None = "application/json") -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token or self.token}"} if token != "" else {}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def tables(self) -> dict[str, list[tuple[Any, ...]]]:
        return fingerprint_tables(self.engine, self.served)

    def fingerprint(self, body: dict[str, Any]) -> None:
        """Give a mutated body the fingerprint of what it now says, as an attacker would (the decoder
        and compiler are public), so that the policy and the database - not the SQL check - meet it."""
        try:
            statement, _ = from_wire(body["stmt"], self.served, self.types)
            params = decode_params(body.get("params") or [{}])
            compiled = statement.compile(dialect=self.engine.dialect, column_keys=sorted(params[0]))
            body["sql"] = sql_fingerprint(compiled)
        except Exception:  # not rebuildable: the server will say why, unsigned
            pass

    def kept_write(self, n: int) -> tuple[sa.Table, dict[str, Any]]:
        """The known good write of the commit-after-refusal phase."""
        return _fuzzing.Order.__table__, {"id": 100_000 + n, "user_id": 1, "amount": 1, "note": f"kept-{n}"}  # type: ignore[return-value]

    def probe(self, session: DBSession) -> None:
        """An ordinary read and write by an isolated session: the server still serves."""
        user = session.get(User, 3)
        assert user is not None and user.name == "user3"
        user.score += 1
        session.flush()


class WorkerTarget(Target):
    """A worker of dag run etl/r1 under the example policy; every other run's rows are hidden."""

    served = _policy_support.Base.metadata
    statements = _worker_fuzz.WORKER_SEEDS
    claims = {"role": "worker", **_policy_support.MINE}
    hidden = _worker_fuzz.HIDDEN_VALUES

    def __init__(self, name: str, engine: sa.Engine, server: RunningServer, oracle: sa.Engine | None) -> None:
        super().__init__(name, engine, server)
        self.oracle = oracle  # what the worker may see, copied (SQLite only: the same dialect answers alike)
        self.reads: Counter[int] = Counter()  # composed reads by status
        mine = _policy_support.MINE
        self.odd_tokens += [server.mint("test-worker", ttl=3600, role="scheduler", **mine),  # no such role
                            server.mint("test-worker", ttl=3600, role="worker", dag_id="etl"),  # claim missing
                            server.mint("test-worker", ttl=3600, role="worker", dag_id="etl", run_id=["r1"])]

    def kept_write(self, n: int) -> tuple[sa.Table, dict[str, Any]]:
        return _policy_support.XCom.__table__, {"id": 100_000 + n, "ti_id": 1, "key": "kept", "value": f"kept-{n}",  # type: ignore[return-value]
                                         **_policy_support.MINE}

    def probe(self, session: DBSession) -> None:
        ti = session.get(_policy_support.TaskInstance, 1)
        assert ti is not None and session.get(_policy_support.TaskInstance, 5) is None
        ti.state = "probed"
        session.flush()
