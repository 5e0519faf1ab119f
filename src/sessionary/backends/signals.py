"""In-process wake-ups for followers of an event log and waiters on a work queue (memory
and SQLite backends).

A follower takes the log's current signal *before* it reads, so an append landing between
its read and its wait still wakes it. `notify_all` wakes every follower and waiter (to read
again): the SQLite backend's one poller calls it when another process changed the file.
A queue's signal is keyed by `QueueKey`, which never equals a log's `(ns, session_id)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from sessionary.contract import LogEntry, LogSlice


@dataclass(frozen=True, slots=True)
class QueueKey:
    """The signal of the work queue `name`, notified on every enqueue to it."""

    name: str


class LogSignals:
    def __init__(self) -> None:
        self._events: dict[Hashable, asyncio.Event] = {}

    def signal(self, key: Hashable) -> asyncio.Event:
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = asyncio.Event()
        return event

    def notify(self, key: Hashable) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    async def wait_log(
        self, key: Hashable, read: Callable[[], Awaitable[LogSlice | None]], timeout_ms: int
    ) -> list[LogEntry] | None:
        """Read until there are entries, waking on `notify(key)` or `notify_all()`, or give
        up with [] after `timeout_ms`."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            event = self.signal(key)
            found = await read()
            if found is None or found.entries:
                return None if found is None else found.entries
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives as the event is set, and a cancelled follower would then wait on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await event.wait()

    async def wait(self, key: Hashable, timeout_ms: int) -> None:
        """Return on the next `notify(key)` or `notify_all()`, or after `timeout_ms`."""
        event = self.signal(key)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_ms / 1000):
                await event.wait()
