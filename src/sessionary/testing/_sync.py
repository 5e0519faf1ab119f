"""The conformance suite through the blocking facade (`sessionary.sync`).

The suite is async and speaks to a `Store`; `SyncBackedStore` presents that surface with every
operation the blocking API has (namespaces: create, get, touch, update, consume, rotate,
delete, list_subject, revoke_subject, reap, clear, count, append, extend, read; counter groups:
charge, refund, read, set, sweep; work queues: enqueue, claim, renew, ack, depth, wait; the
store: ping, close) carried out by the REAL blocking
method, called in a worker thread (`asyncio.to_thread`) as a sync caller would call it.

What the blocking API does not have goes to the async store on the facade's loop through
`SyncStore.arun` / `run`, the facade's own bridge: following a log (`Namespace.follow`),
lifecycle listeners (`Store.on`), shared secrets, direct backend calls (`Store.backend`) and
the analytics contract (`Store.sessionization`).

Two tests of the suite open their own async store from the URL and so do not go through the
facade: `test_invariants_hold_under_any_interleaving` (the state machine) runs as it does on
the async API; `test_any_json_object_round_trips` is replaced here by its blocking twin.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar, cast

import pytest_asyncio
from hypothesis import HealthCheck, given, settings

from sessionary.clock import ManualClock
from sessionary.contract import Lifetime, LogLimits
from sessionary.counters import Charge, ChargeResult, CounterPage
from sessionary.events import Listener
from sessionary.logs import Cursor, Event, LogEvent, LogPage, LogReset
from sessionary.model import ConsumeResult, EventKind, Session
from sessionary.queues import QueueDepth, WorkItem
from sessionary.store import Namespace, Store
from sessionary.sync import SyncCounters, SyncNamespace, SyncStore, SyncWorkQueue, connect_sync
from sessionary.testing._values import exact, json_objects, metadata_objects
from sessionary.testing.conformance import StoreConformance

__all__ = ["SyncBackedStore", "SyncStoreConformance"]

T = TypeVar("T")


async def _itself(target: T) -> T:
    return target


class _OnLoop:
    """An object living on the facade's loop (a backend, say): its coroutine methods, called
    from another loop, run there through `arun`; anything else is read as is."""

    def __init__(self, target: object, sync_store: SyncStore) -> None:
        self._target = target
        self._sync_store = sync_store

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._target, name)
        if not inspect.iscoroutinefunction(found):
            return found

        async def on_loop(*args: Any, **kwargs: Any) -> Any:
            return await self._sync_store.arun(lambda _store: found(*args, **kwargs))

        return on_loop


class SyncBackedStore:
    """The `Store` surface the suite uses, carried out by a `SyncStore`."""

    def __init__(self, sync_store: SyncStore) -> None:
        self.sync_store = sync_store
        #: the async store on the facade's loop (call it only there: `sync_store.arun`)
        self.async_store: Store = sync_store.run(_itself)
        self.clock = self.async_store.clock
        self.max_payload = self.async_store.max_payload
        self.backend = _OnLoop(self.async_store.backend, sync_store)

    @property
    def sessionization(self) -> _OnLoop:
        return _OnLoop(self.async_store.sessionization, self.sync_store)

    def namespace(self, name: str, **policy: Any) -> SyncBackedNamespace:
        return SyncBackedNamespace(self, self.sync_store.namespace(name, **policy))

    def counters(self, group: str) -> SyncBackedCounters:
        return SyncBackedCounters(self.sync_store.counters(group))

    def queue(self, name: str) -> SyncBackedQueue:
        return SyncBackedQueue(self.sync_store.queue(name))

    def on(self, kind: EventKind, listener: Listener) -> Callable[[], None]:
        async def subscribe(store: Store) -> Callable[[], None]:
            return store.on(kind, listener)

        unsubscribe = self.sync_store.run(subscribe)

        async def on_loop(_store: Store) -> None:
            unsubscribe()

        return lambda: self.sync_store.run(on_loop)

    async def ping(self, *, write: bool = False) -> None:
        await asyncio.to_thread(self.sync_store.ping, write=write)

    async def shared_secret(self, name: str, **lifetime: timedelta) -> str:
        return await self.sync_store.arun(lambda store: store.shared_secret(name, **lifetime))

    async def close(self) -> None:
        await asyncio.to_thread(self.sync_store.close)

    async def __aenter__(self) -> SyncBackedStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SyncBackedNamespace:
    """The `Namespace` surface, each operation a call of the blocking `SyncNamespace`."""

    def __init__(self, store: SyncBackedStore, blocking: SyncNamespace) -> None:
        self.store = store
        self.blocking = blocking
        #: the async namespace on the facade's loop (its policy is immutable: safe to read here)
        self.opened: Namespace = blocking.run(_itself)
        opened = self.opened
        self.name = opened.name
        self.lifetime: Lifetime = opened.lifetime
        self.id_prefix = opened.id_prefix
        self.max_payload = opened.max_payload
        self.log_limits: LogLimits = opened.log_limits
        self.on_unavailable = opened.on_unavailable
        self.policy_key = opened.policy_key
        self.max_absolute_ms = opened.max_absolute_ms
        self.idle_ttl = blocking.idle_ttl
        self.absolute_ttl = blocking.absolute_ttl

    async def create(self, **fields: Any) -> Session:
        return await asyncio.to_thread(self.blocking.create, **fields)

    async def get(self, session_id: str) -> Session | None:
        return await asyncio.to_thread(self.blocking.get, session_id)

    async def touch(self, session_id: str) -> Session | None:
        return await asyncio.to_thread(self.blocking.touch, session_id)

    async def update(self, session_id: str, **changes: Any) -> Session:
        return await asyncio.to_thread(self.blocking.update, session_id, **changes)

    async def consume(
        self, session_id: str, counter: str, amount: int = 1, limit: int | None = None
    ) -> ConsumeResult:
        return await asyncio.to_thread(self.blocking.consume, session_id, counter, amount, limit)

    async def rotate(self, session_id: str, **changes: Any) -> Session:
        return await asyncio.to_thread(self.blocking.rotate, session_id, **changes)

    async def delete(self, session_id: str) -> bool:
        return await asyncio.to_thread(self.blocking.delete, session_id)

    async def list_subject(self, subject: str) -> list[Session]:
        return await asyncio.to_thread(self.blocking.list_subject, subject)

    async def revoke_subject(self, subject: str, *, keep: Sequence[str] = ()) -> int:
        return await asyncio.to_thread(self.blocking.revoke_subject, subject, keep=keep)

    async def reap(self, limit: int = 1000) -> list[Session]:
        return await asyncio.to_thread(self.blocking.reap, limit)

    async def clear(self, batch: int = 1000) -> int:
        return await asyncio.to_thread(self.blocking.clear, batch)

    async def count(self) -> int:
        return await asyncio.to_thread(self.blocking.count)

    async def append(
        self, session_id: str, type: str, data: Any = None, **how: Any
    ) -> Cursor | None:
        return await asyncio.to_thread(self.blocking.append, session_id, type, data, **how)

    async def extend(self, session_id: str, events: Sequence[Event]) -> list[Cursor | None]:
        return await asyncio.to_thread(self.blocking.extend, session_id, events)

    async def read(self, session_id: str, *args: Any, **kwargs: Any) -> LogPage:
        return await asyncio.to_thread(self.blocking.read, session_id, *args, **kwargs)

    async def follow(
        self, session_id: str, after: Cursor | str | None = None, *, idle_s: float = 5.0
    ) -> AsyncIterator[LogEvent | LogReset]:
        """The async follower on the facade's loop, one item at a time through `arun` (made
        here: a generator runs nothing until asked, so the first read is sent at once)."""
        follower = self.opened.follow(session_id, after, idle_s=idle_s)
        try:
            while True:
                try:
                    item = await self.blocking.arun(lambda _ns: follower.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            await self.blocking.arun(lambda _ns: cast(AsyncGenerator[Any, None], follower).aclose())


class SyncBackedCounters:
    """The `Counters` surface, each operation a call of the blocking `SyncCounters`."""

    def __init__(self, blocking: SyncCounters) -> None:
        self.blocking = blocking
        self.group = blocking.group

    async def charge(self, *charges: Charge) -> ChargeResult:
        return await asyncio.to_thread(self.blocking.charge, *charges)

    async def refund(self, *charges: Charge) -> ChargeResult:
        return await asyncio.to_thread(self.blocking.refund, *charges)

    async def read(self, *charges: Charge) -> ChargeResult:
        return await asyncio.to_thread(self.blocking.read, *charges)

    async def set(self, key: str, value: int, resets_at: int) -> None:
        await asyncio.to_thread(self.blocking.set, key, value, resets_at)

    async def sweep(self, limit: int = 1000) -> int:
        return await asyncio.to_thread(self.blocking.sweep, limit)

    async def list(self, limit: int = 100, after: str | None = None) -> CounterPage:
        return await asyncio.to_thread(self.blocking.list, limit, after)


class SyncBackedQueue:
    """The `WorkQueue` surface, each operation a call of the blocking `SyncWorkQueue`."""

    def __init__(self, blocking: SyncWorkQueue) -> None:
        self.blocking = blocking
        self.name = blocking.name

    async def enqueue(self, item_id: str, payload: bytes) -> bool:
        return await asyncio.to_thread(self.blocking.enqueue, item_id, payload)

    async def claim(self, consumer: str, lease: timedelta, limit: int = 1) -> list[WorkItem]:
        return await asyncio.to_thread(self.blocking.claim, consumer, lease, limit)

    async def renew(self, item_id: str, consumer: str, lease: timedelta) -> bool:
        return await asyncio.to_thread(self.blocking.renew, item_id, consumer, lease)

    async def ack(self, item_id: str, consumer: str) -> bool:
        return await asyncio.to_thread(self.blocking.ack, item_id, consumer)

    async def depth(self) -> QueueDepth:
        return await asyncio.to_thread(self.blocking.depth)

    async def wait(self, timeout: timedelta) -> None:  # noqa: ASYNC109 (the blocking API's)
        await asyncio.to_thread(self.blocking.wait, timeout)


class SyncStoreConformance(StoreConformance):
    """`StoreConformance` through the blocking API (see this module's docstring). Subclass as
    you would `StoreConformance`; `footprint` gets a `SyncBackedStore`, whose `async_store`
    (on the facade's loop: reach it with `sync_store.arun`) holds the backend."""

    @pytest_asyncio.fixture
    async def store(self, store_url: str, clock: ManualClock) -> AsyncIterator[Store]:
        sync_store = connect_sync(store_url, clock=clock)
        try:
            opened = await asyncio.to_thread(SyncBackedStore, sync_store)
            yield cast(Store, opened)
        finally:
            await asyncio.to_thread(sync_store.close)

    def test_any_json_object_round_trips(self, store_url: str) -> None:
        with connect_sync(store_url, clock=ManualClock()) as sync_store:
            web = sync_store.namespace("hyp-rt", idle_ttl=timedelta(hours=1))

            @settings(
                max_examples=self.hypothesis_examples,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(data=json_objects, metadata=metadata_objects)
            def round_trip(data: dict[str, Any], metadata: dict[str, str]) -> None:
                created = web.create(data=data, metadata=metadata)
                got = web.get(created.id)
                assert got is not None
                assert exact(got.data) == exact(data)
                assert got.metadata == metadata
                touched = web.touch(created.id)
                assert touched is not None
                assert exact(touched.data) == exact(data)
                assert web.delete(created.id)

            round_trip()
