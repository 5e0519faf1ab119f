"""What tracing costs a store operation (`sessionary.telemetry`), on each backend.

    python benchmarks/tracing.py [--ops 20000] [--backends memory,sqlite,redis] [--smoke]

touch and update, one at a time (the latency-bound case, where an added cost shows most),
under five settings of the process's OpenTelemetry:

* absent: as if the `otel` extra were not installed (the module's API handle taken away);
* unconfigured: the API installed, no tracer provider set (an application that does not
  trace: what sessionary promises costs ~nothing);
* no-op provider: the API's `NoOpTracerProvider` set;
* sampled out: the SDK's provider with the `ALWAYS_OFF` sampler (spans made, not recorded);
* in-memory: the SDK's provider recording every span to its in-memory exporter (the SDK's
  own cost, less an exporter's network).

The settings alternate in slices of the operations, each first in turn, so a drift of the
machine's speed weighs on all alike; each number is the median of its slices. The table
says ops/s, the ratio to "absent", and the time each operation gained, in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.test.globals_test import reset_trace_globals
from rich.console import Console
from rich.table import Table

import sessionary
from sessionary import telemetry

REDIS_URL = os.environ.get("REDIS_BENCH_URL", "redis://127.0.0.1:6379/9")
PREFIX = f"bench-tracing:{os.getpid()}:"
MODES = ("absent", "unconfigured", "no-op provider", "sampled out", "in-memory")
SLICES = 10
Op = Callable[[int], Awaitable[object]]


@contextmanager
def tracing(mode: str, exporter: InMemorySpanExporter) -> Iterator[None]:
    """The process's OpenTelemetry set as `mode` says, for the block."""
    reset_trace_globals()
    api = telemetry.otel_trace
    if mode == "absent":
        telemetry.otel_trace = None  # type: ignore[assignment]
    elif mode == "no-op provider":
        trace.set_tracer_provider(trace.NoOpTracerProvider())
    elif mode == "sampled out":
        trace.set_tracer_provider(TracerProvider(sampler=ALWAYS_OFF))
    elif mode == "in-memory":
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    try:
        yield
    finally:
        telemetry.otel_trace = api
        reset_trace_globals()
        exporter.clear()  # the spans of one slice at most in memory


async def timed(op: Op, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await op(i)
    return n / (time.perf_counter() - started)


async def bench_backend(url: str, n: int) -> dict[tuple[str, str], float]:
    """ops/s of touch and update under each mode: {(op, mode): median of the slices}."""
    exporter = InMemorySpanExporter()
    store = await sessionary.connect(url)
    try:
        web = store.namespace("bench-tracing", idle_ttl=timedelta(minutes=30))
        data = {"user": 42, "cart": [{"sku": "A-1", "qty": 2}]}
        pool = [(await web.create(data=data)).id for _ in range(100)]

        async def touch(i: int) -> None:
            await web.touch(pool[i % len(pool)])

        async def update(i: int) -> None:
            await web.update(pool[i % len(pool)], data={**data, "n": i})

        per_slice = max(1, n // SLICES)
        out = {}
        for name, op in {"touch": touch, "update": update}.items():
            speeds: dict[str, list[float]] = {mode: [] for mode in MODES}
            for mode in MODES:  # warm-up: each mode's first spans cost more
                with tracing(mode, exporter):
                    await timed(op, min(per_slice, 200))
            for turn in range(SLICES):
                order = MODES if turn % 2 == 0 else tuple(reversed(MODES))
                for mode in order:
                    with tracing(mode, exporter):
                        speeds[mode].append(await timed(op, per_slice))
            out.update({(name, mode): statistics.median(speeds[mode]) for mode in MODES})
        for session_id in pool:
            await web.delete(session_id)
        return out
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=20_000, help="operations per op and mode")
    parser.add_argument("--backends", default="memory,sqlite,redis")
    parser.add_argument("--smoke", action="store_true", help="CI size, seconds: 300 ops")
    args = parser.parse_args()
    if args.smoke:
        args.ops = 300
    console = Console()
    console.print(
        f"sessionary {sessionary.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, {args.ops} ops per op and mode, one at a time"
    )
    table = Table("backend", "op", "tracing", "ops/s", "vs absent", "µs added per op")
    with tempfile.TemporaryDirectory() as tmp:
        urls = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{Path(tmp) / 'bench.db'}",
            "redis": f"{REDIS_URL}?prefix={PREFIX}",
        }
        for backend in args.backends.split(","):
            measured = await bench_backend(urls[backend], args.ops)
            for op in ("touch", "update"):
                absent = measured[(op, "absent")]
                for mode in MODES:
                    ops = measured[(op, mode)]
                    table.add_row(
                        backend,
                        op,
                        mode,
                        f"{ops:,.0f}",
                        f"{ops / absent:.2f}x",
                        f"{(1 / ops - 1 / absent) * 1e6:.1f}",
                    )
    console.print(table)


if __name__ == "__main__":
    asyncio.run(main())
