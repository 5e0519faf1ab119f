"""`SessionInterface(url, encryption_keys=...)` through Flask's test client: the data
round-trips while the store's bytes never show it; a session sealed under a key the interface
no longer has is absent (a fresh anonymous session, never a 500), logged to
`sessionary.security`; a bad key is a `ValueError` that never quotes it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import flask
import pytest
from flask.testing import FlaskClient

from sessionary.contrib.flask import ServerSession, SessionInterface
from sessionary.sealing import EncryptionKeys
from sessionary.sync import connect_sync
from tests.at_rest import MARKER, NEW, OLD, SHORT_KEY_TEXT, stored_bytes


@contextmanager
def sealed_app(url: str, keys: EncryptionKeys) -> Iterator[flask.Flask]:
    """An app whose sessions live at `url` sealed under `keys`, on the process's store for
    them (closed afterwards, as a process that exits would)."""
    app = flask.Flask(__name__)
    app.config.update(TESTING=True)
    interface = SessionInterface(url, encryption_keys=keys)
    app.session_interface = interface

    def session() -> ServerSession:
        current = flask.session
        assert isinstance(current, ServerSession)
        return current

    @app.get("/me")
    def me() -> dict[str, Any]:
        return {"id": session().id, "user": session().subject, "note": session().get("note")}

    @app.post("/note/<text>")
    def note(text: str) -> str:
        session()["note"] = text
        return ""

    @app.post("/login/<user>")
    def login(user: str) -> str:
        session().regenerate(subject=user)
        return user

    @app.get("/mine")
    def mine() -> list[str]:
        return [s.id for s in session().list_mine()]

    try:
        yield app
    finally:
        interface.store.close()


def _cookie(browser: FlaskClient) -> str | None:
    found = browser.get_cookie("session")
    return None if found is None else found.value


def test_the_data_round_trips_and_the_stored_bytes_never_show_it(shared_url: str) -> None:
    with sealed_app(shared_url, f"{OLD},{NEW}") as app:
        browser = app.test_client()
        assert browser.post(f"/note/{MARKER}").status_code == 200
        assert browser.post("/login/ann").status_code == 200
        assert browser.get("/me").json == {"id": _cookie(browser), "user": "ann", "note": MARKER}

        at_rest = stored_bytes(shared_url)
    assert str(_cookie(browser)).encode() in at_rest
    assert MARKER.encode() not in at_rest


def test_a_session_sealed_under_a_dropped_key_is_a_fresh_anonymous_one(
    shared_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with sealed_app(shared_url, [OLD, NEW]) as app:
        browser = app.test_client()
        browser.post(f"/note/{MARKER}")
        browser.post("/login/ann")
        old_id = _cookie(browser)
        assert old_id is not None

    with (
        sealed_app(shared_url, [NEW]) as app,
        caplog.at_level("WARNING", logger="sessionary.security"),
    ):
        browser = app.test_client(use_cookies=True)
        browser.set_cookie("session", old_id)
        seen = browser.get("/me")
        assert seen.status_code == 200
        assert seen.json == {"id": None, "user": None, "note": None}
        assert _cookie(browser) is None  # the dead cookie is cleared
        other = app.test_client()
        other.post("/login/ann")  # a session of the same subject this key can open
        assert other.get("/mine").json == [_cookie(other)]
    logged = [r.name for r in caplog.records if old_id[:8] in r.getMessage()]
    assert logged == ["sessionary.security"]  # once, however often it was met
    with connect_sync(shared_url, encryption_keys=[OLD]) as old_keys:  # left as it was
        assert old_keys.namespace("flask", idle_ttl=app.permanent_session_lifetime).get(old_id)


def test_a_bad_key_is_a_value_error_naming_its_position_never_the_key(shared_url: str) -> None:
    with pytest.raises(ValueError, match=r"encryption key #2: .*31 bytes") as raised:
        SessionInterface(shared_url, encryption_keys=[NEW, SHORT_KEY_TEXT])
    assert SHORT_KEY_TEXT not in str(raised.value)


def test_keys_beside_an_open_sync_store_are_refused(shared_url: str) -> None:
    with connect_sync(shared_url) as store, pytest.raises(ValueError, match="store URL"):
        SessionInterface(store, encryption_keys=[NEW])
