"""A real backend whose calls are written down: how tests prove what reaches the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sessionary import ManualClock, Store, connect
from sessionary.backends import open_backend
from sessionary.contract import Backend


class CountingBackend:
    """Passes every call through to a real backend and writes down its name."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name in ("close", "ping") or not callable(attribute):
            return attribute

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await attribute(*args, **kwargs)

        return counted


@asynccontextmanager
async def counted_store(
    url: str, clock: ManualClock
) -> AsyncIterator[tuple[Store, CountingBackend]]:
    """A store on the backend of `url` whose calls are written down."""
    backend = CountingBackend(await open_backend(url))
    store = await connect(backend, clock=clock)
    try:
        yield store, backend
    finally:
        await store.close()
