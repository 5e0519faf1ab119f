"""What only the SQLite backend has to show: durability, indexes, locking, URLs."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
import textwrap
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from sessionary import ManualClock, StoreUnavailable, connect
from sessionary.backends.sqlite import SCHEMA_VERSION, parse_url

HOUR = timedelta(hours=1)


async def test_everything_survives_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    clock = ManualClock()
    store = await connect(url, clock=clock)
    web = store.namespace("web", idle_ttl=HOUR)
    session = await web.create(subject="u", data={"n": [1, 2.5, "three"]}, metadata={"m": "v"})
    await web.consume(session.id, "q", amount=7, limit=10)
    updated = await web.update(session.id, data={"n": 4})
    await store.close()

    reopened = await connect(url, clock=clock)
    try:
        again = reopened.namespace("web", idle_ttl=HOUR)
        stored = await again.get(session.id)
        assert stored is not None
        assert stored.last_seen_at == updated.last_seen_at
        assert (stored.data, stored.metadata, stored.version) == ({"n": 4}, {"m": "v"}, 2)
        assert stored.counters == {"q": 7}
        assert [s.id for s in await again.list_subject("u")] == [session.id]
    finally:
        await reopened.close()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import timedelta
    import sessionary

    async def main():
        store = await sessionary.connect(sys.argv[1])
        web = store.namespace("web", idle_ttl=timedelta(hours=1))
        while True:
            session = await web.create(data={"n": 1})
            print(session.id, flush=True)   # acknowledged: the commit is done

    asyncio.run(main())
    """
)


async def test_acknowledged_writes_survive_a_killed_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, url, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    acknowledged = [(await process.stdout.readline()).decode().strip() for _ in range(300)]
    process.send_signal(signal.SIGKILL)
    await process.wait()
    store = await connect(url)
    try:
        web = store.namespace("web", idle_ttl=HOUR)
        for session_id in acknowledged:
            assert await web.get(session_id) is not None
        assert await web.count() >= len(acknowledged)
    finally:
        await store.close()


async def test_wal_mode_and_the_indexes_serve_the_queries(tmp_path: Path) -> None:
    path = tmp_path / "plan.db"
    store = await connect(f"sqlite:///{path}")
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION

        def plan(sql: str, *args: object) -> str:
            return " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args))

        assert "sessions_by_subject" in plan(
            "SELECT id FROM sessions WHERE namespace = ? AND subject = ? AND expires_at > ?",
            "web",
            "u",
            0,
        )
        assert "sessions_by_expiry" in plan(
            "SELECT id FROM sessions WHERE namespace = ? AND expires_at <= ? "
            "ORDER BY expires_at, id LIMIT ?",
            "web",
            0,
            10,
        )
        assert "sessions_by_subject" in plan(
            "DELETE FROM sessions WHERE namespace = ? AND subject = ?", "web", "u"
        )
        assert "sessions_by_expiry" in plan(
            "SELECT count(*) FROM sessions WHERE namespace = ? AND expires_at > ?", "web", 0
        )
        assert "sqlite_autoindex_sessions_1" in plan(
            "SELECT id FROM sessions WHERE namespace = ? AND id = ?", "web", "x"
        )


async def test_a_file_without_the_work_table_gains_it_and_claims_use_the_index(
    tmp_path: Path,
) -> None:
    """A file of schema 2 from before work queues (no `work` table) opens, keeps its
    sessions and gains the table; the version stays (an older sessionary ignores the table).
    A claim's picks are range scans of `work_by_lease`, never a scan of the table."""
    path = tmp_path / "before-queues.db"
    url = f"sqlite:///{path}"
    store = await connect(url)
    session = await store.namespace("web", idle_ttl=HOUR).create()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE work")  # its index goes with it
    store = await connect(url)
    try:
        assert await store.namespace("web", idle_ttl=HOUR).get(session.id) is not None
        jobs = store.queue("jobs")
        assert await jobs.enqueue("job", b"payload")
        [item] = await jobs.claim("w", HOUR)
        assert (item.id, item.payload) == ("job", b"payload")
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        lapsed = db.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM work WHERE queue = ?1 AND lease_until <= ?2 "
            "ORDER BY lease_until, seq LIMIT 5",
            ("jobs", 0),
        ).fetchall()
        waiting = db.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM work WHERE queue = ? AND lease_until IS NULL "
            "ORDER BY seq LIMIT 5",
            ("jobs",),
        ).fetchall()
    for plan in (lapsed, waiting):
        details = " ".join(row[3] for row in plan)
        assert "work_by_lease" in details
        assert "TEMP B-TREE" not in details  # in index order: no sort of the queue


async def test_a_lock_held_too_long_is_unavailable_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = await connect(f"sqlite:///{path}?busy_timeout_ms=100")
    web = store.namespace("web", idle_ttl=HOUR)
    try:
        session = await web.create()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable):
            await web.touch(session.id)
        other.execute("ROLLBACK")
        other.close()
        assert await web.touch(session.id) is not None
    finally:
        await store.close()


async def test_an_unopenable_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        await connect(f"sqlite:///{tmp_path / 'missing-dir' / 's.db'}")


async def test_a_file_from_a_newer_sessionary_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreUnavailable, match="upgrade sessionary"):
        await connect(f"sqlite:///{path}")


async def test_operations_after_close_are_unavailable(tmp_path: Path) -> None:
    store = await connect(f"sqlite:///{tmp_path / 'closed.db'}")
    web = store.namespace("web", idle_ttl=HOUR)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreUnavailable):
        await web.create()


async def test_a_burst_shares_commits_and_stays_correct(tmp_path: Path) -> None:
    store = await connect(f"sqlite:///{tmp_path / 'burst.db'}")
    web = store.namespace("web", idle_ttl=HOUR)
    try:
        sessions = await asyncio.gather(*(web.create(data={"n": n}) for n in range(2000)))
        assert len({s.id for s in sessions}) == 2000
        stored = await asyncio.gather(*(web.get(s.id) for s in sessions))
        assert [s.data["n"] for s in stored if s is not None] == list(range(2000))
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "path", "options"),
    [
        ("sqlite:///sessions.db", "sessions.db", {}),
        ("sqlite:////var/lib/s.db", "/var/lib/s.db", {}),
        ("sqlite:///:memory:", ":memory:", {}),
        (
            "sqlite:///s.db?synchronous=full&busy_timeout_ms=250",
            "s.db",
            {"synchronous": "full", "busy_timeout_ms": 250},
        ),
    ],
)
def test_urls_parse(url: str, path: str, options: dict[str, object]) -> None:
    assert parse_url(url) == (path, options)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://host/s.db",
        "sqlite:///",
        "sqlite:///s.db?cache=big",
        "sqlite:///s.db?busy_timeout_ms=x",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


async def test_bad_synchronous_is_refused() -> None:
    with pytest.raises(ValueError):
        await connect("sqlite:///s.db?synchronous=sometimes")


@pytest.mark.parametrize(("step_s", "most", "turns"), [(0.001, 32, (8, 200)), (0.0, 200, (1, 8))])
async def test_a_batchs_results_are_handed_out_a_turns_worth_at_a_time(
    tmp_path: Path, step_s: float, most: int, turns: tuple[int, int]
) -> None:
    """The results of one group commit are handed out in groups, one per turn of the loop,
    sized by what the woken tasks' next steps cost: heavy steps (1 ms of work each) a few per
    turn, so that other work (a request arriving) is not stuck behind all of them; cheap ones
    in a few turns, so they cost nothing."""
    store = await connect(f"sqlite:///{tmp_path / 'turns.db'}")
    web = store.namespace("web", idle_ttl=HOUR)
    session = await web.create()
    loop = asyncio.get_running_loop()
    turns_seen = 0

    def tick() -> None:  # runs once per turn of the loop
        nonlocal turns_seen
        turns_seen += 1
        ticking[0] = loop.call_soon(tick)

    async def woken_at() -> int:
        assert await web.get(session.id) is not None
        woken = turns_seen
        deadline = time.perf_counter() + step_s
        while time.perf_counter() < deadline:  # the woken task's next step: work, no await
            pass
        return woken

    await asyncio.gather(*(woken_at() for _ in range(200)))  # learn the workload
    ticking = [loop.call_soon(tick)]
    try:
        woken = Counter(await asyncio.gather(*(woken_at() for _ in range(200))))
    finally:
        ticking[0].cancel()
        await store.close()
    assert sum(woken.values()) == 200
    assert max(woken.values()) <= most
    assert turns[0] <= len(woken) <= turns[1]


APPENDER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import timedelta
    import sessionary

    async def main():
        store = await sessionary.connect(sys.argv[1])
        web = store.namespace("web", idle_ttl=timedelta(hours=1))
        for line in sys.stdin:   # one append per line asked for, acknowledged once committed
            await web.append(sys.argv[2], "chunk", int(line))
            print("appended", flush=True)
        await store.close()

    asyncio.run(main())
    """
)


async def test_another_processs_appends_reach_followers_within_a_bound(tmp_path: Path) -> None:
    """Followers of several logs here, appends to one of them from another process: each
    append reaches its follower within a bound (the one poller of the file), and the
    followers of the other logs see nothing."""
    url = f"sqlite:///{tmp_path / 'follow.db'}"
    store = await connect(url)
    web = store.namespace("web", idle_ttl=HOUR)
    followed, *others = [(await web.create()).id for _ in range(3)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", APPENDER, url, followed,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    seen: asyncio.Queue[object] = asyncio.Queue()

    async def follow(session_id: str) -> None:
        async for event in web.follow(session_id):
            await seen.put((session_id, getattr(event, "data", event)))

    followers = [asyncio.create_task(follow(s)) for s in (followed, *others)]
    try:
        for n in range(5):
            process.stdin.write(b"%d\n" % n)
            async with asyncio.timeout(30):  # the other process starting up, then appending
                assert await process.stdout.readline() == b"appended\n"
            async with asyncio.timeout(1):  # polled every 50 ms
                assert await seen.get() == (followed, n)
        assert seen.empty()
        assert not any(task.done() for task in followers)
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        process.stdin.close()
        async with asyncio.timeout(30):
            await process.wait()
        await store.close()


#: the longest the loop may wait for a tick in the tests below: one operation and its commit
#: take well under a millisecond; the margin is a loaded CI machine's scheduling, far below
#: the busy timeout (5 s) the loop would wait if it waited for another process's lock
LOOP_LAG_BOUND_S = 0.5


async def test_an_operation_on_an_idle_store_is_answered_within_the_turn(
    tmp_path: Path,
) -> None:
    """One caller at a time: its operation runs on the loop's thread at once (no hand-off to
    the writer thread and back), so it is answered before the loop runs anything else."""
    store = await connect(f"sqlite:///{tmp_path / 'idle.db'}")
    web = store.namespace("web", idle_ttl=HOUR)
    loop = asyncio.get_running_loop()
    try:
        session = await web.create(data={"n": 1})
        for operation in (
            lambda: web.touch(session.id),
            lambda: web.update(session.id, data={"n": 2}),
            lambda: web.consume(session.id, "q", amount=1, limit=10),
            lambda: web.get(session.id),
        ):
            await asyncio.sleep(0)  # a fresh turn
            turned: list[bool] = []
            loop.call_soon(turned.append, True)
            await operation()
            assert turned == []
        stored = await web.get(session.id)
        assert stored is not None
        assert (stored.data, stored.counters, stored.version) == ({"n": 2}, {"q": 1}, 2)
    finally:
        await store.close()


async def test_a_caller_one_at_a_time_leaves_the_loop_turns(tmp_path: Path) -> None:
    """Operations run on the loop's thread, one after another, still let the loop turn: no
    turn holds its thread for more than a bound of CPU time (the turn's share of the work,
    whatever the OS gives other processes meanwhile)."""
    store = await connect(f"sqlite:///{tmp_path / 'turns.db'}")
    web = store.namespace("web", idle_ttl=HOUR)
    loop = asyncio.get_running_loop()
    session = await web.create()
    longest, turns, last = 0.0, 0, time.thread_time()

    def tick() -> None:  # runs once per turn of the loop
        nonlocal longest, turns, last
        now = time.thread_time()
        longest, turns, last = max(longest, now - last), turns + 1, now
        ticking[0] = loop.call_soon(tick)

    ticking = [loop.call_soon(tick)]
    try:
        for _ in range(500):
            assert await web.touch(session.id) is not None
    finally:
        ticking[0].cancel()
        await store.close()
    assert turns > 1
    assert longest < 0.05  # the lane: 2 ms of work a turn (TURN_S), and one operation more


async def test_another_process_holding_the_write_lock_never_blocks_the_loop(
    tmp_path: Path,
) -> None:
    """While another connection holds the write lock (`BEGIN IMMEDIATE`), a write here does
    not wait on the loop's thread (it would for the busy timeout): it waits in the writer
    thread, and completes there once the lock is released; the loop keeps ticking."""
    path = tmp_path / "held.db"
    store = await connect(f"sqlite:///{path}")
    web = store.namespace("web", idle_ttl=HOUR)
    session = await web.create(data={"n": 1})
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        asked = time.perf_counter()
        updating = asyncio.create_task(web.update(session.id, data={"n": 2}))
        lag = 0.0
        for _ in range(20):  # the ticker: how late each 10 ms tick comes
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lag = max(lag, time.perf_counter() - before - 0.01)
        assert not updating.done()  # waiting for the lock, in the writer thread
        other.execute("COMMIT")
        updated = await updating
        assert time.perf_counter() - asked < 5  # within the busy timeout: it waited, then ran
        assert (updated.data, updated.version) == ({"n": 2}, 2)
        assert lag < LOOP_LAG_BOUND_S
        assert await web.touch(session.id) is not None  # and the loop's thread again
    finally:
        other.close()
        await store.close()
