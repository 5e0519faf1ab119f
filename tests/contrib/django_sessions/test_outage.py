"""Django's sessions while the store is down, behind `sessionary.contrib.django.SessionMiddleware`
(the example project's middleware): a private redis-server (never the shared one) is killed
under the running project. A request that uses the session is answered 503 with Retry-After
and the service's JSON (never a 500 with a traceback), one that does not goes on, the outage
is logged once, and once the server is back requests work again."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, override_settings
from django.urls import path

from sessionary.contrib.django import close_stores
from sessionary.outage import RETRY_AFTER_UNAVAILABLE
from tests.servers import RedisServer

MIDDLEWARE = "sessionary.contrib.django.SessionMiddleware"


def count(request: HttpRequest) -> JsonResponse:
    request.session["count"] = request.session.get("count", 0) + 1
    return JsonResponse({"count": request.session["count"]})


def count_then(request: HttpRequest) -> JsonResponse:
    """`count`, then what the test passed in the request's environ (`then`)."""
    answer = count(request)
    request.META["then"]()
    return answer


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("count", count), path("count-then", count_then), path("health", health)]


@pytest.fixture
def private_store(private_redis: RedisServer) -> Iterator[RedisServer]:
    """Django's sessions on the test's own redis-server, and this module's routes."""
    url = f"{private_redis.url}?socket_connect_timeout=0.5"
    try:
        with override_settings(
            SESSIONARY={"store": url, "namespace": "django"}, ROOT_URLCONF=__name__
        ):
            yield private_redis
    finally:
        close_stores()


def assert_unavailable(response: HttpResponse) -> None:
    assert response.status_code == 503
    assert response["Retry-After"] == str(RETRY_AFTER_UNAVAILABLE)
    assert response["Content-Type"] == "application/json"
    body = response.json()  # type: ignore[attr-defined]
    assert body["error"] == "store_unavailable"
    assert body["retry_after"] == RETRY_AFTER_UNAVAILABLE
    assert b"Traceback" not in response.content
    assert settings.SESSION_COOKIE_NAME not in response.cookies


def test_the_example_uses_sessionarys_middleware() -> None:
    assert MIDDLEWARE in settings.MIDDLEWARE
    assert "django.contrib.sessions.middleware.SessionMiddleware" not in settings.MIDDLEWARE


def test_a_store_down_answers_503_and_recovers(
    private_store: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client(raise_request_exception=False)  # a 500 would be a response, not a raise
    assert client.get("/count").json() == {"count": 1}
    private_store.stop()
    with caplog.at_level(logging.INFO, logger="sessionary.contrib"):
        assert_unavailable(client.get("/count"))  # the view's load fails: process_exception
        assert_unavailable(client.get("/count"))
        assert client.get("/health").content == b"ok"  # never uses the session: goes on
        fresh = Client(raise_request_exception=False)
        assert_unavailable(fresh.get("/count"))  # nothing to load; the save fails
    ours = [r for r in caplog.records if r.name == "sessionary.contrib"]  # (the store logs too)
    assert [r.levelno for r in ours] == [logging.WARNING]  # once per outage, not per request
    assert "answered 503" in ours[0].getMessage()

    private_store.start()  # empty: the old session is gone, a new one starts
    assert client.get("/count").json() == {"count": 1}
    assert client.get("/count").json() == {"count": 2}


def test_a_store_down_when_the_session_is_saved_answers_503(private_store: RedisServer) -> None:
    client = Client(raise_request_exception=False)
    client.get("/count")
    # loaded fine, then the server dies: the save in process_response fails
    assert_unavailable(client.get("/count-then", then=private_store.stop))
