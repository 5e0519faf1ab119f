"""`sessionary.contrib.django` beyond Django's own suite: reaping with `clearsessions`, the
atomic `cycle_key`, the user as the session's subject (log out everywhere, log out my other
sessions), 20 racing requests, and malformed keys (`set_expiry`: test_django_expiry)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.models import User
from django.contrib.sessions.backends.base import UpdateError
from django.core.management import call_command
from django.test import RequestFactory, override_settings

from sessionary import ManualClock, StoreUnavailable
from sessionary.contrib.django import (
    SessionStore,
    arevoke_user,
    asessions_of,
    revoke_user,
    sessions_of,
)
from sessionary.contrib.django.config import namespace
from sessionary.model import SessionEvent
from sessionary.store import Store
from sessionary.sync import SyncStore

RACERS = 20


def _saved(data: dict[str, Any]) -> str:
    session = SessionStore()
    session.update(data)
    session.save()
    assert session.session_key is not None
    return session.session_key


def _logged_in(user: User) -> SessionStore:
    """What a login request leaves: Django's own `login`, then the middleware's save."""
    request = RequestFactory().post("/login")
    request.session = SessionStore()
    request.session["cart"] = ["book"]
    login(request, user)
    request.session.save()
    session: SessionStore = request.session
    return session


def test_clearsessions_reaps_expired_sessions(
    store_on_clock: SyncStore, clock: ManualClock
) -> None:
    expired: list[SessionEvent] = []

    async def listen(store: Store) -> Callable[[], None]:
        return store.on("expired", expired.append)

    stop = store_on_clock.run(listen)
    old = [_saved({"n": n}) for n in range(3)]
    clock.advance(timedelta(seconds=settings.SESSION_COOKIE_AGE))
    fresh = _saved({"n": 3})

    call_command("clearsessions")

    stop()
    assert sorted(event.session.id for event in expired) == sorted(old)
    assert namespace().reap() == []  # nothing expired is left
    assert SessionStore(fresh).load() == {"n": 3}


def test_cycle_key_kills_the_old_key_in_the_same_step(store_kind: str) -> None:
    session = SessionStore(_saved({"cart": ["book"]}))
    old = session.session_key
    session.cycle_key()
    assert session.session_key != old
    assert not session.exists(old)
    assert SessionStore(old).load() == {}
    assert SessionStore(session.session_key).load() == {"cart": ["book"]}
    assert namespace().count() == 1


def test_login_records_the_user_and_revoke_user_logs_out_everywhere(
    store_kind: str, user: User
) -> None:
    first, second = _logged_in(user), _logged_in(user)
    found = sessions_of(user.pk)
    assert {s.id for s in found} == {first.session_key, second.session_key}
    assert {s.subject for s in found} == {str(user.pk)}
    assert SessionStore(first.session_key).load()["cart"] == ["book"]

    assert revoke_user(user.pk) == 2
    assert sessions_of(user.pk) == []
    assert SessionStore(first.session_key).load() == {}
    assert SessionStore(second.session_key).load() == {}


def test_revoke_others_keeps_only_the_current_session(store_kind: str, user: User) -> None:
    current, *others = (_logged_in(user) for _ in range(3))
    assert SessionStore(current.session_key).revoke_others() == 2
    assert [s.id for s in sessions_of(user.pk)] == [current.session_key]
    assert all(SessionStore(other.session_key).load() == {} for other in others)


def test_revoke_others_without_a_user_ends_nothing(store_kind: str, user: User) -> None:
    _logged_in(user)
    anonymous = SessionStore(_saved({"cart": []}))
    assert anonymous.revoke_others() == 0
    assert len(sessions_of(user.pk)) == 1


def test_logout_flush_deletes_the_session(store_kind: str, user: User) -> None:
    session = _logged_in(user)
    key = session.session_key
    session.flush()
    assert session.session_key is None
    assert not session.exists(key)
    assert sessions_of(user.pk) == []


def _race(work: Callable[[int], None]) -> list[BaseException]:
    """Run `work(i)` in RACERS threads at once; what they raised."""
    errors: list[BaseException] = []

    def racer(number: int) -> None:
        try:
            work(number)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_a_session_logged_out_meanwhile_is_never_resurrected(store_kind: str) -> None:
    key = _saved({"visits": 0})
    start = threading.Barrier(RACERS)

    def request(number: int) -> None:
        session = SessionStore(key)
        assert session.get("visits") == 0  # each request has read it before the logout
        start.wait()
        if number == 0:
            session.flush()  # log out
            return
        session[f"seen-{number}"] = True
        # UpdateError: the middleware answers 400, the session was logged out meanwhile
        with contextlib.suppress(UpdateError):
            session.save()

    assert _race(request) == []
    assert SessionStore(key).load() == {}
    assert namespace().count() == 0  # no saver created a session either


def test_concurrent_saves_keep_each_others_keys(store_kind: str) -> None:
    key = _saved({"visits": 0})
    start = threading.Barrier(RACERS)

    def request(number: int) -> None:
        session = SessionStore(key)
        assert session.get("visits") == 0
        start.wait()
        session[f"key-{number}"] = number
        session.save()

    assert _race(request) == []
    assert SessionStore(key).load() == {"visits": 0} | {f"key-{n}": n for n in range(RACERS)}


def test_a_malformed_key_is_unknown_without_a_store_call() -> None:
    unreachable = "redis://127.0.0.1:1/0?fail_fast_ms=0"  # any store call would fail
    with override_settings(SESSIONARY={"store": unreachable}):
        for key in ("not a session id", "a" * 42 + "B", "../../etc/passwd", "x" * 44):
            session = SessionStore(key)
            assert session.load() == {}
            assert session.session_key is None
            assert not session.exists(key)
            session.delete(key)
        well_formed_unknown = SessionStore("a" * 42 + "A")
        with pytest.raises(StoreUnavailable):  # the control: a real lookup does call it
            well_formed_unknown.load()


def test_values_are_stored_as_djangos_serializer_writes_them(store_kind: str) -> None:
    session = SessionStore(_saved({"pair": (1, 2), 3: "three"}))
    assert session.load() == {"pair": [1, 2], "3": "three"}
    unserializable = SessionStore()
    unserializable["when"] = timedelta(seconds=1)
    with pytest.raises(TypeError):  # as Django's JSONSerializer refuses it on any backend
        unserializable.save()


def test_a_dead_key_cleared_unread_is_never_adopted(store_kind: str) -> None:
    dead = "a" * 42 + "A"
    session = SessionStore(dead)
    session.clear()  # Django replaces the dict without reading the session
    session["cart"] = ["book"]
    session.save()
    assert session.session_key not in (None, dead)
    assert SessionStore(session.session_key).load() == {"cart": ["book"]}
    assert not session.exists(dead)


def test_a_live_key_cleared_unread_is_written_in_place(store_kind: str) -> None:
    key = _saved({"cart": ["book"]})
    session = SessionStore(key)
    session.clear()
    session["visits"] = 1
    session.save()
    assert session.session_key == key
    assert SessionStore(key).load() == {"visits": 1}


async def test_the_async_api(store_on_clock: SyncStore, clock: ManualClock) -> None:
    sessions = []
    for _ in range(3):
        session = SessionStore()
        await session.aset("_auth_user_id", "7")  # what login leaves in the session
        await session.asave()
        sessions.append(session)
    assert {s.id for s in await asessions_of(7)} == {s.session_key for s in sessions}
    assert await sessions[0].arevoke_others() == 2
    assert await arevoke_user(7) == 1
    assert await asessions_of(7) == []

    expired: list[SessionEvent] = []

    async def listen(store: Store) -> Callable[[], None]:
        return store.on("expired", expired.append)

    stop = store_on_clock.run(listen)
    idle = SessionStore()
    await idle.aset("cart", [])
    await idle.asave()
    clock.advance(timedelta(seconds=settings.SESSION_COOKIE_AGE))
    await SessionStore.aclear_expired()
    stop()
    assert [event.session.id for event in expired] == [idle.session_key]


def test_login_rotates_once_and_records_the_user_on_the_key_it_minted(
    store_kind: str, user: User
) -> None:
    anonymous = _saved({"cart": ["book"]})
    request = RequestFactory().post("/login")
    request.session = SessionStore(anonymous)
    login(request, user)  # cycle_key (the one new key), then the user into the dict
    cycled = request.session.session_key
    assert cycled != anonymous
    request.session.save()  # the middleware's save: records the user, keeps the key
    assert request.session.session_key == cycled
    assert [(s.id, s.subject) for s in sessions_of(user.pk)] == [(cycled, str(user.pk))]
    assert not SessionStore().exists(anonymous)
    assert namespace().count() == 1


def test_a_login_that_skips_cycle_key_still_gets_a_new_key(store_kind: str, user: User) -> None:
    planted = _saved({"cart": ["book"]})  # an id an attacker could have planted
    session = SessionStore(planted)
    session["_auth_user_id"] = str(user.pk)  # a custom login, without cycle_key
    session.save()
    assert session.session_key != planted
    assert not session.exists(planted)
    assert [s.id for s in sessions_of(user.pk)] == [session.session_key]
    assert SessionStore(session.session_key).load()["cart"] == ["book"]


def test_another_user_on_a_held_key_gets_a_new_key(store_kind: str, user: User) -> None:
    first = _logged_in(user)
    held = first.session_key
    session = SessionStore(held)
    session["_auth_user_id"] = "someone-else"  # no flush, no cycle_key
    session.save()
    assert session.session_key != held
    assert not session.exists(held)
    assert sessions_of(user.pk) == []
    assert [s.id for s in sessions_of("someone-else")] == [session.session_key]


def test_a_user_changed_after_cycle_key_is_recorded_on_the_cycled_key(
    store_kind: str, user: User
) -> None:
    session = SessionStore(_logged_in(user).session_key)
    session.load()
    session.cycle_key()  # as update_session_auth_hash does
    cycled = session.session_key
    session["_auth_user_id"] = "someone-else"
    session.save()
    assert session.session_key == cycled
    assert [s.id for s in sessions_of("someone-else")] == [cycled]
    assert sessions_of(user.pk) == []
