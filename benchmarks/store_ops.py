"""Throughput of the core operations on each backend, in one process.

    python benchmarks/store_ops.py [--ops 20000] [--concurrency 1,32] [--backends memory,redis]
                                   [--rounds 3] [--smoke]

Each number is the median of interleaved rounds (`--rounds`, default 3). For each backend it
prints ops/s for create, touch, update and consume, one operation at a
time (concurrency 1: the latency-bound case) and with many tasks in flight (how a server
under load drives the store). For Redis it also runs the baseline: raw redis-py issuing the
same commands a sessionary touch (or update, consume) issues, in one non-transactional
pipeline per operation, without the atomic checks, on an identically configured client;
the ratio sessionary/raw says what correctness costs. For SQLite the baseline is a bare
`sqlite3` loop on the loop's thread: the store's own statement for each operation (the same
`UPDATE ... RETURNING`, or INSERT) in its own `BEGIN IMMEDIATE` ... `COMMIT`, on a file opened
with the store's pragmas; the ratio sessionary/bare says what the store adds around its SQL
(target: >= 0.5x at one task). Beside each number, the longest the event loop was held while
it was measured (a ticker task asking to wake every millisecond records how late it woke): the
loop's responsiveness, which a backend working on the loop's thread spends. Last, the blocking
API (`sessionary.connect_sync`) against the async one: touch at one caller, each from a caller of
its own kind (a coroutine; a plain thread), and the ratio sync/async says what the hand-off to
the store's loop thread costs. And encryption at rest: touch and update on a store sealing
data and metadata with AES-256-GCM (`encryption_keys`) against the same store without, in
the same round, and the ratio sealed/plain (docs/benchmarks.md records it; target >= 0.85x).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

import sessionary
from sessionary import Namespace, Store, connect_sync, ids
from sessionary.backends.redis import RedisBackend
from sessionary.backends.redis.scripts import Scripts
from sessionary.backends.sqlite import _CHARGE, _INSERT, _TOUCH, _UPDATE

Op = Callable[[int], Awaitable[object]]
REDIS_URL = os.environ.get("REDIS_BENCH_URL", "redis://127.0.0.1:6379/9")
PREFIX = f"bench:{os.getpid()}:"
#: the sealed store's key: any 32 bytes will do for a benchmark
ENCRYPTION_KEY = bytes(range(32))


Key = tuple[str, int]  # (op, tasks)
#: how often the lag ticker asks to wake
TICK_S = 0.001


class Speed(NamedTuple):
    """One measurement: ops/s, the longest the event loop was held meanwhile (s), and the
    most CPU time the loop's thread spent from one tick to the next (s): a tick asks to wake
    after TICK_S, so CPU beyond that is the loop held by its own work, and wall time beyond
    the CPU is the OS running other processes (on a busy machine, most of the lag)."""

    ops: float
    lag: float
    hold: float


@dataclass
class Sealing:
    """touch or update with encryption at rest against without: ops/s, and the median of
    their ratios slice by slice (steadier than the ratio of the medians on a busy VM)."""

    plain: float
    sealed: float
    ratio: float


@dataclass
class Result:
    backend: str
    op: str
    concurrency: int
    ops_per_s: float
    lag: float
    hold: float
    baseline: float | None = None


async def timed(op: Op, n: int, concurrency: int) -> Speed:
    """Run op(0..n-1) with `concurrency` tasks in flight; ops/s, and the loop's longest lag
    meanwhile (how much later than asked a ticker sleeping TICK_S at a time woke) and the
    most CPU time its thread spent in one tick."""
    counter = iter(range(n))
    done = False
    lag = hold = 0.0

    async def worker() -> None:
        for i in counter:
            await op(i)

    async def ticker() -> None:
        nonlocal lag, hold
        while not done:
            asked, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(TICK_S)
            lag = max(lag, time.perf_counter() - asked - TICK_S)
            hold = max(hold, time.thread_time() - cpu)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker is ticking before the first op
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    took = time.perf_counter() - started
    done = True
    await ticking
    return Speed(n / took, lag, hold)


async def measure(ops: dict[str, Op], n: int, concurrencies: list[int]) -> dict[Key, Speed]:
    """ops/s (and loop lag) of each op at each concurrency, after a short warm-up."""
    out = {}
    for concurrency in concurrencies:
        for name, op in ops.items():
            await timed(op, min(n // 10, 1000), concurrency)
            out[(name, concurrency)] = await timed(op, n, concurrency)
    return out


async def bench_store(name: str, store: Store, n: int, concurrencies: list[int]) -> list[Result]:
    web: Namespace = store.namespace(
        "bench", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12)
    )
    data = {"user": 42, "cart": [{"sku": "A-1", "qty": 2}], "flags": {"beta": True}}
    pool = [s.id for s in await asyncio.gather(*(web.create(data=data) for _ in range(1000)))]
    created: list[str] = []

    async def create(i: int) -> None:
        created.append((await web.create(subject=f"u{i % 100}", data=data)).id)

    async def touch(i: int) -> None:
        await web.touch(pool[i % len(pool)])

    async def update(i: int) -> None:
        await web.update(pool[i % len(pool)], data={**data, "n": i})

    async def consume(i: int) -> None:
        await web.consume(pool[i % len(pool)], "searches", amount=1, limit=1 << 40)

    measured = await measure(
        {"create": create, "touch": touch, "update": update, "consume": consume}, n, concurrencies
    )
    results = [Result(name, op, tasks, *speed) for (op, tasks), speed in measured.items()]
    for start in range(0, len(created), 500):
        await asyncio.gather(*(web.delete(s) for s in created[start : start + 500]))
    await asyncio.gather(*(web.delete(s) for s in pool))
    return results


#: a sealing measurement alternates plain and sealed this many times (slices of its ops)
SEALING_SLICES = 10


async def bench_sealing(url: str, n: int, concurrencies: list[int]) -> dict[Key, Sealing]:
    """ops/s of touch and update on a store without encryption keys and on one with them
    (two stores on `url` at once, each with its namespace), alternating in slices of n/10
    ops, each side first in turn: a drift of the VM's speed (neighbours come and go) then
    weighs on both sides alike. {(op, tasks): (plain, sealed, median ratio of the slices)}."""
    data = {"user": 42, "cart": [{"sku": "A-1", "qty": 2}], "flags": {"beta": True}}
    metadata = {"ua": "Mozilla/5.0 (X11; Linux x86_64)", "ip": "203.0.113.0"}
    stores = {
        False: await sessionary.connect(url),
        True: await sessionary.connect(url, encryption_keys=[ENCRYPTION_KEY]),
    }
    ops: dict[bool, dict[str, Op]] = {}
    pools: dict[bool, tuple[Namespace, list[str]]] = {}
    try:
        for sealed, store in stores.items():
            web = store.namespace(
                "bench-sealed" if sealed else "bench-plain",
                idle_ttl=timedelta(minutes=30),
                absolute_ttl=timedelta(hours=12),
            )
            made = await asyncio.gather(
                *(web.create(data=data, metadata=metadata) for _ in range(1000))
            )
            pool = [s.id for s in made]
            pools[sealed] = (web, pool)

            async def touch(i: int, web: Namespace = web, pool: list[str] = pool) -> None:
                await web.touch(pool[i % len(pool)])

            async def update(i: int, web: Namespace = web, pool: list[str] = pool) -> None:
                await web.update(pool[i % len(pool)], data={**data, "n": i})

            ops[sealed] = {"touch": touch, "update": update}
        out: dict[Key, Sealing] = {}
        per_slice = max(1, n // SEALING_SLICES)
        for tasks in concurrencies:
            for op in ("touch", "update"):
                for sealed in (False, True):
                    await timed(ops[sealed][op], min(n // 10, 1000), tasks)
                plain, sealed_speeds, ratios = [], [], []
                for turn in range(SEALING_SLICES):
                    speeds = {}
                    for sealed in (True, False) if turn % 2 else (False, True):
                        speeds[sealed] = (await timed(ops[sealed][op], per_slice, tasks)).ops
                    plain.append(speeds[False])
                    sealed_speeds.append(speeds[True])
                    ratios.append(speeds[True] / speeds[False])
                out[(op, tasks)] = Sealing(
                    statistics.median(plain),
                    statistics.median(sealed_speeds),
                    statistics.median(ratios),
                )
        return out
    finally:
        for web, pool in pools.values():
            await asyncio.gather(*(web.delete(s) for s in pool))
        for store in stores.values():
            await store.close()


async def bench_raw_redis(n: int, concurrencies: list[int]) -> dict[Key, Speed]:
    """The same commands as sessionary's scripts, one pipeline per operation, no checks."""
    client = Redis.from_url(REDIS_URL, protocol=2, max_connections=64)
    tag = f"{PREFIX}raw:{{bench:00}}"
    keys = [f"{tag}:s:{i}" for i in range(1000)]
    expiry, subjects = f"{tag}:x", f"{tag}:u"
    blob = b'{"user":42,"cart":[{"sku":"A-1","qty":2}],"flags":{"beta":true}}'
    for key in keys:
        await client.hset(key, mapping={"c": 1, "l": 1, "e": 2, "v": 1, "d": blob, "m": b"{}"})

    async def touch(i: int) -> None:  # HMGET, HSET, PEXPIRE, ZADD, PTTL, HGETALL
        key = keys[i % len(keys)]
        async with client.pipeline(transaction=False) as pipe:
            pipe.hmget(key, "c", "e", "s").hset(key, mapping={"l": i, "e": i + 1})
            pipe.pexpire(key, 3_600_000).zadd(expiry, {key: i}).pttl(expiry).hgetall(key)
            await pipe.execute()

    async def update(i: int) -> None:  # HMGET, HSET d, HINCRBY v, HSET l e, PEXPIRE, ZADD, ...
        key = keys[i % len(keys)]
        async with client.pipeline(transaction=False) as pipe:
            pipe.hmget(key, "c", "e", "v", "s").hset(key, "d", blob).hincrby(key, "v", 1)
            pipe.hset(key, mapping={"l": i, "e": i + 1}).pexpire(key, 3_600_000)
            pipe.zadd(expiry, {key: i}).pttl(expiry).hgetall(key)
            await pipe.execute()

    async def consume(i: int) -> None:  # HMGET, HINCRBY
        key = keys[i % len(keys)]
        async with client.pipeline(transaction=False) as pipe:
            pipe.hmget(key, "e", "k:searches").hincrby(key, "k:searches", 1)
            await pipe.execute()

    async def create(i: int) -> None:  # EXISTS, HSET, PEXPIRE, ZADD, PTTL, ZADD subject
        key = f"{tag}:s:new{i}"
        async with client.pipeline(transaction=False) as pipe:
            pipe.exists(key).hset(
                key, mapping={"c": i, "l": i, "e": i, "v": 1, "d": blob, "m": b"{}", "s": b"u"}
            )
            pipe.pexpire(key, 3_600_000).zadd(expiry, {key: i}).pttl(expiry)
            pipe.zadd(subjects, {f"u\0{key}": 0})
            await pipe.execute()

    try:
        return await measure(
            {"create": create, "touch": touch, "update": update, "consume": consume},
            n,
            concurrencies,
        )
    finally:
        async for key in client.scan_iter(match=f"{PREFIX}*", count=1000):
            await client.delete(key)
        await client.aclose()


#: the SQLite store's pragmas (`SQLiteBackend` with its defaults)
SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout = 5000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA temp_store = MEMORY",
)


async def bench_bare_sqlite(path: Path, n: int) -> dict[str, float]:
    """ops/s of a bare `sqlite3` loop running the store's own statement for each operation,
    each in its own `BEGIN IMMEDIATE` ... `COMMIT` (as the store commits one operation at a
    time), on a file the store made (its schema and 1000 of its sessions) and opened with its
    pragmas. Nothing else: no event loop hand-off, no encoding of data (the blob is ready)."""
    store = await sessionary.connect(f"sqlite:///{path}")
    try:
        web = store.namespace(
            "bench", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12)
        )
        data = {"user": 42, "cart": [{"sku": "A-1", "qty": 2}], "flags": {"beta": True}}
        pool = [s.id for s in await asyncio.gather(*(web.create(data=data) for _ in range(1000)))]
    finally:
        await store.close()
    blob = b'{"user":42,"cart":[{"sku":"A-1","qty":2}],"flags":{"beta":true},"n":1}'
    idle, absolute = 30 * 60_000, 12 * 3_600_000
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in SQLITE_PRAGMAS:
        db.execute(pragma)

    def run(sql: str, args: Callable[[int, int], tuple[object, ...]]) -> float:
        def once(i: int) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute(sql, args(i, time.time_ns() // 1_000_000)).fetchone()
            db.execute("COMMIT")

        for i in range(min(n // 10, 1000)):
            once(i)
        started = time.perf_counter()
        for i in range(n):
            once(i)
        return n / (time.perf_counter() - started)

    def session(i: int) -> str:
        return pool[i % len(pool)]

    try:
        return {
            "create": run(
                _INSERT,
                lambda i, now: (
                    "bench",
                    f"new{i}-{now}",
                    f"u{i % 100}",
                    now,
                    now,
                    now + idle,
                    1,
                    blob,
                    b"{}",
                    None,
                    None,
                ),
            ),
            "touch": run(_TOUCH, lambda i, now: (now, idle, absolute, "bench", session(i))),
            "update": run(
                _UPDATE,
                lambda i, now: (
                    now,
                    idle,
                    absolute,
                    "bench",
                    session(i),
                    blob,
                    None,
                    False,
                    None,
                    None,
                    None,
                    True,
                    None,
                    None,
                    True,
                ),
            ),
            "consume": run(
                _CHARGE, lambda i, now: ("bench", session(i), now, '$."searches"', 1, 1 << 40)
            ),
        }
    finally:
        db.close()


async def bench_touch_overhead(n: int, concurrencies: list[int]) -> dict[int, tuple[float, float]]:
    """sessionary's touch against the same Lua script called bare through redis-py."""
    store = await sessionary.connect(f"{REDIS_URL}?prefix={PREFIX}")
    backend = store.backend
    assert isinstance(backend, RedisBackend)
    web = store.namespace("bench", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12))
    session = await web.create(data={"user": 42, "cart": [{"sku": "A-1", "qty": 2}]})
    keys = backend.shard_keys(web.name, ids.shard_of(session.id))
    script = Scripts().touch
    await web.touch(session.id)  # loads the script

    async def ours(i: int) -> None:
        await web.touch(session.id)

    async def bare(i: int) -> object:
        return await backend.client.evalsha(
            script.sha,
            4,  # the session, its shard's expiry and subject indexes, its log (touch.lua)
            keys.session + session.id,
            keys.expiry,
            keys.subjects,
            keys.log + session.id,
            session.id,
            store.clock.now_ms(),
            "1800000",
            "43200000",
            backend.grace,
        )

    try:
        if not await bare(0):  # a script called with keys it does not expect does less work
            raise RuntimeError("the bare touch script found no session: its keys are wrong")
        measured = await measure({"ours": ours, "bare": bare}, n, concurrencies)
        return {c: (measured[("ours", c)].ops, measured[("bare", c)].ops) for c in concurrencies}
    finally:
        await web.delete(session.id)
        await store.close()


async def bench_sync_touch(url: str, n: int) -> tuple[float, float]:
    """ops/s of touch at one caller: the async API from a coroutine, then the blocking API
    from a thread of its own (as a WSGI worker calls it), each on its own store."""
    policy = {"idle_ttl": timedelta(minutes=30), "absolute_ttl": timedelta(hours=12)}
    store = await sessionary.connect(url)
    try:
        web = store.namespace("bench-sync", **policy)
        pool = [(await web.create(data={"user": 42})).id for _ in range(100)]

        async def touch(i: int) -> None:
            await web.touch(pool[i % len(pool)])

        await timed(touch, min(n // 10, 1000), 1)
        async_ops = (await timed(touch, n, 1)).ops
        for session_id in pool:
            await web.delete(session_id)
    finally:
        await store.close()

    def blocking() -> float:
        with connect_sync(url) as sync_store:
            sync_web = sync_store.namespace("bench-sync", **policy)
            sync_pool = [sync_web.create(data={"user": 42}).id for _ in range(100)]
            for i in range(min(n // 10, 1000)):
                sync_web.touch(sync_pool[i % len(sync_pool)])
            started = time.perf_counter()
            for i in range(n):
                sync_web.touch(sync_pool[i % len(sync_pool)])
            ops = n / (time.perf_counter() - started)
            for session_id in sync_pool:
                sync_web.delete(session_id)
            return ops

    return async_ops, await asyncio.to_thread(blocking)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=20_000, help="operations per measurement")
    parser.add_argument("--concurrency", default="1,32", help="tasks in flight, comma-separated")
    parser.add_argument("--backends", default="memory,sqlite,redis")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; each number is the median"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="CI size, seconds: 300 ops, tasks 1,8, one round"
    )
    args = parser.parse_args()
    if args.smoke:
        args.ops, args.concurrency, args.rounds = 300, "1,8", 1
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    backends = args.backends.split(",")
    console = Console()
    console.print(
        f"sessionary {sessionary.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, {args.ops} ops per measurement"
    )

    rounds: list[list[Result]] = []
    raw_rounds: list[dict[Key, Speed]] = []
    bare_rounds: list[dict[str, float]] = []
    sync_rounds: list[dict[str, tuple[float, float]]] = []
    sealing_rounds: list[dict[str, dict[Key, Sealing]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_number in range(args.rounds):  # interleaved: the VM's speed drifts
            urls = {
                "memory": "memory://",
                "sqlite": f"sqlite:///{Path(tmp) / f'bench{round_number}.db'}",
                "redis": f"{REDIS_URL}?prefix={PREFIX}",
            }
            found: list[Result] = []
            for name in backends:
                store = await sessionary.connect(urls[name])
                try:
                    found += await bench_store(name, store, args.ops, concurrencies)
                finally:
                    await store.close()
            rounds.append(found)
            if "redis" in backends:
                raw_rounds.append(await bench_raw_redis(args.ops, concurrencies))
            if "sqlite" in backends:
                bare = Path(tmp) / f"bare{round_number}.db"
                bare_rounds.append(await bench_bare_sqlite(bare, args.ops))
            sync_rounds.append(
                {name: await bench_sync_touch(urls[name], args.ops) for name in backends}
            )
            sealed = {
                name: await bench_sealing(urls[name], args.ops, concurrencies) for name in backends
            }
            sealing_rounds.append(sealed)
    results = [
        Result(
            first.backend,
            first.op,
            first.concurrency,
            statistics.median(r[i].ops_per_s for r in rounds),
            statistics.median(r[i].lag for r in rounds),
            statistics.median(r[i].hold for r in rounds),
        )
        for i, first in enumerate(rounds[0])
    ]
    for result in results:
        if result.backend == "redis":
            key = (result.op, result.concurrency)
            result.baseline = statistics.median(raw[key].ops for raw in raw_rounds)
        elif result.backend == "sqlite":
            result.baseline = statistics.median(bare[result.op] for bare in bare_rounds)

    table = Table(
        "backend",
        "op",
        "tasks",
        "ops/s",
        "baseline ops/s (redis: raw redis-py pipeline; sqlite: bare sqlite3 loop)",
        "ratio",
        "max loop lag ms",
        "max loop CPU per tick ms",
    )
    for r in results:
        table.add_row(
            r.backend,
            r.op,
            str(r.concurrency),
            f"{r.ops_per_s:,.0f}",
            "" if r.baseline is None else f"{r.baseline:,.0f}",
            "" if r.baseline is None else f"{r.ops_per_s / r.baseline:.2f}x",
            f"{r.lag * 1000:.2f}",
            f"{r.hold * 1000:.2f}",
        )
    console.print(
        "ops/s (medians of the rounds), the baseline's in the same rounds, and the longest the "
        "event loop was held during the measurement (a ticker asking to wake every 1 ms) and the "
        "most CPU time its thread spent from one tick to the next (medians of the rounds'):"
    )
    console.print(table)
    if "redis" in backends:
        overhead = Table(
            "tasks", "sessionary touch ops/s", "its Lua script through redis-py's client", "ratio"
        )
        for tasks, (ours, bare) in (await bench_touch_overhead(args.ops, concurrencies)).items():
            overhead.add_row(str(tasks), f"{ours:,.0f}", f"{bare:,.0f}", f"{ours / bare:.2f}x")
        console.print(
            "The store's touch against its own script sent through redis-py's client "
            "(the store adds validation and decoding; its batching saves redis-py's overhead):"
        )
        console.print(overhead)
    blocking = Table("backend", "async touch ops/s", "sync touch ops/s", "sync/async")
    for name in backends:
        async_ops = statistics.median(r[name][0] for r in sync_rounds)
        sync_ops = statistics.median(r[name][1] for r in sync_rounds)
        blocking.add_row(
            name, f"{async_ops:,.0f}", f"{sync_ops:,.0f}", f"{sync_ops / async_ops:.2f}x"
        )
    console.print(
        "The blocking API (connect_sync) against the async one, touch at one caller "
        "(each call a hand-off to the store's loop thread and back):"
    )
    console.print(blocking)
    sealing = Table("backend", "op", "tasks", "plain ops/s", "sealed ops/s", "sealed/plain")
    for name in backends:
        for op, tasks in sealing_rounds[0][name]:
            found = [r[name][(op, tasks)] for r in sealing_rounds]
            sealing.add_row(
                name,
                op,
                str(tasks),
                f"{statistics.median(f.plain for f in found):,.0f}",
                f"{statistics.median(f.sealed for f in found):,.0f}",
                f"{statistics.median(f.ratio for f in found):.2f}x",
            )
    console.print(
        "Encryption at rest (data and metadata sealed with AES-256-GCM) against none, "
        "touch and update, alternating in slices (the ratio: the median of theirs; "
        "target: sealed/plain >= 0.85x):"
    )
    console.print(sealing)


if __name__ == "__main__":
    random.seed(0)
    asyncio.run(main())
