"""Django sessions in a sessionary store, in two settings::

    SESSION_ENGINE = "sessionary.contrib.django"
    SESSIONARY = {"store": "redis://localhost:6379/0", "namespace": "django"}

and, in `MIDDLEWARE`, `"sessionary.contrib.django.SessionMiddleware"` in place of Django's
`django.contrib.sessions.middleware.SessionMiddleware` (a subclass of it): a store outage
is then answered 503 with `Retry-After`, not 500 (see `middleware`).

`request.session` works as it always did (auth's login and logout, messages, `set_expiry`,
`manage.py clearsessions`); the data lives in the store, the cookie carries only the id. The
idle lifetime is `SESSION_COOKIE_AGE`, `SESSIONARY["absolute_ttl"]` (seconds, default 30
days, None for none) caps a session's whole life; the default store is `sessionary.db` in
`BASE_DIR` (see `config`). `set_expiry` gives one session a lifetime of its own in the store,
longer or shorter than those ("remember me": `request.session.set_expiry(14 * 24 * 3600)`
after login), up to `SESSIONARY["max_absolute_ttl"]` (see `expiry`).

Login records the user as the session's subject, so::

    request.session.revoke_others()   # "log out my other sessions"
    sessions_of(user.pk)              # the user's live sessions
    revoke_user(user.pk)              # log the user out everywhere

Values go through Django's `SESSION_SERIALIZER` (JSON), as with Django's own backends.
"""

from sessionary.extras import needs

with needs("django", "sessionary.contrib.django"):
    from sessionary.contrib.django.config import close_stores
    from sessionary.contrib.django.middleware import SessionMiddleware
    from sessionary.contrib.django.session_store import SessionStore
    from sessionary.contrib.django.users import arevoke_user, asessions_of, revoke_user, sessions_of

__all__ = [
    "SessionMiddleware",
    "SessionStore",
    "arevoke_user",
    "asessions_of",
    "close_stores",
    "revoke_user",
    "sessions_of",
]
