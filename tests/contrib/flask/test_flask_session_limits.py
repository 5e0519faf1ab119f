"""`SessionInterface(max_sessions_per_subject=...)` through Flask's test client: a login
(`regenerate(subject=...)`) past the limit evicts the subject's least recently active
session, or is refused with a 409 (never a 500) that a view may answer its own way, the
session staying as it was."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import flask
from flask.testing import FlaskClient

from sessionary import ManualClock
from sessionary.contract import OnMaxSessions
from sessionary.contrib.flask import ServerSession, SessionInterface, SessionLimitReached
from sessionary.sync import SyncStore

LIMIT = 3


def limited_app(store: SyncStore, on_max: OnMaxSessions) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(TESTING=True)
    app.session_interface = SessionInterface(
        store, max_sessions_per_subject=LIMIT, on_max_sessions=on_max
    )

    def session() -> ServerSession:
        current = flask.session
        assert isinstance(current, ServerSession)
        return current

    @app.get("/me")
    def me() -> dict[str, Any]:
        return {"id": session().id, "user": session().subject, "cart": session().get("cart")}

    @app.post("/add/<item>")
    def add(item: str) -> str:
        session().setdefault("cart", []).append(item)
        return ""

    @app.post("/login/<user>")
    def login(user: str) -> str:
        session().regenerate(subject=user)
        return user

    @app.post("/login-own/<user>")
    def login_answered_by_the_view(user: str) -> tuple[str, int]:
        try:
            session().regenerate(subject=user)
        except SessionLimitReached as refused:
            return f"log out of one of your {refused.error.max_sessions} devices first", 403
        return user, 200

    return app


def _devices(app: flask.Flask, clock: ManualClock, how_many: int) -> list[FlaskClient]:
    """`how_many` browsers logged in as "ann", one a second."""
    browsers = []
    for _ in range(how_many):
        browser = app.test_client()
        assert browser.post("/login/ann").status_code == 200
        browsers.append(browser)
        clock.advance(timedelta(seconds=1))
    return browsers


def _user(browser: FlaskClient) -> Any:
    """Who the browser's session belongs to."""
    return (browser.get("/me").json or {}).get("user")


def test_a_login_past_the_limit_evicts_the_least_recently_active_session(
    sync_store: SyncStore, clock: ManualClock
) -> None:
    app = limited_app(sync_store, "evict_oldest")
    first, *others = _devices(app, clock, LIMIT + 1)
    assert first.get("/me").json == {"id": None, "user": None, "cart": None}
    assert [_user(browser) for browser in others] == ["ann"] * LIMIT


def test_a_login_past_the_limit_is_refused_and_the_session_stays_as_it_was(
    sync_store: SyncStore, clock: ManualClock
) -> None:
    app = limited_app(sync_store, "refuse")
    devices = _devices(app, clock, LIMIT)

    late = app.test_client()
    late.post("/add/book")
    before = late.get("/me").json
    refused = late.post("/login/ann")
    assert refused.status_code == 409
    assert refused.content_type == "application/json"
    body = refused.json
    assert body is not None
    assert body.pop("message")
    assert body == {"error": "too_many_sessions", "max_sessions": LIMIT}
    assert "Set-Cookie" not in refused.headers
    assert late.get("/me").json == before == {**before, "user": None, "cart": ["book"]}

    answered = late.post("/login-own/ann")
    assert (answered.status_code, answered.text) == (403, "log out of one of your 3 devices first")

    fresh = app.test_client()  # nothing stored yet: refused at the call all the same
    assert fresh.post("/login/ann").status_code == 409
    assert fresh.get("/me").json == {"id": None, "user": None, "cart": None}
    assert [_user(browser) for browser in devices] == ["ann"] * LIMIT
