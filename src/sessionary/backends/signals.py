"""In-process wake-ups for followers of an event log (memory and SQLite backends).

A follower takes the log's current signal *before* it reads, so an append landing between
its read and its wait still wakes it. `notify_all` wakes every follower (to read again): the
SQLite backend's one poller calls it when another process changed the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable

from sessionary.contract import LogEntry, LogSlice


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
