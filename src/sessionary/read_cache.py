"""A read cache of sessions in front of a backend that reports which sessions change.

Opt-in (`Store(read_cache=N)`, or `read_cache=N` on the store's URL): the store keeps up to
N sessions (least recently used first out) as the backend last returned them, and a backend
offering `TracksSessions` (Redis: client-side caching, see
`sessionary.backends.redis.tracking`) reports every write to any of them, by any process,
this one included. A backend without it (memory, SQLite) gets no cache.

It serves `Namespace.touch`, the read at the start of a request, with touches coalesced:

* a session read less than `coalesce_ms(idle_ttl)` (min(idle ttl / 20, 5 s)) after its last
  recorded activity is returned without a write: from the cache (no round trip), or, on a
  miss, by a plain read (one round trip, which fills the cache). So the stored last activity,
  and the idle expiry that slides from it, lag the true last request by less than that
  window: the idle expiry is never shortened by more than min(idle ttl / 20, 5 s);
* an older one is touched as without a cache (a write, reported back, so not cached).

Staleness: before a cached read is served, every invalidation already on the feed's socket
is read (`SessionTracking.drain`, non-blocking); Redis queues the invalidation of a write
in the same event-loop pass that acknowledges it to its writer. So a cached read never
misses a write acknowledged (to any process) before that read started, up to the time
Redis takes between writing two sockets of one pass; with this process's own writes
(`update`, `rotate`, `delete`) not even that: they drop the entry themselves. A read that
fills the cache is not kept if an invalidation of the session (or a flush) arrived while it
was in flight. The feed down (connection lost): the cache is emptied and bypassed (every
read a touch, as without a cache) until the feed is back on a new connection. A stale read
can never lose an update: writes stay version-checked in the store (`VersionConflict`).

Only `touch` is cached: `get` (a peek, e.g. the merge after a conflict) always asks the
backend.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable

from sessionary.contract import Backend, Lifetime, Record, SessionTracking, TracksSessions

#: the longest a touch is coalesced, whatever the idle ttl
COALESCE_MAX_MS = 5_000
#: a touch is coalesced within this fraction of the idle ttl
COALESCE_FRACTION = 20
DEFAULT_SIZE = 10_000

Key = tuple[str, str]  # (namespace, session id)


def coalesce_ms(idle_ms: int | None) -> int:
    """How long after a session's last recorded activity a read skips the touch."""
    if idle_ms is None:
        return COALESCE_MAX_MS
    return min(idle_ms // COALESCE_FRACTION, COALESCE_MAX_MS)


class ReadCache:
    """See the module docstring. Made by `over`, which binds it to its backend's feed."""

    #: the backend's feed of changed sessions
    tracking: SessionTracking

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError("a read cache holds at least 1 session")
        self.size = size
        self._entries: OrderedDict[Key, Record] = OrderedDict()
        #: per session with reads in flight: [reads, invalidations seen since the first]
        self._pending: dict[Key, list[int]] = {}
        #: bumped by each flush (and feed loss): a read in flight across one is not kept
        self._generation = 0
        #: the event loop the feed runs in (the first to touch): a store used from other
        #: loops too (a sync engine's threads) reads uncached there
        self._loop: asyncio.AbstractEventLoop | None = None
        #: served from the cache / read with a round trip (for tests and metrics)
        self.hits = 0
        self.misses = 0

    @classmethod
    def over(cls, backend: object, size: int = DEFAULT_SIZE) -> ReadCache | None:
        """A cache of `size` sessions over `backend`; None if it cannot report changes."""
        if not isinstance(backend, TracksSessions):
            return None
        cache = cls(size)
        tracking = backend.track_sessions(cache.invalidated)
        if tracking is None:
            return None
        cache.tracking = tracking
        return cache

    def __len__(self) -> int:
        return len(self._entries)

    def invalidated(self, keys: Iterable[Key] | None) -> None:
        """The feed's report: these sessions changed (None: any may have)."""
        if keys is None:
            self._entries.clear()
            self._generation += 1
            return
        for key in keys:
            self.forget(key)

    def forget(self, key: Key) -> None:
        """Drop `key` (a write of this process to it was acknowledged, or one was reported)."""
        self._entries.pop(key, None)
        pending = self._pending.get(key)
        if pending is not None:
            pending[1] += 1

    async def touch(
        self, backend: Backend, ns: str, session_id: str, now: int, lifetime: Lifetime
    ) -> Record | None:
        """`backend.touch`, coalesced and served from the cache when it can be (see the
        module docstring)."""
        tracking, loop = self.tracking, asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            await tracking.start()
        if self._loop is not loop:
            return await backend.touch(ns, session_id, now, lifetime)
        tracking.drain()  # every invalidation already sent (nothing when the feed is down)
        if not tracking.active:
            return await backend.touch(ns, session_id, now, lifetime)
        key = (ns, session_id)
        cached = self._entries.get(key)
        if cached is not None and cached.expires_at > now:
            if not self._recent(cached, now, lifetime):
                # an entry is what is stored (any write since was reported and dropped it):
                # its last activity is old, so this read is a touch, with no read before it
                self.misses += 1
                return await backend.touch(ns, session_id, now, lifetime)
            self._entries.move_to_end(key)
            self.hits += 1
            return cached.snapshot()
        self.misses += 1
        generation = self._generation
        pending = self._pending.setdefault(key, [0, 0])
        pending[0] += 1
        seen = pending[1]
        try:
            record = await backend.get(ns, session_id, now)
            if record is None:
                return None
            if not self._recent(record, now, lifetime):
                return await backend.touch(ns, session_id, now, lifetime)
            tracking.drain()
            if tracking.active and generation == self._generation and pending[1] == seen:
                self._entries[key] = record.snapshot()
                self._entries.move_to_end(key)
                if len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            return record
        finally:
            pending[0] -= 1
            if pending[0] == 0:
                del self._pending[key]

    @staticmethod
    def _recent(record: Record, now: int, lifetime: Lifetime) -> bool:
        own = record.lifetime or lifetime
        return now - record.last_seen_at < coalesce_ms(own.idle_ms)

    async def close(self) -> None:
        await self.tracking.close()
        self._entries.clear()
