"""`SessionStore`: Django's session backend interface over a sessionary namespace.

Django's middleware keeps deciding the cookie (from `modified`, `accessed`, `is_empty()`), and
Django keeps the session's dict (`_session_cache`) as its own; this class only loads and
writes it, and every rule of *how* lives in `sessionary.session_request.RequestSession`, the
one place each integration shares: the touch on load (sliding the idle expiry), an unknown,
expired or malformed id never adopted (a malformed one costs no store call), the versioned
write that merges key by key onto a concurrent request's write, and a session deleted
meanwhile staying deleted. What is Django's:

* `create()` lets the store mint the id (256 random bits), never Django's
  `_get_new_session_key`; `save(must_create=True)` does the same;
* `save()` on a session deleted meanwhile (logged out in another request) raises Django's
  `UpdateError` (the middleware answers 400, `SessionInterrupted`), never re-creating it;
  so does a true conflict, a key this request changed that another request changed too
  meanwhile (two increments of one counter): no merge keeps both updates, so nothing is
  saved and the client may retry (Django has no 409; changes to different keys still merge);
* `cycle_key()` (Django calls it on login) is one atomic `rotate`: the old key is dead in the
  same step;
* the logged-in user (`_auth_user_id`) is the session's subject, so `sessions_of`/
  `revoke_user` and `revoke_others` find a user's sessions; logout (`flush()`) deletes the
  session. A save that finds the user changed gives the session a new id exactly once per
  change of owner: if this object already minted the session's id (`cycle_key`, which
  Django's `login` calls before it records the user, or `create`), nobody but this response
  has seen that id, so the user is recorded on it as it is (`set_subject`: one rotation per
  login, not two). Otherwise (a custom login that skips `cycle_key`, one user replaced by
  another, a user removed without `flush`) the key the client already held must not carry
  the new owner: the session is rotated with the new subject, so a planted or leaked key is
  worthless after the change;
* `set_expiry()` becomes the session's own lifetime in the store, in the same atomic step
  as the write that carries it (`create`, the versioned update of `save()`, the rotate of
  `cycle_key()`; see `expiry`): `set_expiry(14 * 24 * 3600)` after login ("remember me")
  keeps the session 14 days of inactivity although `SESSION_COOKIE_AGE` is 2 hours, a
  shorter one ends it sooner, and an expiry already past deletes it at that save. It may be
  longer than the namespace's lifetimes, up to `SESSIONARY["max_absolute_ttl"]` (clamped
  to it, never an error);
* with `SESSIONARY["devices"]` the session records the client that created it (its
  `device`, handed over by `sessionary.contrib.django.SessionMiddleware`) in its metadata,
  at `create`;
* `clear_expired()` (`manage.py clearsessions`) reaps the namespace until nothing expired is
  left (each expired session is claimed once however many reapers run), each session by
  its own lifetime.

Sync methods block on the process's `SyncStore` (its own loop thread); the `a*` methods
await it from the caller's loop without blocking it. A store outage raises `StoreUnavailable`
from them; `sessionary.contrib.django.SessionMiddleware` answers it with a 503.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from django.contrib.sessions.backends.base import (  # type: ignore[import-untyped]
    SessionBase,
    UpdateError,
)

from sessionary import ids
from sessionary.contract import KEEP, Keep
from sessionary.contrib.django import payload
from sessionary.contrib.django.config import namespace
from sessionary.contrib.django.expiry import expiry_of
from sessionary.devices import Sighting
from sessionary.errors import (
    InvalidSessionId,
    SessionNotFound,
    SessionUnreadable,
    VersionConflict,
)
from sessionary.session_request import CONFLICT_MESSAGE, RequestSession
from sessionary.store import Namespace

#: how many expired sessions one reap call claims (clear_expired calls until fewer come back)
REAP_BATCH = 1000


class SessionStore(SessionBase):  # type: ignore[misc]
    """Django sessions in a sessionary store: `SESSION_ENGINE = "sessionary.contrib.django"`."""

    def __init__(self, session_key: str | None = None) -> None:
        super().__init__(session_key)
        #: the stored session of `session_key`, once loaded or written (None: nothing held)
        self._stored: RequestSession | None = None
        #: this object minted the current key (create, cycle_key): no client has seen it yet,
        #: so a new owner may be recorded on it without another new key
        self._minted = False
        #: the request's client, as `SESSIONARY["devices"]` records it on a session this
        #: object creates (set by the middleware; None: nothing is recorded)
        self.device: Sighting | None = None

    # -- reading ------------------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        return namespace().run(self._load)

    async def aload(self) -> dict[str, Any]:
        return await namespace().arun(self._load)

    async def _load(self, n: Namespace) -> dict[str, Any]:
        state = await self._fetch(n)
        return {} if state is None else dict(state.data)

    def exists(self, session_key: str | None) -> bool:
        if not _well_formed(session_key):
            return False
        return namespace().run(lambda n: _readable(n, session_key))

    async def aexists(self, session_key: str | None) -> bool:
        if not _well_formed(session_key):
            return False
        return await namespace().arun(lambda n: _readable(n, session_key))

    # -- writing ------------------------------------------------------------------------------

    def create(self) -> None:
        session = self._get_session(no_load=True)
        namespace().run(lambda n: self._create(n, session))

    async def acreate(self) -> None:
        session = await self._aget_session(no_load=True)
        await namespace().arun(lambda n: self._create(n, session))

    def save(self, must_create: bool = False) -> None:
        if must_create or self.session_key is None:
            self.create()  # a fresh id, minted by the store
            return
        session = self._get_session()
        namespace().run(lambda n: self._save(n, session))

    async def asave(self, must_create: bool = False) -> None:
        if must_create or self.session_key is None:
            await self.acreate()
            return
        session = await self._aget_session()
        await namespace().arun(lambda n: self._save(n, session))

    def cycle_key(self) -> None:
        session = self._session
        namespace().run(lambda n: self._cycle(n, session))

    async def acycle_key(self) -> None:
        session = await self._aget_session()
        await namespace().arun(lambda n: self._cycle(n, session))

    def delete(self, session_key: str | None = None) -> None:
        key = self.session_key if session_key is None else session_key
        if _well_formed(key):
            namespace().run(lambda n: self._delete(n, key))

    async def adelete(self, session_key: str | None = None) -> None:
        key = self.session_key if session_key is None else session_key
        if _well_formed(key):
            await namespace().arun(lambda n: self._delete(n, key))

    @classmethod
    def clear_expired(cls) -> None:
        namespace().run(_reap_all)

    @classmethod
    async def aclear_expired(cls) -> None:
        await namespace().arun(_reap_all)

    # -- the user's other sessions ----------------------------------------------------------

    def revoke_others(self) -> int:
        """Log the user out of every other session ("log out my other sessions"): delete
        each session of this session's user but this one; how many there were. 0 when
        nobody is logged in."""
        user = payload.subject_of(self._session)
        if user is None:
            return 0
        return namespace().run(lambda n: self._revoke_others(n, user))

    async def arevoke_others(self) -> int:
        """See `revoke_others`."""
        user = payload.subject_of(await self._aget_session())
        if user is None:
            return 0
        return await namespace().arun(lambda n: self._revoke_others(n, user))

    # -- on the store's loop ----------------------------------------------------------------

    async def _fetch(self, n: Namespace) -> RequestSession | None:
        """The stored session of `session_key`, touched, now held; None (and no key any
        more) if there is none: unknown, expired (by its own lifetime, if `set_expiry` gave
        it one) or malformed (no store call)."""
        state = await RequestSession.load(n, self.session_key)
        self._hold(state)
        self._minted = False  # a key the client presented
        return self._stored

    async def _held(self, n: Namespace) -> RequestSession | None:
        """The stored session this object holds; fetched first if it has a key but never
        loaded (Django's `clear()` replaces the dict without reading it)."""
        if self._stored is None and self.session_key is not None:
            return await self._fetch(n)
        return self._stored

    async def _create(self, n: Namespace, session: dict[str, Any]) -> None:
        now = _now(n)
        expiry = expiry_of(session, n, now, now)
        if expiry.passed:  # dead before it was ever stored: nothing to store, no key
            self._hold(RequestSession.fresh(n))
            return
        created = await n.create(
            data=payload.to_stored(session, self.serializer()),
            subject=payload.subject_of(session),
            idle_ttl=expiry.idle_ttl,
            absolute_ttl=expiry.absolute_ttl,
            metadata=None if self.device is None else await self.device.metadata(n.store),
        )
        self._hold(RequestSession(n, created))
        self._minted = True
        self.modified = True

    async def _save(self, n: Namespace, session: dict[str, Any]) -> None:
        state = await self._held(n)
        if state is None:  # its key was dead before anything was read: a fresh session
            await self._create(n, session)
            return
        stored = payload.to_stored(session, self.serializer())
        if not await _lifetime_asked(n, state, session):
            self._hold(state)  # deleted: no key any more
            return
        state.data = stored
        user = payload.subject_of(session)
        if user != state.subject:  # a new owner (see the module docstring)
            if self._minted:
                state.set_subject(user)
            else:
                await self._rotate(state, user)
        try:
            saved = await state.save()
        except VersionConflict:  # a key changed by another request too: nothing was saved
            raise UpdateError(CONFLICT_MESSAGE) from None
        if saved is None:  # logged out meanwhile: it stays deleted
            self._stored = None
            raise UpdateError("the session was deleted before this request could save it")
        if state.data != stored:  # merged onto a concurrent write: show Django the result
            self._session_cache = dict(state.data)

    async def _cycle(self, n: Namespace, session: dict[str, Any]) -> None:
        state = await self._held(n)
        if state is None:  # nothing stored yet: storing it is what gives it a key
            await self._create(n, session)
            return
        if not await _lifetime_asked(n, state, session):
            self._hold(state)  # deleted: the next save starts afresh
            return
        user = payload.subject_of(session)
        await self._rotate(state, KEEP if user == state.subject else user)
        self.modified = True

    async def _rotate(self, state: RequestSession, subject: str | Keep | None) -> None:
        """A new key now, the old one dead in the same step (held from now on)."""
        try:
            await state.rotate(subject=subject)
        except SessionNotFound:
            self._stored = None
            raise UpdateError("the session was deleted before its key could change") from None
        self._hold(state)
        self._minted = True

    async def _delete(self, n: Namespace, key: str) -> None:
        await n.delete(key)
        if key == self.session_key:
            self._stored = None

    async def _revoke_others(self, n: Namespace, user: str) -> int:
        """One atomic `revoke_subject` keeping this session (if it has a key)."""
        key = self.session_key
        return await n.revoke_subject(user, keep=[key] if _well_formed(key) else [])

    def _hold(self, state: RequestSession) -> None:
        session = state.session
        self._stored = None if session is None else state
        self._session_key = None if session is None else session.id


async def _lifetime_asked(n: Namespace, state: RequestSession, session: dict[str, Any]) -> bool:
    """Ask `state` for the lifetime Django's `session` dict asks (`set_expiry`; none: the
    namespace's policy), stored by the write that follows in the same atomic step; False
    when the expiry has passed: the session is deleted instead."""
    stored = state.session
    assert stored is not None, "a held session is a stored one"
    expiry = expiry_of(session, n, stored.created_at, _now(n))
    if expiry.passed:
        await state.delete()
        return False
    state.set_lifetime(idle_ttl=expiry.idle_ttl, absolute_ttl=expiry.absolute_ttl)
    return True


async def _readable(n: Namespace, session_key: str) -> bool:
    """Whether `session_key` is a live session this process can open: one sealed under a key
    it was not given (or tampered with) is absent to Django, as `load` treats it (the store
    logged and counted it)."""
    try:
        return await n.get(session_key) is not None
    except SessionUnreadable:
        return False


async def _reap_all(n: Namespace) -> int:
    """Reap until a call comes back short: the backlog is drained."""
    reaped = 0
    while True:
        batch = len(await n.reap(REAP_BATCH))
        reaped += batch
        if batch < REAP_BATCH:
            return reaped


def _now(n: Namespace) -> int:
    return n.store.clock.now_ms()


def _well_formed(key: object) -> TypeGuard[str]:
    """Whether `key` could be a session id at all: anything else is unknown without asking
    the store."""
    try:
        ids.validate(key)
    except InvalidSessionId:
        return False
    return True
