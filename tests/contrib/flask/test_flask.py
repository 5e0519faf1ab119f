"""`sessionary.contrib.flask` in the scenarios Flask-Session's tests cover (set, get, delete,
permanent or not, regeneration, expiry, no write when unchanged), plus what a server-side
session must add: no fixation, no lost update between one user's concurrent requests, no store
call for a request without a cookie; on SQLite and Redis (the `app` fixture, conftest.py)."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import flask
import pytest
from flask.testing import FlaskClient
from markupsafe import Markup
from werkzeug.http import parse_date
from werkzeug.test import TestResponse

from sessionary import InvalidSessionId, ManualClock, Session, ids
from sessionary.contrib.flask import ServerSession, SessionInterface
from sessionary.store import Store
from sessionary.sync import SyncNamespace, SyncStore, shared

T = TypeVar("T")
RACERS = 20
COOKIE = "session"


def interface(app: flask.Flask) -> SessionInterface:
    found = app.session_interface
    assert isinstance(found, SessionInterface)
    return found


def namespace(app: flask.Flask) -> SyncNamespace:
    return interface(app).namespace(app)


def cookie_id(client: FlaskClient) -> str:
    found = client.get_cookie(COOKIE)
    assert found is not None
    return found.value


def stored(app: flask.Flask, session_id: str) -> Session | None:
    return namespace(app).get(session_id)


def set_cookie_header(response: TestResponse) -> str:
    headers = response.headers.get_all("Set-Cookie")
    assert len(headers) == 1, headers
    return headers[0]


def clears_the_cookie(response: TestResponse) -> bool:
    return set_cookie_header(response).startswith(f"{COOKIE}=;")


@pytest.fixture
def client(app: flask.Flask) -> FlaskClient:
    @app.post("/set/<key>/<value>")
    def set_value(key: str, value: str) -> str:
        flask.session[key] = value
        return ""

    @app.get("/get/<key>")
    def get_value(key: str) -> str:
        return str(flask.session.get(key))

    @app.post("/delete/<key>")
    def delete_value(key: str) -> str:
        flask.session.pop(key, None)
        return ""

    @app.post("/permanent/<int:on>")
    def permanent(on: int) -> str:
        flask.session.permanent = bool(on)
        return ""

    @app.post("/login/<user>")
    def login(user: str) -> str:
        session = flask.session
        assert isinstance(session, ServerSession)
        session.regenerate(subject=user)
        return str(session.id)

    @app.post("/logout")
    def logout() -> str:
        flask.session.clear()
        return ""

    @app.get("/nothing")
    def nothing() -> str:
        return ""

    return app.test_client()


# -- set, get, delete ---------------------------------------------------------------------


def test_a_value_set_is_read_back_then_deleted(app: flask.Flask, client: FlaskClient) -> None:
    assert client.get("/get/colour").text == "None"
    assert client.get_cookie(COOKIE) is None  # nothing stored, nothing issued

    client.post("/set/colour/blue")
    session_id = cookie_id(client)
    assert client.get("/get/colour").text == "blue"
    found = stored(app, session_id)
    assert found is not None
    assert found.data == {"colour": "blue"}

    client.post("/set/size/xl")
    client.post("/delete/colour")
    assert client.get("/get/colour").text == "None"
    assert client.get("/get/size").text == "xl"
    assert cookie_id(client) == session_id  # one session all along


def test_the_cookie_carries_the_id_alone_unsigned(app: flask.Flask, client: FlaskClient) -> None:
    assert app.secret_key is None
    client.post("/set/colour/blue")
    session_id = cookie_id(client)
    assert ids.validate(session_id) == session_id  # 256 random bits, nothing else
    assert "blue" not in session_id


def test_flasks_special_types_round_trip_through_the_store(
    app: flask.Flask, client: FlaskClient
) -> None:
    when = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    an_id = uuid.uuid4()
    written: dict[str, Any] = {
        "tuple": (1, 2, (3, 4)),
        "bytes": b"\xff\x00",
        "markup": Markup("<em>hi</em>"),
        "uuid": an_id,
        "when": when,
        "nested": {"items": [(1, b"x"), {"at": when}]},
        "looks_tagged": {" t": "not-a-tuple"},
    }

    @app.post("/special")
    def write() -> str:
        flask.session.update(written)
        return ""

    @app.get("/special")
    def read() -> str:
        assert dict(flask.session) == written
        assert type(flask.session["markup"]) is Markup
        assert type(flask.session["nested"]["items"][0]) is tuple
        return "same"

    client.post("/special")
    assert client.get("/special").text == "same"
    found = stored(app, cookie_id(client))
    assert found is not None
    assert found.data["tuple"] == {" t": [1, 2, {" t": [3, 4]}]}  # tagged value by value


# -- permanent or not -----------------------------------------------------------------------


def test_a_session_that_is_not_permanent_gets_a_browser_session_cookie(
    client: FlaskClient,
) -> None:
    response = client.post("/set/colour/blue")
    assert "expires" not in set_cookie_header(response).lower()
    assert client.get("/get/colour").headers.get("Set-Cookie") is None


def test_a_permanent_session_cookie_expires_with_the_lifetime_and_is_refreshed(
    app: flask.Flask, client: FlaskClient
) -> None:
    app.permanent_session_lifetime = timedelta(hours=2)
    client.post("/set/colour/blue")
    response = client.post("/permanent/1")
    header = set_cookie_header(response)
    match = re.search(r"Expires=([^;]+)", header)
    assert match is not None
    expires = parse_date(match.group(1))
    assert expires is not None
    assert abs(expires - (datetime.now(UTC) + timedelta(hours=2))) < timedelta(minutes=1)
    assert namespace(app).idle_ttl == timedelta(hours=2)  # the store's idle expiry, too

    # SESSION_REFRESH_EACH_REQUEST (default on): every request re-sends it, its Expires slid
    assert "Expires=" in set_cookie_header(client.get("/get/colour"))
    assert "Expires=" in set_cookie_header(client.get("/nothing"))
    app.config["SESSION_REFRESH_EACH_REQUEST"] = False
    assert client.get("/get/colour").headers.get("Set-Cookie") is None

    response = client.post("/permanent/0")
    assert "expires" not in set_cookie_header(response).lower()


def test_flasks_cookie_settings_shape_the_cookie(app: flask.Flask, client: FlaskClient) -> None:
    app.config.update(
        SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/app",
        SESSION_COOKIE_HTTPONLY=True,
    )
    header = client.post("/set/colour/blue").headers["Set-Cookie"]
    assert header.startswith("sid=")
    for attribute in ("Secure", "HttpOnly", "Path=/app", "SameSite=Strict"):
        assert attribute in header


# -- login, logout, fixation ----------------------------------------------------------------


def test_regenerate_gives_a_new_id_and_kills_the_old_one(
    app: flask.Flask, client: FlaskClient
) -> None:
    client.post("/set/cart/book")
    before = cookie_id(client)

    response = client.post("/login/alice")
    after = cookie_id(client)
    assert response.text == after
    assert after != before
    assert stored(app, before) is None  # the old id is dead at once
    found = stored(app, after)
    assert found is not None
    assert (found.subject, found.data) == ("alice", {"cart": "book"})
    assert [s.id for s in namespace(app).list_subject("alice")] == [after]

    old = app.test_client()  # someone still holding the old id
    old.set_cookie(COOKIE, before)
    response = old.get("/get/cart")
    assert response.text == "None"
    assert clears_the_cookie(response)


def test_login_on_a_fresh_session_creates_it_with_the_subject(
    app: flask.Flask, client: FlaskClient
) -> None:
    client.post("/login/bob")
    found = stored(app, cookie_id(client))
    assert found is not None
    assert (found.subject, found.data) == ("bob", {})


def test_log_out_my_other_devices_keeps_this_one(app: flask.Flask, client: FlaskClient) -> None:
    @app.get("/mine")
    def mine() -> list[str]:
        session = flask.session
        assert isinstance(session, ServerSession)
        return [s.id for s in session.list_mine()]

    @app.post("/others")
    def others() -> str:
        session = flask.session
        assert isinstance(session, ServerSession)
        return str(session.revoke_others())

    assert client.get("/mine").json == []  # no one logged in
    assert client.post("/others").text == "0"
    devices = [app.test_client() for _ in range(3)]
    for device in devices:
        device.post("/login/alice")
    stranger = app.test_client()
    stranger.post("/login/bob")
    laptop = devices[1]
    assert sorted(laptop.get("/mine").json or []) == sorted(cookie_id(d) for d in devices)

    assert laptop.post("/others").text == "2"
    assert laptop.get("/mine").json == [cookie_id(laptop)]
    assert [s.id for s in namespace(app).list_subject("bob")] == [cookie_id(stranger)]
    response = devices[0].get("/get/cart")  # the phone is logged out
    assert response.text == "None"
    assert clears_the_cookie(response)


def test_logout_deletes_the_session_and_clears_the_cookie(
    app: flask.Flask, client: FlaskClient
) -> None:
    client.post("/login/alice")
    client.post("/set/cart/book")
    session_id = cookie_id(client)

    response = client.post("/logout")
    assert clears_the_cookie(response)
    assert client.get_cookie(COOKIE) is None
    assert stored(app, session_id) is None
    assert namespace(app).list_subject("alice") == []


@pytest.mark.parametrize("planted", ["not-an-id", ids.new_id(), ids.new_id() + "x", "a" * 43])
def test_a_forged_or_unknown_cookie_is_never_adopted(
    app: flask.Flask, client: FlaskClient, planted: str
) -> None:
    client.set_cookie(COOKIE, planted)
    response = client.get("/get/cart")
    assert response.text == "None"
    assert clears_the_cookie(response)  # stale: the client stops sending it

    client.set_cookie(COOKIE, planted)
    client.post("/set/cart/book")
    issued = cookie_id(client)
    assert issued != planted  # a fresh id, never the planted one
    assert ids.validate(issued) == issued
    if _well_formed(planted):
        assert stored(app, planted) is None  # nor was anything stored under it


def _well_formed(value: str) -> bool:
    try:
        ids.validate(value)
    except InvalidSessionId:
        return False
    return True


# -- expiry ---------------------------------------------------------------------------------


def test_a_session_idle_longer_than_the_lifetime_is_gone(
    app: flask.Flask, client: FlaskClient, clock: ManualClock
) -> None:
    app.permanent_session_lifetime = timedelta(minutes=30)
    client.post("/set/cart/book")
    session_id = cookie_id(client)

    clock.advance(timedelta(minutes=29))
    assert client.get("/get/cart").text == "book"  # used: its idle expiry slides
    clock.advance(timedelta(minutes=29))
    assert client.get("/get/cart").text == "book"

    clock.advance(timedelta(minutes=31))
    response = client.get("/get/cart")
    assert response.text == "None"
    assert clears_the_cookie(response)
    assert stored(app, session_id) is None


def test_the_absolute_lifetime_ends_even_an_active_session(
    app: flask.Flask, sync_store: SyncStore, clock: ManualClock
) -> None:
    app.session_interface = SessionInterface(
        sync_store, namespace="capped", absolute_ttl=timedelta(hours=1)
    )
    app.permanent_session_lifetime = timedelta(minutes=30)

    @app.route("/visit")
    def visit() -> str:
        flask.session["visits"] = flask.session.get("visits", 0) + 1
        return str(flask.session["visits"])

    client = app.test_client()
    for visit_number in range(1, 4):
        assert client.get("/visit").text == str(visit_number)
        clock.advance(timedelta(minutes=25))
    clock.advance(timedelta(minutes=1))  # 76 minutes after its creation
    assert client.get("/visit").text == "1"  # a new session: the old one reached its cap


# -- writes ---------------------------------------------------------------------------------


def test_no_write_when_nothing_changed(app: flask.Flask, client: FlaskClient) -> None:
    client.post("/set/cart/book")
    session_id = cookie_id(client)
    version = _version(app, session_id)

    client.get("/get/cart")
    client.get("/nothing")
    client.post("/set/cart/book")  # the same value again: Flask marks it modified, no write
    assert _version(app, session_id) == version

    client.post("/set/cart/pen")
    assert _version(app, session_id) == version + 1


def test_a_nested_change_is_saved_without_marking_the_session_modified(
    app: flask.Flask, client: FlaskClient
) -> None:
    @app.post("/append/<item>")
    def append(item: str) -> str:
        flask.session.setdefault("cart", []).append(item)
        return ""

    client.post("/append/book")
    client.post("/append/pen")  # the list mutated in place: `modified` stays False
    assert client.get("/get/cart").text == "['book', 'pen']"


def _version(app: flask.Flask, session_id: str) -> int:
    found = stored(app, session_id)
    assert found is not None
    return found.version


class CountingStore(SyncStore):
    """A SyncStore that counts the hand-offs to its loop (each store call needs one)."""

    handoffs = 0

    def run(self, work: Callable[[Store], Awaitable[T]]) -> T:
        self.handoffs += 1
        return super().run(work)


def test_hand_offs_to_the_store_none_without_a_cookie_one_to_read_two_to_write(
    app: flask.Flask, shared_url: str, clock: ManualClock
) -> None:
    counting = CountingStore(shared_url, clock=clock)
    app.session_interface = SessionInterface(counting)

    @app.route("/")
    def index() -> str:
        return "hello"

    @app.route("/read")
    def read() -> str:
        return str(flask.session.get("n"))

    @app.route("/write")
    def write() -> str:
        flask.session["n"] = flask.session.get("n", 0) + 1
        return ""

    def hand_offs(client: FlaskClient, path: str) -> int:
        before = counting.handoffs
        assert client.get(path).status_code == 200
        return counting.handoffs - before

    try:
        anonymous, user = app.test_client(), app.test_client()
        anonymous.get("/")  # opens the namespace
        assert [hand_offs(anonymous, "/") for _ in range(3)] == [0, 0, 0]
        assert hand_offs(anonymous, "/read") == 0  # read, but nothing there to read
        assert hand_offs(user, "/write") == 1  # create
        assert hand_offs(user, "/read") == 1  # the touch; unchanged, so no write
        assert hand_offs(user, "/write") == 2  # the touch, then the versioned write
    finally:
        counting.close()


def test_a_session_logged_out_meanwhile_is_not_resurrected_by_a_slower_request(
    app: flask.Flask, client: FlaskClient
) -> None:
    loaded, logged_out = threading.Event(), threading.Event()

    @app.post("/slow-add")
    def slow_add() -> str:
        assert flask.session["cart"] == "book"
        loaded.set()
        assert logged_out.wait(30)
        flask.session["wish"] = "pen"
        return ""

    client.post("/set/cart/book")
    session_id = cookie_id(client)
    slow = app.test_client()
    slow.set_cookie(COOKIE, session_id)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(slow.post, "/slow-add")
        assert loaded.wait(30)
        client.post("/logout")
        logged_out.set()
        response = pending.result()

    assert clears_the_cookie(response)
    assert stored(app, session_id) is None
    assert namespace(app).count() == 0


def test_twenty_concurrent_requests_each_adding_a_key_keep_all_twenty(
    app: flask.Flask, client: FlaskClient
) -> None:
    all_loaded = threading.Barrier(RACERS, timeout=30)

    @app.post("/race/<int:number>")
    def race(number: int) -> str:
        assert flask.session["owner"] == "alice"
        all_loaded.wait()  # every request has loaded the same version before any writes
        flask.session[f"key{number}"] = number
        return ""

    client.post("/set/owner/alice")
    session_id = cookie_id(client)

    def one_request(number: int) -> int:
        racer = app.test_client()
        racer.set_cookie(COOKIE, session_id)
        return racer.post(f"/race/{number}").status_code

    with ThreadPoolExecutor(RACERS) as pool:
        statuses = list(pool.map(one_request, range(RACERS)))

    assert statuses == [200] * RACERS
    found = stored(app, session_id)
    assert found is not None
    assert found.data == {"owner": "alice", **{f"key{n}": n for n in range(RACERS)}}


def _around_another(app: flask.Flask, path: str) -> TestResponse:
    """What another request of this session (same cookie) gets from `path`, sent and saved
    while this request holds the session it loaded: a hand-made overlap, no timing."""
    other = app.test_client()
    other.set_cookie(COOKIE, flask.request.cookies[COOKIE])
    return other.post(path)


def test_a_key_both_overlapping_requests_changed_is_a_409_never_a_lost_update(
    app: flask.Flask, client: FlaskClient
) -> None:
    others: list[TestResponse] = []

    @app.post("/count")
    def count() -> str:
        flask.session["count"] = flask.session.get("count", 0) + 1
        return str(flask.session["count"])

    @app.post("/count-around-another")
    def count_around_another() -> tuple[str, int, dict[str, str]]:
        loaded = flask.session["count"]
        others.append(_around_another(app, "/count"))  # it counts first, and saves
        flask.session["count"] = loaded + 1  # the same value it saved: still its update lost
        return "counted", 200, {"X-View": "its own header"}

    assert client.post("/count").text == "1"
    session_id = cookie_id(client)

    response = client.post("/count-around-another")

    [other] = others
    assert (other.status_code, other.text) == (200, "2")  # the first to save: acknowledged
    assert response.status_code == 409
    assert response.get_json() == {
        "error": "session_conflict",
        "message": "another request changed the session meanwhile; retry",
    }
    assert "X-View" not in response.headers  # the view's answer is not sent, nor its headers
    assert "Set-Cookie" not in response.headers
    found = stored(app, session_id)
    assert found is not None
    assert found.data == {"count": 2}  # exactly the acknowledged one
    assert client.post("/count").text == "3"  # the retry counts on from it, same session
    assert cookie_id(client) == session_id


def test_overlapping_requests_changing_different_keys_both_keep_theirs(
    app: flask.Flask, client: FlaskClient
) -> None:
    others: list[TestResponse] = []

    @app.post("/wish-around-another")
    def wish_around_another() -> str:
        assert flask.session["owner"] == "alice"
        others.append(_around_another(app, "/set/cart/book"))  # another key, saved first
        flask.session["wish"] = "pen"
        return ""

    client.post("/set/owner/alice")
    session_id = cookie_id(client)

    response = client.post("/wish-around-another")

    assert [other.status_code for other in others] == [200]
    assert response.status_code == 200
    found = stored(app, session_id)
    assert found is not None
    assert found.data == {"owner": "alice", "cart": "book", "wish": "pen"}


# -- the rest of Flask ----------------------------------------------------------------------


def test_async_views_read_write_and_regenerate(app: flask.Flask, client: FlaskClient) -> None:
    @app.post("/async-login/<user>")
    async def async_login(user: str) -> str:
        session = flask.session
        assert isinstance(session, ServerSession)
        session["greeting"] = f"hello {user}"
        session.regenerate(subject=user)
        return str(session.id)

    client.post("/set/cart/book")
    before = cookie_id(client)
    response = client.post("/async-login/carol")
    assert response.text == cookie_id(client) != before
    assert client.get("/get/greeting").text == "hello carol"
    assert client.get("/get/cart").text == "book"
    assert stored(app, before) is None


def test_a_copied_request_context_sees_the_session_in_another_thread(
    app: flask.Flask, client: FlaskClient
) -> None:
    seen: list[str] = []

    @app.route("/copy")
    def copy() -> str:
        flask.session["fizz"] = "buzz"

        @flask.copy_current_request_context
        def in_thread() -> None:
            seen.append(flask.session["fizz"])

        worker = threading.Thread(target=in_thread)
        worker.start()
        worker.join()
        return ""

    client.get("/copy")
    assert seen == ["buzz"]
    assert client.get("/get/fizz").text == "buzz"


def test_a_subclass_may_choose_the_cookie_name_per_request(
    app: flask.Flask, sync_store: SyncStore
) -> None:
    class PathAwareInterface(SessionInterface):
        def get_cookie_name(self, app: flask.Flask) -> str:
            if flask.request.path.endswith("dynamic"):
                return "dynamic_cookie_name"
            return super().get_cookie_name(app)

    app.session_interface = PathAwareInterface(sync_store)

    @app.post("/set/<path:where>")
    def set_value(where: str) -> str:
        flask.session["value"] = flask.request.form["value"]
        return ""

    @app.get("/get/<path:where>")
    def get_value(where: str) -> str:
        return str(flask.session.get("value"))

    client = app.test_client()
    client.post("/set/plain", data={"value": "42"})
    client.post("/set/dynamic", data={"value": "616"})
    assert client.get("/get/plain").text == "42"
    assert client.get("/get/dynamic").text == "616"
    dynamic = client.get_cookie("dynamic_cookie_name")
    assert dynamic is not None
    assert dynamic.value != cookie_id(client)  # two sessions, one per cookie name


def test_one_sync_store_per_url_for_the_whole_process(tmp_path: Path) -> None:
    url, elsewhere = (f"sqlite:///{tmp_path / name}" for name in ("one.db", "two.db"))
    first, second = SessionInterface(url), SessionInterface(url, namespace="other")
    try:
        assert first.store is second.store is shared(url)
        assert SessionInterface(elsewhere).store is not first.store
    finally:
        first.store.close()
        shared(elsewhere).close()
