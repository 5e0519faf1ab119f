"""The Flask integration while its store is down: a private redis-server (never the shared
one) is killed under a running app. A request that uses the session is answered 503 with
Retry-After and the service's JSON (never a 500 with a traceback), one that does not use it
goes on, the outage is logged once, and once the server is back requests work again; with
`on_unavailable="fail_open"` requests go on without a session."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import flask
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from sessionary.contrib.flask import SessionInterface
from sessionary.outage import RETRY_AFTER_UNAVAILABLE
from sessionary.store import OnUnavailable
from sessionary.sync import SyncStore, connect_sync
from tests.servers import RedisServer

COOKIE = "session"


@pytest.fixture
def sync_store(private_redis: RedisServer) -> Iterator[SyncStore]:
    with connect_sync(f"{private_redis.url}?socket_connect_timeout=0.5") as opened:
        yield opened


def make_app(sync_store: SyncStore, on_unavailable: OnUnavailable) -> flask.Flask:
    app = flask.Flask(__name__)
    app.session_interface = SessionInterface(sync_store, on_unavailable=on_unavailable)

    @app.post("/count")
    def count() -> dict[str, object]:
        flask.session["count"] = flask.session.get("count", 0) + 1
        return {"count": flask.session["count"]}

    @app.post("/login")
    def login() -> dict[str, object]:
        current = flask.session
        current.regenerate(subject="ada")  # type: ignore[attr-defined]
        return {}

    @app.post("/swallow")
    def swallow() -> str:
        with contextlib.suppress(Exception):  # a view that catches too much: still no 200
            flask.session["count"] = 0
        return "fine"

    @app.get("/health")
    def health() -> str:
        return "ok"

    return app


@pytest.fixture
def client(sync_store: SyncStore) -> FlaskClient:
    return make_app(sync_store, "fail_closed").test_client()


def assert_unavailable(response: TestResponse) -> None:
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(RETRY_AFTER_UNAVAILABLE)
    assert response.content_type == "application/json"
    body = response.get_json()
    assert body["error"] == "store_unavailable"
    assert body["retry_after"] == RETRY_AFTER_UNAVAILABLE
    assert "Traceback" not in response.text
    assert "Set-Cookie" not in response.headers


def test_a_store_down_answers_503_and_recovers(
    client: FlaskClient, private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.post("/count").get_json() == {"count": 1}
    private_redis.stop()
    with caplog.at_level(logging.INFO, logger="sessionary.contrib"):
        assert_unavailable(client.post("/count"))  # loading the session fails: 503 on use
        assert_unavailable(client.post("/login"))
        assert_unavailable(client.post("/swallow"))  # the view swallowed it: still 503
        assert client.get("/health").text == "ok"  # never uses the session: goes on
        fresh = client.application.test_client()
        assert_unavailable(fresh.post("/count"))  # no cookie: loads nothing, fails to save
        assert fresh.get_cookie(COOKIE) is None
    ours = [r for r in caplog.records if r.name == "sessionary.contrib"]  # (the store logs too)
    assert [r.levelno for r in ours] == [logging.WARNING]  # once per outage, not per request
    assert "answered 503" in ours[0].getMessage()

    private_redis.start()  # empty: the old session is gone, the cookie is cleared
    assert client.post("/count").get_json() == {"count": 1}
    assert client.post("/count").get_json() == {"count": 2}


def test_a_store_down_between_load_and_save_turns_the_response_into_503(
    sync_store: SyncStore, private_redis: RedisServer
) -> None:
    app = make_app(sync_store, "fail_closed")

    @app.post("/kill-then-count")
    def kill_then_count() -> str:
        flask.session["count"] = 5  # loaded fine; the save will fail
        private_redis.stop()
        return "counted"

    client = app.test_client()
    client.post("/count")
    assert_unavailable(client.post("/kill-then-count"))


def test_fail_open_goes_on_without_a_session(
    sync_store: SyncStore, private_redis: RedisServer
) -> None:
    client = make_app(sync_store, "fail_open").test_client()
    assert client.post("/count").get_json() == {"count": 1}
    private_redis.stop()
    answered = client.post("/count")
    assert answered.status_code == 200
    assert answered.get_json() == {"count": 1}  # an empty session, for this request only
    assert "Set-Cookie" not in answered.headers
    fresh = client.application.test_client()
    assert fresh.post("/count").status_code == 200  # nothing loaded, the save fails open
    assert fresh.get_cookie(COOKIE) is None
    private_redis.start()
    assert client.post("/count").get_json() == {"count": 1}
    assert client.post("/count").get_json() == {"count": 2}
