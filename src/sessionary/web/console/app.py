"""The console's mechanics: the admin session (sign in, sign out), the guard every page goes
through (who is signed in, what their key allows, the CSRF checks of a form) and rendering.
The pages themselves are one module each (sessions, runs, analytics, health), each giving its
routes for `Console`."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp

from sessionary.counters import Charge, Counters
from sessionary.errors import StoreUnavailable
from sessionary.http.bearer import BearerKeys
from sessionary.http.csrf import require_same_origin
from sessionary.http.errors import ResponseError, error_response
from sessionary.session_request import RequestSession
from sessionary.source import StoreSource
from sessionary.store import Namespace, Store
from sessionary.web.settings import ApiKey, ConsoleSettings

if TYPE_CHECKING:
    from sessionary.web.app import Features

HERE = Path(__file__).parent
#: the store namespace of console sessions (not one of the admin API's)
NAMESPACE = "console"
COOKIE = "sessionary_console"
#: the subject of a console session: this, then the key's fingerprint
SUBJECT_PREFIX = "console:"
#: how long a browser may keep the vendored assets (their names do not change between
#: releases, so not forever)
STATIC_MAX_AGE_S = 3600
#: the headers of every page: no framing, scripts and styles from this origin only, forms
#: posted here only, nothing cached (pages show live state and session ids)
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: wrong keys one address may send within the window before its sign-ins are refused (429)
SIGN_IN_FAILURES = 10
SIGN_IN_WINDOW = timedelta(minutes=15)
#: what a page shows for a value there is none of (an en dash)
NONE = "\u2013"
#: the longest form body read (a sign-in, a revoke: a few hundred bytes)
_MAX_FORM = 16 * 1024


def fingerprint(key: str) -> str:
    """What a console session records of the key that signed it in: not the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Admin:
    """Who is signed in: the key (by its fingerprint) and the session's CSRF token."""

    key: ApiKey
    fingerprint: str
    csrf: str

    def allows(self, namespace: str) -> bool:
        return self.key.allows(namespace)

    @property
    def everywhere(self) -> bool:
        return "*" in self.key.namespaces


Handler = Callable[[Request, Admin], Awaitable[Response]]


@dataclass
class Services:
    """What the pages read: the store and the features the service started (known once
    its lifespan has opened the store)."""

    source: StoreSource
    namespaces: Callable[[], Mapping[str, Namespace]]
    features: Features
    keys: Sequence[ApiKey] = field(default_factory=list)
    #: the analytics projects configured (those the stats API answers for)
    projects: Sequence[str] = ()
    #: the store as the health page names it (no password)
    store_name: str = ""


class Console:
    """Rendering and the guard, shared by the pages."""

    def __init__(self, services: Services, settings: ConsoleSettings) -> None:
        self.services = services
        self.settings = settings
        self.templates = Jinja2Templates(directory=HERE / "templates")
        self.templates.env.globals["duration"] = _duration
        self.templates.env.globals["short_id"] = short_id
        self.templates.env.globals["short_key"] = short_key
        self.templates.env.globals["when"] = when
        self.templates.env.globals["ttl"] = ttl
        self._keys = {fingerprint(k.key.get_secret_value()): k for k in services.keys}
        self._presented = BearerKeys(
            (key.key.get_secret_value(), (print_, key)) for print_, key in self._keys.items()
        )

    # -- who is signed in -------------------------------------------------------------------

    def key_for(self, presented: str) -> tuple[str, ApiKey] | None:
        """The configured key `presented` is, with its fingerprint (every key compared in
        constant time, as the API's Bearer keys are)."""
        return self._presented.find(presented.encode())

    def admin(self, request: Request) -> Admin | None:
        session: RequestSession = request.state.session
        if session.session is None:  # no live session: nothing to read
            return None
        print_, csrf = session.get("key"), session.get("csrf")
        if not isinstance(print_, str) or not isinstance(csrf, str):
            return None
        key = self._keys.get(print_)  # None: a key since removed from the settings
        return None if key is None else Admin(key, print_, csrf)

    def guarded(self, handler: Handler, *, needs: str | None = None) -> Callable[..., Any]:
        """`handler` for a signed-in admin whose key allows `needs` (None: any key); a
        POST must also carry the session's CSRF token and come from this origin. Others
        go to the sign-in page (a GET) or get a 401/403 JSON error."""

        async def endpoint(request: Request) -> Response:
            admin = self.admin(request)
            if admin is None:
                if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                    target = quote(request.url.path + _query(request), safe="")
                    return RedirectResponse(f"{base(request)}/sign-in?next={target}", 303)
                return error_response(401, "unauthorized", "sign in to the console first")
            if needs is not None and not admin.allows(needs):
                what = "every namespace" if needs == "*" else repr(needs)
                return self.render(
                    request,
                    "message.html",
                    {"title": "Not allowed", "message": f"Your key is not allowed on {what}."},
                    admin,
                    status=403,
                )
            if request.method == "POST":
                form = await read_form(request)
                require_same_origin(request)
                if not hmac.compare_digest(form.get("csrf", "").encode(), admin.csrf.encode()):
                    return error_response(
                        403, "csrf_rejected", "the form's token is not this session's: reload"
                    )
                request.state.form = form
            try:
                return await handler(request, admin)
            except StoreUnavailable as exc:
                response = self.render(
                    request,
                    "message.html",
                    {"title": "The store is unavailable", "message": str(exc)},
                    admin,
                    status=503,
                )
                response.headers["Retry-After"] = "1"
                return response

        return endpoint

    # -- rendering --------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        admin: Admin | None,
        *,
        status: int = 200,
    ) -> Response:
        shown = {"admin": admin, "base": base(request), **context}
        response = self.templates.TemplateResponse(request, template, shown, status_code=status)
        response.headers.update(PAGE_HEADERS)
        return response


def base(request: Request) -> str:
    """Where the console is mounted (/console), as the pages link to it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def said(target: str, notice: str, admin: Admin) -> RedirectResponse:
    """Post, redirect, get: to `target` (a path with or without a query), carrying what the
    form did as `done`, signed (`sig`) with the admin session's CSRF token, so that a link
    from elsewhere cannot put its own words on a console page."""
    sign = {"done": notice, "sig": _signature(notice, admin)}
    return RedirectResponse(f"{target}{'&' if '?' in target else '?'}{urlencode(sign)}", 303)


def notice(request: Request, admin: Admin) -> str | None:
    """What the last form did, as `said` carried it; None without one or with a signature
    this session did not make."""
    done = request.query_params.get("done")
    signature = request.query_params.get("sig", "")
    if not done or not hmac.compare_digest(signature, _signature(done, admin)):
        return None
    return done


def _signature(notice: str, admin: Admin) -> str:
    return hmac.new(admin.csrf.encode(), notice.encode(), hashlib.sha256).hexdigest()[:32]


def _query(request: Request) -> str:
    query = request.url.query
    return f"?{query}" if query else ""


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form (the only kind the console posts), first value of each field; a
    body of another type or too large is a 4xx JSON error."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise ResponseError(
            error_response(415, "unsupported_media_type", "the console takes urlencoded forms")
        )
    body = await request.body()
    if len(body) > _MAX_FORM:
        raise ResponseError(error_response(413, "body_too_large", "the form is too large"))
    form: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        form.setdefault(name, value)
    return form


def short_id(session_id: str | None) -> str:
    """An id as the pages show it: its first 12 characters (a live id is a credential)."""
    if session_id is None:
        return ""
    return session_id[:12] + "…" if len(session_id) > 12 else session_id


def short_key(key: str) -> str:
    """A counter's key as the pages show it: each part (between colons) longer than an id
    cut as `short_id` cuts one (the playground's `session:<id>` holds a live session's id)."""
    return ":".join(short_id(part) if len(part) > 24 else part for part in key.split(":"))


def when(ms: int | None) -> str:
    """A time (ms since the epoch) as the pages print it, in UTC (the script shows it in
    the reader's own zone)."""
    if ms is None:
        return NONE
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ttl(ms: int | None) -> str:
    """A ttl as a policy states it: "30 min", "12 h", "none"."""
    if ms is None:
        return "none"
    seconds = ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0 and ms % 1000 == 0:
            return f"{seconds // size} {unit}"
    return f"{ms} ms"


def _duration(ms: int | float | None) -> str:
    """A duration for people: "850 ms", "12.4 s", "3 min 20 s", "2 h 5 min"."""
    if ms is None:
        return NONE
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


# -- signing in and out ---------------------------------------------------------------------


def sign_in_routes(console: Console) -> list[BaseRoute]:
    async def sign_in_page(request: Request) -> Response:
        admin = console.admin(request)
        target = _safe_next(request, request.query_params.get("next"))
        if admin is not None:
            return RedirectResponse(target, 303)
        context = {"next": target, "no_keys": not console.services.keys, "error": None}
        return console.render(request, "sign_in.html", context, None)

    async def sign_in(request: Request) -> Response:
        form = await read_form(request)
        require_same_origin(request)  # login CSRF: no page elsewhere signs a browser in
        target = _safe_next(request, form.get("next"))
        context: dict[str, Any] = {"next": target, "no_keys": not console.services.keys}
        store = await console.services.source.get()
        failures = store.counters(NAMESPACE)
        attempt = _failed_sign_ins(request)
        seen = (await failures.read(attempt)).counters[0]
        if seen.limit is not None and seen.used >= seen.limit:
            wait_s = -(-(seen.resets_at - store.clock.now_ms()) // 1000)
            context["error"] = (
                f"Too many wrong keys from your address: try again in {_duration(wait_s * 1000)}."
            )
            response = console.render(request, "sign_in.html", context, None, status=429)
            response.headers["Retry-After"] = str(max(1, wait_s))
            return response
        found = console.key_for(form.get("key", ""))
        if found is None:
            await failures.charge(replace(attempt, amount=1))
            context["error"] = "That is not an admin API key of this service."
            return console.render(request, "sign_in.html", context, None, status=401)
        print_, _ = found
        session: RequestSession = request.state.session
        # a new id at sign-in (no fixation), the key and a fresh CSRF token with it
        session.data = {"key": print_, "csrf": secrets.token_urlsafe(32)}
        await session.rotate(subject=SUBJECT_PREFIX + print_)
        return RedirectResponse(target, 303)

    async def sign_out(request: Request, admin: Admin) -> Response:
        await request.state.session.delete()
        return RedirectResponse(f"{base(request)}/sign-in", 303)

    async def home(request: Request, admin: Admin) -> Response:
        return RedirectResponse(f"{base(request)}/sessions", 303)

    return [
        Route("/", console.guarded(home), methods=["GET"], name="console"),
        Route("/sign-in", sign_in_page, methods=["GET"]),
        Route("/sign-in", sign_in, methods=["POST"]),
        Route("/sign-out", console.guarded(sign_out), methods=["POST"]),
    ]


def _failed_sign_ins(request: Request) -> Charge:
    """The counter of wrong keys sent from the request's address (hashed: the store keeps no
    address), read with an amount of 0: at `SIGN_IN_FAILURES` within `SIGN_IN_WINDOW` the
    address is refused until the window ends. A guess at a key of 16+ random characters is
    hopeless anyway; this keeps a script from trying, and the log from filling."""
    address = request.client.host if request.client is not None else "unknown"
    key = "sign-in:" + hashlib.sha256(address.encode()).hexdigest()[:32]
    return Charge(key, amount=0, limit=SIGN_IN_FAILURES, window=SIGN_IN_WINDOW)


def _safe_next(request: Request, target: str | None) -> str:
    """Where to go after signing in: a path of the console, never another site."""
    root = base(request)
    if target and target.startswith(root + "/") and not target.startswith("//"):
        return target
    return f"{root}/sessions"


def console_state(store: Store, settings: ConsoleSettings) -> tuple[Namespace, Counters]:
    """What the console keeps in `store`, for the reaper to sweep: its sessions (with the
    settings' lifetimes: the middleware's policy too) and its counters of wrong keys."""
    sessions = store.namespace(
        NAMESPACE, idle_ttl=settings.idle_ttl, absolute_ttl=settings.absolute_ttl
    )
    return sessions, store.counters(NAMESPACE)


class CachedFiles:
    """Static files with a Cache-Control of `max_age` seconds."""

    def __init__(self, app: ASGIApp, max_age: int) -> None:
        self.app = app
        self.header = (b"cache-control", f"public, max-age={max_age}".encode())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_cached(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_cached)
