"""Per-session lifetimes beyond the conformance suite: the store's `update(idle_ttl=...)`, the
request core's `set_lifetime`, and an SQLite file of the previous schema."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from sessionary import ManualClock, Namespace, connect, ids
from sessionary.backends.sqlite import SCHEMA_VERSION
from sessionary.errors import ValidationError
from sessionary.session_request import Outcome, RequestSession
from tests.counting import CountingBackend, counted_store

IDLE = timedelta(minutes=30)
MONTH = timedelta(days=30)


@pytest_asyncio.fixture
async def counted(
    store_url: str, clock: ManualClock
) -> AsyncIterator[tuple[Namespace, CountingBackend]]:
    async with counted_store(store_url, clock) as (store, backend):
        yield store.namespace("web", idle_ttl=IDLE, max_absolute_ttl=timedelta(days=90)), backend


async def test_update_gives_and_takes_back_a_lifetime(
    counted: tuple[Namespace, CountingBackend], clock: ManualClock
) -> None:
    web, _ = counted
    session = await web.create(data={"a": 1})
    remembered = await web.update(session.id, idle_ttl=MONTH, absolute_ttl=MONTH)
    assert (remembered.idle_ttl, remembered.absolute_ttl) == (MONTH, MONTH)
    assert remembered.expires_at == clock.now_ms() + MONTH // timedelta(milliseconds=1)
    kept = await web.update(session.id, data={"a": 2})  # no ttl named: kept
    assert kept.own_lifetime
    assert kept.idle_ttl == MONTH
    back = await web.update(session.id, idle_ttl=None, absolute_ttl=None)
    assert not back.own_lifetime
    assert (back.idle_ttl, back.absolute_ttl) == (IDLE, None)
    assert back.expires_at == clock.now_ms() + IDLE // timedelta(milliseconds=1)
    with pytest.raises(ValidationError, match="bounds"):
        await web.update(session.id, idle_ttl=MONTH)  # its absolute would be unbounded
    with pytest.raises(ValidationError, match="timedelta"):
        await web.update(session.id, absolute_ttl=3600)  # type: ignore[arg-type]
    assert (await web.get(session.id)) == back  # a refusal wrote nothing


async def test_remember_me_on_login_is_one_rotate(
    counted: tuple[Namespace, CountingBackend], clock: ManualClock
) -> None:
    web, backend = counted
    anonymous = await web.create(data={"cart": ["book"]})
    state = await RequestSession.load(web, anonymous.id)
    state.set_lifetime(idle_ttl=MONTH, absolute_ttl=MONTH)
    backend.calls.clear()
    await state.rotate(subject="alice")
    assert backend.calls == ["rotate"]  # the new id and the lifetime: one atomic step
    assert await state.commit() is Outcome.ISSUE
    assert backend.calls == ["rotate"]  # nothing left to write
    stored = await web.get(state.id or "")
    assert stored is not None
    assert (stored.subject, stored.own_lifetime, stored.idle_ttl) == ("alice", True, MONTH)
    assert await web.get(anonymous.id) is None


async def test_set_lifetime_alone_is_written_at_the_save_and_reissues_the_id(
    counted: tuple[Namespace, CountingBackend],
) -> None:
    web, backend = counted
    session = await web.create(data={"a": 1})
    state = await RequestSession.load(web, session.id)
    state.set_lifetime(absolute_ttl=MONTH)
    assert state.changed()
    backend.calls.clear()
    assert await state.commit() is Outcome.ISSUE  # the cookie's Max-Age follows the lifetime
    assert backend.calls == ["update"]
    stored = await web.get(session.id)
    assert stored is not None
    assert (stored.own_lifetime, stored.idle_ttl, stored.absolute_ttl) == (True, IDLE, MONTH)
    again = await RequestSession.load(web, session.id)
    assert not again.changed()
    again.set_lifetime()  # neither: back to the namespace's policy
    assert await again.commit() is Outcome.ISSUE
    cleared = await web.get(session.id)
    assert cleared is not None
    assert not cleared.own_lifetime


async def test_a_new_session_is_created_with_its_lifetime(
    counted: tuple[Namespace, CountingBackend],
) -> None:
    web, backend = counted
    state = RequestSession.fresh(web)
    state.set_lifetime(idle_ttl=MONTH, absolute_ttl=MONTH)
    state["user"] = "bob"
    assert await state.commit() is Outcome.ISSUE
    assert backend.calls == ["create"]
    stored = await web.get(state.id or "")
    assert stored is not None
    assert stored.own_lifetime


async def test_set_lifetime_refuses_what_the_namespace_does_not_allow_at_once(
    counted: tuple[Namespace, CountingBackend],
) -> None:
    web, backend = counted
    state = RequestSession.fresh(web)
    with pytest.raises(ValidationError, match="above"):
        state.set_lifetime(absolute_ttl=timedelta(days=91))
    assert not state.changed()
    assert backend.calls == []


# -- SQLite: a file of the previous schema ---------------------------------------------------

# The sessions table of schema 1, exactly as sessionary made it before own lifetimes.
_SCHEMA_1_SESSIONS = """CREATE TABLE sessions (
        namespace    TEXT    NOT NULL,
        id           TEXT    NOT NULL,
        subject      TEXT,
        created_at   INTEGER NOT NULL,
        last_seen_at INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL,
        version      INTEGER NOT NULL,
        data         BLOB    NOT NULL,
        metadata     BLOB    NOT NULL,
        counters     TEXT    NOT NULL DEFAULT '{}',
        log_last     INTEGER NOT NULL DEFAULT 0,
        log_closed   INTEGER NOT NULL DEFAULT 0,
        producers    TEXT    NOT NULL DEFAULT '{}',
        UNIQUE (namespace, id)
    )"""


async def test_a_schema_1_file_opens_and_its_sessions_live_by_the_namespace_policy(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    old_id = ids.new_id()
    with sqlite3.connect(path) as db:
        db.execute(_SCHEMA_1_SESSIONS)
        db.execute(
            "INSERT INTO sessions (namespace, id, subject, created_at, last_seen_at, expires_at,"
            " version, data, metadata) VALUES ('web', ?, 'u', 1000, 1000, 1000 + 60000, 1,"
            " '{\"a\":1}', '{}')",
            (old_id,),
        )
        db.execute("PRAGMA user_version = 1")
    db.close()
    clock = ManualClock(2000)
    store = await connect(f"sqlite:///{path}", clock=clock)
    try:
        web = store.namespace("web", idle_ttl=timedelta(minutes=1))
        old = await web.touch(old_id)
        assert old is not None
        assert old.data == {"a": 1}
        assert not old.own_lifetime
        assert old.expires_at == 2000 + 60_000  # slid by the namespace's idle ttl
        remembered = await web.rotate(old_id, idle_ttl=MONTH)
        assert remembered.own_lifetime
        assert (await web.list_subject("u"))[0].idle_ttl == MONTH
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    db.close()
    reopened = await connect(f"sqlite:///{path}", clock=clock)  # migrated once: opens as is
    try:
        found = await reopened.namespace("web", idle_ttl=timedelta(minutes=1)).get(remembered.id)
        assert found == remembered
    finally:
        await reopened.close()
