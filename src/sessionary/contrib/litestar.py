"""Litestar's key/value `Store` over a sessionary namespace, for server-side sessions::

    from litestar import Litestar
    from litestar.middleware.session.server_side import ServerSideSessionConfig
    from sessionary.contrib.litestar import SessionaryStore

    sessions = SessionaryStore("redis://localhost:6379/0", subject_key="user_id")
    app = Litestar(
        route_handlers=[...],
        middleware=[ServerSideSessionConfig().middleware],
        stores={"sessions": sessions},
    )
    ...
    await sessions.revoke_subject("42")  # user 42 is logged out on every device

Litestar keeps the cookie and the session dict; this store keeps the bytes Litestar gives it,
one sessionary session per key, on memory, SQLite or Redis, expiring on its own (Litestar's
`MemoryStore` never evicts). With `subject_key`, a stored session dict carrying that key
(`request.set_session({"user_id": 42})`) makes its session belong to subject "42", so
`revoke_subject` and `list_subject` reach every session of a user: Litestar's own stores
cannot.

How Litestar's store protocol maps onto sessionary:

- A key becomes a session id by a hash: `sessionary.ids.derived("litestar:" + key)`
  (BLAKE2b-256, in the canonical id form). Deterministic, so every process finds the same
  session; one-way, so a session id (in a listing, a log) does not give the key back. It is
  not keyed with a secret: the id is exactly as guessable as the key it comes from, and
  Litestar's session keys are 256 random bits (`secrets.token_hex(32)`).
- A value is stored in the session's data under one field: `{"text": ...}` when it is UTF-8
  (Litestar's sessions are JSON: stored as they are, no bigger, readable in an admin
  listing), `{"base64": ...}` for any other bytes. Both give the exact bytes back.
- Every key expires: at `expires_in` if given, else at the namespace's own end. The bound:
  no key outlives the namespace policy, `absolute_ttl` (30 days by default) after it was first
  stored (a `set` replaces the value but keeps the creation time), nor `idle_ttl` (if set)
  after its last write. So `expires_in(key)` is never -1, and `get(key, renew_for=...)`
  renews any key (Litestar's stores skip keys stored without expiry; here there are none).
- `set` is one atomic `Namespace.update` (data, subject and the new expiry at once) for a key
  that exists, one `Namespace.create` with the derived id for a new key (a concurrent `set`
  of the same new key takes the update path when the create finds the id taken).
  `get(key, renew_for=...)` is one atomic update of the expiry that returns the value.
- `with_namespace("x")` is the sessionary namespace "<name>.x" (names match
  `[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}`); `delete_all` empties this namespace and the child
  namespaces made from this store with `with_namespace` in this process (a Litestar app makes
  them in its configuration, in every process alike).

With encryption keys (`SessionaryStore(url, encryption_keys=os.environ["SESSION_KEYS"])`, or
an open store that seals sessions, `connect(url, encryption_keys=[...])`), the values are
sealed in the store (AES-256-GCM, see docs/encryption.md). A key whose session cannot be
opened (sealed under a key not given, or tampered with) reads as absent and a `set` replaces
it; the store logs and counts each.

Sessions per subject: with `subject_key`, `max_sessions_per_subject=3` caps the live sessions
of one subject in the namespace, applied by the `set` that gives a session its subject (a
login: `request.set_session({"user_id": 42})`). With `on_max_sessions="evict_oldest"` that
`set` ends the subject's least recently active session in the same step; with "refuse" (the
default) it raises `TooManySessions` and writes nothing (the session stays as it was, the
cookie unchanged). Litestar writes the session as the response starts, after the handler,
where an exception is past its exception handlers (a 500), so use `SessionConfig` (Litestar's
`ServerSideSessionConfig`, with a middleware that answers it) in its place::

    app = Litestar(..., middleware=[SessionConfig().middleware], stores={"sessions": sessions})

and a refused login is a 409 with the service's JSON
(`{"error": "too_many_sessions", "message": ..., "max_sessions": 3}`) instead of the
handler's response, never a 500. See docs/account-security.md.

Expired keys are invisible at once and removed by sessionary's reaper (`sessionary reap`,
`sessionary.reaper`) like any other session; a `set` on a key whose session expired but was not
reaped yet removes that session first (only if it is still expired: a concurrent write wins).
A store that cannot be reached raises `StoreUnavailable` (Litestar answers 500).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import orjson

from sessionary import ids
from sessionary.clock import Clock, to_ms
from sessionary.contract import KEEP, Keep, OnMaxSessions
from sessionary.contrib import outage
from sessionary.errors import (
    SessionExists,
    SessionNotFound,
    SessionUnreadable,
    StoreUnavailable,
    TooManySessions,
)
from sessionary.extras import needs
from sessionary.model import Session
from sessionary.sealing import EncryptionKeys
from sessionary.source import StoreSource
from sessionary.store import Namespace, Store

with needs("litestar", "sessionary.contrib.litestar"):
    from litestar.connection import ASGIConnection
    from litestar.middleware.base import DefineMiddleware
    from litestar.middleware.session.base import SessionMiddleware
    from litestar.middleware.session.server_side import (
        ServerSideSessionBackend,
        ServerSideSessionConfig,
    )
    from litestar.stores.base import NamespacedStore
    from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Message

__all__ = ["SessionConfig", "SessionaryStore"]

DEFAULT_ABSOLUTE_TTL = timedelta(days=30)
_TEXT = "text"
_BASE64 = "base64"
#: a `set` that keeps losing races (create finds the id taken, update finds it gone) gives up
_SET_ATTEMPTS = 5
#: sessions `delete_all` removes per store call
_CLEAR_BATCH = 1000


class _Connection(StoreSource):
    """The sessionary store a family of `SessionaryStore`s (one and the children made from
    it with `with_namespace`) shares: given open, or opened from a URL on first use and
    closed when Litestar's lifespan ends (reopened if used again, as a test client's next
    lifespan does); and the namespaces of the family, for `delete_all`."""

    def __init__(
        self,
        source: str | Store,
        clock: Clock | None,
        encryption_keys: EncryptionKeys | None,
    ) -> None:
        if isinstance(source, Store) and clock is not None:
            raise ValueError("an open sessionary.Store has its clock already: pass no clock")
        super().__init__(source, clock=clock, encryption_keys=encryption_keys)
        self.namespaces: set[str] = set()


class SessionaryStore(NamespacedStore):
    """Litestar's `NamespacedStore` over the sessionary namespace `namespace`.

    `store` is a store URL ("redis://...", "sqlite:///sessions.db", "memory://"), opened on
    first use with `clock` (tests pass a `ManualClock`), or an open `sessionary.Store` (its
    clock; it is never closed here). `absolute_ttl` and `idle_ttl` are the namespace policy:
    the longest any key lives (see the module's docstring). `subject_key`: the key of a
    stored JSON object (a Litestar session dict) naming its owner, for `revoke_subject` and
    `list_subject`. `max_sessions_per_subject` and `on_max_sessions` cap the live sessions
    of one subject (see the module's docstring). `encryption_keys` (see `sessionary.connect`:
    a list, or one comma-separated str) seal the sessions of a store given by URL; a bad key
    is a `ValueError` here, naming its position, never the key. An open `Store` has its own.
    """

    def __init__(
        self,
        store: str | Store,
        *,
        namespace: str = "litestar",
        absolute_ttl: timedelta | None = DEFAULT_ABSOLUTE_TTL,
        idle_ttl: timedelta | None = None,
        subject_key: str | None = None,
        clock: Clock | None = None,
        max_sessions_per_subject: int | None = None,
        on_max_sessions: OnMaxSessions = "refuse",
        encryption_keys: EncryptionKeys | None = None,
    ) -> None:
        self._connection = _Connection(store, clock, encryption_keys)
        self._session_limit = (max_sessions_per_subject, on_max_sessions)
        self.namespace: str = namespace
        self._absolute_ttl = absolute_ttl
        self._idle_ttl = idle_ttl
        self._subject_key = subject_key
        self._opened: Namespace | None = None
        self._adopt(namespace)

    def with_namespace(self, namespace: str) -> Self:
        """A store for the child namespace "<this one>.<namespace>": same connection and
        policy, its own keys; this store's `delete_all` empties it too."""
        child = copy.copy(self)
        child.namespace = f"{self.namespace}.{namespace}"
        child._opened = None
        self._adopt(child.namespace)
        return child

    def _adopt(self, name: str) -> None:
        """Count `name` in the family; with a store open already, check its name and policy
        now (from a URL: on first use)."""
        store = self._connection.opened
        if store is not None:
            self._namespace_of(store, name)
        self._connection.namespaces.add(name)

    async def sessionary_namespace(self) -> Namespace:
        """The sessionary namespace behind this store (opening the store if need be): for
        what Litestar's protocol has no word for (counting, reaping, listening)."""
        store = await self._connection.get()
        if self._opened is None or self._opened.store is not store:
            self._opened = self._namespace_of(store, self.namespace)
        return self._opened

    def _namespace_of(self, store: Store, name: str) -> Namespace:
        most, on_max = self._session_limit
        return store.namespace(
            name,
            absolute_ttl=self._absolute_ttl,
            idle_ttl=self._idle_ttl,
            max_sessions_per_subject=most,
            on_max_sessions=on_max,
        )

    # -- Litestar's Store protocol ----------------------------------------------------------

    async def set(
        self, key: str, value: str | bytes, expires_in: int | float | timedelta | None = None
    ) -> None:
        """Store `value` under `key` (replacing any), expiring in `expires_in` seconds (or
        at the namespace's end; see the module's docstring for the bound)."""
        raw = value.encode() if isinstance(value, str) else value
        lifetime = None if expires_in is None else _positive_ms("expires_in", expires_in)
        data = _pack(raw)
        subject = self._subject_of(raw)
        namespace = await self.sessionary_namespace()
        session_id = _session_id(key)
        for _ in range(_SET_ATTEMPTS):
            expires_at = None if lifetime is None else namespace.store.clock.now_ms() + lifetime
            try:
                await namespace.update(
                    session_id, data=data, subject=subject, expires_at=expires_at
                )
                return
            except SessionNotFound:
                pass
            except SessionUnreadable:  # the value written, what else it held cannot be read
                await namespace.delete(session_id)  # absent: begin it afresh
            try:
                await namespace.create(
                    id=session_id,
                    data=data,
                    subject=None if subject is KEEP else subject,
                    expires_at=expires_at,
                )
                return
            except SessionExists:  # a concurrent set created it: update it
                pass
        raise StoreUnavailable(f"could not settle key {key!r}: concurrent writers kept racing")

    async def get(self, key: str, renew_for: int | float | timedelta | None = None) -> bytes | None:
        """The value of `key`, or None. With `renew_for`, its expiry becomes now + that many
        seconds (within the namespace's bound) in the same atomic step."""
        namespace = await self.sessionary_namespace()
        session_id = _session_id(key)
        found: Session | None
        if renew_for:
            expires_at = namespace.store.clock.now_ms() + _positive_ms("renew_for", renew_for)
            try:
                found = await namespace.update(session_id, expires_at=expires_at)
            except (SessionNotFound, SessionUnreadable):
                return None
        else:
            found = await _readable(namespace, session_id)
        return None if found is None else _unpack(found.data)

    async def delete(self, key: str) -> None:
        """Delete `key`; nothing happens if there is none."""
        namespace = await self.sessionary_namespace()
        await namespace.delete(_session_id(key))

    async def delete_all(self) -> None:
        """Delete every key of this namespace and of the child namespaces made from it (see
        the class), through `Namespace.clear` (the expiry index, no scan of keys). Not
        atomic: a `set` running meanwhile may survive it."""
        store = await self._connection.get()
        prefix = self.namespace + "."
        for name in sorted(self._connection.namespaces):
            if name == self.namespace or name.startswith(prefix):
                await self._namespace_of(store, name).clear(_CLEAR_BATCH)

    async def exists(self, key: str) -> bool:
        """Whether `key` holds a live value."""
        namespace = await self.sessionary_namespace()
        return await _readable(namespace, _session_id(key)) is not None

    async def expires_in(self, key: str) -> int | None:
        """Whole seconds until `key` expires, or None if it holds no live value."""
        namespace = await self.sessionary_namespace()
        found = await _readable(namespace, _session_id(key))
        if found is None:
            return None
        return max(0, (found.expires_at - namespace.store.clock.now_ms()) // 1000)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Litestar's lifespan ends: close the store if it was opened from a URL."""
        await self._connection.close()

    # -- who a session belongs to -------------------------------------------------------------

    async def revoke_subject(self, subject: str) -> int:
        """Delete every live session of `subject` in this namespace (log a user out
        everywhere); returns how many there were."""
        namespace = await self.sessionary_namespace()
        return await namespace.revoke_subject(subject)

    async def list_subject(self, subject: str) -> list[Session]:
        """The live sessions of `subject` in this namespace, newest first (sessionary
        `Session`s: times, expiry; their ids are the hashed keys)."""
        namespace = await self.sessionary_namespace()
        return await namespace.list_subject(subject)

    def _subject_of(self, raw: bytes) -> str | Keep | None:
        """The subject a value names under `subject_key` (None: it names none, which clears
        the subject of an existing key, as on logout); KEEP when there is no `subject_key`."""
        if self._subject_key is None:
            return KEEP
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(decoded, dict):
            return None
        owner = decoded.get(self._subject_key)
        if owner is None or isinstance(owner, str):
            return owner
        if type(owner) is int:
            return str(owner)
        raise ValueError(
            f"session[{self._subject_key!r}] names the subject: a str or an int, "
            f"not {type(owner).__name__}"
        )

    def __repr__(self) -> str:
        return f"SessionaryStore(namespace={self.namespace!r})"


class SessionConfig(ServerSideSessionConfig):
    """Litestar's `ServerSideSessionConfig`, whose middleware answers a login refused by the
    store's session limit (`TooManySessions`, raised by `SessionaryStore.set` as the
    response starts) with the service's 409 instead of the handler's response."""

    @property
    def middleware(self) -> DefineMiddleware:
        backend = self._backend_class(config=self)
        return DefineMiddleware(_RefusingSessionMiddleware, backend=backend)


class _RefusingSessionMiddleware(SessionMiddleware[ServerSideSessionBackend]):
    """Litestar's session middleware; a session its store refuses to write (nothing was
    written, no cookie set) replaces the response with the refusal's 409."""

    def create_send_wrapper(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> Callable[[Message], Awaitable[None]]:
        refused = False

        async def wrapped_send(message: Message) -> None:
            nonlocal refused
            if refused:
                return  # the rest of the handler's response, which is not sent
            if message["type"] != "http.response.start":
                await connection.send(message)
                return
            try:
                await self.backend.store_in_message(
                    connection.scope.get("session"), message, connection
                )
            except TooManySessions as error:
                refused = True
                body = outage.error_body(error)
                start: HTTPResponseStartEvent = {
                    "type": "http.response.start",
                    "status": error.http_status,
                    "headers": [
                        (b"content-type", outage.CONTENT_TYPE.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
                whole: HTTPResponseBodyEvent = {
                    "type": "http.response.body",
                    "body": body,
                    "more_body": False,
                }
                await connection.send(start)
                await connection.send(whole)
                return
            await connection.send(message)

        return wrapped_send


async def _readable(namespace: Namespace, session_id: str) -> Session | None:
    """The live session, or None: one that cannot be opened reads as absent."""
    try:
        return await namespace.get(session_id)
    except SessionUnreadable:
        return None


def _session_id(key: str) -> str:
    """The session id of a Litestar key (see the module's docstring)."""
    return ids.derived("litestar:" + key)


def _pack(raw: bytes) -> dict[str, str]:
    try:
        return {_TEXT: raw.decode()}
    except UnicodeDecodeError:
        return {_BASE64: base64.b64encode(raw).decode("ascii")}


def _unpack(data: Mapping[str, Any]) -> bytes:
    text = data.get(_TEXT)
    if isinstance(text, str):
        return text.encode()
    return base64.b64decode(data[_BASE64])


def _positive_ms(what: str, seconds: int | float | timedelta) -> int:
    ms = to_ms(seconds) if isinstance(seconds, timedelta) else int(seconds * 1000)
    if ms <= 0:
        raise ValueError(f"{what} is a positive number of seconds (or a timedelta)")
    return ms
