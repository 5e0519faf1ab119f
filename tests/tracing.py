"""Spans recorded by the OpenTelemetry SDK's in-memory exporter, under a global tracer
provider of the test's own (the API's globals reset before and after, as OpenTelemetry's own
tests do: the API lets a process set its provider once)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.test.globals_test import reset_trace_globals


@contextmanager
def recording(*, batched: bool = False) -> Iterator[InMemorySpanExporter]:
    """The global tracer provider, its finished spans kept by the exporter yielded: each as it
    ends, or `batched` (as an exporter over the network is fed), held until a flush."""
    reset_trace_globals()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    if batched:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=3_600_000))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        reset_trace_globals()


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def assert_nothing_secret(spans: Sequence[ReadableSpan], *secrets: str) -> None:
    """No attribute value, status description or event of any span mentions a secret (a
    session id, a subject, a counter key)."""
    assert spans, "no span was recorded: the check would pass for nothing"
    for span in spans:
        texts = [str(value) for value in (span.attributes or {}).values()]
        texts.append(span.status.description or "")
        texts += [event.name for event in span.events]
        texts += [str(v) for event in span.events for v in (event.attributes or {}).values()]
        for secret in secrets:
            leaking = [text for text in texts if secret in text]
            assert not leaking, f"{span.name} carries {secret!r}: {leaking}"
