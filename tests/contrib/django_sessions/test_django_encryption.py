"""`SESSIONARY["encryption_keys"]` through Django's test client and the example project: the
data round-trips while the store's bytes never show it; a session sealed under a key the
settings no longer list is absent (a fresh anonymous session, never a 500), logged to
`sessionary.security`; a bad key is an `ImproperlyConfigured` that never quotes it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings

from sessionary.contrib.django import SessionStore, close_stores, revoke_user, sessions_of
from sessionary.contrib.django.config import namespace
from sessionary.sync import connect_sync
from tests.at_rest import MARKER, NEW, OLD, SHORT_KEY_TEXT, stored_bytes

from .stores import on_store
from .test_django_example import _count, _logged_in


@pytest.fixture(params=["sqlite", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sealed_url(kind: str) -> Iterator[str]:
    """Django's sessions on a store of the test's own, sealed under OLD (the keys as an
    environment variable carries them: one comma-separated str)."""
    with on_store(kind, encryption_keys=f"{OLD},{NEW}") as url:
        yield url


def _only_new_key(url: str) -> override_settings:
    """The settings after OLD was dropped (what a deploy of the new keys does): the process's
    store for the URL is opened again, with NEW alone."""
    close_stores()
    return override_settings(
        SESSIONARY={"store": url, "namespace": "django", "encryption_keys": [NEW]}
    )


def test_the_data_round_trips_and_the_stored_bytes_never_show_it(sealed_url: str) -> None:
    client = Client()
    assert _count(client) == (1, None)
    session = client.session  # the engine's SessionStore for the client's cookie
    session["note"] = MARKER
    session.save()

    assert _count(client) == (2, None)
    assert client.session["note"] == MARKER
    at_rest = stored_bytes(sealed_url)
    assert client.cookies[settings.SESSION_COOKIE_NAME].value.encode() in at_rest
    assert MARKER.encode() not in at_rest


def test_a_session_sealed_under_a_dropped_key_is_a_fresh_anonymous_one(
    sealed_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client()
    _count(client)
    assert _count(client) == (2, None)
    old_id = client.cookies[settings.SESSION_COOKIE_NAME].value

    with _only_new_key(sealed_url), caplog.at_level("WARNING", logger="sessionary.security"):
        assert not SessionStore().exists(old_id)
        assert _count(client) == (1, None)  # absent: a new session, no 500
        assert client.cookies[settings.SESSION_COOKIE_NAME].value != old_id
    logged = [r.name for r in caplog.records if old_id[:8] in r.getMessage()]
    assert logged == ["sessionary.security"]
    with connect_sync(sealed_url, encryption_keys=[OLD]) as old_keys:  # left as it was
        django = old_keys.namespace("django", idle_ttl=timedelta(seconds=1))
        assert django.get(old_id) is not None


def test_logging_a_user_out_everywhere_ends_the_sessions_it_cannot_open(
    sealed_url: str, user: User
) -> None:
    before = _logged_in(user)
    with _only_new_key(sealed_url):
        after = _logged_in(user)
        assert revoke_user(user.pk) == 2
        assert _count(before) == (1, None)
        assert _count(after) == (1, None)


def test_a_users_sessions_leave_out_those_it_cannot_open(sealed_url: str, user: User) -> None:
    _logged_in(user)
    with _only_new_key(sealed_url):
        after = _logged_in(user)
        assert [s.id for s in sessions_of(user.pk)] == [
            after.cookies[settings.SESSION_COOKIE_NAME].value
        ]
        assert after.get("/sessions").status_code == 200


def test_a_bad_key_is_improperly_configured_naming_its_position_never_the_key(
    sealed_url: str,
) -> None:
    close_stores()
    bad = {"store": sealed_url, "encryption_keys": [NEW, SHORT_KEY_TEXT]}
    with override_settings(SESSIONARY=bad), pytest.raises(ImproperlyConfigured) as raised:
        namespace()
    message = str(raised.value)
    assert "encryption key #2" in message
    assert "31 bytes" in message
    assert SHORT_KEY_TEXT not in message


def test_keys_beside_an_open_sync_store_are_improperly_configured(sealed_url: str) -> None:
    with connect_sync(sealed_url) as store:
        given = {"store": store, "encryption_keys": [NEW]}
        with override_settings(SESSIONARY=given), pytest.raises(ImproperlyConfigured):
            namespace()
