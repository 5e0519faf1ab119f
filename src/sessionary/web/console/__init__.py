"""The console at /console: sessions, runs, analytics and the store's health, for people who
would rather look than read.

Server-rendered pages (Jinja2 templates) over the same service objects the JSON API uses, so
every number a page shows is the one its API route answers; one small script of our own
(static/console.js) refreshes live numbers, follows a run's events (EventSource) and draws
the charts with uPlot, which is vendored from its npm package (scripts/vendor-console-assets):
no build step, no CDN, and every page works with the keyboard and in a narrow window.

Who may look: an admin API key (`api_keys`) signs in; the sign-in opens a session in the
store's `console` namespace through sessionary's own `SessionMiddleware` (HttpOnly cookie,
SameSite=Strict, a new id at sign-in, idle and absolute expiry from `[console]`). A key
restricted to some namespaces sees only those (analytics needs "analytics", runs "runs",
the health page "*"). Every form that changes something carries the session's CSRF token
and must come from a page of this origin (`Origin`, else `Sec-Fetch-Site`).
"""

from starlette.routing import Mount, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from sessionary.web.console import analytics, health, runs, sessions
from sessionary.web.console.app import (
    COOKIE,
    HERE,
    NAMESPACE,
    STATIC_MAX_AGE_S,
    CachedFiles,
    Console,
    console_state,
    sign_in_routes,
)
from sessionary.web.console.app import Services as ConsoleServices
from sessionary.web.middleware import SessionMiddleware
from sessionary.web.settings import ConsoleSettings

__all__ = ["ConsoleServices", "console_app", "console_state"]


def console_app(services: ConsoleServices, settings: ConsoleSettings) -> ASGIApp:
    """The console as an ASGI application to mount at /console: its routes behind the
    session middleware (namespace `console`), its assets beside it."""
    console = Console(services, settings)
    routes = sign_in_routes(console)
    for page in (sessions, runs, analytics, health):
        routes.extend(page.routes(console))
    signed = SessionMiddleware(
        Router(routes),
        store=services.source,
        namespace=NAMESPACE,
        idle_ttl=settings.idle_ttl,
        absolute_ttl=settings.absolute_ttl,
        cookie_name=COOKIE,
        https_only=True if settings.secure_cookie == "always" else "auto",
        same_site="strict",
    )
    static = CachedFiles(StaticFiles(directory=HERE / "static"), STATIC_MAX_AGE_S)
    # the assets outside the session middleware: loading one costs no store call
    return Router([Mount("/static", app=static), Mount("", app=signed)])
