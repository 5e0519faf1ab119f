"""End to end: `sessionary serve` sessionizes tracked events over HTTP, under concurrency.

    python benchmarks/analytics_stress.py [--store sqlite] [--sink URL] [--sessions 500]
                                          [--events 3] [--concurrency 25] [--smoke]

Starts `sessionary serve` (a subprocess, its own port, a 2 s session timeout, its reaper and
drainer running every 250 ms), sends `--sessions` devices x `--events` screen views over
`POST /api/v1/track` from `--concurrency` clients at once, each device's events in order, then
waits for the service's own reaper to close every session and its drainer to fill the sink.
It checks, and exits non-zero unless: `--sessions` distinct sessions, as many session_start and
session_end rows, sessions x (events + 2) event rows in all, and no open session left in the
store. `--store` is sqlite (a fresh file) or a Redis URL (use a scratch database, or a
`?prefix=` of its own: what the run writes stays there). `--sink` is where the drainer writes:
a fresh SQLite file by default, a `sqlite:///path.db` or `clickhouse://user@host:port/db` URL
(counted there; ClickHouse's tables replace rows, so counted with FINAL; use a fresh database:
what the run writes stays there), or `clickhouse`: a clickhouse-server of the run's own
(tests/servers.py `ClickHouseServer`), in a fresh database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

import sessionary
from sessionary.analytics.clickhouse_sink import HttpTransport

PROJECT = "stress"
KEY = "stress-project-key-0123456789"
ADMIN_KEY = "stress-admin-key-0123456789"


@dataclass
class Outcome:
    sessions: int
    starts: int
    ends: int
    events: int
    open_left: int
    sent_per_s: float
    settled_s: float

    def problems(self, sessions: int, events: int) -> list[str]:
        want = {
            "sessions": sessions,
            "starts": sessions,
            "ends": sessions,
            "events": sessions * (events + 2),
            "open_left": 0,
        }
        return [
            f"{k}: {getattr(self, k)}, expected {v}"
            for k, v in want.items()
            if getattr(self, k) != v
        ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STRESS_JOBS = 'reap_every = "250ms"\nreap_lag = "1s"\ndrain_every = "250ms"\n'


def write_config(
    directory: Path,
    store: str,
    port: int,
    jobs: str = STRESS_JOBS,
    timeout: str = "2s",
    sink: str | None = None,
) -> Path:
    """The service's settings: the project, its `timeout`, and `jobs`, TOML lines of the
    [analytics] table setting the reaper and drainer periods. The sink is `sink`, by default
    the SQLite file sink.db in `directory`."""
    config = directory / "sessionary.toml"
    sink = sink or f"sqlite:///{directory / 'sink.db'}"
    config.write_text(
        f"""store = "{store}"
port = {port}
api_keys = ["{ADMIN_KEY}"]
log_level = "warning"

[analytics]
sink = "{sink}"
{jobs}
[analytics.projects.{PROJECT}]
key = "{KEY}"
timeout = "{timeout}"
"""
    )
    return config


async def wait_ready(client: httpx.AsyncClient, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("sessionary serve did not become ready")


async def send(client: httpx.AsyncClient, sessions: int, events: int, concurrency: int) -> float:
    devices = iter(range(sessions))
    headers = {"Authorization": f"Bearer {KEY}"}

    async def visitor() -> None:
        for device in devices:
            for k in range(events):
                event = {"name": "screen_view", "device_id": f"dev-{device}", "path": f"/{k}",
                         "event_id": f"ev-{device}-{k}"}  # fmt: skip
                answer = await client.post("/api/v1/track", headers=headers, json=event)
                if answer.status_code != 202:
                    raise RuntimeError(f"/track answered {answer.status_code}: {answer.text}")

    started = time.perf_counter()
    await asyncio.gather(*(visitor() for _ in range(concurrency)))
    return sessions * events / (time.perf_counter() - started)


Counts = tuple[int, int, int, int]  # closed sessions, session_start, session_end, event rows


def count_sink(path: Path) -> Counts:
    """The counts of the project's rows in the SQLite sink at `path` (zeros before it exists)."""
    if not path.exists():
        return (0, 0, 0, 0)
    with sqlite3.connect(path) as db:
        (sessions,) = db.execute(
            "SELECT count(*) FROM analytics_sessions WHERE project_id = ? AND closed", (PROJECT,)
        ).fetchone()
        counts = dict(
            db.execute(
                "SELECT name, count(*) FROM analytics_events WHERE project_id = ? GROUP BY name",
                (PROJECT,),
            ).fetchall()
        )
    return (
        sessions,
        counts.get("session_start", 0),
        counts.get("session_end", 0),
        sum(counts.values()),
    )


# -- a ClickHouse sink: its HTTP interface, and a server of the run's own ----------------------


def with_database(url: str, database: str) -> str:
    """The `clickhouse://` URL `url` naming `database` instead of its own."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def clickhouse_query(url: str, sql: str, *, in_database: bool = True) -> str:
    """The answer to `sql` (TabSeparated) from the ClickHouse of the sink URL `url`, in its
    database (or in none), by the sink's own transport; an error raises."""
    transport = HttpTransport(url)
    try:
        return (await transport.query(sql, database=in_database)).decode()
    finally:
        await transport.close()


@contextmanager
def private_clickhouse() -> Iterator[str]:
    """A clickhouse-server of the run's own in a tmp dir, stopped at the end: its sink URL."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.servers import ClickHouseServer

    with tempfile.TemporaryDirectory() as tmp:
        server = ClickHouseServer(Path(tmp))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


async def count_clickhouse(url: str) -> Counts:
    """The counts of the project's rows in the ClickHouse sink `url`, FINAL (its tables
    replace rows in the background: FINAL counts each key once); zeros before it exists."""
    transport = HttpTransport(url)
    try:

        async def ask(sql: str, in_database: bool = True) -> list[int]:
            answer = await transport.query(sql, database=in_database)
            return [int(value) for value in answer.split()]

        [tables] = await ask(
            f"SELECT count() FROM system.tables WHERE database = '{transport.database}' "
            "AND name IN ('analytics_events', 'analytics_sessions')",
            in_database=False,
        )
        if tables < 2:
            return (0, 0, 0, 0)
        [sessions] = await ask(
            f"SELECT count() FROM analytics_sessions FINAL WHERE project_id = '{PROJECT}' "
            "AND closed"
        )
        starts, ends, rows = await ask(
            "SELECT countIf(name = 'session_start'), countIf(name = 'session_end'), count() "
            f"FROM analytics_events FINAL WHERE project_id = '{PROJECT}'"
        )
        return sessions, starts, ends, rows
    finally:
        await transport.close()


async def run(
    store: str, sessions: int, events: int, concurrency: int, sink: str | None = None
) -> Outcome:
    """The stress run; `sink` a sink URL (SQLite or ClickHouse), by default a fresh SQLite
    file."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if store == "sqlite":
            store = f"sqlite:///{directory / 'store.db'}"
        count: Callable[[], Awaitable[Counts]]
        if sink is None:
            sink = f"sqlite:///{directory / 'sink.db'}"
        if sink.startswith("sqlite:///"):
            count = partial(asyncio.to_thread, count_sink, Path(sink.removeprefix("sqlite:///")))
        elif sink.startswith(("clickhouse://", "clickhouses://")):
            count = partial(count_clickhouse, sink)
        else:
            raise ValueError(
                f"--sink is sqlite:///path.db, clickhouse://... or clickhouse: {sink!r}"
            )
        port = free_port()
        jobs = STRESS_JOBS
        if sink.startswith(("clickhouse://", "clickhouses://")):
            # the default period: every drain is an insert per table, a part on disk each
            # (about 60 files on 18.16), and ClickHouse wants no more than one a second
            jobs = jobs.replace('drain_every = "250ms"', 'drain_every = "1s"')
        config = write_config(directory, store, port, jobs, sink=sink)
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sessionary", "serve", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                await wait_ready(client)
                rate = await send(client, sessions, events, concurrency)
                sent = time.monotonic()
                while True:  # the service's reaper (timeout 2 s + lag 1 s) and drainer
                    await asyncio.sleep(0.25)
                    found = await count()
                    if found[2] >= sessions or time.monotonic() - sent > 60:
                        break
                await asyncio.sleep(1)  # anything more would be a duplicate: let it show
                found = await count()
        finally:
            server.terminate()
            await server.wait()
        opened = await sessionary.connect(store)
        try:
            open_left = await opened.sessionization.open_sessions(PROJECT)
        finally:
            await opened.close()
        return Outcome(*found, open_left, rate, time.monotonic() - sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite", help="sqlite, or a Redis URL")
    parser.add_argument(
        "--sink",
        default=None,
        help="a sink URL (sqlite:///..., clickhouse://...), or clickhouse: a server of the "
        "run's own; by default a fresh SQLite file",
    )
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--events", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=25)
    parser.add_argument(
        "--smoke", action="store_true", help="CI size, seconds: 20 sessions of 2 events, 5 clients"
    )
    args = parser.parse_args()
    if args.smoke:
        args.sessions, args.events, args.concurrency = 20, 2, 5
    with ExitStack() as stack:
        sink = args.sink
        if sink == "clickhouse":
            sink = with_database(
                stack.enter_context(private_clickhouse()), f"stress_{uuid.uuid4().hex[:12]}"
            )
        outcome = asyncio.run(
            run(args.store, args.sessions, args.events, args.concurrency, sink=sink)
        )
    print(
        f"{outcome.sessions} sessions, {outcome.starts} session_start, {outcome.ends} "
        f"session_end, {outcome.events} event rows, {outcome.open_left} open left; "
        f"sent {outcome.sent_per_s:,.0f} events/s over HTTP; settled {outcome.settled_s:.1f} s "
        f"after the last event (timeout 2 s + reap lag 1 s)"
    )
    problems = outcome.problems(args.sessions, args.events)
    for problem in problems:
        print("FAIL", problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
