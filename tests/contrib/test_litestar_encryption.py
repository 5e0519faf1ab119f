"""`SessionaryStore(url, encryption_keys=...)` through Litestar's test client: the session
round-trips while the store's bytes never show it; a session sealed under a key the store no
longer has is absent (a fresh anonymous session, never a 500), logged to
`sessionary.security`; a bad key is a `ValueError` that never quotes it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from sessionary import ManualClock, connect
from sessionary.contrib.litestar import SessionaryStore
from tests.at_rest import MARKER, NEW, OLD, SHORT_KEY_TEXT, stored_bytes
from tests.contrib.test_litestar import _app, _present, _session_id, _user

pytestmark = pytest.mark.timeout(300)


def test_the_session_round_trips_and_the_stored_bytes_never_show_it(
    shared_url: str, clock: ManualClock
) -> None:
    sessions = SessionaryStore(shared_url, clock=clock, encryption_keys=f"{OLD},{NEW}")
    with TestClient(_app(sessions)) as client:
        assert client.post("/login", json={"user_id": MARKER}).status_code == 201
        assert _user(client) == MARKER
        cookie = client.cookies["session"]
        at_rest = stored_bytes(shared_url)
    assert _session_id(cookie).encode() in at_rest
    assert MARKER.encode() not in at_rest


class _Kept(logging.Handler):
    """The records of one logger, kept: Litestar's logging configuration replaces the root
    logger's handlers at startup, `caplog`'s among them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def security_log() -> Iterator[list[logging.LogRecord]]:
    kept = _Kept()
    logger = logging.getLogger("sessionary.security")
    logger.addHandler(kept)
    try:
        yield kept.records
    finally:
        logger.removeHandler(kept)


def test_a_session_sealed_under_a_dropped_key_is_a_fresh_anonymous_one(
    shared_url: str, clock: ManualClock, security_log: list[logging.LogRecord]
) -> None:
    before = SessionaryStore(shared_url, clock=clock, encryption_keys=[OLD, NEW])
    with TestClient(_app(before)) as client:
        client.post("/login", json={"user_id": 42})
        cookie = client.cookies["session"]
        assert _user(client) == 42

    after = SessionaryStore(shared_url, clock=clock, encryption_keys=[NEW])
    with TestClient(_app(after)) as client:
        _present(client, cookie)
        seen = client.get("/me")
        assert (seen.status_code, seen.json()) == (200, {"user_id": None})
        assert client.post("/login", json={"user_id": 7}).status_code == 201  # replaces it
        assert _user(client) == 7
    assert [r for r in security_log if _session_id(cookie)[:8] in r.getMessage()]


def test_a_bad_key_is_a_value_error_naming_its_position_never_the_key(shared_url: str) -> None:
    with pytest.raises(ValueError, match=r"encryption key #2: .*31 bytes") as raised:
        SessionaryStore(shared_url, encryption_keys=[NEW, SHORT_KEY_TEXT])
    assert SHORT_KEY_TEXT not in str(raised.value)


async def test_keys_beside_an_open_store_are_refused(shared_url: str) -> None:
    async with await connect(shared_url) as store:
        with pytest.raises(ValueError, match="store URL"):
            SessionaryStore(store, encryption_keys=[NEW])
