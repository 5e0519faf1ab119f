"""The sessionary service: `create_app(settings)` builds the FastAPI application that
`sessionary serve` runs.

    /healthz              the process is up
    /readyz               the store answers and takes a write (200), or not (503)
    /metrics              Prometheus
    /docs                 OpenAPI
    /v1/...               the admin API (API key)
    /api/v1/playground/   anonymous playground sessions with quotas
    /api/v1/conversations conversations and their runs, with resumable event streams
    /api/v1/track         analytics: tracked events become sessions
    /api/v1/projects/     analytics: sessions and stats of a project (admin API key)
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from starlette.responses import PlainTextResponse, Response

from sessionary import __version__
from sessionary.analytics import AnalyticsMetrics, Sessionizer
from sessionary.analytics.http import analytics_router
from sessionary.analytics.sink import sink_from_url
from sessionary.clock import Clock
from sessionary.counters import Counters
from sessionary.errors import StoreUnavailable
from sessionary.http.bearer import BearerKeys
from sessionary.http.clientip import ClientIP
from sessionary.http.errors import JSONResponse, unavailable_response
from sessionary.http.handlers import install_error_handlers
from sessionary.http.limits import BodyLimit, ByteBudget
from sessionary.http.metrics import CONTENT_TYPE, Instrumented, Metrics
from sessionary.http.openapi import errors, operation_id
from sessionary.http.tracing import Traced
from sessionary.outage import JobStatus, OutageLog
from sessionary.playground import Playground
from sessionary.reaper import run_forever
from sessionary.runs import Runs
from sessionary.runs.http import (
    ApiKeyAuthenticator,
    Authenticator,
    FirstOf,
    SessionAuthenticator,
    runs_router,
)
from sessionary.runs.model import Run
from sessionary.runs.worker import Worker, load_handler
from sessionary.source import StoreSource
from sessionary.store import Namespace, Store, without_password
from sessionary.telemetry import flush_spans
from sessionary.web.admin import admin_router
from sessionary.web.auth import ApiKeys
from sessionary.web.console import ConsoleServices, console_app, console_state
from sessionary.web.docs import install_docs
from sessionary.web.health import health_router
from sessionary.web.settings import Settings, SettingsError


@dataclass
class Features:
    """What the settings configure on a store: namespaces by name (the admin API's and the
    reaper's), counter groups (to sweep, and for the console to list), the runs feature (its
    lapsed leases are failed by whichever process reaps them, so every reaper must have it)
    and analytics (without its sink, which `open_sink` adds)."""

    namespaces: dict[str, Namespace] = field(default_factory=dict)
    groups: list[Counters] = field(default_factory=list)
    runs: Runs | None = None
    worker: Worker | None = None
    analytics: Sessionizer | None = None
    #: the background jobs the service started, by name, as they run (`GET /v1/health`)
    jobs: dict[str, JobStatus] = field(default_factory=dict)

    def outages(self, store: Store) -> dict[str, OutageLog]:
        """The parts of the service that each keep an `OutageLog` of `store`: the store's
        own (every call of the requests, `store.breaker`), then each job's, by name.

        Reached through what the service holds (the store, the jobs' `JobStatus`), not
        through a process-wide registry of every `OutageLog`: such a registry would also list
        those of every other store and engine alive in the process (an application that
        embeds the service next to its own, the tests' many), under names that collide, and
        a log would stay listed until garbage collection found it, long after its job
        ended. The runs worker and producers keep none: they back off and retry within the
        lease (`Runs`), and their failures are the store's, seen here as the store's."""
        found: dict[str, OutageLog] = {}
        if store.breaker.outage is not None:
            found["store"] = store.breaker.outage
        for name, job in sorted(self.jobs.items()):
            if job.outage is not None:
                found[name] = job.outage
        return found

    async def open_sink(self, settings: Settings) -> None:
        """Open the analytics sink; a file or server that cannot be opened is a
        `StoreUnavailable` naming it (its driver's own error says not which it was)."""
        if self.analytics is not None:
            url = settings.analytics.sink
            try:
                self.analytics.sink = await sink_from_url(url)
            except sqlite3.Error as exc:
                raise StoreUnavailable(
                    f"cannot open the analytics sink {without_password(url)}: {exc}"
                ) from exc

    async def close_sink(self) -> None:
        if self.analytics is not None and self.analytics.sink is not None:
            await self.analytics.sink.close()


def declare(settings: Settings, store: Store, metrics: AnalyticsMetrics | None = None) -> Features:
    """The features the settings configure on `store`."""
    namespaces = {
        name: store.namespace(
            name,
            idle_ttl=policy.idle_ttl,
            absolute_ttl=policy.absolute_ttl,
            max_absolute_ttl=policy.max_absolute_ttl,
            max_sessions_per_subject=policy.max_sessions_per_subject,
            on_max_sessions=policy.on_max_sessions,
            id_prefix=policy.id_prefix,
            max_payload=policy.max_payload,
            on_unavailable=policy.on_unavailable,
        )
        for name, policy in settings.namespaces.items()
    }
    groups = []
    if settings.playground.enabled:
        name = settings.playground.namespace
        namespaces[name] = store.namespace(name, absolute_ttl=settings.playground.session_ttl)
        groups.append(store.counters(name))
    runs = None
    if settings.runs.enabled:
        runs = Runs(store, settings.runs)
        namespaces.update({ns.name: ns for ns in runs.namespaces})
    analytics = None
    if settings.analytics.enabled:
        analytics = Sessionizer(
            store,
            settings.analytics.rules(),
            metrics=metrics,
            default_rules=settings.analytics.default_rules(),
        )
        namespaces.update({ns.name: ns for ns in analytics.namespaces})
    return Features(namespaces, groups, runs, analytics=analytics)


async def _settle_limited(namespaces: Iterable[Namespace]) -> None:
    """Touch each namespace with a session limit once at start, so that one the store cannot
    limit (on Redis: sessions of it spread over hash slots already, see
    docs/account-security.md) stops the start with its `ValueError` instead of failing every
    request that uses it. A store down at start is left to `/readyz`, as always."""
    for namespace in namespaces:
        if namespace.session_limit is not None:
            with contextlib.suppress(StoreUnavailable):
                await namespace.count()


def runs_authenticator(
    settings: Settings, namespaces: Callable[[], dict[str, Namespace]]
) -> Authenticator:
    """Who calls the runs API: a Bearer key of `[runs] users`, or, with `[runs]
    session_namespace`, the subject of that namespace's session named by the
    `session_cookie` (`namespaces()`: the declared namespaces, once the store is open)."""
    keys = ApiKeyAuthenticator(settings.runs.users)
    name = settings.runs.session_namespace
    if name is None:
        return keys
    if name not in settings.namespaces:
        raise SettingsError(f"runs.session_namespace: no namespace {name!r} in [namespaces]")
    return FirstOf(
        keys, SessionAuthenticator(lambda: namespaces()[name], settings.runs.session_cookie)
    )


@asynccontextmanager
async def _running(work: Coroutine[Any, Any, object], name: str) -> AsyncIterator[None]:
    """`work` as a background task for the context's duration: cancelled and awaited at its
    end."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def id_prefixes(settings: Settings) -> set[str]:
    """The id prefixes of the namespaces the admin API reaches (for its document): those of
    `[namespaces]`, the runs feature's (conversations, runs) and none (the others')."""
    prefixes = {""} | {policy.id_prefix for policy in settings.namespaces.values()}
    if settings.runs.enabled:
        prefixes |= {"conv_", "run_"}
    return prefixes


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """The service. With `store`, it serves that store (and leaves closing it to you);
    otherwise it opens `settings.store` at startup (with `settings.encryption_keys`) and
    closes it at shutdown."""
    settings = settings or Settings()
    metrics = Metrics()
    source = (
        StoreSource(store, clock=clock)
        if store is not None
        else StoreSource(settings.store, clock=clock, encryption_keys=settings.encryption())
    )
    namespaces: dict[str, Namespace] = {}
    features = Features(namespaces)
    playground = (
        Playground(source, settings.playground, metrics=metrics)
        if settings.playground.enabled
        else None
    )
    analytics_metrics = AnalyticsMetrics(metrics.registry)
    handler = None
    if settings.runs.enabled and settings.runs.handler:
        try:
            handler = load_handler(settings.runs.handler)
        except ValueError as exc:
            raise SettingsError(f"runs.handler: {exc}") from exc

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Each resource is a context on one stack: closed at shutdown, or as soon as a
        later step of the startup fails, in the reverse order of opening. Opened: the store
        (checked against its URL when opened here), the tasks sweeping it (reaper, run
        leases), the analytics sink and the jobs draining into it, the runs worker and its
        queue consumer; so the consumer stops first, the store closes last, and the spans
        left (when the application traces) are exported then."""
        async with contextlib.AsyncExitStack() as closing:
            closing.push_async_callback(flush_spans)
            closing.enter_context(metrics.alive())
            closing.push_async_callback(source.close)
            opened = await source.get()
            if store is None:
                await opened.verify()
            metrics.watch(opened)
            declared = declare(settings, opened, analytics_metrics)
            await _settle_limited(declared.namespaces.values())
            namespaces.update(declared.namespaces)
            features.groups = declared.groups
            features.runs = declared.runs
            features.analytics = declared.analytics
            if settings.reaper.enabled:
                swept, groups = list(namespaces.values()), list(declared.groups)
                if settings.console.enabled:  # its sessions are not the admin API's
                    console_sessions, console_counters = console_state(opened, settings.console)
                    swept.append(console_sessions)
                    groups.append(console_counters)
                reaper = features.jobs["reaper"] = JobStatus("reaper", opened.clock)
                reaping = run_forever(
                    swept,
                    groups,
                    every=settings.reaper.every,
                    batch=settings.reaper.batch,
                    status=reaper,
                )
                await closing.enter_async_context(_running(reaping, "sessionary-reaper"))
                if features.runs is not None:  # its lease bound: swept every lease / 4
                    sweeper = features.jobs["run-leases"] = JobStatus("run-leases", opened.clock)
                    leases = features.runs.watch_leases(status=sweeper)
                    await closing.enter_async_context(_running(leases, "sessionary-run-leases"))
            await features.open_sink(settings)
            closing.push_async_callback(features.close_sink)
            if features.analytics is not None and settings.analytics.jobs:
                a = settings.analytics
                jobs = features.analytics.run_forever(
                    reap_every=a.reap_every,
                    drain_every=a.drain_every,
                    vacuum_every=a.vacuum_every,
                    vacuum_age=a.vacuum_age,
                    statuses=features.jobs,
                )
                await closing.enter_async_context(_running(jobs, "sessionary-analytics-jobs"))
            if declared.runs is not None and handler is not None:
                features.worker = Worker(declared.runs, handler, metrics=metrics)
                closing.push_async_callback(features.worker.close)
                if settings.runs.dispatch == "queue":  # a worker like any other, in process
                    consuming = features.worker.consume(settings.runs.concurrency)
                    await closing.enter_async_context(_running(consuming, "sessionary-runs-worker"))
            yield

    app = FastAPI(
        title="sessionary",
        version=__version__,
        description="Server-side sessions: admin API, playground sessions with quotas.",
        lifespan=lifespan,
        docs_url=None,  # install_docs: served from this process, not a CDN
        redoc_url=None,
        generate_unique_id_function=operation_id,
        # FastAPI's own request spans record the path (`url.path`), and its logs the
        # exceptions' messages and the invalid input: ids, here. The service's spans are
        # `Traced`'s, by route template (docs/tracing.md).
        telemetry={"tracing": False, "logs": False},
    )
    install_docs(app)
    app.state.sessionary = source
    app.state.features = features  # the runs feature and its worker, once started

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> Response:
        """The process is up."""
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["ops"], responses=errors(503))
    async def readyz() -> Response:
        """The store answers and takes a write: 200, or 503 with Retry-After."""
        try:
            await (await source.get()).ping(write=True)
        except StoreUnavailable as exc:
            metrics.store_errors.labels("readyz").inc()
            return unavailable_response(f"the store does not answer: {exc}")
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=PlainTextResponse,
        responses={200: {"description": "the Prometheus text format"}},
    )
    async def prometheus() -> Response:
        """Prometheus metrics."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # first of the routers: routes are matched in order, and /track is the busiest
    if settings.analytics.enabled:
        api_keys = ApiKeys(settings.api_keys)

        def opened_analytics() -> Sessionizer:
            assert features.analytics is not None, "analytics starts with the application"
            return features.analytics

        app.include_router(
            analytics_router(
                opened_analytics,
                BearerKeys((key, project) for project, key in settings.analytics.keys().items()),
                list(settings.analytics.projects),
                lambda request: api_keys.require(request, "analytics"),
                ClientIP(settings.analytics.trusted_proxies),
                ByteBudget(settings.analytics.max_in_flight, settings.max_body),
            )
        )
    admin_keys = ApiKeys(settings.api_keys)
    app.include_router(
        admin_router(lambda: namespaces, admin_keys, id_prefixes(settings), store=source.get)
    )
    store_name = without_password(settings.store) if store is None else repr(store.backend)
    app.include_router(health_router(source.get, features, admin_keys, store_name))
    if settings.console.enabled:
        services = ConsoleServices(
            source,
            lambda: namespaces,
            features,
            settings.api_keys,
            list(settings.analytics.projects) if settings.analytics.enabled else [],
            store_name,
        )
        app.mount("/console", console_app(services, settings.console))
    if playground is not None:
        playground.install(app)
    if settings.runs.enabled:

        def opened_runs() -> Runs:
            assert features.runs is not None, "the runs feature starts with the application"
            return features.runs

        def hand_over(run: Run) -> None:
            # with dispatch = "queue" the run is on the queue already, for whichever worker
            if features.worker is not None and settings.runs.dispatch == "none":
                features.worker.submit(run)

        app.include_router(
            runs_router(
                opened_runs,
                runs_authenticator(settings, lambda: namespaces),
                hand_over,
                send_timeout_s=settings.runs.stream_send_timeout.total_seconds(),
                origins=settings.runs.cors_origins,
                cookie=settings.runs.session_cookie if settings.runs.session_namespace else None,
            )
        )
    app.add_middleware(BodyLimit, max_body=settings.max_body)
    app.add_middleware(Instrumented, metrics=metrics)
    app.add_middleware(Traced)  # outside the metrics: its span covers all the request's work
    install_error_handlers(app, metrics)  # last: its 500 guard wraps every middleware
    return app
