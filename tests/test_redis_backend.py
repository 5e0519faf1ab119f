"""What only the Redis backend has to show: TTLs, slots, scripts, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.crc import key_slot

from sessionary import ManualClock, Namespace, Store, StoreUnavailable, connect, ids
from sessionary.backends.redis import RedisBackend
from sessionary.backends.redis.backend import DEFAULT_GRACE_MS
from sessionary.errors import TooManySessions
from sessionary.logs import Event
from sessionary.sessionize import Placement, SessionRow
from tests.servers import RedisClusterNodes, RedisServer, free_port

HOUR = timedelta(hours=1)


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    store = await connect(redis_url, clock=ManualClock())
    yield store
    await store.close()


async def keys_of(client: Redis, prefix: str) -> list[bytes]:
    return [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]


async def test_every_key_has_a_ttl_just_past_the_expiry_it_serves(
    store: Store, redis_client: Redis, redis_prefix: str
) -> None:
    web = store.namespace("web", idle_ttl=HOUR)
    session = await web.create(subject="u1", data={"a": 1})
    await web.touch(session.id)
    await web.update(session.id, metadata={"m": "1"})
    await web.consume(session.id, "q", limit=3)
    rotated = await web.rotate(session.id, subject="u2")
    await web.create()
    found = await keys_of(redis_client, redis_prefix)
    assert len(found) >= 3
    expected = HOUR // timedelta(milliseconds=1) + DEFAULT_GRACE_MS
    for key in found:
        ttl = await redis_client.pttl(key)
        assert expected - 5_000 < ttl <= expected, (key, ttl)
    session_key = next(k for k in found if k.endswith(rotated.id.encode()))
    assert await redis_client.pttl(session_key) > expected - 5_000


async def test_a_log_lives_as_long_as_its_session_from_its_first_event(
    store: Store, redis_client: Redis, redis_prefix: str
) -> None:
    """The append script sets a log's TTL once, when its first event creates it (later
    appends leave it: a touch or update moves both keys together), and trims by length in
    the XADD itself once the log ever held more than its bound, a batch included."""
    runs = store.namespace("runs", idle_ttl=HOUR, log_max_length=5)
    appended, updated = await runs.create(), await runs.create()
    await runs.append(appended.id, "e", 0, producer="w", seq=1)
    await runs.update(updated.id, data={"a": 1}, append=[Event("e", 0)])
    expected = HOUR // timedelta(milliseconds=1) + DEFAULT_GRACE_MS
    for session in (appended, updated):
        log = next(
            k
            for k in await keys_of(redis_client, redis_prefix)
            if b":l:" in k and k.endswith(session.id.encode())
        )
        assert expected - 5_000 < await redis_client.pttl(log) <= expected
    await runs.extend(appended.id, [Event("e", n, producer="w", seq=n + 1) for n in range(1, 8)])
    page = await runs.read(appended.id)
    assert [e.data for e in page.events] == [3, 4, 5, 6, 7]
    assert page.reset is not None
    cursors = await runs.extend(
        appended.id, [Event("e", "again", producer="w", seq=8), Event("e", 8, producer="w", seq=9)]
    )
    assert cursors[0] is None
    assert [e.data for e in (await runs.read(appended.id)).events] == [4, 5, 6, 7, 8]


async def test_a_sessions_keys_share_one_slot_and_shards_spread(
    store: Store, redis_client: Redis, redis_prefix: str
) -> None:
    web = store.namespace("web", idle_ttl=HOUR)
    for n in range(64):
        await web.create(subject=f"user-{n}")
    found = await keys_of(redis_client, redis_prefix)
    by_tag: dict[bytes, set[int]] = {}
    for key in found:
        tag = key[key.index(b"{") : key.index(b"}") + 1]
        by_tag.setdefault(tag, set()).add(key_slot(key))
    assert all(len(slots) == 1 for slots in by_tag.values())  # one tag, one slot
    assert len(by_tag) > 8  # 64 sessions land in most of the 16 shards
    assert len({slot for slots in by_tag.values() for slot in slots}) == len(by_tag)


async def test_scripts_are_reloaded_after_script_flush(store: Store, redis_client: Redis) -> None:
    web = store.namespace("web", idle_ttl=HOUR)
    session = await web.create(subject="u")
    await redis_client.script_flush()
    assert await web.touch(session.id) is not None
    await redis_client.script_flush()
    assert (await web.consume(session.id, "q", limit=1)).allowed
    await redis_client.script_flush()
    assert await web.revoke_subject("u") == 1  # the pipelined path reloads too


async def test_indexes_heal_when_redis_dropped_a_session_key(
    store: Store, redis_client: Redis, redis_prefix: str
) -> None:
    web = store.namespace("web", idle_ttl=HOUR)
    clock = store.clock
    assert isinstance(clock, ManualClock)
    lost = await web.create(subject="u")
    kept = await web.create(subject="u")
    backend = store.backend
    assert isinstance(backend, RedisBackend)
    await redis_client.delete(backend.shard_keys("web", ids.shard_of(lost.id)).session + lost.id)
    assert [s.id for s in await web.list_subject("u")] == [kept.id]
    clock.advance(HOUR)
    assert [s.id for s in await web.reap()] == [kept.id]  # the lost one leaves no event
    assert await keys_of(redis_client, redis_prefix) == []


async def test_revoke_spares_a_session_whose_subject_changed_meanwhile(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    web = store.namespace("web", idle_ttl=HOUR)
    stays = await web.create(subject="u")
    goes = await web.create(subject="u")
    backend = store.backend
    assert isinstance(backend, RedisBackend)
    read_index = backend._subject_ids

    async def index_then_race(ns: str, subject: str) -> list[list[str]]:
        found = await read_index(ns, subject)
        await web.update(stays.id, subject="v")  # between the index read and the scripts
        return found

    monkeypatch.setattr(backend, "_subject_ids", index_then_race)
    assert await web.revoke_subject("u") == 1
    assert await web.get(goes.id) is None
    kept = await web.get(stays.id)
    assert kept is not None
    assert kept.subject == "v"


async def test_key_prefixes_keep_applications_apart(redis_url: str, redis_prefix: str) -> None:
    clock = ManualClock()
    first = await connect(redis_url, clock=clock)
    other_url = redis_url.replace(redis_prefix, redis_prefix + "other:")
    second = await connect(other_url, clock=clock)
    try:
        a = first.namespace("web", idle_ttl=HOUR)
        b = second.namespace("web", idle_ttl=HOUR)
        session = await a.create(subject="same")
        assert await b.get(session.id) is None
        assert await b.list_subject("same") == []
        assert await b.count() == 0
        assert await a.count() == 1
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?prefix=bad{",
        "redis://127.0.0.1:6379/0?grace_ms=10",
        "redis://127.0.0.1:6379/0?grace_ms=soon",
        "redis://127.0.0.1:6379/0?protocol=3",
    ],
)
async def test_bad_redis_options_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        await connect(url)


async def test_shards_spread_over_the_nodes_of_a_cluster(
    redis_cluster: RedisClusterNodes, redis_cluster_url: str, redis_prefix: str
) -> None:
    store = await connect(redis_cluster_url, clock=ManualClock())
    try:
        web = store.namespace("web", idle_ttl=HOUR)
        sessions = [await web.create(subject=f"user-{n % 10}") for n in range(200)]
        per_node = []
        for node in redis_cluster.nodes:
            client = Redis(port=node.port)
            try:
                per_node.append(len(await keys_of(client, redis_prefix)))
            finally:
                await client.aclose()
        assert all(count > 0 for count in per_node), per_node
        assert sum(per_node) == 200 + 16 + 16  # sessions, expiry and subject index per shard
        assert len(await web.list_subject("user-3")) == 20
        assert await web.revoke_subject("user-3") == 20
        assert await web.count() == 180
        for session in sessions:
            await web.delete(session.id)
    finally:
        await store.close()


# -- outages --------------------------------------------------------------------------------


def every_operation(web: Namespace, session_id: str) -> list[Callable[[], Awaitable[Any]]]:
    jobs = web.store.queue("jobs")
    return [
        lambda: web.create(),
        lambda: web.get(session_id),
        lambda: web.touch(session_id),
        lambda: web.update(session_id, data={"x": 1}),
        lambda: web.consume(session_id, "q", limit=5),
        lambda: web.rotate(session_id),
        lambda: web.delete(session_id),
        lambda: web.list_subject("u"),
        lambda: web.revoke_subject("u"),
        lambda: web.reap(),
        lambda: web.count(),
        lambda: web.store.ping(),
        lambda: jobs.enqueue("job", b"x"),
        lambda: jobs.claim("w1", HOUR),
        lambda: jobs.renew("job", "w1", HOUR),
        lambda: jobs.ack("job", "w1"),
        lambda: jobs.depth(),
        lambda: jobs.wait(HOUR),
    ]


async def test_nothing_listening_raises_store_unavailable_at_once() -> None:
    store = await connect(f"redis://127.0.0.1:{free_port()}/0", clock=ManualClock())
    web = store.namespace("web", idle_ttl=HOUR)
    try:
        for operation in every_operation(web, ids.new_id()):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await operation()
            assert time.monotonic() - started < 1.0
    finally:
        await store.close()


async def test_a_stopped_server_is_unavailable_and_recovery_needs_no_help(
    private_redis: RedisServer,
) -> None:
    store = await connect(private_redis.url + "?socket_connect_timeout=1", clock=ManualClock())
    web = store.namespace("web", idle_ttl=HOUR)
    try:
        session = await web.create(subject="u")
        assert await web.touch(session.id) is not None
        private_redis.stop()
        for operation in every_operation(web, session.id):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await operation()
            assert time.monotonic() - started < 2.0
        private_redis.start()  # same port, empty (it keeps nothing on disk)
        assert await web.get(session.id) is None  # not found, and not an error
        fresh = await web.create(subject="u")
        assert await web.touch(fresh.id) is not None
        assert [s.id for s in await web.list_subject("u")] == [fresh.id]
    finally:
        await store.close()


async def test_a_server_that_stops_answering_times_out_as_unavailable(
    private_redis: RedisServer,
) -> None:
    store = await connect(private_redis.url + "?socket_timeout=0.3", clock=ManualClock())
    web = store.namespace("web", idle_ttl=HOUR)
    admin = Redis.from_url(private_redis.url)
    try:
        session = await web.create()
        await admin.execute_command("CLIENT", "PAUSE", "2000", "ALL")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await web.touch(session.id)
        assert time.monotonic() - started < 1.5
        await admin.execute_command("CLIENT", "UNPAUSE")
        assert await web.touch(session.id) is not None
    finally:
        await admin.aclose()
        await store.close()


async def test_a_namespace_with_a_session_limit_lives_in_one_slot_on_a_cluster(
    redis_cluster: RedisClusterNodes, redis_cluster_url: str, redis_prefix: str
) -> None:
    """A limit is one script over all of a subject's sessions: the namespace's 16 shards and
    its layout marker share one slot, on one primary; a namespace without a limit spreads."""
    store = await connect(redis_cluster_url, clock=ManualClock())
    try:
        logins = store.namespace(
            "logins", idle_ttl=HOUR, max_sessions_per_subject=2, on_max_sessions="evict_oldest"
        )
        spread = store.namespace("spread", idle_ttl=HOUR)
        for n in range(40):
            await logins.create(subject=f"user-{n % 4}")
            await spread.create(subject=f"user-{n % 4}")
        slots: dict[str, set[int]] = {"logins": set(), "spread": set()}
        for node in redis_cluster.nodes:
            client = Redis(port=node.port)
            try:
                for key in await keys_of(client, redis_prefix):
                    name = "logins" if b"{logins}" in key else "spread"
                    slots[name].add(key_slot(key))
            finally:
                await client.aclose()
        assert len(slots["logins"]) == 1
        assert len(slots["spread"]) > 8
        assert [len(await logins.list_subject(f"user-{n}")) for n in range(4)] == [2] * 4
    finally:
        await store.close()


async def test_a_session_limit_on_a_namespace_already_spread_is_refused_clearly(
    redis_url: str,
) -> None:
    """Sessions written without the limit sit in 16 slots, where its script cannot see them:
    a process that opens the namespace with a limit refuses to work on it, naming the way
    out, instead of enforcing a limit over part of the subject's sessions."""
    plain = await connect(redis_url, clock=ManualClock())
    limited = await connect(redis_url, clock=ManualClock())
    try:
        web = plain.namespace("web", idle_ttl=HOUR)
        await web.create(subject="u")
        strict = limited.namespace("web", idle_ttl=HOUR, max_sessions_per_subject=1)
        with pytest.raises(ValueError, match=r"spread over 16 Redis hash slots.*new namespace"):
            await strict.create(subject="u")
        with pytest.raises(ValueError, match="spread over 16"):
            await strict.list_subject("u")
        assert await web.count() == 1  # nothing written by the refused process
    finally:
        await plain.close()
        await limited.close()


async def test_a_process_without_the_limit_follows_a_limited_namespace(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Opened first with a limit, a namespace stays in one slot: a process that opens it
    without the limit reads and writes the same keys (and warns that it does not enforce
    the limit), so no session is ever out of the others' sight."""
    limited = await connect(redis_url, clock=ManualClock())
    plain = await connect(redis_url, clock=ManualClock())
    try:
        strict = limited.namespace("web", idle_ttl=HOUR, max_sessions_per_subject=2)
        first = await strict.create(subject="u")
        loose = plain.namespace("web", idle_ttl=HOUR)
        with caplog.at_level("WARNING", logger="sessionary.redis"):
            assert await loose.get(first.id) is not None
        assert "does not enforce" in caplog.text
        second = await loose.create(subject="u")
        assert {s.id for s in await strict.list_subject("u")} == {first.id, second.id}
        with pytest.raises(TooManySessions):
            await strict.create(subject="u")
    finally:
        await plain.close()
        await limited.close()


# -- work queues ----------------------------------------------------------------------------


def redis_backend(store: Store) -> RedisBackend:
    backend = store.backend
    assert isinstance(backend, RedisBackend)
    return backend


async def test_a_queues_keys_share_one_slot_and_live_no_longer_than_its_items(
    store: Store, redis_client: Redis, redis_prefix: str
) -> None:
    """Every queue call is one script over the queue's keys, so they share a slot; while
    items are in the queue nothing of it expires, and its last ack removes every key."""
    backend = redis_backend(store)
    for n in range(3):
        assert await backend.enqueue("jobs", f"item-{n}", b"x", 1_000)
    held = await backend.claim_work("jobs", "w1", 1_000, 60_000, 2)
    keys = await keys_of(redis_client, redis_prefix)
    assert sorted(keys) == sorted(k.encode() for k in backend._queue_keys("jobs"))
    assert len({key_slot(key) for key in keys}) == 1
    assert [await redis_client.pttl(key) for key in keys] == [-1] * 4
    for item in held:
        assert await backend.ack_work("jobs", item.id, "w1")
    [last] = await backend.claim_work("jobs", "w1", 2_000, 60_000, 1)
    assert last.id == "item-2"
    assert await backend.ack_work("jobs", last.id, "w1")
    assert await keys_of(redis_client, redis_prefix) == []


async def test_a_lease_lapses_by_the_stores_clock_never_the_servers_idle_time(
    store: Store, redis_client: Redis
) -> None:
    """The consumer group's idle times are the server's clock: made to look idle for a day,
    an item under lease stays with its holder; lapsed on the store's clock, an item the
    server saw claimed a moment ago goes to the next claimer."""
    backend = redis_backend(store)
    stream = backend._queue_keys("jobs")[0]
    assert await backend.enqueue("jobs", "a", b"x", 0)
    [item] = await backend.claim_work("jobs", "w1", 0, 1_000, 1)
    [(entry_id, _)] = await redis_client.xrange(stream)
    await redis_client.xclaim(stream, "workers", "w1", 0, [entry_id], idle=86_400_000, justid=True)
    [pending] = await redis_client.xpending_range(stream, "workers", "-", "+", 1)
    assert pending["time_since_delivered"] >= 86_400_000
    assert await backend.claim_work("jobs", "w2", 999, 1_000, 1) == []
    assert await backend.queue_depth("jobs", 999) == (0, 1)
    [again] = await backend.claim_work("jobs", "w2", 1_000, 1_000, 1)
    assert (again.id, again.deliveries, again.lease_until) == ("a", 2, 2_000)
    assert not await backend.ack_work("jobs", "a", "w1")
    assert await backend.ack_work("jobs", "a", "w2")
    assert item.deliveries == 1


async def test_items_lapsed_together_are_claimed_in_enqueue_order(store: Store) -> None:
    """Held items sit in the leases set by seq zero-padded: ties in lease_until keep the
    enqueue order even where the seqs' digits differ in number (9 before 10)."""
    backend = redis_backend(store)
    for n in range(12):
        assert await backend.enqueue("jobs", f"item-{n}", b"x", 0)
    assert len(await backend.claim_work("jobs", "w1", 0, 1_000, 12)) == 12
    lapsed = await backend.claim_work("jobs", "w2", 1_000, 1_000, 12)
    assert [item.id for item in lapsed] == [f"item-{n}" for n in range(12)]


async def test_a_wait_started_before_the_queue_emptied_wakes_on_the_next_item(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiter's position is the queue's last seq; an emptied queue leaves no counter, yet
    the seqs of a queue started again begin past it (at now * 1000), so the next item still
    wakes every waiter. (A real wait, bounded loosely.)"""
    backend = redis_backend(store)
    for n in range(3):  # seqs 1_000_000, then one up each: more than one a ms
        assert await backend.enqueue("jobs", f"item-{n}", b"x", 1_000)
    items = await backend.claim_work("jobs", "w1", 1_000, 60_000, 3)
    positioned = asyncio.Event()
    wait_stream = backend.waits.wait

    async def wait_after_position(key: str, after: int, timeout_ms: int) -> list[Any]:
        positioned.set()
        return await wait_stream(key, after, timeout_ms)

    monkeypatch.setattr(backend.waits, "wait", wait_after_position)
    waiting = asyncio.ensure_future(backend.wait_queue("jobs", 10_000))
    await positioned.wait()
    for item in items:
        assert await backend.ack_work("jobs", item.id, "w1")
    assert not waiting.done()
    started = time.monotonic()
    assert await backend.enqueue("jobs", "next", b"x", 1_001)
    await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 5


async def test_the_group_keeps_only_the_consumers_that_hold_items(
    store: Store, redis_client: Redis
) -> None:
    """Workers come and go under names of their own: a consumer leaves the group once it
    holds nothing (its last ack, or its last lapsed item taken over), so a queue that never
    empties does not keep every name it ever saw."""
    backend = redis_backend(store)
    stream = backend._queue_keys("jobs")[0]
    for n in range(12):
        assert await backend.enqueue("jobs", f"item-{n}", b"x", 0)
    assert len(await backend.claim_work("jobs", "keeper", 0, 60_000, 2)) == 2
    for n in range(5):
        [item] = await backend.claim_work("jobs", f"passing-{n}", 0, 60_000, 1)
        assert await backend.ack_work("jobs", item.id, f"passing-{n}")
    assert len(await backend.claim_work("jobs", "lapsing", 0, 1_000, 2)) == 2
    assert len(await backend.claim_work("jobs", "busy", 0, 60_000, 2)) == 2
    [first, second] = await backend.claim_work("jobs", "taker", 1_000, 60_000, 2)
    assert (first.deliveries, second.deliveries) == (2, 2)

    async def consumers() -> set[str]:
        found = await redis_client.xinfo_consumers(stream, "workers")
        return {c["name"].decode() for c in found}

    assert await consumers() == {"keeper", "busy", "taker"}
    assert await backend.ack_work("jobs", first.id, "taker")
    assert await consumers() == {"keeper", "busy", "taker"}  # it still holds one
    assert await backend.ack_work("jobs", second.id, "taker")
    assert await consumers() == {"keeper", "busy"}


async def test_an_outbox_entry_written_before_the_rows_numbers_were_packed_is_read(
    store: Store, redis_client: Redis, redis_prefix: str
) -> None:
    """Entries left in the outbox by the previous version (18 values a row in the JSON,
    times as offsets from the base; no field n) drain as they always did."""
    old = (
        b'["1700000000000","11",["s_n0","d1","s_n1","d1"],["s_n0","d1","p1",0,0,1,1,"\\/a",'
        b'"\\/a","https:\\/\\/r.example\\/","s",null,null,null,null,250,2,true,"s_n1","d1",'
        b'null,60000,60000,1,0,"\\/b","\\/b",null,null,null,null,null,null,0,1,false],'
        b'["s_n0",-1,"s_n1",59999],["s_n0",1]]'
    )  # as the previous sessionize.lua wrote it, for two hits (not kept: no field h)
    await redis_client.xadd(f"{redis_prefix}{{an:proj}}:o", {"e": old})
    [entry] = await store.sessionization.outbox("proj", 10)
    assert entry.placements == [
        Placement("joined", "s_n0", "d1"),
        Placement("joined", "s_n1", "d1"),
    ]
    first = SessionRow(
        "s_n0", "proj", "d1", "p1", 1_700_000_000_000, 1_700_000_000_000, 1, 1, "/a", "/a",
        "https://r.example/", "s", None, None, None, None, 250, 2, True,
    )  # fmt: skip
    second = SessionRow(
        "s_n1", "proj", "d1", None, 1_700_000_060_000, 1_700_000_060_000, 1, 0, "/b", "/b",
        None, None, None, None, None, None, 0, 1, False,
    )  # fmt: skip
    assert entry.sessions == [first, second]
    assert entry.started == [("s_n0", 1_699_999_999_999), ("s_n1", 1_700_000_059_999)]
    assert entry.ended == [("s_n0", 1_700_000_000_001)]
