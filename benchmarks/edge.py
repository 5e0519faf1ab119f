"""The service at its edge: memory, latency and Redis connections of `sessionary serve` under abuse.

    python benchmarks/edge.py [--stores sqlite,redis] [--redis-cap 64] [--hold 8] [--smoke]
                              [--check]

Each scenario runs against a fresh `sessionary serve` (a subprocess on a free port, the admin
API, runs and analytics on) on each store: SQLite (a fresh file), Redis (a private
redis-server on a free port, so that its CLIENT LIST holds this run's connections only; the
service's store URL sets `max_connections` to `--redis-cap`). While the load is on, a thread
of this process samples the server's RSS (VmRSS of it and its children, every 20 ms) and a
process of its own times `GET /healthz` on a keep-alive connection every 20 ms (apart, so that
this process's load on its own loop and GIL does not count as the server's latency); on Redis,
CLIENT LIST is read every 250 ms and the service's connections counted (this process's own are
named `edge-bench` and left out), and read once more 3 s after the readers left.

* header flood: 10 connections each send 5 MB of request header (50 MB in all), never ending
  the request, then hold the connection for `--hold` s: five send one endless header, five
  endless 100-byte headers.
* readers, one replayed log: a finished run whose log holds 8 MB (1,000 events of 8 KB); 200
  readers of its events, each a socket with a 4 KB receive buffer that never reads, held open
  for `--hold` s.
* readers, live logs: 200 running runs (this process holds their producers and appends 1 KB
  to each every 0.5 s), one such reader on each, held for `--hold` s.
* /track batches: 100 concurrent `POST /api/v1/track` of 1,000 events, 1.9 MB each.

Targets: RSS under 250 MB in each, `/healthz` p99 under 50 ms while readers are held, the
service's Redis connections at most the cap. `--check` exits 1 if one is missed. `--smoke` is
the CI size (seconds): 10 x 256 KB of header, 20 readers of a 512 KB log, 20 live logs, 10
batches of 100 events, held 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import httpx
import orjson
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

import sessionary
from analytics_stress import KEY, free_port, wait_ready, write_config
from sessionary.runs import Producer, Runs

USER_KEY = "edge-user-key-0123456789"
OWNER = "edge"
BENCH_CLIENT = "edge-bench"  # the CLIENT SETNAME of this process's own Redis connections
RSS_TARGET_MB = 250
P99_TARGET_MS = 50
PROBE_TIMEOUT_S = 5


@dataclass(frozen=True)
class Sizes:
    flood_connections: int = 10
    flood_bytes: int = 5 * 1024 * 1024  # per connection
    readers: int = 200
    log_events: int = 1000
    event_bytes: int = 8 * 1024
    live_runs: int = 200
    batches: int = 100
    batch_events: int = 1000
    event_pad: int = 1850  # bytes of property per tracked event: ~1.9 KB each
    hold_s: float = 8.0


SMOKE = Sizes(
    flood_bytes=256 * 1024, readers=20, log_events=64, live_runs=20, batches=10,
    batch_events=100, hold_s=1.0,
)  # fmt: skip


@dataclass
class Measured:
    store: str
    scenario: str
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    probe_failures: int = 0
    redis_peak: int | None = None
    redis_after: int | None = None
    outcome: str = ""

    @property
    def p99_ms(self) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else float("nan")
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[98]

    def missed(self, cap: int) -> list[str]:
        out = []
        if self.rss_peak_mb >= RSS_TARGET_MB:
            out.append(f"RSS {self.rss_peak_mb:.0f} MB")
        if self.scenario.startswith("readers") and not self.p99_ms < P99_TARGET_MS:
            out.append(f"p99 {self.p99_ms:.0f} ms")
        if self.redis_peak is not None and self.redis_peak > cap:
            out.append(f"{self.redis_peak} Redis connections")
        if self.redis_after is not None and self.redis_after > cap:
            out.append(f"{self.redis_after} Redis connections after")
        return out


# -- the service and what watches it -------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """VmRSS of a process and its descendants, in MB (0 once it is gone)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


# The /healthz probe runs in a process of its own, so that what it measures is the server, not
# this process's event loop and GIL (busy driving hundreds of sockets). It times one request
# every 20 ms on a keep-alive connection and prints each latency in ms (prefixed "x" when the
# request failed) until its stdin closes.
PROBE = """
import http.client, select, sys, time
port, timeout = int(sys.argv[1]), float(sys.argv[2])
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
while True:
    started = time.perf_counter()
    failed = ""
    try:
        connection.request("GET", "/healthz")
        answer = connection.getresponse()
        answer.read()
        failed = "" if answer.status == 200 else "x"
    except (OSError, http.client.HTTPException):
        failed = "x"
        connection.close()
    print(f"{failed}{(time.perf_counter() - started) * 1000:.3f}", flush=True)
    if select.select([sys.stdin], [], [], 0.02)[0]:  # stdin closed: stop
        break
"""


class Watch:
    """Samples the server's RSS (a thread of this process) and times /healthz (a process of
    its own, see PROBE) while the `with` block runs."""

    def __init__(self, pid: int, port: int, into: Measured) -> None:
        self.pid, self.port, self.into = pid, port, into
        self.stopping, self.probing = threading.Event(), threading.Event()
        self.threads = [threading.Thread(target=self._rss)]
        self.probe: subprocess.Popen[str] | None = None

    def __enter__(self) -> Watch:
        self.into.rss_before_mb = rss_mb(self.pid)
        self.into.rss_peak_mb = self.into.rss_before_mb
        self.probe = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(self.port), str(PROBE_TIMEOUT_S)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.threads.append(threading.Thread(target=self._read, args=(self.probe.stdout,)))
        for thread in self.threads:
            thread.start()
        if not self.probing.wait(10):  # the load starts once the probe does
            self.probe.kill()
            raise RuntimeError("the /healthz probe did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 5  # a load over at once still gets a few probes
        while len(self.into.latencies_ms) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.stopping.set()
        if self.probe is not None:
            assert self.probe.stdin is not None
            self.probe.stdin.close()  # it stops
            self.probe.wait(PROBE_TIMEOUT_S + 5)
        for thread in self.threads:
            thread.join()

    def _rss(self) -> None:
        while not self.stopping.wait(0.02):
            self.into.rss_peak_mb = max(self.into.rss_peak_mb, rss_mb(self.pid))

    def _read(self, probe: IO[str]) -> None:
        for line in probe:
            if line.startswith("x"):
                self.into.probe_failures += 1
            self.into.latencies_ms.append(float(line.lstrip("x")))
            self.probing.set()


class PrivateRedis:
    """A redis-server of this run's own on a free port (so its CLIENT LIST is ours)."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def url(self, **options: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"redis://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


async def service_connections(client: Redis) -> int:
    """The service's connections to the private Redis: all but this process's own."""
    return sum(1 for c in await client.client_list() if c.get("name") != BENCH_CLIENT)


@contextlib.asynccontextmanager
async def serve(directory: Path, store: str) -> AsyncIterator[tuple[int, int]]:
    """A fresh `sessionary serve` on `store`: yields (pid, port)."""
    port = free_port()
    config = write_config(directory, store, port, jobs="", timeout="30m")
    config.write_text(
        config.read_text() + f'\n[runs]\nusers = [{{ key = "{USER_KEY}", subject = "{OWNER}" }}]\n'
    )
    with (directory / "serve.log").open("wb") as log:
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sessionary", "serve", "--config", str(config),
            stdout=log, stderr=log,
        )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await wait_ready(client, 30)
        yield server.pid, port
    finally:
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 20)
            except TimeoutError:
                server.kill()
                await server.wait()


# -- the loads -----------------------------------------------------------------------------------


async def header_flood(port: int, sizes: Sizes) -> str:
    """Connections sending flood_bytes of header and never ending the request: half of them
    one endless header, half endless 100-byte headers. What each saw: an answer, a close, or
    nothing."""
    one_header = [b"X-Flood: ", *[b"a" * 65536] * (sizes.flood_bytes // 65536)]
    many_headers = [b"".join(b"X-F%d: %s\r\n" % (n, b"a" * 90) for n in range(k, k + 640))
                    for k in range(0, sizes.flood_bytes // 100, 640)]  # fmt: skip

    async def one(parts: list[bytes]) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = asyncio.ensure_future(reader.read(64))
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n")
            for part in parts:
                if answer.done():  # a 431 comes early
                    break
                writer.write(part)
                await asyncio.wait_for(writer.drain(), 30)
            done, _ = await asyncio.wait([answer], timeout=sizes.hold_s)
            if not done:
                return "held open"
            first = answer.result().split(b" ")
            return f"answered {first[1].decode(errors='replace')}" if len(first) > 1 else "closed"
        except (ConnectionError, TimeoutError):
            return "closed"
        finally:
            answer.cancel()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    loads = [one_header if n % 2 else many_headers for n in range(sizes.flood_connections)]
    outcomes = Counter(await asyncio.gather(*(one(parts) for parts in loads)))
    return ", ".join(f"{n} {what}" for what, n in sorted(outcomes.items()))


async def open_readers(port: int, paths: list[str]) -> list[socket.socket]:
    """One socket per path, asking for its event stream and never reading it."""
    loop = asyncio.get_running_loop()

    async def one(path: str) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        request = (
            f"GET {path} HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {USER_KEY}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        return sock

    return list(await asyncio.gather(*(one(path) for path in paths)))


def closed_by_server(readers: list[socket.socket]) -> int:
    """How many of the readers the server has closed or reset (their TCP state is no longer
    ESTABLISHED; nothing is read, whatever the server buffered)."""
    established = 1  # tcp_info's first byte is the state, as in linux/tcp_states.h
    return sum(
        1 for s in readers if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != established
    )


def events_path(conversation: str, run: str) -> str:
    return f"/api/v1/conversations/{conversation}/runs/{run}/events"


async def replayed_log(runs: Runs, sizes: Sizes) -> list[str]:
    """A finished run whose log holds log_events x event_bytes; the readers' paths."""
    conversation = await runs.create_conversation(OWNER)
    run = await runs.start(conversation.id, OWNER)
    async with runs.producer(run.id, worker="edge") as producer:
        for n in range(sizes.log_events):
            await producer.emit("chunk", {"n": n, "text": "x" * sizes.event_bytes})
        await producer.complete({"events": sizes.log_events})
    return [events_path(conversation.id, run.id)] * sizes.readers


@dataclass
class Scenario:
    """`run(port, sizes, runs, watch, redis)` prepares, then loads the service inside
    `with watch:` (which fills watch.into)."""

    name: str
    run: Callable[[int, Sizes, Runs, Watch, Redis | None], Awaitable[None]]


async def hold_readers(
    port: int, paths: list[str], sizes: Sizes, watch: Watch, redis: Redis | None
) -> None:
    """Open the readers, hold them (counting the service's Redis connections), close them."""
    measured = watch.into
    with watch:
        readers = await open_readers(port, paths)
        deadline = time.monotonic() + sizes.hold_s
        while time.monotonic() < deadline:
            if redis is not None:
                count = await service_connections(redis)
                measured.redis_peak = max(measured.redis_peak or 0, count)
            await asyncio.sleep(0.25)
        cut = closed_by_server(readers)
        for sock in readers:
            sock.close()
    measured.outcome = f"{cut} of {len(readers)} readers cut by the server"
    if redis is not None:
        await asyncio.sleep(3)
        measured.redis_after = await service_connections(redis)


async def flood(port: int, sizes: Sizes, runs: Runs, watch: Watch, redis: Redis | None) -> None:
    with watch:
        watch.into.outcome = await header_flood(port, sizes)


async def replay(port: int, sizes: Sizes, runs: Runs, watch: Watch, redis: Redis | None) -> None:
    await hold_readers(port, await replayed_log(runs, sizes), sizes, watch, redis)


async def live(port: int, sizes: Sizes, runs: Runs, watch: Watch, redis: Redis | None) -> None:
    producers: list[Producer] = []
    paths = []
    for _ in range(sizes.live_runs):
        conversation = await runs.create_conversation(OWNER)
        run = await runs.start(conversation.id, OWNER)
        producers.append(await runs.producer(run.id, worker="edge").__aenter__())
        paths.append(events_path(conversation.id, run.id))

    async def emit() -> None:
        while True:
            await asyncio.gather(*(p.emit("chunk", {"text": "y" * 1024}) for p in producers))
            await asyncio.sleep(0.5)

    emitting = asyncio.create_task(emit())
    try:
        await hold_readers(port, paths, sizes, watch, redis)
    finally:
        emitting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await emitting
        for producer in producers:  # completes the run
            await producer.__aexit__(None, None, None)


async def track(port: int, sizes: Sizes, runs: Runs, watch: Watch, redis: Redis | None) -> None:
    body = orjson.dumps(
        [
            {
                "name": "screen_view",
                "device_id": f"d{n}",
                "properties": {"pad": "x" * sizes.event_pad},
            }
            for n in range(sizes.batch_events)
        ]
    )
    limits = httpx.Limits(max_connections=sizes.batches)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=300
    ) as client:

        async def one() -> str:
            try:
                return str(
                    (await client.post("/api/v1/track", content=body, headers=headers)).status_code
                )
            except httpx.TransportError:
                return "cut"

        with watch:
            statuses = Counter(await asyncio.gather(*(one() for _ in range(sizes.batches))))
    watch.into.outcome = f"{len(body) / 1e6:.1f} MB each: " + ", ".join(
        f"{n} x {status}" for status, n in sorted(statuses.items())
    )


SCENARIOS = [
    Scenario("header flood", flood),
    Scenario("readers, one replayed log", replay),
    Scenario("readers, live logs", live),
    Scenario("/track batches", track),
]


async def one_scenario(
    scenario: Scenario,
    store: str,
    sizes: Sizes,
    directory: Path,
    redis: PrivateRedis | None,
    cap: int,
) -> Measured:
    measured = Measured(store, scenario.name)
    directory.mkdir()  # noqa: ASYNC240 (once, before anything runs)
    if redis is None:
        url = bench_url = f"sqlite:///{directory / 'store.db'}"
    else:
        url, bench_url = redis.url(max_connections=cap), redis.url(client_name=BENCH_CLIENT)
    counter = None if redis is None else Redis.from_url(redis.url(), client_name=BENCH_CLIENT)
    try:
        if counter is not None:
            await counter.flushall()
        async with serve(directory, url) as (pid, port):
            opened = await sessionary.connect(bench_url)
            try:
                await scenario.run(port, sizes, Runs(opened), Watch(pid, port, measured), counter)
            finally:
                await opened.close()
    finally:
        if counter is not None:
            await counter.aclose()
    return measured


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,redis", help="sqlite and/or redis")
    parser.add_argument("--redis-cap", type=int, default=64, help="the service's max_connections")
    parser.add_argument(
        "--hold", type=float, default=Sizes.hold_s, help="seconds each load is held"
    )
    parser.add_argument("--smoke", action="store_true", help="CI size, seconds (see above)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else replace(Sizes(), hold_s=args.hold)
    stores = args.stores.split(",")
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(
        f"sessionary {sessionary.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores; {sizes}"
    )
    results: list[Measured] = []
    with tempfile.TemporaryDirectory() as tmp:
        for store in stores:
            redis = PrivateRedis(Path(tmp)) if store == "redis" else None
            try:
                for n, scenario in enumerate(SCENARIOS):
                    directory = Path(tmp) / f"{store}-{n}"
                    results.append(
                        await one_scenario(scenario, store, sizes, directory, redis, args.redis_cap)
                    )
                    console.print(f"{store}: {scenario.name} done", style="dim")
            finally:
                if redis is not None:
                    redis.stop()
    table = Table(
        "store", "scenario", "RSS before MB", "RSS peak MB", "/healthz p99 ms", "probes failed",
        "Redis conns peak", "after", "what the clients saw", "targets",
    )  # fmt: skip
    missed_any = False
    for m in results:
        missed = m.missed(args.redis_cap)
        missed_any = missed_any or bool(missed)
        table.add_row(
            m.store, m.scenario, f"{m.rss_before_mb:.0f}", f"{m.rss_peak_mb:.0f}",
            f"{m.p99_ms:.1f}", f"{m.probe_failures} of {len(m.latencies_ms)}",
            "" if m.redis_peak is None else str(m.redis_peak),
            "" if m.redis_after is None else str(m.redis_after),
            m.outcome, "missed: " + ", ".join(missed) if missed else "met",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"targets: RSS < {RSS_TARGET_MB} MB in each; /healthz p99 < {P99_TARGET_MS} ms while "
        f"readers are held; the service's Redis connections <= {args.redis_cap} (its cap)"
    )
    if args.check and missed_any:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
