"""Sessions for any Starlette or FastAPI application, in two lines:

    app.add_middleware(SessionMiddleware, store="redis://localhost:6379/0", namespace="web")

    @app.post("/cart")
    async def add(item: str, session: CurrentSession):
        session["cart"] = [*session.get("cart", []), item]

Costs: a request without a session cookie costs no store call; a request with one costs one
round trip (the touch, which also slides the idle expiry); the session is written back only
when the handler changed it (nested changes included: the data is compared encoded), with
optimistic concurrency and a key-wise merge when another request wrote meanwhile (a key both
changed, such as a counter both incremented, is answered 409 `session_conflict`: never a lost
update). With `read_cache=N` on the store URL the touch is coalesced and usually served from
a cache the store keeps coherent (`sessionary.read_cache`): no round trip at all.

WebSocket connections get the session read-only (there is no response to carry a cookie);
with the store down and failing closed they are closed with code 1013 (try again later).

Safety: an unknown, expired or malformed id is never adopted; a fresh id is issued only when
the handler stores something (no session fixation). `await session.rotate(subject=...)` on
login, `await session.delete()` on logout. When the store is down the namespace's policy
decides: fail closed (503 JSON, the default) or fail open (no session, logged once per outage
and counted).

Sessions per subject: in a namespace with `max_sessions_per_subject` (an argument here, or
a `Namespace` opened with it; see docs/account-security.md), a login past the limit with
`on_max_sessions="refuse"` raises `TooManySessions` from `await session.rotate(subject=...)`:
the session stays as it was (same id, no subject, the cookie unchanged) and the application
answers as it likes; left uncaught, the middleware answers the service's 409
`{"error": "too_many_sessions", "message": ..., "max_sessions": N}`, never a 500. With
"evict_oldest" the login succeeds and the subject's least recently active sessions are
deleted in the same step: their next requests find no session.

Devices: with `devices=DevicePolicy(user_agent=True, ip="truncated")` a session records the
user agent and client IP of the request that created it (`sessionary.devices`); off by
default, a privacy choice. The client IP is the socket's peer (the ASGI `client`); behind a
proxy, pass `client_ip=ClientIP(trusted_proxies=[...])` to read `X-Forwarded-For` from it.

These rules are `sessionary.session_request`'s, shared with every other framework's
integration; this module only adapts them to ASGI: where the id comes from (cookie or header),
where the session goes (`request.state.session`, `request.session`), which header answers the
core's `Outcome`, and what the response is when the store fails. It needs Starlette only; the
FastAPI dependency (`CurrentSession`) is in `sessionary.web.fastapi`.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import nullcontext
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionary.contract import OnMaxSessions
from sessionary.devices import DevicePolicy, Sighting
from sessionary.errors import StoreUnavailable, TooManySessions, VersionConflict
from sessionary.http.clientip import ClientIP
from sessionary.http.cookies import CookieSpec
from sessionary.http.errors import (
    error_response,
    internal_error_response,
    response_for,
    unavailable_response,
)
from sessionary.model import Session
from sessionary.outage import OutageLog
from sessionary.session_request import CONFLICT_CODE, CONFLICT_MESSAGE, Outcome, RequestSession
from sessionary.source import StoreSource
from sessionary.store import Namespace, Store
from sessionary.telemetry import NAMESPACE, span

if TYPE_CHECKING:
    from sessionary.http.metrics import Metrics

log = logging.getLogger("sessionary.middleware")

STATE_KEY = "session"

#: spans when the application traces (`sessionary.telemetry`): the load of the session a
#: client presented (one store call: the touch) and its save as the response starts
LOAD_SPAN = "sessionary.session.load"
SAVE_SPAN = "sessionary.session.save"
NEW = "sessionary.session.new"
CHANGED = "sessionary.session.changed"
ROTATED = "sessionary.session.rotated"
#: what the response tells the client about its id: "nothing", "issue" or "clear"
RESPONSE = "sessionary.session.response"

#: The name the request's session had before the rules moved to `sessionary.session_request`.
SessionHandle = RequestSession


class SessionMiddleware:
    """See the module docstring. `store` is a `Store`, a URL opened on first use, or None
    with `namespace` a `Namespace`; a namespace given by name is opened with `idle_ttl`,
    `absolute_ttl`, `max_absolute_ttl` (the longest lifetime one session may ask for
    itself: "remember me") and `max_sessions_per_subject`/`on_max_sessions` (see the module
    docstring), a `Namespace` keeps its own policy. The cookie's Max-Age is the
    namespace's absolute ttl (a session with a lifetime of its own: that one). `devices`
    says what a created session records of its client (nothing by default); `client_ip`
    resolves the client's address (default: the socket's peer, no proxy trusted).
    `https_only`: the cookie is Secure (and `__Host-`/`__Secure-` prefixed); "auto": only on
    requests that came over https (as the ASGI server says: behind a proxy, run it with its
    forwarded-headers option), so one application serves both a local http and a deployed
    https origin."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: Store | str | StoreSource | None = None,
        namespace: str | Namespace = "web",
        idle_ttl: timedelta | None = timedelta(minutes=30),
        absolute_ttl: timedelta | None = timedelta(hours=12),
        max_absolute_ttl: timedelta | None = None,
        max_sessions_per_subject: int | None = None,
        on_max_sessions: OnMaxSessions = "refuse",
        transport: Literal["cookie", "header"] = "cookie",
        cookie_name: str = "session",
        header_name: str = "X-Session-Id",
        https_only: bool | Literal["auto"] = True,
        same_site: Literal["lax", "strict", "none"] = "lax",
        path: str = "/",
        domain: str | None = None,
        metrics: Metrics | None = None,
        devices: DevicePolicy | None = None,
        client_ip: ClientIP | None = None,
    ) -> None:
        self.app = app
        self.devices = devices if devices is not None and devices.records else None
        self.client_ip = client_ip or ClientIP()
        if isinstance(namespace, Namespace):
            self._namespace: Namespace | None = namespace
            self._source = StoreSource(namespace.store)
            absolute_ttl = namespace.absolute_ttl  # its policy, not this call's default
        else:
            self._namespace = None
            self._source = StoreSource.of(store)
        self._name = namespace if isinstance(namespace, str) else namespace.name
        self._ttls = (idle_ttl, absolute_ttl, max_absolute_ttl)
        self._session_limit = (max_sessions_per_subject, on_max_sessions)
        self.transport = transport
        self.header = header_name.lower().encode("latin-1")
        self.cookie = CookieSpec(
            cookie_name,
            secure=https_only is not False,
            same_site=same_site,
            path=path,
            domain=domain,
            max_age=None if absolute_ttl is None else int(absolute_ttl.total_seconds()),
        )
        #: with https_only="auto", the cookie of a request that came over plain http
        self._plain_cookie = (
            dataclasses.replace(self.cookie, secure=False) if https_only == "auto" else None
        )
        self.metrics = metrics
        self._outage = OutageLog(log, f"session middleware ({self._name})")

    async def _ns(self) -> Namespace:
        if self._namespace is None:
            store = await self._source.get()
            idle, absolute, bound = self._ttls
            most, on_max = self._session_limit
            self._namespace = store.namespace(
                self._name,
                idle_ttl=idle,
                absolute_ttl=absolute,
                max_absolute_ttl=bound,
                max_sessions_per_subject=most,
                on_max_sessions=on_max,
            )
        return self._namespace

    def _cookie(self, scope: Scope) -> CookieSpec:
        """The cookie as this request's scheme has it: Secure (and prefixed) unless
        `https_only="auto"` and the request came over plain http."""
        plain = self._plain_cookie
        if plain is not None and scope.get("scheme") in ("http", "ws"):
            return plain
        return self.cookie

    def _presented(self, scope: Scope) -> str | None:
        if self.transport == "cookie":
            return self._cookie(scope).read(scope)
        for name, value in scope.get("headers", ()):
            if name == self.header:
                return str(value.decode("latin-1")).strip() or None
        return None

    def _device(self, scope: Scope) -> Sighting | None:
        """The client of this request, as the device policy records it (None: off)."""
        if self.devices is None:
            return None
        user_agent = None
        for name, value in scope.get("headers", ()):
            if name == b"user-agent":
                user_agent = value.decode("latin-1")
                break
        return self.devices.seen(user_agent, self.client_ip.of(scope))

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
            handle = RequestSession.fresh(namespace, device=self._device(scope))
            self._expose(scope, handle)
            await self._serve(scope, receive, send, handle)
            return
        try:
            loaded = span(LOAD_SPAN, {NAMESPACE: self._name}) if presented else nullcontext()
            with loaded as loading:
                namespace = await self._ns()
                handle = await RequestSession.load(namespace, presented, device=self._device(scope))
                if loading is not None:
                    loading.set_attribute(NEW, not _found(handle))
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
            handle = RequestSession.fresh(await self._ns())
            self._expose(scope, handle)
            await self.app(scope, receive, send)  # nothing is written while the store is down
            return
        if handle.looked_up:
            self._outage.recovered()
        self._expose(scope, handle)
        await self._serve(scope, receive, send, handle)

    @staticmethod
    def _expose(scope: Scope, handle: RequestSession) -> None:
        """As `request.state.session`, and as `request.session`, where Starlette's own
        SessionMiddleware puts it: code written for that one works unchanged."""
        state = scope.get("state")
        if state is None:
            scope["state"] = state = {}
        state[STATE_KEY] = handle
        scope["session"] = handle

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
        self, scope: Scope, receive: Receive, send: Send, handle: RequestSession
    ) -> None:
        """Run the app, writing the session back as its response starts. If the app fails
        before it answers, having rotated the session (the old id is dead already), the 500
        still carries the new id: a failed response never hides a completed write. A
        `TooManySessions` the app left uncaught (a refused login) is its 409, not a 500."""
        started = replaced = False

        async def send_committed(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return  # we answered instead of the handler: drop what it still sends
            if message["type"] != "http.response.start":
                await send(message)
                return
            started = True
            if handle.untouched and not handle.stale:  # the fast path: nothing to decide
                await send(message)
                return
            try:
                outcome = await self._commit(handle)
            except StoreUnavailable as exc:
                if self._fails_closed():
                    self._count_outage()
                    replaced = True
                    await unavailable_response("the session store is unavailable")(
                        scope, receive, send
                    )
                    return
                self._fail_open(exc)
                outcome = Outcome.NOTHING
            except VersionConflict:
                replaced = True
                await error_response(409, CONFLICT_CODE, CONFLICT_MESSAGE)(scope, receive, send)
                return
            except TooManySessions as exc:  # a subject set by `set_subject`, refused
                replaced = True
                await response_for(exc)(scope, receive, send)
                return
            varies = handle.accessed  # read before the id below marks it accessed
            headers = MutableHeaders(scope=message)
            telling = self._telling(outcome, handle, scope)
            if telling is not None:
                name, value = telling
                headers.append(name.decode("latin-1"), value.decode("latin-1"))
            if varies and self.transport == "cookie":
                headers.add_vary_header("Cookie")
            await send(message)

        try:
            await self.app(scope, receive, send_committed)
        except Exception as exc:
            if not started and scope["type"] == "http":
                telling = self._telling(handle.outcome_after_failure(), handle, scope)
                headers = {}
                if telling is not None:
                    name, value = telling
                    headers[name.decode("latin-1")] = value.decode("latin-1")
                if isinstance(exc, TooManySessions):  # a refused login left unanswered: 409
                    await error_response(
                        exc.http_status, exc.code, str(exc), headers=headers, **exc.details()
                    )(scope, receive, send)
                    return
                if telling is not None:
                    await internal_error_response(headers)(scope, receive, send)
            raise

    async def _commit(self, handle: RequestSession) -> Outcome:
        """`handle.commit()`, in a span when the application traces: whether the session
        was new to this request, changed, rotated, and what the response tells the client
        about its id (`Outcome`)."""
        attributes = {NAMESPACE: self._name, NEW: not _found(handle), CHANGED: handle.changed()}
        with span(SAVE_SPAN, attributes) as saving:
            outcome = await handle.commit()
            if saving is not None:
                saving.set_attribute(ROTATED, handle.rotated)
                saving.set_attribute(RESPONSE, outcome.value)
        return outcome

    def _telling(
        self, outcome: Outcome, handle: RequestSession, scope: Scope
    ) -> tuple[bytes, bytes] | None:
        """The header that carries `outcome` to the client (None for NOTHING)."""
        if outcome is Outcome.NOTHING:
            return None
        if outcome is Outcome.CLEAR:
            if self.transport == "cookie":
                return self._cookie(scope).clearing_header()
            return self.header, b""
        session_id = handle.id
        assert session_id is not None, "the core issues only a stored session's id"
        if self.transport == "cookie":
            return self._cookie(scope).header(session_id, max_age=_own_max_age(handle.session))
        return self.header, session_id.encode("latin-1")

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def send_and_close(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self._source.close()
            await send(message)

        return send_and_close


def _found(handle: RequestSession) -> bool:
    """The client presented the id of a live session (read without marking it accessed)."""
    return handle.looked_up and not handle.stale


def _own_max_age(session: Session | None) -> int | None:
    """The cookie's Max-Age (whole seconds, rounded up) for a session with a lifetime of its
    own ("remember me"): its absolute ttl, else its idle one; None (the cookie's usual, from
    the namespace's absolute ttl) for a session living by its namespace's policy."""
    if session is None or not session.own_lifetime:
        return None
    lifetime = session.lifetime
    ms = lifetime.absolute_ms if lifetime.absolute_ms is not None else lifetime.idle_ms
    assert ms is not None  # a lifetime has at least one ttl
    return -(-ms // 1000)
