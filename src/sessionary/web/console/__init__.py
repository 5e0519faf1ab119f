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

from sessionary.web.console.app import Services as ConsoleServices
from sessionary.web.console.app import console_app, console_state

__all__ = ["ConsoleServices", "console_app", "console_state"]
