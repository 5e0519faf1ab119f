"""Requests/s through the session middleware, against starsessions and against nothing.

    python benchmarks/middleware.py [--duration 10] [--connections 16] [--rounds 3] [--smoke]

Each application (benchmarks/middleware_apps.py) runs alone under uvicorn (one worker,
uvloop, httptools) while wrk drives it over loopback from one thread per connection, each
connection keeping its own session cookie (a wrk Lua script). Two comparisons, in one run:

* GET /rw, which reads and writes a session on Redis: sessionary vs starsessions (RedisStore).
* GET /plain with no cookie: sessionary's middleware installed vs no middleware at all.
"""

from __future__ import annotations

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
  if cookie then wrk.headers["Cookie"] = cookie end
  return wrk.format()
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
    def __init__(self, factory: str) -> None:
        self.factory = factory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {
            **os.environ,
            "BENCH_REDIS_URL": REDIS_URL,
            "BENCH_PREFIX": PREFIX,
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


def wrk(port: int, path: str, seconds: int, connections: int, script: Path | None) -> float:
    command = ["wrk", f"-t{connections}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run(
        [*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors while benchmarking {path}:\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(found.group(1))


def measure(factory: str, path: str, seconds: int, connections: int, script: Path | None) -> float:
    with Server(factory) as server:
        # warm up: connections, sessions, JIT
        wrk(server.port, path, min(seconds, 2), connections, script)
        return wrk(server.port, path, seconds, connections, script)


def main() -> None:
    args = wrk_arguments(wrk_parser(__doc__.split("\n\n")[0], duration=10))
    console = Console()
    console.print(
        f"{os.cpu_count()} cores, {args.connections} connections, "
        f"{args.duration} s per measurement, Redis at {REDIS_URL}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "keep_cookie.lua"
        script.write_text(KEEP_COOKIE)
        scenarios = {
            "sessionary /rw": ("sessionary", "/rw", script),
            "starsessions /rw": ("starsessions", "/rw", script),
            "sessionary /plain, no cookie": ("sessionary", "/plain", None),
            "no middleware /plain": ("bare", "/plain", None),
        }
        runs: dict[str, list[float]] = {name: [] for name in scenarios}
        try:
            for _ in range(args.rounds):
                for name, (factory, path, lua) in scenarios.items():
                    runs[name].append(measure(factory, path, args.duration, args.connections, lua))
        finally:
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
                client.delete(key)
    results = {name: statistics.median(rates) for name, rates in runs.items()}
    table = Table("endpoint", "requests/s (median)", "rounds")
    for name, rate in results.items():
        table.add_row(name, f"{rate:,.0f}", ", ".join(f"{r:,.0f}" for r in runs[name]))
    console.print(table)
    ratio = results["sessionary /rw"] / results["starsessions /rw"]
    overhead = 1 - results["sessionary /plain, no cookie"] / results["no middleware /plain"]
    console.print(f"read+write session: sessionary / starsessions = {ratio:.2f}x (target >= 1.5x)")
    console.print(f"no-cookie overhead of the middleware: {overhead:+.1%} (target < 5%)")


if __name__ == "__main__":
    main()
