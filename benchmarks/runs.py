"""Run event logs on Redis: append throughput and follow latency, against raw redis-py streams.

    python benchmarks/runs.py [--events 10000] [--tasks 1,32] [--rate 1000] [--seconds 4]
                              [--readers 100] [--rounds 3] [--url redis://127.0.0.1:6379/9]
                              [--smoke]

Two measurements, each the median of interleaved rounds (`--rounds`, default 3; this VM's
speed drifts), with the raw redis-py baseline measured in the same round on the same server
(and, for appends, in slices taking turns with the ops measured against it):

* Append throughput (events/s), one task at a time and with many in flight: `Producer.emit`
  through `sessionary.runs` (one producer per run, so one stream per task),
  `Namespace.append` (one session per task, and all tasks on one session), and raw redis-py
  `XADD key MAXLEN ~ 10000 * t chunk d <json> ts <ms>` of the same payload (one stream per
  task, and all tasks on one stream).
* Follow latency: one producer emits at a fixed `--rate` for `--seconds` to one run while
  `--readers` followers (`Runs.events`) in the same process read it; every event carries its
  emit time, and each reader records when it got it. Baselines on the same stream shape: raw
  redis-py with one `XREAD BLOCK` loop per reader, each on its own connection, and raw
  redis-py with a single `XREAD BLOCK` loop handing entries to the readers in memory.

Everything is written under a unique key prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, cast

import orjson
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT
from rich.console import Console
from rich.table import Table

import sessionary
from sessionary import Namespace, Store
from sessionary.logs import LogReset
from sessionary.runs import Producer, Runs

Op = Callable[[int, int], Awaitable[object]]  # (event number, worker number)
K = TypeVar("K")
Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry as redis-py returns it: id, fields
DEFAULT_URL = os.environ.get("REDIS_BENCH_URL", "redis://127.0.0.1:6379/9")
PREFIX = f"bench:runs:{os.getpid()}:"
MAXLEN = 10_000  # what the runs namespace keeps per log by default (log_max_length)
TEXT = "The quick brown fox jumps over the lazy dog, "  # a chunk of a streamed answer
OWNER = "bench-user"


def chunk(i: int) -> dict[str, Any]:
    return {"text": TEXT, "n": i}


async def xadd(client: Redis, key: str, kind: str, payload: Any) -> None:
    """The baseline's append: the payload encoded by the caller, as sessionary's is, then
    XADD key MAXLEN ~ 10000 * t <kind> d <json> ts <ms>."""
    fields: dict[FieldT, EncodableT] = {
        "t": kind,
        "d": orjson.dumps(payload),
        "ts": int(time.time() * 1000),
    }
    await client.xadd(key, fields, maxlen=MAXLEN, approximate=True)


# -- append throughput --------------------------------------------------------------------------


SLICES = 10  # each measurement in slices, the ops of a round taking turns slice by slice


async def timed(op: Op, first: int, n: int, tasks: int) -> float:
    """Run op(first..first+n-1, worker) with `tasks` workers in flight; returns seconds."""
    counter = iter(range(first, first + n))

    async def worker(number: int) -> None:
        for i in counter:
            await op(i, number)

    started = time.perf_counter()
    await asyncio.gather(*(worker(number) for number in range(tasks)))
    return time.perf_counter() - started


async def taking_turns(ops: dict[K, Op], n: int, tasks: int) -> dict[K, float]:
    """events/s of each op, `n` events each: warmed up, then in `SLICES` slices that take
    turns (this machine's speed drifts within a round too: every op sees the same drift)."""
    for op in ops.values():
        await timed(op, 0, min(n // 10, 1000), tasks)
    took = dict.fromkeys(ops, 0.0)
    size = max(1, n // SLICES)
    for first in range(0, n, size):
        for name, op in ops.items():
            took[name] += await timed(op, first, min(size, n - first), tasks)
    return {name: n / seconds for name, seconds in took.items()}


async def open_producers(runs: Runs, count: int) -> list[Producer]:
    """`count` running runs, each in its own conversation, each with its producer entered."""
    producers = []
    for _ in range(count):
        conversation = await runs.create_conversation(OWNER)
        run = await runs.start(conversation.id, OWNER)
        producer = runs.producer(run.id, worker="bench")
        await producer.__aenter__()
        producers.append(producer)
    return producers


async def bench_appends(
    runs: Runs, log: Namespace, raw: Redis, n: int, concurrencies: list[int], round_number: int
) -> dict[tuple[str, str, int], float]:
    """events/s keyed by (op, streams, tasks); streams is "per task" or "one"."""
    out: dict[tuple[str, str, int], float] = {}
    for tasks in concurrencies:
        # Producer.emit: a producer holds its run alone, so one stream per task
        producers = await open_producers(runs, tasks)

        async def emit(i: int, worker: int, producers: list[Producer] = producers) -> None:
            await producers[worker].emit("chunk", chunk(i))

        # Namespace.append: one session per task, then every task on one session
        sessions = [(await log.create()).id for _ in range(tasks)]

        async def append(i: int, worker: int, sessions: list[str] = sessions) -> None:
            await log.append(sessions[worker], "chunk", chunk(i))

        async def append_one(i: int, worker: int, sessions: list[str] = sessions) -> None:
            await log.append(sessions[0], "chunk", chunk(i))

        # the baseline: XADD with approximate trimming, the payload encoded by the caller
        keys = [f"{PREFIX}raw:{round_number}:{tasks}:{worker}" for worker in range(tasks)]

        async def add(i: int, worker: int, keys: list[str] = keys) -> None:
            await xadd(raw, keys[worker], "chunk", chunk(i))

        async def add_one(i: int, worker: int, keys: list[str] = keys) -> None:
            await xadd(raw, keys[0], "chunk", chunk(i))

        ops: dict[tuple[str, str, int], Op] = {
            ("Producer.emit", "per task", tasks): emit,
            ("Namespace.append", "per task", tasks): append,
            ("raw XADD", "per task", tasks): add,
        }
        if tasks > 1:
            ops[("Namespace.append", "one", tasks)] = append_one
            ops[("raw XADD", "one", tasks)] = add_one
        out.update(await taking_turns(ops, n, tasks))
        for producer in producers:
            await producer.__aexit__(None, None, None)
    return out


# -- follow latency -----------------------------------------------------------------------------


@dataclass
class Followed:
    """What the readers of one paced stream saw."""

    readers: int
    emitted: int  # what the producer sent in the time given (fewer if it fell behind)
    seconds: float  # how long emitting took
    latencies_ns: list[int] = field(default_factory=list)  # every reader's, pooled, sorted
    exact: int = 0  # readers that got every event exactly once, in order
    resets: int = 0

    @property
    def rate(self) -> float:
        return self.emitted / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """The q-quantile of the latencies, in ms."""
        ordered = self.latencies_ns
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


class Readers:
    """Per-reader bookkeeping: latencies, the order of what arrived, and who is live."""

    def __init__(self, count: int) -> None:
        self.seen: list[list[int]] = [[] for _ in range(count)]
        self.latencies: list[list[int]] = [[] for _ in range(count)]
        self.live = 0
        self.all_live = asyncio.Event()
        self.count = count
        self.resets = 0

    def ready(self) -> None:
        self.live += 1
        if self.live == self.count:
            self.all_live.set()

    def got(self, reader: int, data: dict[str, Any], now_ns: int) -> None:
        self.latencies[reader].append(now_ns - data["t"])
        self.seen[reader].append(data["i"])

    def result(self, emitted: int, seconds: float) -> Followed:
        expected = list(range(emitted))
        return Followed(
            self.count,
            emitted,
            seconds,
            sorted(latency for mine in self.latencies for latency in mine),
            sum(seen == expected for seen in self.seen),
            self.resets,
        )


async def paced(
    rate: float, seconds: float, send: Callable[[int], Awaitable[object]]
) -> tuple[int, float]:
    """send(0, 1, ...) on a fixed schedule of `rate` per second for `seconds` (a late one goes
    at once, so the average holds while the sender keeps up); returns how many it sent and
    how long that took. A sender that cannot keep up sends fewer, not later."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    count = round(rate * seconds)
    for i in range(count):
        now = loop.time()
        if now - started >= seconds:
            return i, now - started
        delay = started + i / rate - now
        if delay > 0:
            await asyncio.sleep(delay)
        await send(i)
    return count, loop.time() - started


async def follow_sessionary(runs: Runs, rate: float, seconds: float, readers: int) -> Followed:
    conversation = await runs.create_conversation(OWNER)
    run = await runs.start(conversation.id, OWNER)
    book = Readers(readers)

    async def read(reader: int) -> None:
        async for item in runs.events(run.id):
            now = time.perf_counter_ns()
            if isinstance(item, LogReset):
                book.resets += 1
            elif item.type == "chunk":
                book.got(reader, item.data, now)
            elif item.type == "status" and item.data.get("status") == "running":
                book.ready()

    tasks = [asyncio.create_task(read(reader)) for reader in range(readers)]
    async with runs.producer(run.id, worker="bench") as producer:
        await asyncio.wait_for(book.all_live.wait(), 30)

        async def send(i: int) -> None:
            await producer.emit("chunk", {"i": i, "t": time.perf_counter_ns(), "text": TEXT})

        emitted, took = await paced(rate, seconds, send)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)  # each ends at the run's `end`
    return book.result(emitted, took)


async def follow_raw(
    url: str, key: str, rate: float, seconds: float, readers: int, fan_out: bool
) -> Followed:
    """The same stream by hand: XADD MAXLEN ~ at the rate; each reader an XREAD BLOCK loop on
    its own connection, or (fan_out) one XREAD BLOCK loop handing entries to every reader."""
    writer = Redis.from_url(url, protocol=2)
    listener = Redis.from_url(url, protocol=2, max_connections=readers + 8)
    book = Readers(readers)

    def handle(reader: int, fields: dict[bytes, bytes], now: int) -> bool:
        """False at the end of the stream."""
        kind = fields[b"t"]
        if kind == b"end":
            return False
        if kind == b"chunk":
            book.got(reader, orjson.loads(fields[b"d"]), now)
        elif kind == b"status":
            book.ready()
        return True

    async def xread_loop(deliver: Callable[[list[Entry], int], bool]) -> None:
        last: bytes | str = "0-0"
        while True:
            found = await listener.xread({key: last}, count=1000, block=5000)
            reply = cast(list[tuple[bytes, list[Entry]]], found)  # RESP2: [[key, entries]]
            now = time.perf_counter_ns()
            for _, entries in reply:
                if entries:
                    last = entries[-1][0]
                if not deliver(entries, now):
                    return

    async def own_connection(reader: int) -> None:
        def deliver(entries: list[Entry], now: int) -> bool:
            return all(handle(reader, fields, now) for _, fields in entries)

        await xread_loop(deliver)

    queues: list[asyncio.Queue[tuple[list[Entry], int]]] = [asyncio.Queue() for _ in range(readers)]

    async def from_queue(reader: int) -> None:
        while True:
            entries, _ = await queues[reader].get()
            now = time.perf_counter_ns()  # when this reader got it, as with sessionary's
            if not all(handle(reader, fields, now) for _, fields in entries):
                return

    def broadcast(entries: list[Entry], now: int) -> bool:
        for queue in queues:
            queue.put_nowait((entries, now))
        return not any(fields[b"t"] == b"end" for _, fields in entries)

    try:
        await xadd(writer, key, "status", {"status": "running"})
        if fan_out:
            tasks = [asyncio.create_task(from_queue(reader)) for reader in range(readers)]
            tasks.append(asyncio.create_task(xread_loop(broadcast)))
        else:
            tasks = [asyncio.create_task(own_connection(reader)) for reader in range(readers)]
        await asyncio.wait_for(book.all_live.wait(), 30)

        async def send(i: int) -> None:
            await xadd(writer, key, "chunk", {"i": i, "t": time.perf_counter_ns(), "text": TEXT})

        emitted, took = await paced(rate, seconds, send)
        await xadd(writer, key, "end", {"status": "completed"})
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return book.result(emitted, took)
    finally:
        await writer.aclose()
        await listener.aclose()


# -- the runs -----------------------------------------------------------------------------------


async def one_round(
    args: argparse.Namespace, concurrencies: list[int], round_number: int
) -> tuple[dict[tuple[str, str, int], float], dict[str, Followed]]:
    store: Store = await sessionary.connect(f"{args.url}?prefix={PREFIX}")
    raw = Redis.from_url(args.url, protocol=2, max_connections=64)
    try:
        runs = Runs(store)
        log = store.namespace("bench.log", absolute_ttl=timedelta(hours=1))
        appends = await bench_appends(runs, log, raw, args.events, concurrencies, round_number)
        followed = {
            "sessionary Runs.events": await follow_sessionary(
                runs, args.rate, args.seconds, args.readers
            ),
            "raw: an XREAD BLOCK per reader": await follow_raw(
                args.url,
                f"{PREFIX}raw:follow:{round_number}:a",
                args.rate,
                args.seconds,
                args.readers,
                fan_out=False,
            ),
            "raw: one XREAD BLOCK, fanned out": await follow_raw(
                args.url,
                f"{PREFIX}raw:follow:{round_number}:b",
                args.rate,
                args.seconds,
                args.readers,
                fan_out=True,
            ),
        }
        return appends, followed
    finally:
        await raw.aclose()
        await store.close()


async def cleanup(url: str) -> int:
    client = Redis.from_url(url, protocol=2)
    deleted = 0
    try:
        async for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
            deleted += await client.delete(key)
    finally:
        await client.aclose()
    return deleted


def median_followed(rounds: list[Followed]) -> tuple[float, float, float, float, str]:
    """Median over rounds of (emitted/s, p50, p99, max), and the exactly-once tally of all."""
    tally = f"{sum(r.exact for r in rounds)}/{sum(r.readers for r in rounds)}"
    resets = sum(r.resets for r in rounds)
    return (
        statistics.median(r.rate for r in rounds),
        statistics.median(r.percentile(0.50) for r in rounds),
        statistics.median(r.percentile(0.99) for r in rounds),
        statistics.median(r.latencies_ns[-1] / 1e6 for r in rounds),
        tally + (f", {resets} resets" if resets else ""),
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="Redis (keys go under a unique prefix)")
    parser.add_argument("--events", type=int, default=10_000, help="appends per measurement")
    parser.add_argument("--tasks", default="1,32", help="appends in flight, comma-separated")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s while following")
    parser.add_argument("--seconds", type=float, default=4.0, help="how long the producer emits")
    parser.add_argument("--readers", type=int, default=100, help="followers of the run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; each number is the median"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI size, seconds: 300 appends, tasks 1,4, 10 readers at 200/s for 0.5 s, one round",
    )
    args = parser.parse_args()
    if args.smoke:
        args.events, args.tasks, args.rate, args.seconds, args.readers, args.rounds = (
            300, "1,4", 200.0, 0.5, 10, 1,
        )  # fmt: skip
    concurrencies = [int(c) for c in args.tasks.split(",")]
    console = Console()
    console.print(
        f"sessionary {sessionary.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, {args.events} appends per measurement, "
        f"{args.readers} readers at {args.rate:,.0f} events/s for {args.seconds:g} s"
    )

    append_rounds: list[dict[tuple[str, str, int], float]] = []
    follow_rounds: list[dict[str, Followed]] = []
    try:
        for round_number in range(args.rounds):  # interleaved: the VM's speed drifts
            appends, followed = await one_round(args, concurrencies, round_number)
            append_rounds.append(appends)
            follow_rounds.append(followed)
    finally:
        await cleanup(args.url)

    table = Table("op", "streams", "tasks", "events/s", "raw XADD events/s", "ratio")
    for op, streams, tasks in append_rounds[0]:
        if op == "raw XADD":
            continue
        ours = statistics.median(r[(op, streams, tasks)] for r in append_rounds)
        raw = statistics.median(r[("raw XADD", streams, tasks)] for r in append_rounds)
        table.add_row(op, streams, str(tasks), f"{ours:,.0f}", f"{raw:,.0f}", f"{ours / raw:.2f}x")
    console.print("Append throughput (median of rounds):")
    console.print(table)

    latency = Table(
        "readers of one stream", "emitted/s", "p50 ms", "p99 ms", "max ms", "exactly once, in order"
    )
    for name in follow_rounds[0]:
        rate, p50, p99, worst, tally = median_followed([r[name] for r in follow_rounds])
        latency.add_row(name, f"{rate:,.0f}", f"{p50:.2f}", f"{p99:.2f}", f"{worst:.2f}", tally)
    console.print(
        f"Emit-to-reader latency, {args.readers} readers in this process (median of rounds):"
    )
    console.print(latency)


if __name__ == "__main__":
    asyncio.run(main())
