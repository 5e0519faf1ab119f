"""`sessionary.contrib.litestar.SessionaryStore`: Litestar's store protocol (what Litestar's own
store tests check, on the test's clock) on memory, SQLite and Redis, and a real Litestar app
with server-side sessions on it."""

from __future__ import annotations

import asyncio
import string
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from litestar import Litestar, Request, get, post
from litestar.middleware.session.server_side import ServerSideSessionConfig
from litestar.testing import TestClient

from sessionary import ManualClock, Store, ids
from sessionary.contrib.litestar import SessionaryStore

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def sessions(store: Store) -> SessionaryStore:
    """A Litestar store over the test's sessionary store (each backend in turn)."""
    return SessionaryStore(store, subject_key="user_id")


# -- the store protocol ---------------------------------------------------------------------


async def test_values_round_trip_as_bytes(sessions: SessionaryStore) -> None:
    assert await sessions.get("missing") is None
    await sessions.set("bytes", b"value", 60)
    await sessions.set("text", "välue")
    await sessions.set("binary", bytes(range(256)))
    await sessions.set("empty", b"")
    assert await sessions.get("bytes") == b"value"
    assert await sessions.get("text") == "välue".encode()
    assert await sessions.get("binary") == bytes(range(256))
    assert await sessions.get("empty") == b""


async def test_utf8_values_are_stored_as_text_other_bytes_as_base64(
    sessions: SessionaryStore,
) -> None:
    await sessions.set("json", b'{"user_id": 7, "cart": ["\\u00e9"]}')
    await sessions.set("binary", b"\xff\x00")
    namespace = await sessions.sessionary_namespace()
    (json_session,) = await namespace.list_subject("7")
    assert json_session.data == {"text": '{"user_id": 7, "cart": ["\\u00e9"]}'}
    binary = await namespace.get(_session_id("binary"))
    assert binary is not None
    assert binary.data == {"base64": "/wA="}


@pytest.mark.parametrize("key", [*string.punctuation, "foo\xc3\xbc", "..", "", "k" * 10_000])
async def test_any_string_is_a_key(sessions: SessionaryStore, key: str) -> None:
    await sessions.set(key, b"value")
    assert await sessions.get(key) == b"value"
    assert await sessions.get(key + "x") is None


async def test_set_replaces_the_value(sessions: SessionaryStore) -> None:
    await sessions.set("key", b"one", 60)
    await sessions.set("key", b"two", 60)
    assert await sessions.get("key") == b"two"


async def test_a_value_expires_after_expires_in(
    sessions: SessionaryStore, clock: ManualClock
) -> None:
    await sessions.set("foo", b"bar", expires_in=1)
    clock.advance(999)
    assert await sessions.get("foo") == b"bar"
    assert await sessions.exists("foo")
    clock.advance(1)
    assert await sessions.get("foo") is None
    assert not await sessions.exists("foo")
    assert await sessions.expires_in("foo") is None


async def test_expires_in_takes_a_timedelta_and_fractions(
    sessions: SessionaryStore, clock: ManualClock
) -> None:
    await sessions.set("delta", b"v", expires_in=timedelta(days=1, seconds=1))
    await sessions.set("half", b"v", expires_in=0.5)
    assert await sessions.expires_in("delta") == 86_401
    clock.advance(500)
    assert await sessions.get("half") is None
    assert await sessions.get("delta") == b"v"


@pytest.mark.parametrize("renew_for", [10, timedelta(seconds=10)])
async def test_get_with_renew_for_extends_the_expiry(
    sessions: SessionaryStore, clock: ManualClock, renew_for: int | timedelta
) -> None:
    await sessions.set("foo", b"bar", expires_in=1)
    assert await sessions.get("foo", renew_for=renew_for) == b"bar"
    clock.advance(2000)
    assert await sessions.get("foo") == b"bar"
    assert await sessions.expires_in("foo") == 8
    clock.advance(8000)
    assert await sessions.get("foo") is None
    assert await sessions.get("foo", renew_for=renew_for) is None


async def test_get_without_renew_for_does_not_extend(
    sessions: SessionaryStore, clock: ManualClock
) -> None:
    await sessions.set("foo", b"bar", expires_in=10)
    clock.advance(5000)
    assert await sessions.get("foo") == b"bar"
    assert await sessions.expires_in("foo") == 5


async def test_set_on_an_existing_key_resets_its_expiry(
    sessions: SessionaryStore, clock: ManualClock
) -> None:
    await sessions.set("foo", b"one", expires_in=1)
    await sessions.set("foo", b"two", expires_in=10)
    clock.advance(5000)
    assert await sessions.get("foo") == b"two"
    await sessions.set("foo", b"three")  # no expires_in: the namespace's end
    assert await sessions.expires_in("foo") == 30 * 86_400 - 5


async def test_no_key_outlives_the_namespace_absolute_ttl(store: Store, clock: ManualClock) -> None:
    sessions = SessionaryStore(store, namespace="short", absolute_ttl=timedelta(hours=1))
    await sessions.set("foo", b"bar")
    assert await sessions.expires_in("foo") == 3600
    clock.advance(timedelta(minutes=50))
    await sessions.set("foo", b"again", expires_in=3600)  # the first set's hour still rules
    assert await sessions.get("foo", renew_for=3600) == b"again"
    assert await sessions.expires_in("foo") == 600
    clock.advance(timedelta(minutes=10))
    assert await sessions.get("foo") is None
    await sessions.set("foo", b"new life")  # after its end a key starts over
    assert await sessions.expires_in("foo") == 3600


async def test_an_idle_ttl_bounds_a_key_from_its_last_write(
    store: Store, clock: ManualClock
) -> None:
    sessions = SessionaryStore(store, namespace="idle", idle_ttl=timedelta(minutes=5))
    await sessions.set("foo", b"bar", expires_in=3600)
    assert await sessions.expires_in("foo") == 300
    clock.advance(timedelta(minutes=4))
    assert await sessions.get("foo", renew_for=3600) == b"bar"
    clock.advance(timedelta(minutes=4))
    assert await sessions.get("foo") == b"bar"
    clock.advance(timedelta(minutes=1))
    assert await sessions.get("foo") is None


async def test_a_key_whose_value_expired_takes_a_new_one(
    sessions: SessionaryStore, clock: ManualClock
) -> None:
    await sessions.set("foo", b"old", expires_in=1)
    clock.advance(2000)
    await sessions.set("foo", b"new", expires_in=10)  # its expired session is still stored
    assert await sessions.get("foo") == b"new"
    assert await sessions.expires_in("foo") == 10


async def test_concurrent_sets_of_a_new_key_settle_on_one_value(
    sessions: SessionaryStore,
) -> None:
    values = [f"value-{n}".encode() for n in range(20)]
    await asyncio.gather(*(sessions.set("race", value, 60) for value in values))
    assert await sessions.get("race") in values
    assert await (await sessions.sessionary_namespace()).count() == 1


@pytest.mark.parametrize("seconds", [0, -1, timedelta(0), 0.0001])
async def test_expiry_is_positive(sessions: SessionaryStore, seconds: int | timedelta) -> None:
    with pytest.raises(ValueError, match="positive"):
        await sessions.set("foo", b"bar", expires_in=seconds)
    await sessions.set("foo", b"bar")
    with pytest.raises(ValueError, match="positive"):
        await sessions.get("foo", renew_for=seconds or -1)


async def test_delete(sessions: SessionaryStore) -> None:
    await sessions.set("key", b"value", 60)
    await sessions.set("other", b"value", 60)
    await sessions.delete("key")
    await sessions.delete("never-set")
    assert await sessions.get("key") is None
    assert await sessions.get("other") == b"value"


async def test_exists_and_expires_in_of_a_missing_key(sessions: SessionaryStore) -> None:
    assert await sessions.exists("foo") is False
    assert await sessions.expires_in("foo") is None
    await sessions.set("foo", b"bar")
    assert await sessions.exists("foo") is True


async def test_delete_all(sessions: SessionaryStore) -> None:
    keys = [f"key-{n}" for n in range(2500)]  # more than one batch
    for number, key in enumerate(keys):
        await sessions.set(key, b"value", expires_in=10 if number % 2 else None)
    await sessions.delete_all()
    for key in keys[:10]:
        assert await sessions.get(key) is None
    assert await (await sessions.sessionary_namespace()).count() == 0
    await sessions.set("after", b"value")
    assert await sessions.get("after") == b"value"


async def test_namespaces_keep_their_keys_apart(sessions: SessionaryStore) -> None:
    foo = sessions.with_namespace("foo")
    assert foo.namespace == "litestar.foo"
    await sessions.set("bar", b"parent")
    await foo.set("bar", b"child")
    assert await sessions.get("bar") == b"parent"
    assert await foo.get("bar") == b"child"
    await foo.delete("bar")
    assert await sessions.get("bar") == b"parent"


async def test_delete_all_reaches_down_not_up_nor_sideways(sessions: SessionaryStore) -> None:
    foo = sessions.with_namespace("foo")
    deeper = foo.with_namespace("deeper")
    sibling = sessions.with_namespace("sibling")
    foolish = sessions.with_namespace("foolish")  # a name foo's is a prefix of
    for store in (sessions, foo, deeper, sibling, foolish):
        await store.set("key", store.namespace)
    await foo.delete_all()
    assert await foo.get("key") is None
    assert await deeper.get("key") is None
    assert await sessions.get("key") == b"litestar"
    assert await sibling.get("key") == b"litestar.sibling"
    assert await foolish.get("key") == b"litestar.foolish"
    await sessions.delete_all()
    for store in (sessions, sibling, foolish):
        assert await store.get("key") is None


def test_namespace_names_are_checked_when_made_over_an_open_store(store: Store) -> None:
    sessions = SessionaryStore(store)
    with pytest.raises(ValueError, match="namespace name"):
        sessions.with_namespace("no spaces")
    with pytest.raises(ValueError, match="namespace name"):
        SessionaryStore(store, namespace="")


def test_an_open_store_keeps_its_clock(store: Store) -> None:
    with pytest.raises(ValueError, match="clock"):
        SessionaryStore(store, clock=ManualClock())


async def test_opened_from_a_url_on_first_use_and_closed_with_the_lifespan(
    shared_url: str, clock: ManualClock
) -> None:
    sessions = SessionaryStore(shared_url, clock=clock)
    child = sessions.with_namespace("child")
    async with sessions:
        await sessions.set("foo", b"bar", expires_in=10)
        await child.set("foo", b"child")
        namespace = await sessions.sessionary_namespace()
    # used again after the lifespan (a test client's next one): opened again
    assert await sessions.get("foo") == b"bar"
    assert await child.get("foo") == b"child"
    assert (await sessions.sessionary_namespace()).store is not namespace.store
    clock.advance(10_000)
    assert await sessions.get("foo") is None
    await sessions.__aexit__(None, None, None)


async def test_a_given_store_is_not_closed_with_the_lifespan(store: Store) -> None:
    sessions = SessionaryStore(store)
    async with sessions:
        await sessions.set("foo", b"bar")
    assert await sessions.get("foo") == b"bar"
    assert (await sessions.sessionary_namespace()).store is store


# -- whose session it is ----------------------------------------------------------------------


async def test_subject_key_makes_sessions_revocable_per_user(
    sessions: SessionaryStore,
) -> None:
    await sessions.set("phone", b'{"user_id": 42, "theme": "dark"}', 60)
    await sessions.set("laptop", b'{"user_id": "42"}', 60)
    await sessions.set("other", b'{"user_id": 7}', 60)
    await sessions.set("anonymous", b'{"cart": []}', 60)
    await sessions.set("not-json", b"\x00\x01", 60)
    listed = await sessions.list_subject("42")
    assert {s.id for s in listed} == {_session_id("phone"), _session_id("laptop")}
    assert await sessions.revoke_subject("42") == 2
    assert await sessions.get("phone") is None
    assert await sessions.get("laptop") is None
    assert await sessions.get("other") == b'{"user_id": 7}'
    assert await sessions.get("anonymous") == b'{"cart": []}'
    assert await sessions.list_subject("42") == []


async def test_a_value_without_the_subject_key_clears_the_subject(
    sessions: SessionaryStore,
) -> None:
    await sessions.set("phone", b'{"user_id": 42}', 60)
    await sessions.set("phone", b'{"user_id": null}', 60)  # logged out, session kept
    assert await sessions.list_subject("42") == []
    await sessions.set("phone", b'{"user_id": 42}', 60)
    await sessions.set("phone", b"[42]", 60)
    assert await sessions.list_subject("42") == []


async def test_without_subject_key_values_have_no_subject(store: Store) -> None:
    sessions = SessionaryStore(store)
    await sessions.set("phone", b'{"user_id": 42}', 60)
    assert await sessions.list_subject("42") == []


@pytest.mark.parametrize("owner", [b"true", b"4.2", b"[42]", b'{"id": 42}'])
async def test_a_subject_is_a_str_or_an_int(sessions: SessionaryStore, owner: bytes) -> None:
    with pytest.raises(ValueError, match="subject"):
        await sessions.set("phone", b'{"user_id": ' + owner + b"}", 60)
    assert await sessions.get("phone") is None


# -- a Litestar app with server-side sessions on it -------------------------------------------


@post("/login")
async def login(request: Request[Any, Any, Any]) -> None:
    request.set_session({"user_id": (await request.json())["user_id"]})


@get("/me")
async def me(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"user_id": request.session.get("user_id")}


@post("/logout")
async def logout(request: Request[Any, Any, Any]) -> None:
    request.clear_session()


def _app(sessions: SessionaryStore, *, renew_on_access: bool = False) -> Litestar:
    config = ServerSideSessionConfig(max_age=60, renew_on_access=renew_on_access)
    return Litestar(
        route_handlers=[login, me, logout],
        middleware=[config.middleware],
        stores={"sessions": sessions},
    )


@pytest.fixture
def url_sessions(store_url: str, clock: ManualClock) -> SessionaryStore:
    """Opened from its URL inside the app's lifespan (the test client's event loop)."""
    return SessionaryStore(store_url, clock=clock, subject_key="user_id")


@pytest.fixture
def client(url_sessions: SessionaryStore) -> Iterator[TestClient[Litestar]]:
    with TestClient(_app(url_sessions)) as client:
        yield client


def _user(client: TestClient[Litestar]) -> object:
    return client.get("/me").json()["user_id"]


def test_a_session_lasts_across_requests(client: TestClient[Litestar]) -> None:
    assert _user(client) is None
    assert client.post("/login", json={"user_id": 42}).status_code == 201
    cookie = client.cookies["session"]
    assert len(cookie) == 64  # Litestar's own id: the store maps it
    assert _user(client) == 42
    assert _user(client) == 42
    client.post("/logout")
    assert _user(client) is None


def test_a_session_expires_after_max_age(client: TestClient[Litestar], clock: ManualClock) -> None:
    client.post("/login", json={"user_id": 42})
    clock.advance(59_000)
    assert _user(client) == 42  # Litestar writes the session back: max_age from now
    clock.advance(60_000)
    assert _user(client) is None
    client.post("/login", json={"user_id": 42})  # the same cookie id, its old session still stored
    assert _user(client) == 42


def test_renew_on_access_slides_the_session(
    url_sessions: SessionaryStore, clock: ManualClock
) -> None:
    with TestClient(_app(url_sessions, renew_on_access=True)) as client:
        client.post("/login", json={"user_id": 42})
        for _ in range(5):
            clock.advance(50_000)
            assert _user(client) == 42
        clock.advance(60_000)
        assert _user(client) is None


def test_revoke_subject_logs_the_user_out_on_every_device(
    client: TestClient[Litestar], url_sessions: SessionaryStore
) -> None:
    devices = []
    for _ in range(3):
        client.cookies.clear()
        client.post("/login", json={"user_id": 42})
        devices.append(client.cookies["session"])
    client.cookies.clear()
    client.post("/login", json={"user_id": 7})
    other = client.cookies["session"]
    portal = client.blocking_portal
    assert len(portal.call(url_sessions.list_subject, "42")) == 3
    assert portal.call(url_sessions.revoke_subject, "42") == 3
    for cookie in devices:
        _present(client, cookie)
        assert _user(client) is None
    _present(client, other)
    assert _user(client) == 7


def _session_id(key: str) -> str:
    """The session id a key maps to, as the module documents it."""
    return ids.derived("litestar:" + key)


def _present(client: TestClient[Litestar], cookie: str) -> None:
    """Make the client present `cookie` as its session (a device of its own)."""
    client.cookies.clear()
    client.cookies.set("session", cookie)
