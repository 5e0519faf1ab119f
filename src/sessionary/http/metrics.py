"""Prometheus metrics of the service, in a registry of its own (one per application)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionary.model import EVENT_KINDS, SessionEvent
from sessionary.store import Store

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
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
        self.unreadable = Counter(
            "sessionary_sessions_unreadable",
            "Sealed sessions that could not be opened (encryption at rest), by reason: "
            "unknown_key (sealed under a key not configured) or tampered",
            ["namespace", "reason"],
            registry=r,
        )

    def watch(self, store: Store) -> None:
        """Count the store's lifecycle events, and the sealed sessions it cannot open."""

        def count(event: SessionEvent) -> None:
            self.session_events.labels(event.namespace, event.kind).inc()

        for kind in EVENT_KINDS:
            store.on(kind, count)
        store.unreadable.on(
            lambda namespace, error: self.unreadable.labels(namespace, error.reason).inc()
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

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
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "<unmatched>"
