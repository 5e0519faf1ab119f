"""Two overlapping requests of one session through Django's middleware (Django's test client,
the example project's counter): a key both changed (the counter both incremented) is refused
to the second to save with Django's 400 (`UpdateError`, `SessionInterrupted`), never a 500
and never a lost update; different keys both stay. The overlap is made by hand: the view of
one request sends the other, complete, between loading the session and changing it. This
module is its own `ROOT_URLCONF` (the example's routes, plus those views)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from counter_site.urls import urlpatterns as example_routes  # on sys.path: see conftest
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, override_settings
from django.urls import path

from sessionary.contrib.django import SessionStore

from .test_django_example import _cookie, _count

#: the other request's responses, as the views below saw them (cleared by each test)
others: list[HttpResponse] = []


def _around_another(request: HttpRequest, method: str, url: str) -> None:
    """Send another request of this session (same cookie), complete and saved, while this
    one holds the session it loaded."""
    other = Client()
    other.cookies[settings.SESSION_COOKIE_NAME] = request.COOKIES[settings.SESSION_COOKIE_NAME]
    others.append(other.generic(method, url))


def count_around_another(request: HttpRequest) -> JsonResponse:
    loaded = request.session["count"]
    _around_another(request, "GET", "/")  # the example's counter: it counts first, and saves
    request.session["count"] = loaded + 1  # the same value it saved: still its update lost
    return JsonResponse({"count": request.session["count"]})


def wish_around_another(request: HttpRequest) -> JsonResponse:
    loaded = request.session["count"]
    _around_another(request, "GET", "/")  # it changes "count"; this request, "wish"
    request.session["wish"] = "pen"
    return JsonResponse({"count": loaded})


urlpatterns = [
    path("count-around-another", count_around_another),
    path("wish-around-another", wish_around_another),
    *example_routes,
]


@pytest.fixture(autouse=True)
def _routes(store_kind: str) -> Iterator[None]:
    others.clear()
    with override_settings(ROOT_URLCONF=__name__):
        yield


def test_a_key_both_overlapping_requests_changed_is_a_400_never_a_lost_update() -> None:
    client = Client()
    assert _count(client) == (1, None)
    key = _cookie(client)

    response = client.get("/count-around-another")

    [other] = others
    assert (other.status_code, other.json()["count"]) == (200, 2)  # saved first: acknowledged
    assert response.status_code == 400  # Django's SessionInterrupted: there is no 409
    assert settings.SESSION_COOKIE_NAME not in response.cookies
    assert SessionStore(key).load() == {"count": 2}  # exactly the acknowledged one
    assert _count(client) == (3, None)  # the retry counts on from it, same session
    assert _cookie(client) == key


def test_overlapping_requests_changing_different_keys_both_keep_theirs() -> None:
    client = Client()
    assert _count(client) == (1, None)
    key = _cookie(client)

    response = client.get("/wish-around-another")

    assert [other.status_code for other in others] == [200]
    assert response.status_code == 200
    assert SessionStore(key).load() == {"count": 2, "wish": "pen"}
