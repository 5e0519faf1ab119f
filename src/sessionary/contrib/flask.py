"""Server-side sessions for Flask 3, in one line::

    from sessionary.contrib.flask import SessionInterface

    app.session_interface = SessionInterface("redis://localhost:6379/0")

`flask.session` then works as it always did (`flash` too), but the data lives in the store and
the cookie carries only the session's id. On login, `session.regenerate(subject=user_id)`
gives the session a new id (the old one is dead at once); on logout, `session.clear()` deletes
it and clears the cookie.

What Flask's settings mean here:

- `PERMANENT_SESSION_LIFETIME` is the store's idle expiry: a session not used for that long
  is gone (each request that presents the cookie slides it). `absolute_ttl` (an argument)
  caps a session's whole life, however active.
- `session.permanent = True` gives the cookie an Expires of now + that lifetime; otherwise
  it is a browser-session cookie. `SESSION_REFRESH_EACH_REQUEST` re-sends a permanent
  session's cookie on every request, as Flask does, so its Expires keeps sliding too.
- `SESSION_COOKIE_NAME`, `_DOMAIN`, `_PATH` (or `APPLICATION_ROOT`), `_HTTPONLY`, `_SECURE`,
  `_SAMESITE` and `_PARTITIONED` shape the cookie exactly as for Flask's own sessions.
- Values round-trip as with Flask's cookie sessions (tuples, bytes, `Markup`, `UUID`,
  `datetime`): each top-level value is stored tagged with Flask's `TaggedJSONSerializer`.

The rules of the session itself are `sessionary.session_request`'s, shared with every other
integration: no store call without a cookie, one (the touch) with one; an unknown, expired or
forged id is never adopted (the cookie is cleared) and a fresh id is minted only when a
request stores something (no session fixation); the session is written only when its data
changed (compared encoded, nested changes included), versioned, merging key by key onto a
concurrent request's write, so parallel requests of one user never lose each other's keys.

Why the cookie is not signed, and no `SECRET_KEY` is needed: the id is 256 random bits from
`secrets`, so guessing a live one is hopeless, and an id that is not a live session is refused
whatever it looks like (a malformed one never even reaches the store). A signature would only
prove that the server minted the value, which the store already knows; it would make a
hopeless guess no more hopeless, and it would cost something: rotating `SECRET_KEY` would log
everybody out. (Flask's own cookie sessions need the signature because there the cookie *is*
the data.)

Devices: `SessionInterface(..., devices=DevicePolicy(user_agent=True, ip="truncated"))` makes
a session record the user agent and client IP of the request that created it
(`sessionary.devices`); off by default, a privacy choice. The IP is `request.remote_addr`:
behind a proxy, wrap the app in werkzeug's `ProxyFix` so that it is the client's.

Sessions per subject: `SessionInterface(..., max_sessions_per_subject=3,
on_max_sessions="evict_oldest")` caps the live sessions of one subject (the one
`regenerate(subject=...)` gives): a login past it ends the subject's least recently active
session in the same step; with "refuse" (the default) `regenerate` raises
`SessionLimitReached` instead, a 409 with the service's JSON
(`{"error": "too_many_sessions", "message": ..., "max_sessions": 3}`) unless the view
catches it to answer its own way, and the session stays as it was (same id, no subject).
See docs/account-security.md.

Encryption at rest: `SessionInterface(url, encryption_keys=os.environ["SESSION_KEYS"])` seals
every session's data and metadata in the store (AES-256-GCM; a list of keys or one
comma-separated str, each 32 bytes or base64 text optionally prefixed "id:"; the first seals,
every one opens; see docs/encryption.md). A session that cannot be opened (sealed under a key
no longer listed, or tampered with) is treated as absent: the request gets a fresh session,
its cookie is cleared or replaced, and the store logs it to the `sessionary.security` logger.
A bad key is a `ValueError` naming its position and what is wrong with it, never the key.

A store outage (`StoreUnavailable`) is not a 500: a request that uses the session is
answered 503 with `Retry-After` and `{"error": "store_unavailable", ...}` (the service's
JSON), one that does not use it goes on, and the outage is logged once; or, with
`on_unavailable="fail_open"`, requests go on without a session (see `SessionInterface`).

A true conflict is not a 500 either: when another request of the same session changed a key
this one changed too (two increments of one counter, even to the same value), no merge can
keep both updates, so nothing is saved and the response is turned into a 409 with
`{"error": "session_conflict", ...}` (the ASGI middleware's JSON; the view's headers are
dropped), which the client may retry. Changes to different keys still merge, silently.

The interface is blocking (Flask's is); async views (`flask[async]`) work the same, since
Flask opens and saves the session outside the view. One `SyncStore` per store URL serves the
whole process (`sessionary.sync.shared`: its own loop thread and connections, re-opened in a
forked worker), shared with any other integration naming the same URL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from sessionary.contract import KEEP, Keep, OnMaxSessions
from sessionary.contrib import outage
from sessionary.devices import DevicePolicy, Sighting
from sessionary.errors import StoreUnavailable, TooManySessions, VersionConflict
from sessionary.extras import needs
from sessionary.model import Session
from sessionary.outage import RETRY_AFTER_UNAVAILABLE
from sessionary.sealing import EncryptionKeys
from sessionary.session_request import Outcome, RequestSession
from sessionary.store import Namespace, OnUnavailable
from sessionary.sync import SyncNamespace, SyncStore, shared

with needs("flask", "sessionary.contrib.flask"):
    from flask.json.tag import TaggedJSONSerializer
    from flask.sessions import SessionInterface as FlaskSessionInterface
    from flask.sessions import SessionMixin
    from werkzeug.datastructures import CallbackDict
    from werkzeug.exceptions import Conflict, ServiceUnavailable

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask
    from flask.wrappers import Request, Response

__all__ = [
    "ServerSession",
    "SessionInterface",
    "SessionLimitReached",
    "SessionStoreUnavailable",
    "UnavailableSession",
]

_TAGGER = TaggedJSONSerializer()
_T = TypeVar("_T")


def _tagged(value: Any) -> Any:
    return _TAGGER.tag(value)


def _untagged(value: Any) -> Any:
    """Undo `_tagged`, innermost first (as Flask's `TaggedJSONSerializer.loads` does while
    parsing): a tagged value may hold tagged values."""
    if isinstance(value, dict):
        return _TAGGER.untag({key: _untagged(item) for key, item in value.items()})
    if isinstance(value, list):
        return [_untagged(item) for item in value]
    return value


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """`flask.session`: a dict of the session's data (values as the application set them),
    plus its identity.

    `modified` is set by any change to the dict itself (Flask uses it to re-send the cookie);
    `accessed` is set by Flask whenever `flask.session` is used (it adds `Vary: Cookie`).
    Neither decides whether the store is written: the data is compared with what was loaded,
    so a change deep inside a nested value is saved without `modified = True`.
    """

    modified = False
    accessed = False

    def __init__(
        self,
        namespace: SyncNamespace | None,
        state: RequestSession | None,
        data: dict[str, Any],
        device: Sighting | None = None,
    ) -> None:
        def on_update(session: ServerSession) -> None:
            session.modified = True

        super().__init__(data, on_update)
        #: None: the store was down when the request began and the namespace fails open, so
        #: this session lives for the request only (never loaded, never saved)
        self._namespace = namespace
        #: the framework-free session; None while nothing was presented (created on the
        #: store's loop when something needs it, so a request without one costs no hand-off)
        self._state = state
        #: what to record of the client if this request creates the session
        self._device = device
        self._regenerated = False
        self.new = state is None or state.session is None

    @property
    def id(self) -> str | None:
        """The session's id (what the cookie carries); None until it is stored."""
        return None if self._state is None else self._state.id

    @property
    def subject(self) -> str | None:
        """Who the session belongs to (set on login with `regenerate(subject=...)`)."""
        return None if self._state is None else self._state.subject

    def regenerate(self, *, subject: str | Keep | None = KEEP) -> None:
        """Give the session a new id now, killing the old one, and optionally set its
        subject: call it on login (and on any change of privilege). The data stays; the
        response carries the new id. A session not stored yet gets its id when it is.

        With the store down this raises `SessionStoreUnavailable` (a 503), even when the
        namespace fails open: a login that cannot kill the old id must not go on. (A session
        opened without the store, failing open, has no stored id to kill, and is never
        saved.) `SessionLimitReached` (a 409) when the subject has as many sessions as the
        namespace allows and it refuses more: the session stays as it was."""

        async def rotate(namespace: Namespace) -> None:
            await self._state_on(namespace).rotate(subject=subject)

        if self._namespace is not None:
            try:
                self._namespace.run(rotate)
            except StoreUnavailable as error:
                raise SessionStoreUnavailable(error) from None
            except TooManySessions as error:
                raise SessionLimitReached(error) from None
        self.accessed = True
        self._regenerated = True

    def list_mine(self) -> list[Session]:
        """The live sessions of this session's subject ("my devices"), newest first; []
        when no one is logged in."""
        return self._subjects_sessions(lambda state: state.list_mine(), [])

    def revoke_others(self) -> int:
        """Log the subject out of every other session ("log out my other devices") in one
        atomic step that keeps this one; how many ended (0 when no one is logged in)."""
        return self._subjects_sessions(lambda state: state.revoke_others(), 0)

    def _subjects_sessions(self, work: Callable[[RequestSession], Awaitable[_T]], nobody: _T) -> _T:
        """`work` on the store's loop; `nobody` without a store call when no one is logged
        in; the store down is a 503, as for `regenerate`."""
        self.accessed = True
        state = self._state
        if self._namespace is None or state is None or state.subject is None:
            return nobody
        try:
            return self._namespace.run(lambda _: work(state))
        except StoreUnavailable as error:
            raise SessionStoreUnavailable(error) from None

    def _state_on(self, namespace: Namespace) -> RequestSession:
        if self._state is None:
            self._state = RequestSession.fresh(namespace, device=self._device)
        return self._state

    def _commit(self) -> Outcome:
        """Write the session back if it changed, and what the cookie must do. Only work that
        needs the store is handed to its loop (in one hand-off): a request that left its
        session as it found it costs nothing here."""
        namespace = self._namespace
        if namespace is None:
            return Outcome.NOTHING  # opened without the store (fail open): nothing to write
        used = self.accessed or self.modified or self._regenerated
        if not used and (self._state is None or not self._state.stale):
            return Outcome.NOTHING  # never used, so unchanged, and no dead id to clear
        emptied = not self and self.modified and not self._regenerated
        data = {key: _tagged(value) for key, value in self.items()}
        state = self._state
        if not emptied and state is None and not data:
            return Outcome.NOTHING  # nothing presented, nothing to store
        if not emptied and state is not None:
            state.data = data
            if not (state.changed() or state.stale or self._regenerated):
                return Outcome.NOTHING  # compared encoded, nested values too: no write

        async def commit(on: Namespace) -> Outcome:
            current = self._state_on(on)
            if emptied:  # as Flask drops an emptied cookie session: the session ends
                await current.delete()
            else:
                current.data = data
            return await current.commit()

        return namespace.run(commit)

    def __repr__(self) -> str:
        return f"ServerSession({self._state!r})"


class SessionStoreUnavailable(ServiceUnavailable):
    """The session store is down: a 503 with `Retry-After` and the JSON body of sessionary's
    service (`sessionary.contrib.outage`), raised where the view uses a session that could
    not be loaded. An HTTPException, so Flask answers it as it is (or with the app's own
    503 handler), never as a 500 with a traceback."""

    def __init__(self, error: StoreUnavailable) -> None:
        super().__init__(outage.MESSAGE, retry_after=RETRY_AFTER_UNAVAILABLE)
        self.error = error

    def get_body(
        self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None
    ) -> str:
        return outage.BODY.decode()

    def get_headers(
        self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None
    ) -> list[tuple[str, str]]:
        return [("Content-Type", outage.CONTENT_TYPE), *outage.HEADERS.items()]


class SessionLimitReached(Conflict):
    """A login the namespace's `max_sessions_per_subject` refuses (`on_max_sessions=
    "refuse"`): a 409 with the JSON body of sessionary's service, raised by `regenerate`.
    An HTTPException, so Flask answers it as it is (or with the app's own 409 handler),
    never as a 500; a view may catch it to answer its own way. `error` is the
    `TooManySessions` (its `max_sessions`, its `subject`)."""

    def __init__(self, error: TooManySessions) -> None:
        super().__init__(str(error))
        self.error = error

    def get_body(
        self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None
    ) -> str:
        return outage.error_body(self.error).decode()

    def get_headers(
        self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None
    ) -> list[tuple[str, str]]:
        return [("Content-Type", outage.CONTENT_TYPE)]


class UnavailableSession(SessionMixin):
    """`flask.session` while the store is down and the namespace fails closed: any use of
    it raises `SessionStoreUnavailable` (a 503), so a view that needs the session is
    answered "try again shortly" and one that does not goes on. It is never saved.

    Why an object that raises and not an error at once: Flask opens the session before the
    view, and an exception there is a 500 whatever it is; and a request that never touches
    the session (a health check, a static page) has no reason to fail.
    """

    def __init__(self, error: StoreUnavailable) -> None:
        self.error = error
        #: the view tried to use it (and was refused)
        self.touched = False

    def _refuse(self) -> NoReturn:
        self.touched = True
        raise SessionStoreUnavailable(self.error)

    def __getitem__(self, key: str) -> Any:
        self._refuse()

    def __setitem__(self, key: str, value: Any) -> None:
        self._refuse()

    def __delitem__(self, key: str) -> None:
        self._refuse()

    def __iter__(self) -> Iterator[str]:
        self._refuse()

    def __len__(self) -> int:
        self._refuse()

    @property
    def id(self) -> str | None:
        self._refuse()

    @property
    def subject(self) -> str | None:
        self._refuse()

    def regenerate(self, *, subject: str | Keep | None = KEEP) -> None:
        self._refuse()

    def __repr__(self) -> str:
        return f"UnavailableSession({self.error})"


class SessionInterface(FlaskSessionInterface):
    """Flask's session interface over a sessionary store; see the module docstring.

    `store` is a store URL (default: the SQLite file `sessionary.db`), served by the process's
    one `SyncStore` for it, or a `SyncStore` of your own. `namespace` names the space of
    sessions in the store; `absolute_ttl` caps a session's life however active (None: only
    the idle expiry, `PERMANENT_SESSION_LIFETIME`, ends it).

    `on_unavailable` is what a request gets while the store is down (`StoreUnavailable`):

    - "fail_closed" (the default): a request that uses the session is answered 503 with
      `Retry-After` and `{"error": "store_unavailable", ...}` (`flask.session` is an
      `UnavailableSession`, whose first use raises `SessionStoreUnavailable`); one that
      changed its session but could not save it is turned into that 503 as it is sent. A
      request that does not use the session goes on.
    - "fail_open": requests go on without a session (an empty one that is never saved, and
      no cookie is sent); what a request could not save is lost.

    Either way the outage is logged once when it starts and once when it ends.

    `devices` says what a created session records of its client (nothing by default; see
    the module docstring). `max_sessions_per_subject` and `on_max_sessions` cap each
    subject's live sessions (see the module docstring). `encryption_keys` seals the sessions
    of a store given by URL (see the module docstring); a `SyncStore` of your own is opened
    with its keys (`connect_sync(url, encryption_keys=...)`).
    """

    def __init__(
        self,
        store: str | SyncStore | None = None,
        *,
        namespace: str = "flask",
        absolute_ttl: timedelta | None = None,
        on_unavailable: OnUnavailable = "fail_closed",
        devices: DevicePolicy | None = None,
        max_sessions_per_subject: int | None = None,
        on_max_sessions: OnMaxSessions = "refuse",
        encryption_keys: EncryptionKeys | None = None,
    ) -> None:
        if on_unavailable not in ("fail_closed", "fail_open"):
            raise ValueError("on_unavailable is 'fail_closed' or 'fail_open'")
        if isinstance(store, SyncStore):
            if encryption_keys:
                raise ValueError(
                    "encryption_keys go with a store URL: open the SyncStore with them "
                    "(connect_sync(url, encryption_keys=...))"
                )
            self.store = store
        else:
            self.store = shared(store, encryption_keys=encryption_keys)
        self.namespace_name = namespace
        self.absolute_ttl = absolute_ttl
        self.on_unavailable = on_unavailable
        self.devices = devices if devices is not None and devices.records else None
        self.max_sessions_per_subject = max_sessions_per_subject
        self.on_max_sessions: OnMaxSessions = on_max_sessions
        self._namespace: SyncNamespace | None = None
        self._outage = outage.Outage(f"Flask sessions ({namespace})")

    def namespace(self, app: Flask) -> SyncNamespace:
        """The store namespace, its idle expiry the app's `PERMANENT_SESSION_LIFETIME`
        (opened on the first request; a lifetime changed later is an error, not ignored)."""
        found = self._namespace
        if found is None or found.idle_ttl != app.permanent_session_lifetime:
            found = self._namespace = self.store.namespace(
                self.namespace_name,
                idle_ttl=app.permanent_session_lifetime,
                absolute_ttl=self.absolute_ttl,
                on_unavailable=self.on_unavailable,
                max_sessions_per_subject=self.max_sessions_per_subject,
                on_max_sessions=self.on_max_sessions,
            )
        return found

    def open_session(self, app: Flask, request: Request) -> ServerSession | UnavailableSession:
        presented = request.cookies.get(self.get_cookie_name(app)) or None
        device = None
        if self.devices is not None:
            device = self.devices.seen(request.user_agent.string, request.remote_addr)
        try:
            namespace = self.namespace(app)  # a store call on the first request only
            if presented is None:
                return ServerSession(namespace, None, {}, device)
            state = namespace.run(lambda ns: RequestSession.load(ns, presented, device=device))
        except StoreUnavailable as error:
            if self.on_unavailable == "fail_open":
                self._outage.failed(error, "requests go on without sessions (fail open)")
                return ServerSession(None, None, {})
            self._outage.failed(error, "requests that use the session are answered 503")
            return UnavailableSession(error)
        if state.looked_up:
            self._outage.worked()
        data = {key: _untagged(value) for key, value in state.data.items()}
        return ServerSession(namespace, state, data, device)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if isinstance(session, UnavailableSession):
            if session.touched and response.status_code != outage.STATUS:
                _unavailable_in_place(response)  # the view caught the 503 and went on
            return
        if not isinstance(session, ServerSession):
            raise TypeError(f"{type(self).__name__} saves only the sessions it opened")
        if session.accessed:
            response.vary.add("Cookie")
        try:
            outcome = session._commit()
        except StoreUnavailable as error:
            if self.on_unavailable == "fail_open":
                self._outage.failed(error, "requests go on without sessions (fail open)")
                return  # what it changed is lost; the response goes out as it is
            self._outage.failed(error, "requests that use the session are answered 503")
            _unavailable_in_place(response)
            return
        except VersionConflict:  # a key changed by another request too: nothing was saved
            _answered_in_place(response, outage.CONFLICT_STATUS, outage.CONFLICT_BODY)
            return
        session_id = session.id
        if outcome is Outcome.CLEAR:
            self._clear_cookie(app, response)
        elif session_id is not None and (
            outcome is Outcome.ISSUE or self.should_set_cookie(app, session)
        ):
            self._set_cookie(app, session, session_id, response)

    def _set_cookie(
        self, app: Flask, session: ServerSession, session_id: str, response: Response
    ) -> None:
        response.set_cookie(
            self.get_cookie_name(app),
            session_id,
            expires=self.get_expiration_time(app, session),
            httponly=self.get_cookie_httponly(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            partitioned=self.get_cookie_partitioned(app),
            samesite=self.get_cookie_samesite(app),
        )
        response.vary.add("Cookie")

    def _clear_cookie(self, app: Flask, response: Response) -> None:
        response.delete_cookie(
            self.get_cookie_name(app),
            domain=self.get_cookie_domain(app),
            path=self.get_cookie_path(app),
            secure=self.get_cookie_secure(app),
            partitioned=self.get_cookie_partitioned(app),
            samesite=self.get_cookie_samesite(app),
            httponly=self.get_cookie_httponly(app),
        )
        response.vary.add("Cookie")


def _unavailable_in_place(response: Response) -> None:
    """Turn `response` into the 503 of a store outage."""
    _answered_in_place(response, outage.STATUS, outage.BODY, outage.HEADERS)


def _answered_in_place(
    response: Response, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    """Turn `response` into `status` with the service's JSON `body`: Flask sends the object
    it handed to `save_session`, and raising from there would make a 500. The view's headers
    go too (its cookies, `Location`, caching): they described an answer that is not sent."""
    response.headers.clear()
    response.status_code = status
    response.content_type = outage.CONTENT_TYPE
    response.headers.update(headers or {})
    response.set_data(body)
