"""Handing a batch's results back to the tasks waiting for them, a turn's worth at a time.

A backend that answers many callers at once (SQLite's group commit, a Redis pipeline) would
otherwise wake every one of them in one turn of the event loop, and all their next steps would
run before anything else: 200 event streams each writing a 64 KiB page held a request arriving
meanwhile (a /healthz) for 100 ms. So results are handed out in groups, one group per turn, and
the group's size follows what the previous group's steps cost: it doubles (up to `MOST`) while
a turn stays under `TURN_S`, and halves (down to `LEAST`) when one runs over; the next batch
starts from the size the last one reached, but at most `START`, which bounds the one turn that
learns a change of workload. The hand-out is the loop's, not the batch's: batches that land in
the same turn (one SQLite thread's several commits, several pipelines' replies) queue up
behind one another in one hand-out, so no turn wakes more than a group. Callers whose next
step is small (a session read, a counter charge) are soon woken a whole batch at a time, at
the throughput of waking them all at once; heavy ones (a page of events to encode and send) a
few per turn, so other work gets the loop between them (benchmarks/edge.py: a /healthz p99
of 8-30 ms beside 200 replaying streams, against 60-130 ms when all were woken at once).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any

#: the least and the most a group holds, and the most a batch's first group holds
LEAST = 4
MOST = 1024
START = 32
#: a turn (the previous group's steps and whatever else the loop ran) longer than this halves
#: the next group; a shorter one doubles it
TURN_S = 0.002

Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]  # a future, its result or error


class _Handout:
    """The outcomes waiting to be handed out on one loop, and the group size it learnt."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: deque[Outcome] = deque()
        self.size = START
        self.busy = False  # a group is out and the next one is scheduled

    def add(self, outcomes: Iterable[Outcome]) -> None:
        self.waiting.extend(outcomes)
        if not self.busy:
            self.size = min(self.size, START)
            self.step(None)

    def step(self, since: float | None) -> None:
        if since is not None:  # the previous group's steps ran between then and now
            took = time.perf_counter() - since
            self.size = min(MOST, self.size * 2) if took < TURN_S else max(LEAST, self.size // 2)
        waiting, settled = self.waiting, 0
        while waiting and settled < self.size:
            future, result, error = waiting.popleft()
            if future.cancelled():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
            settled += 1
        self.busy = bool(waiting)
        if self.busy:
            self.loop.call_soon(self.step, time.perf_counter())


_HANDOUTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Handout] = (
    weakref.WeakKeyDictionary()
)


def settle(outcomes: Iterable[Outcome]) -> None:
    """Settle these futures (a cancelled one is skipped), a group per turn of the loop behind
    whatever this loop still has to hand out. Call it on the futures' loop."""
    loop = asyncio.get_running_loop()
    handout = _HANDOUTS.get(loop)
    if handout is None:
        handout = _HANDOUTS[loop] = _Handout(loop)
    handout.add(outcomes)
