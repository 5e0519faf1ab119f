"""Event logs: every session can carry an append-only log of events.

    cursor = await ns.append(session_id, "chunk", {"text": "Hel"}, producer="worker-1", seq=1)
    page = await ns.read(session_id, after=cursor)          # exclusive of `after`
    async for item in ns.follow(session_id, after=cursor):  # replay, then wait; no gap, no dup
        ...                                                 # a LogEvent, or a LogReset

A cursor names one event of one log: `"<seq>-<tag>"`, where seq counts the log's events from 1
and compares as a number, and the tag binds it to its log (a cursor of another log, one the log
never issued, or a malformed one raises `InvalidCursor`, and nothing is replayed). A reader whose
position was trimmed away gets a `LogReset` first, never a silent jump.

Followers in one process share one wait per log (`LogHub`): however many follow a log, the
store is asked once for what is new, and the entries are handed to each from memory. The hub
keeps a bounded tail of each log (2,048 entries and 1 MiB of data); a follower further behind
reads the store, a page of at most `store.FOLLOW_PAGE_BYTES` at a time.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from sessionary.clock import Clock
from sessionary.codec import MAX_SAFE_INT, check_int, decode_value
from sessionary.contract import Backend, LogEntry
from sessionary.errors import InvalidCursor, ValidationError
from sessionary.outage import unless_cancelled

#: a cursor as a regular expression (what an OpenAPI document states as a `pattern`)
CURSOR_PATTERN = r"(\d{1,18})-([0-9a-f]{8})"
_CURSOR_RE = re.compile(CURSOR_PATTERN)
_TYPE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}")
_PRODUCER_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


@functools.lru_cache(maxsize=4096)  # every follower of a log asks for the same cursors
def _tag(namespace: str, session_id: str, seq: int) -> str:
    return hashlib.blake2b(f"{namespace}\0{session_id}\0{seq}".encode(), digest_size=4).hexdigest()


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """The position of one event in one session's log; orders by `seq`."""

    seq: int
    tag: str = field(compare=False)

    def __str__(self) -> str:
        return f"{self.seq}-{self.tag}"

    @classmethod
    def of(cls, namespace: str, session_id: str, seq: int) -> Cursor:
        return cls(seq, _tag(namespace, session_id, seq))

    @classmethod
    def parse(cls, text: object, namespace: str, session_id: str) -> Cursor:
        """A cursor this log issued, or `InvalidCursor`."""
        if isinstance(text, Cursor):
            text = str(text)
        if not isinstance(text, str) or not (match := _CURSOR_RE.fullmatch(text.strip())):
            raise InvalidCursor(f"a cursor looks like '42-1a2b3c4d', not {str(text)[:40]!r}")
        seq = int(match.group(1))
        if seq < 1 or match.group(2) != _tag(namespace, session_id, seq):
            raise InvalidCursor("this cursor belongs to another log")
        return cls(seq, match.group(2))


@dataclass(frozen=True, slots=True)
class Event:
    """An event to append. `producer` and `seq` make a retried append harmless: an event whose
    seq is not above the last stored for its producer is not stored again. A `final` event ends
    the log."""

    type: str
    data: Any = None
    producer: str | None = None
    seq: int | None = None
    final: bool = False


@dataclass(frozen=True, slots=True)
class LogEvent:
    """A stored event as a reader sees it. `ts` is when it was appended (ms, UTC)."""

    cursor: Cursor
    type: str
    data: Any
    ts: int
    final: bool

    @classmethod
    def of(cls, namespace: str, session_id: str, entry: LogEntry) -> LogEvent:
        return cls(
            Cursor.of(namespace, session_id, entry.seq),
            entry.type,
            decode_value(entry.data),
            entry.ts,
            entry.final,
        )


@dataclass(frozen=True, slots=True)
class LogReset:
    """Events the reader had not seen were trimmed away: what follows starts at `first`. The
    reader should rebuild its state (from the owner of the log) instead of assuming
    continuity. `last` and `closed` describe the log now."""

    first: Cursor | None
    last: Cursor | None
    closed: bool


@dataclass(frozen=True, slots=True)
class LogPage:
    """Events read, a `LogReset` if some after the reader's position were trimmed away, and
    the log now: its `last` cursor, when that event was appended, whether it is `closed`."""

    events: list[LogEvent]
    reset: LogReset | None
    last: Cursor | None
    closed: bool
    last_ts: int | None = None


def check_type(value: object) -> str:
    if not isinstance(value, str) or not _TYPE_RE.fullmatch(value):
        raise ValidationError(f"an event type must match {_TYPE_RE.pattern}, not {value!r}")
    return value


def check_producer(producer: object, seq: object) -> None:
    if (producer is None) != (seq is None):
        raise ValidationError("an event has both a producer and a seq, or neither")
    if producer is not None and (
        not isinstance(producer, str) or not _PRODUCER_RE.fullmatch(producer)
    ):
        raise ValidationError(f"a producer must match {_PRODUCER_RE.pattern}")
    if seq is not None:  # compared in Redis's Lua doubles: exact up to MAX_SAFE_INT
        check_int("a producer's seq", seq, 1, MAX_SAFE_INT)


# -- the hub: one wait per log per process ------------------------------------------------------

#: what the hub keeps of a log for its followers: the newest entries, at most this many and
#: this much data (a follower behind them reads the store itself)
_BUFFER = 2048
_BUFFER_BYTES = 1 << 20


def _newest(buffer: deque[LogEntry], count: int) -> list[LogEntry]:
    """The last `count` entries of the buffer, oldest first. The buffer holds a contiguous
    run of seqs ending at the newest seen, so these are exactly the entries after
    `seen - count`: taken from the newest end, a follower one event behind pays for one
    entry, not for a scan of the whole buffer (which, with many followers of a busy log,
    cost more than everything else together)."""
    newest = list(islice(reversed(buffer), count))
    newest.reverse()
    return newest


@dataclass(slots=True)
class _Watch:
    seen: int  # the newest seq the watcher knows of
    buffer: deque[LogEntry] = field(default_factory=deque)
    size: int = 0  # the bytes of data the buffer holds
    # the followers waiting for news, each with its deadline (loop time); a wait is a bare
    # future, and one timer per watch serves every deadline: an asyncio.timeout per wait
    # cost more than the rest of handing an event to a follower
    waiters: dict[asyncio.Future[None], float] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    followers: int = 0
    gone: bool = False  # the session went away: followers should ask the store and end
    task: asyncio.Task[None] | None = None


def _keep(watch: _Watch, entries: list[LogEntry]) -> None:
    """Add `entries` (the next after `watch.seen`) to the buffer, dropping its oldest past
    `_BUFFER` entries or `_BUFFER_BYTES` of data (the newest entry always stays)."""
    buffer = watch.buffer
    buffer.extend(entries)
    watch.size += sum(len(entry.data) for entry in entries)
    while len(buffer) > 1 and (len(buffer) > _BUFFER or watch.size > _BUFFER_BYTES):
        watch.size -= len(buffer.popleft().data)
    watch.seen = entries[-1].seq


class LogHub:
    def __init__(self, backend: Backend, clock: Clock, wait_ms: int = 5000) -> None:
        self._backend = backend
        self._clock = clock
        self._wait_ms = wait_ms
        self._watches: dict[tuple[str, str], _Watch] = {}

    async def after(
        self, ns: str, session_id: str, after: int, timeout_s: float
    ) -> list[LogEntry] | None:
        """Entries with seq > `after` once the log has any: [] on timeout, None when the
        reader is behind what the hub keeps (it should read the store itself)."""
        key = (ns, session_id)
        loop = asyncio.get_running_loop()
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch(seen=after)
        watch.followers += 1
        try:
            if watch.task is None or watch.task.done():
                watch.task = loop.create_task(
                    self._watch(key, watch), name=f"sessionary-log-watch:{ns}"
                )
            deadline = loop.time() + timeout_s
            while True:
                if watch.gone:
                    return []
                if watch.seen > after:
                    buffer = watch.buffer
                    if not buffer or buffer[0].seq > after + 1:
                        return None
                    return _newest(buffer, watch.seen - after)
                if loop.time() >= deadline:
                    return []
                waiter: asyncio.Future[None] = loop.create_future()
                watch.waiters[waiter] = deadline
                if watch.timer is None or deadline < watch.timer.when():
                    self._arm(watch, deadline)
                try:
                    await waiter
                finally:
                    watch.waiters.pop(waiter, None)
        finally:
            watch.followers -= 1

    async def close(self) -> None:
        """End every watch; followers waiting are woken (to ask the store, and end)."""
        watches = list(self._watches.values())
        self._watches.clear()
        tasks = []
        for watch in watches:
            watch.gone = True
            self._wake(watch)
            self._stop(watch)
            if watch.task is not None:
                watch.task.cancel()
                tasks.append(watch.task)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, key: tuple[str, str], watch: _Watch) -> None:
        """Wait on the store for what is new, again and again, while anyone follows. A wait
        in flight is never cancelled when the last follower leaves (on Redis a cancelled
        blocking read costs its connection): the watch ends when it returns, so a follower
        that comes back for more meanwhile (one writing each event to a slow client before
        asking for the next) finds the wait already there."""
        ns, session_id = key
        while True:
            try:
                entries = await self._backend.wait_log(
                    ns, session_id, watch.seen, self._wait_ms, self._clock.now_ms()
                )
            except Exception:  # the store is down: followers time out and read for themselves
                unless_cancelled()
                entries = []
                if watch.followers > 0:
                    await asyncio.sleep(0.5)
            if entries is None:
                watch.gone = True
                self._wake(watch)
            elif entries:
                if entries[0].seq != watch.seen + 1:
                    watch.buffer.clear()  # a gap (trimmed): never hand out a broken run
                    watch.size = 0
                _keep(watch, entries)
                self._wake(watch)
            if watch.gone or watch.followers == 0:
                self._stop(watch)
                if self._watches.get(key) is watch:  # a new follower starts a new watch
                    del self._watches[key]
                return

    @staticmethod
    def _wake(watch: _Watch) -> None:
        waiters, watch.waiters = watch.waiters, {}
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _arm(self, watch: _Watch, when: float) -> None:
        if watch.timer is not None:
            watch.timer.cancel()
        watch.timer = asyncio.get_running_loop().call_at(when, self._expire, watch)

    def _expire(self, watch: _Watch) -> None:
        """The watch's timer: wake the followers whose wait is over, and wait for the next."""
        watch.timer = None
        now = asyncio.get_running_loop().time()
        following: float | None = None
        for waiter, deadline in watch.waiters.items():
            if waiter.done():
                continue
            if deadline <= now:
                waiter.set_result(None)  # it sees its deadline passed, and returns []
            elif following is None or deadline < following:
                following = deadline
        if following is not None:
            self._arm(watch, following)

    @staticmethod
    def _stop(watch: _Watch) -> None:
        if watch.timer is not None:
            watch.timer.cancel()
            watch.timer = None
