"""The storage contract every backend implements: `Backend`, and the plain `Record` it stores.

This module sits at the bottom of the package with `errors`, `clock` and `ids`. It knows
nothing about JSON, events or policies by name: the store above encodes and validates, the
backends below store bytes and keep their indexes. A third party's backend implements
`Backend` and proves itself with `sessionary.testing` (the conformance suite).

Rules every backend keeps (the conformance suite checks each):

* A session is *live* while `now < expires_at`. Operations other than `delete`, `claim`,
  `revoke_subject` and `due` treat a session that is stored but no longer live as absent.
* Each method is atomic with respect to every other method on the same backend, across
  tasks, threads and processes that share the store.
* `version` starts at 1 and grows by one on `update` and `rotate`; `touch` and `consume`
  leave it alone (counters are atomic by themselves, and a touch is not a write of data).
* `touch`, `update` and `rotate` record activity: `last_seen_at = now` and `expires_at` is
  recomputed from the `Lifetime`: the session's own (`Record.lifetime`, stored with it and
  changed only by `update`/`rotate` with `own_lifetime`) when it has one, else the one the
  call passes (the namespace's policy), decided inside the same atomic step. Nothing ever
  moves `created_at` (an absolute ttl always runs from it).
* Counters never go below 0, and a counter charge with a limit is refused (and not applied)
  when `used + amount > limit`.
* With a `SessionLimit`, a session that gains a subject (`create` with one, `rotate` or
  `update` to another) finds at most `max_sessions - 1` other live sessions of that subject,
  decided in the same atomic step as the write: with "refuse" the write raises
  `TooManySessions` and changes nothing; with "evict_oldest" the least recently active
  others are removed in that step and returned (`plan_admission`). Expired sessions never
  count and are never evicted.
* A work queue hands each item to one consumer at a time: `claim_work` holds it until
  `now + lease_ms` (store clock), and no other claim gets it until that lease lapses or the
  holder acks it. A lapsed item goes to the next claim (its holder's included) with
  `deliveries` one higher; `renew_work` and `ack_work` succeed only for the current holder.
  Lapsed items are claimed before waiting ones, waiting ones in enqueue order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import Enum
from typing import Final, Literal, Protocol, runtime_checkable

from sessionary.errors import TooManySessions

__all__ = [
    "KEEP",
    "MAX_RATE_PRODUCT",
    "Backend",
    "CheckPage",
    "CounterAlgorithm",
    "CounterCharge",
    "CounterState",
    "Finding",
    "IndexCheck",
    "Invalidated",
    "Keep",
    "Lifetime",
    "LifetimeChange",
    "LogEntry",
    "LogItem",
    "LogLimits",
    "LogSlice",
    "OnMaxSessions",
    "Record",
    "SessionLimit",
    "SessionTracking",
    "TracksSessions",
    "WorkItem",
    "plan_admission",
]


class Keep(Enum):
    """The type of `KEEP`: "leave this field as it is" (distinct from None, which clears)."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


@dataclass(slots=True)
class Record:
    """One stored session, as bytes: the backends' currency."""

    id: str
    subject: str | None
    created_at: int
    last_seen_at: int
    expires_at: int
    version: int
    data: bytes  # a JSON object, encoded
    metadata: bytes  # a JSON object of str -> str, encoded
    counters: dict[str, int] = field(default_factory=dict)
    #: the session's own lifetime ("remember me"), which every touch, update and rotate
    #: honours instead of the namespace's; None: it lives by the namespace's policy
    lifetime: Lifetime | None = None
    #: not stored: the sessions of the subject that the write returning this record removed
    #: to stay within its `SessionLimit` ("evict_oldest"), as they were
    evicted: list[Record] = field(default_factory=list)

    def snapshot(self) -> Record:
        """A copy that shares nothing mutable with this one (its counters copied; `evicted`
        left out), made field by field: `dataclasses.replace` costs several times more, and
        the memory backend and the read cache copy a record on every call."""
        return Record(
            self.id,
            self.subject,
            self.created_at,
            self.last_seen_at,
            self.expires_at,
            self.version,
            self.data,
            self.metadata,
            dict(self.counters),
            self.lifetime,
        )


@dataclass(frozen=True, slots=True)
class Lifetime:
    """How long a session lives: idle (sliding) and absolute (hard cap), in ms; at least one."""

    idle_ms: int | None
    absolute_ms: int | None

    def __post_init__(self) -> None:
        if self.idle_ms is None and self.absolute_ms is None:
            raise ValueError("a session needs an idle ttl, an absolute ttl, or both")
        for ttl in (self.idle_ms, self.absolute_ms):
            if ttl is not None and ttl <= 0:
                raise ValueError("a ttl is a positive number of milliseconds")

    @property
    def idle_ttl(self) -> timedelta | None:
        """The idle ttl as a duration (None: no idle limit)."""
        return None if self.idle_ms is None else timedelta(milliseconds=self.idle_ms)

    @property
    def absolute_ttl(self) -> timedelta | None:
        """The absolute ttl as a duration (None: no cap)."""
        return None if self.absolute_ms is None else timedelta(milliseconds=self.absolute_ms)

    def of(self, record: Record) -> Lifetime:
        """The lifetime `record` lives by: its own if it has one, else this (the policy)."""
        return self if record.lifetime is None else record.lifetime

    def expires_at(self, created_at: int, last_seen_at: int) -> int:
        """min(last_seen_at + idle, created_at + absolute), whichever are set."""
        if self.absolute_ms is None:
            return last_seen_at + (self.idle_ms or 0)
        cap = created_at + self.absolute_ms
        if self.idle_ms is None:
            return cap
        return min(last_seen_at + self.idle_ms, cap)


#: What a namespace does when a session would take its subject past `max_sessions`.
OnMaxSessions = Literal["evict_oldest", "refuse"]


@dataclass(frozen=True, slots=True)
class SessionLimit:
    """At most `max_sessions` live sessions per subject in a namespace (Spring Security's
    maximumSessions): a session gaining a subject that has as many already is refused
    ("refuse") or makes room by evicting the least recently active ones ("evict_oldest")."""

    max_sessions: int
    on_max: OnMaxSessions = "refuse"

    def __post_init__(self) -> None:
        if type(self.max_sessions) is not int or self.max_sessions < 1:
            raise ValueError("max_sessions_per_subject is an int >= 1")
        if self.on_max not in ("evict_oldest", "refuse"):
            raise ValueError("on_max_sessions is 'evict_oldest' or 'refuse'")


def plan_admission(
    limit: SessionLimit, subject: str, others: Sequence[Record], now: int
) -> list[Record]:
    """The decision of a `SessionLimit`, for backends that run Python inside their atomic
    step: `others` are the stored sessions of `subject` but the one gaining it. Returns the
    live ones to evict (least recently active first; ties by creation, then id), or raises
    `TooManySessions` when the limit refuses. Nothing is evicted while there is room."""
    live = [record for record in others if record.expires_at > now]
    excess = len(live) - limit.max_sessions + 1
    if excess <= 0:
        return []
    if limit.on_max == "refuse":
        raise TooManySessions(subject, limit.max_sessions)
    live.sort(key=lambda record: (record.last_seen_at, record.created_at, record.id))
    return live[:excess]


SubjectChange = str | None | Literal[Keep.KEEP]
#: a change of a session's own lifetime: a new one, None (back to the namespace's), or KEEP
LifetimeChange = Lifetime | None | Literal[Keep.KEEP]


@dataclass(frozen=True, slots=True)
class LogLimits:
    """How much of a session's event log is kept: the newest `max_length` entries, none
    older than `max_age_ms` (the newest entry always stays). None: no such bound."""

    max_length: int | None = None
    max_age_ms: int | None = None


NO_LIMITS: Final = LogLimits()


@dataclass(frozen=True, slots=True)
class LogItem:
    """An event to append. With `producer` and `seq`, an item whose seq is not above the last
    one stored for that producer is a retry and is not stored again. A `final` item closes the
    log: nothing can be appended after it."""

    type: str
    data: bytes
    producer: str | None = None
    seq: int | None = None
    final: bool = False


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A stored event: `seq` counts from 1 in its log, `ts` is when it was appended."""

    seq: int
    ts: int
    type: str
    data: bytes
    final: bool


@dataclass(slots=True)
class LogSlice:
    """Entries after some point, with the log's state: `first` is the oldest retained seq at
    or after that point (`last` + 1 when there is none), `last` the newest seq appended (0 for
    an empty log), `last_ts` when it was appended, `closed` whether a final entry was."""

    entries: list[LogEntry]
    first: int
    last: int
    closed: bool
    last_ts: int | None = None


#: the most entries one `wait_log` hands back at once
WAIT_MAX_ENTRIES = 1000
#: the most event data one `wait_log` hands back at once (at least one entry), where the
#: backend can bound it
WAIT_MAX_BYTES = 1 << 20


def within_bytes(entries: Iterable[LogEntry], max_bytes: int) -> list[LogEntry]:
    """The leading entries whose data fits in `max_bytes` (0: all), and always the first."""
    chosen: list[LogEntry] = []
    total = 0
    for entry in entries:
        total += len(entry.data)
        if max_bytes and chosen and total > max_bytes:
            break
        chosen.append(entry)
    return chosen


#: How a counter counts (see docs/quotas.md): "fixed" windows, a "sliding" window counter,
#: or "gcra" (generic cell rate: a token bucket refilling `limit` per window, evenly).
CounterAlgorithm = Literal["fixed", "sliding", "gcra"]

#: The most `limit * window_ms` may be for a sliding or gcra counter: every product their
#: arithmetic forms stays below 2^53, where Redis scripts (doubles) still compute exactly.
MAX_RATE_PRODUCT: Final = 2**52


@dataclass(frozen=True, slots=True)
class CounterCharge:
    """One counter of a group to charge: `amount` against `limit` (None: unlimited).

    A counter that does not exist yet, or whose window ended (`resets_at <= now`), starts
    afresh at 0 with `resets_at = now + window_ms`. A negative amount refunds (floored at 0,
    and a no-op on a counter that is not running); 0 reads. A sliding or gcra charge always
    has a limit, with `limit * window_ms <= MAX_RATE_PRODUCT`.
    """

    key: str
    amount: int
    limit: int | None
    window_ms: int
    algorithm: CounterAlgorithm = "fixed"


@dataclass(frozen=True, slots=True)
class CounterState:
    """A counter as stored. It is running while `now < resets_at`; a backend may drop it after.

    * fixed: `value` counted in the window that ends at `resets_at`.
    * sliding: `value` counted in the current window, `previous` in the one before it;
      windows are `window_ms` long and aligned at its multiples since the epoch, and the
      current one ends at `resets_at - window_ms` (the counter is running while the current
      window's count still weighs).
    * gcra: the theoretical arrival time is `resets_at - value / limit` ms, `value` in
      [0, limit): the counter is full again (used 0) at `resets_at`.

    `window_ms` and `limit` are the rate of the charge that last wrote it (0 and None when
    unknown: a counter written before backends kept them, or set outright without them), so
    a listing can tell a sliding or gcra counter's usage (`counter_used`) from its state
    alone. Charges never read them: each charge names its own rate.
    """

    key: str
    value: int
    resets_at: int
    algorithm: CounterAlgorithm = "fixed"
    previous: int = 0
    window_ms: int = 0
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class WorkItem:
    """An item handed to a consumer: `deliveries` counts the claims of it, this one included
    (1 the first time; more after a consumer's lease lapsed and another claimed it)."""

    id: str
    payload: bytes
    deliveries: int
    enqueued_at: int
    lease_until: int


class Backend(Protocol):
    """Where sessions live. Every method may raise `StoreUnavailable`; none hides it as absence.

    `ns` and `queue` are validated names (one rule for both), ids and consumers are
    validated before they arrive, payloads are encoded and size-checked, and `now` comes
    from the store's clock: a backend never reads the wall clock for session state or
    leases.
    """

    def limit_sessions(self, ns: str, limit: SessionLimit) -> None:
        """Called when the store opens a namespace with a session limit, before any other
        call on it, so a backend can keep each subject's sessions where one atomic step sees
        them all (the Redis backend keeps such a namespace in one hash slot). Backends that
        always can (one process, one database) do nothing."""
        ...

    async def create(
        self, ns: str, record: Record, *, limit: SessionLimit | None = None
    ) -> list[Record]:
        """Store a new session, with its own `lifetime` if it has one. `SessionExists` if the
        id is taken (live or not yet reaped). With `limit` and a subject, the limit applies
        (see the module's rules); returns the sessions evicted for it ([] without)."""
        ...

    async def get(self, ns: str, session_id: str, now: int) -> Record | None:
        """The live session, or None. Changes nothing."""
        ...

    async def touch(self, ns: str, session_id: str, now: int, lifetime: Lifetime) -> Record | None:
        """Record activity on a live session and return it; None if absent. One round trip."""
        ...

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
        """Replace data and/or metadata (None keeps), change the subject (KEEP keeps), set or
        clear the session's own lifetime (KEEP keeps; `expires_at` is then recomputed from the
        new one), end the session sooner (`expires_at`, never later than the lifetime allows),
        and append events to its log, all in one atomic step.

        With `activity=False` it is a maintenance write (re-sealing under a new key), not
        activity: `last_seen_at` and `expires_at` stay as stored (the version still grows);
        the store passes it only with `own_lifetime=KEEP` and no `expires_at`.

        `SessionNotFound` if not live; `VersionConflict` if `expected_version` is given and
        differs from the stored version; `LogClosed` if there are events to append and the log
        is closed; `TooManySessions` if the session gains a subject that `limit` refuses it.
        Nothing is written then. Sessions evicted for `limit` come back in `Record.evicted`.
        """
        ...

    async def consume(
        self, ns: str, session_id: str, now: int, counter: str, amount: int, limit: int | None
    ) -> tuple[bool, int]:
        """Atomically add `amount` to a counter; returns (allowed, value after).

        amount > 0 is refused when `value + amount > limit`; amount < 0 refunds, floored at
        0; amount == 0 reads. `SessionNotFound` if not live.
        """
        ...

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
        """Move a live session to `new_id` (same shard) in one atomic step; the old id is gone.
        `own_lifetime`, `expected_version` and `limit` as in `update`, in the same step; `data`
        and `metadata` replace what is stored when given (a store that seals payloads with the
        session id re-seals them for the new one).

        `SessionNotFound` if not live, `VersionConflict` if `expected_version` differs,
        `SessionExists` if `new_id` is taken, `TooManySessions` as in `update`; nothing is
        written then.
        """
        ...

    async def delete(self, ns: str, session_id: str) -> Record | None:
        """Remove the session whether live or not; returns what was stored, or None."""
        ...

    async def list_subject(self, ns: str, subject: str, now: int) -> list[Record]:
        """The live sessions of a subject, in any order."""
        ...

    async def revoke_subject(self, ns: str, subject: str, keep: Sequence[str] = ()) -> list[Record]:
        """Remove every stored session of a subject but those whose ids are in `keep`, in
        one atomic step per shard (a kept session is never touched); returns what was
        removed. "Log out my other devices" keeps the caller's own session this way, so no
        window exists in which a concurrent call sees it half revoked."""
        ...

    async def due(self, ns: str, now: int, limit: int) -> list[str]:
        """Up to `limit` ids whose `expires_at <= now`, soonest first. Claims nothing."""
        ...

    async def claim(self, ns: str, session_ids: Sequence[str], now: int) -> list[Record]:
        """Remove and return those of `session_ids` that are still expired at `now`.

        Each session is returned by exactly one `claim` across every caller, even when many
        reapers race; a session touched since `due` saw it is no longer expired and stays.
        """
        ...

    async def count(self, ns: str, now: int) -> int:
        """How many live sessions the namespace holds."""
        ...

    async def scan(self, ns: str, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
        """The ids of stored sessions (live or not), about `limit` at a time: pass the cursor
        returned (None to start) until it comes back None. Every session stored throughout
        the scan is named at least once (some may be named twice). For maintenance that
        walks a namespace (re-sealing under a new key), never for a request."""
        ...

    async def append(
        self, ns: str, session_id: str, now: int, items: Sequence[LogItem], limits: LogLimits
    ) -> list[int | None]:
        """Append events to the session's log in one atomic step, then trim it to `limits`.

        Returns each item's seq, or None for a producer's retry (not stored again).
        `SessionNotFound` if not live, `LogClosed` if a final event was appended before.
        """
        ...

    async def read_log(
        self, ns: str, session_id: str, after: int, limit: int, now: int, max_bytes: int = 0
    ) -> LogSlice | None:
        """Up to `limit` entries with seq > `after`, oldest first; None if no live session.
        With `max_bytes`, the entries end before the one that would take their data past it
        (the first is always there), so a page of large events stays small in memory."""
        ...

    async def wait_log(
        self, ns: str, session_id: str, after: int, timeout_ms: int, now: int
    ) -> list[LogEntry] | None:
        """The entries with seq > `after`, as soon as there are any (in order, a batch at a
        time), [] after `timeout_ms`, or None when there is no live session. Costs nothing
        while it waits but a connection."""
        ...

    async def charge_counters(
        self, group: str, charges: Sequence[CounterCharge], now: int
    ) -> tuple[bool, list[CounterState]]:
        """Charge all `charges` in one atomic step, or none of them.

        If any positive charge would take its counter past its limit, nothing is written and
        this returns (False, the states as they are); else (True, the states after). Keys are
        distinct; states come back in the order of `charges`.
        """
        ...

    async def set_counters(self, group: str, states: Sequence[CounterState], now: int) -> None:
        """Set counters to exact values and windows (for migrations; idempotent)."""
        ...

    async def sweep_counters(self, group: str, now: int, limit: int) -> int:
        """Remove up to `limit` counters whose window ended; returns how many went."""
        ...

    async def scan_counters(
        self, group: str, now: int, cursor: str | None, limit: int
    ) -> tuple[list[CounterState], str | None]:
        """The group's running counters (`now < resets_at`) as stored, about `limit` at a
        time (a page may hold fewer, even none, and still not be the last): pass the cursor
        returned (None to start) until it comes back None. Every counter running throughout
        the scan is named at least once (some may be named twice). A cursor this backend did
        not issue is an `InvalidCursor`. For an operator's listing, never for a request."""
        ...

    async def enqueue(self, queue: str, item_id: str, payload: bytes, now: int) -> bool:
        """Add an item at the queue's tail; False, and nothing changes, if an item with that
        id is in the queue (waiting or held)."""
        ...

    async def claim_work(
        self, queue: str, consumer: str, now: int, lease_ms: int, limit: int
    ) -> list[WorkItem]:
        """Hand up to `limit` items to `consumer`, each held until `now + lease_ms`: first
        items whose holder's lease lapsed (`lease_until <= now`; soonest lapsed first), then
        waiting items in enqueue order. At any moment an item is held by at most one
        consumer; a lapsed item is free to anyone, its previous holder included. Atomic with
        every other queue call: racing claimers never get the same item at once. (Named
        apart from `claim`, which is the reaper's claim of expired sessions.)"""
        ...

    async def renew_work(
        self, queue: str, item_id: str, consumer: str, now: int, lease_ms: int
    ) -> bool:
        """Hold the item until `now + lease_ms`; True only if `consumer` holds it (its lease
        may have lapsed as long as nobody claimed it since). False: it was claimed by
        another or is gone; the caller must stop working on it."""
        ...

    async def ack_work(self, queue: str, item_id: str, consumer: str) -> bool:
        """Remove an item `consumer` holds (done); False, and nothing changes, if it does
        not hold it."""
        ...

    async def queue_depth(self, queue: str, now: int) -> tuple[int, int]:
        """(waiting, held) items: never claimed, or claimed but lapsed, count as waiting."""
        ...

    async def wait_queue(self, queue: str, timeout_ms: int) -> None:
        """Return when an item may have been enqueued (after this call began), or after
        `timeout_ms`; costs nothing while it waits but a connection. Lapsed leases do not
        wake it: a worker claims again at least every lease."""
        ...

    async def ping(self) -> None:
        """Return if the store answers, else raise `StoreUnavailable`."""
        ...

    async def close(self) -> None:
        """Release connections and threads. Idempotent."""
        ...


def plan_charges(
    charges: Sequence[CounterCharge], stored: Sequence[CounterState | None], now: int
) -> tuple[bool, list[CounterState], list[CounterState]]:
    """The decision of `Backend.charge_counters`, for backends that can run Python inside
    their atomic step. `stored` holds each charge's counter as stored, or None.

    Returns (allowed, states to report, states to write). A running counter stored under
    another algorithm than its charge names refuses the whole charge and is reported as
    stored (the store above turns that into a `ValidationError`).
    """
    current: list[CounterState] = []
    running: list[bool] = []
    mismatch = False
    for charge, found in zip(charges, stored, strict=True):
        live = found is not None and found.resets_at > now
        if found is not None and live and found.algorithm != charge.algorithm:
            mismatch = True
            current.append(found)
            running.append(True)
            continue
        state = counter_at(charge, found if live else None, now)
        current.append(state)
        running.append(live)
    if mismatch:
        return False, current, []
    for charge, state in zip(charges, current, strict=True):
        if (
            charge.amount > 0
            and charge.limit is not None
            and counter_used(charge, state, now) + charge.amount > charge.limit
        ):
            return False, current, []
    after: list[CounterState] = []
    writes: list[CounterState] = []
    for charge, state, live in zip(charges, current, running, strict=True):
        if charge.amount == 0 or (charge.amount < 0 and not live):
            after.append(state)
            continue
        changed = _charged(charge, state, now)
        after.append(changed)
        writes.append(changed)
    return True, after, writes


def counter_at(charge: CounterCharge, running: CounterState | None, now: int) -> CounterState:
    """The counter `charge` names as it stands at `now`, given the running one stored under
    the same algorithm (or None): fresh, or a sliding one rolled to the current window."""
    window, limit = charge.window_ms, charge.limit
    if charge.algorithm == "fixed":
        return running or CounterState(charge.key, 0, now + window, "fixed", 0, window, limit)
    if charge.algorithm == "gcra":
        return running or CounterState(charge.key, 0, now, "gcra", 0, window, limit)
    ends = now - now % window + window  # the current window's end
    value = previous = 0
    if running is not None and running.resets_at - window == ends:
        value, previous = running.value, running.previous
    elif running is not None and running.resets_at == ends:  # the window just rolled
        previous = running.value
    return CounterState(charge.key, value, ends + window, "sliding", previous, window, limit)


def counter_used(charge: CounterCharge, state: CounterState, now: int) -> int:
    """How much of its limit the counter `state` (as `counter_at` gives it) uses at `now`:
    a charge of n is allowed exactly when `used + n <= limit`."""
    if charge.algorithm == "fixed":
        return state.value
    limit, window = _limit(charge), charge.window_ms
    if charge.algorithm == "sliding":
        weight = min(state.previous, limit) * (state.resets_at - window - now)
        return state.value + -(-weight // window)
    return -(-gcra_level(charge, state, now) // window)


def gcra_level(charge: CounterCharge, state: CounterState, now: int) -> int:
    """How far the theoretical arrival time lies past `now`, in 1/limit ms, at most
    `limit * window_ms` (a window since shortened counts as full)."""
    limit, window = _limit(charge), charge.window_ms
    ahead = state.resets_at - now
    if ahead <= 0:
        return 0
    if ahead > window:
        return limit * window
    return max(0, ahead * limit - state.value)


def _limit(charge: CounterCharge) -> int:
    if charge.limit is None:
        raise ValueError(f"a {charge.algorithm} counter has a limit")
    return charge.limit


def _charged(charge: CounterCharge, state: CounterState, now: int) -> CounterState:
    """`state` after an allowed charge of `charge.amount` (negative: a refund)."""
    window = charge.window_ms
    if charge.algorithm != "gcra":
        value = max(0, state.value + charge.amount)
        return replace(state, value=value, window_ms=window, limit=charge.limit)
    limit = _limit(charge)
    level = gcra_level(charge, state, now)
    if charge.amount > 0:
        level += charge.amount * window
    else:
        level = max(0, level - min(-charge.amount, limit) * window)
    ahead = -(-level // limit) if limit else 0  # whole ms to the arrival time, rounded up
    return CounterState(state.key, ahead * limit - level, now + ahead, "gcra", 0, window, limit)


@dataclass(slots=True)
class LogPlan:
    """What appending some items does to a log (see `plan_append`)."""

    seqs: list[int | None]
    entries: list[LogEntry]
    last: int
    closed: bool
    producers: dict[str, int]


def plan_append(
    items: Sequence[LogItem], last: int, producers: dict[str, int], now: int
) -> LogPlan:
    """The effect of `Backend.append` for backends that run Python inside their atomic step:
    sequence numbers, producers' retries skipped, the final item closing the log."""
    seqs: list[int | None] = []
    entries: list[LogEntry] = []
    closed = False
    producers = dict(producers)
    for item in items:
        if item.producer is not None and item.seq is not None:
            if item.seq <= producers.get(item.producer, 0):
                seqs.append(None)  # a retry: stored already
                continue
            producers[item.producer] = item.seq
        last += 1
        entries.append(LogEntry(last, now, item.type, item.data, item.final))
        closed = closed or item.final
        seqs.append(last)
    return LogPlan(seqs, entries, last, closed, producers)


# -- reconciliation: `sessionary check` ---------------------------------------------------------

#: what a check finds (`Finding.kind`): stable codes, for scripts reading `sessionary check --json`
SUBJECT_INDEX_ORPHAN: Final = "subject_index_orphan"  # names no stored session of that subject
SUBJECT_INDEX_MISSING: Final = "subject_index_missing"  # a session its subject's index misses
EXPIRY_INDEX_ORPHAN: Final = "expiry_index_orphan"  # names no stored session
EXPIRY_INDEX_MISSING: Final = "expiry_index_missing"  # a session not indexed at its expires_at


@dataclass(frozen=True, slots=True)
class Finding:
    """One inconsistency a check found: `kind` a stable code (the constants above, or a
    feature's own), `namespace` where (a namespace, or a feature's place such as an analytics
    project), `id` the session or entry concerned (None: the finding is about a whole place),
    `detail` what is wrong in words, `repaired` whether this check fixed it."""

    kind: str
    namespace: str
    id: str | None
    detail: str
    repaired: bool = False


@dataclass(frozen=True, slots=True)
class CheckPage:
    """What one step of `IndexCheck.check_indexes` found and examined (index entries and
    records), and the cursor to pass next (None: the namespace is done)."""

    findings: list[Finding]
    cursor: str | None
    examined: int


@runtime_checkable
class IndexCheck(Protocol):
    """A backend that can reconcile its indexes with its records (`sessionary check`). Apart
    from `Backend` so that a third party's backend without it still is one: the store says
    it cannot check that backend rather than refusing it.

    What a backend keeps beside its records (the subject index that `list_subject` and
    `revoke_subject` read, the expiry index that `due` reads) must name exactly the stored
    sessions: an entry naming no stored session (of that subject) is an orphan, a session its
    index does not name (at its `expires_at`, for the expiry index) is missing. A session
    missing from the expiry index is never reaped; one missing from its subject's index
    survives "log out everywhere"."""

    async def check_indexes(
        self, ns: str, now: int, cursor: str | None, batch: int, *, repair: bool
    ) -> CheckPage:
        """Examine about `batch` index entries or records (pass the cursor returned, None to
        start, until it comes back None) and report what is inconsistent. Each finding is
        decided in one atomic step with its repair (with `repair`): an orphan entry is dropped,
        a missing entry is added from the record; nothing else is ever changed, and what
        changed meanwhile (a session deleted between the scan and the decision) is not a
        finding. Safe while the namespace is in use."""
        ...


#: what a `SessionTracking` reports: the (namespace, session id) pairs some writer changed
#: (or deleted), or None: anything may have changed (a flush, or the feed itself was lost)
Invalidated = Callable[[Iterable[tuple[str, str]] | None], None]


class SessionTracking(Protocol):
    """A backend's feed of which stored sessions changed, for a read cache in front of it
    (`sessionary.read_cache`): every write by anyone, this process included, is reported."""

    #: invalidations flow: a cached read may be served (False while the feed is down: every
    #: read then goes to the backend, and what was cached before was reported as None)
    active: bool

    def drain(self) -> None:
        """Report, without blocking, every invalidation the backend sent so far."""
        ...

    async def start(self) -> None:
        """Connect, and keep reconnecting in the background while the feed is down."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class TracksSessions(Protocol):
    """A backend that can report the sessions that change (Redis: client-side caching with
    invalidations). Apart from `Backend`: one without it (memory, SQLite) simply gets no
    read cache."""

    def track_sessions(self, invalidated: Invalidated) -> SessionTracking | None:
        """A feed reporting to `invalidated`, not started; None when this configuration
        cannot offer one (e.g. TLS, Sentinel, Cluster)."""
        ...
