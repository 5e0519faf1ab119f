"""Traces of store calls (`sessionary.telemetry`): one span per backend call on every
backend, with the backend's kind, the namespace, the operation and the outcome as
attributes and never an id, a subject or a key; nothing at all without a tracer provider."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.test.globals_test import reset_trace_globals
from opentelemetry.trace import StatusCode

from sessionary import ManualClock, Store, connect
from sessionary.errors import StoreUnavailable, VersionConflict
from sessionary.telemetry import tracers
from tests.servers import RedisServer
from tests.test_extras import run_without
from tests.tracing import assert_nothing_secret, named, recording

SUBJECT = "subject-7f3e9a"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording() as exporter:
        yield exporter


async def test_each_backend_call_is_a_span_with_what_it_did(
    store: Store, store_url: str, spans: InMemorySpanExporter
) -> None:
    web = store.namespace("web", idle_ttl=timedelta(minutes=5))
    session = await web.create(subject=SUBJECT, data={"cart": [1]})
    await web.touch(session.id)
    await web.update(session.id, data={"cart": [1, 2]}, expected_version=1)
    await web.consume(session.id, "searches", amount=1, limit=10)
    await web.list_subject(SUBJECT)
    await web.delete(session.id)

    found = spans.get_finished_spans()
    operations = ["create", "touch", "update", "consume", "list_subject", "delete"]
    assert [span.name for span in found] == [f"sessionary.{op}" for op in operations]
    kind = store_url.partition(":")[0]  # memory, sqlite, redis: the backend's class says it
    for span, operation in zip(found, operations, strict=True):
        assert dict(span.attributes or {}) == {
            "sessionary.store.backend": kind,
            "sessionary.namespace": "web",
            "sessionary.operation": operation,
            "sessionary.outcome": "ok",
        }
        assert span.status.status_code is StatusCode.UNSET
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "sessionary"
    assert_nothing_secret(found, session.id, SUBJECT, "searches")


async def test_an_error_is_its_code_never_its_message(
    store: Store, spans: InMemorySpanExporter
) -> None:
    web = store.namespace("web", idle_ttl=timedelta(minutes=5))
    session = await web.create(subject=SUBJECT)
    with pytest.raises(VersionConflict):
        await web.update(session.id, data={"x": 1}, expected_version=7)

    (failed,) = named(spans.get_finished_spans(), "sessionary.update")
    attributes = failed.attributes or {}
    assert attributes["sessionary.outcome"] == "version_conflict"
    assert attributes["error.type"] == "version_conflict"
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "version_conflict"
    assert not failed.events  # no exception event: its message quotes the id
    assert_nothing_secret(spans.get_finished_spans(), session.id, session.id[:8], SUBJECT)


async def test_a_store_down_is_store_unavailable(
    private_redis: RedisServer, spans: InMemorySpanExporter
) -> None:
    store = await connect(private_redis.url + "?socket_connect_timeout=1", clock=ManualClock())
    try:
        web = store.namespace("web", idle_ttl=timedelta(minutes=5))
        session = await web.create()
        private_redis.stop()
        with pytest.raises(StoreUnavailable):
            await web.touch(session.id)
    finally:
        await store.close()
    (failed,) = named(spans.get_finished_spans(), "sessionary.touch")
    assert (failed.attributes or {})["sessionary.outcome"] == "store_unavailable"
    assert (failed.attributes or {})["sessionary.store.backend"] == "redis"
    assert failed.status.status_code is StatusCode.ERROR


async def test_calls_join_the_callers_trace(store: Store, spans: InMemorySpanExporter) -> None:
    web = store.namespace("web", idle_ttl=timedelta(minutes=5))
    with trace.get_tracer("the-app").start_as_current_span("handler") as parent:
        await web.create()
    (created,) = named(spans.get_finished_spans(), "sessionary.create")
    assert created.parent is not None
    assert created.parent.span_id == parent.get_span_context().span_id


async def test_without_a_tracer_provider_nothing_is_traced() -> None:
    reset_trace_globals()  # as in a process that configured none
    try:
        assert tracers.current() is None
        trace.set_tracer_provider(trace.NoOpTracerProvider())
        assert tracers.current() is None  # the API's no-op provider: no span either
    finally:
        reset_trace_globals()
    with recording():
        assert tracers.current() is not None  # a provider set later is picked up


def test_without_the_extra_the_store_runs_untraced() -> None:
    done = run_without(
        ["opentelemetry"],
        """
        import asyncio
        from datetime import timedelta
        import sessionary
        from sessionary import telemetry

        async def round_trip():
            store = await sessionary.connect("memory://")
            try:
                web = store.namespace("web", absolute_ttl=timedelta(hours=1))
                return (await web.get((await web.create(data={"n": 1})).id)).data
            finally:
                await store.close()

        print(telemetry.otel_trace, telemetry.tracers.current(), asyncio.run(round_trip()))
        """,
    )
    assert (done.returncode, done.stdout) == (0, "None None {'n': 1}\n"), done.stderr
