"""The service's commands: serve, reap, and migrate from the original playground layout."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner
from redis.asyncio import Redis

from sessionary import ManualClock, connect, ids
from sessionary.cli import main
from sessionary.counters import Charge
from tests.servers import free_port


async def test_serve_answers_on_the_embedded_default(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONARY_")}
    log = (tmp_path / "serve.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sessionary",
        "serve",
        "--port",
        str(port),
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 20
            while True:  # wait for the server to come up (a readiness poll, not a clock)
                try:
                    health = await client.get("/healthz")
                    break
                except httpx.TransportError:
                    if process.returncode is not None or time.monotonic() > deadline:
                        pytest.fail((tmp_path / "serve.log").read_text())
                    await asyncio.sleep(0.05)
            assert health.json() == {"status": "ok"}
            assert (await client.get("/readyz")).status_code == 200
            session = await client.get("/api/v1/playground/session")
            assert session.status_code == 200
            assert session.json()["searches"]["limit"] == 50
        assert (tmp_path / "sessionary.db").exists()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await process.wait()
        log.close()


def test_serve_refuses_bad_settings(tmp_path: Path) -> None:
    config = tmp_path / "sessionary.toml"
    config.write_text("port = 8000\n[playground]\nsession_limt = 5\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code == 2  # the operator's mistake, as click's usage errors
    assert "playground.session_limt: unknown setting" in result.output


async def test_reap_once_reports_what_it_expired(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'reap.db'}"
    past = ManualClock(int(time.time() * 1000) - 13 * 3_600_000)  # beyond web's 12 h cap
    store = await connect(url, clock=past)
    web = store.namespace("web", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12))
    for _ in range(5):
        await web.create()
    quota = store.counters("playground")
    await quota.charge(Charge("ip:x", limit=5, window=timedelta(minutes=1)))
    await store.close()
    result = await asyncio.to_thread(CliRunner().invoke, main, ["reap", "--store", url])
    assert result.exit_code == 0, result.output
    assert "expired: web 5, playground 0, runs.leases 0, runs 0, conversations 0" in result.output
    assert "counters swept: playground 1" in result.output
    again = await asyncio.to_thread(CliRunner().invoke, main, ["reap", "--store", url])
    assert "expired: web 0, playground 0" in again.output


def test_reap_refuses_a_bad_interval() -> None:
    result = CliRunner().invoke(main, ["reap", "--store", "memory://", "--every", "often"])
    assert result.exit_code == 2
    assert "not a duration" in result.output


@pytest.fixture(params=["sqlite", "redis"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrated.db'}"
    return str(request.getfixturevalue("redis_url"))


async def test_migrate_from_the_legacy_layout_twice(
    redis_client: Redis, redis_prefix: str, redis_url: str, destination: str
) -> None:
    now = int(time.time() * 1000)
    as_string, as_hash, stale = ids.new_id(), ids.new_id(), ids.new_id()
    born = now - 2 * 3_600_000
    legacy = f"{redis_prefix}playground:session:"
    # written the way the original product writes them
    await redis_client.set(legacy + as_string, 7, px=6 * 3_600_000)
    await redis_client.hset(
        legacy + as_hash,
        mapping={
            "searches_used": 3,
            "created_at": datetime.fromtimestamp(born / 1000, tz=UTC).isoformat(),
            "indexed_repo": orjson.dumps(
                {
                    "repo_id": "r-1",
                    "github_url": "https://github.com/octo/hello",
                    "name": "hello",
                    "file_count": 42,
                    "indexed_at": born / 1000,
                }
            ).decode(),
        },
    )
    await redis_client.pexpire(legacy + as_hash, 22 * 3_600_000)
    await redis_client.set(legacy + "not-a-token", 1, px=60_000)
    # no TTL, born two days ago: its 24 h are over
    await redis_client.hset(
        legacy + stale, mapping={"searches_used": 1, "created_at": (now - 2 * 86_400_000) / 1000}
    )
    source = redis_url.split("?")[0]
    args = [
        "migrate",
        "--from-legacy-playground",
        source,
        "--pattern",
        legacy + "*",
        "--store",
        destination,
    ]
    first = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert first.exit_code == 0, first.output
    assert "migrated 2, already there 0, expired 1, skipped 1" in first.output
    second = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert "migrated 0, already there 2, expired 1, skipped 1" in second.output

    store = await connect(destination)
    try:
        playground = store.namespace("playground", absolute_ttl=timedelta(hours=24))
        quota = store.counters("playground")
        plain = await playground.get(as_string)
        assert plain is not None
        assert abs(plain.expires_at - (now + 6 * 3_600_000)) < 60_000  # the remaining TTL
        assert abs(plain.created_at - (now - 18 * 3_600_000)) < 60_000  # derived from it
        rich = await playground.get(as_hash)
        assert rich is not None
        assert abs(rich.created_at - born) < 1_000  # the original creation time
        assert rich.data["indexed_repo"]["name"] == "hello"
        assert rich.data["indexed_repo"]["file_count"] == 42
        assert await playground.get(stale) is None
        for token, used in ((as_string, 7), (as_hash, 3)):
            session = await playground.get(token)
            assert session is not None
            reading = await quota.read(
                Charge(f"session:{token}", limit=50, until=session.expires_at)
            )
            assert reading[f"session:{token}"].used == used
    finally:
        await store.close()
