"""The example project (examples/django: login, a counter in the session, "log out my other
sessions"), driven with Django's test client; its settings are the ones this process runs
with (see conftest), with the store of each test's own."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from sessionary.contrib.django import sessions_of

PASSWORD = "analytical-engine"


def _count(client: Client) -> tuple[int, str | None]:
    answer = client.get("/").json()
    return answer["count"], answer["user"]


def _logged_in(user: User) -> Client:
    client = Client()
    assert (
        client.post("/login", {"username": user.username, "password": PASSWORD}).status_code == 200
    )
    return client


def _cookie(client: Client) -> str:
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def test_the_counter_counts_in_the_session(store_kind: str) -> None:
    client = Client()
    assert [_count(client) for _ in range(3)] == [(1, None), (2, None), (3, None)]
    assert len(_cookie(client)) == 43  # a sessionary id: 256 random bits, base64url
    assert _count(Client()) == (1, None)  # another browser, another session


def test_login_keeps_the_count_under_a_new_id_and_records_the_user(
    store_kind: str, user: User
) -> None:
    client = Client()
    _count(client)
    before = _cookie(client)
    assert client.post("/login", {"username": "ada", "password": PASSWORD}).json() == {
        "user": "ada"
    }
    after = _cookie(client)
    assert after != before  # no session fixation
    assert _count(client) == (2, "ada")
    assert [s.id for s in sessions_of(user.pk)] == [after]

    stale = Client()
    stale.cookies[settings.SESSION_COOKIE_NAME] = before
    assert _count(stale) == (1, None)  # the pre-login id is dead


def test_a_wrong_password_logs_nobody_in(store_kind: str, user: User) -> None:
    client = Client()
    answer = client.post("/login", {"username": "ada", "password": "wrong"})
    assert answer.status_code == 401
    assert sessions_of(user.pk) == []


def test_log_out_my_other_sessions(store_kind: str, user: User) -> None:
    laptop, phone, tablet = (_logged_in(user) for _ in range(3))
    sessions = laptop.get("/sessions").json()["sessions"]
    assert sorted(s["current"] for s in sessions) == [False, False, True]

    assert laptop.post("/sessions/others").json() == {"logged_out": 2}

    assert _count(laptop) == (1, "ada")
    assert _count(phone) == (1, None)
    assert _count(tablet) == (1, None)
    assert [s.id for s in sessions_of(user.pk)] == [_cookie(laptop)]


def test_logout_deletes_the_session_and_clears_the_cookie(store_kind: str, user: User) -> None:
    client = _logged_in(user)
    _count(client)
    answer = client.post("/logout")
    assert answer.cookies[settings.SESSION_COOKIE_NAME].value == ""  # deleted by the response
    assert sessions_of(user.pk) == []
    assert _count(client) == (1, None)
