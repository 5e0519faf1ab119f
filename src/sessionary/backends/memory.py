"""`memory://`: dicts plus an expiry heap, in this process only.

Every method runs to completion without awaiting, so each is atomic under asyncio. Not for
use from several threads or processes; for tests, demos and single-process tools.

The expiry heap holds `(expires_at, id)` entries and is never searched: a touch pushes a new
entry and leaves the old one to be recognised as stale (its time no longer matches the
session's) when it reaches the top. The heap is rebuilt when stale entries outnumber live
sessions, so its size stays proportional to the live set whatever the touch rate. A work
queue's leases sit in a heap kept the same way (a renew pushes, the stale entry is skipped).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from sessionary.backends.signals import LogSignals, QueueKey
from sessionary.contract import (
    EXPIRY_INDEX_MISSING,
    KEEP,
    NO_LIMITS,
    SUBJECT_INDEX_MISSING,
    SUBJECT_INDEX_ORPHAN,
    WAIT_MAX_BYTES,
    WAIT_MAX_ENTRIES,
    CheckPage,
    CounterCharge,
    CounterState,
    Finding,
    Lifetime,
    LifetimeChange,
    LogEntry,
    LogItem,
    LogLimits,
    LogSlice,
    Record,
    SessionLimit,
    SubjectChange,
    WorkItem,
    plan_admission,
    plan_append,
    plan_charges,
    within_bytes,
)
from sessionary.errors import LogClosed, SessionExists, SessionNotFound, VersionConflict
from sessionary.sessionize import (
    DeviceState,
    Hit,
    IngestOutcome,
    OutboxEntry,
    Pointer,
    Rules,
    Sessionizing,
    VacuumReport,
)

_COMPACT_SLACK = 1024


@dataclass(slots=True)
class _Log:
    entries: deque[LogEntry] = field(default_factory=deque)
    last: int = 0
    closed: bool = False
    producers: dict[str, int] = field(default_factory=dict)

    def check(self, session_id: str, items: Sequence[LogItem]) -> None:
        if items and self.closed:
            raise LogClosed(session_id)

    def add(self, items: Sequence[LogItem], now: int, limits: LogLimits) -> list[int | None]:
        plan = plan_append(items, self.last, self.producers, now)
        self.entries.extend(plan.entries)
        self.last, self.producers = plan.last, plan.producers
        self.closed = self.closed or plan.closed
        if limits.max_length is not None:
            while len(self.entries) > limits.max_length:
                self.entries.popleft()
        if limits.max_age_ms is not None:
            cutoff = now - limits.max_age_ms
            while len(self.entries) > 1 and self.entries[0].ts < cutoff:
                self.entries.popleft()
        return plan.seqs

    def after(self, after: int, limit: int, max_bytes: int = 0) -> LogSlice:
        first = self.entries[0].seq if self.entries else self.last + 1
        start = max(0, after + 1 - first)
        chosen = within_bytes(itertools.islice(self.entries, start, start + limit), max_bytes)
        return LogSlice(
            chosen,
            chosen[0].seq if chosen else self.last + 1,
            self.last,
            self.closed,
            self.entries[-1].ts if self.entries else None,
        )


@dataclass(slots=True)
class _Space:
    sessions: dict[str, Record] = field(default_factory=dict)
    subjects: dict[str, set[str]] = field(default_factory=dict)
    heap: list[tuple[int, str]] = field(default_factory=list)
    logs: dict[str, _Log] = field(default_factory=dict)

    def live(self, session_id: str, now: int) -> Record | None:
        record = self.sessions.get(session_id)
        return record if record is not None and record.expires_at > now else None

    def index(self, record: Record) -> None:
        if record.subject is not None:
            self.subjects.setdefault(record.subject, set()).add(record.id)
        self.schedule(record)

    def unindex_subject(self, record: Record) -> None:
        if record.subject is None:
            return
        ids = self.subjects.get(record.subject)
        if ids is not None:
            ids.discard(record.id)
            if not ids:
                del self.subjects[record.subject]

    def schedule(self, record: Record) -> None:
        heapq.heappush(self.heap, (record.expires_at, record.id))
        self.compact()

    def compact(self) -> None:
        """Drop stale heap entries once they outnumber the live ones."""
        if len(self.heap) > 2 * len(self.sessions) + _COMPACT_SLACK or not self.sessions:
            self.heap = [(r.expires_at, r.id) for r in self.sessions.values()]
            heapq.heapify(self.heap)

    def remove(self, session_id: str) -> Record | None:
        record = self.sessions.pop(session_id, None)
        if record is not None:
            self.unindex_subject(record)
            self.logs.pop(session_id, None)
            self.compact()
        return record

    def log(self, session_id: str) -> _Log:
        found = self.logs.get(session_id)
        if found is None:
            found = self.logs[session_id] = _Log()
        return found

    def admit(
        self, session_id: str, subject: SubjectChange, limit: SessionLimit | None, now: int
    ) -> list[Record]:
        """Make room for `session_id` gaining `subject` under `limit` (before any write):
        the evicted sessions, removed; `TooManySessions` if the limit refuses."""
        if limit is None or subject is KEEP or subject is None:
            return []
        current = self.sessions.get(session_id)
        if current is not None and current.subject == subject:
            return []  # not gaining it: it has it
        others = [
            self.sessions[other]
            for other in self.subjects.get(subject, ())
            if other != session_id and other in self.sessions
        ]
        evicted = plan_admission(limit, subject, others, now)
        for record in evicted:
            self.remove(record.id)
        return evicted

    def set_subject(self, record: Record, subject: SubjectChange) -> None:
        if subject is KEEP or subject == record.subject:
            return
        self.unindex_subject(record)
        record.subject = subject
        if subject is not None:
            self.subjects.setdefault(subject, set()).add(record.id)

    def activity(
        self,
        record: Record,
        now: int,
        lifetime: Lifetime,
        cap: int | None = None,
        own: LifetimeChange = KEEP,
    ) -> None:
        """Record activity: expires_at from the session's own lifetime (changed first, unless
        `own` is KEEP) when it has one, else the namespace's `lifetime`."""
        if own is not KEEP:
            record.lifetime = own
        record.last_seen_at = now
        expires_at = lifetime.of(record).expires_at(record.created_at, now)
        if cap is not None:
            expires_at = min(expires_at, cap)
        if expires_at != record.expires_at:
            record.expires_at = expires_at
            self.schedule(record)


@dataclass(slots=True)
class _CounterGroup:
    values: dict[str, CounterState] = field(default_factory=dict)
    heap: list[tuple[int, str]] = field(default_factory=list)  # (resets_at, key), for sweeps

    def put(self, state: CounterState) -> None:
        previous = self.values.get(state.key)
        self.values[state.key] = state
        if previous is None or previous.resets_at != state.resets_at:
            heapq.heappush(self.heap, (state.resets_at, state.key))

    def sweep(self, now: int, limit: int) -> int:
        removed = 0
        while self.heap and self.heap[0][0] <= now and removed < limit:
            resets_at, key = heapq.heappop(self.heap)
            found = self.values.get(key)
            if found is not None and found.resets_at == resets_at:
                del self.values[key]
                removed += 1
        return removed


@dataclass(slots=True)
class _Work:
    id: str
    payload: bytes
    enqueued_at: int
    seq: int  # enqueue order; also tells a re-enqueued id's heap entries from the old one's
    deliveries: int = 0
    holder: str | None = None
    lease_until: int = 0


@dataclass(slots=True)
class _Queue:
    items: dict[str, _Work] = field(default_factory=dict)
    waiting: deque[str] = field(default_factory=deque)  # never claimed, in enqueue order
    leases: list[tuple[int, int, str]] = field(default_factory=list)  # (lease_until, seq, id)
    order: itertools.count[int] = field(default_factory=itertools.count)

    def enqueue(self, item_id: str, payload: bytes, now: int) -> bool:
        if item_id in self.items:
            return False
        self.items[item_id] = _Work(item_id, payload, now, next(self.order))
        self.waiting.append(item_id)
        return True

    def claim(self, consumer: str, now: int, lease_ms: int, limit: int) -> list[WorkItem]:
        chosen: list[WorkItem] = []
        while self.leases and self.leases[0][0] <= now and len(chosen) < limit:
            lease_until, seq, item_id = heapq.heappop(self.leases)
            work = self.items.get(item_id)
            if work is not None and work.seq == seq and work.lease_until == lease_until:
                # lent at once: a second entry of the same lease is stale from here on
                chosen.append(self.lend(work, consumer, now + lease_ms))
        while self.waiting and len(chosen) < limit:
            work = self.items[self.waiting.popleft()]
            chosen.append(self.lend(work, consumer, now + lease_ms))
        return chosen

    def lend(self, work: _Work, consumer: str, lease_until: int) -> WorkItem:
        work.holder = consumer
        work.deliveries += 1
        self.hold(work, lease_until)
        return WorkItem(work.id, work.payload, work.deliveries, work.enqueued_at, lease_until)

    def hold(self, work: _Work, lease_until: int) -> None:
        if work.lease_until == lease_until:
            return  # its heap entry stands
        work.lease_until = lease_until
        heapq.heappush(self.leases, (lease_until, work.seq, work.id))
        held = len(self.items) - len(self.waiting)
        if len(self.leases) > 2 * held + _COMPACT_SLACK:
            self.leases = [
                (w.lease_until, w.seq, w.id) for w in self.items.values() if w.holder is not None
            ]
            heapq.heapify(self.leases)

    def held_by(self, item_id: str, consumer: str) -> _Work | None:
        work = self.items.get(item_id)
        return work if work is not None and work.holder == consumer else None


@dataclass(slots=True)
class _Project:
    """A project's sessionization state. Devices never map to None; a pointer set to None
    by the rules is removed after each step."""

    devices: dict[str, DeviceState | None] = field(default_factory=dict)
    pointers: dict[str, Pointer | None] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # client event id -> when seen
    watermark: int | None = None
    outbox: dict[str, OutboxEntry] = field(default_factory=dict)
    entries: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def step(self, project: str, rules: Rules, now: int) -> Sessionizing:
        return Sessionizing(
            project, rules, now, self.devices, self.pointers, self.seen, self.watermark
        )

    def commit(self, step: Sessionizing, entry: OutboxEntry) -> None:
        self.watermark = step.watermark
        for profile in step.dirty_pointers:
            if self.pointers.get(profile) is None:
                self.pointers.pop(profile, None)
        if entry.placements or entry.started or entry.ended:
            entry.id = f"{next(self.entries):020d}"
            self.outbox[entry.id] = entry

    def close(self, project: str, rules: Rules, now: int, devices: list[str], cutoff: int) -> int:
        step = self.step(project, rules, now)
        closed = sum(step.close_if_idle(device, cutoff) for device in devices)
        self.commit(step, step.entry("", [], []))
        return closed


class MemoryBackend:
    """Sessions in this process's memory. Nothing survives the process."""

    def __init__(self) -> None:
        self._spaces: dict[str, _Space] = {}
        self._counters: dict[str, _CounterGroup] = {}
        self._signals = LogSignals()
        self._projects: dict[str, _Project] = {}
        self._queues: dict[str, _Queue] = {}

    @classmethod
    def from_url(cls, url: str) -> MemoryBackend:
        if url.rstrip("/") != "memory:":
            raise ValueError(f"the memory backend takes no options: use 'memory://', not {url!r}")
        return cls()

    def _space(self, ns: str) -> _Space:
        space = self._spaces.get(ns)
        if space is None:
            space = self._spaces[ns] = _Space()
        return space

    def footprint(self) -> int:
        """Entries held in all structures (sessions, subject index, heap): for leak checks."""
        sessions = sum(
            len(s.sessions)
            + sum(len(ids) for ids in s.subjects.values())
            + len(s.heap)
            + sum(len(log.entries) + 1 for log in s.logs.values())
            for s in self._spaces.values()
        )
        queues = sum(len(q.items) + len(q.leases) for q in self._queues.values())
        counters = sum(len(g.values) + len(g.heap) for g in self._counters.values())
        return sessions + counters + queues

    def limit_sessions(self, ns: str, limit: SessionLimit) -> None:
        """Nothing to arrange: every call sees the whole namespace."""

    async def create(
        self, ns: str, record: Record, *, limit: SessionLimit | None = None
    ) -> list[Record]:
        space = self._space(ns)
        if record.id in space.sessions:
            raise SessionExists(record.id)
        evicted = space.admit(record.id, record.subject, limit, record.last_seen_at)
        stored = record.snapshot()
        space.sessions[record.id] = stored
        space.index(stored)
        return evicted

    async def get(self, ns: str, session_id: str, now: int) -> Record | None:
        record = self._space(ns).live(session_id, now)
        return None if record is None else record.snapshot()

    async def touch(self, ns: str, session_id: str, now: int, lifetime: Lifetime) -> Record | None:
        space = self._space(ns)
        record = space.live(session_id, now)
        if record is None:
            return None
        space.activity(record, now, lifetime)
        return record.snapshot()

    async def update(
        self,
        ns: str,
        session_id: str,
        now: int,
        lifetime: Lifetime,
        *,
        data: bytes | None,
        metadata: bytes | None,
        subject: SubjectChange,
        expected_version: int | None,
        expires_at: int | None = None,
        append: Sequence[LogItem] = (),
        limits: LogLimits = NO_LIMITS,
        own_lifetime: LifetimeChange = KEEP,
        limit: SessionLimit | None = None,
        activity: bool = True,
    ) -> Record:
        space = self._space(ns)
        record = space.live(session_id, now)
        if record is None:
            raise SessionNotFound(session_id)
        if expected_version is not None and expected_version != record.version:
            raise VersionConflict(session_id, expected_version, record.version)
        if append:
            space.log(session_id).check(session_id, append)
        evicted = space.admit(session_id, subject, limit, now)
        if data is not None:
            record.data = data
        if metadata is not None:
            record.metadata = metadata
        space.set_subject(record, subject)
        record.version += 1
        if activity:
            space.activity(record, now, lifetime, expires_at, own_lifetime)
        if append:
            space.log(session_id).add(append, now, limits)
            self._signals.notify((ns, session_id))
        updated = record.snapshot()
        updated.evicted = evicted
        return updated

    async def consume(
        self, ns: str, session_id: str, now: int, counter: str, amount: int, limit: int | None
    ) -> tuple[bool, int]:
        record = self._space(ns).live(session_id, now)
        if record is None:
            raise SessionNotFound(session_id)
        used = record.counters.get(counter, 0)
        if amount < 0:
            used = max(0, used + amount)
        elif limit is not None and used + amount > limit:
            return False, used
        else:
            used += amount
        record.counters[counter] = used
        return True, used

    async def rotate(
        self,
        ns: str,
        session_id: str,
        new_id: str,
        now: int,
        lifetime: Lifetime,
        subject: SubjectChange,
        *,
        own_lifetime: LifetimeChange = KEEP,
        data: bytes | None = None,
        metadata: bytes | None = None,
        expected_version: int | None = None,
        limit: SessionLimit | None = None,
    ) -> Record:
        space = self._space(ns)
        current = space.live(session_id, now)
        if current is None:
            raise SessionNotFound(session_id)
        if expected_version is not None and expected_version != current.version:
            raise VersionConflict(session_id, expected_version, current.version)
        if new_id in space.sessions:
            raise SessionExists(new_id)
        evicted = space.admit(session_id, subject, limit, now)
        log = space.logs.pop(session_id, None)
        record = space.remove(session_id)
        assert record is not None
        if log is not None:
            space.logs[new_id] = log
        record.id = new_id
        record.version += 1
        if subject is not KEEP:
            record.subject = subject
        if data is not None:
            record.data = data
        if metadata is not None:
            record.metadata = metadata
        space.sessions[new_id] = record
        if own_lifetime is not KEEP:
            record.lifetime = own_lifetime
        record.last_seen_at = now
        record.expires_at = lifetime.of(record).expires_at(record.created_at, now)
        space.index(record)
        rotated = record.snapshot()
        rotated.evicted = evicted
        return rotated

    async def delete(self, ns: str, session_id: str) -> Record | None:
        return self._space(ns).remove(session_id)

    async def list_subject(self, ns: str, subject: str, now: int) -> list[Record]:
        space = self._space(ns)
        found = []
        for session_id in space.subjects.get(subject, ()):
            record = space.live(session_id, now)
            if record is not None:
                found.append(record.snapshot())
        return found

    async def revoke_subject(self, ns: str, subject: str, keep: Sequence[str] = ()) -> list[Record]:
        space = self._space(ns)
        removed = []
        kept = set(keep)
        for session_id in tuple(space.subjects.get(subject, ())):
            if session_id in kept:
                continue
            record = space.remove(session_id)
            if record is not None:
                removed.append(record)
        return removed

    async def due(self, ns: str, now: int, limit: int) -> list[str]:
        space = self._space(ns)
        heap = space.heap
        found: list[str] = []
        kept: list[tuple[int, str]] = []
        while heap and heap[0][0] <= now and len(found) < limit:
            entry = heapq.heappop(heap)
            record = space.sessions.get(entry[1])
            if record is None or record.expires_at != entry[0]:
                continue  # stale: the session moved on or is gone
            kept.append(entry)
            if entry[1] not in found:
                found.append(entry[1])
        for entry in kept:  # `due` claims nothing: put the live entries back
            heapq.heappush(heap, entry)
        return found

    async def claim(self, ns: str, session_ids: Sequence[str], now: int) -> list[Record]:
        space = self._space(ns)
        claimed = []
        for session_id in session_ids:
            record = space.sessions.get(session_id)
            if record is not None and record.expires_at <= now:
                space.remove(session_id)
                claimed.append(record)
        return claimed

    async def count(self, ns: str, now: int) -> int:
        return sum(1 for r in self._space(ns).sessions.values() if r.expires_at > now)

    async def scan(self, ns: str, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
        """In id order: the cursor is the last id named."""
        after = cursor or ""
        found = sorted(i for i in self._space(ns).sessions if i > after)[:limit]
        return found, found[-1] if len(found) == limit else None

    async def check_indexes(
        self, ns: str, now: int, cursor: str | None, batch: int, *, repair: bool
    ) -> CheckPage:
        """The whole namespace in one step (it is all in this process's memory, and the step
        never awaits, so it is atomic). The expiry heap holds stale entries by design (see
        the module docstring): an entry naming a gone session is no orphan here, and only a
        session without an entry at its `expires_at` is a finding."""
        space = self._space(ns)
        findings: list[Finding] = []
        for subject, named in list(space.subjects.items()):
            for session_id in sorted(named):
                record = space.sessions.get(session_id)
                if record is not None and record.subject == subject:
                    continue
                findings.append(
                    Finding(
                        SUBJECT_INDEX_ORPHAN,
                        ns,
                        session_id,
                        "the subject index names no stored session of its subject",
                        repair,
                    )
                )
                if repair:
                    named.discard(session_id)
            if not named:
                del space.subjects[subject]
        scheduled = set(space.heap)
        for record in list(space.sessions.values()):
            owner = record.subject
            if owner is not None and record.id not in space.subjects.get(owner, ()):
                findings.append(
                    Finding(
                        SUBJECT_INDEX_MISSING,
                        ns,
                        record.id,
                        "a session its subject's index does not name",
                        repair,
                    )
                )
                if repair:
                    space.subjects.setdefault(owner, set()).add(record.id)
            if (record.expires_at, record.id) not in scheduled:
                findings.append(
                    Finding(
                        EXPIRY_INDEX_MISSING,
                        ns,
                        record.id,
                        f"not in the expiry index at its expires_at {record.expires_at}",
                        repair,
                    )
                )
                if repair:
                    space.schedule(record)
        examined = len(space.sessions) + sum(len(named) for named in space.subjects.values())
        return CheckPage(findings, None, examined)

    async def append(
        self, ns: str, session_id: str, now: int, items: Sequence[LogItem], limits: LogLimits
    ) -> list[int | None]:
        space = self._space(ns)
        if space.live(session_id, now) is None:
            raise SessionNotFound(session_id)
        log = space.log(session_id)
        log.check(session_id, items)
        seqs = log.add(items, now, limits)
        self._signals.notify((ns, session_id))
        return seqs

    async def read_log(
        self, ns: str, session_id: str, after: int, limit: int, now: int, max_bytes: int = 0
    ) -> LogSlice | None:
        space = self._space(ns)
        if space.live(session_id, now) is None:
            return None
        return space.log(session_id).after(after, limit, max_bytes)

    async def wait_log(
        self, ns: str, session_id: str, after: int, timeout_ms: int, now: int
    ) -> list[LogEntry] | None:
        return await self._signals.wait_log(
            (ns, session_id),
            lambda: self.read_log(ns, session_id, after, WAIT_MAX_ENTRIES, now, WAIT_MAX_BYTES),
            timeout_ms,
        )

    def _group(self, group: str) -> _CounterGroup:
        found = self._counters.get(group)
        if found is None:
            found = self._counters[group] = _CounterGroup()
        return found

    async def charge_counters(
        self, group: str, charges: Sequence[CounterCharge], now: int
    ) -> tuple[bool, list[CounterState]]:
        counters = self._group(group)
        counters.sweep(now, 16)  # keep the table to the running counters, a little each time
        stored = [counters.values.get(charge.key) for charge in charges]
        allowed, states, writes = plan_charges(charges, stored, now)
        for state in writes:
            counters.put(state)
        return allowed, states

    async def set_counters(self, group: str, states: Sequence[CounterState], now: int) -> None:
        counters = self._group(group)
        for state in states:
            counters.put(state)

    async def sweep_counters(self, group: str, now: int, limit: int) -> int:
        return self._group(group).sweep(now, limit)

    async def scan_counters(
        self, group: str, now: int, cursor: str | None, limit: int
    ) -> tuple[list[CounterState], str | None]:
        """In key order: the cursor is the last key listed (any string is a place in that
        order, so none is refused)."""
        found = self._counters.get(group)
        if found is None:
            return [], None
        after = "" if cursor is None else cursor
        running = (s for key, s in found.values.items() if key > after and s.resets_at > now)
        page = heapq.nsmallest(limit + 1, running, key=lambda state: state.key)
        if len(page) <= limit:
            return page, None
        return page[:limit], page[limit - 1].key

    # -- work queues ------------------------------------------------------------------------------

    async def enqueue(self, queue: str, item_id: str, payload: bytes, now: int) -> bool:
        found = self._queues.get(queue)
        if found is None:
            found = self._queues[queue] = _Queue()
        added = found.enqueue(item_id, payload, now)
        if added:
            self._signals.notify(QueueKey(queue))
        return added

    async def claim_work(
        self, queue: str, consumer: str, now: int, lease_ms: int, limit: int
    ) -> list[WorkItem]:
        found = self._queues.get(queue)
        return [] if found is None else found.claim(consumer, now, lease_ms, limit)

    async def renew_work(
        self, queue: str, item_id: str, consumer: str, now: int, lease_ms: int
    ) -> bool:
        found = self._queues.get(queue)
        work = None if found is None else found.held_by(item_id, consumer)
        if found is None or work is None:
            return False
        found.hold(work, now + lease_ms)
        return True

    async def ack_work(self, queue: str, item_id: str, consumer: str) -> bool:
        found = self._queues.get(queue)
        if found is None or found.held_by(item_id, consumer) is None:
            return False
        del found.items[item_id]
        if not found.items:  # an empty queue holds nothing: no trace of it stays
            del self._queues[queue]
        return True

    async def queue_depth(self, queue: str, now: int) -> tuple[int, int]:
        found = self._queues.get(queue)
        if found is None:
            return 0, 0
        lapsed = sum(
            1 for w in found.items.values() if w.holder is not None and w.lease_until <= now
        )
        waiting = len(found.waiting) + lapsed
        return waiting, len(found.items) - waiting

    async def wait_queue(self, queue: str, timeout_ms: int) -> None:
        await self._signals.wait(QueueKey(queue), timeout_ms)

    # -- analytics (SessionizeBackend) ------------------------------------------------------------

    def _project(self, project: str) -> _Project:
        found = self._projects.get(project)
        if found is None:
            found = self._projects[project] = _Project()
        return found

    async def sessionize(
        self, project: str, rules: Rules, hits: Sequence[Hit], now: int, nonce: str
    ) -> IngestOutcome:
        state = self._project(project)
        step = state.step(project, rules, now)
        _, outcome, entry = step.ingest(hits, nonce)
        state.commit(step, entry)
        return outcome

    async def close_idle(self, project: str, rules: Rules, now: int, limit: int) -> int:
        state = self._projects.get(project)
        if state is None:
            return 0
        cutoff = rules.idle_cutoff(state.watermark, now)
        idle = sorted(
            (s.session.last, device)
            for device, s in state.devices.items()
            if s is not None and s.session is not None and s.session.last < cutoff
        )[:limit]
        return state.close(project, rules, now, [device for _, device in idle], cutoff)

    async def vacuum(
        self, project: str, rules: Rules, now: int, older_than_ms: int, limit: int
    ) -> VacuumReport:
        state = self._projects.get(project)
        report = VacuumReport()
        if state is None:
            return report
        cutoff = now - older_than_ms
        stuck = [
            device
            for device, s in state.devices.items()
            if s is not None and s.session is not None and s.session.last < cutoff
        ][:limit]
        report.closed = state.close(project, rules, now, stuck, cutoff)
        stale = [
            device
            for device, s in state.devices.items()
            if s is not None and s.session is None and s.touched_at < cutoff
        ][:limit]
        for device in stale:
            del state.devices[device]
        report.states = len(stale)
        orphans = [
            profile
            for profile, pointer in state.pointers.items()
            if not _names_open_session(state, pointer)
        ][:limit]
        for profile in orphans:
            del state.pointers[profile]
        report.pointers = len(orphans)
        forgotten = [i for i, seen in state.seen.items() if now - seen >= rules.dedup_ms][:limit]
        for event_id in forgotten:
            del state.seen[event_id]
        report.dedup = len(forgotten)
        return report

    async def outbox(self, project: str, limit: int) -> list[OutboxEntry]:
        state = self._projects.get(project)
        return [] if state is None else list(itertools.islice(state.outbox.values(), limit))

    async def ack(self, project: str, entry_ids: Sequence[str]) -> None:
        state = self._projects.get(project)
        if state is not None:
            for entry_id in entry_ids:
                state.outbox.pop(entry_id, None)

    async def projects(self) -> list[str]:
        return sorted(self._projects)

    async def open_sessions(self, project: str) -> int:
        state = self._projects.get(project)
        if state is None:
            return 0
        return sum(1 for s in state.devices.values() if s is not None and s.session is not None)

    async def idle_sessions(self, project: str, cutoff: int) -> int:
        state = self._projects.get(project)
        if state is None:
            return 0
        return sum(
            1
            for s in state.devices.values()
            if s is not None and s.session is not None and s.session.last < cutoff
        )

    async def watermark(self, project: str) -> int | None:
        state = self._projects.get(project)
        return None if state is None else state.watermark

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return "MemoryBackend()"


def _names_open_session(state: _Project, pointer: Pointer | None) -> bool:
    if pointer is None:
        return False
    device = state.devices.get(pointer.device)
    return (
        device is not None
        and device.session is not None
        and (device.session.id == pointer.session_id)
    )
