"""What a session limit costs a login: creates with a subject, per second, in a namespace with
`max_sessions_per_subject=3, on_max_sessions="evict_oldest"` against the same namespace
without a limit.

    python benchmarks/session_limits.py [--logins 20000] [--subjects 1000] [--tasks 32]
                                        [--rounds 3] [--backends memory,sqlite,redis] [--smoke]

Every subject holds 3 live sessions before the clock starts, so in the limited namespace each
login is the steady state the limit is for: it reads the subject's sessions, evicts the least
recently active one and stores the new one, in one atomic step (one transaction on SQLite,
one script on Redis, where the namespace lives in one hash slot). The baseline only stores.
`--tasks` logins are in flight at once, each of the next subject in turn. Both namespaces
share a store, measured in interleaved rounds (each number the median).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta

from rich.console import Console
from rich.table import Table

import sessionary
from sessionary import Namespace, Store
from shared import forget_redis_keys

REDIS_URL = os.environ.get("REDIS_BENCH_URL", "redis://127.0.0.1:6379/9")
PREFIX = f"bench:limits:{os.getpid()}:"
LIMIT = 3
HOUR = timedelta(hours=1)


def namespaces(store: Store) -> dict[str, Namespace]:
    """The baseline and the limited namespace, alike but for the limit."""
    return {
        "baseline": store.namespace("baseline", idle_ttl=HOUR),
        "evict_oldest": store.namespace(
            "limited", idle_ttl=HOUR, max_sessions_per_subject=LIMIT, on_max_sessions="evict_oldest"
        ),
    }


async def logins(ns: Namespace, subjects: list[str], how_many: int, tasks: int) -> float:
    """Logins per second: `how_many` creates with a subject, `tasks` at a time."""
    turn = itertools.cycle(subjects)

    async def worker(count: int) -> None:
        for _ in range(count):
            await ns.create(subject=next(turn))

    started = time.perf_counter()
    await asyncio.gather(*(worker(how_many // tasks) for _ in range(tasks)))
    return how_many // tasks * tasks / (time.perf_counter() - started)


async def measure(url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    store = await sessionary.connect(url)
    try:
        spaces = namespaces(store)
        subjects = [f"user-{i}" for i in range(args.subjects)]
        for ns in spaces.values():  # every subject at its limit: each login evicts one
            await logins(ns, subjects, LIMIT * len(subjects), args.tasks)
        found: dict[str, list[float]] = {name: [] for name in spaces}
        for _ in range(args.rounds):  # interleaved: the machine's speed drifts
            for name, ns in spaces.items():
                found[name].append(await logins(ns, subjects, args.logins, args.tasks))
        return found
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=20_000, help="logins per measurement")
    parser.add_argument("--subjects", type=int, default=1000, help="subjects logging in")
    parser.add_argument("--tasks", type=int, default=32, help="logins in flight")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--backends", default="memory,sqlite,redis")
    parser.add_argument(
        "--smoke", action="store_true", help="CI size: 400 logins of 50 subjects, one round"
    )
    args = parser.parse_args()
    if args.smoke:
        args.logins, args.subjects, args.rounds = 400, 50, 1
    table = Table(
        title=f"logins/s, {args.tasks} in flight, {args.subjects} subjects at their limit of "
        f"{LIMIT} (median of {args.rounds})"
    )
    for column in ("backend", "baseline", f"evict_oldest ({LIMIT})", "limited / baseline"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    with tempfile.TemporaryDirectory() as directory:
        for backend in args.backends.split(","):
            url = {
                "memory": "memory://",
                "sqlite": f"sqlite:///{directory}/limits.db",
                "redis": f"{REDIS_URL}?prefix={PREFIX}",
            }[backend]
            try:
                found = await measure(url, args)
            finally:
                if backend == "redis":
                    await forget_redis_keys(REDIS_URL, PREFIX)
            baseline = statistics.median(found["baseline"])
            limited = statistics.median(found["evict_oldest"])
            table.add_row(
                backend, f"{baseline:,.0f}", f"{limited:,.0f}", f"{limited / baseline:.2f}x"
            )
    print(
        f"sessionary {sessionary.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, {args.logins} logins per measurement"
    )
    Console(width=200).print(table)


if __name__ == "__main__":
    asyncio.run(main())
