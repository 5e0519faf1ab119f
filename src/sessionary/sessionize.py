"""The analytics storage contract: sessionization of tracked events, and its rules.

Analytics is the one feature whose hot path needs more than sessions, counters and logs: a
batch of thousands of events, each of which may extend, split, open or close the open session
of its device, has to be decided in one atomic step per batch (one Lua script on Redis, one
transaction on SQLite). So it has a storage contract of its own, `SessionizeBackend`, that
every built-in backend implements, and the rules live here once, in `Sessionizing`, for the
backends that can run Python inside their atomic step (memory, SQLite). The Redis backend
carries the same rules in Lua; the conformance suite (`sessionary.testing`) holds all of them
to the same behaviour, rule by rule, at T - 1, T and T + 1 ms.

The rules (docs/analytics.md states each with an example):

* A device has at most one open session. An event joins it when `ts - last <= timeout` (and
  `ts - start <= max_length`, when set): exactly T extends, T + 1 ms closes it and opens
  a new one.
* An event inside the session (`start <= ts <= last`) joins without moving anything; one up to
  T before the start moves the start (and the entry page, and first-touch fields) back.
* An event more than `lateness` behind the device's newest event, or at or before the end of the
  device's last closed session, is *late*: kept, counted, never opening, reopening or
  widening a session (so the sessions of a device never overlap).
* An event with a client-supplied id seen in the last `dedup` ms is a *duplicate*: nothing.
* An event carrying only a profile id joins the most recent open session of that profile on
  any device if it fits its timing, else it is kept without a session (*unattached*).
* The reaper closes a session when `watermark - last > timeout` (the watermark is the newest
  event time the project has seen) or `now - last > timeout + reap_lag` (the wall-clock
  backstop), re-checking in its atomic step so a session extended meanwhile stays open.
* A session opened emits `session_start` at its first event - 1 ms, a session closed emits
  `session_end` at its last event + 1 ms, each exactly once: the emission is written to the
  outbox in the same atomic step as the transition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "DeviceState",
    "Hit",
    "IngestOutcome",
    "OpenSession",
    "OutboxEntry",
    "Placement",
    "Pointer",
    "Rules",
    "SessionRow",
    "SessionizeBackend",
    "Sessionizing",
    "VacuumReport",
]

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS

# What became of an event (the `status` of a Placement).
JOINED: Final = "joined"  # it belongs to a session (new or open)
LATE: Final = "late"  # kept without a session: too far behind, or in a closed session's span
DUPLICATE: Final = "duplicate"  # seen already: nothing happens, nothing is stored
UNATTACHED: Final = "unattached"  # a profile-only event with no open session to join
Status = Literal["joined", "late", "duplicate", "unattached"]

SCREEN_VIEW: Final = "screen_view"

# Where an event's time falls for an open session (`Sessionizing._fit`)
_AFTER, _INSIDE, _BEFORE, _BEYOND, _TOO_EARLY = range(5)


@dataclass(frozen=True, slots=True)
class Rules:
    """A project's sessionization settings, all in ms."""

    timeout_ms: int = 30 * MINUTE_MS
    max_length_ms: int | None = 24 * HOUR_MS  # None: a session may last for ever
    lateness_ms: int = 15 * MINUTE_MS
    dedup_ms: int = 24 * HOUR_MS
    reap_lag_ms: int = 5 * MINUTE_MS  # the wall-clock backstop: close after timeout + this

    def __post_init__(self) -> None:
        for name in ("timeout_ms", "lateness_ms", "dedup_ms", "reap_lag_ms"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} is an int >= 0, not {value!r}")
        if self.timeout_ms < 1:
            raise ValueError("timeout_ms is at least 1")
        if self.max_length_ms is not None and (
            type(self.max_length_ms) is not int or self.max_length_ms < 1
        ):
            raise ValueError(f"max_length_ms is a positive int or None, not {self.max_length_ms!r}")

    def idle_cutoff(self, watermark: int | None, now: int) -> int:
        """Sessions whose last event is before this are closed by the reaper."""
        backstop = now - self.timeout_ms - self.reap_lag_ms
        if watermark is None:
            return backstop
        return max(watermark - self.timeout_ms, backstop)


@dataclass(slots=True)
class Hit:
    """One tracked event, validated and normalized, as the backends see it.

    `devices` are the candidate device ids, most preferred first: one for a device id the
    client sent; today's and yesterday's hash for anonymous traffic (an open session under
    either continues); none for an event that carries only a profile id.
    """

    event_id: str
    name: str
    ts: int
    received_at: int
    devices: tuple[str, ...]
    dedup: bool = False  # the client chose the id: check it against those seen lately
    profile_id: str | None = None
    path: str | None = None
    referrer: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None
    revenue: int = 0  # minor units (cents)
    properties: bytes = b"{}"  # a JSON object, encoded


@dataclass(slots=True)
class OpenSession:
    """The state of a device's open session (times are event times, ms)."""

    id: str
    start: int
    last: int
    events: int = 0
    screen_views: int = 0
    revenue: int = 0
    version: int = 0
    profile_id: str | None = None
    entry_path: str | None = None
    exit_path: str | None = None
    referrer: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    utm_term: str | None = None
    utm_content: str | None = None


@dataclass(slots=True)
class DeviceState:
    """What the store keeps per (project, device): the open session, if any, and what it
    takes to judge a late event after a session closed."""

    newest: int  # the newest event time of the device
    touched_at: int  # when this state last changed (receive time; vacuum's age)
    session: OpenSession | None = None
    closed_last: int | None = None  # the last event time of the device's last closed session


@dataclass(frozen=True, slots=True)
class Pointer:
    """A profile's most recent open session: on which device, which session, how recent."""

    device: str
    session_id: str
    ts: int


class Placement(NamedTuple):
    """What became of one hit: its status, its session (if joined) and device (if any).
    (A tuple: one is made per event, and a tuple is made in half the time.)"""

    status: Status
    session_id: str | None = None
    device: str | None = None


@dataclass(slots=True)
class SessionRow:
    """A session as the sink stores it. `ended_at` is the time of its last event so far;
    `closed` says whether it can still grow."""

    id: str
    project_id: str
    device_id: str
    profile_id: str | None
    started_at: int
    ended_at: int
    event_count: int
    screen_view_count: int
    entry_path: str | None
    exit_path: str | None
    referrer: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_term: str | None
    utm_content: str | None
    revenue: int
    version: int
    closed: bool

    @property
    def duration_ms(self) -> int:
        return self.ended_at - self.started_at

    @property
    def is_bounce(self) -> bool:
        """At most one screen view, and nothing else happened (docs/analytics.md)."""
        return self.screen_view_count <= 1 and self.event_count == self.screen_view_count

    @classmethod
    def of(cls, project: str, device: str, session: OpenSession, closed: bool) -> SessionRow:
        s = session
        return cls(
            s.id, project, device, s.profile_id, s.start, s.last, s.events, s.screen_views,
            s.entry_path, s.exit_path, s.referrer, s.utm_source, s.utm_medium, s.utm_campaign,
            s.utm_term, s.utm_content, s.revenue, s.version, closed,
        )  # fmt: skip


@dataclass(slots=True)
class OutboxEntry:
    """What one atomic step produced, waiting for the sink: the hits of an ingest batch and
    where each went, the latest row of every session it touched, and the sessions it opened
    (with their `session_start` time) and closed (with their `session_end` time)."""

    id: str
    project: str
    hits: list[Hit]
    placements: list[Placement]
    sessions: list[SessionRow]
    started: list[tuple[str, int]]
    ended: list[tuple[str, int]]


@dataclass(slots=True)
class IngestOutcome:
    joined: int = 0
    late: int = 0
    duplicate: int = 0
    unattached: int = 0
    started: int = 0
    ended: int = 0


@dataclass(slots=True)
class VacuumReport:
    closed: int = 0  # open sessions older than the age: closed, their session_end emitted
    states: int = 0  # device states (closed-session memories) older than the age, removed
    index: int = 0  # idle-index entries naming no open session, removed
    pointers: int = 0  # profile pointers naming no open session, removed
    dedup: int = 0  # remembered event ids older than the dedup window, removed

    def total(self) -> int:
        return self.closed + self.states + self.index + self.pointers + self.dedup


@runtime_checkable
class SessionizeBackend(Protocol):
    """Each method is one atomic step per project, across processes sharing the store."""

    async def sessionize(
        self, project: str, rules: Rules, hits: Sequence[Hit], now: int, nonce: str
    ) -> IngestOutcome:
        """Place every hit (see the module's rules), in order, and write one `OutboxEntry`.
        A session opened for hit i gets the id `nonce + base-36 of i` (nonces are random:
        the ids are unique without the backend drawing random numbers)."""
        ...

    async def close_idle(self, project: str, rules: Rules, now: int, limit: int) -> int:
        """Close up to `limit` sessions idle past `rules.idle_cutoff(watermark, now)`; the
        number closed. Racing callers close each session once."""
        ...

    async def vacuum(
        self, project: str, rules: Rules, now: int, older_than_ms: int, limit: int
    ) -> VacuumReport:
        """Clean up to `limit` of each kind (see `VacuumReport`)."""
        ...

    async def outbox(self, project: str, limit: int) -> list[OutboxEntry]:
        """The oldest `limit` entries not yet acknowledged, oldest first."""
        ...

    async def ack(self, project: str, entry_ids: Sequence[str]) -> None:
        """Drop entries the sink has stored (idempotent)."""
        ...

    async def projects(self) -> list[str]:
        """Every project that ever ingested (for reapers and drainers)."""
        ...

    async def open_sessions(self, project: str) -> int: ...

    async def idle_sessions(self, project: str, cutoff: int) -> int:
        """How many open sessions' last event is before `cutoff`: with the wall-clock
        backstop as cutoff, the sessions a reaper owes a close (`sessionary check`)."""
        ...

    async def watermark(self, project: str) -> int | None:
        """The newest event time the project has seen, if any."""
        ...


def session_id(nonce: str, index: int) -> str:
    return nonce + _base36(index)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@dataclass(slots=True)
class Sessionizing:
    """The rules, run over the state of one project held in dicts (for backends that run
    Python inside their atomic step). The memory backend hands in its live dicts; SQLite
    hands in what it loaded for the batch and writes back what `dirty_*` name.

    `devices` must hold every device the hits may touch (their candidates, and the devices
    the profiles in `pointers` point to); `pointers` every profile of the hits and of the
    open sessions in `devices`; `seen` the remembered ids among the hits' client-chosen ids
    (id -> when seen). A pointer set to None is to be deleted."""

    project: str
    rules: Rules
    now: int
    devices: dict[str, DeviceState | None]
    pointers: dict[str, Pointer | None]
    seen: dict[str, int]
    watermark: int | None
    dirty_devices: set[str] = field(default_factory=set)
    dirty_pointers: set[str] = field(default_factory=set)
    new_seen: list[str] = field(default_factory=list)
    touched: dict[str, str] = field(default_factory=dict)  # session id -> device
    rows: dict[str, SessionRow] = field(default_factory=dict)  # closed here: final rows
    started: list[tuple[str, int]] = field(default_factory=list)
    ended: list[tuple[str, int]] = field(default_factory=list)

    # -- ingest -------------------------------------------------------------------------------

    def ingest(
        self, hits: Sequence[Hit], nonce: str
    ) -> tuple[list[Placement], IngestOutcome, OutboxEntry]:
        placements = [self._place(hit, nonce, i) for i, hit in enumerate(hits)]
        outcome = IngestOutcome(started=len(self.started), ended=len(self.ended))
        for placement in placements:
            if placement.status == JOINED:
                outcome.joined += 1
            elif placement.status == LATE:
                outcome.late += 1
            elif placement.status == DUPLICATE:
                outcome.duplicate += 1
            else:
                outcome.unattached += 1
        return placements, outcome, self.entry("", list(hits), placements)

    def entry(self, entry_id: str, hits: list[Hit], placements: list[Placement]) -> OutboxEntry:
        """The outbox entry of what happened so far: the latest row of every session."""
        rows = list(self.rows.values())
        for sid, device in self.touched.items():
            if sid in self.rows:
                continue
            state = self.devices.get(device)
            if state is not None and state.session is not None and state.session.id == sid:
                rows.append(SessionRow.of(self.project, device, state.session, closed=False))
        return OutboxEntry(entry_id, self.project, hits, placements, rows, self.started, self.ended)

    def _place(self, hit: Hit, nonce: str, index: int) -> Placement:
        if hit.dedup:
            seen_at = self.seen.get(hit.event_id)
            if seen_at is not None and self.now - seen_at < self.rules.dedup_ms:
                return Placement(DUPLICATE)
            self.seen[hit.event_id] = self.now
            self.new_seen.append(hit.event_id)
        if not hit.devices:
            return self._place_by_profile(hit)
        device = hit.devices[0]
        state = self.devices.get(device)
        if state is None or state.session is None:  # an open session under another candidate?
            for other in hit.devices[1:]:
                found = self.devices.get(other)
                if found is not None and found.session is not None:
                    device, state = other, found
                    break
        ts = hit.ts
        if state is None:
            state = self.devices[device] = DeviceState(newest=ts, touched_at=self.now)
        elif ts < state.newest - self.rules.lateness_ms:
            return Placement(LATE, None, device)
        session = state.session
        if session is None:
            if state.closed_last is not None and ts <= state.closed_last:
                return Placement(LATE, None, device)  # a closed session never reopens
            session = self._open(state, hit, nonce, index)
        else:
            fit = self._fit(session, ts)
            if fit == _AFTER:
                session.last = ts
                session.exit_path = hit.path
            elif fit == _BEFORE:
                if state.closed_last is not None and ts <= state.closed_last:
                    return Placement(LATE, None, device)  # sessions of a device never overlap
                self._move_start(session, hit)
            elif fit == _BEYOND:
                self._close(device, state)
                session = self._open(state, hit, nonce, index)
            elif fit == _TOO_EARLY:
                return Placement(LATE, None, device)
        self._count(device, state, session, hit)
        return Placement(JOINED, session.id, device)

    def _fit(self, session: OpenSession, ts: int) -> int:
        """Where `ts` falls for an open session: the one predicate of the rules."""
        rules = self.rules
        if ts > session.last:
            if ts - session.last <= rules.timeout_ms and (
                rules.max_length_ms is None or ts - session.start <= rules.max_length_ms
            ):
                return _AFTER
            return _BEYOND
        if ts >= session.start:
            return _INSIDE
        if session.start - ts <= rules.timeout_ms and (
            rules.max_length_ms is None or session.last - ts <= rules.max_length_ms
        ):
            return _BEFORE
        return _TOO_EARLY

    def _place_by_profile(self, hit: Hit) -> Placement:
        """A profile-only event joins the profile's open session if its timing fits."""
        assert hit.profile_id is not None
        pointer = self.pointers.get(hit.profile_id)
        if pointer is None:
            return Placement(UNATTACHED)
        state = self.devices.get(pointer.device)
        session = None if state is None else state.session
        if state is None or session is None or session.id != pointer.session_id:
            self.pointers[hit.profile_id] = None  # it named a session that is gone
            self.dirty_pointers.add(hit.profile_id)
            return Placement(UNATTACHED)
        if hit.ts < state.newest - self.rules.lateness_ms:
            return Placement(LATE, None, pointer.device)
        fit = self._fit(session, hit.ts)
        if fit == _AFTER:
            session.last = hit.ts
            session.exit_path = hit.path
        elif fit == _BEFORE:
            if state.closed_last is not None and hit.ts <= state.closed_last:
                return Placement(LATE, None, pointer.device)  # never overlapping a closed one
            self._move_start(session, hit)
        elif fit != _INSIDE:
            return Placement(UNATTACHED)  # a server-side event never opens or splits one
        self._count(pointer.device, state, session, hit)
        return Placement(JOINED, session.id, pointer.device)

    def _open(self, state: DeviceState, hit: Hit, nonce: str, index: int) -> OpenSession:
        session = OpenSession(
            session_id(nonce, index), hit.ts, hit.ts,
            entry_path=hit.path, exit_path=hit.path, referrer=hit.referrer,
            utm_source=hit.utm_source, utm_medium=hit.utm_medium,
            utm_campaign=hit.utm_campaign, utm_term=hit.utm_term, utm_content=hit.utm_content,
        )  # fmt: skip
        state.session = session
        self.started.append((session.id, hit.ts - 1))
        return session

    @staticmethod
    def _move_start(session: OpenSession, hit: Hit) -> None:
        session.start = hit.ts
        session.entry_path = hit.path
        if hit.referrer is not None or _has_utm(hit):
            session.referrer = hit.referrer
            session.utm_source, session.utm_medium = hit.utm_source, hit.utm_medium
            session.utm_campaign, session.utm_term = hit.utm_campaign, hit.utm_term
            session.utm_content = hit.utm_content

    def _count(self, device: str, state: DeviceState, session: OpenSession, hit: Hit) -> None:
        session.events += 1
        if hit.name == SCREEN_VIEW:
            session.screen_views += 1
        session.revenue += hit.revenue
        session.version += 1
        if hit.ts > state.newest:
            state.newest = hit.ts
        state.touched_at = self.now
        if self.watermark is None or hit.ts > self.watermark:
            self.watermark = hit.ts
        self.dirty_devices.add(device)
        self.touched[session.id] = device
        profile = hit.profile_id
        if profile is not None:  # identify: the session is the profile's from now on
            session.profile_id = profile
            pointer = self.pointers.get(profile)
            if pointer is None or hit.ts >= pointer.ts:  # the profile's most recent session
                self.pointers[profile] = Pointer(device, session.id, hit.ts)
                self.dirty_pointers.add(profile)

    def _close(self, device: str, state: DeviceState) -> None:
        session = state.session
        assert session is not None
        session.version += 1
        self.rows[session.id] = SessionRow.of(self.project, device, session, closed=True)
        self.ended.append((session.id, session.last + 1))
        state.closed_last = session.last
        state.session = None
        state.touched_at = self.now
        self.dirty_devices.add(device)
        profile = session.profile_id
        if profile is not None:
            pointer = self.pointers.get(profile)
            if pointer is not None and pointer.session_id == session.id:
                self.pointers[profile] = None
                self.dirty_pointers.add(profile)

    # -- reaping and vacuum ---------------------------------------------------------------------

    def close_if_idle(self, device: str, cutoff: int) -> bool:
        """Close the device's open session if its last event is before `cutoff` (the
        reaper's re-check, inside its atomic step)."""
        state = self.devices.get(device)
        if state is None or state.session is None or state.session.last >= cutoff:
            return False
        self._close(device, state)
        return True


def _has_utm(hit: Hit) -> bool:
    return any(
        v is not None
        for v in (hit.utm_source, hit.utm_medium, hit.utm_campaign, hit.utm_term, hit.utm_content)
    )
