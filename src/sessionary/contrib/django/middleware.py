"""`SessionMiddleware`: Django's own, answering a store outage with a 503 instead of a 500,
and a login refused by the session limit with a 409.

    MIDDLEWARE = [
        "sessionary.contrib.django.SessionMiddleware",  # in place of Django's
        ...
    ]

With Django's `django.contrib.sessions.middleware.SessionMiddleware`, a store that cannot be
reached (`StoreUnavailable`) is an unhandled exception: a 500, a traceback in the error log
(and on the page with `DEBUG`), for what is not a bug. This subclass answers it as
sessionary's service does: `503`, `Retry-After`, `{"error": "store_unavailable", ...}`, and
logs the outage once when it starts and once when it ends (`sessionary.contrib.outage`):

* when the view (or a template it renders) uses `request.session` and the load fails
  (`process_exception`);
* when the session cannot be saved as the response goes out (`process_response`).

With `SESSIONARY["max_sessions_per_subject"]` and `"on_max_sessions": "refuse"`, a login
past the limit fails where the user is recorded: at the save as the response goes out
(`TooManySessions`). This subclass answers `409` with the service's JSON
(`{"error": "too_many_sessions", "message": ..., "max_sessions": N}`) instead of the view's
response, and the login does not take effect: the user is taken out of the session again
(`django.contrib.auth`'s keys), which is saved as the anonymous session it was before the
login (its data kept, under the key `login` gave it, sent in the 409's cookie). For a page
of your own, a login view may look at `sessions_of(user.pk)` before calling `login` (a hint
for a friendlier answer: only the save decides, atomically). With "evict_oldest" the login
succeeds and the user's least recently active session ends in the same step.

It also hands the request's client (user agent, `REMOTE_ADDR`) to the session, which
records it when it is created if `SESSIONARY["devices"]` asks for it (`config`).

A request that does not use the session goes on. The limit: Django hands `process_exception`
only what the view raised, so a session used by another middleware's `process_request` or
`process_view` while the store is down (`CSRF_USE_SESSIONS = True` is one) is still Django's
500.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import (  # type: ignore[import-untyped]
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
)
from django.contrib.sessions.middleware import (  # type: ignore[import-untyped]
    SessionMiddleware as DjangoSessionMiddleware,
)
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]

from sessionary.contrib import outage
from sessionary.contrib.django.config import devices
from sessionary.contrib.django.session_store import SessionStore
from sessionary.errors import StoreUnavailable, TooManySessions

_OUTAGE = outage.Outage("Django sessions")


class SessionMiddleware(DjangoSessionMiddleware):  # type: ignore[misc]
    """Django's `SessionMiddleware`, answering `StoreUnavailable` with a 503 and a refused
    login (`TooManySessions`) with a 409 (see the module docstring), and handing the
    request's client to the session."""

    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        policy = devices()
        if policy is not None and isinstance(request.session, SessionStore):
            user_agent = request.headers.get("User-Agent")
            request.session.device = policy.seen(user_agent, request.META.get("REMOTE_ADDR"))

    def process_exception(self, request: HttpRequest, exception: Exception) -> Any:
        if isinstance(exception, StoreUnavailable):
            return _unavailable(exception)
        return None  # anything else is Django's to answer

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        try:
            answered: HttpResponse = super().process_response(request, response)
        except StoreUnavailable as error:
            return _unavailable(error)
        except TooManySessions as error:
            return self._refused(request, error)
        session = getattr(request, "session", None)
        if session is not None and session.accessed:
            _OUTAGE.worked()  # the session was used and nothing failed
        return answered

    def _refused(self, request: HttpRequest, error: TooManySessions) -> HttpResponse:
        """The 409 of a login the session limit refused (nothing of it was written): the
        user taken out of the session again, saved anonymous as Django saves any session,
        its cookie on the 409."""
        for key in (SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY):
            request.session.pop(key, None)
        refused = HttpResponse(
            outage.error_body(error), status=error.http_status, content_type=outage.CONTENT_TYPE
        )
        try:
            answered: HttpResponse = super().process_response(request, refused)
        except StoreUnavailable as unavailable:
            return _unavailable(unavailable)
        return answered


def _unavailable(error: StoreUnavailable) -> HttpResponse:
    _OUTAGE.failed(error, "requests that use the session are answered 503")
    return HttpResponse(
        outage.BODY,
        status=outage.STATUS,
        content_type=outage.CONTENT_TYPE,
        headers=outage.HEADERS,
    )
