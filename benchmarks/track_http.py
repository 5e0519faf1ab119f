"""`POST /api/v1/track` under load: `sessionary serve` driven by wrk over loopback.

    python benchmarks/track_http.py [--store sqlite,redis] [--workers 1,2] [--duration 8]
                                    [--rounds 3] [--connections 16] [--smoke]

One service per store (`sqlite`: a file of its own; `redis`: BENCH_REDIS_URL under a prefix of
its own, removed afterwards; or a Redis URL) and worker count (`sessionary serve --workers N`),
all running at once, their background reaper and drainer on. wrk drives each with 16
connections, each request a batch of random devices among 10,000. Three measurements per
service and round, the rounds interleaved over the services: `GET /healthz` (the baseline: the
same server's cheapest route, no store), `/track` with one event per request, and `/track` with
100 per request. Prints requests/s and events/s (medians of the rounds) and each route's ratio
to the same server's /healthz. wrk, the servers, their stores and sinks share the machine's
cores.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from analytics_stress import KEY, free_port, wait_ready, write_config
from middleware import wrk
from shared import forget_redis_keys, wrk_arguments, wrk_parser

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
PREFIX = f"bench:track:{os.getpid()}:"

LUA = """
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local events = {}
  for i = 1, %(batch)d do
    events[i] = string.format(
      '{"name":"screen_view","device_id":"d%%d","path":"/p%%d"}',
      math.random(1, 10000), math.random(1, 20))
  end
  return wrk.format(nil, nil, nil, "[" .. table.concat(events, ",") .. "]")
end
"""

#: (name, path, events per request: None for no body)
ROUTES = (
    ("GET /healthz", "/healthz", None),
    ("/track, 1 event", "/api/v1/track", 1),
    ("/track, 100 events", "/api/v1/track", 100),
)


async def serve(config_path: Path, port: int, workers: int) -> asyncio.subprocess.Process:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessionary", "serve", "--config", str(config_path),
        "--workers", str(workers),
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await wait_ready(client, 30)
    except RuntimeError:
        server.kill()
        raise
    return server


def store_url(store: str, directory: Path, workers: int) -> str:
    if store == "sqlite":
        return f"sqlite:///{directory / 'store.db'}"
    url = REDIS_URL if store == "redis" else store
    return f"{url}{'&' if '?' in url else '?'}prefix={PREFIX}{workers}:"


async def main() -> None:
    parser = wrk_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--store", default="sqlite", help="comma-separated: sqlite, redis, or Redis URLs"
    )
    parser.add_argument("--workers", default="1", help="comma-separated worker counts")
    args = wrk_arguments(parser)
    stores = args.store.split(",")
    counts = [int(n) for n in args.workers.split(",")]
    console = Console(width=160)  # a row on one line, however narrow the terminal
    found: dict[tuple[str, int, str], list[float]] = {}
    servers: dict[tuple[str, int], tuple[int, asyncio.subprocess.Process]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scripts: dict[int, Path] = {}
        for batch in (1, 100):
            scripts[batch] = Path(tmp) / f"track{batch}.lua"
            scripts[batch].write_text(LUA % {"key": KEY, "batch": batch})
        try:
            for store in stores:
                for workers in counts:
                    directory = Path(tmp) / f"{len(servers)}"
                    directory.mkdir()
                    port = free_port()
                    # the service's own jobs at their defaults, the store's reaper on too
                    config = write_config(
                        directory, store_url(store, directory, workers), port, "", "30m"
                    )
                    servers[store, workers] = port, await serve(config, port, workers)
            for port, _ in servers.values():  # warm up
                for _, path, batch in ROUTES:
                    script = None if batch is None else scripts[batch]
                    await asyncio.to_thread(wrk, port, path, 1, args.connections, script)
            for round_number in range(args.rounds):
                for (store, workers), (port, _) in servers.items():
                    for name, path, batch in ROUTES:
                        script = None if batch is None else scripts[batch]
                        rate, _ = await asyncio.to_thread(
                            wrk, port, path, args.duration, args.connections, script
                        )
                        found.setdefault((store, workers, name), []).append(rate)
                console.print(f"round {round_number + 1} of {args.rounds} done", style="dim")
        finally:
            for _, server in servers.values():
                server.terminate()
                await server.wait()
            if any(store != "sqlite" for store in stores):
                for store in stores:
                    if store != "sqlite":
                        await forget_redis_keys(REDIS_URL if store == "redis" else store, PREFIX)
    table = Table(
        "store", "workers", "route", "requests/s (median)", "events/s", "/ healthz", "rounds"
    )
    for (store, workers), _ in servers.items():
        baseline = statistics.median(found[store, workers, "GET /healthz"])
        for name, _, batch in ROUTES:
            rates = found[store, workers, name]
            rate = statistics.median(rates)
            table.add_row(
                store.split("?")[0],
                str(workers),
                name,
                f"{rate:,.0f}",
                "" if batch is None else f"{rate * batch:,.0f}",
                f"{rate / baseline:.2f}x",
                ", ".join(f"{r:,.0f}" for r in rates),
            )
    console.print(
        f"{args.connections} connections, {os.cpu_count()} cores, "
        f"{args.duration} s x {args.rounds} rounds"
    )
    console.print(table)


if __name__ == "__main__":
    asyncio.run(main())
