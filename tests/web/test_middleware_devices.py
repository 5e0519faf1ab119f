"""SessionMiddleware's device recording: off by default, on create only when on, the client
IP from the socket or a trusted proxy; and the admin API listing a subject's sessions with
their devices. On every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock, Store
from sessionary.devices import IP_KEY, USER_AGENT_KEY, DevicePolicy
from sessionary.http.clientip import ClientIP
from sessionary.store import Namespace
from sessionary.web import CurrentSession, SessionMiddleware
from tests.web.conftest import ADMIN, CLIENT_IP, client_for

UA = {"User-Agent": "Mozilla/5.0 (Macintosh) Safari/17.4"}
COOKIE = "__Host-session"


def device_app(store: Store, **options: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, store=store, namespace="web", **options)

    @app.post("/set/{value}")
    async def put(value: str, session: CurrentSession) -> dict[str, Any]:
        session["value"] = value
        return {}

    @app.post("/login/{user}")
    async def login(user: str, session: CurrentSession) -> dict[str, Any]:
        await session.rotate(subject=user)
        return {}

    @app.get("/mine")
    async def mine(session: CurrentSession) -> list[dict[str, Any]]:
        return [s.metadata for s in await session.list_mine()]

    return app


@pytest_asyncio.fixture
async def web_ns(store: Store) -> AsyncIterator[Namespace]:
    yield store.namespace("web", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12))


async def stored_metadata(client: httpx.AsyncClient, namespace: Namespace) -> dict[str, str]:
    session = await namespace.get(client.cookies[COOKIE])
    assert session is not None
    return session.metadata


async def test_off_by_default_records_nothing(store: Store, web_ns: Namespace) -> None:
    async with client_for(device_app(store)) as client:
        await client.post("/set/a", headers=UA)
        assert await stored_metadata(client, web_ns) == {}


async def test_on_records_the_creating_request_only(store: Store, web_ns: Namespace) -> None:
    policy = DevicePolicy(ip="truncated", user_agent=True, user_agent_max=16)
    async with client_for(device_app(store, devices=policy)) as client:
        await client.post("/set/a", headers=UA)
        first = await stored_metadata(client, web_ns)
        assert first == {USER_AGENT_KEY: UA["User-Agent"][:16], IP_KEY: "203.0.113.0/24"}
    # the same session used from another client, which writes and logs in (rotates)
    async with client_for(device_app(store, devices=DevicePolicy(ip="full")), "::1") as other:
        other.cookies.set(COOKIE, client.cookies[COOKIE], domain="testserver.local")
        await other.post("/set/b", headers={"User-Agent": "curl/8"})
        await other.post("/login/alice")
        assert await stored_metadata(other, web_ns) == first
        assert (await other.get("/mine")).json() == [first]


async def test_full_ip_from_the_socket_and_through_a_trusted_proxy(
    store: Store, web_ns: Namespace
) -> None:
    full = DevicePolicy(ip="full")
    async with client_for(device_app(store, devices=full)) as client:
        await client.post("/set/a", headers={"X-Forwarded-For": "192.0.2.1"})
        assert await stored_metadata(client, web_ns) == {IP_KEY: CLIENT_IP}  # not trusted
    proxied = device_app(store, devices=full, client_ip=ClientIP([f"{CLIENT_IP}/32"]))
    async with client_for(proxied) as client:
        await client.post("/set/a", headers={"X-Forwarded-For": "192.0.2.1"})
        assert await stored_metadata(client, web_ns) == {IP_KEY: "192.0.2.1"}


async def test_a_request_that_creates_nothing_costs_nothing(
    store: Store, web_ns: Namespace
) -> None:
    hashed = DevicePolicy(ip="hashed")
    # where the store keeps its shared secrets (the policy `Store.shared_secret` opens it with)
    secrets = store.namespace("sessionary.secrets", absolute_ttl=timedelta(days=3650))
    async with client_for(device_app(store, devices=hashed)) as client:
        assert (await client.get("/mine")).json() == []
        # the hashed form's key is the store's shared secret: not asked without a create
        assert await secrets.count() == 0
        await client.post("/set/a")
        assert await secrets.count() == 1
        assert len((await stored_metadata(client, web_ns)).get(IP_KEY, "")) == 32


async def test_admin_lists_a_subjects_sessions_with_their_devices(
    service: httpx.AsyncClient, clock: ManualClock
) -> None:
    web = "/v1/namespaces/web"
    recorded = {USER_AGENT_KEY: "Firefox/128", IP_KEY: "203.0.113.0/24"}
    made = await service.post(
        f"{web}/sessions", json={"subject": "alice", "metadata": recorded}, headers=ADMIN
    )
    clock.advance(1_000)
    await service.post(f"{web}/sessions", json={"subject": "alice"}, headers=ADMIN)
    clock.advance(1_000)
    await service.post(f"{web}/sessions/{made.json()['id']}/touch", headers=ADMIN)
    listed = await service.get(f"{web}/subjects/alice/sessions", headers=ADMIN)
    assert listed.status_code == 200
    newest, oldest = listed.json()["sessions"]
    assert newest["device"] is None  # nothing recorded
    assert oldest["device"] == {
        "user_agent": "Firefox/128",
        "ip": "203.0.113.0/24",
        "created_at": made.json()["created_at"],
        "last_seen_at": made.json()["created_at"] + 2_000,
    }
    schema = (await service.get("/openapi.json")).json()
    route = schema["paths"]["/v1/namespaces/{namespace}/subjects/{subject}/sessions"]["get"]
    assert "SubjectSessionsOut" in str(route["responses"]["200"])
    assert "device" in schema["components"]["schemas"]["SessionOut"]["properties"]
