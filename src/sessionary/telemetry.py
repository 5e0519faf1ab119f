"""Traces (OpenTelemetry) of what sessionary does, for an application that traces.

sessionary depends on the OpenTelemetry API only (the `otel` extra), and only when it is
installed: the application brings the SDK and an exporter, and configures them as it likes
(`opentelemetry-instrument`, the standard `OTEL_*` environment variables, or a provider set
in code). sessionary uses the global tracer provider and nothing else, so there is nothing of
sessionary's to configure.

Spans (docs/tracing.md lists their attributes):

* one per call of a store to its backend (`sessionary.<operation>`: `sessionary.touch`,
  `sessionary.update`, ...), made by `traced` where every call of a store passes
  (`sessionary.outage`): so a third party's backend is traced as the built-in ones are;
* one per load and one per save of the session middleware's session (`sessionary.web`);
* one per HTTP request of the service (`sessionary.http.tracing`).

Never an id, a subject or a key in an attribute: a session id is a bearer credential, and a
subject names a person. An attribute is a name the operator chose (a namespace, a counter
group, a queue), the backend's kind, the operation, and the outcome: "ok", or the stable
`code` of the error (`store_unavailable`, `version_conflict`); an error's message, which may
quote an id, is never recorded.

Cost: when OpenTelemetry is not installed, or no tracer provider is configured (or the
API's no-op one), a call costs one check (the provider is read, compared with the one seen
last) and no span object (benchmarks/tracing.py measures it).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import cache
from importlib import metadata
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from sessionary.errors import SessionaryError

try:
    from opentelemetry import trace as otel_trace
except ImportError:  # the otel extra is not installed: nothing is traced
    otel_trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

P = ParamSpec("P")
R = TypeVar("R")

#: the instrumentation scope's name: every span of sessionary's is of this tracer
TRACER_NAME: Final = "sessionary"

BACKEND: Final = "sessionary.store.backend"
OPERATION: Final = "sessionary.operation"
NAMESPACE: Final = "sessionary.namespace"
OUTCOME: Final = "sessionary.outcome"
#: the error's stable code, under the OpenTelemetry semantic conventions' name
ERROR_TYPE: Final = "error.type"

#: a backend method's parameter that names what it works on, and the attribute it goes to:
#: names chosen by the operator, never ids (`sessionary.contract.Backend`)
_NAMED_BY: Final = {
    "ns": NAMESPACE,
    "group": "sessionary.counter_group",
    "queue": "sessionary.queue",
}
OK: Final = "ok"
CANCELLED: Final = "cancelled"
#: the outcome of an exception that is not one of sessionary's (a bug, or a library's own)
INTERNAL_ERROR: Final = "internal_error"


class _Tracers:
    """The tracer of the global provider, looked up again only when the provider changes
    (the API lets it be set once; a test may reset it)."""

    def __init__(self) -> None:
        self._provider: object = None
        self._tracer: Tracer | None = None

    def current(self) -> Tracer | None:
        """sessionary's tracer, or None when nothing would be recorded: OpenTelemetry is not
        installed, or no provider is configured, or the API's no-op one is."""
        if otel_trace is None:
            return None
        provider = otel_trace.get_tracer_provider()
        if provider is not self._provider:
            self._provider = provider
            idle = isinstance(
                provider, otel_trace.ProxyTracerProvider | otel_trace.NoOpTracerProvider
            )
            self._tracer = None if idle else provider.get_tracer(TRACER_NAME, _version())
        return self._tracer


@cache
def _version() -> str | None:
    """sessionary's version as installed (the package's `__version__` is out of reach: the
    package imports the store, which imports this module)."""
    try:
        return metadata.version("sessionary")
    except metadata.PackageNotFoundError:  # run from a source tree
        return None


tracers = _Tracers()


def outcome_of(error: BaseException) -> str:
    """The stable code an error is recorded as: a `SessionaryError`'s `code`, "cancelled",
    or "internal_error" (anything else: its message is not ours to vouch for)."""
    if isinstance(error, SessionaryError):
        return error.code
    if isinstance(error, asyncio.CancelledError):
        return CANCELLED
    return INTERNAL_ERROR


def record_outcome(span: Span, error: BaseException | None) -> None:
    """Set the span's outcome: "ok" for None, else the error's code, with the span's status
    an error (but for a cancellation, which is no failure) described by the code alone."""
    if error is None:
        span.set_attribute(OUTCOME, OK)
        return
    code = outcome_of(error)
    span.set_attribute(OUTCOME, code)
    if code != CANCELLED:
        assert otel_trace is not None  # a span exists only with the API installed
        span.set_attribute(ERROR_TYPE, code)
        span.set_status(otel_trace.StatusCode.ERROR, code)


@contextmanager
def span(name: str, attributes: dict[str, Any]) -> Iterator[Span | None]:
    """A span `name` around the block, its outcome recorded as `record_outcome` says; None
    (and no span) when nothing would be recorded."""
    tracer = tracers.current()
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as current:
        try:
            yield current
        except BaseException as exc:
            record_outcome(current, exc)
            raise
        record_outcome(current, None)


async def flush_spans() -> None:
    """Export the spans the global provider still holds (an SDK's: the API's own has no
    `force_flush`), off the event loop. For a process about to end: `sessionary serve`
    stopped by SIGTERM raises the signal again once shut down, and dies of it before
    `atexit` would have flushed them."""
    if otel_trace is None:
        return
    force_flush = getattr(otel_trace.get_tracer_provider(), "force_flush", None)
    if force_flush is not None:
        await asyncio.to_thread(force_flush)


def backend_kind(backend: object) -> str:
    """What an attribute calls a backend: its class name without "Backend", lowercased
    ("memory", "sqlite", "redis"; a third party's `DynamoBackend` is "dynamo")."""
    name = type(backend).__name__
    return (name.removesuffix("Backend") or name).lower()


def traced(
    method: Callable[P, Awaitable[R]],
    operation: str,
    backend: str,
    *,
    like: Callable[..., object] | None = None,
) -> Callable[P, Awaitable[R]]:
    """`method` (a backend's coroutine method named `operation`, or a wrapper of it `like`
    the backend's own, whose parameters name the call's namespace), each call in a span
    `sessionary.<operation>` when a tracer provider is configured."""
    name = f"sessionary.{operation}"
    base = {BACKEND: backend, OPERATION: operation}
    first = next(iter(inspect.signature(like or method).parameters), None)
    named = _NAMED_BY.get(first) if first is not None else None

    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        tracer = tracers.current()
        if tracer is None:
            return await method(*args, **kwargs)
        attributes: dict[str, Any] = base
        if named is not None:
            value = args[0] if args else kwargs.get(str(first))
            if isinstance(value, str):
                attributes = {**base, named: value}
        with tracer.start_as_current_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                result = await method(*args, **kwargs)
            except BaseException as exc:
                record_outcome(span, exc)
                raise
            record_outcome(span, None)
            return result

    return call
