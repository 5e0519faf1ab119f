"""What handing a batch's results out a turn's worth at a time costs small operations.

    python benchmarks/handoff.py [--ops 10000] [--tasks 32] [--rounds 5] [--backends sqlite,redis]
                                 [--smoke]

`sessionary.backends.handoff` wakes the callers of one SQLite group commit or one Redis pipeline
in groups, one group per turn of the event loop, sized by what a turn took, so that heavy next
steps (a page of events to send) leave the loop to other requests (benchmarks/edge.py measures
that side). This measures the other side: `--tasks` tasks touching one session, ops/s, under
three hand-outs set on the same store in interleaved rounds (each number the median):

* adaptive: as shipped (groups double while a turn stays under 2 ms, halve past it);
* all at once: every caller of a batch woken in one turn (the baseline: what came before);
* four per turn: a fixed small group (the first version of the hand-out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta

from rich.console import Console
from rich.table import Table

import sessionary
from sessionary import Namespace
from sessionary.backends import handoff

REDIS_URL = os.environ.get("REDIS_BENCH_URL", "redis://127.0.0.1:6379/9")
UNBOUNDED = 1 << 30
#: hand-out -> (LEAST, MOST, START)
MODES = {
    "adaptive": (handoff.LEAST, handoff.MOST, handoff.START),
    "all at once": (UNBOUNDED, UNBOUNDED, UNBOUNDED),
    "four per turn": (4, 4, 4),
}


def use(mode: str) -> None:
    handoff.LEAST, handoff.MOST, handoff.START = MODES[mode]
    for handout in handoff._HANDOUTS.values():  # the size a loop learnt belongs to the last mode
        handout.size = handoff.START


async def touches(web: Namespace, session_id: str, ops: int, tasks: int) -> float:
    async def worker() -> None:
        for _ in range(ops // tasks):
            await web.touch(session_id)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return (ops // tasks * tasks) / (time.perf_counter() - started)


async def measure(url: str, ops: int, tasks: int, rounds: int) -> dict[str, float]:
    store = await sessionary.connect(url)
    try:
        web = store.namespace("bench", idle_ttl=timedelta(hours=1))
        session = await web.create(data={"cart": [1, 2, 3]})
        await touches(web, session.id, max(ops // 5, tasks), tasks)  # warm up
        found: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(rounds):
            for mode in MODES:
                use(mode)
                found[mode].append(await touches(web, session.id, ops, tasks))
        await web.delete(session.id)
    finally:
        use("adaptive")
        await store.close()
    return {mode: statistics.median(values) for mode, values in found.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=10_000, help="touches per measurement")
    parser.add_argument("--tasks", type=int, default=32, help="tasks in flight")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--backends", default="sqlite,redis")
    parser.add_argument("--smoke", action="store_true", help="CI size: 500 touches, one round")
    args = parser.parse_args()
    if args.smoke:
        args.ops, args.rounds = 500, 1
    table = Table(title=f"touch, {args.tasks} tasks in flight, ops/s (median of {args.rounds})")
    for column in ("backend", *MODES, "adaptive / all at once"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    with tempfile.TemporaryDirectory() as directory:
        for backend in args.backends.split(","):
            url = (
                f"sqlite:///{directory}/handoff.db"
                if backend == "sqlite"
                else f"{REDIS_URL}?prefix=bench:handoff:{os.getpid()}:"
            )
            found = await measure(url, args.ops, args.tasks, args.rounds)
            table.add_row(
                backend,
                *(f"{found[mode]:,.0f}" for mode in MODES),
                f"{found['adaptive'] / found['all at once']:.2f}x",
            )
    print(f"sessionary {sessionary.__version__}, Python {sys.version.split()[0]}")
    Console(width=200).print(table)


if __name__ == "__main__":
    asyncio.run(main())
