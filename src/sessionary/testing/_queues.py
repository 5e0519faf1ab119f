"""The work-queue half of the conformance suite.

Leases run on the `ManualClock` the tests move; only the `wait` tests take real time (a wait
is a real wait), and they bound it loosely.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from sessionary.clock import ManualClock
from sessionary.contract import WorkItem
from sessionary.errors import PayloadTooLarge, ValidationError
from sessionary.queues import MAX_CLAIM, MAX_LEASE, MAX_WAIT, QueueDepth, WorkQueue
from sessionary.store import Store, connect

T = TypeVar("T")

LEASE = timedelta(seconds=10)
LEASE_MS = 10_000
HOUR = timedelta(hours=1)


def fresh_queue(store: Store, purpose: str) -> WorkQueue:
    """A queue no other test (or earlier run on a persistent store) has used."""
    return store.queue(f"{purpose}-{secrets.token_hex(4)}")


def ids_of(items: list[WorkItem]) -> list[str]:
    return [item.id for item in items]


@dataclasses.dataclass
class _Item:
    """What a queued item must look like, computed independently of any backend."""

    payload: bytes
    enqueued_at: int
    seq: int
    deliveries: int = 0
    holder: str | None = None
    lease_until: int = 0


def queue_machine_for(store_url: str) -> type[RuleBasedStateMachine]:
    """Any interleaving of enqueue, claim, renew, ack and the clock moving matches a model.
    Ties (items whose leases lapse at the same ms) may come in any order among themselves."""

    class QueueMachine(RuleBasedStateMachine):
        _runner = asyncio.Runner()
        _store: Store | None = None
        _serial = 0

        def __init__(self) -> None:
            super().__init__()
            if QueueMachine._store is None:
                QueueMachine._store = self.run(connect(store_url, clock=ManualClock()))
            QueueMachine._serial += 1
            store = QueueMachine._store
            self.clock = cast(ManualClock, store.clock)
            self.queue = fresh_queue(store, f"sm{QueueMachine._serial}")
            self.model: dict[str, _Item] = {}
            self.enqueued = 0

        def run(self, awaitable: Awaitable[T]) -> T:
            async def wrapped() -> T:
                return await awaitable

            return QueueMachine._runner.run(wrapped())

        def claimable(self, now: int) -> list[set[str]]:
            """What a claim takes, in order, as groups that may come in any order inside:
            lapsed items by lapse time, then each waiting item in enqueue order."""
            by_lapse: dict[int, set[str]] = {}
            for item_id, item in self.model.items():
                if item.holder is not None and item.lease_until <= now:
                    by_lapse.setdefault(item.lease_until, set()).add(item_id)
            waiting = sorted(
                (item.seq, item_id) for item_id, item in self.model.items() if item.holder is None
            )
            return [by_lapse[t] for t in sorted(by_lapse)] + [{i} for _, i in waiting]

        @rule(
            item_id=st.sampled_from([f"i{n}" for n in range(6)]),
            payload=st.binary(max_size=8),
        )
        def enqueue(self, item_id: str, payload: bytes) -> None:
            added = self.run(self.queue.enqueue(item_id, payload))
            assert added == (item_id not in self.model)
            if added:
                self.model[item_id] = _Item(payload, self.clock.now_ms(), self.enqueued)
                self.enqueued += 1

        @rule(
            consumer=st.sampled_from(["a", "b", "c"]),
            lease_ms=st.integers(min_value=1, max_value=40),
            limit=st.integers(min_value=1, max_value=4),
        )
        def claim(self, consumer: str, lease_ms: int, limit: int) -> None:
            now = self.clock.now_ms()
            groups = self.claimable(now)
            taken = self.run(self.queue.claim(consumer, timedelta(milliseconds=lease_ms), limit))
            assert len(taken) == min(limit, sum(len(group) for group in groups))
            rest = [item.id for item in taken]
            for group in groups:
                part, rest = rest[: len(group)], rest[len(group) :]
                assert set(part) <= group, (part, group)
                if not rest:
                    break
            for got in taken:
                item = self.model[got.id]
                item.holder, item.lease_until = consumer, now + lease_ms
                item.deliveries += 1
                assert got == WorkItem(
                    got.id, item.payload, item.deliveries, item.enqueued_at, item.lease_until
                )

        @rule(
            item_id=st.sampled_from([f"i{n}" for n in range(6)]),
            consumer=st.sampled_from(["a", "b", "c"]),
            lease_ms=st.integers(min_value=1, max_value=40),
        )
        def renew(self, item_id: str, consumer: str, lease_ms: int) -> None:
            lease = timedelta(milliseconds=lease_ms)
            renewed = self.run(self.queue.renew(item_id, consumer, lease))
            item = self.model.get(item_id)
            assert renewed == (item is not None and item.holder == consumer)
            if item is not None and renewed:
                item.lease_until = self.clock.now_ms() + lease_ms

        @rule(
            item_id=st.sampled_from([f"i{n}" for n in range(6)]),
            consumer=st.sampled_from(["a", "b", "c"]),
        )
        def ack(self, item_id: str, consumer: str) -> None:
            acked = self.run(self.queue.ack(item_id, consumer))
            item = self.model.get(item_id)
            assert acked == (item is not None and item.holder == consumer)
            if acked:
                del self.model[item_id]

        @rule(ms=st.integers(min_value=0, max_value=30))
        def advance(self, ms: int) -> None:
            self.clock.advance(ms)

        @invariant()
        def depth_matches_the_model(self) -> None:
            now = self.clock.now_ms()
            held = sum(1 for i in self.model.values() if i.holder and i.lease_until > now)
            assert self.run(self.queue.depth()) == (len(self.model) - held, held)

        def teardown(self) -> None:
            """Drain the queue, so that a persistent store keeps nothing of it."""
            self.clock.advance(41)  # every lease lapsed
            while taken := self.run(self.queue.claim("drain", LEASE, limit=MAX_CLAIM)):
                for item in taken:
                    assert self.run(self.queue.ack(item.id, "drain"))

    return QueueMachine


class QueueConformance:
    """Work queues: order, dedup, leases on the store's clock, redelivery, races, waits."""

    #: Examples of the queue state machine; a slow backend may lower it, never to zero.
    queue_examples = 50

    async def footprint(self, store: Store) -> int:
        """See `StoreConformance.footprint`."""
        raise NotImplementedError

    @pytest.mark.asyncio
    async def test_items_are_claimed_in_enqueue_order_and_acked(
        self, store: Store, clock: ManualClock
    ) -> None:
        queue = fresh_queue(store, "order")
        enqueued_at = clock.now_ms()
        payloads = {"a": b"\x00\xff binary \x80", "b": b"", "c": "zürich ✓".encode()}
        for item_id, payload in payloads.items():
            assert await queue.enqueue(item_id, payload)
        clock.advance(timedelta(milliseconds=5))
        now = clock.now_ms()
        first = await queue.claim("worker-1", LEASE, limit=2)
        assert first == [
            WorkItem("a", payloads["a"], 1, enqueued_at, now + LEASE_MS),
            WorkItem("b", payloads["b"], 1, enqueued_at, now + LEASE_MS),
        ]
        assert ids_of(await queue.claim("worker-2", LEASE, limit=5)) == ["c"]
        assert await queue.claim("worker-3", LEASE) == []
        assert await queue.depth() == QueueDepth(0, 3)
        assert await queue.ack("a", "worker-1")
        assert await queue.ack("c", "worker-2")
        assert await queue.ack("b", "worker-1")
        assert await queue.depth() == QueueDepth(0, 0)
        assert await queue.claim("worker-1", LEASE) == []

    @pytest.mark.asyncio
    async def test_an_id_in_the_queue_is_refused_until_acked(self, store: Store) -> None:
        queue = fresh_queue(store, "dedup")
        assert await queue.enqueue("job", b"first")
        assert not await queue.enqueue("job", b"second")  # waiting: refused, unchanged
        assert await queue.depth() == QueueDepth(1, 0)
        [item] = await queue.claim("w", LEASE)
        assert item.payload == b"first"
        assert not await queue.enqueue("job", b"third")  # held: refused too
        assert await queue.ack("job", "w")
        assert await queue.enqueue("job", b"again")  # gone: a new item under the old id
        [again] = await queue.claim("w", LEASE)
        assert (again.payload, again.deliveries) == (b"again", 1)

    @pytest.mark.asyncio
    async def test_a_claim_takes_at_most_its_limit(self, store: Store) -> None:
        queue = fresh_queue(store, "limit")
        for n in range(5):
            await queue.enqueue(f"i{n}", b"x")
        assert ids_of(await queue.claim("w", LEASE, limit=3)) == ["i0", "i1", "i2"]
        assert await queue.depth() == QueueDepth(2, 3)
        assert ids_of(await queue.claim("w", LEASE)) == ["i3"]
        assert await queue.depth() == QueueDepth(1, 4)

    @pytest.mark.asyncio
    async def test_a_lapsed_lease_hands_the_item_to_the_next_claim(
        self, store: Store, clock: ManualClock
    ) -> None:
        queue = fresh_queue(store, "lapse")
        await queue.enqueue("job", b"p")
        [held] = await queue.claim("a", LEASE)
        clock.set(held.lease_until - 1)
        assert await queue.claim("b", LEASE) == []  # one ms left: still a's
        assert await queue.depth() == QueueDepth(0, 1)
        clock.set(held.lease_until)  # lapsed (lease_until <= now)
        assert await queue.depth() == QueueDepth(1, 0)
        [taken] = await queue.claim("b", LEASE)
        assert (taken.id, taken.payload, taken.deliveries) == ("job", b"p", 2)
        assert (taken.enqueued_at, taken.lease_until) == (
            held.enqueued_at,
            clock.now_ms() + LEASE_MS,
        )
        assert not await queue.ack("job", "a")  # a's lease went to b
        assert not await queue.renew("job", "a", LEASE)
        assert await queue.depth() == QueueDepth(0, 1)
        assert await queue.ack("job", "b")
        assert await queue.depth() == QueueDepth(0, 0)

    @pytest.mark.asyncio
    async def test_a_holder_whose_lease_lapsed_may_claim_its_item_again(
        self, store: Store, clock: ManualClock
    ) -> None:
        queue = fresh_queue(store, "reclaim")
        await queue.enqueue("job", b"p")
        [held] = await queue.claim("a", LEASE)
        clock.set(held.lease_until + 1)
        [again] = await queue.claim("a", LEASE)
        assert (again.id, again.deliveries) == ("job", 2)
        assert await queue.ack("job", "a")

    @pytest.mark.asyncio
    async def test_lapsed_items_come_first_soonest_lapsed_first(
        self, store: Store, clock: ManualClock
    ) -> None:
        queue = fresh_queue(store, "lapsed-first")
        for item_id in ("a", "b", "c", "d"):
            await queue.enqueue(item_id, b"")
        await queue.claim("w1", LEASE)  # a, lapses at t0 + 10 s
        clock.advance(timedelta(seconds=1))
        await queue.claim("w2", timedelta(seconds=5))  # b, lapses at t0 + 6 s
        clock.advance(timedelta(seconds=9))  # t0 + 10 s: both lapsed
        taken = await queue.claim("w3", LEASE, limit=3)
        assert [(i.id, i.deliveries) for i in taken] == [("b", 2), ("a", 2), ("c", 1)]
        assert await queue.depth() == QueueDepth(1, 3)

    @pytest.mark.asyncio
    async def test_renew_holds_the_item_only_for_its_holder(
        self, store: Store, clock: ManualClock
    ) -> None:
        queue = fresh_queue(store, "renew")
        await queue.enqueue("job", b"")
        await queue.enqueue("waiting", b"")
        [held] = await queue.claim("a", LEASE)
        clock.set(held.lease_until - 1)
        assert await queue.renew("job", "a", LEASE)  # now held until now + 10 s
        clock.set(held.lease_until + 1)
        assert ids_of(await queue.claim("b", HOUR)) == ["waiting"]  # not the renewed job
        assert not await queue.renew("job", "b", LEASE)  # not b's
        clock.advance(LEASE)  # a's renewed lease lapsed, and nobody claimed it since
        assert await queue.renew("job", "a", LEASE)  # so a may renew it
        assert await queue.claim("c", LEASE) == []
        assert await queue.depth() == QueueDepth(0, 2)
        clock.advance(LEASE)  # lapsed again
        [job] = await queue.claim("c", LEASE)
        assert (job.id, job.deliveries) == ("job", 2)  # renewals are not deliveries
        assert not await queue.renew("job", "a", LEASE)  # claimed by another since
        assert not await queue.renew("unknown", "a", LEASE)
        await queue.enqueue("never-claimed", b"")
        assert not await queue.renew("never-claimed", "a", LEASE)
        assert await queue.depth() == QueueDepth(1, 2)

    @pytest.mark.asyncio
    async def test_only_the_holder_acks(self, store: Store, clock: ManualClock) -> None:
        queue = fresh_queue(store, "ack")
        await queue.enqueue("job", b"")
        await queue.enqueue("waiting", b"")
        assert not await queue.ack("waiting", "a")  # nobody holds it: nothing to ack
        [held] = await queue.claim("a", LEASE)
        assert not await queue.ack("job", "b")
        assert not await queue.ack("unknown", "a")
        assert await queue.depth() == QueueDepth(1, 1)
        clock.set(held.lease_until + 1)  # lapsed, but nobody claimed it since
        assert await queue.ack("job", "a")  # the work is done: a's ack still counts
        assert not await queue.ack("job", "a")
        assert ids_of(await queue.claim("b", LEASE, limit=5)) == ["waiting"]

    @pytest.mark.asyncio
    async def test_queues_are_independent(self, store: Store) -> None:
        one, two = fresh_queue(store, "one"), fresh_queue(store, "two")
        await one.enqueue("same", b"1")
        assert await two.enqueue("same", b"2")
        assert await two.depth() == QueueDepth(1, 0)
        [item] = await two.claim("w", LEASE)
        assert item.payload == b"2"
        assert not await one.ack("same", "w")
        assert await one.depth() == QueueDepth(1, 0)

    @pytest.mark.asyncio
    async def test_arguments_are_checked_before_the_store_is_asked(self, store: Store) -> None:
        queue = fresh_queue(store, "checks")
        bad_calls = [
            queue.enqueue("", b""),
            queue.enqueue("x" * 257, b""),
            queue.enqueue("line\nbreak", b""),
            queue.enqueue("ok", "text, not bytes"),  # type: ignore[arg-type]
            queue.claim("", LEASE),
            queue.claim("has space", LEASE),
            queue.claim("w" * 129, LEASE),
            queue.claim("w", timedelta(0)),
            queue.claim("w", MAX_LEASE + timedelta(milliseconds=1)),
            queue.claim("w", 1000),  # type: ignore[arg-type]
            queue.claim("w", LEASE, limit=0),
            queue.claim("w", LEASE, limit=MAX_CLAIM + 1),
            queue.claim("w", LEASE, limit=True),
            queue.renew("job", "w", -LEASE),
            queue.renew("", "w", LEASE),
            queue.ack("job", "w/slash"),
            queue.wait(timedelta(0)),
            queue.wait(MAX_WAIT + timedelta(milliseconds=1)),
        ]
        for call in bad_calls:
            with pytest.raises(ValidationError):
                await call
        with pytest.raises(PayloadTooLarge):
            await queue.enqueue("big", b"x" * (store.max_payload + 1))
        assert await queue.depth() == QueueDepth(0, 0)
        assert await queue.enqueue("x" * 256, b"x" * store.max_payload)  # the edges fit
        assert await queue.enqueue("zürich ✓ 東京", b"")
        taken = await queue.claim("a-Z_0.9:@-" + "w" * 118, MAX_LEASE, limit=MAX_CLAIM)
        assert [len(i.payload) for i in taken] == [store.max_payload, 0]
        for name in ("", "-lead", "has space", "x" * 65, "{tag}"):
            with pytest.raises(ValueError, match="queue name"):
                store.queue(name)

    @pytest.mark.asyncio
    async def test_racing_claimers_never_share_an_item(self, store: Store) -> None:
        queue = fresh_queue(store, "race")
        wanted = [f"item-{n}" for n in range(300)]
        for item_id in wanted:
            assert await queue.enqueue(item_id, item_id.encode())
        rng = random.Random(12)
        limits = [rng.randint(1, 7) for _ in range(20)]

        async def worker(n: int) -> list[str]:
            done: list[str] = []
            while taken := await queue.claim(f"w{n}", HOUR, limit=limits[n]):
                for item in taken:
                    assert item.payload == item.id.encode()
                    assert item.deliveries == 1
                    assert await queue.ack(item.id, f"w{n}")
                    done.append(item.id)
            return done

        results = await asyncio.gather(*(worker(n) for n in range(20)))
        assert Counter(i for done in results for i in done) == Counter(wanted)
        assert await queue.depth() == QueueDepth(0, 0)

    @pytest.mark.asyncio
    async def test_an_emptied_queue_leaves_nothing_behind(
        self, store: Store, clock: ManualClock
    ) -> None:
        baseline = await self.footprint(store)
        queue = fresh_queue(store, "leak")
        for n in range(50):
            await queue.enqueue(f"i{n}", b"payload")
        for _ in range(3):
            await queue.claim("a", LEASE, limit=20)
            await queue.renew("i0", "a", LEASE)
            clock.advance(LEASE * 2)  # everything lapses: redelivered to the next claim
        while taken := await queue.claim("b", LEASE, limit=7):
            for item in taken:
                assert await queue.ack(item.id, "b")
        assert await queue.depth() == QueueDepth(0, 0)
        assert await self.footprint(store) == baseline

    # -- waits: real time, loosely bounded ----------------------------------------------

    @pytest.mark.asyncio
    async def test_a_wait_ends_when_an_item_is_enqueued(self, store: Store) -> None:
        queue = fresh_queue(store, "wake")
        waiter = asyncio.create_task(queue.wait(timedelta(seconds=60)))
        started = time.monotonic()
        n = 0
        try:
            # enqueue until it wakes: an enqueue racing the wait's own start may not count
            while not waiter.done() and time.monotonic() - started < 10:
                await queue.enqueue(f"wake-{n}", b"")
                n += 1
                await asyncio.wait({waiter}, timeout=0.05)
            assert waiter.done(), "an enqueue did not end the wait"
            await waiter
        finally:
            waiter.cancel()
        assert time.monotonic() - started < 10

    @pytest.mark.asyncio
    async def test_a_wait_on_a_quiet_queue_times_out(self, store: Store) -> None:
        queue = fresh_queue(store, "quiet")
        await queue.enqueue("old", b"")  # enqueued before the wait: no reason to end it
        started = time.monotonic()
        await asyncio.wait_for(queue.wait(timedelta(milliseconds=300)), 10)
        assert time.monotonic() - started >= 0.29

    # -- invariants under any interleaving ----------------------------------------------

    def test_queues_match_a_model_under_any_interleaving(self, store_url: str) -> None:
        run_state_machine_as_test(
            queue_machine_for(store_url),
            settings=settings(
                max_examples=self.queue_examples,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
