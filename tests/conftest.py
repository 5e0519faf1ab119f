"""Shared fixtures: a real Redis (never a mock), isolated per test by a key prefix in a
logical database of its own, and cleaned up afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

REDIS_URL = os.environ.get("SESSIONARY_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest_asyncio.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, protocol=2)
    try:
        await client.ping()
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def redis_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


@pytest_asyncio.fixture
async def redis_url(redis_client: Redis, redis_prefix: str) -> AsyncIterator[str]:
    """A store URL whose keys all start with a fresh prefix; they are deleted afterwards."""
    yield f"{REDIS_URL}?prefix={redis_prefix}"
    async for key in redis_client.scan_iter(match=f"{redis_prefix}*", count=1000):
        await redis_client.delete(key)
