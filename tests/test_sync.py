"""The blocking facade (`sessionary.sync`): what it adds to the async API it stands on.

Its semantics are the async API's by construction and are proven by the conformance suite run
through it (tests/test_sync_conformance.py); here: threads, fork, the loop-thread guard, `arun`
from other loops, lazy connect, close, and a forgotten close at interpreter exit.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

import sessionary
from sessionary import (
    Charge,
    InvalidSessionId,
    ManualClock,
    SessionNotFound,
    Store,
    StoreUnavailable,
    SyncStore,
    VersionConflict,
    connect_sync,
)
from sessionary.sync import shared

THREADS = 32


@pytest.fixture
def sync_store(store_url: str, clock: ManualClock) -> Iterator[SyncStore]:
    with connect_sync(store_url, clock=clock) as opened:
        yield opened


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sessionary-sync" and t.is_alive()]


def test_the_blocking_calls_give_the_async_results_and_errors(
    sync_store: SyncStore, clock: ManualClock
) -> None:
    web = sync_store.namespace("web", idle_ttl=timedelta(seconds=100))
    assert sync_store.namespace("web", idle_ttl=timedelta(seconds=100)) is web
    assert (web.name, web.idle_ttl, web.absolute_ttl) == ("web", timedelta(seconds=100), None)
    session = web.create(subject="ada", data={"cart": [1]})
    assert web.get(session.id) == session
    clock.advance(10)
    assert web.touch(session.id).expires_at == clock.now_ms() + 100_000  # type: ignore[union-attr]
    updated = web.update(session.id, data={"cart": [1, 2]}, expected_version=1)
    with pytest.raises(VersionConflict):
        web.update(session.id, data={}, expected_version=1)
    assert web.consume(session.id, "searches", 2, limit=3).used == 2
    rotated = web.rotate(session.id)
    assert web.get(session.id) is None
    assert rotated.data == updated.data
    assert [s.id for s in web.list_subject("ada")] == [rotated.id]
    assert web.count() == 1
    assert web.revoke_subject("ada") == 1
    with pytest.raises(SessionNotFound):
        web.update(rotated.id, data={})
    with pytest.raises(InvalidSessionId):
        web.touch("forged")
    assert web.delete(rotated.id) is False
    short = web.create()
    clock.advance(timedelta(seconds=100))
    assert [s.id for s in web.reap()] == [short.id]


def test_a_namespace_policy_is_checked_by_the_store(sync_store: SyncStore) -> None:
    sync_store.namespace("web", idle_ttl=timedelta(minutes=5))
    with pytest.raises(ValueError, match="another policy"):
        sync_store.namespace("web", idle_ttl=timedelta(minutes=6))
    with pytest.raises(ValueError, match="namespace name"):
        sync_store.namespace("no spaces")
    with pytest.raises(ValueError, match="counter group"):
        sync_store.counters("no spaces")


def test_many_threads_on_one_store_count_exactly(sync_store: SyncStore) -> None:
    web = sync_store.namespace("web", idle_ttl=timedelta(hours=1))
    quota = sync_store.counters("quota")
    session = web.create()
    per_thread, limit = 20, 300
    start = threading.Barrier(THREADS)

    def hammer(_: int) -> tuple[int, int, int]:
        start.wait()
        allowed = charged = 0
        created = []
        for _ in range(per_thread):
            allowed += web.consume(session.id, "searches", 1, limit=limit).allowed
            charged += quota.charge(Charge("all", limit=limit, window=timedelta(hours=1))).allowed
            created.append(web.create(subject="many").id)
        return allowed, charged, len(set(created))

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(hammer, range(THREADS)))
    assert sum(o[0] for o in outcomes) == limit
    assert sum(o[1] for o in outcomes) == limit
    assert web.consume(session.id, "searches", 0).used == limit
    assert quota.read(Charge("all", window=timedelta(hours=1)))["all"].used == limit
    assert sum(o[2] for o in outcomes) == THREADS * per_thread == len(web.list_subject("many"))
    assert len(sync_threads()) == 1  # all of them went through the store's one loop thread


def test_a_forked_child_opens_its_own_and_the_parent_carries_on(shared_url: str) -> None:
    with connect_sync(shared_url) as sync_store:
        web = sync_store.namespace("web", idle_ttl=timedelta(hours=1))
        session = web.create(data={"by": "parent"})
        busy = threading.Event()
        stop = threading.Event()

        def keep_calling() -> None:  # a call in flight in the parent while it forks
            while not stop.is_set():
                web.touch(session.id)
                busy.set()

        caller = threading.Thread(target=keep_calling)
        caller.start()
        busy.wait()
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            report = "child: no report"
            try:
                os.close(reader)
                assert sync_store._running is None  # the parent's loop is forgotten, not reused
                assert sync_store.namespace("web", idle_ttl=timedelta(hours=1)) is web
                web.update(session.id, data={"by": "child"})
                mine = web.create(data={"by": "child"})
                assert web.consume(session.id, "forks", 1, limit=1).allowed
                running = sync_store._running
                assert running is not None
                assert running.pid == os.getpid()
                assert running.thread.is_alive()
                report = f"ok {mine.id}"
            except BaseException:
                report = traceback.format_exc()
            finally:
                os.write(writer, report.encode())
                os._exit(0)
        os.close(writer)
        with os.fdopen(reader, "rb") as pipe:
            report = pipe.read().decode()
        os.waitpid(pid, 0)
        stop.set()
        caller.join()
        assert report.startswith("ok "), report
        child_session = report.removeprefix("ok ")
        assert web.get(session.id).data == {"by": "child"}  # type: ignore[union-attr]
        assert web.get(child_session).data == {"by": "child"}  # type: ignore[union-attr]
        assert not web.consume(session.id, "forks", 1, limit=1).allowed
        assert web.update(session.id, data={"by": "parent"}).data == {"by": "parent"}


def test_a_blocking_call_from_the_store_loop_raises(sync_store: SyncStore) -> None:
    web = sync_store.namespace("web", idle_ttl=timedelta(hours=1))
    session = web.create()

    async def blocking_inside(store: Store) -> None:
        web.touch(session.id)

    async def closing_inside(store: Store) -> None:
        sync_store.close()

    with pytest.raises(RuntimeError, match="own event loop"):
        sync_store.run(blocking_inside)
    with pytest.raises(RuntimeError, match="own event loop"):
        sync_store.run(closing_inside)
    assert web.touch(session.id) is not None  # neither did harm


async def test_arun_awaits_from_other_loops_and_its_own(sync_store: SyncStore) -> None:
    web = sync_store.namespace("web", idle_ttl=timedelta(hours=1))
    session = await asyncio.to_thread(web.create, data={"n": 0})
    loop = asyncio.get_running_loop()

    async def touch_on(ns: sessionary.Namespace) -> asyncio.AbstractEventLoop:
        assert await ns.touch(session.id) is not None
        return asyncio.get_running_loop()

    async def nested(store: Store) -> asyncio.AbstractEventLoop:
        return await web.arun(touch_on)  # arun on the store's own loop: awaited in place

    ran_on = await asyncio.gather(*(web.arun(touch_on) for _ in range(10)))
    assert len(set(ran_on)) == 1
    assert ran_on[0] is not loop
    other_loop = await asyncio.to_thread(asyncio.run, web.arun(touch_on))
    assert other_loop is ran_on[0]
    assert await sync_store.arun(nested) is ran_on[0]
    with pytest.raises(InvalidSessionId):
        await web.arun(lambda ns: ns.touch("forged"))


def test_it_connects_on_first_use_and_retries_a_failed_connect(tmp_path: Path) -> None:
    path = tmp_path / "later" / "store.db"
    sync_store = connect_sync(f"sqlite:///{path}")
    assert not path.parent.exists()
    assert sync_store._running is None
    with pytest.raises(StoreUnavailable, match="of the SQLite store does not exist"):
        sync_store.namespace("web", idle_ttl=timedelta(hours=1))
    path.parent.mkdir()
    with sync_store:
        sync_store.namespace("web", idle_ttl=timedelta(hours=1)).create()
        assert path.exists()


def test_close_ends_the_thread_is_idempotent_and_refuses_more(tmp_path: Path) -> None:
    before = len(sync_threads())
    never_used = connect_sync("memory://")
    never_used.close()
    assert len(sync_threads()) == before
    with connect_sync(f"sqlite:///{tmp_path / 'store.db'}") as sync_store:
        web = sync_store.namespace("web", idle_ttl=timedelta(hours=1))
        web.create()
        assert len(sync_threads()) == before + 1
    sync_store.close()
    assert len(sync_threads()) == before
    with pytest.raises(RuntimeError, match="is closed"):
        web.count()


def test_a_call_in_flight_when_the_store_closes_fails(sync_store: SyncStore) -> None:
    started = threading.Event()

    async def never_ends(store: Store) -> None:
        started.set()
        await asyncio.Event().wait()

    outcome: list[BaseException] = []

    def call() -> None:
        try:
            sync_store.run(never_ends)
        except BaseException as error:
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    started.wait()
    sync_store.close()
    caller.join(timeout=10)
    assert not caller.is_alive()
    assert isinstance(outcome[0], RuntimeError)
    assert "closed during the call" in str(outcome[0])


def test_a_store_never_closed_does_not_hold_up_exit(tmp_path: Path) -> None:
    script = (
        "import sessionary\nfrom datetime import timedelta\n"
        f"store = sessionary.connect_sync('sqlite:///{tmp_path / 'store.db'}')\n"
        "print(store.namespace('web', absolute_ttl=timedelta(hours=1)).create().version)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr


def test_the_repr_hides_a_password() -> None:
    assert repr(connect_sync("redis://user:secret@localhost:6379/0")) == (
        "SyncStore('redis://user:***@localhost:6379/0')"
    )


def test_shared_gives_one_store_per_url_across_threads_and_a_new_one_after_close(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    start = threading.Barrier(THREADS)

    def ask() -> SyncStore:
        start.wait()  # all threads ask at once: creation must still happen once
        return shared(url)

    with ThreadPoolExecutor(THREADS) as pool:
        found = list(pool.map(lambda _: ask(), range(THREADS)))
    first = found[0]
    try:
        assert all(store is first for store in found)
        assert shared(f"sqlite:///{tmp_path / 'other.db'}") is not first
        with pytest.raises(ValueError, match="other options"):
            shared(url, clock=ManualClock())
    finally:
        first.close()
        shared(f"sqlite:///{tmp_path / 'other.db'}").close()
    replacement = shared(url)
    try:
        assert replacement is not first
        replacement.namespace("web", idle_ttl=timedelta(hours=1)).create()  # it works
        assert shared(url) is replacement
    finally:
        replacement.close()


def test_a_blocking_store_seals_with_its_keys_and_shared_tells_keys_apart(
    tmp_path: Path,
) -> None:
    key, other = secrets.token_bytes(32), secrets.token_bytes(32)
    url = f"sqlite:///{tmp_path / 'sealed.db'}"
    store = shared(url, encryption_keys=[key])
    try:
        web = store.namespace("web", idle_ttl=timedelta(hours=1))
        session = web.create(data={"note": "plain-marker-text"}, metadata={"m": "meta-marker"})
        found = web.get(session.id)
        assert found is not None
        assert (found.data, found.metadata) == ({"note": "plain-marker-text"}, {"m": "meta-marker"})
        stored = b"".join(path.read_bytes() for path in tmp_path.glob("sealed.db*"))
        assert session.id.encode() in stored  # the file holds the session...
        assert b"plain-marker-text" not in stored  # ...but not its data or metadata in clear
        assert b"meta-marker" not in stored
        assert shared(url, encryption_keys=[key]) is store
        with pytest.raises(ValueError, match="other options"):
            shared(url, encryption_keys=[other])
        with pytest.raises(ValueError, match="other options"):
            shared(url)
    finally:
        store.close()
    with pytest.raises(ValueError, match="32 bytes"):
        connect_sync(url, encryption_keys=["not-a-key"])
