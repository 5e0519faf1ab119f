"""`sessionary serve --workers 2` against `--workers 1`, side by side, driven by wrk over loopback.

    python benchmarks/serve_workers.py [--store redis|sqlite] [--duration 8] [--rounds 3]
                                       [--connections 16] [--smoke]

Two services run at once, on their own ports and stores (Redis under a prefix of their own, from
BENCH_REDIS_URL, or each an SQLite file), every background job on: one with one worker, one with
two. The rounds alternate between them, two routes each:

* /rw: a read and write of a session, through the service's admin API (`PATCH` of one of 64
  sessions, new data each time; the store reads the session, checks it, writes it back).
* /track, 1 event: a browser's single-event `POST /api/v1/track`.

Prints requests/s (medians of the rounds) and the ratio 2 workers / 1 worker. wrk, both
services and the store share the machine's cores: on 2 cores, the second worker competes with
wrk and Redis for the second core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from analytics_stress import ADMIN_KEY, KEY, free_port, wait_ready, write_config
from middleware import wrk
from shared import forget_redis_keys, wrk_arguments, wrk_parser
from track_http import LUA as TRACK_LUA

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
SESSIONS = 64

RW_LUA = """
wrk.method = "PATCH"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.headers["Content-Type"] = "application/json"
local ids = {%(ids)s}
request = function()
  local id = ids[math.random(#ids)]
  local body = string.format('{"data":{"n":%%d}}', math.random(1, 1000000))
  return wrk.format(nil, "/v1/namespaces/web/sessions/" .. id, nil, body)
end
"""


class Service:
    """`sessionary serve --workers N` in a directory of its own, and the wrk scripts for it."""

    def __init__(self, directory: Path, workers: int, store: str) -> None:
        self.directory = directory
        self.workers = workers
        self.port = free_port()
        self.config = write_config(directory, store, self.port, jobs="", timeout="30m")
        self.process: asyncio.subprocess.Process | None = None
        self.scripts: dict[str, Path] = {}

    async def __aenter__(self) -> Service:
        command = ["serve", "--config", str(self.config), "--workers", str(self.workers)]
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sessionary", *command
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:
            await wait_ready(client, 30)
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            ids = []
            for _ in range(SESSIONS):
                created = await client.post(
                    "/v1/namespaces/web/sessions", json={"data": {"n": 0}}, headers=admin
                )
                created.raise_for_status()
                ids.append(created.json()["id"])
        quoted = ", ".join(f'"{session_id}"' for session_id in ids)
        self.scripts["/rw"] = self.directory / "rw.lua"
        self.scripts["/rw"].write_text(RW_LUA % {"key": ADMIN_KEY, "ids": quoted})
        self.scripts["/track"] = self.directory / "track.lua"
        self.scripts["/track"].write_text(TRACK_LUA % {"key": KEY, "batch": 1})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            await self.process.wait()

    def measure(self, route: str, seconds: int, connections: int) -> float:
        path = "/" if route == "/rw" else "/api/v1/track"
        rate, _ = wrk(self.port, path, seconds, connections, self.scripts[route])
        return rate


async def measure_all(
    services: list[Service],
    args: argparse.Namespace,
    found: dict[tuple[str, int], list[float]],
    console: Console,
) -> None:
    """Warm both services up, then measure each route on each, round after round."""
    for service in services:  # warm up: connections, imports, the store's scripts
        for route in ("/rw", "/track"):
            await asyncio.to_thread(service.measure, route, 1, args.connections)
    for round_number in range(args.rounds):
        for route in ("/rw", "/track"):
            for service in services:
                rate = await asyncio.to_thread(
                    service.measure, route, args.duration, args.connections
                )
                found.setdefault((route, service.workers), []).append(rate)
        console.print(f"round {round_number + 1} of {args.rounds} done", style="dim")


async def main() -> None:
    parser = wrk_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="redis", choices=("redis", "sqlite"))
    args = wrk_arguments(parser)
    console = Console()
    found: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        services = []
        for workers in (1, 2):
            directory = Path(tmp) / f"workers-{workers}"
            directory.mkdir()
            store = (
                f"sqlite:///{directory / 'store.db'}"
                if args.store == "sqlite"
                else f"{REDIS_URL}?prefix=bench:workers:{os.getpid()}:{workers}:"
            )
            services.append(Service(directory, workers, store))
        one, two = services
        try:
            async with one, two:
                await measure_all(services, args, found, console)
        finally:
            if args.store != "sqlite":
                await forget_redis_keys(REDIS_URL, f"bench:workers:{os.getpid()}:")
    table = Table("route", "1 worker (req/s)", "2 workers (req/s)", "2 / 1", "rounds (1 | 2)")
    for route in ("/rw", "/track"):
        single, double = found[(route, 1)], found[(route, 2)]
        ratio = statistics.median(double) / statistics.median(single)
        table.add_row(
            route if route == "/rw" else "/track, 1 event",
            f"{statistics.median(single):,.0f}",
            f"{statistics.median(double):,.0f}",
            f"{ratio:.2f}x",
            " ".join(f"{r:,.0f}" for r in single) + " | " + " ".join(f"{r:,.0f}" for r in double),
        )
    console.print(
        f"store {args.store}, {args.connections} connections, {os.cpu_count()} cores, "
        f"{args.duration} s x {args.rounds} rounds"
    )
    console.print(table)


if __name__ == "__main__":
    asyncio.run(main())
