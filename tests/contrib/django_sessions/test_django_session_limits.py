"""`SESSIONARY["max_sessions_per_subject"]` through Django's own login (the example project's
`/login`, Django's test client): a login past the limit evicts the user's least recently
active session, or is refused with a 409 (never a 500) and does not take effect, the
session staying the anonymous one it was."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings

from sessionary import ManualClock
from sessionary.contract import OnMaxSessions
from sessionary.sync import connect_sync

from .stores import on_store
from .test_django_example import PASSWORD, _count, _logged_in

LIMIT = 3


@pytest.fixture(params=["sqlite", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def limited(kind: str, clock: ManualClock, on_max: OnMaxSessions) -> Iterator[None]:
    """Django's sessions on a store of the test's own (on its clock), at most `LIMIT` per
    user."""
    with on_store(kind) as url, connect_sync(url, clock=clock) as store:
        options = {"max_sessions_per_subject": LIMIT, "on_max_sessions": on_max}
        with override_settings(SESSIONARY={"store": store, "namespace": "django", **options}):
            yield


@pytest.fixture
def evicting(kind: str, clock: ManualClock) -> Iterator[None]:
    yield from limited(kind, clock, "evict_oldest")


@pytest.fixture
def refusing(kind: str, clock: ManualClock) -> Iterator[None]:
    yield from limited(kind, clock, "refuse")


def _devices(user: User, clock: ManualClock, how_many: int) -> list[Client]:
    """`how_many` browsers logged in as `user`, one a second (so the least recently active
    is the first)."""
    browsers = []
    for _ in range(how_many):
        browsers.append(_logged_in(user))
        clock.advance(timedelta(seconds=1))
    return browsers


def test_a_login_past_the_limit_evicts_the_least_recently_active_session(
    evicting: None, clock: ManualClock, user: User
) -> None:
    first, *others = _devices(user, clock, LIMIT + 1)
    assert _count(first) == (1, None)  # its session ended: a new, anonymous one
    assert [_count(browser)[1] for browser in others] == ["ada"] * LIMIT

    again = _logged_in(user)  # the next login evicts the least recently active: others[0]
    assert _count(others[0]) == (1, None)
    assert _count(again)[1] == "ada"


def test_a_login_past_the_limit_is_refused_with_a_409_and_the_session_stays_anonymous(
    refusing: None, clock: ManualClock, user: User
) -> None:
    devices = _devices(user, clock, LIMIT)
    late = Client()
    assert _count(late) == (1, None)

    refused = late.post("/login", {"username": "ada", "password": PASSWORD})
    assert refused.status_code == 409
    assert refused["Content-Type"] == "application/json"
    body = refused.json()
    assert body.pop("message")
    assert body == {"error": "too_many_sessions", "max_sessions": LIMIT}
    assert refused.cookies[settings.SESSION_COOKIE_NAME].value  # the anonymous session's key

    assert _count(late) == (2, None)  # its count kept, nobody logged in
    assert [_count(browser)[1] for browser in devices] == ["ada"] * LIMIT
    assert _count(Client()) == (1, None)  # a browser that never logs in is not limited
