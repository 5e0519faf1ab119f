"""Prometheus metrics of the service, in a registry of its own (one per application).

One process, one registry: a scrape of `/metrics` sees that process alone. A service of
several processes (`sessionary serve` processes behind a balancer, `sessionary reap
--analytics --every` beside them) shares a directory instead, named by the environment
variable `PROMETHEUS_MULTIPROC_DIR` (prometheus_client's multiprocess mode): each process
writes its values to files of its own there, and `/metrics` of any of them reports what
every process sharing the directory counted, summed (a process that ended included: its
counts happened). The variable, not a setting: prometheus_client chooses where values live
when it is imported, from the environment, before any setting is read, and every process
started from the same environment inherits it.

The directory is the operator's to create, and to empty whenever the whole group starts
again (files of processes long gone would otherwise count on, and a new process that gets
an old one's pid would carry on from its numbers).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionary.http.tracing import route_template
from sessionary.model import EVENT_KINDS, SessionEvent
from sessionary.store import Store

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: the environment variable naming the directory the processes of one service share
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


class MetricsDirError(ValueError):
    """`PROMETHEUS_MULTIPROC_DIR` cannot be used; the message names the fix."""


def shared_directory() -> str | None:
    """The directory this process shares its metrics through, or None (its own registry
    only). `MetricsDirError` when the variable names no directory, or was set after
    prometheus_client chose to keep values in memory: either would serve numbers that are
    not what every process counted (or fail every request that counts)."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if not directory:
        return None
    if not os.path.isdir(directory):
        raise MetricsDirError(
            f"{MULTIPROCESS_DIR}={directory}: no such directory: create it (empty) before "
            "starting the service's processes, or unset the variable"
        )
    if not getattr(prometheus_values.ValueClass, "_multiprocess", False):
        raise MetricsDirError(
            f"{MULTIPROCESS_DIR} was set after prometheus_client was imported: set it in the "
            "environment the process starts with"
        )
    return directory


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.directory = shared_directory()
        r = self.registry
        self.processes = Gauge(
            "sessionary_processes",
            "Processes of the service serving now (with PROMETHEUS_MULTIPROC_DIR: those "
            "alive and sharing the directory)",
            registry=r,
            multiprocess_mode="livesum",  # a process that ended drops out (`alive`)
        )
        self.requests = Counter(
            "sessionary_http_requests",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "sessionary_http_request_duration_seconds",
            "Time to serve an HTTP request",
            ["method", "route"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.session_events = Counter(
            "sessionary_session_events",
            "Sessions created, updated, rotated, deleted, expired",
            ["namespace", "event"],
            registry=r,
        )
        self.quota_refusals = Counter(
            "sessionary_quota_refusals", "Charges refused by a quota", ["scope"], registry=r
        )
        self.store_errors = Counter(
            "sessionary_store_errors",
            "Times the store could not be reached",
            ["where"],
            registry=r,
        )
        self.fail_open = Counter(
            "sessionary_fail_open",
            "Requests let through unmetered or without a session while the store was down",
            ["where"],
            registry=r,
        )
        self.runs_executed = Counter(
            "sessionary_runs_executed",
            "Runs the workers of this service executed, by how each execution ended: "
            "completed, error, cancelled, retried (handed back for another attempt), lost "
            "(its lease lapsed under it) or ended_elsewhere (cancelled or failed meanwhile)",
            ["outcome"],
            registry=r,
        )
        self.runs_in_flight = Gauge(
            "sessionary_runs_in_flight",
            "Runs being executed now (with PROMETHEUS_MULTIPROC_DIR: by every live process)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.unreadable = Counter(
            "sessionary_sessions_unreadable",
            "Sealed sessions that could not be opened (encryption at rest), by reason: "
            "unknown_key (sealed under a key not configured) or tampered",
            ["namespace", "reason"],
            registry=r,
        )

    def run_started(self) -> None:
        """A worker of this process began executing a run (`sessionary.runs.worker`)."""
        self.runs_in_flight.inc()

    def run_ended(self, outcome: str) -> None:
        self.runs_in_flight.dec()
        self.runs_executed.labels(outcome).inc()

    def watch(self, store: Store) -> None:
        """Count the store's lifecycle events, and the sealed sessions it cannot open."""

        def count(event: SessionEvent) -> None:
            self.session_events.labels(event.namespace, event.kind).inc()

        for kind in EVENT_KINDS:
            store.on(kind, count)
        store.unreadable.on(
            lambda namespace, error: self.unreadable.labels(namespace, error.reason).inc()
        )

    @contextlib.contextmanager
    def alive(self) -> Iterator[None]:
        """This process counts in `sessionary_processes` while the context lasts; at its end,
        with a shared directory, its live gauges' files are removed (its counters stay: what
        it counted happened)."""
        self.processes.set(1)
        try:
            yield
        finally:
            self.processes.set(0)
            self.leave()

    def leave(self) -> None:
        """At this process's end, with a shared directory: its live gauges' files go (a
        process killed outright stays counted until the directory is emptied)."""
        if self.directory is not None:
            mark_process_dead(os.getpid(), self.directory)  # type: ignore[no-untyped-call]

    def render(self) -> bytes:
        """The metrics in Prometheus' text format: this process's, or (with a shared
        directory) every process's, merged from the directory's files."""
        if self.directory is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.directory)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def instrument(self, app: ASGIApp) -> ASGIApp:
        """An ASGI wrapper counting requests and timing them by route template."""
        return Instrumented(app, self)


class Instrumented:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route = _route_of(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


def _route_of(scope: Scope) -> str:
    """The route label: the matched route's whole template (its router's prefix too, as the
    traces name it), never the client's path."""
    return route_template(scope) or "<unmatched>"
