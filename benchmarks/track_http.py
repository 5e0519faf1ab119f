"""`POST /api/v1/track` under load: `sessionary serve` driven by wrk over loopback.

    python benchmarks/track_http.py [--store sqlite|redis://...] [--duration 8] [--rounds 3]
                                    [--smoke]

The service runs as `sessionary serve` (one process, its background reaper and drainer on),
wrk drives it with 16 connections, each request a batch of random devices among 10,000. Three
measurements per round, interleaved: `GET /healthz` (the baseline: the same server's cheapest
route, no store), `/track` with one event per request, and `/track` with 100 per request.
Prints requests/s and events/s, medians of the rounds. wrk, the server, its store and its sink
share the machine's cores.
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
from shared import wrk_arguments, wrk_parser

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


async def serve(config_path: Path, port: int) -> asyncio.subprocess.Process:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessionary", "serve", "--config", str(config_path)
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await wait_ready(client, 30)
    except RuntimeError:
        server.kill()
        raise
    return server


async def main() -> None:
    parser = wrk_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite", help="sqlite, or a Redis URL")
    args = wrk_arguments(parser)
    console = Console()
    found: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        store = f"sqlite:///{directory / 'store.db'}" if args.store == "sqlite" else args.store
        scripts = {}
        for batch in (1, 100):
            scripts[batch] = directory / f"track{batch}.lua"
            scripts[batch].write_text(LUA % {"key": KEY, "batch": batch})
        port = free_port()
        # the service's own jobs at their defaults, the store's reaper on too
        server = await serve(write_config(directory, store, port, jobs="", timeout="30m"), port)
        try:
            for round_number in range(args.rounds):
                for name, path, script in (
                    ("GET /healthz", "/healthz", None),
                    ("/track, 1 event", "/api/v1/track", scripts[1]),
                    ("/track, 100 events", "/api/v1/track", scripts[100]),
                ):
                    rate = await asyncio.to_thread(
                        wrk, port, path, args.duration, args.connections, script
                    )
                    found.setdefault(name, []).append(rate)
                console.print(f"round {round_number + 1} of {args.rounds} done", style="dim")
        finally:
            server.terminate()
            await server.wait()
    table = Table("route", "requests/s (median)", "events/s", "rounds")
    for name, rates in found.items():
        per = 100 if "100" in name else (1 if "track" in name else 0)
        rate = statistics.median(rates)
        events = f"{rate * per:,.0f}" if per else ""
        table.add_row(name, f"{rate:,.0f}", events, ", ".join(f"{r:,.0f}" for r in rates))
    console.print(f"store {args.store}, {args.connections} connections, {os.cpu_count()} cores")
    console.print(table)


if __name__ == "__main__":
    asyncio.run(main())
