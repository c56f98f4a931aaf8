"""Server-side interactive transactions.

A client's transaction lives here, holding one database connection, from the first statement
that needs it until commit, rollback, or ``idle_timeout`` seconds without a request (then it is
rolled back and its connection returned). Requests carry the transaction id and a sequence
number: a retried request (same number) gets the stored answer instead of running twice, and the
outcome of a finished transaction is remembered for ``outcome_ttl`` seconds, so a commit whose
answer was lost can be asked again and never commits twice.

With an outcome table (:mod:`dbapi_server.outcomes`, the default of ``create_app``) a commit also
writes its outcome row in the transaction, just before COMMIT, and a commit of a transaction this
instance does not hold - it ran on an instance that died, or the retry reached another instance -
is answered from that table (fencing it as not committed if it has no row). A COMMIT whose
connection broke is settled the same way, so even then the answer is the truth.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from .errors import APIError, envelope_for_exception
from .outcomes import COMMITTED, CommitInDoubt, CommitOutcomes, owner_key
from .telemetry import label

log = logging.getLogger("dbapi_server.transactions")

__all__ = ["Answer", "Transaction", "TransactionManager", "TransactionNotHere"]

Answer = tuple[int, bytes]  # an HTTP status and the JSON body sent with it


class TransactionGone(APIError):
    status = 410
    code = "transaction_gone"


class TransactionConflict(APIError):
    status = 409
    code = "transaction_conflict"


class TransactionNotHere(APIError):
    """A request for a transaction this instance does not hold (another instance holds it, or its
    instance died or restarted): nothing ran. The client treats it as a lost connection."""

    status = 410
    code = "transaction_not_here"


class ShuttingDown(APIError):
    """A new transaction asked of an instance that is draining (SIGTERM): nothing ran; retry."""

    status = 503
    code = "shutting_down"


@dataclass
class Transaction:
    id: str
    owner: str | None
    connection: sa.Connection
    root: sa.RootTransaction
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_seq: int = 0
    last_reply: tuple[int, bytes] | None = None
    last_used: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    ended: bool = False  # set under ``lock`` once committed / rolled back / expired


class TransactionManager:
    """Open transactions by id, finished outcomes by id, and the idle reaper."""

    def __init__(self, engine: sa.Engine, *, idle_timeout: float = 60.0,
                 outcome_ttl: float = 600.0, max_outcomes: int = 100_000,
                 outcomes: CommitOutcomes | None = None) -> None:
        self.engine = engine
        self.outcomes = outcomes  # the outcome table; None: outcomes live in this process only
        self.after_commit: Callable[[Transaction], None] | None = None  # test hook (dbapi_server._test_hooks)
        self.idle_timeout = idle_timeout
        self.outcome_ttl = outcome_ttl
        self._max_outcomes = max_outcomes
        self._open: dict[str, Transaction] = {}
        self._outcomes: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self.also_reap: list[Callable[[], object]] = []  # other idle resources (result cursors)
        self.refuse_new = False  # draining: no new transactions (ShuttingDown), the open ones go on
        self._ended: Counter[str] = Counter()  # outcomes so far, for the metrics
        self._settled_counts: Counter[str] = Counter()  # answered from the outcome table, for the metrics

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap_loop, name="dbapi-txn-reaper", daemon=True)
            self._reaper.start()

    def close(self) -> None:
        self._stop.set()
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join(timeout=10)  # wakes at once: it waits on _stop
        with self._lock:
            transactions = list(self._open.values())
            self._open.clear()
        for txn in transactions:
            if not txn.ended:
                self._end(txn, "rollback")

    # -- lookup -------------------------------------------------------------------------------
    def begin(self, txn_id: str, owner: str | None) -> tuple[Transaction, bool]:
        """The transaction *txn_id*, created if new; second item: whether it was created."""
        found = self._existing(txn_id, owner)
        if found is not None:
            return found, False
        if self.refuse_new:
            raise ShuttingDown("This DB-API instance is shutting down and takes no new transactions; "
                               "retry (another instance will take it).", retryable=True)
        # connect outside the lock: waiting for a pooled connection must not stop the reaper
        # (which frees connections) or every other transaction's requests
        connection = self.engine.connect()
        try:
            root = connection.begin()
        except BaseException:
            connection.close()
            raise
        with self._lock:
            raced = self._open.get(txn_id)
            if raced is None and txn_id not in self._outcomes:
                txn = self._open[txn_id] = Transaction(txn_id, owner, connection, root)
                return txn, True
        connection.close()  # a retry of the same begin won the race
        found = self._existing(txn_id, owner)
        if found is None:
            raise TransactionConflict(f"Transaction {txn_id} has already ended.")
        return found, False

    def _existing(self, txn_id: str, owner: str | None) -> Transaction | None:
        with self._lock:
            txn = self._open.get(txn_id)
            if txn is not None:
                self._check_owner(txn, owner)
                return txn
            if txn_id in self._outcomes:
                raise TransactionConflict(f"Transaction {txn_id} has already ended.")
        return None

    def get(self, txn_id: str, owner: str | None) -> Transaction:
        with self._lock:
            txn = self._open.get(txn_id)
        if txn is None:
            outcome = self.outcome(txn_id)
            if outcome == "expired":
                raise TransactionGone(
                    f"Transaction {txn_id} was idle for more than {self.idle_timeout:g}s and was "
                    "rolled back; start a new transaction.")
            if outcome is not None:
                raise TransactionGone(f"Transaction {txn_id} has ended ({outcome.replace('_', ' ')}).",
                                      outcome=outcome)
            raise TransactionNotHere(
                f"Transaction {txn_id} is not open on this DB-API instance (its instance stopped, or "
                "the request reached another instance); nothing ran. Roll back and start a new "
                "transaction.")
        self._check_owner(txn, owner)
        return txn

    @staticmethod
    def _check_owner(txn: Transaction, owner: str | None) -> None:
        if txn.owner != owner:
            raise TransactionConflict("This transaction belongs to another caller.", status=403,
                                      code="forbidden_transaction")

    def outcome(self, txn_id: str) -> str | None:
        with self._lock:
            found = self._outcomes.get(txn_id)
        return found[1] if found else None

    # -- the replay protocol: one request of a transaction ------------------------------------
    def run_request(self, txn_id: str, owner: str | None, seq: int, *, begin: bool,
                    run: Callable[[sa.Connection], dict[str, Any] | None],
                    then: Callable[[Transaction], dict[str, Any]] | None = None,
                    enter: Callable[[sa.Connection], object] | None = None,
                    on_lost: Callable[[], object] | None = None) -> Answer:
        """Run *run* as request *seq* of transaction *txn_id*, exactly once; the answer to send.

        The protocol every request of a client transaction follows (``/execute``, ``/batch``,
        named methods):

        * *begin*: the transaction is created by this request (or is the one an earlier attempt
          of it created); otherwise it must be open here, and the caller's (410, 403 otherwise);
        * under the transaction's lock, a retried request (*seq* equal to the last one's) is
          answered with the stored answer, and nothing runs (``replayed``);
        * a transaction that ended while the request waited for it: 410 with its outcome - or,
          for a committing batch (*then* given), the outcome itself, as a retried commit;
        * *seq* must follow the last request's (409 ``out_of_order``);
        * *enter* (the database wall), then *run*, on the transaction's connection. What it raises
          is answered in the error envelope with ``txn_state``: ``open`` (the transaction stays
          open, as after a failed statement on a direct connection), or ``lost`` when the
          database connection was lost - then the transaction ends at once (*on_lost* first:
          what the owner held with it, its cursors) and the client raises a disconnect. An
          exception carrying ``batch_index`` says which statement of a batch it was (``index``);
        * *then*, if given, runs when *run* answered ``None`` (every statement of a batch
          matched), still holding the lock: a committing batch commits there, so no other
          request of the transaction comes between its statements and its commit.

        The answer, error or not, is stored as the one a retry of *seq* gets. What is raised
        before the lock (unknown transaction, another owner, shutting down) is not stored: such a
        request reached no transaction.
        """
        txn = self.begin(txn_id, owner)[0] if begin else self.get(txn_id, owner)
        with txn.lock:
            if txn.last_reply is not None and seq == txn.last_seq:
                label(replayed=True)  # a retry: answer as before, run nothing
                return txn.last_reply
            if txn.ended:  # committed, rolled back or reaped while this request waited for it
                if then is not None:  # a committing batch asked again of a transaction that has ended
                    return 200, orjson.dumps({"outcome": self.finished(txn_id, "commit", owner)})
                self.get(txn_id, owner)  # raises 410 with the reason
            if seq != txn.last_seq + 1:
                raise APIError(f"Request {seq} of transaction {txn_id} arrived out of order "
                               f"(expected {txn.last_seq + 1}).", status=409, code="out_of_order")
            answer: dict[str, Any] | None
            try:
                if enter is not None:
                    enter(txn.connection)
                answer = run(txn.connection)
            except Exception as exc:  # answered in the envelope; the transaction stays open...
                status, envelope = envelope_for_exception(exc)
                # ...unless its database connection was lost (the database restarted): then the
                # transaction is gone, as a direct connection's would be; it ends here at once (its
                # connection back to the pool) and the client raises a disconnect
                lost = isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated
                envelope["error"]["txn_state"] = "lost" if lost else "open"
                index = getattr(exc, "batch_index", None)
                if index is not None:  # which statement of a batch
                    envelope["error"]["index"] = index
                payload = orjson.dumps(envelope)
                if lost:
                    if on_lost is not None:
                        on_lost()
                    self.lose(txn)
            else:
                if answer is None and then is not None:
                    answer = then(txn)  # the transaction may be over now (committed)
                status, payload = 200, orjson.dumps(answer if answer is not None else {})
            txn.last_seq, txn.last_reply, txn.last_used = seq, (status, payload), time.monotonic()
        return status, payload

    # -- ending -------------------------------------------------------------------------------
    def finish(self, txn_id: str, verb: str, owner: str | None, seq: int | None = None,
               before_end: Callable[[], object] = lambda: None) -> str:
        """Commit or roll back; asking again for a finished transaction returns its outcome.

        *before_end* runs (under the transaction's lock) once the caller is known to own the
        transaction, before it ends, and also when it has ended already: what the owner's request
        must release (its result cursors). A caller who does not own it is refused first, so it
        never runs for them.

        The transaction stays listed as open until its outcome is recorded, so a retry that
        arrives while the first request is still committing waits for it (on the transaction's
        lock) and answers the same outcome - never "unknown", never a second commit.
        """
        with self._lock:
            txn = self._open.get(txn_id)
        if txn is None:
            before_end()
            return self._finished(txn_id, verb, owner)
        self._check_owner(txn, owner)
        with txn.lock:
            before_end()
            if txn.ended:  # a concurrent retry or the reaper ended it while we waited
                return self._finished(txn_id, verb, owner)
            if verb == "commit" and seq is not None and seq != txn.last_seq + 1:
                # the commit of a transaction whose requests did not all run here (a begin retried
                # on another instance): committing this part would be a wrong result
                raise APIError(f"Commit {seq} of transaction {txn_id} does not follow its last request "
                               f"here ({txn.last_seq}); it was not committed.", status=409, code="out_of_order")
            return self._end(txn, verb)

    def finished(self, txn_id: str, verb: str, owner: str | None = None) -> str:
        """The answer to *verb* asked again of a transaction that has ended (its outcome)."""
        return self._finished(txn_id, verb, owner)

    def _finished(self, txn_id: str, verb: str, owner: str | None = None) -> str:
        label(replayed=True)  # asked again: answered from the remembered outcome
        outcome = self.outcome(txn_id)
        if verb == "rollback":
            return outcome or "rolled_back"  # gone already: nothing of it can remain
        if outcome is None and self.outcomes is not None:
            outcome = self._settled(txn_id, owner)
        if outcome is None:
            raise TransactionGone(f"Transaction {txn_id} is unknown to this DB-API instance.")
        if outcome != "committed":
            raise TransactionGone(
                f"Transaction {txn_id} was not committed: it was {outcome.replace('_', ' ')}.",
                outcome=outcome)
        return outcome

    def end_locked(self, txn: Transaction, verb: str) -> str:
        """Commit or roll back a transaction whose lock the caller holds (a committing batch).

        With the outcome table, a commit whose outcome row exists already is a committing batch
        asked again on this instance after an earlier attempt ended the transaction on another
        (its instance died before answering): this attempt is rolled back, and the answer is the
        row's outcome - committed, or ``TransactionNotHere`` - never a second commit.
        """
        try:
            return self._end(txn, verb)
        except TransactionGone:
            if verb != "commit" or self.outcomes is None:
                raise
            return self._settled(txn.id, txn.owner)

    def is_open(self, txn_id: str) -> bool:
        with self._lock:
            return txn_id in self._open

    def lose(self, txn: Transaction) -> None:
        """End *txn*, whose database connection was lost (call holding ``txn.lock``): outcome
        ``failed``; the database has rolled it back already."""
        try:
            self._end(txn, "lost")
        except Exception:  # the connection is gone: there is nothing to roll back
            log.info("ending transaction %s after its connection was lost", txn.id, exc_info=True)

    def _settled(self, txn_id: str, owner: str | None) -> str:
        """The outcome table's answer for a transaction not held here (fenced if it has no row)."""
        assert self.outcomes is not None
        outcome, row_owner = self.outcomes.settle(txn_id, owner)
        with self._lock:
            self._settled_counts[outcome] += 1
        if row_owner is not None and row_owner != owner_key(owner):
            raise TransactionConflict("This transaction belongs to another caller.", status=403,
                                      code="forbidden_transaction")
        if outcome != COMMITTED:
            raise TransactionNotHere(
                f"Transaction {txn_id} is not open on this DB-API instance, and it was not committed "
                "(its instance stopped before COMMIT, or the request reached another instance); it "
                "can no longer commit.", outcome=outcome)
        with self._lock:
            self._outcomes[txn_id] = (time.monotonic(), outcome)
        return outcome

    def _end(self, txn: Transaction, verb: str) -> str:
        """Commit or roll back (holding ``txn.lock``); then unlist it and remember the outcome."""
        outcome: str | None = {"commit": "committed", "expire": "expired", "lost": "failed",
                               "shutdown": "rolled_back_at_shutdown"}.get(verb, "rolled_back")
        try:
            if verb == "commit":
                self._commit(txn)
            else:
                txn.root.rollback()
        except CommitInDoubt:
            outcome = None  # not remembered: a retry asks the outcome table again
            raise
        except BaseException:
            outcome = "failed"
            raise
        finally:
            txn.ended = True
            txn.connection.close()
            self._remember(txn.id, outcome)
        assert outcome is not None  # None only with CommitInDoubt, raised above
        return outcome

    def _commit(self, txn: Transaction) -> None:
        """COMMIT, with the outcome row written just before it; a broken COMMIT is settled.

        On PostgreSQL (psycopg) the row and COMMIT travel in one round trip
        (``CommitOutcomes.record_and_commit``); a connection that breaks during it is settled
        like a broken COMMIT, since whether COMMIT ran is then unknown.
        """
        outcomes = self.outcomes
        committing = False  # whether COMMIT was sent (a break then leaves the outcome unknown)
        try:
            if outcomes is not None:
                try:
                    if outcomes.joins_commit(txn.connection, txn.id):
                        committing = True
                        outcomes.record_and_commit(txn.connection, txn.id, txn.owner)
                    else:
                        outcomes.record(txn.connection, txn.id, txn.owner)
                except sa.exc.IntegrityError as exc:
                    if not outcomes.fenced(exc):
                        raise  # COMMIT's own failure, sent with the row (a deferred constraint)
                    raise TransactionGone(
                        f"Transaction {txn.id} was not committed: another DB-API instance answered a "
                        "retried commit of it first (as not committed).", outcome="rolled_back") from None
            committing = True
            txn.root.commit()  # after a joined COMMIT: ends SQLAlchemy's transaction, nothing sent
        except sa.exc.DBAPIError as exc:
            if outcomes is None or not exc.connection_invalidated or not committing:
                raise  # (the row's own INSERT broke: no COMMIT was sent, nothing committed)
            # the connection broke during COMMIT: the database alone knows; ask it (fencing)
            log.warning("the connection broke while committing transaction %s; settling its outcome",
                        txn.id, extra={"txn": txn.id})
            outcome, _ = outcomes.settle(txn.id, txn.owner)
            with self._lock:
                self._settled_counts[outcome] += 1
            if outcome != COMMITTED:
                raise
        if self.after_commit is not None:
            self.after_commit(txn)

    def _remember(self, txn_id: str, outcome: str | None) -> None:
        now = time.monotonic()
        with self._lock:  # one step: a transaction is always either open or has an outcome
            self._open.pop(txn_id, None)
            if outcome is None:
                return
            self._outcomes[txn_id] = (now, outcome)
            self._ended[outcome] += 1
            while self._outcomes:
                oldest_id, (at, _) = next(iter(self._outcomes.items()))
                if now - at < self.outcome_ttl and len(self._outcomes) <= self._max_outcomes:
                    break
                del self._outcomes[oldest_id]

    # -- idle reaper --------------------------------------------------------------------------
    def reap(self, now: float | None = None) -> int:
        """Roll back transactions idle for longer than ``idle_timeout``; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [t for t in self._open.values() if now - t.last_used > self.idle_timeout]
        reaped = 0
        for txn in idle:
            if not txn.lock.acquire(blocking=False):
                continue  # a request is running on it right now
            try:
                # judged again under the lock: the list above may predate a request that has
                # just finished (one that waited longer than the timeout, e.g. for a row lock)
                if txn.ended or now - txn.last_used <= self.idle_timeout:
                    continue
                log.warning("rolling back transaction %s after %.0fs idle", txn.id, now - txn.last_used)
                self._end(txn, "expire")
                reaped += 1
            except Exception:
                log.exception("rolling back idle transaction %s failed", txn.id)
            finally:
                txn.lock.release()
        return reaped

    def _reap_loop(self) -> None:
        interval = max(0.05, min(self.idle_timeout / 4, 5.0))
        while not self._stop.wait(interval):
            self.reap()
            for reap in self.also_reap:
                reap()
            if self.outcomes is not None:
                try:
                    self.outcomes.prune()
                except Exception:  # the database is down: the next round prunes
                    log.info("pruning the commit outcome table failed", exc_info=True)

    # -- shutdown -----------------------------------------------------------------------------
    def roll_back_open(self, lock_timeout: float = 5.0) -> list[tuple[str, str | None, float]]:
        """Roll back every open transaction (the shutdown grace is over), logging each one.

        Returns (id, owner, age in seconds) of those rolled back. A transaction whose request is
        still running waits up to *lock_timeout* for it; if it is still busy then, it is left to
        :meth:`close` (and the database, which rolls back a closed connection's transaction).
        """
        with self._lock:
            transactions = list(self._open.values())
        rolled_back = []
        for txn in transactions:
            if not txn.lock.acquire(timeout=lock_timeout):
                log.warning("transaction %s of %s still runs a request at the end of the shutdown grace",
                            txn.id, txn.owner, extra={"txn": txn.id, "owner": txn.owner})
                continue
            try:
                if txn.ended:
                    continue
                now = time.monotonic()
                age, idle = now - txn.started, now - txn.last_used
                self._end(txn, "shutdown")
                log.warning("rolled back transaction %s of %s at shutdown (open %.1fs, idle %.1fs)",
                            txn.id, txn.owner, age, idle,
                            extra={"txn": txn.id, "owner": txn.owner, "age_s": round(age, 3),
                                   "idle_s": round(idle, 3), "event": "shutdown_rollback"})
                rolled_back.append((txn.id, txn.owner, age))
            except Exception:
                log.exception("rolling back transaction %s at shutdown failed", txn.id, extra={"txn": txn.id})
            finally:
                txn.lock.release()
        return rolled_back

    @property
    def open_count(self) -> int:
        return len(self._open)

    def ended_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._ended)

    def settled_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._settled_counts)

    def stats(self) -> dict[str, Any]:
        return {"open": self.open_count, "remembered_outcomes": len(self._outcomes)}
