"""The session of one request, and what the response must tell the client: framework-free.

Every web integration (the ASGI middleware, Django, Flask, Litestar) follows the same rules,
and they are security rules, so they live here once:

* a request without an id costs no store call; a request with one costs one round trip (the
  touch, which also slides the idle expiry);
* an unknown, expired, malformed or forged id is never adopted (a malformed one is refused
  before any store call), and a fresh id is issued only when the request stores something:
  an attacker cannot plant an id (no session fixation);
* the session is written back only when it changed, nested changes included (the data is
  compared encoded), with optimistic concurrency: when another request wrote meanwhile, this
  request's changes are merged onto the other's key by key, so two requests changing different
  keys both keep theirs; a key both changed (a counter both incremented) is a true conflict,
  `VersionConflict` (the ASGI middleware's 409 `session_conflict`): never a lost update;
* a session deleted meanwhile (logged out elsewhere) stays deleted: it is never resurrected;
* `rotate` (on login) gives a new id at once, killing the old one; `delete` (on logout)
  deletes at once;
* `set_lifetime` ("remember me") gives the session a lifetime of its own, in the same atomic
  step as the rotate that follows it, else at the next save; the response then reissues the
  id (its cookie's Max-Age follows the lifetime);
* in a namespace with `max_sessions_per_subject` and `on_max_sessions="refuse"`, a login
  (`rotate(subject=...)`) past the limit raises `TooManySessions` at the call, the session
  left as it was, for the application to answer as it likes; with "evict_oldest" it
  succeeds and the subject's least recently active sessions end in the same step.

An integration calls `RequestSession.load` with the id the client presented, hands the
object to the application, then calls `commit` and sends the cookie the `Outcome` asks for
(`outcome_after_failure` if the application crashed before answering). The object is a
mutable mapping over the session's data.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Iterator, MutableMapping
from datetime import timedelta
from typing import Any

import orjson

from sessionary.contract import KEEP, Keep
from sessionary.devices import Sighting
from sessionary.errors import (
    InvalidSessionId,
    SessionNotFound,
    SessionUnreadable,
    TooManySessions,
    VersionConflict,
)
from sessionary.model import Session
from sessionary.store import Namespace

# Writers racing on one session win one per round, so n racers need up to n rounds: a writer
# keeps merging for up to MERGE_BUDGET_S, not a fixed number of rounds (which would refuse
# the n-th of n racers however quick each round is), pausing a jittered while that grows with
# the rounds (up to MERGE_PAUSE_MAX_S) to spread the racers out.
MERGE_BUDGET_S = 2.0
MERGE_PAUSE_S = 0.002
MERGE_PAUSE_MAX_S = 0.05
#: how every engine answers a true conflict (`save`'s `VersionConflict`): the ASGI middleware
#: and Flask with a 409 of this code and message, Django with its 400 (`UpdateError`)
CONFLICT_CODE = "session_conflict"
CONFLICT_MESSAGE = "another request changed the session meanwhile; retry"


class Outcome(enum.Enum):
    """What the response must tell the client about its session id."""

    NOTHING = "nothing"  # send no cookie
    ISSUE = "issue"  # send the cookie carrying the session's (new) id: `RequestSession.id`
    CLEAR = "clear"  # clear the client's cookie (logged out, or the id it sent is dead)


def _refused_at_login(namespace: Namespace, subject: str | Keep | None) -> bool:
    """Whether giving a new session `subject` may be refused by the namespace's session
    limit (one that evicts never refuses: its logins may wait for `commit`)."""
    limit = namespace.session_limit
    return isinstance(subject, str) and limit is not None and limit.on_max == "refuse"


def _fingerprint(data: dict[str, Any]) -> bytes:
    """The data encoded canonically: equal fingerprints, equal data (nested values too)."""
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


_EMPTY = _fingerprint({})


def _changed_keys(base: dict[str, Any], data: dict[str, Any]) -> set[str]:
    """The keys `data` added, removed or changed (compared encoded) relative to `base`."""
    changed = {key for key in base if key not in data}
    for key, value in data.items():
        if key not in base or _fingerprint({key: value}) != _fingerprint({key: base[key]}):
            changed.add(key)
    return changed


class RequestSession(MutableMapping[str, Any]):
    """The current request's session: a mutable mapping over its data, plus its identity.

    Reading or writing it costs nothing; `commit` writes it back, if it changed. Reading
    anything of it marks it `accessed` (a response that depends on the session varies with
    the cookie).
    """

    def __init__(
        self,
        namespace: Namespace,
        session: Session | None = None,
        *,
        stale: bool = False,
        device: Sighting | None = None,
    ) -> None:
        self._namespace = namespace
        #: the client as the operator's `DevicePolicy` records it, on a session this request
        #: creates (`sessionary.devices`); None: nothing is recorded
        self.device = device
        self._session = session
        self._data: dict[str, Any] = session.data if session is not None else {}
        self._original = _EMPTY if session is None else _fingerprint(self._data)
        self._subject: str | Keep | None = KEEP
        # a lifetime asked by `set_lifetime` and not stored yet: (idle_ttl, absolute_ttl)
        self._lifetime: tuple[timedelta | None, timedelta | None] | None = None
        self._reissue = False
        self._deleted = False
        self.accessed = False
        #: The client presented an id that is not (or no longer) a live session.
        self.stale = stale
        #: The presented id was well-formed, so the store was asked for it.
        self.looked_up = False
        #: `save` found the session deleted by another request: it stays deleted.
        self.deleted_meanwhile = False
        #: `rotate` gave the stored session a new id (for telemetry: read without marking
        #: the session accessed)
        self.rotated = False

    @classmethod
    def fresh(cls, namespace: Namespace, *, device: Sighting | None = None) -> RequestSession:
        """A request that presented no id: no store call. `device`: what to record of the
        client if the request creates a session."""
        return cls(namespace, device=device)

    @classmethod
    async def load(
        cls, namespace: Namespace, presented: str | None, *, device: Sighting | None = None
    ) -> RequestSession:
        """The session of the id the client presented, touched (one round trip, sliding its
        idle expiry). No id, or a malformed one: no store call. An unknown, expired or
        malformed id gives a fresh session marked `stale`, and so does a sealed session this
        store cannot open (encryption at rest: a key not given, or tampered bytes; as Django
        does on a decode failure; the store logged and counted it, see
        `Store.unreadable`). `StoreUnavailable` propagates:
        the integration decides between failing closed and open. `device`: what to record
        of the client if the request creates a session."""
        if presented is None:
            return cls(namespace, device=device)
        try:
            session = await namespace.touch(presented)
        except InvalidSessionId:  # forged or mangled: never reaches the store
            return cls(namespace, stale=True, device=device)
        except SessionUnreadable:  # absent to the request; left in the store as it is
            session = None
        loaded = cls(namespace, session, stale=session is None, device=device)
        loaded.looked_up = True
        return loaded

    # -- identity ---------------------------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The stored session's id; None until one is stored."""
        self.accessed = True
        return None if self._session is None else self._session.id

    @property
    def is_new(self) -> bool:
        """No stored session yet (one is created if the request stores something)."""
        self.accessed = True
        return self._session is None

    @property
    def session(self) -> Session | None:
        """The stored session as it was loaded (or after `rotate`, or `save`)."""
        self.accessed = True
        return self._session

    @property
    def subject(self) -> str | None:
        self.accessed = True
        if self._subject is not KEEP:
            return self._subject
        return None if self._session is None else self._session.subject

    @property
    def data(self) -> dict[str, Any]:
        self.accessed = True
        return self._data

    @data.setter
    def data(self, value: dict[str, Any]) -> None:
        """Replace the whole mapping (compared with what was loaded, like any change)."""
        self.accessed = True
        self._data = value

    async def rotate(self, *, subject: str | Keep | None = KEEP) -> None:
        """Give the session a new id now, optionally setting its subject: call it on login.
        The old id is dead in the same step. A session not stored yet is created with the
        subject at `commit`, or now in a namespace whose session limit refuses
        (`max_sessions_per_subject`, `on_max_sessions="refuse"`), so that the refusal
        reaches the caller here. `TooManySessions` when the limit refuses the subject: the
        session stays as it was (same id, same subject, nothing written)."""
        self.accessed = True
        if self._session is None:
            previous, self._subject = self._subject, subject
            if _refused_at_login(self._namespace, subject):
                try:
                    await self.save()
                except TooManySessions:
                    self._subject = previous
                    raise
            return
        idle_ttl, absolute_ttl = self._lifetime or (KEEP, KEEP)
        self._session = await self._namespace.rotate(
            self._session.id, subject=subject, idle_ttl=idle_ttl, absolute_ttl=absolute_ttl
        )
        self._lifetime = None
        self._reissue = self.rotated = True

    def set_lifetime(
        self, *, idle_ttl: timedelta | None = None, absolute_ttl: timedelta | None = None
    ) -> None:
        """Give the session a lifetime of its own ("remember me"), instead of the namespace's
        (a ttl not given is the namespace's; neither: back to the namespace's policy). Checked
        now (`ValidationError`, e.g. past the namespace's `max_absolute_ttl`), stored with the
        `rotate` that follows in this request (one atomic step: call it before `rotate` on
        login), else at the next save."""
        self.accessed = True
        self._namespace.own_lifetime(idle_ttl, absolute_ttl)
        self._lifetime = (idle_ttl, absolute_ttl)

    def set_subject(self, subject: str | None) -> None:
        """Record `subject` (or None: no one) as the session's owner at the next save, keeping
        its id. On login prefer `rotate(subject=...)`: only a new id makes a planted one
        worthless; this is for recording an owner on a session already rotated."""
        self.accessed = True
        self._subject = subject

    async def delete(self) -> None:
        """Delete the session now; `commit` then clears the client's cookie: call it on
        logout."""
        self.accessed = True
        if self._session is not None:
            await self._namespace.delete(self._session.id)
        self._forget()
        self._deleted = True

    # -- the subject's other sessions ("my devices") ----------------------------------------

    async def list_mine(self) -> list[Session]:
        """The live sessions of this session's subject, newest first (this one among them once
        stored); [] when no one is logged in, without a store call."""
        subject = self.subject
        if subject is None:
            return []
        return await self._namespace.list_subject(subject)

    async def revoke_others(self) -> int:
        """Log the subject out of every other session ("log out my other devices"): one
        atomic `revoke_subject` that keeps this session, so a concurrent request never finds
        it half revoked. Returns how many were deleted; 0 when no one is logged in, without
        a store call. A subject set but not stored yet (a login this request) counts: the
        others of that subject end, and this one is created at `commit`."""
        subject = self.subject
        if subject is None:
            return 0
        keep = [] if self._session is None else [self._session.id]
        return await self._namespace.revoke_subject(subject, keep=keep)

    def _forget(self) -> None:
        self._session = None
        self._data = {}
        self._original = _EMPTY

    # -- mapping over data ------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:  # never print a whole id: it is a bearer credential
        short = "new" if self._session is None else f"{self._session.id[:8]}..."
        return f"{type(self).__name__}({short}, keys={list(self._data)})"

    # -- writing back -----------------------------------------------------------------------

    def changed(self) -> bool:
        """Whether `save` has anything to write: a subject to set, or data that differs
        (encoded) from what was loaded. Nothing stored yet: any data at all is a change."""
        if self._subject is not KEEP or self._lifetime is not None:
            return True
        if self._session is None:
            return bool(self._data)
        return _fingerprint(self._data) != self._original

    @property
    def untouched(self) -> bool:
        """A request that neither had a session nor did anything with one."""
        return (
            not self.accessed
            and self._session is None
            and not self._data
            and self._subject is KEEP
            and not self._deleted
        )

    def _merged_onto(self, latest: dict[str, Any]) -> dict[str, Any] | None:
        """This request's changes, key by key, applied over what another request stored
        (`latest`); None when a key was changed by both (each side differs from what this
        request loaded, even to the same value: two increments of one counter), a true
        conflict that no merge can settle without losing one of the two updates."""
        base = orjson.loads(self._original)  # as loaded (the live data may share its lists)
        mine = _changed_keys(base, self._data)
        if mine & _changed_keys(base, latest):
            return None
        merged = dict(latest)
        for key in mine:
            if key in self._data:
                merged[key] = self._data[key]
            else:
                merged.pop(key, None)
        return merged

    async def save(self) -> Session | None:
        """Write the data back. Nothing stored yet: create it, with a fresh id (never the one
        presented) and the client's `device` recorded in its metadata. Else a versioned
        update; when another request wrote meanwhile, merge key by key onto its data and
        retry (`VersionConflict` after `MERGE_BUDGET_S`, or at once when the other request
        changed a key this one changed too). Deleted meanwhile: it stays
        deleted, `deleted_meanwhile` is set, None is returned."""
        namespace = self._namespace
        if self._session is None:
            if not self._data and self._subject in (KEEP, None):
                return None
            subject = None if self._subject is KEEP else self._subject
            idle_ttl, absolute_ttl = self._lifetime or (None, None)
            device = self.device
            self._saved(
                await namespace.create(
                    data=self._data,
                    subject=subject,
                    idle_ttl=idle_ttl,
                    absolute_ttl=absolute_ttl,
                    metadata=None if device is None else await device.metadata(namespace.store),
                )
            )
            self._reissue = True
            return self._session
        data, version = self._data, self._session.version
        idle, absolute = self._lifetime or (KEEP, KEEP)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MERGE_BUDGET_S
        attempt = 0
        while True:
            try:
                relives = self._lifetime is not None
                self._saved(
                    await namespace.update(
                        self._session.id,
                        data=data,
                        subject=self._subject,
                        expected_version=version,
                        idle_ttl=idle,
                        absolute_ttl=absolute,
                    )
                )
                self._reissue = self._reissue or relives  # its cookie follows the lifetime
                return self._session
            except SessionNotFound:  # deleted (logged out elsewhere) or expired meanwhile
                self._deleted_meanwhile()
                return None
            except VersionConflict:
                latest = await namespace.get(self._session.id)
                if latest is None:  # deleted between the conflict and this read
                    self._deleted_meanwhile()
                    return None
                merged = self._merged_onto(latest.data)
                if merged is None or loop.time() >= deadline:
                    raise VersionConflict(self._session.id, version, latest.version) from None
                data = merged
                version = latest.version
                attempt += 1
                await asyncio.sleep(
                    random.uniform(0, min(MERGE_PAUSE_S * attempt, MERGE_PAUSE_MAX_S))
                )

    def _saved(self, session: Session) -> None:
        """What is stored now (merged with a concurrent writer's keys, if any) is what this
        object holds and compares against: a later save writes only later changes."""
        self._session = session
        self._data = session.data
        self._original = _fingerprint(self._data)
        self._subject = KEEP
        self._lifetime = None

    def _deleted_meanwhile(self) -> None:
        """Another request deleted the session: it stays deleted (never resurrected)."""
        self._forget()
        self._deleted = self.deleted_meanwhile = True

    async def commit(self) -> Outcome:
        """Save if changed, then what the response must tell the client. Store errors
        (`StoreUnavailable`, `VersionConflict`, `TooManySessions` for a subject set by
        `set_subject`) propagate for the integration to answer; nothing was written then."""
        if self.changed():
            await self.save()  # creates, updates, or finds it deleted meanwhile
        if self._deleted and self._session is None:
            return Outcome.CLEAR
        if self._reissue and self._session is not None:
            return Outcome.ISSUE
        if self.stale:
            return Outcome.CLEAR  # the id it sent is dead: stop sending it
        return Outcome.NOTHING

    def outcome_after_failure(self) -> Outcome:
        """The application failed before answering: if the session got a new id meanwhile
        (the old one is dead already), the error response must still carry it (ISSUE): a
        failed response never hides a completed write. Else NOTHING."""
        if self._reissue and self._session is not None:
            return Outcome.ISSUE
        return Outcome.NOTHING
