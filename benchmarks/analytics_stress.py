"""End to end: `sessionary serve` sessionizes tracked events over HTTP, under concurrency.

    python benchmarks/analytics_stress.py [--store sqlite] [--sessions 500] [--events 3]
                                          [--concurrency 25] [--smoke]

Starts `sessionary serve` (a subprocess, its own port, a 2 s session timeout, its reaper and
drainer running every 250 ms), sends `--sessions` devices x `--events` screen views over
`POST /api/v1/track` from `--concurrency` clients at once, each device's events in order, then
waits for the service's own reaper to close every session and its drainer to fill the sink.
It checks, and exits non-zero unless: `--sessions` distinct sessions, as many session_start and
session_end rows, sessions x (events + 2) event rows in all, and no open session left in the
store. `--store` is sqlite (a fresh file) or a Redis URL (use a scratch database, or a
`?prefix=` of its own: what the run writes stays there).
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
from dataclasses import dataclass
from pathlib import Path

import httpx

import sessionary

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
    directory: Path, store: str, port: int, jobs: str = STRESS_JOBS, timeout: str = "2s"
) -> Path:
    """The service's settings: the project, its `timeout`, and `jobs`, TOML lines of the
    [analytics] table setting the reaper and drainer periods."""
    config = directory / "sessionary.toml"
    config.write_text(
        f"""store = "{store}"
port = {port}
api_keys = ["{ADMIN_KEY}"]
log_level = "warning"

[analytics]
sink = "sqlite:///{directory / "sink.db"}"
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


def count_sink(path: Path) -> tuple[int, int, int, int]:
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


async def run(store: str, sessions: int, events: int, concurrency: int) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if store == "sqlite":
            store = f"sqlite:///{directory / 'store.db'}"
        port = free_port()
        config = write_config(directory, store, port)
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sessionary", "serve", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                await wait_ready(client)
                rate = await send(client, sessions, events, concurrency)
                sent = time.monotonic()
                sink = directory / "sink.db"
                while True:  # the service's reaper (timeout 2 s + lag 1 s) and drainer
                    await asyncio.sleep(0.25)
                    found = count_sink(sink) if sink.exists() else (0, 0, 0, 0)
                    if found[2] >= sessions or time.monotonic() - sent > 60:
                        break
                await asyncio.sleep(1)  # anything more would be a duplicate: let it show
                found = count_sink(sink)
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
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--events", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=25)
    parser.add_argument(
        "--smoke", action="store_true", help="CI size, seconds: 20 sessions of 2 events, 5 clients"
    )
    args = parser.parse_args()
    if args.smoke:
        args.sessions, args.events, args.concurrency = 20, 2, 5
    outcome = asyncio.run(run(args.store, args.sessions, args.events, args.concurrency))
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
