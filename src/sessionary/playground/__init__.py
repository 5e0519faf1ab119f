"""Playground sessions: anonymous visitors trying a product, held by usage quotas.

    playground = Playground(store, PlaygroundSettings(session_limit=50))
    playground.install(app)                      # /api/v1/playground/... and the refund hook

    @app.get("/api/search", dependencies=[Depends(playground.search_quota)])
    async def search(q: str): ...

A visitor's token travels in the `pg_session` cookie; the session lives 24 h from creation
(absolute, never stretched by use). Quotas are counters of the counter group named after the
namespace: `session:<id>` (over the session's life), `ip:<hash>` and `new:<hash>` (searches and
new sessions per client IP per window) and `global`; a search charges the first three at once,
all or nothing. Each layer counts by its setting's algorithm (fixed, sliding or gcra); a
refusal's `Retry-After` is the real time until the next search the refusing counter allows.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sessionary.extras import needs

with needs("server", "sessionary.playground"):
    from fastapi import APIRouter, FastAPI, Request, Response
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sessionary.clock import iso_utc, to_ms
from sessionary.codec import MAX_SAFE_INT
from sessionary.contract import CounterAlgorithm
from sessionary.counters import Charge, ChargeResult, CounterReading, Counters
from sessionary.devices import ip_hash
from sessionary.errors import (
    InvalidSessionId,
    SessionUnreadable,
    StoreUnavailable,
    VersionConflict,
)
from sessionary.http.clientip import ClientIP
from sessionary.http.cookies import CookieSpec
from sessionary.http.errors import (
    JSONResponse,
    ResponseError,
    error_response,
    quota_response,
    unavailable_response,
)
from sessionary.http.handlers import JSONErrorRoute
from sessionary.http.metrics import Metrics
from sessionary.http.openapi import STORE, Integral, errors
from sessionary.model import Session
from sessionary.outage import OutageLog
from sessionary.playground.settings import PlaygroundSettings
from sessionary.source import StoreSource
from sessionary.store import Namespace, Store

__all__ = ["Playground", "PlaygroundSettings", "SearchGrant"]

log = logging.getLogger("sessionary.playground")

COOKIE = "pg_session"
_GRANT = "sessionary.playground.grant"
_REPO = "indexed_repo"


class RepoIn(BaseModel):
    """The repository a visitor indexes into their one slot."""

    model_config = ConfigDict(extra="forbid", strict=True)

    github_url: str = Field(pattern=r"^https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/?$")
    name: str = Field(min_length=1, max_length=200)
    file_count: Integral = Field(0, ge=0, le=MAX_SAFE_INT)
    repo_id: str | None = Field(None, min_length=1, max_length=100)


@dataclass
class SearchGrant:
    """What a guarded search was charged (nothing when it passed unmetered, store down)."""

    session_id: str | None
    charges: tuple[Charge, ...]
    quota: Counters | None
    result: ChargeResult | None
    refunded: bool = field(default=False)

    @property
    def metered(self) -> bool:
        return self.quota is not None

    async def refund(self) -> None:
        """Give the search back (once); called when the guarded handler fails."""
        if self.refunded or self.quota is None:
            return
        self.refunded = True
        try:
            await self.quota.refund(*self.charges)
        except StoreUnavailable as exc:
            log.warning("could not refund a failed search (%s)", exc)


class Playground:
    def __init__(
        self,
        store: Store | str | StoreSource | None = None,
        settings: PlaygroundSettings | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings or PlaygroundSettings()
        self.source = StoreSource.of(store)
        self.metrics = metrics
        self.cookie = CookieSpec(
            COOKIE,
            secure=self.settings.secure_cookies,
            host_prefix=False,  # the cookie is called pg_session, as clients expect
            max_age=int(self.settings.session_ttl.total_seconds()),
        )
        self.client_ip = ClientIP(str(network) for network in self.settings.trusted_proxies)
        secret = self.settings.ip_hash_secret
        self._ip_secret = None if secret is None else secret.get_secret_value()
        self._search_outage = OutageLog(log, "playground search")
        self.router = self._routes()

    def install(self, app: FastAPI, prefix: str = "/api/v1/playground") -> None:
        """Mount the routes, and the hook that refunds a search whose handler answered with
        an error status."""
        app.include_router(self.router, prefix=prefix)
        app.add_middleware(RefundFailedSearches)
        if ResponseError not in app.exception_handlers:

            async def send_response(request: Request, exc: Exception) -> Response:
                assert isinstance(exc, ResponseError)
                return exc.response

            app.add_exception_handler(ResponseError, send_response)

    # -- the pieces -------------------------------------------------------------------------

    async def _spaces(self) -> tuple[Store, Namespace, Counters]:
        store = await self.source.get()
        namespace = store.namespace(self.settings.namespace, absolute_ttl=self.settings.session_ttl)
        return store, namespace, store.counters(self.settings.namespace)

    async def _ip_key(self, store: Store, scope: Scope) -> str:
        # the store's secret is asked each time: it re-reads it every few seconds, so every
        # process follows it should the store lose it (`SharedSecrets`)
        secret = self._ip_secret or await store.shared_secret("playground.ip-hash")
        return ip_hash(self.client_ip.of(scope), secret)

    def _session_charge(self, session: Session) -> Charge:
        algorithm, limit = self.settings.session_algorithm, self.settings.session_limit
        key = _counter_key("session", algorithm, session.id)
        if algorithm == "fixed":
            return Charge(key, limit=limit, until=session.expires_at)
        return Charge(key, limit=limit, window=self.settings.session_window, algorithm=algorithm)

    def _ip_charge(self, kind: str, ip: str, limit: int) -> Charge:
        """`ip` (searches) or `new` (sessions opened) of one client IP: the ip layer."""
        algorithm = self.settings.ip_algorithm
        key = _counter_key(kind, algorithm, ip)
        return Charge(key, limit=limit, window=self.settings.ip_window, algorithm=algorithm)

    def _global_charge(self) -> Charge:
        algorithm = self.settings.global_algorithm
        return Charge(
            _counter_key("global", algorithm),
            limit=self.settings.global_limit,
            window=self.settings.global_window,
            algorithm=algorithm,
        )

    async def _current(self, namespace: Namespace, scope: Scope) -> Session | None:
        token = self.cookie.read(scope)
        if token is None:
            return None
        try:
            return await namespace.get(token)
        except InvalidSessionId:
            return None  # a forged or mangled cookie is no session, never adopted
        except SessionUnreadable:
            return None  # sealed under a key not given, or tampered: logged, counted, absent

    async def _current_or_new(self, scope: Scope) -> tuple[Session, bool]:
        """The visitor's session, or a new one if the client IP may still open one."""
        store, namespace, quota = await self._spaces()
        session = await self._current(namespace, scope)
        if session is not None:
            return session, False
        ip = await self._ip_key(store, scope)
        opened = await quota.charge(self._ip_charge("new", ip, self.settings.sessions_per_ip))
        if not opened.allowed:
            raise self._refusal("ip", opened, store.clock.now_ms())
        return await namespace.create(), True

    def _refusal(self, scope: str, result: ChargeResult, now: int) -> ResponseError:
        assert result.refused is not None
        if self.metrics is not None:
            self.metrics.quota_refusals.labels(scope).inc()
        return ResponseError(quota_response(scope, result.refused, now))

    def _unavailable(self, where: str) -> ResponseError:
        if self.metrics is not None:
            self.metrics.store_errors.labels(where).inc()
        return ResponseError(
            unavailable_response(
                "the playground is unavailable; try again shortly", self.settings.retry_after
            )
        )

    def _set_cookie(self, response: Response, session: Session) -> None:
        name, value = self.cookie.header(session.id)
        response.raw_headers.append((name, value))

    # -- the guard --------------------------------------------------------------------------

    async def search_quota(
        self, request: Request, response: Response
    ) -> AsyncIterator[SearchGrant]:
        """A dependency for the application's quota-limited endpoint: charges one search to
        the session, the client IP and the global counter at once (all or nothing), answers
        429 when one of them is used up, and refunds the search if the handler fails."""
        grant = await self._charge_search(request.scope, response)
        request.scope.setdefault("state", {})[_GRANT] = grant
        try:
            yield grant
        except Exception:
            await grant.refund()
            raise

    async def _charge_search(self, scope: Scope, response: Response) -> SearchGrant:
        try:
            store, _, quota = await self._spaces()
            session, created = await self._current_or_new(scope)
            ip = await self._ip_key(store, scope)
            charges = (
                self._session_charge(session),
                self._ip_charge("ip", ip, self.settings.ip_limit),
                self._global_charge(),
            )
            result = await quota.charge(*charges)
        except StoreUnavailable as exc:
            if self.settings.search_when_store_down == "fail_closed":
                raise self._unavailable("playground_search") from None
            self._search_outage.failed(exc, "searches pass unmetered until it is back")
            if self.metrics is not None:
                self.metrics.store_errors.labels("playground_search").inc()
                self.metrics.fail_open.labels("playground_search").inc()
            return SearchGrant(None, (), None, None)
        self._search_outage.recovered()
        if created:
            self._set_cookie(response, session)
        if not result.allowed:
            assert result.refused is not None
            scope_name = result.refused.key.split(":", 1)[0]
            raise self._refusal(scope_name, result, store.clock.now_ms())
        mine = result[charges[0].key]
        response.headers["RateLimit-Limit"] = str(self.settings.session_limit)
        response.headers["RateLimit-Remaining"] = str(mine.remaining)
        response.headers["RateLimit-Reset"] = str(
            max(0, -(-(mine.resets_at - store.clock.now_ms()) // 1000))
        )
        return SearchGrant(session.id, charges, quota, result)

    # -- the routes -------------------------------------------------------------------------

    def _routes(self) -> APIRouter:
        router = APIRouter(
            tags=["playground"], route_class=JSONErrorRoute, responses=errors(*STORE)
        )
        no_session = {404: "no playground session (session_not_found): GET /session first"}
        conflict = {409: "conflict: the session kept changing; try again"}

        @router.get(
            "/session",
            responses=errors(
                described={429: "this client IP opened its quota of sessions (quota_exceeded)"}
            ),
        )
        async def get_session(request: Request, response: Response) -> dict[str, Any]:
            """The visitor's session (created, with its cookie, when there is none)."""
            try:
                store, _, quota = await self._spaces()
                session, created = await self._current_or_new(request.scope)
                counter = self._session_charge(session)
                searches = (await quota.read(counter))[counter.key]
            except StoreUnavailable:
                raise self._unavailable("playground_session") from None
            if created:
                self._set_cookie(response, session)
            response.headers["Cache-Control"] = "no-store"
            return self._view(session, searches, store.clock.now_ms())

        @router.put(
            "/session/indexed-repo",
            status_code=201,
            responses=errors(
                400,
                413,
                422,
                described={
                    **no_session,
                    409: "already_indexed: another repository holds the slot (indexed_repo); "
                    "conflict: the session kept changing",
                },
            ),
        )
        async def reserve_repo(request: Request, repo: RepoIn) -> JSONResponse:
            """Take the session's one repository slot (409 while another repo holds it)."""
            store, namespace, _ = await self._spaces()
            session = await self._current(namespace, request.scope)
            for _ in range(10):
                if session is None:
                    raise ResponseError(_no_session())
                now = store.clock.now_ms()
                held = _live_repo(session, now)
                if held is not None:
                    raise ResponseError(
                        error_response(
                            409,
                            "already_indexed",
                            "this session already holds an indexed repository",
                            indexed_repo=_repo_view(held),
                        )
                    )
                record = {
                    "repo_id": repo.repo_id or f"{repo.name}-{now}",
                    "github_url": repo.github_url,
                    "name": repo.name,
                    "file_count": repo.file_count,
                    "indexed_at": now,
                    "expires_at": min(
                        now + to_ms(self.settings.repo_ttl),
                        session.expires_at,
                    ),
                }
                try:
                    await namespace.update(
                        session.id,
                        data={**session.data, _REPO: record},
                        expected_version=session.version,
                    )
                except VersionConflict:  # someone else wrote first: look again
                    session = await namespace.get(session.id)
                    continue
                return JSONResponse({"indexed_repo": _repo_view(record)}, 201)
            raise ResponseError(
                error_response(409, "conflict", "the session kept changing; try again")
            )

        @router.delete(
            "/session/indexed-repo",
            status_code=204,
            responses=errors(described={**no_session, **conflict}),
        )
        async def free_repo(request: Request) -> Response:
            """Empty the repository slot."""
            _, namespace, _ = await self._spaces()
            session = await self._current(namespace, request.scope)
            for _ in range(10):
                if session is None:
                    raise ResponseError(_no_session())
                if _REPO not in session.data:
                    return Response(status_code=204)
                data = {k: v for k, v in session.data.items() if k != _REPO}
                try:
                    await namespace.update(session.id, data=data, expected_version=session.version)
                    return Response(status_code=204)
                except VersionConflict:
                    session = await namespace.get(session.id)
            raise ResponseError(
                error_response(409, "conflict", "the session kept changing; try again")
            )

        return router

    def _view(self, session: Session, searches: CounterReading, now: int) -> dict[str, Any]:
        repo = _live_repo(session, now)
        return {
            "session_id": f"{session.id[:8]}...",
            "created_at": iso_utc(session.created_at),
            "expires_at": iso_utc(session.expires_at),
            "indexed_repo": None if repo is None else _repo_view(repo),
            "searches": {
                "used": searches.used,
                "limit": self.settings.session_limit,
                "remaining": max(0, self.settings.session_limit - searches.used),
            },
        }


def _counter_key(layer: str, algorithm: CounterAlgorithm, who: str | None = None) -> str:
    """`layer:who` (or `layer`) for a fixed counter, as ever; `layer:algorithm:who` for the
    others. A running counter refuses a charge under another algorithm, so a changed setting
    starts new counters rather than failing every search until the old ones end; the layer
    stays the key's first part, the scope a refusal names."""
    named = layer if algorithm == "fixed" else f"{layer}:{algorithm}"
    return named if who is None else f"{named}:{who}"


def _no_session() -> JSONResponse:
    return error_response(
        404, "session_not_found", "no playground session: GET /session first to get one"
    )


def _live_repo(session: Session, now: int) -> dict[str, Any] | None:
    repo = session.data.get(_REPO)
    if isinstance(repo, dict) and int(repo.get("expires_at", 0)) > now:
        return repo
    return None


def _repo_view(repo: dict[str, Any]) -> dict[str, Any]:
    return {
        **repo,
        "indexed_at": iso_utc(int(repo["indexed_at"])),
        "expires_at": iso_utc(int(repo["expires_at"])),
    }


class RefundFailedSearches:
    """Refunds a guarded search when the response carries an error status (the handler
    returned, rather than raised, its failure)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                grant = state.get(_GRANT)
                if isinstance(grant, SearchGrant):
                    await grant.refund()
            await send(message)

        await self.app(scope, receive, watch)
