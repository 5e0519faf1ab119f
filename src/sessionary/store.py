"""The public API: `connect`, `Store` and `Namespace`.

The store validates everything before any I/O (ids, names, payloads), encodes data, reads the
clock once per operation, calls the backend, and tells listeners what happened. Backends only
store bytes and keep their indexes (see `sessionary.contract`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from sessionary import ids
from sessionary.backends import open_backend
from sessionary.clock import SYSTEM_CLOCK, Clock, to_ms
from sessionary.codec import (
    EMPTY_OBJECT,
    MAX_SAFE_INT,
    check_int,
    check_text,
    encode_data,
    encode_metadata,
    encode_value,
)
from sessionary.contract import (
    KEEP,
    NO_LIMITS,
    Backend,
    CounterState,
    Finding,
    IndexCheck,
    Keep,
    Lifetime,
    LifetimeChange,
    LogItem,
    LogLimits,
    OnMaxSessions,
    Record,
    SessionLimit,
)
from sessionary.counters import MAX_COUNT, Counters, check_amount, check_limit
from sessionary.errors import (
    BadStoreURL,
    InvalidCursor,
    PayloadTooLarge,
    SessionExists,
    SessionNotFound,
    SessionUnreadable,
    StoreUnavailable,
    ValidationError,
    VersionConflict,
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
from sessionary.model import ConsumeResult, EndReason, EventKind, Session, SessionEvent
from sessionary.outage import DEFAULT_FAIL_FAST, Breaker, OutageLog, guard
from sessionary.queues import WorkQueue
from sessionary.read_cache import ReadCache
from sessionary.sealing import (
    MAGIC,
    EncryptionKeys,
    Field,
    RekeyOutcome,
    RekeyReport,
    Sealer,
    UnreadableLog,
    refuse_sealed,
)
from sessionary.sessionize import SessionizeBackend

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_URL",
    "SECRETS_NAMESPACE",
    "SECRET_RECHECK",
    "Namespace",
    "SharedSecrets",
    "Store",
    "connect",
]

_log = logging.getLogger("sessionary.store")
OnUnavailable = Literal["fail_closed", "fail_open"]
_FOLLOW_PAGE = 1000
#: a follower replays a log a page at a time, each page at most this much event data (or one
#: event), so a reader of a long log holds one page, never the log
FOLLOW_PAGE_BYTES = 64 * 1024
_HEALTH_GROUP = "sessionary.health"
_HEALTH_WINDOW_MS = 60_000
#: where `Store.shared_secret` keeps its secrets (a namespace like any other: sealed too)
SECRETS_NAMESPACE = "sessionary.secrets"
_SECRETS_LIFETIME = timedelta(days=3650)
SECRET_RECHECK = timedelta(seconds=5)
#: how many times a sealed rotate, or a rekey of one session, reads again after a
#: concurrent write before giving up (`VersionConflict`; for a rekey, "busy")
_RESEAL_ATTEMPTS = 8

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
    fail_fast: timedelta | None = None,
    encryption_keys: EncryptionKeys | None = None,
    read_cache: int | None = None,
) -> Store:
    """Open a store.

    `url` is "sqlite:///relative.db", "sqlite:////absolute.db", "memory://",
    "redis://host:6379/0" or "rediss://..." (options as query parameters, see the README), or
    a `Backend` object of your own. The default is an SQLite file `sessionary.db` in the
    working directory. Every URL takes `fail_fast_ms` and `read_cache` (see `Store`), which
    the store reads and the backend never sees; `fail_fast` and `read_cache` override them.

    `encryption_keys` turns on encryption at rest (see `sessionary.sealing`): keys of 32
    random bytes, or base64 text optionally "id:"-prefixed (comma-separated in one str); the
    first seals, all open. Checked before the store is opened.
    """
    sealer = Sealer(encryption_keys) if encryption_keys else None
    if url is None or isinstance(url, str):
        given = url or DEFAULT_URL
        try:
            url, window_ms = _store_option(given, "fail_fast_ms", 0)
            url, cached = _store_option(url, "read_cache", 0)
            backend = await open_backend(url)
        except BadStoreURL:
            raise
        except ValueError as exc:  # an option of the URL, by its parser's words
            raise BadStoreURL(f"store {without_password(given)}: {exc}") from None
    else:
        backend, window_ms, cached = url, None, None
    window = None if window_ms is None else timedelta(milliseconds=window_ms)
    window = fail_fast if fail_fast is not None else window
    cached = read_cache if read_cache is not None else cached
    return Store(
        backend,
        clock=clock,
        max_payload=max_payload,
        fail_fast=DEFAULT_FAIL_FAST if window is None else window,
        sealer=sealer,
        read_cache=cached or 0,
    )


def _store_option(url: str, name: str, least: int) -> tuple[str, int | None]:
    """The URL without its option `name` (an int, at least `least`), and that option."""
    base, _, query = url.partition("?")
    if name not in query:
        return url, None
    options = parse_qsl(query, keep_blank_values=True)
    found = [value for key, value in options if key == name]
    if not found:
        return url, None
    try:
        value = int(found[-1])
    except ValueError:
        raise ValueError(f"{name} is an int, not {found[-1]!r}") from None
    if value < least:
        raise ValueError(f"{name} is >= {least}")
    rest = urlencode([(key, value) for key, value in options if key != name])
    return f"{base}?{rest}" if rest else base, value


class Store:
    """A connected backend, the clock, lifecycle listeners, and the namespaces on top."""

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Clock | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        fail_fast: timedelta = DEFAULT_FAIL_FAST,
        sealer: Sealer | None = None,
        read_cache: int = 0,
    ) -> None:
        """`sealer`: encryption at rest (see `sessionary.sealing`; None: sessions are stored
        as plain JSON).

        `read_cache`: keep up to this many sessions in a read cache that serves the touch at
        the start of each request, with touches coalesced (`sessionary.read_cache`: what a
        cached read can miss, and by how much the idle expiry may lag), when the backend
        reports which sessions change (Redis over plain TCP or a Unix socket); 0: none.

        `fail_fast`: after a call the backend could not get answered (a timeout, the
        server unreachable), the calls within this window fail at once with
        `StoreUnavailable` instead of each waiting its own timeout; then one call probes
        (see `sessionary.outage.Breaker`). `timedelta(0)` turns it off."""
        if max_payload <= 0:
            raise ValueError("max_payload is a positive number of bytes")
        #: the backend as opened (for inspection); the store calls it through `guarded`
        self.backend = backend
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.breaker = Breaker(fail_fast, OutageLog(_log, f"store {backend!r}", wall=self.clock))
        #: the backend behind the breaker: what namespaces, counters and features call
        self.guarded = guard(backend, self.breaker)
        self.max_payload = max_payload
        self._events = EventBus()
        self._namespaces: dict[str, Namespace] = {}
        self._counters: dict[str, Counters] = {}
        self._queues: dict[str, WorkQueue] = {}
        self._hub = LogHub(self.guarded, self.clock)
        self._secrets: SharedSecrets | None = None
        #: seals sessions' data and metadata before the backend sees them (None: plain JSON)
        self.sealer = sealer
        #: the sealed sessions this store could not open: counted, logged once each
        self.unreadable = UnreadableLog()
        #: the read cache in front of `touch` (None: off, or the backend cannot have one)
        self.read_cache = ReadCache.over(backend, read_cache) if read_cache else None

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
        max_absolute_ttl: timedelta | None = None,
        max_sessions_per_subject: int | None = None,
        on_max_sessions: OnMaxSessions = "refuse",
    ) -> Namespace:
        """The namespace `name` with its policy. Asking again with the same policy returns the
        same object; asking with another policy is an error (one name, one policy).

        `idle_ttl` and `absolute_ttl` are every session's lifetime unless the session asks
        for its own (`create`/`rotate`/`update` with `idle_ttl`/`absolute_ttl`: "remember
        me"); `max_absolute_ttl` bounds what one may ask (and `absolute_ttl` itself).

        `on_unavailable` tells the web layer what to do when the store cannot be reached:
        refuse the request (503, the default) or go on without a session.
        `log_max_length` and `log_max_age` bound each session's event log (see
        `sessionary.logs`): older events are trimmed as new ones arrive.

        `max_sessions_per_subject` caps the live sessions of one subject (Spring Security's
        maximumSessions), applied atomically whenever a session gains a subject (`create`,
        `rotate` or `update` with one): with `on_max_sessions="refuse"` the write raises
        `TooManySessions` and changes nothing; with "evict_oldest" the subject's least
        recently active sessions are deleted in the same step, each announced by a
        `deleted` event whose reason is "evicted". Expired sessions never count. On Redis
        such a namespace lives in one hash slot (see docs/account-security.md).
        """
        if not isinstance(name, str) or not _NAMESPACE_RE.fullmatch(name):
            raise ValueError(
                f"namespace name {name!r} must match [A-Za-z0-9][A-Za-z0-9_.:-]{{0,63}}"
            )
        lifetime = Lifetime(_ttl_ms("idle_ttl", idle_ttl), _ttl_ms("absolute_ttl", absolute_ttl))
        max_absolute_ms = _ttl_ms("max_absolute_ttl", max_absolute_ttl)
        if (
            max_absolute_ms is not None
            and lifetime.absolute_ms is not None
            and lifetime.absolute_ms > max_absolute_ms
        ):
            raise ValueError("absolute_ttl is above max_absolute_ttl")
        cap = self.max_payload if max_payload is None else max_payload
        if cap <= 0:
            raise ValueError("max_payload is a positive number of bytes")
        if on_unavailable not in ("fail_closed", "fail_open"):
            raise ValueError("on_unavailable is 'fail_closed' or 'fail_open'")
        if log_max_length is not None and (type(log_max_length) is not int or log_max_length < 1):
            raise ValueError("log_max_length is None or an int >= 1")
        limits = LogLimits(log_max_length, _ttl_ms("log_max_age", log_max_age))
        session_limit = (
            None
            if max_sessions_per_subject is None
            else SessionLimit(max_sessions_per_subject, on_max_sessions)
        )
        wanted = Namespace(
            self,
            name,
            lifetime,
            ids.check_prefix(id_prefix),
            cap,
            on_unavailable,
            limits,
            max_absolute_ms,
            session_limit,
        )
        existing = self._namespaces.get(name)
        if existing is None:
            if session_limit is not None:
                self.backend.limit_sessions(name, session_limit)
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

    def queue(self, name: str) -> WorkQueue:
        """The work queue `name` (see `sessionary.queues`): named like a namespace."""
        if not isinstance(name, str) or not _NAMESPACE_RE.fullmatch(name):
            raise ValueError(f"queue name {name!r} must match [A-Za-z0-9][A-Za-z0-9_.:-]{{0,63}}")
        found = self._queues.get(name)
        if found is None:
            found = self._queues[name] = WorkQueue(self, name)
        return found

    @property
    def sessionization(self) -> SessionizeBackend:
        """The analytics storage contract (`sessionary.sessionize`) of this store's backend:
        the one feature contract beside sessions, counters and logs, for a batch ingest
        that must decide thousands of events in one atomic step."""
        backend = self.guarded
        if not isinstance(backend, SessionizeBackend):
            raise TypeError(f"{backend!r} does not implement sessionary.sessionize")
        return backend

    def secrets_namespace(self) -> Namespace:
        """The namespace the shared secrets are kept in, with the one policy it is opened
        with (another is a `ValueError`): for whoever reads it too (`sessionary check`)."""
        return self.namespace(SECRETS_NAMESPACE, absolute_ttl=_SECRETS_LIFETIME)

    async def shared_secret(self, name: str, lifetime: timedelta = _SECRETS_LIFETIME) -> str:
        """A random secret (64 hex digits) that every process sharing this store sees the same,
        created by whichever asks first; a new one once `lifetime` has passed. Read from the
        store again at most `SECRET_RECHECK` after this process last did (see
        `SharedSecrets`)."""
        if self._secrets is None:
            self._secrets = SharedSecrets(self.secrets_namespace(), "secret")
        expires_at = self.clock.now_ms() + to_ms(min(lifetime, _SECRETS_LIFETIME))
        return await self._secrets.get(name, expires_at=expires_at)

    def on(self, kind: EventKind, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` (sync or async) after each `kind` change this process makes:
        "created", "updated", "rotated", "deleted" or "expired". Returns an unsubscribe
        function."""
        return self._events.on(kind, listener)

    async def ping(self, *, write: bool = False) -> None:
        """Raise `StoreUnavailable` unless the backend answers. With `write`, as a readiness
        check wants (a read-only replica, a Redis out of memory or a full disk still answer
        a plain ping), also unless it takes a write (a counter of the reserved group
        `sessionary.health`, set with a one-minute window) and no call failed lately (within
        `OutageLog.settle`): a small write may still fit on a disk too full for the next
        session."""
        await self.guarded.ping()
        if write:
            now = self.clock.now_ms()
            state = CounterState("write", 1, now + _HEALTH_WINDOW_MS)
            await self.guarded.set_counters(_HEALTH_GROUP, [state], now)
            outage = self.breaker.outage
            if outage is not None and outage.down:
                raise StoreUnavailable(f"calls to the store failed lately: {outage.error}")

    async def verify(self, *, answering: bool = False) -> None:
        """Raise `BadStoreURL` if the store answers but refuses what its URL asks (a Redis
        database index out of range, credentials it refuses), so that a service or a command
        fails at start, with the fix, instead of failing every call. A store that does not
        answer passes (it may come up later: `/readyz` says when), unless `answering` (a
        command that is done at once has nothing to wait for): then its `StoreUnavailable`.
        One ping of the backend, past the outage guard: nothing logged, the breaker
        untouched."""
        try:
            await self.backend.ping()
        except BadStoreURL:
            raise
        except StoreUnavailable:
            if answering:
                raise

    async def close(self) -> None:
        await self._hub.close()
        if self.read_cache is not None:
            await self.read_cache.close()
        await self.backend.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Store({self.backend!r})"


@dataclass(slots=True)
class _Known:
    value: str
    expires_at: int
    read_at: int  # when this process last read it from the store


class SharedSecrets:
    """Secrets that every process sharing a store agrees on: each one a session of
    `namespace` (its id derived from the secret's name) whose data holds it under `field`,
    created by whichever process asks first (a create with a fixed id: exactly one wins, the
    others read the winner's).

    A process keeps what it read for at most `recheck` (by the store's clock), then reads
    the store again: a secret the store holds is never out of step in two processes for
    longer than that. When the store lost one (Redis flushed, restarted without persistence,
    failed over to an empty replica), a process that knew it writes *that* value back, with
    its expiry, rather than a new one: so processes that knew it keep agreeing, and those
    starting later take it too. Only a process that never knew it (one started during the
    loss, before any other wrote it back) makes a new one, which the others take within
    `recheck`.
    """

    def __init__(
        self, namespace: Namespace, field: str, recheck: timedelta = SECRET_RECHECK
    ) -> None:
        self.namespace = namespace
        self.field = field
        self.recheck_ms = to_ms(recheck)
        self._known: dict[str, _Known] = {}

    async def get(self, name: str, *, expires_at: int, created_at: int | None = None) -> str:
        """The secret `name`; if it must be made, it lives until `expires_at` (back-dated to
        `created_at` for the namespace's absolute lifetime)."""
        now = self.namespace.store.clock.now_ms()
        known = self._known.get(name)
        if known is not None and known.expires_at <= now:
            known = None  # its time is over: a new one, not this one written back
        if known is not None and now < known.read_at + self.recheck_ms:
            return known.value
        session_id = ids.derived(name)
        for _ in range(3):
            found = await self.namespace.get(session_id)
            if found is not None:
                value, until = str(found.data[self.field]), found.expires_at
                break
            value = secrets.token_hex(32) if known is None else known.value
            until = expires_at if known is None else known.expires_at
            try:
                await self.namespace.create(
                    id=session_id, data={self.field: value}, created_at=created_at, expires_at=until
                )
                break
            except SessionExists:
                if await self.namespace.get(session_id) is None:  # an expired one not yet reaped
                    await self.namespace.delete(session_id)
        else:
            raise StoreUnavailable(f"could not settle the shared secret {name!r}")
        self._known = {k: v for k, v in self._known.items() if v.expires_at > now}
        self._known[name] = _Known(value, until, now)
        return value


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
        max_absolute_ms: int | None = None,
        session_limit: SessionLimit | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.lifetime = lifetime
        self.id_prefix = id_prefix
        self.max_payload = max_payload
        self.on_unavailable = on_unavailable
        self.log_limits = log_limits
        #: the longest absolute ttl a session may ask for itself (None: no bound)
        self.max_absolute_ms = max_absolute_ms
        #: at most this many live sessions per subject (None: no limit)
        self.session_limit = session_limit
        self._backend = store.guarded
        self._clock = store.clock
        self._events = store._events
        self._sealer = store.sealer

    @property
    def policy_key(self) -> tuple[object, ...]:
        return (
            self.lifetime,
            self.id_prefix,
            self.max_payload,
            self.on_unavailable,
            self.log_limits,
            self.max_absolute_ms,
            self.session_limit,
        )

    @property
    def idle_ttl(self) -> timedelta | None:
        return self.lifetime.idle_ttl

    @property
    def absolute_ttl(self) -> timedelta | None:
        return self.lifetime.absolute_ttl

    @property
    def max_absolute_ttl(self) -> timedelta | None:
        ms = self.max_absolute_ms
        return None if ms is None else timedelta(milliseconds=ms)

    def __repr__(self) -> str:
        return f"Namespace({self.name!r}, lifetime={self.lifetime})"

    def own_lifetime(
        self,
        idle_ttl: timedelta | Keep | None = KEEP,
        absolute_ttl: timedelta | Keep | None = KEEP,
    ) -> LifetimeChange:
        """The session lifetime that `idle_ttl` and `absolute_ttl` ask for, validated: KEEP
        when neither is given; None (the namespace's policy) when neither is a timedelta;
        else a lifetime of its own, in which a ttl not given is the namespace's.

        Its idle ttl may exceed the namespace's (that is the point of "remember me"), but
        neither ttl may exceed `max_absolute_ttl`, and with one an absolute ttl is required:
        `ValidationError` otherwise."""
        if idle_ttl is KEEP and absolute_ttl is KEEP:
            return KEEP
        idle = _own_ttl_ms("idle_ttl", idle_ttl)
        absolute = _own_ttl_ms("absolute_ttl", absolute_ttl)
        if idle is None and absolute is None:
            return None
        own = Lifetime(
            self.lifetime.idle_ms if idle is None else idle,
            self.lifetime.absolute_ms if absolute is None else absolute,
        )
        bound = self.max_absolute_ms
        if bound is not None:
            limit = f"namespace {self.name!r} bounds a session's lifetime at {bound} ms"
            if own.absolute_ms is None:
                raise ValidationError(f"{limit}: ask for an absolute_ttl")
            if own.absolute_ms > bound:
                raise ValidationError(f"absolute_ttl is above the bound: {limit}")
            if own.idle_ms is not None and own.idle_ms > bound:
                raise ValidationError(f"idle_ttl is above the bound: {limit}")
        return own

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
        idle_ttl: timedelta | None = None,
        absolute_ttl: timedelta | None = None,
    ) -> Session:
        """A new session with a fresh id.

        With `idle_ttl` and/or `absolute_ttl` it lives by a lifetime of its own instead of
        the namespace's (a "remember me" login; see `own_lifetime` for the rules), stored
        with it and honoured by every later touch.

        For migrations and well-known records: `id` names the id (`SessionExists` if a live
        session holds it; an expired one not reaped yet is claimed first, in the reaper's own
        exactly-once step, and reported `expired`), `created_at` back-dates the creation (the
        absolute cap runs from it), and `expires_at` ends the session sooner than the policy
        would (it never extends it).
        """
        session_id = ids.new_id(self.id_prefix) if id is None else self._check_id(id)
        subject = _check_subject(subject)
        own = self.own_lifetime(idle_ttl, absolute_ttl)
        own = None if own is KEEP else own
        encoded_data = self._encode_data(session_id, {} if data is None else data)
        encoded_metadata = self._encode_metadata(session_id, {} if metadata is None else metadata)
        now = self._clock.now_ms()
        created = now if created_at is None else _check_ms("created_at", created_at)
        if created > now:
            raise ValidationError("created_at cannot be in the future")
        deadline = (own or self.lifetime).expires_at(created, now)
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
            lifetime=own,
        )
        limit = self.session_limit
        try:
            evicted = await self._backend.create(self.name, record, limit=limit)
        except SessionExists:
            if id is None:
                raise
            expired = await self._backend.claim(self.name, [session_id], now)
            if not expired:
                raise  # a live session holds it
            await self._ended(expired, "expired")
            evicted = await self._backend.create(self.name, record, limit=limit)
        await self._ended(evicted, "deleted", "evicted")
        session = self._session(record)
        if self._events.wants("created"):
            await self._events.emit(SessionEvent("created", session))
        return session

    async def get(self, session_id: str) -> Session | None:
        """The live session, or None. A peek: it does not extend the session's life."""
        session_id = self._check_id(session_id)
        record = await self._backend.get(self.name, session_id, self._clock.now_ms())
        return None if record is None else self._session(record)

    async def touch(self, session_id: str) -> Session | None:
        """Record activity (slide the idle expiry, never past the absolute cap) and return the
        session, in one round trip; None if it is unknown or expired."""
        session_id = self._check_id(session_id)
        now, cache = self._clock.now_ms(), self.store.read_cache
        if cache is None:
            record = await self._backend.touch(self.name, session_id, now, self.lifetime)
        else:  # coalesced, maybe without a round trip (see `sessionary.read_cache`)
            record = await cache.touch(self._backend, self.name, session_id, now, self.lifetime)
        return None if record is None else self._session(record)

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
        idle_ttl: timedelta | Keep | None = KEEP,
        absolute_ttl: timedelta | Keep | None = KEEP,
    ) -> Session:
        """Replace data and/or metadata (None keeps them), set or clear the subject, give the
        session a lifetime of its own (`idle_ttl`/`absolute_ttl`, see `own_lifetime`; both
        None: back to the namespace's), end the session sooner (`expires_at`: never later
        than its lifetime allows), and append events to its log, all in one atomic step.

        With `expected_version`, the write happens only if the stored version is that one,
        else `VersionConflict` and nothing changes (no event either): a status change and the
        event announcing it land together or not at all. Records activity like `touch`.
        """
        session_id = self._check_id(session_id)
        encoded_data = None if data is None else self._encode_data(session_id, data)
        encoded_metadata = None if metadata is None else self._encode_metadata(session_id, metadata)
        new_subject = subject if subject is KEEP else _check_subject(subject)
        if expected_version is not None:
            check_int("expected_version", expected_version, 1)
        if expires_at is not None:
            _check_ms("expires_at", expires_at)
        own = self.own_lifetime(idle_ttl, absolute_ttl)
        items = self._log_items(append)
        try:
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
                own_lifetime=own,
                limit=self.session_limit,
            )
        finally:
            self._uncache(session_id)
        await self._ended(record.evicted, "deleted", "evicted")
        session = self._session(record)
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
        self,
        session_id: str,
        after: Cursor | str | None = None,
        limit: int = 1000,
        *,
        max_bytes: int = 0,
    ) -> LogPage:
        """Up to `limit` events after `after` (exclusive; None: from the start), oldest
        first; with `max_bytes`, only as many as fit in that many bytes of encoded data (at
        least one). `SessionNotFound` if the session is gone; `InvalidCursor` for a cursor
        of another log, from its future, or malformed."""
        session_id = self._check_id(session_id)
        position = self._position(session_id, after)
        check_int("limit", limit, 1)
        check_int("max_bytes", max_bytes, 0)
        found = await self._backend.read_log(
            self.name, session_id, position, limit, self._clock.now_ms(), max_bytes
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
        page: LogPage | None = await self.read(
            session_id, after, _FOLLOW_PAGE, max_bytes=FOLLOW_PAGE_BYTES
        )
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
        return await self.read(
            session_id,
            self._cursor(session_id, position),
            _FOLLOW_PAGE,
            max_bytes=FOLLOW_PAGE_BYTES,
        )

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
                raise PayloadTooLarge(len(data), self.max_payload, "event data")
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
        Amounts, limits and counters stay within +-`MAX_COUNT` (an unlimited counter refuses
        a charge past it). Does not extend the session's life.
        """
        session_id = self._check_id(session_id)
        if type(counter) is not str or not _COUNTER_RE.fullmatch(counter):
            raise ValidationError(
                f"counter name {counter!r} must match [A-Za-z0-9_][A-Za-z0-9_.:-]{{0,63}}"
            )
        check_amount("amount", amount)
        check_limit("limit", limit)
        allowed, used = await self._backend.consume(
            self.name,
            session_id,
            self._clock.now_ms(),
            counter,
            amount,
            MAX_COUNT if limit is None else limit,  # an unlimited counter stops at the most
        )
        return ConsumeResult(allowed=allowed, used=used, limit=limit)

    async def rotate(
        self,
        session_id: str,
        *,
        subject: str | Keep | None = KEEP,
        idle_ttl: timedelta | Keep | None = KEEP,
        absolute_ttl: timedelta | Keep | None = KEEP,
    ) -> Session:
        """Give the session a new id (same data, counters and times; version + 1) in one
        atomic step: the old id stops working at once. Call it on login and on privilege
        changes (optionally setting the `subject`) so a planted id is worthless.

        With `idle_ttl`/`absolute_ttl` the session gets a lifetime of its own in the same
        step (a "remember me" login; see `own_lifetime`; both None: back to the
        namespace's); without, it keeps the one it had. An absolute ttl runs from the
        session's creation, never from a rotation: rotating (as apps do on every privilege
        change) must not let a session outlive its cap."""
        session_id = self._check_id(session_id)
        new_subject = subject if subject is KEEP else _check_subject(subject)
        own = self.own_lifetime(idle_ttl, absolute_ttl)
        new_id = ids.new_id(self.id_prefix, shard=ids.shard_of(session_id))
        attempt = 0
        while True:
            # sealed: the payload re-sealed for the new id (the id is in its associated
            # data), in the rotate's own atomic step, against the version it was read at
            data, metadata, version = await self._resealed_for(session_id, new_id)
            try:
                record = await self._backend.rotate(
                    self.name,
                    session_id,
                    new_id,
                    self._clock.now_ms(),
                    self.lifetime,
                    new_subject,
                    own_lifetime=own,
                    data=data,
                    metadata=metadata,
                    expected_version=version,
                    limit=self.session_limit,
                )
                break
            except VersionConflict:  # only when sealed: a write came between; read again
                attempt += 1
                if attempt == _RESEAL_ATTEMPTS:
                    raise
            finally:
                self._uncache(session_id)
        await self._ended(record.evicted, "deleted", "evicted")
        session = self._session(record)
        if self._events.wants("rotated"):
            await self._events.emit(SessionEvent("rotated", session, previous_id=session_id))
        return session

    async def delete(self, session_id: str) -> bool:
        """Delete the session; True if a live one existed. A stored session that had already
        expired is removed too (and reported as `expired`, so it is reported once)."""
        session_id = self._check_id(session_id)
        try:
            record = await self._backend.delete(self.name, session_id)
        finally:
            self._uncache(session_id)
        if record is None:
            return False
        live = record.expires_at > self._clock.now_ms()
        await self._ended([record], "deleted" if live else "expired")
        return live

    async def list_subject(self, subject: str) -> list[Session]:
        """The live sessions of `subject`, newest first. One that cannot be opened
        (encryption at rest: a key not given, or tampered bytes) is left out, reported to
        `Store.unreadable`; `revoke_subject` still ends it."""
        subject = _require_subject(subject)
        records = await self._backend.list_subject(self.name, subject, self._clock.now_ms())
        records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        sessions = []
        for record in records:
            try:
                sessions.append(self._session(record))
            except SessionUnreadable:
                continue
        return sessions

    async def revoke_subject(self, subject: str, *, keep: Sequence[str] = ()) -> int:
        """Delete every session of `subject` (log out everywhere); returns how many live ones
        there were. Each emits `deleted` (or `expired`, for one already past its time).

        The sessions whose ids are in `keep` stay, untouched, in the same atomic step: "log
        out my other devices" is `revoke_subject(user, keep=[my_session_id])`. A kept id
        that is unknown or of another subject changes nothing."""
        subject = _require_subject(subject)
        if isinstance(keep, str):
            raise ValidationError("keep is a sequence of session ids, not one str")
        kept = [self._check_id(session_id) for session_id in keep]
        records = await self._backend.revoke_subject(self.name, subject, kept)
        now = self._clock.now_ms()
        live = [r for r in records if r.expires_at > now]
        await self._ended(live, "deleted", "revoked")
        await self._ended([r for r in records if r.expires_at <= now], "expired")
        return len(live)

    async def reap(self, limit: int = 1000) -> list[Session]:
        """Claim up to `limit` expired sessions, remove them and emit `expired` for each.

        Any number of reapers, in any number of processes, may run at once: each expired
        session is claimed by exactly one of them. Returns what this call claimed; run it
        until it returns fewer than `limit` to drain a backlog.
        """
        check_int("limit", limit, 1)
        now = self._clock.now_ms()
        due = await self._backend.due(self.name, now, limit)
        if not due:
            return []
        records = await self._backend.claim(self.name, due, now)
        sessions = [self._ended_session(r) for r in records]
        if self._events.wants("expired"):
            for session in sessions:
                await self._events.emit(SessionEvent("expired", session, reason="expired"))
        return sessions

    async def clear(self, batch: int = 1000) -> int:
        """Delete every session of the namespace, `batch` at a time through the expiry index
        (no scan of keys); returns how many live ones there were. Each emits `deleted` (or
        `expired`, for one already past its time). Not one atomic step: a session created
        meanwhile may survive."""
        check_int("batch", batch, 1)
        removed = 0
        while due := await self._backend.due(self.name, MAX_SAFE_INT, batch):
            records = await self._backend.claim(self.name, due, MAX_SAFE_INT)
            now = self._clock.now_ms()
            live = [r for r in records if r.expires_at > now]
            await self._ended(live, "deleted", "cleared")
            await self._ended([r for r in records if r.expires_at <= now], "expired")
            removed += len(live)
        return removed

    async def count(self) -> int:
        """How many live sessions the namespace holds."""
        return await self._backend.count(self.name, self._clock.now_ms())

    async def check(
        self,
        *,
        repair: bool = False,
        batch: int = 500,
        limit: int = 10_000,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Finding]:
        """Reconcile the backend's indexes of this namespace with its records (`sessionary
        check`; see `sessionary.contract.IndexCheck` for what is found and how it is
        repaired): with `repair`, what can be repaired safely is, in the step that finds it.
        Walks the namespace `batch` entries at a time, calling `progress(examined, found)`
        after each step, and stops once `limit` findings are in (rerun for the rest).
        Safe while the namespace is in use; emits no event. `TypeError` if the backend
        cannot check its indexes (a third party's without `IndexCheck`)."""
        check_int("batch", batch, 1)
        check_int("limit", limit, 1)
        backend = self._backend
        if not isinstance(backend, IndexCheck):
            raise TypeError(f"{backend!r} cannot check its indexes (no IndexCheck)")
        findings: list[Finding] = []
        examined = 0
        cursor: str | None = None
        while len(findings) < limit:
            now = self._clock.now_ms()
            page = await backend.check_indexes(self.name, now, cursor, batch, repair=repair)
            findings.extend(page.findings)
            examined += page.examined
            if progress is not None:
                progress(examined, len(findings))
            if (cursor := page.cursor) is None:
                break
        return findings

    async def walk(self, batch: int = 100) -> AsyncIterator[list[Session]]:
        """The live sessions of the namespace, a page of about `batch` at a time, through the
        backend's scan: for maintenance and checks that must look at every session (a
        feature's `check`), never for a request. A session changed meanwhile comes as it is
        when its page is read; one that is unreadable (sealed under a key this store lacks)
        is left out (`Store.unreadable` counts it)."""
        check_int("batch", batch, 1)
        cursor: str | None = None
        while True:
            found, cursor = await self._backend.scan(self.name, cursor, batch)
            read = await asyncio.gather(*(self._readable(session_id) for session_id in found))
            if page := [session for session in read if session is not None]:
                yield page
            if cursor is None:
                return

    async def _readable(self, session_id: str) -> Session | None:
        """The live session, or None when it is gone or cannot be opened (reported)."""
        try:
            return await self.get(session_id)
        except SessionUnreadable:
            return None

    async def rekey(
        self, *, batch: int = 100, progress: Callable[[RekeyReport], None] | None = None
    ) -> RekeyReport:
        """Re-seal every session of the namespace under the current (first) encryption key,
        `batch` at a time through the backend's scan, calling `progress` after each batch;
        legacy plaintext sessions get sealed. Returns the counts (see `RekeyReport`).

        Safe while the namespace is in use: each session is re-sealed by a versioned write
        against the version it was read at; a concurrent write wins and the rekey reads
        again (that writer sealed under the current key already, so often nothing is left
        to do). Resumable: a rerun skips what is current. It is no activity: a session's
        `last_seen_at` and `expires_at` stay as they were, whatever this namespace's
        policy; it emits no event, and its version grows by one.
        `ValueError` without encryption keys."""
        sealer = self._sealer
        if sealer is None:
            raise ValueError("rekey needs a store opened with encryption_keys")
        check_int("batch", batch, 1)
        report = RekeyReport()
        cursor: str | None = None
        while True:
            found, cursor = await self._backend.scan(self.name, cursor, batch)
            for outcome in await asyncio.gather(*(self._rekey_one(sealer, i) for i in found)):
                report.count(outcome)
            if progress is not None:
                progress(report)
            if cursor is None:
                return report

    async def _rekey_one(self, sealer: Sealer, session_id: str) -> RekeyOutcome:
        for _ in range(_RESEAL_ATTEMPTS):
            now = self._clock.now_ms()
            record = await self._backend.get(self.name, session_id, now)
            if record is None:
                return "gone"
            if sealer.is_current(record.data) and sealer.is_current(record.metadata):
                return "current"
            try:
                self._open(record)
            except SessionUnreadable:  # reported by _open; left as it is
                return "unreadable"
            try:
                await self._backend.update(
                    self.name,
                    session_id,
                    now,
                    self.lifetime,
                    data=self._seal(session_id, "data", record.data),
                    metadata=self._seal(session_id, "metadata", record.metadata),
                    subject=KEEP,
                    expected_version=record.version,
                    activity=False,  # last seen and expiry stay: a re-seal is no activity
                )
            except VersionConflict:
                continue
            except SessionNotFound:
                return "gone"
            return "resealed"
        return "busy"

    # -- helpers --------------------------------------------------------------------------

    def _session(self, record: Record) -> Session:
        """The snapshot of a record the backend returned (opened first when sealed:
        `SessionUnreadable`, reported to `Store.unreadable`, if it cannot be; without keys,
        if it is sealed)."""
        if (
            self._sealer is not None
            or record.data.startswith(MAGIC)
            or record.metadata.startswith(MAGIC)
        ):
            self._open(record)
        return Session.from_record(self.name, record, self.lifetime)

    def _open(self, record: Record) -> None:
        """Replace the sealed data and metadata of `record` (the store's own copy: backends
        hand out fresh ones) by their plaintext."""
        sealer = self._sealer
        try:
            if sealer is None:
                refuse_sealed(record.id, record.data)
                refuse_sealed(record.id, record.metadata)
                return
            record.data = sealer.open(self.name, record.id, "data", record.data)
            record.metadata = sealer.open(self.name, record.id, "metadata", record.metadata)
        except SessionUnreadable as error:
            self.store.unreadable.report(self.name, error)
            raise

    def _ended_session(self, record: Record) -> Session:
        """The last state of a session that ended (deleted, expired, reaped, evicted): one
        that cannot be opened is still announced, with empty data and metadata (and reported
        as unreadable), so its end is never lost and no reaper gets stuck on it."""
        try:
            return self._session(record)
        except SessionUnreadable:
            record.data = record.metadata = EMPTY_OBJECT
            return Session.from_record(self.name, record, self.lifetime)

    async def _resealed_for(
        self, session_id: str, new_id: str
    ) -> tuple[bytes | None, bytes | None, int | None]:
        """Without a sealer, (None, None, None): a rotate keeps the stored bytes, in one
        round trip. With one, the live session's data and metadata sealed for `new_id`, and
        the version they were read at (`SessionNotFound`, `SessionUnreadable`)."""
        if self._sealer is None:
            return None, None, None
        found = await self._backend.get(self.name, session_id, self._clock.now_ms())
        if found is None:
            raise SessionNotFound(session_id)
        self._open(found)
        return (
            self._seal(new_id, "data", found.data),
            self._seal(new_id, "metadata", found.metadata),
            found.version,
        )

    def _seal(self, session_id: str, field: Field, plaintext: bytes) -> bytes:
        if self._sealer is None:
            return plaintext
        return self._sealer.seal(self.name, session_id, field, plaintext)

    def _uncache(self, session_id: str) -> None:
        """After a write of this process to the session: the read cache drops it at once
        (the backend's report of the write may come a moment later)."""
        if self.store.read_cache is not None:
            self.store.read_cache.forget((self.name, session_id))

    def _check_id(self, session_id: object) -> str:
        return ids.validate(session_id, self.id_prefix)

    def _encode_data(self, session_id: str, data: object) -> bytes:
        """The data as stored: encoded, size-checked (the plaintext: the cap does not move
        with encryption), sealed for `session_id` when the store seals."""
        raw = encode_data(data)
        if len(raw) > self.max_payload:
            raise PayloadTooLarge(len(raw), self.max_payload)
        return self._seal(session_id, "data", raw)

    def _encode_metadata(self, session_id: str, metadata: object) -> bytes:
        raw = encode_metadata(metadata)
        if len(raw) > self.max_payload:
            raise PayloadTooLarge(len(raw), self.max_payload)
        return self._seal(session_id, "metadata", raw)

    async def _ended(
        self, records: Sequence[Record], kind: EventKind, reason: EndReason | None = None
    ) -> None:
        """Announce sessions that ended: `reason` says why (by default, what `kind` says:
        "deleted" or "expired")."""
        if records and self._events.wants(kind):
            why = reason or ("expired" if kind == "expired" else "deleted")
            for record in records:
                event = SessionEvent(kind, self._ended_session(record), reason=why)
                await self._events.emit(event)


def _own_ttl_ms(what: str, ttl: timedelta | Keep | None) -> int | None:
    """A session's own ttl in ms; None when not given (KEEP or None)."""
    if ttl is None or ttl is KEEP:
        return None
    try:
        return _ttl_ms(what, ttl)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def _check_ms(what: str, value: object) -> int:
    return check_int(f"{what} (ms since the epoch)", value, 0)


def _check_subject(subject: object) -> str | None:
    return None if subject is None else _require_subject(subject)


def _require_subject(subject: object) -> str:
    if type(subject) is not str:
        raise ValidationError(f"subject is a str or None, not {type(subject).__name__}")
    if not subject or len(subject) > MAX_SUBJECT_LENGTH or _CONTROL_RE.search(subject):
        raise ValidationError(
            f"subject is 1 to {MAX_SUBJECT_LENGTH} characters without control characters"
        )
    return check_text("subject", subject)


def without_password(url: str) -> str:
    """`url` fit to print or log: its password, if any, replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()
