"""Fixtures for the HTTP tests: the service on every backend, driven through httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from sessionary import ManualClock
from sessionary.web.app import create_app
from sessionary.web.settings import Settings

API_KEY = "test-admin-key-0123456789"
CLIENT_IP = "203.0.113.7"


def client_for(app: FastAPI, ip: str = CLIENT_IP) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(ip, 40000)),
        base_url="https://testserver",
    )


PROJECT_KEY = "shop-project-key-0123456789"


@pytest.fixture
def make_app(store_url: str, clock: ManualClock, tmp_path: Path) -> Callable[..., FastAPI]:
    def build(**overrides: Any) -> FastAPI:
        values: dict[str, Any] = {
            "store": store_url,
            "api_keys": [API_KEY, {"key": "web-only-key-0123456789", "namespaces": ["web"]}],
            "reaper": {"enabled": False},
            "analytics": {
                "sink": f"sqlite:///{tmp_path / 'analytics.db'}",
                "jobs": False,
                "projects": {"shop": {"key": PROJECT_KEY}},
            },
        }
        values.update(overrides)
        return create_app(Settings(**values), clock=clock)

    return build


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the module's own `app` fixture."""
    async with client_for(app) as opened:
        yield opened


@pytest_asyncio.fixture
async def service(make_app: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app()
    async with app.router.lifespan_context(app), client_for(app) as client:
        yield client


ADMIN = {"Authorization": f"Bearer {API_KEY}"}
