"""Requests/s through the session middleware, against starsessions and against nothing,
and the updates each loses when concurrent requests share one session.

    python benchmarks/middleware.py [--duration 10] [--connections 16] [--rounds 3] [--smoke]
                                    [--read-cache 10000]

Each application (benchmarks/middleware_apps.py) runs alone under uvicorn (one worker,
uvloop, httptools) while wrk drives it over loopback from one thread per connection, each
connection keeping its own session cookie (a wrk Lua script: its first request, GET /rw,
creates the session). sessionary runs with a read cache of `--read-cache` sessions (0: none;
see sessionary.read_cache). Three comparisons, in one run:

* GET /rw, which reads and writes a session on Redis: sessionary vs starsessions (RedisStore).
* GET /ro, which only reads it: against the same application's GET /plain with no cookie,
  and, for the ceiling, an application without middleware whose /ro takes the request (with
  a cookie) and reads nothing.
* GET /plain with no cookie: sessionary's middleware installed vs no middleware at all.

Then lost updates: `--connections` clients send GET /rw with ONE session's cookie, each
response 200 acknowledging one increment of its counter; lost = increments acknowledged -
the counter read back at the end (GET /ro). A request sessionary cannot merge (the counter
changed meanwhile) is answered 409 `session_conflict`: refused, not acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
import redis
from rich.console import Console
from rich.table import Table

from shared import wrk_arguments, wrk_parser

HERE = Path(__file__).resolve().parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
PREFIX = f"bench:mw:{os.getpid()}:"

KEEP_COOKIE = """
local cookie = nil
request = function()
  if cookie then
    wrk.headers["Cookie"] = cookie
    return wrk.format()
  end
  return wrk.format(nil, "/rw")
end
response = function(status, headers, body)
  if status ~= 200 then errors_seen = (errors_seen or 0) + 1 end
  local set = headers["set-cookie"] or headers["Set-Cookie"]
  if set then cookie = set:match("^([^;]+)") end
end
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    #: sessionary's read cache, in sessions (the --read-cache option)
    read_cache = 10_000

    def __init__(self, factory: str) -> None:
        self.factory = factory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {
            **os.environ,
            "BENCH_REDIS_URL": REDIS_URL,
            "BENCH_PREFIX": PREFIX,
            "BENCH_READ_CACHE": str(self.read_cache),
            "PYTHONPATH": str(HERE),
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                f"middleware_apps:{self.factory}",
                "--factory",
                "--port",
                str(self.port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=env,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/plain", timeout=1)
                return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"{self.factory} did not start") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=20)


def wrk(
    port: int, path: str, seconds: int, connections: int, script: Path | None
) -> tuple[float, int]:
    """Requests/s, and how many requests were answered."""
    command = ["wrk", f"-t{connections}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run(
        [*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors while benchmarking {path}:\n{out}")
    found = re.search(r"(\d+) requests in .*Requests/sec:\s+([\d.]+)", out, re.DOTALL)
    if found is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(found.group(2)), int(found.group(1))


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process `pid` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    factory: str, path: str, seconds: int, connections: int, script: Path | None
) -> tuple[float, float]:
    """Requests/s, and the server's CPU time per request in us: the machine is shared, so
    throughput moves with the neighbours' load while the CPU each request costs does not."""
    with Server(factory) as server:
        assert server.process is not None
        # warm up: connections, sessions, JIT
        wrk(server.port, path, min(seconds, 2), connections, script)
        before = cpu_seconds(server.process.pid)
        rate, answered = wrk(server.port, path, seconds, connections, script)
        return rate, (cpu_seconds(server.process.pid) - before) / answered * 1e6


async def lost_updates(factory: str, connections: int, per_connection: int) -> list[int]:
    """[acknowledged, refused (409), final counter, lost] of `connections` clients each sending
    `per_connection` GET /rw with one session's cookie, all at once."""
    with Server(factory) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient() as first:
            created = await first.get(f"{base}/rw")  # n = 1, acknowledged
            cookie = created.headers["set-cookie"].split(";")[0]
        statuses: list[int] = [created.status_code]

        async def client() -> None:
            async with httpx.AsyncClient(headers={"Cookie": cookie}) as http:
                for _ in range(per_connection):
                    statuses.append((await http.get(f"{base}/rw")).status_code)

        await asyncio.gather(*(client() for _ in range(connections)))
        async with httpx.AsyncClient(headers={"Cookie": cookie}) as http:
            final = int((await http.get(f"{base}/ro")).json()["n"])
    unexpected = set(statuses) - {200, 409}
    if unexpected:
        raise RuntimeError(f"{factory}: unexpected statuses {unexpected}")
    acknowledged, refused = statuses.count(200), statuses.count(409)
    return [acknowledged, refused, final, acknowledged - final]


def main() -> None:
    parser = wrk_parser(__doc__.split("\n\n")[0], duration=10)
    parser.add_argument("--read-cache", type=int, default=Server.read_cache)
    args = wrk_arguments(parser)
    Server.read_cache = args.read_cache
    console = Console(width=150)
    console.print(
        f"{os.cpu_count()} cores, {args.connections} connections, "
        f"{args.duration} s per measurement, Redis at {REDIS_URL}, "
        f"sessionary's read cache: {args.read_cache} sessions"
    )
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "keep_cookie.lua"
        script.write_text(KEEP_COOKIE)
        a_cookie = Path(tmp) / "a_cookie.lua"  # as long as a session's, naming none
        a_cookie.write_text(f'wrk.headers["Cookie"] = "session={"A" * 43}"\n')
        scenarios = {
            "sessionary /rw": ("sessionary", "/rw", script),
            "starsessions /rw": ("starsessions", "/rw", script),
            "sessionary /ro": ("sessionary", "/ro", script),
            "sessionary /plain, no cookie": ("sessionary", "/plain", None),
            "no middleware /plain": ("bare", "/plain", None),
            "no middleware /ro, a cookie": ("no_session", "/ro", a_cookie),
            "starsessions /ro": ("starsessions", "/ro", script),
        }
        runs: dict[str, list[float]] = {name: [] for name in scenarios}
        cpu: dict[str, list[float]] = {name: [] for name in scenarios}
        try:
            for _ in range(args.rounds):
                for name, (factory, path, lua) in scenarios.items():
                    rate, us = measure(factory, path, args.duration, args.connections, lua)
                    runs[name].append(rate)
                    cpu[name].append(us)
            per_connection = 10 if args.smoke else 100
            lost = {
                factory: asyncio.run(lost_updates(factory, args.connections, per_connection))
                for factory in ("sessionary", "starsessions")
            }
        finally:
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
                client.delete(key)
    results = {name: statistics.median(rates) for name, rates in runs.items()}
    table = Table(
        "endpoint",
        "requests/s (median)",
        "rounds (ratios: medians of each round's)",
        "server CPU us/request (median)",
    )
    for name, rate in results.items():
        table.add_row(
            name,
            f"{rate:,.0f}",
            ", ".join(f"{r:,.0f}" for r in runs[name]),
            f"{statistics.median(cpu[name]):,.0f}",
        )
    console.print(table)
    table = Table(
        "library",
        "acknowledged (200)",
        "refused (409)",
        "final counter",
        "lost updates",
        title=f"lost updates: {args.connections} connections on one session, GET /rw",
    )
    for factory, counts in lost.items():
        table.add_row(factory, *(f"{count:,}" for count in counts))
    console.print(table)

    def ratio(name: str, baseline: str) -> float:
        """The median of each round's ratio: the two run back to back, so a noisy machine
        moves both."""
        return statistics.median(a / b for a, b in zip(runs[name], runs[baseline], strict=True))

    def cpu_ratio(name: str, other: str) -> float:
        return statistics.median(cpu[name]) / statistics.median(cpu[other])

    ratio_rw = ratio("sessionary /rw", "starsessions /rw")
    reading = ratio("sessionary /ro", "sessionary /plain, no cookie")
    ceiling = ratio("no middleware /ro, a cookie", "sessionary /plain, no cookie")
    overhead = 1 - ratio("sessionary /plain, no cookie", "no middleware /plain")
    console.print(
        f"read+write session: sessionary / starsessions = {ratio_rw:.2f}x (target >= 2.0x); "
        f"server CPU per request, starsessions / sessionary = "
        f"{cpu_ratio('starsessions /rw', 'sessionary /rw'):.2f}x"
    )
    console.print(
        f"read-only session: sessionary /ro / its /plain, no cookie = {reading:.2f}x "
        "(target >= 0.85x); server CPU per request, /plain / /ro = "
        f"{cpu_ratio('sessionary /plain, no cookie', 'sessionary /ro'):.2f}x; without "
        f"middleware, a /ro that reads nothing (with a cookie) / that /plain = {ceiling:.2f}x"
    )
    console.print(f"no-cookie overhead of the middleware: {overhead:+.1%} (target < 5%)")


if __name__ == "__main__":
    main()
