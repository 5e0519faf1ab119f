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

import dataclasses
import types
from base64 import b64decode, b64encode
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import (
    Any,
    Final,
    Literal,
    NamedTuple,
    Protocol,
    get_args,
    get_origin,
    get_type_hints,
    runtime_checkable,
)

__all__ = [
    "HIT_SHAPE",
    "OPEN_SESSION_SHAPE",
    "SESSION_ROW_SHAPE",
    "DeviceState",
    "Field",
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
    "compact_hit_values",
    "compiled",
    "getter",
    "hit_values",
    "hits_of",
    "names",
    "shape",
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

    Its fields are saved by position (`shape`): a new one goes at the end, with a default.
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
    """The state of a device's open session (times are event times, ms). Its fields are
    saved by position (`shape`): a new one goes at the end, with a default."""

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


_DUPLICATE: Final = Placement(DUPLICATE)
_UNATTACHED: Final = Placement(UNATTACHED)


@dataclass(slots=True)
class SessionRow:
    """A session as the sink stores it. `ended_at` is the time of its last event so far;
    `closed` says whether it can still grow. Its fields are saved by position (`shape`): a
    new one goes at the end, with a default."""

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
        """A row of the session as it is now. (Set field by field past `__init__`: a batch
        makes a row per session it touches, and a call with 19 arguments costs more than
        the row.)"""
        s, row = session, object.__new__(cls)
        row.id = s.id
        row.project_id = project
        row.device_id = device
        row.profile_id = s.profile_id
        row.started_at = s.start
        row.ended_at = s.last
        row.event_count = s.events
        row.screen_view_count = s.screen_views
        row.entry_path = s.entry_path
        row.exit_path = s.exit_path
        row.referrer = s.referrer
        row.utm_source = s.utm_source
        row.utm_medium = s.utm_medium
        row.utm_campaign = s.utm_campaign
        row.utm_term = s.utm_term
        row.utm_content = s.utm_content
        row.revenue = s.revenue
        row.version = s.version
        row.closed = closed
        return row


@dataclass(frozen=True, slots=True)
class Field:
    """A field of a row shape: its name, the type of its values (str, int, bool, bytes, or
    tuple for a tuple of strings), whether it may also be None, and its default
    (`dataclasses.MISSING` for none): what a row stored before the field was added reads as.
    Two fields are equal by the first three (the default is not part of the layout)."""

    name: str
    kind: type
    optional: bool
    default: object = field(default_factory=lambda: dataclasses.MISSING, compare=False)


_KINDS: Final = frozenset({str, int, bool, bytes, tuple})


def shape(cls: type) -> tuple[Field, ...]:
    """The fields of a dataclass, in declaration order, as the stores and the sinks lay it out.

    A dataclass is the one definition of its shape (mypy checks every use of it by name); the
    positions of the stores' encodings (SQLite's saved states and outbox, the Redis outbox),
    the sinks' columns and their tables are read from it here, so a field is added in one
    place. What is saved holds the fields by position: a new field goes at the end, with a
    default, so that what an older version saved reads as it did (the new field at its
    default)."""
    hints = get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        kind, optional = hints[f.name], False
        if isinstance(kind, types.UnionType):
            rest = [arg for arg in get_args(kind) if arg is not type(None)]
            kind, optional = rest[0], len(rest) < len(get_args(kind))
        kind = get_origin(kind) or kind
        if kind not in _KINDS or not isinstance(kind, type):
            raise TypeError(f"{cls.__name__}.{f.name}: a row holds no {hints[f.name]}")
        default = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        found.append(Field(f.name, kind, optional, default))
    return tuple(found)


def names(fields: Sequence[Field]) -> tuple[str, ...]:
    return tuple(f.name for f in fields)


HIT_SHAPE: Final = shape(Hit)
OPEN_SESSION_SHAPE: Final = shape(OpenSession)
SESSION_ROW_SHAPE: Final = shape(SessionRow)


def compiled(params: str, expression: str, scope: dict[str, Any]) -> Callable[..., Any]:
    """A function of `params` returning `expression`, compiled from source (as `dataclasses`
    makes `__init__`), names other than the parameters looked up in `scope`. The encodings
    derived from a shape run per event or per row: spelt out field by field, a getter takes
    60% of the time of `operator.attrgetter` of the same names, and far less than a loop."""
    exec(f"def function({params}):\n    return {expression}\n", scope)  # noqa: S102
    function: Callable[..., Any] = scope.pop("function")
    return function


def getter(fields: Sequence[Field]) -> Callable[[Any], tuple[Any, ...]]:
    """The values of `fields` of an object, as a tuple."""
    return compiled("x", "(" + "".join(f"x.{f.name}, " for f in fields) + ")", {})


def _text(raw: bytes) -> str | list[str]:
    """Bytes for JSON: their text, or [base64] when they are not UTF-8."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return [b64encode(raw).decode()]


def _hit_encoding(one_device_as_text: bool) -> Callable[[Hit], tuple[Any, ...]]:
    """`hit_values` (or `compact_hit_values`), made from `HIT_SHAPE`."""
    values = []
    for f in HIT_SHAPE:
        value = f"h.{f.name}"
        if f.kind is bytes:
            value = f"_text({value})"
        elif f.kind is tuple and one_device_as_text:
            value = f"(t[0] if len(t := {value}) == 1 else t)"
        values.append(value)
    return compiled("h", f"({', '.join(values)})", {"_text": _text})


def _hit_decoding() -> Callable[[Iterable[Sequence[Any]]], list[Hit]]:
    """`hits_of`, made from `HIT_SHAPE` (one comprehension, the conversions inline: a call
    per hit, or per field, was a third of its time)."""
    saved = []
    for at, f in enumerate(HIT_SHAPE):
        value = f"v[{at}]"
        if f.kind is bytes:
            value = f"(x.encode() if type(x := {value}) is str else b64decode(x[0]))"
        elif f.kind is tuple:
            value = f"((x,) if type(x := {value}) is str else tuple(x))"
        saved.append(value)
    defaults = [  # as saved
        _text(f.default) if type(f.default) is bytes else f.default for f in dataclasses.fields(Hit)
    ]
    scope: dict[str, Any] = {"Hit": Hit, "b64decode": b64decode}
    # saved before a field was added: the missing ones at their defaults
    scope["_padded"] = lambda v: [[*v, *defaults[len(v) :]]]
    hit = f"Hit({', '.join(saved)})"
    expression = f"[{hit} if len(v) >= {len(saved)} else hits_of(_padded(v))[0] for v in saved]"
    scope["hits_of"] = decode = compiled("saved", expression, scope)
    return decode


#: A hit as the values of `HIT_SHAPE`, for the JSON of an outbox (SQLite's, Redis'): its
#: properties as their text, or [base64] when they are not UTF-8.
hit_values: Final = _hit_encoding(one_device_as_text=False)
#: The same, a single device as a string (then `hits_of` allocates no list for it).
compact_hit_values: Final = _hit_encoding(one_device_as_text=True)
#: The hits of values of `hit_values` or `compact_hit_values`. Fewer values (saved before a
#: field was added) leave the rest at their defaults.
hits_of: Final = _hit_decoding()


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
    """What a step did: its events' fates counted, and which of its hits (their indices in
    `hits`, ascending) were late and which duplicates, so a step that holds several senders'
    hits tells each its own (`Sessionizer.ingest_together`). Only those are named: the common
    step has none, and naming every accepted event would grow the reply with the batch."""

    joined: int = 0
    late: int = 0
    duplicate: int = 0
    unattached: int = 0
    started: int = 0
    ended: int = 0
    late_at: tuple[int, ...] = ()
    duplicate_at: tuple[int, ...] = ()


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
        """Place every hit, in order (the rules of the module). One loop with the rules inline
        and what they read in locals: a batch runs it per event, and a call or an attribute
        lookup per rule was most of its cost."""
        rules, now, devices, touched = self.rules, self.now, self.devices, self.touched
        timeout, max_length, lateness = rules.timeout_ms, rules.max_length_ms, rules.lateness_ms
        find, newest = devices.get, self.watermark
        placements: list[Placement] = []
        place = placements.append
        new = tuple.__new__  # Placement(...) but without its Python-level __new__: half the cost
        late_at: list[int] = []
        duplicate_at: list[int] = []
        unattached = 0
        for index, hit in enumerate(hits):
            if hit.dedup:
                seen_at = self.seen.get(hit.event_id)
                if seen_at is not None and now - seen_at < rules.dedup_ms:
                    place(_DUPLICATE)
                    duplicate_at.append(index)
                    continue
                self.seen[hit.event_id] = now
                self.new_seen.append(hit.event_id)
            ts, candidates = hit.ts, hit.devices
            if candidates:
                device = candidates[0]
                state = find(device)
                if (state is None or state.session is None) and len(candidates) > 1:
                    for other in candidates[1:]:  # an open session under another candidate?
                        found = find(other)
                        if found is not None and found.session is not None:
                            device, state = other, found
                            break
                if state is None:
                    state = devices[device] = DeviceState(ts, now)
                elif ts < state.newest - lateness:
                    place(new(Placement, (LATE, None, device)))
                    late_at.append(index)
                    continue
                session = state.session
            else:  # a profile-only event joins the profile's open session if its timing fits
                joinable = self._profile_session(hit)
                if joinable is None:
                    place(_UNATTACHED)
                    unattached += 1
                    continue
                device, state, session = joinable
                if ts < state.newest - lateness:
                    place(new(Placement, (LATE, None, device)))
                    late_at.append(index)
                    continue
            if session is None:
                if state.closed_last is not None and ts <= state.closed_last:
                    place(new(Placement, (LATE, None, device)))  # a closed session never reopens
                    late_at.append(index)
                    continue
                session = self._open(state, hit, nonce, index)
            elif (  # the common case of `_fit`, _AFTER, first
                session.last < ts <= session.last + timeout
                and (max_length is None or ts - session.start <= max_length)
            ):
                session.last = ts
                session.exit_path = hit.path
            else:
                fit = self._fit(session, ts)
                if fit == _BEFORE:
                    if state.closed_last is not None and ts <= state.closed_last:
                        place(new(Placement, (LATE, None, device)))  # sessions never overlap
                        late_at.append(index)
                        continue
                    self._move_start(session, hit)
                elif fit == _BEYOND and candidates:
                    self._close(device, state)
                    session = self._open(state, hit, nonce, index)
                elif fit != _INSIDE:  # too early; or beyond, for a profile-only event
                    if candidates:
                        place(new(Placement, (LATE, None, device)))
                        late_at.append(index)
                    else:  # a server-side event never opens or splits a session
                        place(_UNATTACHED)
                        unattached += 1
                    continue
            # the hit joins `session`: count it
            session.events += 1
            if hit.name == SCREEN_VIEW:
                session.screen_views += 1
            session.revenue += hit.revenue
            session.version += 1
            if ts > state.newest:
                state.newest = ts
            state.touched_at = now
            if newest is None or ts > newest:
                newest = ts
            sid = session.id
            touched[sid] = device  # its device is dirty (marked below, in one go)
            if hit.profile_id is not None:
                self._identify(device, session, hit.profile_id, ts)
            place(new(Placement, (JOINED, sid, device)))
        self.watermark = newest
        self.dirty_devices.update(touched.values())
        late, duplicate = len(late_at), len(duplicate_at)
        outcome = IngestOutcome(
            len(placements) - late - duplicate - unattached, late, duplicate, unattached,
            len(self.started), len(self.ended), tuple(late_at), tuple(duplicate_at),
        )  # fmt: skip
        return placements, outcome, self.entry("", list(hits), placements)

    def entry(self, entry_id: str, hits: list[Hit], placements: list[Placement]) -> OutboxEntry:
        """The outbox entry of what happened so far: the latest row of every session."""
        closed, devices, project, of = self.rows, self.devices, self.project, SessionRow.of
        rows = list(closed.values())
        for sid, device in self.touched.items():
            if sid not in closed:
                state = devices.get(device)
                session = None if state is None else state.session
                if session is not None and session.id == sid:
                    rows.append(of(project, device, session, False))
        return OutboxEntry(entry_id, project, hits, placements, rows, self.started, self.ended)

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

    def _profile_session(self, hit: Hit) -> tuple[str, DeviceState, OpenSession] | None:
        """The open session a profile-only event may join: its profile's most recent (the
        device, its state and the session), or None."""
        profile = hit.profile_id
        assert profile is not None
        pointer = self.pointers.get(profile)
        if pointer is None:
            return None
        state = self.devices.get(pointer.device)
        if state is None or state.session is None or state.session.id != pointer.session_id:
            self.pointers[profile] = None  # it named a session that is gone
            self.dirty_pointers.add(profile)
            return None
        return pointer.device, state, state.session

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

    def _identify(self, device: str, session: OpenSession, profile: str, ts: int) -> None:
        """A joined hit with a profile id: the session is the profile's from now on."""
        session.profile_id = profile
        pointer = self.pointers.get(profile)
        if pointer is None or ts >= pointer.ts:  # the profile's most recent session
            self.pointers[profile] = Pointer(device, session.id, ts)
            self.dirty_pointers.add(profile)

    def _close(self, device: str, state: DeviceState) -> None:
        session = state.session
        assert session is not None
        session.version += 1
        self.rows[session.id] = SessionRow.of(self.project, device, session, True)
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
