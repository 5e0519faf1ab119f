"""`set_expiry` as the store's per-session lifetime: the store itself keeps a "remember me"
session longer than `SESSION_COOKIE_AGE` (and a short one shorter), a moment ends the session
then however active it is, a past expiry deletes it, 0 and None go back to the namespace's
policy, and `max_absolute_ttl` clamps what a session asks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.models import User
from django.test import RequestFactory, override_settings

from sessionary import ManualClock
from sessionary.clock import to_datetime
from sessionary.contrib.django import SessionStore, sessions_of
from sessionary.contrib.django.config import namespace
from sessionary.model import Session
from sessionary.sync import SyncStore

TWO_HOURS = 2 * 3600
FOURTEEN_DAYS = timedelta(days=14)


@contextmanager
def sessionary_options(**options: Any) -> Iterator[None]:
    """The test's store with more `SESSIONARY` options (before its namespace is first used:
    one namespace, one policy)."""
    with override_settings(SESSIONARY={**settings.SESSIONARY, **options}):
        yield


def _stored(key: str | None) -> Session:
    assert key is not None
    found = namespace().get(key)
    assert found is not None
    return found


def _alive(key: str | None) -> bool:
    """Whether a request presenting `key` finds its session (the load touches it)."""
    return SessionStore(key).load() != {}


def _saved_with_expiry(expiry: int | datetime | None) -> str:
    session = SessionStore()
    session["cart"] = ["book"]
    session.set_expiry(expiry)
    session.save()
    assert session.session_key is not None
    return session.session_key


def _moment(clock: ManualClock, after: timedelta) -> datetime:
    return to_datetime(clock.now_ms()) + after


@override_settings(SESSION_COOKIE_AGE=TWO_HOURS)
def test_remember_me_keeps_the_session_fourteen_days_in_the_store(
    store_on_clock: SyncStore, clock: ManualClock, user: User
) -> None:
    request = RequestFactory().post("/login")
    request.session = SessionStore()
    login(request, user)
    request.session.set_expiry(int(FOURTEEN_DAYS.total_seconds()))  # "remember me"
    request.session.save()  # the middleware's save
    remembered = request.session.session_key
    forgotten = _saved_with_expiry(None)  # the control: the namespace's two hours

    assert _stored(remembered).idle_ttl == FOURTEEN_DAYS
    assert _stored(remembered).own_lifetime
    assert [s.id for s in sessions_of(user.pk)] == [remembered]
    clock.advance(timedelta(hours=3))
    assert _alive(remembered)
    assert not _alive(forgotten)
    clock.advance(FOURTEEN_DAYS - timedelta(seconds=1))  # active 3 hours in: it slid
    assert _alive(remembered)
    clock.advance(FOURTEEN_DAYS)
    assert not _alive(remembered)
    assert namespace().count() == 0


def test_seconds_shorter_than_the_namespace_end_it_sooner_after_inactivity(
    store_on_clock: SyncStore, clock: ManualClock
) -> None:
    key = _saved_with_expiry(60)
    assert settings.SESSION_COOKIE_AGE > 60
    clock.advance(timedelta(seconds=59))
    assert SessionStore(key).load() == {"cart": ["book"], "_session_expiry": 60}
    clock.advance(timedelta(seconds=59))  # within a minute of the last request
    assert _alive(key)
    clock.advance(timedelta(seconds=60))
    assert not _alive(key)
    assert not SessionStore().exists(key)


@override_settings(SESSION_COOKIE_AGE=TWO_HOURS)
def test_a_moment_ends_the_session_then_however_active_or_idle(
    store_on_clock: SyncStore, clock: ManualClock
) -> None:
    key = _saved_with_expiry(_moment(clock, timedelta(days=5)))
    stored = _stored(key)
    assert (stored.idle_ttl, stored.absolute_ttl) == (timedelta(days=5), timedelta(days=5))
    clock.advance(timedelta(days=4))  # idle far past SESSION_COOKIE_AGE
    assert _alive(key)
    clock.advance(timedelta(days=1) - timedelta(milliseconds=1))
    assert _alive(key)
    clock.advance(timedelta(milliseconds=1))  # active a moment ago, and still it ends
    assert not _alive(key)


def test_a_moment_counts_from_the_sessions_creation(
    store_on_clock: SyncStore, clock: ManualClock
) -> None:
    key = _saved_with_expiry(None)
    clock.advance(timedelta(hours=1))
    session = SessionStore(key)
    session.set_expiry(_moment(clock, timedelta(hours=2)))
    session.save()
    assert _stored(key).absolute_ttl == timedelta(hours=3)
    assert _stored(key).expires == _moment(clock, timedelta(hours=2))


def test_an_expiry_already_past_deletes_the_session_at_save(
    store_on_clock: SyncStore, clock: ManualClock
) -> None:
    for past in (-1, _moment(clock, -timedelta(seconds=10))):
        key = _saved_with_expiry(None)
        session = SessionStore(key)
        session.set_expiry(past)
        session.save()
        assert session.session_key is None
        assert not SessionStore().exists(key)
        never_stored = SessionStore()
        never_stored["cart"] = []
        never_stored.set_expiry(past)
        never_stored.save()
        assert never_stored.session_key is None
    assert namespace().count() == 0


def test_zero_or_none_go_back_to_the_namespaces_policy(
    store_on_clock: SyncStore, clock: ManualClock
) -> None:
    keys = []
    for expiry in (0, None):
        session = SessionStore(_saved_with_expiry(3600))
        assert _stored(session.session_key).own_lifetime
        session.set_expiry(expiry)
        session.save()
        assert not _stored(session.session_key).own_lifetime
        keys.append(session.session_key)
    clock.advance(timedelta(seconds=settings.SESSION_COOKIE_AGE - 1))
    assert [_alive(key) for key in keys] == [True, True]
    clock.advance(timedelta(seconds=settings.SESSION_COOKIE_AGE))
    assert [_alive(key) for key in keys] == [False, False]


def test_cycle_key_carries_the_expiry_in_its_rotate(
    store_on_clock: SyncStore, clock: ManualClock
) -> None:
    session = SessionStore(_saved_with_expiry(None))
    session.set_expiry(int(FOURTEEN_DAYS.total_seconds()))
    session.cycle_key()  # Django's login calls it; no save follows here
    assert _stored(session.session_key).idle_ttl == FOURTEEN_DAYS


def test_max_absolute_ttl_clamps_what_a_session_asks(
    store_on_clock: SyncStore, clock: ManualClock
) -> None:
    week = timedelta(days=7)
    with sessionary_options(absolute_ttl=None, max_absolute_ttl=int(week.total_seconds())):
        seconds = _stored(_saved_with_expiry(int(FOURTEEN_DAYS.total_seconds())))
        moment = _stored(_saved_with_expiry(_moment(clock, FOURTEEN_DAYS)))
        policy = _stored(_saved_with_expiry(None))
    assert (seconds.idle_ttl, seconds.absolute_ttl) == (week, week)
    assert (moment.idle_ttl, moment.absolute_ttl) == (week, week)
    assert (policy.own_lifetime, policy.absolute_ttl) == (False, None)


def test_within_the_bound_seconds_keep_the_namespaces_absolute_cap(
    store_on_clock: SyncStore, clock: ManualClock
) -> None:
    month = timedelta(days=30)
    with sessionary_options(
        absolute_ttl=int(month.total_seconds()), max_absolute_ttl=int(2 * month.total_seconds())
    ):
        stored = _stored(_saved_with_expiry(int(FOURTEEN_DAYS.total_seconds())))
    assert (stored.idle_ttl, stored.absolute_ttl) == (FOURTEEN_DAYS, month)
