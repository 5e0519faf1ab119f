"""Counters from before they kept their rate: a SQLite file opens with `window_ms` and `lim`
added, Redis hashes without `w` and `l` are read as they are; either way a counter lists with
what is known, and a charge gives it its rate."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from redis.asyncio import Redis

from sessionary import ManualClock, connect
from sessionary.counters import Charge, CounterUsage

HOUR_MS = 3_600_000
_OLD_COUNTERS = """CREATE TABLE counters (
    grp       TEXT    NOT NULL,
    key       TEXT    NOT NULL,
    value     INTEGER NOT NULL,
    resets_at INTEGER NOT NULL,
    algorithm TEXT    NOT NULL DEFAULT 'fixed',
    previous  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grp, key)
) WITHOUT ROWID"""


async def test_counters_of_an_older_file_list_and_gain_their_rate(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    now = 10 * HOUR_MS
    with sqlite3.connect(path) as db:
        db.execute(_OLD_COUNTERS)
        db.executemany(
            "INSERT INTO counters VALUES ('q', ?, ?, ?, ?, ?)",
            [("f", 4, now + HOUR_MS, "fixed", 0), ("s", 2, now + 2 * HOUR_MS, "sliding", 0)],
        )
    db.close()
    await lists_what_is_known(f"sqlite:///{path}", now, limit=5)


async def test_counters_an_older_sessionary_wrote_on_redis_list_what_is_known(
    redis_client: Redis, redis_url: str, redis_prefix: str
) -> None:
    """Counter hashes as an older sessionary wrote them (no `w`, no `l`): a fixed one lists
    its count, a sliding one its window's end but no usage rather than a wrong one; a
    charge gives each its rate."""
    now = 10 * HOUR_MS
    tag = f"{redis_prefix}{{c:q}}:"
    await redis_client.hset(tag + "f", mapping={"v": 4, "r": now + HOUR_MS})
    await redis_client.hset(
        tag + "s", mapping={"v": 2, "r": now + 2 * HOUR_MS, "p": 0, "a": "sliding"}
    )
    await lists_what_is_known(redis_url, now, limit=10)


async def lists_what_is_known(url: str, now: int, limit: int) -> None:
    """The counters "f" (fixed, 4) and "s" (sliding, 2) an older sessionary wrote in group "q":
    listed with what is known, then "s" charged once under `limit` gets its rate."""
    store = await connect(url, clock=ManualClock(now))
    try:
        quota = store.counters("q")
        page = await quota.list()
        assert sorted(page.counters, key=lambda c: c.key) == [
            CounterUsage("f", 4, None, now + HOUR_MS, None, "fixed"),
            CounterUsage("s", None, None, now + 2 * HOUR_MS, None, "sliding"),
        ]
        await quota.charge(Charge("s", limit=limit, window=timedelta(hours=1), algorithm="sliding"))
        [charged] = [c for c in (await quota.list()).counters if c.key == "s"]
        assert (charged.limit, charged.window_ms, charged.used) == (limit, HOUR_MS, 3)
    finally:
        await store.close()
