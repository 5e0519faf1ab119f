"""The public API: `connect`, `Store` and `Namespace`.

The store validates everything before any I/O (ids, names, payloads), encodes data, reads the
clock once per operation, calls the backend, and tells listeners what happened. Backends only
store bytes and keep their indexes (see `sessionary.contract`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any, Literal

from sessionary import ids
from sessionary.backends import open_backend
from sessionary.clock import SYSTEM_CLOCK, Clock, to_ms
from sessionary.codec import EMPTY_OBJECT, encode_data, encode_metadata, encode_value
from sessionary.contract import (
    KEEP,
    NO_LIMITS,
    Backend,
    Keep,
    Lifetime,
    LogItem,
    LogLimits,
    Record,
)
from sessionary.counters import Counters
from sessionary.errors import (
    InvalidCursor,
    PayloadTooLarge,
    SessionExists,
    SessionNotFound,
    StoreUnavailable,
    ValidationError,
)
from sessionary.events import EventBus, Listener
from sessionary.logs import (
    Cursor,
    Event,
    LogEvent,
    LogHub,
    LogPage,
    LogReset,
    check_producer,
    check_type,
)
from sessionary.model import ConsumeResult, EventKind, Session, SessionEvent
from sessionary.sessionize import SessionizeBackend

__all__ = ["DEFAULT_MAX_PAYLOAD", "DEFAULT_URL", "Namespace", "Store", "connect"]

OnUnavailable = Literal["fail_closed", "fail_open"]
_FOLLOW_PAGE = 1000
_SECRETS_NAMESPACE = "sessionary.secrets"
_SECRETS_LIFETIME = timedelta(days=3650)

DEFAULT_URL = "sqlite:///sessionary.db"
DEFAULT_MAX_PAYLOAD = 1 << 20  # 1 MiB, encoded

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_COUNTER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_SUBJECT_LENGTH = 256


async def connect(
    url: str | Backend | None = None,
    *,
    clock: Clock | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> Store:
    """Open a store.

    `url` is "sqlite:///relative.db", "sqlite:////absolute.db", "memory://",
    "redis://host:6379/0" or "rediss://..." (options as query parameters, see the README), or
    a `Backend` object of your own. The default is an SQLite file `sessionary.db` in the
    working directory.
    """
    if url is None or isinstance(url, str):
        backend = await open_backend(url or DEFAULT_URL)
    else:
        backend = url
    return Store(backend, clock=clock, max_payload=max_payload)


class Store:
    """A connected backend, the clock, lifecycle listeners, and the namespaces on top."""

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Clock | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        if max_payload <= 0:
            raise ValueError("max_payload is a positive number of bytes")
        self.backend = backend
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.max_payload = max_payload
        self._events = EventBus()
        self._namespaces: dict[str, Namespace] = {}
        self._counters: dict[str, Counters] = {}
        self._hub = LogHub(backend, self.clock)

    def namespace(
        self,
        name: str,
        *,
        idle_ttl: timedelta | None = None,
        absolute_ttl: timedelta | None = None,
        id_prefix: str = "",
        max_payload: int | None = None,
        on_unavailable: OnUnavailable = "fail_closed",
        log_max_length: int | None = 10_000,
        log_max_age: timedelta | None = None,
    ) -> Namespace:
        """The namespace `name` with its policy. Asking again with the same policy returns the
        same object; asking with another policy is an error (one name, one policy).

        `on_unavailable` tells the web layer what to do when the store cannot be reached:
        refuse the request (503, the default) or go on without a session.
        `log_max_length` and `log_max_age` bound each session's event log (see
        `sessionary.logs`): older events are trimmed as new ones arrive.
        """
        if not isinstance(name, str) or not _NAMESPACE_RE.fullmatch(name):
            raise ValueError(
                f"namespace name {name!r} must match [A-Za-z0-9][A-Za-z0-9_.:-]{{0,63}}"
            )
        lifetime = Lifetime(_ttl_ms("idle_ttl", idle_ttl), _ttl_ms("absolute_ttl", absolute_ttl))
        cap = self.max_payload if max_payload is None else max_payload
        if cap <= 0:
            raise ValueError("max_payload is a positive number of bytes")
        if on_unavailable not in ("fail_closed", "fail_open"):
            raise ValueError("on_unavailable is 'fail_closed' or 'fail_open'")
        if log_max_length is not None and (type(log_max_length) is not int or log_max_length < 1):
            raise ValueError("log_max_length is None or an int >= 1")
        limits = LogLimits(log_max_length, _ttl_ms("log_max_age", log_max_age))
        wanted = Namespace(
            self, name, lifetime, ids.check_prefix(id_prefix), cap, on_unavailable, limits
        )
        existing = self._namespaces.get(name)
        if existing is None:
            self._namespaces[name] = wanted
            return wanted
        if existing.policy_key != wanted.policy_key:
            raise ValueError(f"namespace {name!r} is already open with another policy")
        return existing

    def counters(self, group: str) -> Counters:
        """The counter group `group` (see `sessionary.counters`)."""
        found = self._counters.get(group)
        if found is None:
            found = self._counters[group] = Counters(self, group)
        return found

    @property
    def sessionization(self) -> SessionizeBackend:
        """The analytics storage contract (`sessionary.sessionize`) of this store's backend:
        the one feature contract beside sessions, counters and logs, for a batch ingest
        that must decide thousands of events in one atomic step."""
        backend = self.backend
        if not isinstance(backend, SessionizeBackend):
            raise TypeError(f"{backend!r} does not implement sessionary.sessionize")
        return backend

    async def shared_secret(self, name: str, lifetime: timedelta = _SECRETS_LIFETIME) -> str:
        """A random secret (64 hex digits) that every process sharing this store sees the same,
        created by whichever asks first; a new one once `lifetime` has passed."""
        keep = self.namespace(_SECRETS_NAMESPACE, absolute_ttl=_SECRETS_LIFETIME)
        session_id = ids.derived(name)
        for _ in range(3):
            found = await keep.get(session_id)
            if found is not None:
                return str(found.data["secret"])
            expires_at = self.clock.now_ms() + to_ms(min(lifetime, _SECRETS_LIFETIME))
            try:
                created = await keep.create(
                    id=session_id, data={"secret": secrets.token_hex(32)}, expires_at=expires_at
                )
                return str(created.data["secret"])
            except SessionExists:
                if await keep.get(session_id) is None:  # an expired one not yet reaped
                    await keep.delete(session_id)
        raise StoreUnavailable(f"could not settle the shared secret {name!r}")

    def on(self, kind: EventKind, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` (sync or async) after each `kind` change this process makes:
        "created", "updated", "rotated", "deleted" or "expired". Returns an unsubscribe
        function."""
        return self._events.on(kind, listener)

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the backend answers."""
        await self.backend.ping()

    async def close(self) -> None:
        await self._hub.close()
        await self.backend.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Store({self.backend!r})"


def _ttl_ms(what: str, ttl: timedelta | None) -> int | None:
    if ttl is None:
        return None
    if not isinstance(ttl, timedelta):
        raise ValueError(f"{what} is a datetime.timedelta, not {type(ttl).__name__}")
    ms = to_ms(ttl)
    if ms <= 0:
        raise ValueError(f"{what} must be at least 1 ms")
    return ms


class Namespace:
    """One application space of sessions under one policy. Get it from `Store.namespace`."""

    def __init__(
        self,
        store: Store,
        name: str,
        lifetime: Lifetime,
        id_prefix: str,
        max_payload: int,
        on_unavailable: OnUnavailable = "fail_closed",
        log_limits: LogLimits = NO_LIMITS,
    ) -> None:
        self.store = store
        self.name = name
        self.lifetime = lifetime
        self.id_prefix = id_prefix
        self.max_payload = max_payload
        self.on_unavailable = on_unavailable
        self.log_limits = log_limits
        self._backend = store.backend
        self._clock = store.clock
        self._events = store._events

    @property
    def policy_key(self) -> tuple[object, ...]:
        return (
            self.lifetime,
            self.id_prefix,
            self.max_payload,
            self.on_unavailable,
            self.log_limits,
        )

    @property
    def idle_ttl(self) -> timedelta | None:
        ms = self.lifetime.idle_ms
        return None if ms is None else timedelta(milliseconds=ms)

    @property
    def absolute_ttl(self) -> timedelta | None:
        ms = self.lifetime.absolute_ms
        return None if ms is None else timedelta(milliseconds=ms)

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, lifetime={self.lifetime})"

    # -- the operations -------------------------------------------------------------------

    async def create(
        self,
        *,
        subject: str | None = None,
        data: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        id: str | None = None,
        created_at: int | None = None,
        expires_at: int | None = None,
    ) -> Session:
        """A new session with a fresh id.

        For migrations and well-known records: `id` names the id (`SessionExists` if taken),
        `created_at` back-dates the creation (the absolute cap runs from it), and `expires_at`
        ends the session sooner than the policy would (it never extends it).
        """
        session_id = ids.new_id(self.id_prefix) if id is None else self._check_id(id)
        subject = _check_subject(subject)
        encoded_data = EMPTY_OBJECT if data is None else self._encode_data(data)
        encoded_metadata = EMPTY_OBJECT if metadata is None else self._encode_metadata(metadata)
        now = self._clock.now_ms()
        created = now if created_at is None else _check_ms("created_at", created_at)
        if created > now:
            raise ValidationError("created_at cannot be in the future")
        deadline = self.lifetime.expires_at(created, now)
        if expires_at is not None:
            deadline = min(deadline, _check_ms("expires_at", expires_at))
        if deadline <= now:
            raise ValidationError("the session would be born expired")
        record = Record(
            id=session_id,
            subject=subject,
            created_at=created,
            last_seen_at=now,
            expires_at=deadline,
            version=1,
            data=encoded_data,
            metadata=encoded_metadata,
            counters={},
        )
        await self._backend.create(self.name, record)
        session = Session.from_record(self.name, record)
        if self._events.wants("created"):
            await self._events.emit(SessionEvent("created", session))
        return session

    async def get(self, session_id: str) -> Session | None:
        """The live session, or None. A peek: it does not extend the session's life."""
        session_id = self._check_id(session_id)
        record = await self._backend.get(self.name, session_id, self._clock.now_ms())
        return None if record is None else Session.from_record(self.name, record)

    async def touch(self, session_id: str) -> Session | None:
        """Record activity (slide the idle expiry, never past the absolute cap) and return the
        session, in one round trip; None if it is unknown or expired."""
        session_id = self._check_id(session_id)
        record = await self._backend.touch(
            self.name, session_id, self._clock.now_ms(), self.lifetime
        )
        return None if record is None else Session.from_record(self.name, record)

    async def update(
        self,
        session_id: str,
        *,
        data: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        subject: str | Keep | None = KEEP,
        expected_version: int | None = None,
        expires_at: int | None = None,
        append: Sequence[Event] = (),
    ) -> Session:
        """Replace data and/or metadata (None keeps them), set or clear the subject, end the
        session sooner (`expires_at`: never later than its policy allows), and append events
        to its log, all in one atomic step.

        With `expected_version`, the write happens only if the stored version is that one,
        else `VersionConflict` and nothing changes (no event either): a status change and the
        event announcing it land together or not at all. Records activity like `touch`.
        """
        session_id = self._check_id(session_id)
        encoded_data = None if data is None else self._encode_data(data)
        encoded_metadata = None if metadata is None else self._encode_metadata(metadata)
        new_subject = subject if subject is KEEP else _check_subject(subject)
        if expected_version is not None and (
            type(expected_version) is not int or expected_version < 1
        ):
            raise ValidationError("expected_version is a positive int")
        if expires_at is not None:
            _check_ms("expires_at", expires_at)
        items = self._log_items(append)
        record = await self._backend.update(
            self.name,
            session_id,
            self._clock.now_ms(),
            self.lifetime,
            data=encoded_data,
            metadata=encoded_metadata,
            subject=new_subject,
            expected_version=expected_version,
            expires_at=expires_at,
            append=items,
            limits=self.log_limits,
        )
        session = Session.from_record(self.name, record)
        if self._events.wants("updated"):
            await self._events.emit(SessionEvent("updated", session))
        return session

    # -- the session's event log (see sessionary.logs) ----------------------------------------

    async def append(
        self,
        session_id: str,
        type: str,
        data: Any = None,
        *,
        producer: str | None = None,
        seq: int | None = None,
        final: bool = False,
    ) -> Cursor | None:
        """Append one event to the session's log; its cursor, or None for a producer's retry
        that was stored already. `LogClosed` after a final event. Does not extend the
        session's life."""
        (cursor,) = await self.extend(
            session_id, [Event(type, data, producer=producer, seq=seq, final=final)]
        )
        return cursor

    async def extend(self, session_id: str, events: Sequence[Event]) -> list[Cursor | None]:
        """Append several events in one atomic step (one round trip)."""
        session_id = self._check_id(session_id)
        items = self._log_items(events)
        if not items:
            return []
        seqs = await self._backend.append(
            self.name, session_id, self._clock.now_ms(), items, self.log_limits
        )
        return [None if seq is None else Cursor.of(self.name, session_id, seq) for seq in seqs]

    async def read(
        self, session_id: str, after: Cursor | str | None = None, limit: int = 1000
    ) -> LogPage:
        """Up to `limit` events after `after` (exclusive; None: from the start), oldest
        first. `SessionNotFound` if the session is gone; `InvalidCursor` for a cursor of
        another log, from its future, or malformed."""
        session_id = self._check_id(session_id)
        position = self._position(session_id, after)
        if type(limit) is not int or limit < 1:
            raise ValidationError("limit is a positive int")
        found = await self._backend.read_log(
            self.name, session_id, position, limit, self._clock.now_ms()
        )
        if found is None:
            raise SessionNotFound(session_id)
        if position > found.last:
            raise InvalidCursor("this cursor lies in the future of its log")
        reset = None
        if found.first > position + 1:  # what the reader had not seen yet is gone
            reset = LogReset(
                self._cursor(session_id, found.first if found.first <= found.last else 0),
                self._cursor(session_id, found.last),
                found.closed,
            )
        return LogPage(
            [LogEvent.of(self.name, session_id, entry) for entry in found.entries],
            reset,
            self._cursor(session_id, found.last),
            found.closed,
            found.last_ts,
        )

    async def follow(
        self, session_id: str, after: Cursor | str | None = None, *, idle_s: float = 5.0
    ) -> AsyncIterator[LogEvent | LogReset]:
        """Every event after `after`: what is stored first, then each new one as it comes,
        with no gap and no duplicate between the two, until the final event (included).
        A `LogReset` comes first if events after `after` were trimmed away. Ends quietly if
        the session goes away meanwhile; `SessionNotFound` if it is gone from the start.
        Every `idle_s` without news the store is checked (the session may have ended)."""
        position = self._position(session_id, after)
        page: LogPage | None = await self.read(session_id, after, _FOLLOW_PAGE)
        while True:
            if page is not None:
                if page.reset is not None:
                    yield page.reset
                for event in page.events:
                    yield event
                    position = event.cursor.seq
                    if event.final:
                        return
                last = 0 if page.last is None else page.last.seq
                if position < last:  # more stored than one page: keep reading
                    page = await self._page_after(session_id, position)
                    continue
                if page.closed:
                    return
            fresh = await self.store._hub.after(self.name, session_id, position, idle_s)
            if fresh:  # the hub's entries, contiguous after `position`
                page = None
                for entry in fresh:
                    event = LogEvent.of(self.name, session_id, entry)
                    yield event
                    position = entry.seq
                    if event.final:
                        return
                continue
            # None: behind what the hub keeps; []: quiet for idle_s. Either way, ask the store.
            try:
                page = await self._page_after(session_id, position)
            except SessionNotFound:
                return

    async def _page_after(self, session_id: str, position: int) -> LogPage:
        return await self.read(session_id, self._cursor(session_id, position), _FOLLOW_PAGE)

    def _log_items(self, events: Sequence[Event]) -> list[LogItem]:
        items = []
        for number, event in enumerate(events):
            if not isinstance(event, Event):
                raise ValidationError("append Event(type, data, ...) objects")
            check_producer(event.producer, event.seq)
            if event.final and number != len(events) - 1:
                raise ValidationError("a final event can only come last")
            data = encode_value(event.data, "event data")
            if len(data) > self.max_payload:
                raise PayloadTooLarge(len(data), self.max_payload)
            items.append(
                LogItem(check_type(event.type), data, event.producer, event.seq, event.final)
            )
        return items

    def _position(self, session_id: str, after: Cursor | str | None) -> int:
        return 0 if after is None else Cursor.parse(after, self.name, session_id).seq

    def _cursor(self, session_id: str, seq: int) -> Cursor | None:
        return None if seq < 1 else Cursor.of(self.name, session_id, seq)

    async def consume(
        self, session_id: str, counter: str, amount: int = 1, limit: int | None = None
    ) -> ConsumeResult:
        """Charge `amount` to a counter of the session, atomically.

        With a `limit`, a charge that would take the counter past it is refused and not
        counted (`allowed` is False). A negative amount refunds, never below 0; 0 reads.
        Does not extend the session's life.
        """
        session_id = self._check_id(session_id)
        if type(counter) is not str or not _COUNTER_RE.fullmatch(counter):
            raise ValidationError(
                f"counter name {counter!r} must match [A-Za-z0-9_][A-Za-z0-9_.:-]{{0,63}}"
            )
        if type(amount) is not int:
            raise ValidationError(f"amount is an int, not {type(amount).__name__}")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValidationError("limit is None (unlimited) or an int >= 0")
        allowed, used = await self._backend.consume(
            self.name, session_id, self._clock.now_ms(), counter, amount, limit
        )
        return ConsumeResult(allowed=allowed, used=used, limit=limit)

    async def rotate(self, session_id: str, *, subject: str | Keep | None = KEEP) -> Session:
        """Give the session a new id (same data, counters and times; version + 1) in one
        atomic step: the old id stops working at once. Call it on login and on privilege
        changes (optionally setting the `subject`) so a planted id is worthless."""
        session_id = self._check_id(session_id)
        new_subject = subject if subject is KEEP else _check_subject(subject)
        new_id = ids.new_id(self.id_prefix, shard=ids.shard_of(session_id))
        record = await self._backend.rotate(
            self.name, session_id, new_id, self._clock.now_ms(), self.lifetime, new_subject
        )
        session = Session.from_record(self.name, record)
        if self._events.wants("rotated"):
            await self._events.emit(SessionEvent("rotated", session, previous_id=session_id))
        return session

    async def delete(self, session_id: str) -> bool:
        """Delete the session; True if a live one existed. A stored session that had already
        expired is removed too (and reported as `expired`, so it is reported once)."""
        session_id = self._check_id(session_id)
        record = await self._backend.delete(self.name, session_id)
        if record is None:
            return False
        live = record.expires_at > self._clock.now_ms()
        await self._ended([record], "deleted" if live else "expired")
        return live

    async def list_subject(self, subject: str) -> list[Session]:
        """The live sessions of `subject`, newest first."""
        subject = _require_subject(subject)
        records = await self._backend.list_subject(self.name, subject, self._clock.now_ms())
        records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return [Session.from_record(self.name, r) for r in records]

    async def revoke_subject(self, subject: str) -> int:
        """Delete every session of `subject` (log out everywhere); returns how many live ones
        there were. Each emits `deleted` (or `expired`, for one already past its time)."""
        subject = _require_subject(subject)
        records = await self._backend.revoke_subject(self.name, subject)
        now = self._clock.now_ms()
        live = [r for r in records if r.expires_at > now]
        await self._ended(live, "deleted")
        await self._ended([r for r in records if r.expires_at <= now], "expired")
        return len(live)

    async def reap(self, limit: int = 1000) -> list[Session]:
        """Claim up to `limit` expired sessions, remove them and emit `expired` for each.

        Any number of reapers, in any number of processes, may run at once: each expired
        session is claimed by exactly one of them. Returns what this call claimed; run it
        until it returns fewer than `limit` to drain a backlog.
        """
        if type(limit) is not int or limit < 1:
            raise ValidationError("limit is a positive int")
        now = self._clock.now_ms()
        due = await self._backend.due(self.name, now, limit)
        if not due:
            return []
        records = await self._backend.claim(self.name, due, now)
        sessions = [Session.from_record(self.name, r) for r in records]
        if self._events.wants("expired"):
            for session in sessions:
                await self._events.emit(SessionEvent("expired", session))
        return sessions

    async def count(self) -> int:
        """How many live sessions the namespace holds."""
        return await self._backend.count(self.name, self._clock.now_ms())

    # -- helpers --------------------------------------------------------------------------

    def _check_id(self, session_id: object) -> str:
        return ids.validate(session_id, self.id_prefix)

    def _encode_data(self, data: object) -> bytes:
        raw = encode_data(data)
        if len(raw) > self.max_payload:
            raise PayloadTooLarge(len(raw), self.max_payload)
        return raw

    def _encode_metadata(self, metadata: object) -> bytes:
        raw = encode_metadata(metadata)
        if len(raw) > self.max_payload:
            raise PayloadTooLarge(len(raw), self.max_payload)
        return raw

    async def _ended(self, records: Sequence[Record], kind: EventKind) -> None:
        if records and self._events.wants(kind):
            for record in records:
                await self._events.emit(SessionEvent(kind, Session.from_record(self.name, record)))


def _check_ms(what: str, value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValidationError(f"{what} is an int of ms since the epoch")
    return value


def _check_subject(subject: object) -> str | None:
    return None if subject is None else _require_subject(subject)


def _require_subject(subject: object) -> str:
    if type(subject) is not str:
        raise ValidationError(f"subject is a str or None, not {type(subject).__name__}")
    if not subject or len(subject) > MAX_SUBJECT_LENGTH or _CONTROL_RE.search(subject):
        raise ValidationError(
            f"subject is 1 to {MAX_SUBJECT_LENGTH} characters without control characters"
        )
    return subject
