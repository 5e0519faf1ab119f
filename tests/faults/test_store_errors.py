"""Every error a store answers that is not a bad request of ours is `StoreUnavailable` (a 503
with Retry-After), never a 500; our own bugs stay bugs. On private redis-servers put in each
state, and on SQLite files made to fail."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import redis
from redis.exceptions import ResponseError

from sessionary import Store, StoreUnavailable, connect, ids
from sessionary.analytics.events import TrackEvent
from sessionary.analytics.service import Sessionizer
from sessionary.web.app import create_app
from sessionary.web.settings import Settings
from tests.servers import RedisServer, free_port

HOUR = timedelta(hours=1)
ADMIN = "an-admin-key-long-enough"


def _db99(server: RedisServer, client: redis.Redis) -> tuple[str, Callable[[], None]]:
    return f"redis://127.0.0.1:{server.port}/99", lambda: None


def _noperm(server: RedisServer, client: redis.Redis) -> tuple[str, Callable[[], None]]:
    client.execute_command("ACL", "SETUSER", "weak", "on", ">pw", "~*", "+ping", "+hgetall")
    return f"redis://weak:pw@127.0.0.1:{server.port}/0", lambda: None


def _readonly(server: RedisServer, client: redis.Redis) -> tuple[str, Callable[[], None]]:
    client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    return server.url, lambda: client.execute_command("REPLICAOF", "NO", "ONE")


def _masterdown(server: RedisServer, client: redis.Redis) -> tuple[str, Callable[[], None]]:
    client.config_set("replica-serve-stale-data", "no")
    client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    return server.url, lambda: client.execute_command("REPLICAOF", "NO", "ONE")


def _oom(server: RedisServer, client: redis.Redis) -> tuple[str, Callable[[], None]]:
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    return server.url, lambda: client.config_set("maxmemory", "0")


def _busy(server: RedisServer, client: redis.Redis) -> tuple[str, Callable[[], None]]:
    client.config_set("busy-reply-threshold", "20")
    spinning = subprocess.Popen(
        ["redis-cli", "-p", str(server.port), "EVAL", "while true do end", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while True:  # until the script is running past the threshold
        try:
            client.get("probe")
        except redis.exceptions.ResponseError as exc:
            if "BUSY" in str(exc):
                break
        assert time.monotonic() < deadline, "the busy script did not start"
        time.sleep(0.02)

    def undo() -> None:
        client.script_kill()
        spinning.wait(timeout=5)

    return server.url, undo


STATES = {
    "db_index_out_of_range": (_db99, "DB index is out of range"),
    "noperm": (_noperm, "no permissions"),
    "readonly": (_readonly, "read only replica"),
    "masterdown": (_masterdown, "MASTERDOWN"),
    "oom": (_oom, "maxmemory"),
    "busy": (_busy, "BUSY"),
}


@pytest.fixture
def admin(private_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=private_redis.port)
    yield client
    client.close()


async def _writes_fail(store: Store, expected: str) -> None:
    web = store.namespace("web", idle_ttl=HOUR)
    with pytest.raises(StoreUnavailable, match=expected):
        await web.create(data={"a": 1})
    assert not store.breaker.open  # a quick refusal: the next call gets its own answer


@pytest.mark.parametrize("state", sorted(STATES))
async def test_a_redis_refusing_for_its_state_is_store_unavailable(
    state: str, private_redis: RedisServer, admin: redis.Redis
) -> None:
    setup, expected = STATES[state]
    url, undo = setup(private_redis, admin)
    store = await connect(url)
    try:
        web = store.namespace("web", idle_ttl=HOUR)
        await _writes_fail(store, expected)
        # the cross-shard pipelines and the analytics scripts too
        if state in ("readonly", "oom"):  # a replica and a full server still read, at once
            assert await web.count() == 0
        else:
            with pytest.raises(StoreUnavailable, match=expected):
                await web.count()
        sessionizer = Sessionizer(store)
        with pytest.raises(StoreUnavailable):
            await sessionizer.ingest("shop", [TrackEvent.parse({"name": "x", "device_id": "d"})])
    finally:
        undo()
        await store.close()
    if state not in ("db_index_out_of_range", "noperm"):  # they hold for good
        store = await connect(url)
        try:  # once the server is well, the same URL works again: no restart
            created = await store.namespace("web", idle_ttl=HOUR).create(data={"a": 1})
            assert created.version == 1
        finally:
            await store.close()


async def test_a_cluster_node_serving_no_slot_is_store_unavailable(tmp_path: Path) -> None:
    node = RedisServer(
        tmp_path,
        None,
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str(tmp_path / "nodes.conf"),
    )
    node.start()
    try:
        store = await connect(node.url)
        try:
            await _writes_fail(store, "CLUSTERDOWN")
        finally:
            await store.close()
    finally:
        node.stop()


async def test_our_own_bugs_are_not_disguised_as_outages(
    private_redis: RedisServer, admin: redis.Redis
) -> None:
    """WRONGTYPE means we wrote something else under our key: a bug, raised as it is (the
    service answers 500 and logs the traceback), not a 503 that would hide it."""
    store = await connect(private_redis.url)
    try:
        session_id = ids.new_id()
        admin.set(f"sessionary:{{web:{ids.shard_of(session_id):02d}}}:s:{session_id}", "x")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await store.namespace("web", idle_ttl=HOUR).get(session_id)
    finally:
        await store.close()


@pytest_asyncio.fixture
async def oom_service(
    private_redis: RedisServer, admin: redis.Redis
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(store=private_redis.url, api_keys=[ADMIN], reaper={"enabled": False})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            _oom(private_redis, admin)
            yield client


async def test_the_service_answers_503_with_retry_after_for_a_full_redis(
    oom_service: httpx.AsyncClient,
) -> None:
    response = await oom_service.post(
        "/v1/namespaces/web/sessions",
        json={"data": {}},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "store_unavailable"
    assert int(response.headers["Retry-After"]) > 0


# -- SQLite ---------------------------------------------------------------------------------


async def fill(store: Store) -> None:
    web = store.namespace("filler", idle_ttl=HOUR)
    for _ in range(1000):
        await web.create(data={"blob": "x" * 4000})


async def test_a_full_sqlite_disk_is_store_unavailable(tiny_disk: Path) -> None:
    store = await connect(f"sqlite:///{tiny_disk / 'store.db'}")
    try:
        with pytest.raises(StoreUnavailable, match="full"):
            await fill(store)
        assert not store.breaker.open  # a quick refusal: reads go on at once
        events = [
            TrackEvent.parse({"name": "view", "path": "/" + "p" * 900, "device_id": f"d{n}"})
            for n in range(200)
        ]
        with pytest.raises(StoreUnavailable, match="full"):
            await Sessionizer(store).ingest("shop", events)
        assert await store.namespace("filler", idle_ttl=HOUR).count() > 0
    finally:
        await store.close()


# -- readiness proves a write ---------------------------------------------------------------


async def ready(store: Store) -> httpx.Response:
    app = create_app(Settings(reaper={"enabled": False}), store=store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/readyz")


def assert_not_ready(answer: httpx.Response, why: str) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "store_unavailable"
    assert why in answer.json()["message"]
    assert int(answer.headers["Retry-After"]) > 0


async def test_readyz_is_503_on_a_full_sqlite_disk(tiny_disk: Path) -> None:
    store = await connect(f"sqlite:///{tiny_disk / 'store.db'}")
    try:
        assert (await ready(store)).status_code == 200
        with pytest.raises(StoreUnavailable):
            await fill(store)
        assert_not_ready(await ready(store), "full")
    finally:
        await store.close()


@pytest.mark.parametrize("state", ["readonly", "oom"])
async def test_readyz_is_503_on_a_redis_that_reads_but_cannot_write(
    state: str, private_redis: RedisServer, admin: redis.Redis
) -> None:
    store = await connect(private_redis.url)
    outage = store.breaker.outage
    assert outage is not None
    later = [0.0]
    outage.clock = lambda: time.monotonic() + later[0]
    try:
        assert (await ready(store)).status_code == 200
        setup, expected = STATES[state]
        _, undo = setup(private_redis, admin)
        await store.ping()  # it answers a plain ping...
        assert_not_ready(await ready(store), expected)  # ...but takes no write: not ready
        undo()
        assert_not_ready(await ready(store), "lately")  # it failed a moment ago
        later[0] += outage.settle
        assert (await ready(store)).status_code == 200
    finally:
        await store.close()


async def test_an_sqlite_file_locked_past_busy_timeout_is_store_unavailable_then_fast(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    store = await connect(f"sqlite:///{path}?busy_timeout_ms=300")
    web = store.namespace("web", idle_ttl=HOUR)
    await web.create()
    other = sqlite3.connect(path, isolation_level=None)  # another process's writer, say
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"locked|busy"):
            await web.create()
        assert 0.25 <= time.monotonic() - started < 3
        started = time.monotonic()  # it waited for nothing: the next call does not wait
        with pytest.raises(StoreUnavailable, match="failing fast"):
            await web.create()
        assert time.monotonic() - started < 0.05
        other.execute("ROLLBACK")
    finally:
        other.close()
        await store.close()


async def test_an_sqlite_bug_fails_its_own_call_and_not_the_batch_it_shared(
    tmp_path: Path,
) -> None:
    """A statement refused for a reason of ours (here a constraint: a trigger someone added)
    is that call's error, raised as it is; the calls that shared its group commit were rolled
    back with it and run again: they succeed, and nothing is a StoreUnavailable."""
    path = tmp_path / "store.db"
    store = await connect(f"sqlite:///{path}")
    try:
        web = store.namespace("web", idle_ttl=HOUR)
        await web.count()
        with sqlite3.connect(path) as other:
            other.execute(
                "CREATE TRIGGER refuse_boom BEFORE INSERT ON sessions WHEN NEW.subject = 'boom' "
                "BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
            )
        outcomes = await asyncio.gather(
            *(web.create(subject="boom" if n == 5 else f"u{n}") for n in range(10)),
            return_exceptions=True,
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(failed) == 1
        assert isinstance(failed[0], sqlite3.IntegrityError)
        assert not isinstance(failed[0], StoreUnavailable)
        assert await web.count() == 9
    finally:
        await store.close()
