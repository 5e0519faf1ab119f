"""The guarantees that must hold across OS processes sharing one store."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, cast

import pytest

from sessionary import ids
from sessionary.clock import ManualClock
from sessionary.contract import OnMaxSessions, WorkItem
from sessionary.counters import Charge
from sessionary.errors import TooManySessions
from sessionary.model import Session
from sessionary.store import SECRET_RECHECK, Store, connect
from sessionary.testing._session_limits import LIMIT, LOGINS, evictions, limited


def _consume_in_process(
    url: str,
    namespace: str,
    now: int,
    session_id: str,
    attempts: int,
    limit: int,
    barrier: Any,
    results: Any,
) -> None:
    async def work() -> int:
        store = await connect(url, clock=ManualClock(now))
        try:
            ns = store.namespace(namespace, idle_ttl=timedelta(hours=1))
            barrier.wait()
            charges = (ns.consume(session_id, "searches", limit=limit) for _ in range(attempts))
            outcomes = await asyncio.gather(*charges)
            return sum(r.allowed for r in outcomes)
        finally:
            await store.close()

    results.put(asyncio.run(work()))


def _charge_in_process(
    url: str, group: str, now: int, attempts: int, barrier: Any, results: Any
) -> None:
    async def work() -> int:
        store = await connect(url, clock=ManualClock(now))
        try:
            quota = store.counters(group)
            barrier.wait()
            outcomes = await asyncio.gather(
                *(
                    quota.charge(
                        Charge("ip:shared", limit=50, window=timedelta(days=1)),
                        Charge("global", limit=1000, window=timedelta(hours=1)),
                    )
                    for _ in range(attempts)
                )
            )
            return sum(r.allowed for r in outcomes)
        finally:
            await store.close()

    results.put(asyncio.run(work()))


def _append_in_process(
    url: str,
    namespace: str,
    now: int,
    session_id: str,
    producer: str,
    count: int,
    barrier: Any,
    results: Any,
) -> None:
    async def work() -> int:
        store = await connect(url, clock=ManualClock(now))
        try:
            ns = store.namespace(namespace, idle_ttl=timedelta(hours=1))
            barrier.wait()
            stored = 0
            for seq in range(1, count + 1):
                cursor = await ns.append(
                    session_id, "e", [producer, seq], producer=producer, seq=seq
                )
                again = await ns.append(
                    session_id, "e", [producer, seq], producer=producer, seq=seq
                )  # a retry: stored once
                stored += (cursor is not None) + (again is not None)
            return stored
        finally:
            await store.close()

    results.put(asyncio.run(work()))


def _reap_in_process(url: str, namespace: str, now: int, barrier: Any, results: Any) -> None:
    async def work() -> list[str]:
        store = await connect(url, clock=ManualClock(now))
        try:
            ns = store.namespace(namespace, idle_ttl=timedelta(hours=1))
            claimed: list[str] = []
            store.on("expired", lambda event: claimed.append(event.session.id))
            barrier.wait()
            while await ns.reap(limit=100):
                pass
            return claimed
        finally:
            await store.close()

    results.put(asyncio.run(work()))


def _login_in_process(
    url: str, on_max: str, now: int, logins: int, barrier: Any, results: Any
) -> None:
    """`logins` concurrent logins of one user (an anonymous session, then a rotate that
    gives it the subject, as a login form does); reports (rotated ids, refusals, the ids
    this process announced as evicted)."""

    async def work() -> tuple[list[str], int, list[str]]:
        store = await connect(url, clock=ManualClock(now))
        try:
            ns = limited(store, cast(OnMaxSessions, on_max), f"mp-limit-{on_max}")
            heard = evictions(store)
            anonymous = [await ns.create() for _ in range(logins)]
            barrier.wait()
            done = await asyncio.gather(
                *(ns.rotate(s.id, subject="mp-user") for s in anonymous), return_exceptions=True
            )
            rotated = [s.id for s in done if isinstance(s, Session)]
            refused = sum(isinstance(s, TooManySessions) for s in done)
            assert len(rotated) + refused == logins, done
            return rotated, refused, [event.session.id for event in heard]
        finally:
            await store.close()

    results.put(asyncio.run(work()))


def _work_in_process(url: str, queue: str, now: int, barrier: Any, results: Any) -> None:
    """Three workers (tasks) claiming and acking until the queue is empty; reports (the ids
    this process acked, how many of its acks were refused). The clock stands still: no
    lease lapses, so no item may reach two holders."""

    async def worker(
        store: Store, consumer: str, held: Sequence[WorkItem] = ()
    ) -> tuple[list[str], int]:
        jobs = store.queue(queue)
        rng = random.Random(consumer)
        done: list[str] = []
        refused = 0
        taken = list(held)
        while taken:
            for item in taken:
                if await jobs.ack(item.id, consumer):
                    done.append(item.id)
                else:
                    refused += 1
            taken = await jobs.claim(consumer, timedelta(hours=1), limit=rng.randint(1, 8))
        return done, refused

    async def work() -> tuple[list[str], int]:
        store = await connect(url, clock=ManualClock(now))
        try:
            first = f"p{os.getpid()}-w0"
            barrier.wait()
            held = await store.queue(queue).claim(first, timedelta(hours=1), limit=1)
            barrier.wait()  # every process holds an item: from here they race for the rest
            parts = await asyncio.gather(
                worker(store, first, held),
                *(worker(store, f"p{os.getpid()}-w{n}") for n in (1, 2)),
            )
            return [i for done, _ in parts for i in done], sum(r for _, r in parts)
        finally:
            await store.close()

    results.put(asyncio.run(work()))


def _wait_in_process(url: str, queue: str, now: int, barrier: Any, results: Any) -> None:
    """Wait (up to a minute) for an item another process enqueues; reports the seconds."""

    async def work() -> float:
        store = await connect(url, clock=ManualClock(now))
        try:
            jobs = store.queue(queue)
            barrier.wait()
            started = time.monotonic()
            await jobs.wait(timedelta(minutes=1))
            return time.monotonic() - started
        finally:
            await store.close()

    results.put(asyncio.run(work()))


async def _run_processes(target: Callable[..., None], args: tuple[Any, ...], n: int) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(n)
    results = context.Queue()
    processes = [
        context.Process(target=target, args=(*args, barrier, results), daemon=True)
        for _ in range(n)
    ]
    for process in processes:
        process.start()
    try:
        collected = [await asyncio.to_thread(results.get, True, 120) for _ in range(n)]
    finally:
        for process in processes:
            await asyncio.to_thread(process.join, 30)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    return collected


class MultiProcessConformance:
    """For backends shared by several OS processes: the same guarantees across processes."""

    @pytest.mark.asyncio
    async def test_consume_is_atomic_across_processes(
        self, store: Store, store_url: str, clock: ManualClock
    ) -> None:
        ns = store.namespace("mp-consume", idle_ttl=timedelta(hours=1))
        session = await ns.create()
        allowed = await _run_processes(
            _consume_in_process, (store_url, ns.name, clock.now_ms(), session.id, 50, 50), 4
        )
        assert sum(allowed) == 50
        final = await ns.consume(session.id, "searches", amount=0, limit=50)
        assert final.used == 50

    @pytest.mark.asyncio
    async def test_reapers_in_several_processes_claim_each_session_once(
        self, store: Store, store_url: str, clock: ManualClock
    ) -> None:
        ns = store.namespace("mp-reap", idle_ttl=timedelta(hours=1))
        created: list[str] = []
        for _ in range(6):
            batch = await asyncio.gather(*(ns.create(subject="mp") for _ in range(100)))
            created.extend(s.id for s in batch)
        clock.advance(timedelta(hours=1))
        claimed = await _run_processes(_reap_in_process, (store_url, ns.name, clock.now_ms()), 4)
        everything = [session_id for part in claimed for session_id in part]
        assert Counter(everything) == Counter(created)
        assert await ns.count() == 0
        assert await ns.list_subject("mp") == []

    @pytest.mark.asyncio
    async def test_counter_charges_are_atomic_across_processes(
        self, store: Store, store_url: str, clock: ManualClock
    ) -> None:
        allowed = await _run_processes(
            _charge_in_process, (store_url, "mp-quota", clock.now_ms(), 40), 4
        )
        assert sum(allowed) == 50
        final = await store.counters("mp-quota").read(
            Charge("ip:shared", limit=50, window=timedelta(days=1)),
            Charge("global", limit=1000, window=timedelta(hours=1)),
        )
        assert [r.used for r in final.counters] == [50, 50]

    @pytest.mark.asyncio
    async def test_producers_in_several_processes_and_a_follower(
        self, store: Store, store_url: str, clock: ManualClock
    ) -> None:
        ns = store.namespace("mp-log", idle_ttl=timedelta(hours=1))
        session = await ns.create()
        follower = asyncio.create_task(_follow(ns, session.id))
        results = await asyncio.gather(
            *(
                _run_processes(
                    _append_in_process,
                    (store_url, ns.name, clock.now_ms(), session.id, f"p{n}", 50),
                    1,
                )
                for n in range(4)
            )
        )
        assert [r[0] for r in results] == [50, 50, 50, 50]
        await ns.append(session.id, "end", None, final=True)
        events = await asyncio.wait_for(follower, 60)
        assert [e.cursor.seq for e in events] == list(range(1, 202))
        for n in range(4):
            mine = [e.data[1] for e in events if e.data and e.data[0] == f"p{n}"]
            assert mine == list(range(1, 51))  # each producer's events in its order, once

    @pytest.mark.asyncio
    @pytest.mark.parametrize("on_max", ["refuse", "evict_oldest"])
    async def test_logins_in_several_processes_keep_the_session_limit(
        self, store: Store, store_url: str, clock: ManualClock, on_max: OnMaxSessions
    ) -> None:
        """The issue's race: 20 logins of one user, 5 in each of 4 processes, against a
        limit of 3: exactly 3 live sessions; 17 refused, or 17 evicted, each announced once
        (by the process whose login evicted it)."""
        per_process = LOGINS // 4
        reports = await _run_processes(
            _login_in_process, (store_url, on_max, clock.now_ms(), per_process), 4
        )
        rotated = [session_id for ids_, _, _ in reports for session_id in ids_]
        refused = sum(count for _, count, _ in reports)
        evicted = Counter(session_id for _, _, heard in reports for session_id in heard)
        ns = limited(store, on_max, f"mp-limit-{on_max}")
        live = {s.id for s in await ns.list_subject("mp-user")}
        assert len(live) == LIMIT
        if on_max == "refuse":
            assert (len(rotated), refused, len(evicted)) == (LIMIT, LOGINS - LIMIT, 0)
            assert live == set(rotated)
        else:
            assert (len(rotated), refused) == (LOGINS, 0)
            assert len(evicted) == LOGINS - LIMIT
            assert set(evicted.values()) == {1}
            assert live | set(evicted) == set(rotated)
            assert not live & set(evicted)

    @pytest.mark.asyncio
    async def test_a_shared_secret_the_store_lost_is_written_back_not_replaced(
        self, store: Store, store_url: str, clock: ManualClock
    ) -> None:
        known = await store.shared_secret("mp-secret")
        keep = store.namespace("sessionary.secrets", absolute_ttl=timedelta(days=3650))
        assert await keep.delete(ids.derived("mp-secret"))  # the store lost it
        clock.advance(SECRET_RECHECK)  # this process reads it again: and writes it back
        assert await store.shared_secret("mp-secret") == known
        later = await connect(store_url, clock=clock)  # a process started after the loss
        try:
            assert await later.shared_secret("mp-secret") == known
        finally:
            await later.close()

    @pytest.mark.asyncio
    async def test_workers_in_several_processes_take_each_item_once(
        self, store: Store, store_url: str, clock: ManualClock
    ) -> None:
        """400 items, 4 processes of 3 workers each claiming 1 to 8 at a time: every item
        is acked exactly once overall, and no ack of a claimed item is refused."""
        name = f"mp-work-{secrets.token_hex(4)}"
        jobs = store.queue(name)
        wanted = [f"job-{n}" for n in range(400)]
        for item_id in wanted:
            assert await jobs.enqueue(item_id, item_id.encode())
        reports = await _run_processes(_work_in_process, (store_url, name, clock.now_ms()), 4)
        acked = Counter(item_id for done, _ in reports for item_id in done)
        assert acked == Counter(wanted)
        assert [refused for _, refused in reports] == [0, 0, 0, 0]
        assert all(done for done, _ in reports)  # each held one while all raced
        assert tuple(await jobs.depth()) == (0, 0)

    @pytest.mark.asyncio
    async def test_an_enqueue_wakes_a_wait_in_another_process(
        self, store: Store, store_url: str, clock: ManualClock
    ) -> None:
        name = f"mp-wake-{secrets.token_hex(4)}"
        jobs = store.queue(name)
        waiting = asyncio.create_task(
            _run_processes(_wait_in_process, (store_url, name, clock.now_ms()), 1)
        )
        n = 0
        while not waiting.done() and n < 1200:  # until it wakes (the child starts slowly)
            await jobs.enqueue(f"wake-{n}", b"")
            n += 1
            await asyncio.wait({waiting}, timeout=0.05)
        [waited] = await waiting
        assert waited < 30  # woken, long before the minute it would wait


async def _follow(ns: Any, session_id: str) -> list[Any]:
    return [event async for event in ns.follow(session_id)]
