"""`GET /v1/counters/{group}` on every backend: a counter group's running counters, page by
page, each read as a charge reads it; behind the admin key, allowed on the group's name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock, Store
from sessionary.counters import Charge
from sessionary.web.app import create_app
from sessionary.web.settings import Settings
from tests.servers import RedisServer
from tests.web.conftest import ADMIN, API_KEY, client_for

PLAYGROUND_KEY = "playground-only-key-0123456789"
WEB_ONLY_KEY = "web-only-key-0123456789"
HOUR = timedelta(hours=1)
#: counters of every algorithm and both kinds of fixed window
CHARGES = (
    *(Charge(f"ip:{n}", amount=n + 1, limit=10, window=timedelta(days=1)) for n in range(5)),
    Charge("s:1", 3, limit=5, window=HOUR, algorithm="sliding"),
    Charge("g:1", 2, limit=4, window=HOUR, algorithm="gcra"),
    Charge("global", limit=None, window=HOUR),
)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each backend in turn (`store` opens it); Redis a server of the test's own: a group's
    listing walks the keyspace (SCAN), and in the shared test database the number of other
    tests' and benchmarks' keys would decide how many pages the counters take, which these
    tests count. (The conformance suite lists over the shared database, every page.)"""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    private: RedisServer = request.getfixturevalue("private_redis")
    return private.url


def app_over(store: Store, clock: ManualClock) -> FastAPI:
    """The service over `store` (so a test charges the counters the service lists), with
    a key for everything, one for the playground's namespace and group, one for "web"."""
    keys: list[Any] = [
        API_KEY,
        {"key": PLAYGROUND_KEY, "namespaces": ["playground"]},
        {"key": WEB_ONLY_KEY, "namespaces": ["web"]},
    ]
    settings = Settings(store="memory://", api_keys=keys, reaper={"enabled": False})
    return create_app(settings, store=store, clock=clock)


async def charge_some(store: Store, clock: ManualClock) -> list[Charge]:
    """`CHARGES` in the playground's group and one that is over by now (left out of any
    listing); a minute passes, so the sliding and gcra counters have drained some."""
    quota = store.counters("playground")
    for charge in CHARGES:
        assert (await quota.charge(charge)).allowed
    await quota.charge(Charge("short", limit=1, window=timedelta(seconds=30)))
    clock.advance(timedelta(minutes=1))
    return list(CHARGES)


async def all_pages(
    client: httpx.AsyncClient, group: str, limit: int, headers: dict[str, str] = ADMIN
) -> list[dict[str, Any]]:
    """Every counter the API lists for `group`, following `next`."""
    listed: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    for _ in range(1000):
        response = await client.get(f"/v1/counters/{group}", params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        listed += body["counters"]
        if body["next"] is None:
            return listed
        params["after"] = body["next"]
    raise AssertionError("the listing never ended")


@pytest_asyncio.fixture
async def api(store: Store, clock: ManualClock) -> AsyncIterator[httpx.AsyncClient]:
    app = app_over(store, clock)
    async with app.router.lifespan_context(app), client_for(app) as client:
        yield client


async def test_the_counters_page_by_page_read_as_a_charge_reads_them(
    api: httpx.AsyncClient, store: Store, clock: ManualClock
) -> None:
    charges = await charge_some(store, clock)
    listed = await all_pages(api, "playground", 3)
    assert sorted(c["key"] for c in listed) == sorted(c.key for c in charges)
    readings = (await store.counters("playground").read(*charges)).counters
    by_key = {c["key"]: c for c in listed}
    for charge, reading in zip(charges, readings, strict=True):
        assert by_key[charge.key] == {
            "key": charge.key,
            "used": reading.used,
            "limit": charge.limit,
            "resets_at": reading.resets_at,
            "window_ms": 86_400_000 if charge.key.startswith("ip:") else 3_600_000,
            "algorithm": charge.algorithm,
        }
    assert (by_key["ip:4"]["used"], by_key["s:1"]["used"], by_key["g:1"]["used"]) == (5, 3, 2)


async def test_one_page_holds_them_all_when_the_limit_allows(
    api: httpx.AsyncClient, store: Store, clock: ManualClock
) -> None:
    await charge_some(store, clock)
    response = await api.get("/v1/counters/playground", params={"limit": 1000}, headers=ADMIN)
    body = response.json()
    assert (len(body["counters"]), body["next"]) == (len(CHARGES), None)


async def test_a_group_nothing_was_charged_to_lists_nothing(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/counters/nobody", headers=ADMIN)
    assert (response.status_code, response.json()) == (200, {"counters": [], "next": None})


async def test_the_key_must_be_allowed_on_the_groups_name(
    api: httpx.AsyncClient, store: Store, clock: ManualClock
) -> None:
    await charge_some(store, clock)
    anonymous = await api.get("/v1/counters/playground")
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "unauthorized")
    wrong = await api.get("/v1/counters/playground", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    web = {"Authorization": f"Bearer {WEB_ONLY_KEY}"}
    elsewhere = await api.get("/v1/counters/playground", headers=web)
    assert (elsewhere.status_code, elsewhere.json()["error"]) == (403, "forbidden")
    playground = {"Authorization": f"Bearer {PLAYGROUND_KEY}"}
    assert len(await all_pages(api, "playground", 100, playground)) == len(CHARGES)
    assert (await api.get("/v1/counters/other", headers=playground)).status_code == 403
    # the key comes first: a malformed request without one is a 401 all the same
    assert (await api.get("/v1/counters/playground?limit=0")).status_code == 401


@pytest.mark.parametrize("after", ["not-a-cursor", "A", "_w", "a!b", "%00"])
async def test_a_cursor_not_from_next_is_a_400(
    api: httpx.AsyncClient, store: Store, clock: ManualClock, after: str
) -> None:
    await charge_some(store, clock)
    response = await api.get(
        "/v1/counters/playground", params={"limit": 2, "after": after}, headers=ADMIN
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_cursor")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/counters/playground", {"limit": 0}),
        ("/v1/counters/playground", {"limit": 1001}),
        ("/v1/counters/playground", {"limit": "many"}),
        ("/v1/counters/playground", {"after": "a" * 513}),
        ("/v1/counters/-bad", {}),
        (f"/v1/counters/{'g' * 65}", {}),
    ],
)
async def test_out_of_bounds_arguments_are_a_422(
    api: httpx.AsyncClient, path: str, params: dict[str, Any]
) -> None:
    response = await api.get(path, params=params, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert "error" in response.json()
