"""Playground sessions on every backend: the session endpoint, the guarded search and its
quotas (session, IP, global, session creation), refunds, the repository slot, trusted
proxies, and the store going down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse

from sessionary import ManualClock, Store, connect, ids
from sessionary.clock import iso_utc
from sessionary.http.metrics import Metrics
from sessionary.playground import Playground, PlaygroundSettings, SearchGrant
from tests.servers import RedisServer
from tests.web.conftest import client_for

DAY_MS = 86_400_000


def build_app(store: Store | str, metrics: Metrics | None = None, **settings: Any) -> FastAPI:
    playground = Playground(store, PlaygroundSettings(**settings), metrics=metrics)
    app = FastAPI()
    playground.install(app)

    @app.get("/api/search")
    async def search(
        q: str, grant: SearchGrant = Depends(playground.search_quota)
    ) -> dict[str, Any]:
        return {"q": q, "metered": grant.metered}

    @app.get("/api/search-raises", dependencies=[Depends(playground.search_quota)])
    async def search_raises() -> None:
        raise HTTPException(502, "the search backend failed")

    @app.get("/api/search-returns-error", dependencies=[Depends(playground.search_quota)])
    async def search_returns_error() -> JSONResponse:
        return JSONResponse({"error": "search_failed"}, status_code=500)

    return app


def plant(client: httpx.AsyncClient, token: str) -> None:
    """Replace the visitor's cookie with `token`, as a forger would."""
    client.cookies.clear()
    client.cookies.set("pg_session", token, domain="testserver.local")


@pytest.fixture
def visitor(store: Store) -> Callable[..., httpx.AsyncClient]:
    apps: dict[tuple[tuple[str, Any], ...], FastAPI] = {}

    def make(ip: str = "203.0.113.7", **settings: Any) -> httpx.AsyncClient:
        key = tuple(sorted(settings.items()))
        if key not in apps:
            apps[key] = build_app(store, **settings)
        return client_for(apps[key], ip)

    return make


async def test_the_session_endpoint_creates_once_and_shows_no_token(
    visitor: Callable[..., httpx.AsyncClient], clock: ManualClock
) -> None:
    async with visitor() as client:
        first = await client.get("/api/v1/playground/session")
        assert first.status_code == 200
        cookie = first.headers["set-cookie"]
        token = client.cookies["pg_session"]
        assert cookie.startswith(f"pg_session={token}; Path=/; Max-Age=86400; Secure; HttpOnly")
        assert "SameSite=Lax" in cookie
        body = first.json()
        assert body == {
            "session_id": f"{token[:8]}...",
            "created_at": iso_utc(clock.now_ms()),
            "expires_at": iso_utc(clock.now_ms() + DAY_MS),
            "indexed_repo": None,
            "searches": {"used": 0, "limit": 50, "remaining": 50},
        }
        assert token not in first.text
        clock.advance(timedelta(hours=23))
        again = await client.get("/api/v1/playground/session")
        assert "set-cookie" not in again.headers
        assert again.json()["created_at"] == body["created_at"]
        assert again.json()["expires_at"] == body["expires_at"]  # never stretched by use
        clock.advance(timedelta(hours=1))
        renewed = await client.get("/api/v1/playground/session")
        assert renewed.json()["created_at"] == iso_utc(clock.now_ms())
        assert client.cookies["pg_session"] != token


async def test_a_forged_cookie_gets_a_new_session_and_no_inherited_quota(
    visitor: Callable[..., httpx.AsyncClient],
) -> None:
    async with visitor() as client:
        await client.get("/api/v1/playground/session")
        for _ in range(3):
            assert (await client.get("/api/search", params={"q": "x"})).status_code == 200
        real = client.cookies["pg_session"]
        forged = ids.new_id()
        plant(client, forged)
        view = await client.get("/api/v1/playground/session")
        assert view.json()["searches"]["used"] == 0
        assert client.cookies["pg_session"] not in (forged, real)
        plant(client, "not even a token")
        assert (await client.get("/api/v1/playground/session")).json()["searches"]["used"] == 0


async def test_120_parallel_searches_on_one_session_give_exactly_50(
    visitor: Callable[..., httpx.AsyncClient], clock: ManualClock
) -> None:
    async with visitor() as client:
        view = (await client.get("/api/v1/playground/session")).json()
        responses = await asyncio.gather(
            *(client.get("/api/search", params={"q": str(n)}) for n in range(120))
        )
        assert sorted(r.status_code for r in responses) == [200] * 50 + [429] * 70
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.json() | {"message": ""} == {
            "error": "quota_exceeded",
            "message": "",
            "scope": "session",
            "limit": 50,
            "remaining": 0,
            "resets_at": view["expires_at"],
        }
        assert refused.headers["retry-after"] == str(DAY_MS // 1000)
        assert refused.headers["ratelimit-limit"] == "50"
        assert refused.headers["ratelimit-remaining"] == "0"
        assert refused.headers["ratelimit-reset"] == str(DAY_MS // 1000)
        ok = next(r for r in responses if r.status_code == 200)
        assert int(ok.headers["ratelimit-remaining"]) < 50
        after = (await client.get("/api/v1/playground/session")).json()["searches"]
        assert after == {"used": 50, "limit": 50, "remaining": 0}


async def test_dropping_the_cookie_is_still_held_by_the_ip_limit(
    visitor: Callable[..., httpx.AsyncClient], clock: ManualClock
) -> None:
    limits = {"ip_limit": 5, "sessions_per_ip": 100}
    first_charge = clock.now_ms()
    async with visitor(**limits) as client:
        for n in range(5):
            client.cookies.clear()
            assert (await client.get("/api/search", params={"q": str(n)})).status_code == 200
        client.cookies.clear()
        refused = await client.get("/api/search", params={"q": "more"})
        assert refused.status_code == 429
        body = refused.json()
        assert (body["scope"], body["limit"]) == ("ip", 5)
        assert body["resets_at"] == iso_utc(first_charge + DAY_MS)  # the real window end
    async with visitor(ip="198.51.100.9", **limits) as other:
        assert (await other.get("/api/search", params={"q": "x"})).status_code == 200


async def test_session_creation_is_limited_per_ip(
    visitor: Callable[..., httpx.AsyncClient],
) -> None:
    async with visitor(sessions_per_ip=3) as client:
        for _ in range(3):
            client.cookies.clear()
            assert (await client.get("/api/v1/playground/session")).status_code == 200
        client.cookies.clear()
        refused = await client.get("/api/v1/playground/session")
        assert (refused.status_code, refused.json()["scope"]) == (429, "ip")


async def test_the_global_limit_spans_clients_and_a_refusal_charges_nothing(
    visitor: Callable[..., httpx.AsyncClient],
) -> None:
    for n in range(4):
        async with visitor(ip=f"198.51.100.{n}", global_limit=4) as client:
            assert (await client.get("/api/search", params={"q": "x"})).status_code == 200
    async with visitor(ip="198.51.100.99", global_limit=4) as late:
        refused = await late.get("/api/search", params={"q": "x"})
        assert (refused.status_code, refused.json()["scope"]) == (429, "global")
        view = (await late.get("/api/v1/playground/session")).json()
        assert view["searches"]["used"] == 0  # all or nothing: the session was not charged


async def test_a_failing_search_is_refunded(visitor: Callable[..., httpx.AsyncClient]) -> None:
    async with visitor() as client:
        await client.get("/api/v1/playground/session")
        raised = await client.get("/api/search-raises")
        assert raised.status_code == 502
        returned = await client.get("/api/search-returns-error")
        assert returned.status_code == 500
        assert (await client.get("/api/search", params={"q": "x"})).status_code == 200
        view = (await client.get("/api/v1/playground/session")).json()
        assert view["searches"]["used"] == 1


async def test_the_repository_slot(
    visitor: Callable[..., httpx.AsyncClient], clock: ManualClock
) -> None:
    repo = {"github_url": "https://github.com/octo/hello", "name": "hello", "file_count": 12}
    async with visitor(repo_ttl="2h") as client:
        no_session = await client.put("/api/v1/playground/session/indexed-repo", json=repo)
        assert (no_session.status_code, no_session.json()["error"]) == (404, "session_not_found")
        await client.get("/api/v1/playground/session")
        taken = await client.put("/api/v1/playground/session/indexed-repo", json=repo)
        assert taken.status_code == 201
        record = taken.json()["indexed_repo"]
        assert record["expires_at"] == iso_utc(clock.now_ms() + 2 * 3_600_000)
        again = await client.put(
            "/api/v1/playground/session/indexed-repo", json={**repo, "name": "other"}
        )
        assert again.status_code == 409
        assert again.json()["error"] == "already_indexed"
        assert again.json()["indexed_repo"]["name"] == "hello"
        assert (await client.get("/api/v1/playground/session")).json()["indexed_repo"] == record
        assert (await client.delete("/api/v1/playground/session/indexed-repo")).status_code == 204
        assert (await client.get("/api/v1/playground/session")).json()["indexed_repo"] is None
        assert (
            await client.put("/api/v1/playground/session/indexed-repo", json=repo)
        ).status_code == 201
        clock.advance(timedelta(hours=2))  # the repo expired; the session has not
        assert (await client.get("/api/v1/playground/session")).json()["indexed_repo"] is None
        assert (
            await client.put("/api/v1/playground/session/indexed-repo", json=repo)
        ).status_code == 201
        bad = await client.put(
            "/api/v1/playground/session/indexed-repo",
            json={**repo, "github_url": "javascript:alert(1)"},
        )
        assert (bad.status_code, bad.json()["error"]) == (422, "validation_error")


async def test_30_parallel_reservations_give_exactly_one(
    visitor: Callable[..., httpx.AsyncClient],
) -> None:
    async with visitor() as client:
        await client.get("/api/v1/playground/session")
        responses = await asyncio.gather(
            *(
                client.put(
                    "/api/v1/playground/session/indexed-repo",
                    json={"github_url": f"https://github.com/o/r{n}", "name": f"r{n}"},
                )
                for n in range(30)
            )
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] + [409] * 29
        winner = next(r for r in responses if r.status_code == 201).json()["indexed_repo"]
        held = (await client.get("/api/v1/playground/session")).json()["indexed_repo"]
        assert held == winner


async def test_trusted_proxies_name_the_client(store: Store) -> None:
    app = build_app(store, ip_limit=1, sessions_per_ip=100, trusted_proxies=["10.0.0.0/8"])
    async with client_for(app, "10.0.0.5") as proxy:
        for client_ip in ("198.51.100.1", "198.51.100.2"):
            proxy.cookies.clear()
            hop = {"X-Forwarded-For": f"{client_ip}, 10.0.0.9"}
            assert (
                await proxy.get("/api/search", params={"q": "x"}, headers=hop)
            ).status_code == 200
        proxy.cookies.clear()
        again = {"X-Forwarded-For": "spoofed, 198.51.100.1, 10.0.0.9"}
        assert (await proxy.get("/api/search", params={"q": "x"}, headers=again)).status_code == 429
    async with client_for(app, "192.0.2.50") as untrusted:
        spoof = {"X-Forwarded-For": "198.51.100.77"}
        assert (
            await untrusted.get("/api/search", params={"q": "x"}, headers=spoof)
        ).status_code == 200
        untrusted.cookies.clear()
        other = {"X-Forwarded-For": "198.51.100.78"}  # ignored: the peer is not a proxy
        assert (
            await untrusted.get("/api/search", params={"q": "x"}, headers=other)
        ).status_code == 429


async def test_only_a_keyed_hash_of_the_ip_is_stored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pg.db'}"
    opened = await connect(url)
    try:
        async with client_for(build_app(opened), "198.51.100.42") as client:
            assert (await client.get("/api/search", params={"q": "x"})).status_code == 200
    finally:
        await opened.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "pg.db") as db:
        dump = "\n".join(db.iterdump())
    assert "198.51.100.42" not in dump
    assert "ip:" in dump


# -- the store is down -------------------------------------------------------------------------


async def test_store_down_503_for_the_session_fail_open_for_searches(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    app = build_app(private_redis.url + "?socket_connect_timeout=0.5", metrics=metrics)
    async with client_for(app) as client:
        assert (await client.get("/api/v1/playground/session")).status_code == 200
        private_redis.stop()
        down = await client.get("/api/v1/playground/session")
        assert down.status_code == 503
        assert down.headers["retry-after"] == "30"
        assert down.json() | {"message": ""} == {
            "error": "store_unavailable",
            "message": "",
            "retry_after": 30,
        }
        with caplog.at_level(logging.WARNING, logger="sessionary.playground"):
            for _ in range(3):
                passed = await client.get("/api/search", params={"q": "x"})
                assert (passed.status_code, passed.json()["metered"]) == (200, False)
        said = [r for r in caplog.records if r.name == "sessionary.playground"]
        assert len([r for r in said if "unavailable" in r.getMessage()]) == 1
        text = metrics.render().decode()
        assert 'sessionary_fail_open_total{where="playground_search"} 3.0' in text
        private_redis.start()
        client.cookies.clear()
        back = await client.get("/api/v1/playground/session")
        assert back.status_code == 200
        metered = await client.get("/api/search", params={"q": "x"})
        assert metered.json()["metered"] is True


async def test_fail_closed_searches_when_configured(private_redis: RedisServer) -> None:
    app = build_app(
        private_redis.url + "?socket_connect_timeout=0.5", search_when_store_down="fail_closed"
    )
    async with client_for(app) as client:
        private_redis.stop()
        refused = await client.get("/api/search", params={"q": "x"})
        assert (refused.status_code, refused.json()["error"]) == (503, "store_unavailable")


async def test_a_guard_in_an_app_without_sessionarys_handlers_still_answers_429(
    store: Store,
) -> None:
    playground = Playground(store, PlaygroundSettings(session_limit=1))
    app = FastAPI()
    app.include_router(playground.router, prefix="/api/v1/playground")  # no install()

    @app.get("/api/search", dependencies=[Depends(playground.search_quota)])
    async def search() -> dict[str, Any]:
        return {}

    async with client_for(app) as client:
        assert (await client.get("/api/search")).status_code == 200
        refused = await client.get("/api/search")
        assert refused.status_code == 429
        assert refused.json()["detail"]["error"] == "quota_exceeded"
        assert refused.headers["retry-after"]


# -- layers counting by sliding windows and gcra -----------------------------------------------


async def test_gcra_on_the_ip_layer_says_the_real_time_until_the_next_search(
    visitor: Callable[..., httpx.AsyncClient], clock: ManualClock
) -> None:
    """4 per minute refilled evenly: a burst of 4, then one search every 15 s."""
    rate = {"ip_algorithm": "gcra", "ip_limit": 4, "ip_window": "1m"}
    burst_at = clock.now_ms()
    async with visitor(**rate) as client:
        for n in range(4):
            assert (await client.get("/api/search", params={"q": str(n)})).status_code == 200
        clock.advance(4_000)
        refused = await client.get("/api/search", params={"q": "more"})
        assert refused.status_code == 429
        assert refused.json() | {"message": ""} == {
            "error": "quota_exceeded",
            "message": "",
            "scope": "ip",
            "limit": 4,
            "remaining": 0,
            "resets_at": iso_utc(burst_at + 60_000),  # full again: the 4 refilled
        }
        assert refused.headers["retry-after"] == "11"  # one refilled 15 s after the burst
        assert refused.headers["ratelimit-reset"] == "11"
        assert iso_utc(burst_at + 15_000) in refused.json()["message"]
        clock.advance(10_999)
        almost = await client.get("/api/search", params={"q": "more"})
        assert (almost.status_code, almost.headers["retry-after"]) == (429, "1")
        clock.advance(1)
        assert (await client.get("/api/search", params={"q": "more"})).status_code == 200
        again = await client.get("/api/search", params={"q": "more"})
        assert (again.status_code, again.headers["retry-after"]) == (429, "15")


async def test_a_sliding_session_layer_weighs_the_last_window(
    visitor: Callable[..., httpx.AsyncClient], clock: ManualClock
) -> None:
    """3 per 10 s window (windows start at multiples of 10 s): 3 searches at a window's start
    weigh 3 * (share of the sliding window still over them) in the next one, so the 4th is
    allowed once that is at most 2: 13.334 s later (ceil(13.334) = 14 s to wait)."""
    window_start = clock.now_ms()
    assert window_start % 10_000 == 0
    rate = {"session_algorithm": "sliding", "session_limit": 3, "session_window": "10s"}
    async with visitor(**rate) as client:
        for n in range(3):
            done = await client.get("/api/search", params={"q": str(n)})
            assert done.status_code == 200
            assert done.headers["ratelimit-remaining"] == str(2 - n)
        refused = await client.get("/api/search", params={"q": "more"})
        assert refused.status_code == 429
        body = refused.json()
        assert (body["scope"], body["limit"]) == ("session", 3)
        assert body["resets_at"] == iso_utc(window_start + 20_000)  # the 3 weigh nothing then
        assert refused.headers["retry-after"] == refused.headers["ratelimit-reset"] == "14"
        clock.advance(13_333)
        almost = await client.get("/api/search", params={"q": "more"})
        assert (almost.status_code, almost.headers["retry-after"]) == (429, "1")
        clock.advance(1)
        allowed = await client.get("/api/search", params={"q": "more"})
        assert allowed.status_code == 200
        assert allowed.headers["ratelimit-remaining"] == "0"  # ceil(3 * 6666 / 10000) + 1
        view = (await client.get("/api/v1/playground/session")).json()
        assert view["searches"] == {"used": 3, "limit": 3, "remaining": 0}


async def test_a_changed_algorithm_starts_new_counters(store: Store, clock: ManualClock) -> None:
    """Running counters keep their algorithm; a deployment switching a layer to gcra must not
    fail every search until the fixed ones end (they live on, uncharged, under their key)."""
    async with client_for(build_app(store, ip_limit=2), "198.51.100.3") as fixed:
        for _ in range(2):
            fixed.cookies.clear()
            assert (await fixed.get("/api/search", params={"q": "x"})).status_code == 200
    switched = build_app(store, ip_limit=2, ip_algorithm="gcra", global_algorithm="sliding")
    async with client_for(switched, "198.51.100.3") as client:
        assert (await client.get("/api/search", params={"q": "x"})).status_code == 200


def test_a_rate_layer_needs_a_limit_its_arithmetic_can_hold() -> None:
    with pytest.raises(ValueError, match="the ip layer counts by gcra"):
        PlaygroundSettings(ip_algorithm="gcra", ip_limit=0)
    with pytest.raises(ValueError, match="the session layer counts by sliding"):
        PlaygroundSettings(session_algorithm="sliding", session_limit=2**40, session_window="1d")
    assert PlaygroundSettings(ip_limit=0).ip_limit == 0  # a fixed layer may refuse everything
