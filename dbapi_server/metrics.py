"""The DB-API's Prometheus metrics (``prometheus_client``), one registry per application.

Per request (recorded by :class:`dbapi_server.observability.ObservedApp`):

==========================================  ==========================  ============================
``dbapi_request_duration_seconds``          histogram                   ``route``, ``kind``
``dbapi_requests_total``                    counter                     ``route``, ``kind``, ``status``
``dbapi_refusals_total``                    counter                     ``code`` (4xx but 401)
``dbapi_token_failures_total``              counter                     ``reason`` (401)
``dbapi_server_errors_total``               counter                     ``code`` (5xx)
``dbapi_replayed_answers_total``            counter                     ``kind`` (a retried request
                                                                        answered from the stored
                                                                        answer: commit retries...)
==========================================  ==========================  ============================

Read from the server's state at each scrape: ``dbapi_open_transactions``, ``dbapi_open_cursors``,
``dbapi_remembered_outcomes``, ``dbapi_transactions_ended_total{outcome}``,
``dbapi_commits_settled_total{outcome}``,
``dbapi_pool_checked_out``, ``dbapi_pool_size``, ``dbapi_pool_overflow``,
``dbapi_pool_max_overflow``, ``dbapi_draining``; plus the standard ``process_*`` (CPU, memory,
open file descriptors), ``python_gc_*`` and ``python_info`` collectors.

Labels come from fixed sets (route templates, statement kinds, envelope codes, token failure
reasons): no table name, subject, transaction id or raw path ever becomes a label - that would
let the number of series grow with the data, and show a metrics reader what the data is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .state import ServerState

__all__ = ["LATENCY_BUCKETS", "Metrics"]

# seconds: a cached read answers in ~1 ms, a commit waits for the disk, a row lock can hold long
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The metric objects of one DB-API application and the registry that exposes them."""

    def __init__(self, state: ServerState | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.latency = Histogram("dbapi_request_duration_seconds", "Time to answer a request, by route "
                                 "template and statement kind.", ["route", "kind"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.requests = Counter("dbapi_requests", "Requests answered, by route template, statement kind "
                                "and HTTP status.", ["route", "kind", "status"], registry=self.registry)
        self.refusals = Counter("dbapi_refusals", "Requests refused with a 4xx answer other than 401, "
                                "by error code.", ["code"], registry=self.registry)
        self.token_failures = Counter("dbapi_token_failures", "Requests refused because of their token "
                                      "(401), by reason.", ["reason"], registry=self.registry)
        self.server_errors = Counter("dbapi_server_errors", "Requests answered with a 5xx, by error code.",
                                     ["code"], registry=self.registry)
        self.replayed = Counter("dbapi_replayed_answers", "Retried requests answered from the stored "
                                "answer instead of running again (commit retries, lost answers), by "
                                "statement kind.", ["kind"], registry=self.registry)
        # labelled children by label values: labels() takes a lock and builds a key on each call
        self._latency_children: dict[tuple[str, str], Any] = {}
        self._request_children: dict[tuple[str, str, int], Any] = {}
        if state is not None:
            self.registry.register(StateCollector(state))

    def observe(self, route: str, kind: str, status: int, seconds: float, code: str | None,
                token_failure: str | None, replayed: bool) -> None:
        """Record one answered request."""
        child = self._latency_children.get((route, kind))
        if child is None:
            child = self._latency_children[(route, kind)] = self.latency.labels(route, kind)
        child.observe(seconds)
        counter = self._request_children.get((route, kind, status))
        if counter is None:
            counter = self._request_children[(route, kind, status)] = self.requests.labels(route, kind, str(status))
        counter.inc()
        if status == 401:
            self.token_failures.labels(token_failure or "invalid").inc()
        elif 400 <= status < 500:
            self.refusals.labels(code or "unknown").inc()
        elif status >= 500:
            self.server_errors.labels(code or "unknown").inc()
        if replayed:
            self.replayed.labels(kind).inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format the scraper asked for (text, or OpenMetrics); and its type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class StateCollector(Collector):
    """Gauges read from the live server state at scrape time (nothing to keep in step)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        yield _gauge("dbapi_open_transactions", "Client transactions open on this instance.",
                     state.transactions.open_count)
        yield _gauge("dbapi_open_cursors", "Streamed result cursors holding a database cursor.",
                     state.cursors.active_count)
        yield _gauge("dbapi_remembered_outcomes", "Finished transactions whose outcome is remembered "
                     "for retried commits.", state.transactions.stats()["remembered_outcomes"])
        ended = CounterMetricFamily("dbapi_transactions_ended", "Client transactions ended, by outcome "
                                    "(committed, rolled_back, expired, failed, rolled_back_at_shutdown).",
                                    labels=["outcome"])
        for outcome, count in sorted(state.transactions.ended_counts().items()):
            ended.add_metric([outcome], count)
        yield ended
        settled = CounterMetricFamily("dbapi_commits_settled", "Commits of transactions this instance did "
                                      "not hold, answered from the commit outcome table (committed, "
                                      "rolled_back: fenced), and COMMITs whose connection broke.",
                                      labels=["outcome"])
        for outcome, count in sorted(state.transactions.settled_counts().items()):
            settled.add_metric([outcome], count)
        yield settled
        yield _gauge("dbapi_draining", "1 while the instance is shutting down and refuses new transactions.",
                     1 if state.draining else 0)
        pool = state.engine.pool
        for name, attr, text in (("checked_out", "checkedout", "Database connections in use."),
                                 ("size", "size", "The pool's configured size."),
                                 ("overflow", "overflow", "Connections open beyond the pool's size "
                                  "(negative: unopened room within the size).")):
            method = getattr(pool, attr, None)
            if callable(method):
                yield _gauge(f"dbapi_pool_{name}", text, method())
        max_overflow = getattr(pool, "_max_overflow", None)
        if isinstance(max_overflow, int):
            yield _gauge("dbapi_pool_max_overflow", "Connections the pool may open beyond its size "
                         "(-1: unlimited).", max_overflow)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
