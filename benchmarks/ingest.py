"""Analytics ingest throughput: `Sessionizer.ingest` on memory, SQLite and Redis, against a
naive per-event sessionizer on the same Redis in the same run.

    python benchmarks/ingest.py [--devices 10000] [--events 200000] [--batch 1000]
                                [--in-flight 1,4] [--rounds 3] [--backends memory,sqlite,redis]
                                [--smoke]

The traffic: `--events` screen views spread over `--devices` devices (round robin), each device's
events a few seconds apart, so every batch extends open sessions and opens new ones at first.
The events are parsed (`TrackEvent.parse`) before the clock starts (and set aside from the
garbage collector with `gc.freeze`: the test data is not the system under test); the timed part
is `ingest` of batches of `--batch`, with `--in-flight` batches at once, from one process, and
a drainer that acknowledges the outbox every 10 batches without storing it anywhere (a running
service's drainer keeps the outbox small; the sink's own speed is not measured here).

The baseline is what the original product does per event: GET the device's session (a JSON
string), decide in Python (extend it, or start a new one), SET it back with its TTL: two round
trips per event, on the same Redis, with 1 and with 32 events in flight (the latter is racy,
which is exactly its bug, but it is the fastest it can go). Each number is the median of
interleaved rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

import sessionary
from sessionary.analytics import Sessionizer, TrackEvent

REDIS_URL = os.environ.get("REDIS_BENCH_URL", "redis://127.0.0.1:6379/9")
PREFIX = f"bench:ingest:{os.getpid()}:"
T = 30 * 60_000


@dataclass
class Traffic:
    events: list[TrackEvent]
    raw: list[tuple[str, int, str]]  # (device, ts, path) for the baseline


def traffic(devices: int, count: int, start: int) -> Traffic:
    events, raw = [], []
    for i in range(count):
        device, step = f"device-{i % devices}", i // devices
        ts = start + step * 3000 + i % devices
        path = f"/page/{step % 7}"
        events.append(
            TrackEvent.parse(
                {"name": "screen_view", "device_id": device, "timestamp": ts, "path": path}
            )
        )
        raw.append((device, ts, path))
    return Traffic(events, raw)


async def bench_sessionary(url: str, t: Traffic, batch: int, in_flight: int, project: str) -> float:
    store = await sessionary.connect(url)
    try:
        s = Sessionizer(store)
        batches = [t.events[i : i + batch] for i in range(0, len(t.events), batch)]
        queue = iter(enumerate(batches))

        async def worker() -> None:
            for n, events in queue:
                await s.ingest(project, events)
                if n % 10 == 9:  # the drainer, storing nowhere
                    entries = await s.backend.outbox(project, 100_000)
                    await s.backend.ack(project, [entry.id for entry in entries])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return len(t.events) / (time.perf_counter() - started)
    finally:
        await store.close()


async def bench_naive(client: Redis, t: Traffic, in_flight: int, tag: str) -> float:
    """Per event: GET the device's session, decide, SET it back (two round trips)."""
    queue = iter(t.raw)

    async def one(device: str, ts: int, path: str) -> None:
        key = f"{PREFIX}{tag}:session:{device}"
        found = await client.get(key)
        session = None if found is None else orjson.loads(found)
        if session is None or ts - session["last"] > T:
            session = {"id": f"{device}:{ts}", "start": ts, "last": ts, "events": 0,
                       "entry": path, "exit": path}  # fmt: skip
        session["last"] = max(session["last"], ts)
        session["events"] += 1
        session["exit"] = path
        await client.set(key, orjson.dumps(session), px=T * 2)

    async def worker() -> None:
        for device, ts, path in queue:
            await one(device, ts, path)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return len(t.raw) / (time.perf_counter() - started)


async def cleanup(client: Redis) -> None:
    async for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
        await client.delete(key)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--in-flight", default="1,4", help="batches at once, comma-separated")
    parser.add_argument("--naive-events", type=int, default=20_000, help="events for the baseline")
    parser.add_argument("--backends", default="memory,sqlite,redis")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI size, seconds: 3,000 events over 300 devices in batches of 100, one round",
    )
    args = parser.parse_args()
    if args.smoke:
        args.devices, args.events, args.batch, args.naive_events, args.rounds = (
            300, 3000, 100, 500, 1,
        )  # fmt: skip
    flights = [int(x) for x in args.in_flight.split(",")]
    backends = args.backends.split(",")
    console = Console()
    console.print(
        f"sessionary {sessionary.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores; {args.events:,} events over {args.devices:,} devices, "
        f"batches of {args.batch}"
    )
    start = int(time.time() * 1000) - 3_600_000
    t = traffic(args.devices, args.events, start)
    gc.freeze()
    parse_started = time.perf_counter()
    for raw in t.raw[: min(50_000, len(t.raw))]:
        TrackEvent.parse({"name": "screen_view", "device_id": raw[0], "timestamp": raw[1]})
    parse_rate = min(50_000, len(t.raw)) / (time.perf_counter() - parse_started)
    naive_t = Traffic(t.events[: args.naive_events], t.raw[: args.naive_events])
    client = Redis.from_url(REDIS_URL)
    found: dict[tuple[str, int], list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_number in range(args.rounds):
                urls = {
                    "memory": "memory://",
                    "sqlite": f"sqlite:///{Path(tmp) / f'ingest{round_number}.db'}",
                    "redis": f"{REDIS_URL}?prefix={PREFIX}",
                }
                for name in backends:
                    for flight in flights:
                        project = f"bench{round_number}x{flight}"
                        rate = await bench_sessionary(urls[name], t, args.batch, flight, project)
                        found.setdefault((name, flight), []).append(rate)
                if "redis" in backends:
                    for flight in (1, 32):
                        rate = await bench_naive(
                            client, naive_t, flight, f"r{round_number}x{flight}"
                        )
                        found.setdefault(("naive", flight), []).append(rate)
                console.print(f"round {round_number + 1} of {args.rounds} done", style="dim")
        await cleanup(client)
    finally:
        await client.aclose()
    medians = {key: statistics.median(rates) for key, rates in found.items()}
    best_naive = max((v for (name, _), v in medians.items() if name == "naive"), default=None)
    table = Table("implementation", "in flight", "events/s (median)", "x best naive")
    for (name, flight), rate in medians.items():
        label = "naive GET+SET per event" if name == "naive" else f"sessionary on {name}"
        unit = "events" if name == "naive" else "batches"
        ratio = "" if best_naive is None else f"{rate / best_naive:.1f}x"
        table.add_row(label, f"{flight} {unit}", f"{rate:,.0f}", ratio)
    console.print(table)
    console.print(f"TrackEvent.parse alone: {parse_rate:,.0f} events/s (not in the numbers above)")


if __name__ == "__main__":
    asyncio.run(main())
