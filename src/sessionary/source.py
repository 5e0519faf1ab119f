"""Where a component gets its store: given outright, opened from a URL on first use (in the
event loop that uses it), or bound later by the application that owns it (at startup). The
middleware, the playground, the service and the Litestar engine all get theirs here."""

from __future__ import annotations

import asyncio

from sessionary.clock import Clock
from sessionary.sealing import EncryptionKeys, parse_keys
from sessionary.store import Store, connect


class StoreSource:
    """`encryption_keys` (see `sessionary.connect`) open a store given by URL: checked here,
    so a bad key is a `ValueError` (naming its position, never the key) when the component
    is built, not at its first request. An open `Store` has its keys (or none) already."""

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        clock: Clock | None = None,
        encryption_keys: EncryptionKeys | None = None,
    ) -> None:
        if encryption_keys and not isinstance(store, str):
            raise ValueError(
                "encryption_keys go with a store URL: open the Store with them "
                "(connect(url, encryption_keys=...))"
            )
        self._store = store if isinstance(store, Store) else None
        self._url = store if isinstance(store, str) else None
        self._clock = clock
        self._keys = parse_keys(encryption_keys) if encryption_keys else None
        self._owned = False
        self._opening = asyncio.Lock()

    @classmethod
    def of(cls, store: Store | str | StoreSource | None) -> StoreSource:
        return store if isinstance(store, StoreSource) else cls(store)

    @property
    def opened(self) -> Store | None:
        """The store, if it is open already (never opens it)."""
        return self._store

    def bind(self, store: Store) -> None:
        """Hand over the store an application opened (at its startup)."""
        self._store = store

    async def get(self) -> Store:
        if self._store is not None:
            return self._store
        async with self._opening:
            if self._store is None:
                if self._url is None:
                    raise RuntimeError(
                        "no store yet: pass store=<Store or URL>, or bind() one at startup"
                    )
                self._store = await connect(
                    self._url, clock=self._clock, encryption_keys=self._keys
                )
                self._owned = True
        return self._store

    async def close(self) -> None:
        """Close the store if this source opened it."""
        if self._owned and self._store is not None:
            await self._store.close()
            self._store = None
            self._owned = False
