"""The reaper: expires due sessions and sweeps finished counters, once or on a schedule.

Any number of reapers may run at once, in any number of processes: each expired session is
claimed by exactly one of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from sessionary.counters import Counters
from sessionary.outage import Backoff, JobStatus, OutageLog, repeat
from sessionary.store import Namespace

log = logging.getLogger("sessionary.reaper")


@dataclass
class Sweep:
    """What one pass found: expired sessions per namespace, swept counters per group."""

    expired: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.expired.values()) + sum(self.counters.values())


async def sweep(
    namespaces: Iterable[Namespace],
    groups: Iterable[Counters] = (),
    *,
    batch: int = 1000,
    progress: Callable[[str, int], None] | None = None,
) -> Sweep:
    """One pass: reap every namespace and sweep every group until nothing is due.
    `progress(name, n)` hears each batch."""
    result = Sweep()
    for namespace in namespaces:
        total = 0
        while True:
            reaped = await namespace.reap(limit=batch)
            total += len(reaped)
            if progress is not None and reaped:
                progress(namespace.name, len(reaped))
            if len(reaped) < batch:
                break
        result.expired[namespace.name] = total
    for group in groups:
        total = 0
        while (swept := await group.sweep(batch)) > 0:
            total += swept
            if progress is not None:
                progress(group.group, swept)
            if swept < batch:
                break
        result.counters[group.group] = total
    return result


async def run_forever(
    namespaces: Iterable[Namespace],
    groups: Iterable[Counters] = (),
    *,
    every: timedelta,
    batch: int = 1000,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    backoff: Backoff | None = None,
    status: JobStatus | None = None,
) -> None:
    """Sweep every `every` until cancelled. While the store is unavailable, try again later
    and later (`backoff`: by default doubling from `every` up to a minute, jittered), with a
    warning when it fails and an info line when it works again, not one per try. Each
    sweep's outcome goes to `status` (and its outages are dated by `status.clock`)."""
    namespaces, groups = list(namespaces), list(groups)
    status = status or JobStatus("reaper")

    async def once() -> None:
        found = await sweep(namespaces, groups, batch=batch)
        if found.total:
            log.info("reaper: expired %s, swept counters %s", found.expired, found.counters)

    await repeat(
        once,
        every.total_seconds(),
        OutageLog(log, "reaper", settle=0, wall=status.clock),
        backoff=backoff,
        sleep=sleep,
        status=status,
    )
