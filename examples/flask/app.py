"""A Flask app whose sessions live in sessionary: log in, count, log out.

    pip install 'sessionary[flask,redis]'
    SESSIONARY_URL=redis://localhost:6379/0 flask --app examples.flask.app run

    curl -c jar -X POST localhost:5000/login -d user=alice      # {"user": "alice", "count": 0}
    curl -b jar -c jar -X POST localhost:5000/count             # {"user": "alice", "count": 1}
    curl -b jar -c jar -X POST localhost:5000/logout            # {"logged_out": true}

`flask.session` is used as always; only `app.session_interface` changes. The cookie carries
only the session's id (no `SECRET_KEY` needed); the data stays in the store. Logging in
regenerates the id (the one the browser had before is dead at once) and records whose session
it is, so the store can list or end every session of a user. While the store is down, a
request that uses the session is answered 503 with Retry-After (one that does not goes on);
`SessionInterface(..., on_unavailable="fail_open")` goes on without a session instead.
"""

from __future__ import annotations

import os
from datetime import timedelta

from flask import Flask, abort, request, session

from sessionary.contrib.flask import ServerSession, SessionInterface, UnavailableSession
from sessionary.sync import SyncStore


def create_app(store: str | SyncStore | None = None) -> Flask:
    """The app on `store` (default: the SESSIONARY_URL environment variable, else the SQLite
    file sessionary.db)."""
    app = Flask(__name__)
    app.config.update(
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=30),  # the idle expiry, in the store too
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.session_interface = SessionInterface(
        store or os.environ.get("SESSIONARY_URL"), absolute_ttl=timedelta(hours=12)
    )

    @app.post("/login")
    def login() -> dict[str, object]:
        """Log in (a real app checks a password first): a new id, owned by the user."""
        user = request.form["user"]
        current = _session()
        current.regenerate(subject=user)  # never keep a pre-login id: no session fixation
        current.permanent = True  # the cookie outlives the browser, for the idle lifetime
        current["count"] = 0
        return _state()

    @app.post("/count")
    def count() -> dict[str, object]:
        """Add one to the logged-in user's counter, kept in the session."""
        if _session().subject is None:
            abort(401)
        session["count"] += 1
        return _state()

    @app.get("/me")
    def me() -> dict[str, object]:
        return _state()

    @app.post("/logout")
    def logout() -> dict[str, object]:
        """Empty the session: it is deleted in the store and the cookie cleared."""
        session.clear()
        return {"logged_out": True}

    return app


def _session() -> ServerSession | UnavailableSession:
    """`flask.session` with sessionary's methods: a `ServerSession`, or while the store is
    down an `UnavailableSession` (any use of it answers 503 with Retry-After)."""
    assert isinstance(session, ServerSession | UnavailableSession)  # the proxy passes it on
    return session


def _state() -> dict[str, object]:
    return {"user": _session().subject, "count": session.get("count")}


app = create_app()
