"""Work queues: items handed to one consumer at a time, under a lease, on every backend.

A producer enqueues an item under an id of its choosing (an id already in the queue is
refused, so a retried enqueue is harmless); a consumer claims items for a lease, renews the
lease while it works, and acks an item when it is done. If the consumer dies, its lease lapses
and the next claim (by anyone) gets the item again, with `deliveries` one higher: every item
is worked on until one consumer acks it (at least once, never by two holders at one moment).

    jobs = store.queue("jobs")
    await jobs.enqueue("run-42", b'{"run": 42}')
    for item in await jobs.claim("worker-a:1234", lease=timedelta(seconds=30)):
        ...  # renew within the lease while working; stop if renew says False
        await jobs.ack(item.id, "worker-a:1234")
    await jobs.wait(timeout=timedelta(seconds=30))  # nothing claimed: until something comes

Leases run on the store's clock, never a server's. `wait` returns when an item may have
been enqueued, or at its timeout; lapsed leases do not wake it, so a worker claims again
at least once a lease. How each backend keeps a queue: docs/architecture.md.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, NamedTuple

from sessionary.clock import to_ms
from sessionary.codec import MAX_SAFE_INT, check_int
from sessionary.contract import WorkItem
from sessionary.errors import PayloadTooLarge, ValidationError

if TYPE_CHECKING:
    from sessionary.store import Store

__all__ = ["MAX_CLAIM", "MAX_LEASE", "MAX_WAIT", "QueueDepth", "WorkItem", "WorkQueue"]

#: the most items one claim hands out
MAX_CLAIM = 1000
#: the longest lease: a job that runs longer renews it
MAX_LEASE = timedelta(days=1)
#: the longest one `wait`: a worker waits again (and claims, so lapsed items are picked up)
MAX_WAIT = timedelta(hours=1)

_CONSUMER_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
_ITEM_ID_RE = re.compile(r"[^\x00-\x1f\x7f]{1,256}")


class QueueDepth(NamedTuple):
    """How many items a queue holds: `waiting` (never claimed, or claimed and lapsed: the
    next claim gets them) and `held` (under a lease that has not lapsed)."""

    waiting: int
    held: int


class WorkQueue:
    """One work queue. Get it from `Store.queue`, which checks its name."""

    def __init__(self, store: Store, name: str) -> None:
        self.name = name
        self.max_payload = store.max_payload
        self._backend = store.guarded
        self._clock = store.clock

    async def enqueue(self, item_id: str, payload: bytes) -> bool:
        """Add an item at the tail. False, and nothing changes, if an item with that id is
        in the queue (waiting or held): a producer's retry is not queued twice."""
        _check_item_id(item_id)
        if not isinstance(payload, bytes):
            raise ValidationError(f"a work item's payload is bytes, not {type(payload).__name__}")
        if len(payload) > self.max_payload:
            raise PayloadTooLarge(len(payload), self.max_payload, "queue item")
        return await self._backend.enqueue(self.name, item_id, payload, self._clock.now_ms())

    async def claim(self, consumer: str, lease: timedelta, limit: int = 1) -> list[WorkItem]:
        """Up to `limit` items for `consumer`, held for `lease`: first those whose holder's
        lease lapsed (soonest lapsed first), then waiting ones in enqueue order. [] when
        there is nothing to claim (then `wait`)."""
        _check_consumer(consumer)
        check_int("a claim's limit", limit, 1, MAX_CLAIM)
        now = self._clock.now_ms()
        lease_ms = _lease_ms(lease, now)
        return await self._backend.claim_work(self.name, consumer, now, lease_ms, limit)

    async def renew(self, item_id: str, consumer: str, lease: timedelta) -> bool:
        """Hold the item for `lease` from now. True only while `consumer` holds it (a lapsed
        lease renews if nobody claimed the item since); False: it went to another consumer
        or is gone, and the caller must stop working on it."""
        _check_item_id(item_id)
        _check_consumer(consumer)
        now = self._clock.now_ms()
        lease_ms = _lease_ms(lease, now)
        return await self._backend.renew_work(self.name, item_id, consumer, now, lease_ms)

    async def ack(self, item_id: str, consumer: str) -> bool:
        """Remove a finished item `consumer` holds. False, and nothing changes, if it does
        not hold it (another claimed it after this one's lease lapsed, or it is gone)."""
        _check_item_id(item_id)
        _check_consumer(consumer)
        return await self._backend.ack_work(self.name, item_id, consumer)

    async def depth(self) -> QueueDepth:
        """How many items wait and how many are held (see `QueueDepth`)."""
        waiting, held = await self._backend.queue_depth(self.name, self._clock.now_ms())
        return QueueDepth(waiting, held)

    async def wait(self, timeout: timedelta) -> None:  # noqa: ASYNC109 (see below)
        """Return when an item may have been enqueued since the call, or after `timeout`
        (at most `MAX_WAIT`). Costs a connection while it waits, nothing more. The backend
        keeps the timeout itself (Redis: the blocking read's own): cancelling the wait from
        outside, as `asyncio.timeout` would, is also fine but costs an interrupted read."""
        timeout_ms = _duration_ms("a wait's timeout", timeout, MAX_WAIT)
        await self._backend.wait_queue(self.name, timeout_ms)

    def __repr__(self) -> str:
        return f"WorkQueue({self.name!r})"


def _check_item_id(item_id: object) -> None:
    if not isinstance(item_id, str) or not _ITEM_ID_RE.fullmatch(item_id):
        raise ValidationError("a work item's id is 1 to 256 characters, none of them control")


def _check_consumer(consumer: object) -> None:
    if not isinstance(consumer, str) or not _CONSUMER_RE.fullmatch(consumer):
        raise ValidationError(f"a consumer {consumer!r} must match {_CONSUMER_RE.pattern}")


def _duration_ms(what: str, duration: object, longest: timedelta) -> int:
    """A duration of 1 ms to `longest`, in whole ms (a wait of 0 would block forever on
    Redis, a lease of 0 would lapse as it is granted)."""
    if not isinstance(duration, timedelta) or not timedelta(milliseconds=1) <= duration <= longest:
        raise ValidationError(f"{what} is a timedelta from 1 ms to {longest}")
    return to_ms(duration)


def _lease_ms(lease: object, now: int) -> int:
    """The lease in ms; it must end by `MAX_SAFE_INT`, where every backend (Redis scores
    leases as doubles) still orders leases exactly."""
    lease_ms = _duration_ms("a lease", lease, MAX_LEASE)
    if now + lease_ms > MAX_SAFE_INT:
        raise ValidationError(f"a lease ends by {MAX_SAFE_INT} ms since the epoch")
    return lease_ms
