"""Sessions for any Starlette or FastAPI application, in two lines:

    app.add_middleware(SessionMiddleware, store="redis://localhost:6379/0", namespace="web")

    @app.post("/cart")
    async def add(item: str, session: CurrentSession):
        session["cart"] = [*session.get("cart", []), item]

Costs: a request without a session cookie costs no store call; a request with one costs one
round trip (the touch, which also slides the idle expiry); the session is written back only
when the handler changed it (nested changes included: the data is compared encoded), with
optimistic concurrency and a key-wise merge when another request wrote meanwhile.

WebSocket connections get the session read-only (there is no response to carry a cookie);
with the store down and failing closed they are closed with code 1013 (try again later).

Safety: an unknown, expired or malformed id is never adopted; a fresh id is issued only when
the handler stores something (no session fixation). `await session.rotate(subject=...)` on
login, `await session.delete()` on logout. When the store is down the namespace's policy
decides: fail closed (503 JSON, the default) or fail open (no session, logged once per outage
and counted).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator, MutableMapping
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import Depends
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionary.contract import KEEP, Keep
from sessionary.errors import InvalidSessionId, StoreUnavailable, VersionConflict
from sessionary.http.cookies import CookieSpec
from sessionary.http.errors import error_response, internal_error_response, unavailable_response
from sessionary.http.source import StoreSource
from sessionary.model import Session
from sessionary.outage import OutageLog
from sessionary.store import Namespace, Store

if TYPE_CHECKING:
    from sessionary.http.metrics import Metrics

log = logging.getLogger("sessionary.middleware")

STATE_KEY = "session"
# Writers racing on one session win one per round, so n racers need n rounds; the jittered
# pause between rounds spreads them out. (A user's own parallel requests are a handful.)
_MERGE_ATTEMPTS = 16
_MERGE_PAUSE = 0.002


def _fingerprint(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


_EMPTY = _fingerprint({})


class SessionHandle(MutableMapping[str, Any]):
    """The current request's session: a mutable mapping over its data, plus its identity.

    Reading or writing it costs nothing; the middleware writes it back after the handler, if
    it changed.
    """

    def __init__(self, namespace: Namespace, session: Session | None) -> None:
        self._namespace = namespace
        self._session = session
        self._data: dict[str, Any] = session.data if session is not None else {}
        self._original = _EMPTY if session is None else _fingerprint(self._data)
        self._subject: str | Keep | None = KEEP
        self._reissue = False
        self._deleted = False
        self.accessed = False

    # -- identity ---------------------------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The stored session's id; None until one is stored."""
        self.accessed = True
        return None if self._session is None else self._session.id

    @property
    def is_new(self) -> bool:
        """No stored session yet (one is created if the handler stores something)."""
        self.accessed = True
        return self._session is None

    @property
    def session(self) -> Session | None:
        """The stored session as it was loaded (or after `rotate`)."""
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

    async def rotate(self, *, subject: str | Keep | None = KEEP) -> None:
        """Give the session a new id now, optionally setting its subject: call it on login.
        A session not stored yet is created with the subject when the response goes out."""
        self.accessed = True
        if self._session is None:
            self._subject = subject
            return
        self._session = await self._namespace.rotate(self._session.id, subject=subject)
        self._reissue = True

    async def delete(self) -> None:
        """Delete the session now and clear the client's cookie: call it on logout."""
        self.accessed = True
        if self._session is not None:
            await self._namespace.delete(self._session.id)
        self._session = None
        self._data = {}
        self._original = _fingerprint(self._data)
        self._deleted = True

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

    def __repr__(self) -> str:
        short = "new" if self._session is None else f"{self._session.id[:8]}..."
        return f"SessionHandle({short}, keys={list(self._data)})"

    # -- for the middleware -----------------------------------------------------------------

    def changed(self) -> bool:
        if self._subject is not KEEP:
            return True
        if self._session is None and self._original is _EMPTY:
            return bool(self._data)  # nothing stored yet: any data at all is a change
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

    def _merged_onto(self, latest: dict[str, Any]) -> dict[str, Any]:
        """This request's changes, key by key, applied over what another request stored."""
        base = orjson.loads(self._original)  # as loaded (the live data may share its lists)
        merged = {k: v for k, v in latest.items() if k in self._data or k not in base}
        for key, value in self._data.items():
            if key not in base or _fingerprint({key: value}) != _fingerprint({key: base[key]}):
                merged[key] = value
        return merged

    async def save(self) -> Session | None:
        """Write the data back: versioned, merging key by key with a concurrent writer."""
        namespace = self._namespace
        if self._session is None:
            if not self._data and self._subject in (KEEP, None):
                return None
            subject = None if self._subject is KEEP else self._subject
            self._session = await namespace.create(data=self._data, subject=subject)
            self._reissue = True
            return self._session
        data, version = self._data, self._session.version
        for attempt in range(_MERGE_ATTEMPTS):
            try:
                self._session = await namespace.update(
                    self._session.id, data=data, subject=self._subject, expected_version=version
                )
                return self._session
            except VersionConflict:
                latest = await namespace.get(self._session.id)
                if latest is None:  # deleted meanwhile (logged out elsewhere): stay deleted
                    self._session = None
                    self._deleted = True
                    return None
                data = self._merged_onto(latest.data)
                version = latest.version
                await asyncio.sleep(random.uniform(0, _MERGE_PAUSE * attempt))
        raise VersionConflict(self._session.id, version, -1)


class SessionMiddleware:
    """See the module docstring. `store` is a `Store`, a URL opened on first use, or None
    with `namespace` a `Namespace`; a namespace given by name is opened with `idle_ttl` and
    `absolute_ttl`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: Store | str | StoreSource | None = None,
        namespace: str | Namespace = "web",
        idle_ttl: timedelta | None = timedelta(minutes=30),
        absolute_ttl: timedelta | None = timedelta(hours=12),
        transport: Literal["cookie", "header"] = "cookie",
        cookie_name: str = "session",
        header_name: str = "X-Session-Id",
        https_only: bool = True,
        same_site: Literal["lax", "strict", "none"] = "lax",
        path: str = "/",
        domain: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        if isinstance(namespace, Namespace):
            self._namespace: Namespace | None = namespace
            self._source = StoreSource(namespace.store)
        else:
            self._namespace = None
            self._source = StoreSource.of(store)
        self._name = namespace if isinstance(namespace, str) else namespace.name
        self._ttls = (idle_ttl, absolute_ttl)
        self.transport = transport
        self.header = header_name.lower().encode("latin-1")
        self.cookie = CookieSpec(
            cookie_name,
            secure=https_only,
            same_site=same_site,
            path=path,
            domain=domain,
            max_age=None if absolute_ttl is None else int(absolute_ttl.total_seconds()),
        )
        self.metrics = metrics
        self._outage = OutageLog(log, f"session middleware ({self._name})")

    async def _ns(self) -> Namespace:
        if self._namespace is None:
            store = await self._source.get()
            idle, absolute = self._ttls
            self._namespace = store.namespace(self._name, idle_ttl=idle, absolute_ttl=absolute)
        return self._namespace

    def _presented(self, scope: Scope) -> str | None:
        if self.transport == "cookie":
            return self.cookie.read(scope)
        for name, value in scope.get("headers", ()):
            if name == self.header:
                return str(value.decode("latin-1")).strip() or None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                send = self._closing_on_shutdown(send)
            await self.app(scope, receive, send)
            return
        presented = self._presented(scope)
        namespace = self._namespace
        if presented is None and namespace is not None:  # the common case: nothing to load
            handle = SessionHandle(namespace, None)
            self._expose(scope, handle)
            await self._serve(scope, receive, send, handle, False)
            return
        try:
            namespace = await self._ns()
            session = await self._load(namespace, presented)
        except StoreUnavailable as exc:
            if self._fails_closed():
                self._count_outage()
                if kind == "websocket":  # no HTTP response to give: close as "try again later"
                    await send({"type": "websocket.close", "code": 1013})
                else:
                    await unavailable_response("the session store is unavailable")(
                        scope, receive, send
                    )
                return
            self._fail_open(exc)
            handle = SessionHandle(await self._ns(), None)
            self._expose(scope, handle)
            await self.app(scope, receive, send)  # nothing is written while the store is down
            return
        handle = SessionHandle(namespace, session)
        self._expose(scope, handle)
        stale = presented is not None and session is None
        await self._serve(scope, receive, send, handle, stale)

    @staticmethod
    def _expose(scope: Scope, handle: SessionHandle) -> None:
        """As `request.state.session`, and as `request.session`, where Starlette's own
        SessionMiddleware puts it: code written for that one works unchanged."""
        state = scope.get("state")
        if state is None:
            scope["state"] = state = {}
        state[STATE_KEY] = handle
        scope["session"] = handle

    async def _load(self, namespace: Namespace, presented: str | None) -> Session | None:
        if presented is None:
            return None
        try:
            session = await namespace.touch(presented)
        except InvalidSessionId:
            return None  # a forged or mangled id: no session, and no store call
        self._outage.recovered()
        return session

    def _fails_closed(self) -> bool:
        return self._namespace is None or self._namespace.on_unavailable == "fail_closed"

    def _count_outage(self) -> None:
        if self.metrics is not None:
            self.metrics.store_errors.labels("middleware").inc()

    def _fail_open(self, error: StoreUnavailable) -> None:
        self._count_outage()
        self._outage.failed(error, "requests go on without sessions (fail open)")
        if self.metrics is not None:
            self.metrics.fail_open.labels("middleware").inc()

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, handle: SessionHandle, stale: bool
    ) -> None:
        """Run the app, writing the session back as its response starts. If the app fails
        before it answers, having rotated the session (the old id is dead already), the 500
        still carries the new id: a failed response never hides a completed write."""
        started = replaced = False

        async def send_committed(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # we answered instead of the handler: drop what it still sends
            if message["type"] != "http.response.start":
                await send(message)
                return
            started = True
            if handle.untouched and not stale:
                await send(message)
                return
            try:
                extra = await self._commit(handle, stale)
            except StoreUnavailable as exc:
                if self._fails_closed():
                    self._count_outage()
                    replaced = True
                    await unavailable_response("the session store is unavailable")(
                        scope, receive, send
                    )
                    return
                self._fail_open(exc)
                extra = []
            except VersionConflict:
                replaced = True
                await error_response(
                    409, "session_conflict", "the session changed too often meanwhile; retry"
                )(scope, receive, send)
                return
            headers = MutableHeaders(scope=message)
            for name, value in extra:
                headers.append(name.decode("latin-1"), value.decode("latin-1"))
            if handle.accessed and self.transport == "cookie":
                headers.add_vary_header("Cookie")
            await send(message)

        try:
            await self.app(scope, receive, send_committed)
        except Exception:
            session = handle._session
            if not started and handle._reissue and session is not None and scope["type"] == "http":
                name, value = self._issuing(session)
                await internal_error_response({name.decode("latin-1"): value.decode("latin-1")})(
                    scope, receive, send
                )
            raise

    async def _commit(self, handle: SessionHandle, stale: bool) -> list[tuple[bytes, bytes]]:
        """Write the session back if it changed; the headers that tell the client."""
        if handle.changed():
            await handle.save()  # creates, updates, or finds it deleted meanwhile
        if handle._deleted and handle._session is None:
            return [self._clearing()]
        if handle._reissue and handle._session is not None:
            return [self._issuing(handle._session)]
        if stale:
            return [self._clearing()]  # the id it sent is dead: stop sending it
        return []

    def _issuing(self, session: Session) -> tuple[bytes, bytes]:
        if self.transport == "cookie":
            return self.cookie.header(session.id)
        return self.header, session.id.encode("latin-1")

    def _clearing(self) -> tuple[bytes, bytes]:
        if self.transport == "cookie":
            return self.cookie.clearing_header()
        return self.header, b""

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def send_and_close(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self._source.close()
            await send(message)

        return send_and_close


async def current_session(request: Request) -> SessionHandle:
    """A FastAPI dependency: the current request's session (needs `SessionMiddleware`).

    A coroutine on purpose: FastAPI runs a plain function dependency in a worker thread,
    which costs a thread hand-off on every request."""
    handle = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(handle, SessionHandle):
        raise RuntimeError("current_session needs SessionMiddleware on the application")
    return handle


#: A handler's parameter `session: CurrentSession` receives the request's session.
CurrentSession = Annotated[SessionHandle, Depends(current_session)]
