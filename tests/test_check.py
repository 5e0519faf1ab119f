"""`Namespace.check` (`sessionary check`): each inconsistency a backend's indexes can have is
seeded by reaching into that backend's storage (the memory backend's dicts, redis-py on the
Redis keys), found exactly, repaired, and gone on a second check; a store that only ever saw
the API's writes has no findings, on every backend.

SQLite is in the clean-store tests only: its subject and expiry "indexes" are SQL indexes
written by the same statement as the row, so there is nothing to seed there."""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from sessionary import ManualClock, Namespace, Store, connect, ids
from sessionary.backends.memory import MemoryBackend
from sessionary.backends.redis import RedisBackend
from sessionary.contract import (
    EXPIRY_INDEX_MISSING,
    EXPIRY_INDEX_ORPHAN,
    SUBJECT_INDEX_MISSING,
    SUBJECT_INDEX_ORPHAN,
    Finding,
)

HOUR = timedelta(hours=1)


class Seeder(Protocol):
    """Breaks a backend's indexes the way a bug, a lost key or a hand at the console would."""

    async def add_subject_entry(self, ns: str, subject: str, session_id: str) -> None: ...
    async def drop_subject_entry(self, ns: str, subject: str, session_id: str) -> None: ...
    async def drop_expiry_entry(self, ns: str, session_id: str) -> None: ...


class MemorySeeder:
    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    async def add_subject_entry(self, ns: str, subject: str, session_id: str) -> None:
        self.backend._spaces[ns].subjects.setdefault(subject, set()).add(session_id)

    async def drop_subject_entry(self, ns: str, subject: str, session_id: str) -> None:
        self.backend._spaces[ns].subjects[subject].discard(session_id)

    async def drop_expiry_entry(self, ns: str, session_id: str) -> None:
        space = self.backend._spaces[ns]
        space.heap = [entry for entry in space.heap if entry[1] != session_id]
        heapq.heapify(space.heap)


class RedisSeeder:
    """Writes with redis-py straight to the keys the backend names (`shard_keys`)."""

    def __init__(self, backend: RedisBackend, client: Redis) -> None:
        self.backend = backend
        self.client = client

    def keys(self, ns: str, session_id: str) -> tuple[str, str, str]:
        keys = self.backend.shard_keys(ns, ids.shard_of(session_id))
        return keys.session + session_id, keys.expiry, keys.subjects

    async def add_subject_entry(self, ns: str, subject: str, session_id: str) -> None:
        await self.client.zadd(self.keys(ns, session_id)[2], {f"{subject}\0{session_id}": 0})

    async def drop_subject_entry(self, ns: str, subject: str, session_id: str) -> None:
        assert await self.client.zrem(self.keys(ns, session_id)[2], f"{subject}\0{session_id}")

    async def drop_expiry_entry(self, ns: str, session_id: str) -> None:
        assert await self.client.zrem(self.keys(ns, session_id)[1], session_id)

    async def add_expiry_entry(self, ns: str, session_id: str, expires_at: int) -> None:
        await self.client.zadd(self.keys(ns, session_id)[1], {session_id: expires_at})

    async def lose_record(self, ns: str, session_id: str) -> None:
        assert await self.client.delete(self.keys(ns, session_id)[0])


@dataclass
class Setup:
    store: Store
    clock: ManualClock
    web: Namespace
    seeder: Seeder


#: plain: a namespace spread over 16 shards; limited: one kept in one slot (on Redis, with
#: one subject index `{web}:u` for every shard)
LAYOUTS = {"plain": None, "limited": 1000}


async def _setup(
    kind: str, layout: str, clock: ManualClock, redis_url: str, redis_client: Redis
) -> Setup:
    store = await connect("memory://" if kind == "memory" else redis_url, clock=clock)
    web = store.namespace("web", idle_ttl=HOUR, max_sessions_per_subject=LAYOUTS[layout])
    backend = store.backend
    seeder: Seeder
    if isinstance(backend, MemoryBackend):
        seeder = MemorySeeder(backend)
    else:
        assert isinstance(backend, RedisBackend)
        seeder = RedisSeeder(backend, redis_client)
    await web.count()  # settles the Redis layout before any seeding
    return Setup(store, clock, web, seeder)


@pytest_asyncio.fixture(
    params=[("memory", "plain"), ("redis", "plain"), ("redis", "limited")],
    ids=lambda p: "-".join(p),
)
async def setup(
    request: pytest.FixtureRequest, clock: ManualClock, redis_url: str, redis_client: Redis
) -> AsyncIterator[Setup]:
    opened = await _setup(*request.param, clock, redis_url, redis_client)
    try:
        yield opened
    finally:
        await opened.store.close()


@pytest_asyncio.fixture(params=["plain", "limited"])
async def redis_setup(
    request: pytest.FixtureRequest, clock: ManualClock, redis_url: str, redis_client: Redis
) -> AsyncIterator[tuple[Setup, RedisSeeder]]:
    """Redis only: the memory backend's expiry heap keeps stale entries by design (no orphans
    there), and it keeps no TTLs."""
    opened = await _setup("redis", request.param, clock, redis_url, redis_client)
    assert isinstance(opened.seeder, RedisSeeder)
    try:
        yield opened, opened.seeder
    finally:
        await opened.store.close()


def found(findings: list[Finding]) -> list[tuple[str, str | None]]:
    return sorted((f.kind, f.id) for f in findings)


async def a_few_sessions(web: Namespace) -> list[str]:
    """Sessions that must not be reported beside what is seeded: some with a subject."""
    made = [await web.create(subject=f"user{n % 2}" if n % 3 else None) for n in range(6)]
    return [session.id for session in made]


async def assert_repaired(web: Namespace, expected: list[tuple[str, str | None]]) -> None:
    """Found alike by two checks that repair nothing; repaired (and said so) by a third; a
    fourth is clean."""
    assert found(await web.check()) == expected
    assert found(await web.check()) == expected  # a check alone changes nothing
    repaired = await web.check(repair=True)
    assert found(repaired) == expected
    assert all(f.repaired and f.namespace == "web" for f in repaired)
    assert await web.check() == []


async def test_a_subject_index_entry_naming_no_session_is_found_and_dropped(setup: Setup) -> None:
    await a_few_sessions(setup.web)
    stray = ids.new_id()
    await setup.seeder.add_subject_entry("web", "user0", stray)
    await assert_repaired(setup.web, [(SUBJECT_INDEX_ORPHAN, stray)])


async def test_a_subject_index_entry_naming_a_session_of_another_subject_is_an_orphan(
    setup: Setup,
) -> None:
    session = await setup.web.create(subject="alice")
    await setup.seeder.add_subject_entry("web", "mallory", session.id)
    await assert_repaired(setup.web, [(SUBJECT_INDEX_ORPHAN, session.id)])
    assert [s.id for s in await setup.web.list_subject("alice")] == [session.id]


async def test_a_session_missing_from_its_subjects_index_is_found_and_indexed_again(
    setup: Setup,
) -> None:
    await a_few_sessions(setup.web)
    session = await setup.web.create(subject="alice")
    await setup.seeder.drop_subject_entry("web", "alice", session.id)
    assert await setup.web.list_subject("alice") == []  # "log out everywhere" would miss it
    await assert_repaired(setup.web, [(SUBJECT_INDEX_MISSING, session.id)])
    assert [s.id for s in await setup.web.list_subject("alice")] == [session.id]
    assert await setup.web.revoke_subject("alice") == 1


async def test_a_session_missing_from_the_expiry_index_is_found_and_reaped_after_repair(
    setup: Setup,
) -> None:
    await a_few_sessions(setup.web)
    session = await setup.web.create(subject="alice")
    await setup.seeder.drop_expiry_entry("web", session.id)
    await assert_repaired(setup.web, [(EXPIRY_INDEX_MISSING, session.id)])
    setup.clock.advance(HOUR)
    assert session.id in {s.id for s in await setup.web.reap()}


async def test_a_lost_session_key_leaves_orphans_in_both_indexes(
    redis_setup: tuple[Setup, RedisSeeder],
) -> None:
    setup, seeder = redis_setup
    await a_few_sessions(setup.web)
    session = await setup.web.create(subject="alice")
    await seeder.lose_record("web", session.id)
    await assert_repaired(
        setup.web, [(EXPIRY_INDEX_ORPHAN, session.id), (SUBJECT_INDEX_ORPHAN, session.id)]
    )


async def test_an_expiry_entry_naming_no_session_says_whether_it_was_live(
    redis_setup: tuple[Setup, RedisSeeder],
) -> None:
    setup, seeder = redis_setup
    now = setup.clock.now_ms()
    past, future = ids.new_id(), ids.new_id()
    await seeder.add_expiry_entry("web", past, now - 1)
    await seeder.add_expiry_entry("web", future, now + 1)
    findings = {f.id: f.detail for f in await setup.web.check()}
    assert "expired" in findings[past]
    assert "lost" in findings[future]
    await assert_repaired(
        setup.web, sorted([(EXPIRY_INDEX_ORPHAN, past), (EXPIRY_INDEX_ORPHAN, future)])
    )


async def test_an_expiry_entry_at_the_wrong_time_is_set_to_the_records(
    redis_setup: tuple[Setup, RedisSeeder],
) -> None:
    setup, seeder = redis_setup
    session = await setup.web.create()
    await seeder.add_expiry_entry("web", session.id, session.expires_at + 10 * 3_600_000)
    [finding] = await setup.web.check()
    assert finding.kind == EXPIRY_INDEX_MISSING
    assert "scored" in finding.detail
    await assert_repaired(setup.web, [(EXPIRY_INDEX_MISSING, session.id)])
    setup.clock.advance(HOUR)
    assert [s.id for s in await setup.web.reap()] == [session.id]


async def test_a_repaired_index_keeps_a_ttl(redis_setup: tuple[Setup, RedisSeeder]) -> None:
    """An index the repair re-creates lives as long as the session it names, as every write
    keeps it: nothing in the store is immortal."""
    setup, seeder = redis_setup
    session = await setup.web.create(subject="alice")
    _, expiry, subjects = seeder.keys("web", session.id)
    await seeder.client.delete(expiry, subjects)
    assert len(await setup.web.check(repair=True)) == 2
    for key in (expiry, subjects):
        assert await seeder.client.pttl(key) > 0


@pytest.fixture(
    params=[("memory", "plain"), ("sqlite", "plain"), ("redis", "plain"), ("redis", "limited")],
    ids=lambda p: "-".join(p),
)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, int | None]:
    kind, layout = request.param
    if kind == "memory":
        return "memory://", LAYOUTS[layout]
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}", LAYOUTS[layout]
    return str(request.getfixturevalue("redis_url")), LAYOUTS[layout]


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_store_written_only_through_the_api_has_no_findings(
    any_store: tuple[str, int | None], clock: ManualClock, seed: int
) -> None:
    """A random workload of creates, rotations, subject changes, deletes, revocations and
    expiry (some reaped, some not), checked a few entries at a time, so every step of the
    walk (each shard's indexes, the key scan) runs."""
    url, limit = any_store
    rng = random.Random(seed)
    store = await connect(url, clock=clock)
    try:
        web = store.namespace("web", idle_ttl=HOUR, max_sessions_per_subject=limit)
        live: list[str] = []
        for _ in range(120):
            move = rng.random()
            subject = rng.choice([None, "alice", "bob", "carol"])
            if move < 0.35 or not live:
                live.append((await web.create(subject=subject)).id)
            elif move < 0.5:
                old = live.pop(rng.randrange(len(live)))
                live.append((await web.rotate(old, subject=subject)).id)
            elif move < 0.6:
                await web.update(rng.choice(live), subject=subject)
            elif move < 0.7:
                await web.delete(live.pop(rng.randrange(len(live))))
            elif move < 0.75 and subject is not None:
                await web.revoke_subject(subject)
                live = [s for s in live if await web.get(s) is not None]
            elif move < 0.9:
                await web.touch(rng.choice(live))
            else:
                clock.advance(rng.randrange(HOUR // timedelta(milliseconds=1) // 2))
                live = [s for s in live if await web.get(s) is not None]
                if rng.random() < 0.5:
                    await web.reap()
        examined: list[int] = []
        assert await web.check(batch=3, progress=lambda n, _: examined.append(n)) == []
        assert examined == sorted(examined)
    finally:
        await store.close()


@pytest.mark.parametrize("layout", ["plain", "limited"])
async def test_a_check_walks_every_primary_of_a_cluster(
    redis_cluster_url: str, clock: ManualClock, layout: str
) -> None:
    """On a cluster the session keys are scanned node by node: sessions on every primary
    are examined, and a record lost on any of them is found."""
    store = await connect(redis_cluster_url, clock=clock)
    try:
        web = store.namespace("web", idle_ttl=HOUR, max_sessions_per_subject=LAYOUTS[layout])
        made = [await web.create(subject=f"user{n % 4}") for n in range(48)]
        examined: list[int] = []
        assert await web.check(batch=5, progress=lambda n, _: examined.append(n)) == []
        # each session once in the expiry index, once in a subject index, once as a key
        assert examined[-1] >= 3 * len(made)
        backend = store.backend
        assert isinstance(backend, RedisBackend)
        lost = made[::16]
        for session in lost:
            keys = backend.shard_keys("web", ids.shard_of(session.id))
            await backend.client.delete(keys.session + session.id)
        expected = sorted(
            (kind, s.id) for s in lost for kind in (EXPIRY_INDEX_ORPHAN, SUBJECT_INDEX_ORPHAN)
        )
        await assert_repaired(web, expected)
    finally:
        await store.close()


async def test_a_check_alongside_a_workload_finds_nothing(
    redis_setup: tuple[Setup, RedisSeeder],
) -> None:
    """What changes between the scan and the script that decides (a session deleted,
    rotated, touched, revoked) is no finding: every candidate is decided again in one atomic
    step. Checks (repairing: a false finding would be "repaired" into a real inconsistency)
    run step by step while sessions come and go."""
    setup, _ = redis_setup
    web = setup.web
    live = [(await web.create(subject=f"u{n % 5}")).id for n in range(60)]
    rng = random.Random(7)
    done = False

    async def workload() -> None:
        nonlocal done
        for _ in range(300):
            move = rng.random()
            if move < 0.3 or not live:
                live.append((await web.create(subject=f"u{rng.randrange(5)}")).id)
            elif move < 0.55:
                live.append((await web.rotate(live.pop(rng.randrange(len(live))))).id)
            elif move < 0.8:
                await web.delete(live.pop(rng.randrange(len(live))))
            elif move < 0.95:
                await web.touch(rng.choice(live))
            else:
                await web.revoke_subject(f"u{rng.randrange(5)}")
                live[:] = [s for s in live if await web.get(s) is not None]
        done = True

    async def checks() -> list[Finding]:
        found: list[Finding] = []
        while not done:
            found += await web.check(repair=True, batch=4)
        return found

    _, found = await asyncio.gather(workload(), checks())
    assert found == []
    assert await web.check() == []


async def test_a_check_stops_once_it_has_its_limit(
    redis_setup: tuple[Setup, RedisSeeder],
) -> None:
    setup, seeder = redis_setup
    lost = [await setup.web.create(id=ids.new_id(shard=shard), subject="a") for shard in (1, 5, 9)]
    for session in lost:
        await seeder.lose_record("web", session.id)
    first = await setup.web.check(limit=1, repair=True)
    assert 1 <= len(first) < 6  # stopped in the expiry index of one shard
    rest = await setup.web.check(repair=True)
    assert len(first) + len(rest) == 6
    assert await setup.web.check() == []
