"""The two per-event parts of analytics around `ingest`, each alone: `TrackEvent.parse` (the
validation of every /track event) and the drainer (outbox -> sink rows).

    python benchmarks/analytics_parts.py [--events 50000] [--rounds 3]
                                         [--sinks sqlite,postgres,clickhouse]
                                         [--clickhouse URL] [--smoke]

Parse: three kinds of event (an app's screen view with a device id; a browser's page view, its
URL with utm_* parameters, a referrer, properties and the client's IP and User-Agent; a
server's purchase with a profile id, an event id, revenue and properties), parsed in a loop.
The baseline is the same events checked by `jsonschema` against `EVENT_SCHEMA`, the schema the
OpenAPI document publishes for them (a generic validator, which only says yes or no).

Drain: `--events` screen views over 2,000 devices, ingested in batches of 1,000 into a memory
store before the clock starts (so the outbox costs nothing to read: what is timed is the
drainer and the sink), then `Sessionizer.drain()` into a fresh SQLite sink in a tmp dir,
into PostgreSQL (`BENCH_PG_URL`, default postgresql://postgres@127.0.0.1:5432/test, in a
schema of its own, dropped afterwards) and into ClickHouse (`--clickhouse` or
`BENCH_CLICKHOUSE_URL`, clickhouse://user@host:http-port/db; without either, a clickhouse-server
of the run's own in a tmp dir, tests/servers.py `ClickHouseServer`), in a database of its own
(bench_<hex>, dropped afterwards). The baseline is the floor of each database: the same event
rows, prebuilt as tuples, inserted by one `executemany` of the sink's own INSERT in one
transaction into a fresh table (sqlite3; asyncpg), and the session rows likewise; on
ClickHouse, the rows prebuilt as JSONEachRow bytes, POSTed as one `INSERT INTO analytics_events
FORMAT JSONEachRow` over its HTTP interface (httpx, a warm connection) into the sink's own
table, then the session rows likewise. The test data is set aside from the garbage collector
(`gc.freeze`). Each number is the median of interleaved rounds. After the table, how many times
as fast as into PostgreSQL the drain into ClickHouse is.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema  # type: ignore[import-untyped]  # no stubs; a dev dependency (schemathesis)
from rich.console import Console
from rich.table import Table

import sessionary
from analytics_stress import clickhouse_query, private_clickhouse, with_database
from sessionary.analytics import Sessionizer, TrackEvent
from sessionary.analytics.clickhouse_sink import HttpTransport, each_row, session_objects
from sessionary.analytics.events import EVENT_SCHEMA
from sessionary.analytics.sink import (
    EVENT_COLUMNS,
    SESSION_COLUMNS,
    rows_of,
    session_values,
    sink_from_url,
)

PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
CLICKHOUSE_URL = os.environ.get("BENCH_CLICKHOUSE_URL")  # None: a server of the run's own
DEVICES = 2000
CLIENT = ("203.0.113.9", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0")
EVENTS: dict[str, tuple[dict[str, Any], tuple[str, str] | None]] = {
    "app screen view": (
        {"name": "screen_view", "device_id": "device-17", "timestamp": 1_700_000_000_000},
        None,
    ),
    "browser page view": (
        {
            "name": "screen_view",
            "url": "https://shop.example/p/1?utm_source=news&utm_medium=mail",
            "referrer": "https://search.example/",
            "properties": {"plan": "pro", "items": 3},
        },
        CLIENT,
    ),
    "server purchase": (
        {
            "name": "purchase",
            "profile_id": "user-42",
            "event_id": "order-991",
            "revenue": 1999,
            "timestamp": 1_700_000_000_000,
            "properties": {"sku": "A-1"},
        },
        None,
    ),
}


def rate(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - started)


def bench_parse(n: int, rounds: int) -> dict[str, tuple[float, float]]:
    """{kind: (parse events/s, jsonschema events/s)}, medians of interleaved rounds."""
    validator = jsonschema.Draft202012Validator(EVENT_SCHEMA)
    found: dict[str, tuple[list[float], list[float]]] = {kind: ([], []) for kind in EVENTS}
    for _ in range(rounds):
        for kind, (raw, client) in EVENTS.items():
            ours, theirs = found[kind]
            parse = partial(TrackEvent.parse, raw, project_id="shop", client=client)
            ours.append(rate(parse, n))
            theirs.append(rate(partial(validator.is_valid, raw), max(1, n // 10)))
    return {kind: (statistics.median(a), statistics.median(b)) for kind, (a, b) in found.items()}


async def filled(events: int) -> Sessionizer:
    """A Sessionizer on a memory store whose outbox holds `events` screen views, undrained."""
    sessionizer = Sessionizer(await sessionary.connect("memory://"))
    start = int(time.time() * 1000) - 3_600_000
    tracked = [
        TrackEvent.parse(
            {
                "name": "screen_view",
                "device_id": f"device-{i % DEVICES}",
                "timestamp": start + i // DEVICES * 3000 + i % DEVICES,
                "path": f"/page/{i // DEVICES % 7}",
            }
        )
        for i in range(events)
    ]
    for i in range(0, events, 1000):
        await sessionizer.ingest("shop", tracked[i : i + 1000])
    gc.freeze()
    return sessionizer


async def drained(events: int, url: str) -> float:
    """Events/s of `Sessionizer.drain()` of a fresh outbox of `events` into the sink `url`."""
    sessionizer = await filled(events)
    sessionizer.sink = await sink_from_url(url)
    try:
        started = time.perf_counter()
        await sessionizer.drain()
        elapsed = time.perf_counter() - started
        assert not await sessionizer.backend.outbox("shop", 1)
        return events / elapsed
    finally:
        await sessionizer.sink.close()
        await sessionizer.store.close()


def insert(name: str, columns: tuple[str, ...], marks: list[str], conflict: str) -> str:
    return (
        f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join(marks)}) "
        f"ON CONFLICT {conflict}"
    )


async def bare_sqlite(
    events: list[tuple[Any, ...]], sessions: list[tuple[Any, ...]], url: str
) -> float:
    """The same rows into a fresh file with the sink's tables, by sqlite3 alone."""
    sink = await sink_from_url(url)  # creates the tables
    await sink.close()
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = NORMAL")
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            insert("analytics_events", EVENT_COLUMNS, ["?"] * len(EVENT_COLUMNS), "DO NOTHING"),
            events,
        )
        conn.executemany(
            insert(
                "analytics_sessions", SESSION_COLUMNS, ["?"] * len(SESSION_COLUMNS), "DO NOTHING"
            ),
            sessions,
        )
        conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()


async def bare_postgres(
    events: list[tuple[Any, ...]], sessions: list[tuple[Any, ...]], url: str
) -> float:
    """The same rows into fresh tables by asyncpg alone."""
    sink = await sink_from_url(url)  # creates the tables
    await sink.close()
    schema = url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    try:
        started = time.perf_counter()
        async with conn.transaction():
            marks = [f"${i}" for i in range(1, len(EVENT_COLUMNS) + 1)]
            await conn.executemany(
                insert("analytics_events", EVENT_COLUMNS, marks, "DO NOTHING"), events
            )
            marks = [f"${i}" for i in range(1, len(SESSION_COLUMNS) + 1)]
            await conn.executemany(
                insert("analytics_sessions", SESSION_COLUMNS, marks, "DO NOTHING"), sessions
            )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def bare_clickhouse(events: bytes, sessions: bytes, url: str) -> float:
    """The same rows, prebuilt as JSONEachRow, into the sink's tables by two HTTP POSTs."""
    sink = await sink_from_url(url)  # creates the database and the tables
    await sink.close()
    transport = HttpTransport(url, timeout=300)
    try:
        await transport.query("SELECT 1")  # the connection is open before the clock, as the sink's
        started = time.perf_counter()
        await transport.query("INSERT INTO analytics_events FORMAT JSONEachRow", events)
        await transport.query("INSERT INTO analytics_sessions FORMAT JSONEachRow", sessions)
        return time.perf_counter() - started
    finally:
        await transport.close()


async def bench_drain(
    events: int, rounds: int, sinks: list[str], clickhouse: str | None = None
) -> dict[str, tuple[float, float]]:
    """{sink: (drained events/s, bare insert events/s)}, medians of interleaved rounds;
    `clickhouse` a URL of the ClickHouse server to use (each round makes a database of its
    own there, not the URL's)."""
    sample = await filled(events)
    rows, sessions = rows_of(await sample.backend.outbox("shop", 1_000_000))
    await sample.store.close()
    event_tuples = [
        (*(getattr(row, name) for name in EVENT_COLUMNS[:-2]), row.properties.decode(), row.late)
        for row in rows
    ]
    session_tuples = [session_values(row) for row in sessions]
    event_body = session_body = b""
    if "clickhouse" in sinks:
        event_body = each_row([dict(zip(EVENT_COLUMNS, row, strict=True)) for row in event_tuples])
        session_body = each_row(session_objects(sessions))
    found: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in sinks}
    admin = await asyncpg.connect(PG_URL) if "postgres" in sinks else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for round_number in range(rounds):
                for name in sinks:
                    ours, bare = found[name]
                    for turn in (0, 1) if round_number % 2 == 0 else (1, 0):
                        schema = f"bench_{uuid.uuid4().hex[:12]}"
                        if name == "sqlite":
                            url = f"sqlite:///{Path(tmp) / f'{schema}.db'}"
                        elif name == "clickhouse":
                            assert clickhouse is not None, "no ClickHouse to drain into"
                            url = with_database(clickhouse, schema)
                        else:
                            url = f"{PG_URL}?schema={schema}"
                        try:
                            if turn == 0:
                                ours.append(await drained(events, url))
                            elif name == "sqlite":
                                elapsed = await bare_sqlite(event_tuples, session_tuples, url)
                                bare.append(events / elapsed)
                            elif name == "clickhouse":
                                elapsed = await bare_clickhouse(event_body, session_body, url)
                                bare.append(events / elapsed)
                            else:
                                elapsed = await bare_postgres(event_tuples, session_tuples, url)
                                bare.append(events / elapsed)
                        finally:
                            if admin is not None and name == "postgres":
                                await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                            if name == "clickhouse" and clickhouse is not None:
                                await clickhouse_query(
                                    url, f"DROP DATABASE IF EXISTS {schema}", in_database=False
                                )
    finally:
        if admin is not None:
            await admin.close()
    return {name: (statistics.median(a), statistics.median(b)) for name, (a, b) in found.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events drained per round")
    parser.add_argument("--parses", type=int, default=100_000, help="parses per kind and round")
    parser.add_argument("--sinks", default="sqlite,postgres,clickhouse")
    parser.add_argument(
        "--clickhouse",
        default=CLICKHOUSE_URL,
        help="clickhouse://user@host:http-port/db (its server; each round makes a database of "
        "its own), default BENCH_CLICKHOUSE_URL; without: a clickhouse-server of the run's own",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--smoke", action="store_true", help="CI size, seconds: 3,000 events, 2,000 parses"
    )
    args = parser.parse_args()
    if args.smoke:
        args.events, args.parses, args.rounds = 3000, 2000, 1
    console = Console()
    console.print(
        f"sessionary {sessionary.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores; {args.parses:,} parses per kind, {args.events:,} events "
        f"drained per round, {args.rounds} rounds"
    )
    table = Table("TrackEvent.parse", "events/s (median)", "µs per event", "x jsonschema")
    for kind, (ours, theirs) in bench_parse(args.parses, args.rounds).items():
        table.add_row(kind, f"{ours:,.0f}", f"{1e6 / ours:.2f}", f"{ours / theirs:.1f}x")
    console.print(table)
    table = Table("drain into", "events/s (median)", "µs per event", "bare insert/s", "x bare")
    sinks = args.sinks.split(",")
    with ExitStack() as stack:
        clickhouse = args.clickhouse
        if "clickhouse" in sinks and not clickhouse:
            clickhouse = stack.enter_context(private_clickhouse())
        drained = await bench_drain(args.events, args.rounds, sinks, clickhouse)
    for name, (ours, bare) in drained.items():
        table.add_row(
            name, f"{ours:,.0f}", f"{1e6 / ours:.2f}", f"{bare:,.0f}", f"{ours / bare:.2f}x"
        )
    console.print(table)
    if "clickhouse" in drained and "postgres" in drained:
        ratio = drained["clickhouse"][0] / drained["postgres"][0]
        console.print(f"clickhouse drains {ratio:.1f}x as fast as postgres")


if __name__ == "__main__":
    asyncio.run(main())
