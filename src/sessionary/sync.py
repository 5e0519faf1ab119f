"""The blocking API: `connect_sync`, `SyncStore`, `SyncNamespace`, `SyncCounters` and
`SyncWorkQueue`.

For sync code (Django, Flask, scripts, worker threads). There is no second implementation of
anything: a `SyncStore` owns one event-loop thread holding an ordinary async `Store`, and every
blocking call hands a coroutine of that store to the thread and waits for its result, so the
async API's validation, errors and semantics are the sync API's by construction.

    store = sessionary.connect_sync("sqlite:///sessions.db")
    web = store.namespace("web", idle_ttl=timedelta(minutes=30))
    session = web.create(subject="user-1", data={"cart": []})

- Many threads may call one `SyncStore` at once: the calls interleave on its loop like
  concurrent tasks of one async store.
- It connects on first use, and again in a forked child (gunicorn --preload, multiprocessing's
  "fork"): a child never touches its parent's loop thread or connections; it leaves them alone
  (closing them could disturb the parent's) and opens its own on its first call. A fork
  waits (up to `FORK_SETTLE_S`) for the calls in flight to end, none starting meanwhile, so
  no child is born holding half an SQLite transaction.
- `run`/`arun` hand your own coroutine the async `Store` (or `Namespace`), for what has no
  blocking method: `arun` awaits it from any other event loop (an async view of a sync app).
- Its thread is a daemon: a store never closed does not hold up the interpreter's exit.
- Each call costs two hand-offs between threads (some 25 to 60 us on a small VM): a fraction
  of an SQLite or Redis round trip, but many times a `memory://` operation itself
  (`benchmarks/store_ops.py` measures it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import Future
from datetime import timedelta
from typing import Any, Generic, TypeVar, cast

from sessionary.clock import Clock
from sessionary.contract import KEEP, Keep, OnMaxSessions
from sessionary.counters import Charge, ChargeResult, CounterPage, Counters
from sessionary.logs import Cursor, Event, LogPage
from sessionary.model import ConsumeResult, Session
from sessionary.queues import QueueDepth, WorkItem, WorkQueue
from sessionary.sealing import EncryptionKey, EncryptionKeys, Sealer, parse_keys
from sessionary.store import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_URL,
    Namespace,
    OnUnavailable,
    Store,
    without_password,
)
from sessionary.store import connect as connect_async

__all__ = [
    "SyncCounters",
    "SyncNamespace",
    "SyncStore",
    "SyncWorkQueue",
    "connect_sync",
    "shared",
]

T = TypeVar("T")
Target = TypeVar("Target")

#: how often a waiting caller checks that the loop thread is still there (a store closed, or
#: its thread gone, under a call in flight): the bound on a wait that nothing will ever end
_LIVENESS_S = 1.0
#: how long a fork waits for the calls in flight to end (see `_before_fork`)
FORK_SETTLE_S = 5.0


def connect_sync(
    url: str | None = None,
    *,
    clock: Clock | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    fail_fast: timedelta | None = None,
    encryption_keys: EncryptionKeys | None = None,
) -> SyncStore:
    """A blocking store for `url` (the URLs and options of `sessionary.connect`). Nothing is
    opened until its first use."""
    return SyncStore(
        url,
        clock=clock,
        max_payload=max_payload,
        fail_fast=fail_fast,
        encryption_keys=encryption_keys,
    )


#: the process's stores by URL (`shared`), and the lock that makes each one once
_SHARED: dict[str, SyncStore] = {}
_SHARED_LOCK = threading.Lock()


def shared(
    url: str | None = None,
    *,
    clock: Clock | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    fail_fast: timedelta | None = None,
    encryption_keys: EncryptionKeys | None = None,
) -> SyncStore:
    """The process's one `SyncStore` for `url`: however many integrations, apps or threads
    name the same store, they share one loop thread and one set of connections (a store per
    caller would open as many). Made once under a lock, so racing threads get the same
    object; a store someone closed is replaced by a new one on the next ask. Asking for an
    open one with other options is an error (one URL, one configuration), never a silent
    reuse. Safe across fork, as every `SyncStore` is."""
    url = url or DEFAULT_URL
    keys = parse_keys(encryption_keys) if encryption_keys else []
    options = (clock, max_payload, fail_fast, _key_material(keys))
    with _SHARED_LOCK:
        found = _SHARED.get(url)
        if found is not None and not found._closed:
            if found.options != options:
                raise ValueError(
                    f"the shared {found!r} is open with other options (clock, max_payload, "
                    "fail_fast, encryption_keys): one URL, one configuration"
                )
            return found
        found = _SHARED[url] = SyncStore(
            url, clock=clock, max_payload=max_payload, fail_fast=fail_fast, encryption_keys=keys
        )
        return found


def _key_material(keys: Sequence[EncryptionKey]) -> tuple[tuple[str, bytes], ...]:
    """Keys by id and secret: what tells two configurations apart."""
    return tuple((key.id, key.secret) for key in keys)


class _Waiter(Generic[T]):
    """One blocking call's hand-off: the caller sleeps on a held lock, the loop releases it
    with the outcome. Leaner than `run_coroutine_threadsafe` (no concurrent Future, no
    Condition), which matters when the work itself takes microseconds."""

    __slots__ = ("_done", "error", "result", "task")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None

    async def answer(self, work: Awaitable[T]) -> None:
        """On the loop, as a task: await `work` and wake the caller with its outcome (in
        the task itself: a done callback would cost the loop one more turn)."""
        try:
            self.result = await work
        except asyncio.CancelledError:
            self.error = RuntimeError("the SyncStore was closed during the call")
        except BaseException as error:  # the caller's, to raise in its own thread
            self.error = error
        finally:
            self.task = None
            self._done.release()

    def wait(self, running: _Running) -> T:
        try:
            while not self._done.acquire(timeout=_LIVENESS_S):
                if not running.thread.is_alive():
                    raise RuntimeError("the SyncStore's loop thread ended during the call")
        except BaseException:  # KeyboardInterrupt in the caller: stop the work it started
            if running.thread.is_alive():
                running.loop.call_soon_threadsafe(self._cancel)
            raise
        error = self.error
        if error is not None:
            self.error = None  # the caller's frames must not keep the error alive via us
            raise error
        return cast(T, self.result)  # set, since no error

    def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


class _Running:
    """One process's life of a `SyncStore`: its loop, the thread running it, and the async
    store (connected by the first call that needs it)."""

    def __init__(self, opener: Callable[[], Coroutine[Any, Any, Store]]) -> None:
        self.pid = os.getpid()
        self.store: Store | None = None
        self._opener = opener
        self._opening: asyncio.Task[Store] | None = None
        #: held by a fork being prepared: no call starts until it is done (see `_before_fork`)
        self.fork_gate = threading.Lock()
        self._in_flight = 0  # calls started and not ended, counted on the loop
        self._settled = asyncio.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="sessionary-sync", daemon=True)
        self.thread.start()
        self.thread_id = self.thread.ident

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            leftovers = asyncio.all_tasks(self.loop)
            for task in leftovers:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def submit(self, work: Callable[[Store], Awaitable[T]], waiter: _Waiter[T]) -> None:
        """From any thread but the loop's: start `work` on the loop, `waiter` gets its end."""
        with self.fork_gate:
            self.loop.call_soon_threadsafe(self._begin, work, waiter)

    def submit_awaitable(self, work: Callable[[Store], Awaitable[T]]) -> Future[T]:
        """From any thread but the loop's: start `work` on the loop; a future of its end."""
        with self.fork_gate:
            return asyncio.run_coroutine_threadsafe(self.perform(work), self.loop)

    def _begin(self, work: Callable[[Store], Awaitable[T]], waiter: _Waiter[T]) -> None:
        waiter.task = self.loop.create_task(waiter.answer(self.perform(work)))

    async def perform(self, work: Callable[[Store], Awaitable[T]]) -> T:
        """On the loop: `work` on the store, connecting it first if nothing has yet."""
        self._in_flight += 1
        try:
            store = self.store
            if store is None:
                store = await self._connected()
            return await work(store)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._settled.set()

    async def settle(self) -> None:
        """On the loop: return once no call is in flight."""
        while self._in_flight:
            self._settled.clear()
            await self._settled.wait()

    async def _connected(self) -> Store:
        if self._opening is None:  # one connect for every caller waiting on it
            self._opening = self.loop.create_task(self._opener())
        opening = self._opening
        try:
            store = await asyncio.shield(opening)
        except BaseException:
            if self._opening is opening and opening.done():
                self._opening = None  # it failed: the next call tries again
            raise
        self.store = store
        return store

    def shutdown(self) -> None:
        """From outside the loop: close the store if it was ever opened, then end the loop
        and its thread."""
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self.loop).result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()

    async def _close(self) -> None:
        if self._opening is not None and self.store is None:
            self._opening.cancel()
            await asyncio.gather(self._opening, return_exceptions=True)
        if self.store is not None:
            await self.store.close()


#: every SyncStore alive, for the fork hook (weakly: the hook must not keep one alive)
_OPEN: weakref.WeakSet[SyncStore] = weakref.WeakSet()
#: what a forked child inherited from its parent's stores: kept, never used nor finalized (a
#: finalizer closing an inherited socket or unregistering it from a shared epoll set would
#: disturb the parent, which still uses them)
_INHERITED: list[_Running] = []


#: the stores `_before_fork` holds still, until the fork is done
_HELD: list[_Running] = []


def _before_fork() -> None:
    """Hold every store of this process still across a fork: no call in flight, none
    starting. A child inherits the memory of the parent's connections as they are at the
    fork; one caught inside an SQLite write would leave the child's SQLite believing that its
    process holds the file's write lock, forever ("database is locked")."""
    for sync_store in list(_OPEN):
        running = sync_store._running
        if running is None or running.pid != os.getpid() or not running.thread.is_alive():
            continue
        if threading.get_ident() == running.thread_id:
            continue  # forked by a call on the loop itself: it cannot wait for itself
        running.fork_gate.acquire()
        _HELD.append(running)
        with contextlib.suppress(Exception):  # a call hung past it, a store closing: fork anyway
            settling = asyncio.run_coroutine_threadsafe(running.settle(), running.loop)
            settling.result(timeout=FORK_SETTLE_S)


def _after_fork_in_parent() -> None:
    while _HELD:
        _HELD.pop().fork_gate.release()


def _after_fork_in_child() -> None:
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()  # the parent's may have been held by a thread not here
    _HELD.clear()
    for sync_store in list(_OPEN):
        sync_store._forget_parent()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


class SyncStore:
    """A store for blocking code: its own event-loop thread, with an async `Store` on it.

    Safe to share between threads and across `fork`. Calling a blocking method from the
    store's own loop (inside a coroutine given to `run`) raises `RuntimeError`, since it
    would wait on itself: await the async API there.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        clock: Clock | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        fail_fast: timedelta | None = None,
        encryption_keys: EncryptionKeys | None = None,
    ) -> None:
        self.store_url = url or DEFAULT_URL
        self.clock = clock
        self.max_payload = max_payload
        self.fail_fast = fail_fast
        #: checked now (a bad key is an error here, not at the first call)
        self.sealer = Sealer(encryption_keys) if encryption_keys else None
        self._lock = threading.Lock()
        self._running: _Running | None = None
        self._closed = False
        self._namespaces: dict[str, SyncNamespace] = {}
        self._counters: dict[str, SyncCounters] = {}
        self._queues: dict[str, SyncWorkQueue] = {}
        _OPEN.add(self)

    @property
    def options(self) -> tuple[object, ...]:
        """What this store was opened with, beside its URL (keys by id and secret)."""
        keys = _key_material([] if self.sealer is None else self.sealer.keys)
        return (self.clock, self.max_payload, self.fail_fast, keys)

    # -- running work on the loop ---------------------------------------------------------

    def run(self, work: Callable[[Store], Awaitable[T]]) -> T:
        """Block until `work(store)` is done on the store's loop; its result or its error.
        (From a coroutine of another loop, await `arun` instead: this would block that loop.)"""
        running = self._started()
        if threading.get_ident() == running.thread_id:
            raise RuntimeError(
                "a blocking SyncStore call from its own event loop would wait on itself: "
                "await the async Store there"
            )
        waiter: _Waiter[T] = _Waiter()
        running.submit(work, waiter)
        return waiter.wait(running)

    async def arun(self, work: Callable[[Store], Awaitable[T]]) -> T:
        """Await `work(store)` from any event loop, without blocking it."""
        running = self._started()
        if asyncio.get_running_loop() is running.loop:
            return await running.perform(work)
        return await asyncio.wrap_future(running.submit_awaitable(work))

    def _started(self) -> _Running:
        running = self._running
        if running is not None and running.pid == os.getpid():
            return running
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if self._running is not None and self._running.pid != os.getpid():
                self._forget_parent()  # a fork the hook did not see
            if self._running is None:
                self._running = _Running(self._open)
            return self._running

    async def _open(self) -> Store:
        return await connect_async(
            self.store_url,
            clock=self.clock,
            max_payload=self.max_payload,
            fail_fast=self.fail_fast,
            encryption_keys=None if self.sealer is None else self.sealer.keys,
        )

    def _forget_parent(self) -> None:
        """In a forked child: drop (but keep, see `_INHERITED`) the parent's loop and store;
        a fresh lock, since the parent's may have been held by a thread that is not here."""
        self._lock = threading.Lock()
        if self._running is not None:
            _INHERITED.append(self._running)
            self._running = None

    # -- the API --------------------------------------------------------------------------

    def namespace(
        self,
        name: str,
        *,
        idle_ttl: timedelta | None = None,
        absolute_ttl: timedelta | None = None,
        id_prefix: str = "",
        max_payload: int | None = None,
        on_unavailable: OnUnavailable = "fail_closed",
        log_max_length: int | None = 10_000,
        log_max_age: timedelta | None = None,
        max_absolute_ttl: timedelta | None = None,
        max_sessions_per_subject: int | None = None,
        on_max_sessions: OnMaxSessions = "refuse",
    ) -> SyncNamespace:
        """The namespace `name` with its policy (see `Store.namespace`: same arguments, same
        errors, the same object for the same policy)."""
        policy: dict[str, Any] = {
            "idle_ttl": idle_ttl,
            "absolute_ttl": absolute_ttl,
            "id_prefix": id_prefix,
            "max_payload": max_payload,
            "on_unavailable": on_unavailable,
            "log_max_length": log_max_length,
            "log_max_age": log_max_age,
            "max_absolute_ttl": max_absolute_ttl,
            "max_sessions_per_subject": max_sessions_per_subject,
            "on_max_sessions": on_max_sessions,
        }
        opened = self.run(lambda store: _opened(store.namespace(name, **policy)))
        with self._lock:
            found = self._namespaces.get(name)
            if found is None:
                found = self._namespaces[name] = SyncNamespace(self, opened, policy)
            return found

    def counters(self, group: str) -> SyncCounters:
        """The counter group `group` (see `sessionary.counters`)."""
        self.run(lambda store: _opened(store.counters(group)))
        with self._lock:
            found = self._counters.get(group)
            if found is None:
                found = self._counters[group] = SyncCounters(self, group)
            return found

    def queue(self, name: str) -> SyncWorkQueue:
        """The work queue `name` (see `sessionary.queues`)."""
        self.run(lambda store: _opened(store.queue(name)))
        with self._lock:
            found = self._queues.get(name)
            if found is None:
                found = self._queues[name] = SyncWorkQueue(self, name)
            return found

    def ping(self, *, write: bool = False) -> None:
        """See `Store.ping`."""
        self.run(lambda store: store.ping(write=write))

    def close(self) -> None:
        """Close the store and end its thread. Closing again does nothing."""
        with self._lock:
            running = self._running
            if running is not None and threading.get_ident() == running.thread_id:
                raise RuntimeError("close a SyncStore from outside its own event loop")
            if self._closed:
                return
            self._closed = True
            self._running = None
        if running is not None and running.pid == os.getpid():
            running.shutdown()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SyncStore({without_password(self.store_url)!r})"


async def _opened(target: T) -> T:
    """Open a namespace, counter group or queue on the loop (the store's registries are the loop's
    alone), then hand it back."""
    return target


class _Facade(Generic[Target]):
    """What the blocking classes share: find their async object on the store of the current
    process (a new one after a fork) and run work on it."""

    def __init__(self, sync_store: SyncStore) -> None:
        self.sync_store = sync_store
        self._bound: tuple[Store, Target] | None = None

    def _target(self, store: Store) -> Target:
        bound = self._bound
        if bound is not None and bound[0] is store:
            return bound[1]
        target = self._resolve(store)
        self._bound = (store, target)
        return target

    def _resolve(self, store: Store) -> Target:
        raise NotImplementedError

    def run(self, work: Callable[[Target], Awaitable[T]]) -> T:
        """Block until `work(target)` is done on the store's loop (target: the async object
        this one stands for); its result or its error."""
        return self.sync_store.run(lambda store: work(self._target(store)))

    async def arun(self, work: Callable[[Target], Awaitable[T]]) -> T:
        """Await `work(target)` from any event loop, without blocking it."""
        return await self.sync_store.arun(lambda store: work(self._target(store)))


class SyncNamespace(_Facade[Namespace]):
    """The `Namespace` API, blocking: same arguments, same results, same errors."""

    def __init__(self, sync_store: SyncStore, opened: Namespace, policy: dict[str, Any]) -> None:
        super().__init__(sync_store)
        self._policy = policy
        self._opened = opened  # its policy, as the store settled it (immutable: safe to read)

    def _resolve(self, store: Store) -> Namespace:
        return store.namespace(self.name, **self._policy)

    @property
    def name(self) -> str:
        return self._opened.name

    @property
    def idle_ttl(self) -> timedelta | None:
        return self._opened.idle_ttl

    @property
    def absolute_ttl(self) -> timedelta | None:
        return self._opened.absolute_ttl

    @property
    def id_prefix(self) -> str:
        return self._opened.id_prefix

    @property
    def max_payload(self) -> int:
        return self._opened.max_payload

    @property
    def on_unavailable(self) -> OnUnavailable:
        return self._opened.on_unavailable

    @property
    def max_absolute_ttl(self) -> timedelta | None:
        return self._opened.max_absolute_ttl

    def create(
        self,
        *,
        subject: str | None = None,
        data: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        id: str | None = None,
        created_at: int | None = None,
        expires_at: int | None = None,
        idle_ttl: timedelta | None = None,
        absolute_ttl: timedelta | None = None,
    ) -> Session:
        """See `Namespace.create`."""
        return self.run(
            lambda ns: ns.create(
                subject=subject,
                data=data,
                metadata=metadata,
                id=id,
                created_at=created_at,
                expires_at=expires_at,
                idle_ttl=idle_ttl,
                absolute_ttl=absolute_ttl,
            )
        )

    def get(self, session_id: str) -> Session | None:
        """See `Namespace.get`."""
        return self.run(lambda ns: ns.get(session_id))

    def touch(self, session_id: str) -> Session | None:
        """See `Namespace.touch`."""
        return self.run(lambda ns: ns.touch(session_id))

    def update(
        self,
        session_id: str,
        *,
        data: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        subject: str | Keep | None = KEEP,
        expected_version: int | None = None,
        expires_at: int | None = None,
        append: Sequence[Event] = (),
        idle_ttl: timedelta | Keep | None = KEEP,
        absolute_ttl: timedelta | Keep | None = KEEP,
    ) -> Session:
        """See `Namespace.update`."""
        return self.run(
            lambda ns: ns.update(
                session_id,
                data=data,
                metadata=metadata,
                subject=subject,
                expected_version=expected_version,
                expires_at=expires_at,
                append=append,
                idle_ttl=idle_ttl,
                absolute_ttl=absolute_ttl,
            )
        )

    def append(
        self,
        session_id: str,
        type: str,
        data: Any = None,
        *,
        producer: str | None = None,
        seq: int | None = None,
        final: bool = False,
    ) -> Cursor | None:
        """See `Namespace.append`."""
        return self.run(
            lambda ns: ns.append(session_id, type, data, producer=producer, seq=seq, final=final)
        )

    def extend(self, session_id: str, events: Sequence[Event]) -> list[Cursor | None]:
        """See `Namespace.extend`."""
        return self.run(lambda ns: ns.extend(session_id, events))

    def read(
        self,
        session_id: str,
        after: Cursor | str | None = None,
        limit: int = 1000,
        *,
        max_bytes: int = 0,
    ) -> LogPage:
        """See `Namespace.read` (following a log is the async API's: `arun`, `Namespace.follow`)."""
        return self.run(lambda ns: ns.read(session_id, after, limit, max_bytes=max_bytes))

    def consume(
        self, session_id: str, counter: str, amount: int = 1, limit: int | None = None
    ) -> ConsumeResult:
        """See `Namespace.consume`."""
        return self.run(lambda ns: ns.consume(session_id, counter, amount, limit))

    def rotate(
        self,
        session_id: str,
        *,
        subject: str | Keep | None = KEEP,
        idle_ttl: timedelta | Keep | None = KEEP,
        absolute_ttl: timedelta | Keep | None = KEEP,
    ) -> Session:
        """See `Namespace.rotate`."""
        return self.run(
            lambda ns: ns.rotate(
                session_id, subject=subject, idle_ttl=idle_ttl, absolute_ttl=absolute_ttl
            )
        )

    def delete(self, session_id: str) -> bool:
        """See `Namespace.delete`."""
        return self.run(lambda ns: ns.delete(session_id))

    def list_subject(self, subject: str) -> list[Session]:
        """See `Namespace.list_subject`."""
        return self.run(lambda ns: ns.list_subject(subject))

    def revoke_subject(self, subject: str, *, keep: Sequence[str] = ()) -> int:
        """See `Namespace.revoke_subject`."""
        return self.run(lambda ns: ns.revoke_subject(subject, keep=keep))

    def reap(self, limit: int = 1000) -> list[Session]:
        """See `Namespace.reap`."""
        return self.run(lambda ns: ns.reap(limit))

    def clear(self, batch: int = 1000) -> int:
        """See `Namespace.clear`."""
        return self.run(lambda ns: ns.clear(batch))

    def count(self) -> int:
        """See `Namespace.count`."""
        return self.run(lambda ns: ns.count())

    def __repr__(self) -> str:
        return f"SyncNamespace({self.name!r}, {self.sync_store!r})"


class SyncCounters(_Facade[Counters]):
    """The `Counters` API of one group, blocking."""

    def __init__(self, sync_store: SyncStore, group: str) -> None:
        super().__init__(sync_store)
        self.group = group

    def _resolve(self, store: Store) -> Counters:
        return store.counters(self.group)

    def charge(self, *charges: Charge) -> ChargeResult:
        """See `Counters.charge`."""
        return self.run(lambda counters: counters.charge(*charges))

    def refund(self, *charges: Charge) -> ChargeResult:
        """See `Counters.refund`."""
        return self.run(lambda counters: counters.refund(*charges))

    def read(self, *charges: Charge) -> ChargeResult:
        """See `Counters.read`."""
        return self.run(lambda counters: counters.read(*charges))

    def set(self, key: str, value: int, resets_at: int) -> None:
        """See `Counters.set`."""
        self.run(lambda counters: counters.set(key, value, resets_at))

    def sweep(self, limit: int = 1000) -> int:
        """See `Counters.sweep`."""
        return self.run(lambda counters: counters.sweep(limit))

    def list(self, limit: int = 100, after: str | None = None) -> CounterPage:
        """See `Counters.list`."""
        return self.run(lambda counters: counters.list(limit, after))

    def __repr__(self) -> str:
        return f"SyncCounters({self.group!r}, {self.sync_store!r})"


class SyncWorkQueue(_Facade[WorkQueue]):
    """The `WorkQueue` API of one queue, blocking (a worker thread's loop)."""

    def __init__(self, sync_store: SyncStore, name: str) -> None:
        super().__init__(sync_store)
        self.name = name

    def _resolve(self, store: Store) -> WorkQueue:
        return store.queue(self.name)

    def enqueue(self, item_id: str, payload: bytes) -> bool:
        """See `WorkQueue.enqueue`."""
        return self.run(lambda queue: queue.enqueue(item_id, payload))

    def claim(self, consumer: str, lease: timedelta, limit: int = 1) -> list[WorkItem]:
        """See `WorkQueue.claim`."""
        return self.run(lambda queue: queue.claim(consumer, lease, limit))

    def renew(self, item_id: str, consumer: str, lease: timedelta) -> bool:
        """See `WorkQueue.renew`."""
        return self.run(lambda queue: queue.renew(item_id, consumer, lease))

    def ack(self, item_id: str, consumer: str) -> bool:
        """See `WorkQueue.ack`."""
        return self.run(lambda queue: queue.ack(item_id, consumer))

    def depth(self) -> QueueDepth:
        """See `WorkQueue.depth`."""
        return self.run(lambda queue: queue.depth())

    def wait(self, timeout: timedelta) -> None:
        """See `WorkQueue.wait`: blocks this thread (not the store's loop) meanwhile."""
        self.run(lambda queue: queue.wait(timeout))

    def __repr__(self) -> str:
        return f"SyncWorkQueue({self.name!r}, {self.sync_store!r})"
