"""The backend conformance suite (see `sessionary.testing` for how to run it on a backend).

Time is a `ManualClock` the tests move by hand: nothing here sleeps to wait for time.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, timedelta
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import (
    run_state_machine_as_test,
)

from sessionary import ids
from sessionary.clock import ManualClock
from sessionary.codec import INT64_MAX, INT64_MIN, MAX_DEPTH, encode_data, encode_metadata
from sessionary.contract import KEEP
from sessionary.counters import MAX_COUNT
from sessionary.errors import (
    InvalidSessionId,
    PayloadTooLarge,
    SessionExists,
    SessionNotFound,
    ValidationError,
    VersionConflict,
)
from sessionary.model import Session, SessionEvent
from sessionary.store import Namespace, Store, connect
from sessionary.testing._counters import CounterConformance
from sessionary.testing._encryption import EncryptionConformance
from sessionary.testing._lifetimes import LifetimeConformance
from sessionary.testing._logs import LogConformance
from sessionary.testing._machine import machine_for
from sessionary.testing._queues import QueueConformance
from sessionary.testing._session_limits import SessionLimitConformance
from sessionary.testing._sessionize import SessionizeConformance
from sessionary.testing._values import (
    MALFORMED_IDS,
    NOT_JSON,
    exact,
    json_objects,
    metadata_objects,
)

MS = timedelta(milliseconds=1)


class StoreConformance(
    CounterConformance,
    EncryptionConformance,
    LogConformance,
    LifetimeConformance,
    QueueConformance,
    SessionLimitConformance,
    SessionizeConformance,
):
    """The behaviour every backend must show. Subclass, and override `store_url` and
    `footprint` (see `sessionary.testing`)."""

    #: Examples per Hypothesis test; a slow backend may lower it, never to zero.
    hypothesis_examples = 50
    #: Create/delete cycles of the churn test.
    churn_cycles = 50_000

    @pytest.fixture
    def store_url(self) -> str:
        raise NotImplementedError("override the `store_url` fixture with your backend's URL")

    async def footprint(self, store: Store) -> int:
        """How much the backend holds (keys, rows, entries), to prove that nothing leaks."""
        raise NotImplementedError("override `footprint` to measure what your backend holds")

    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock()

    @pytest_asyncio.fixture
    async def store(self, store_url: str, clock: ManualClock) -> AsyncIterator[Store]:
        store = await connect(store_url, clock=clock)
        try:
            yield store
        finally:
            await store.close()

    @pytest.fixture
    def web(self, store: Store) -> Namespace:
        return store.namespace("web", idle_ttl=100 * MS)

    # -- 1. round trip ------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_every_field_round_trips(self, store: Store, clock: ManualClock) -> None:
        web = store.namespace(
            "rt", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12)
        )
        data = {
            "int": 1,
            "big": 2**62,
            "neg": -7,
            "zero": 0,
            "float": 1.5,
            "tiny": 5e-324,
            "negzero": -0.0,
            "bool": True,
            "none": None,
            "text": 'zürich ✓ 東京 😀 \u0000 "quoted"',
            "nested": {"list": [1, [2, {"x": []}]], "empty": {}, "one": [1.0]},
        }
        metadata = {"ua": "Mozilla/5.0", "ip": "203.0.113.9", "ünï": "cödé"}
        created = await web.create(subject="user-1", data=data, metadata=metadata)
        now = clock.now_ms()
        got = await web.get(created.id)
        assert got is not None
        assert got == created
        assert exact(got.data) == exact(data)
        assert math.copysign(1.0, got.data["negzero"]) == -1.0
        assert got.metadata == metadata
        assert got.namespace == "rt"
        assert got.subject == "user-1"
        assert got.created_at == got.last_seen_at == now
        assert got.expires_at == now + 30 * 60 * 1000
        assert got.version == 1
        assert got.counters == {}
        assert got.created.tzinfo is UTC
        bare = await web.create()
        got_bare = await web.get(bare.id)
        assert got_bare is not None
        assert (got_bare.data, got_bare.metadata, got_bare.subject) == ({}, {}, None)

    @pytest.mark.asyncio
    async def test_values_at_the_stated_edges_round_trip(self, web: Namespace) -> None:
        """The deepest data the store accepts (`codec.MAX_DEPTH`), the 64-bit integers, any
        Unicode, and counters up to `counters.MAX_COUNT`, exactly, on every path."""
        deep: Any = {"edge": [INT64_MIN, INT64_MAX, 2**53 + 1, "\U0010ffff\ufffd"]}
        for _ in range(MAX_DEPTH - 3):
            deep = [deep]
        data = {"deep": deep}  # MAX_DEPTH levels, this object the first
        made = await web.create(subject="\U0001f600", data=data)
        await web.append(made.id, "deep", data)
        rotated = await web.rotate(made.id)
        for session in (await web.get(rotated.id), await web.touch(rotated.id), rotated):
            assert session is not None
            assert exact(session.data) == exact(data)
        [event] = (await web.read(rotated.id)).events
        assert exact(event.data) == exact(data)
        for amount, used in ((MAX_COUNT - 2, MAX_COUNT - 2), (1, MAX_COUNT - 1), (1, MAX_COUNT)):
            charged = await web.consume(rotated.id, "c", amount)
            assert (charged.allowed, charged.used) == (True, used)
        past = await web.consume(rotated.id, "c", 1)  # unlimited stops at the most
        assert (past.allowed, past.used) == (False, MAX_COUNT)
        assert (await web.consume(rotated.id, "c", -MAX_COUNT + 1)).used == 1
        limited = await web.consume(rotated.id, "l", MAX_COUNT, limit=MAX_COUNT)
        assert (limited.allowed, limited.used, limited.remaining) == (True, MAX_COUNT, 0)
        stored = await web.get(rotated.id)
        assert stored is not None
        assert dict(stored.counters) == {"c": 1, "l": MAX_COUNT}

    def test_any_json_object_round_trips(self, store_url: str) -> None:
        with asyncio.Runner() as runner:
            store = runner.run(connect(store_url, clock=ManualClock()))
            web = store.namespace("hyp-rt", idle_ttl=timedelta(hours=1))

            @settings(
                max_examples=self.hypothesis_examples,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(data=json_objects, metadata=metadata_objects)
            def round_trip(data: dict[str, Any], metadata: dict[str, str]) -> None:
                async def check() -> None:
                    created = await web.create(data=data, metadata=metadata)
                    got = await web.get(created.id)
                    assert got is not None
                    assert exact(got.data) == exact(data)
                    assert got.metadata == metadata
                    touched = await web.touch(created.id)
                    assert touched is not None
                    assert exact(touched.data) == exact(data)
                    assert await web.delete(created.id)

                runner.run(check())

            try:
                round_trip()
            finally:
                runner.run(store.close())

    @pytest.mark.asyncio
    @pytest.mark.parametrize("bad", NOT_JSON, ids=lambda v: type(v).__name__)
    async def test_non_json_data_is_refused_at_write_time(self, web: Namespace, bad: Any) -> None:
        before = await web.count()
        with pytest.raises(ValidationError):
            await web.create(data={"bad": bad})
        with pytest.raises(ValidationError):
            await web.create(data={"deep": [{"bad": bad}]})
        assert await web.count() == before
        session = await web.create(data={"ok": 1})
        with pytest.raises(ValidationError):
            await web.update(session.id, data={"bad": bad})
        stored = await web.get(session.id)
        assert stored is not None
        assert (stored.data, stored.version) == ({"ok": 1}, 1)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "bad_data", [[], "text", 1, {"a": 1}.items(), defaultdict(int)], ids=repr
    )
    async def test_data_must_be_a_plain_object(self, web: Namespace, bad_data: Any) -> None:
        with pytest.raises(ValidationError):
            await web.create(data=bad_data)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "bad_metadata", [{"k": 1}, {1: "v"}, {"": "v"}, {"k": None}, ["k"], "k=v"], ids=repr
    )
    async def test_metadata_is_str_to_str(self, web: Namespace, bad_metadata: Any) -> None:
        with pytest.raises(ValidationError):
            await web.create(metadata=bad_metadata)
        assert await web.count() == 0

    # -- 2. existing ids ----------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_create_with_a_taken_id_raises(self, web: Namespace, clock: ManualClock) -> None:
        session = await web.create(data={"first": True})
        with pytest.raises(SessionExists):
            await web.create(id=session.id, data={"second": True})
        kept = await web.get(session.id)
        assert kept is not None
        assert kept.data == {"first": True}

    @pytest.mark.asyncio
    async def test_create_with_the_id_of_an_expired_unreaped_session_takes_it(
        self, store: Store, web: Namespace, clock: ManualClock
    ) -> None:
        ended: list[SessionEvent] = []
        store.on("expired", ended.append)
        old = await web.create(data={"first": True})
        clock.advance(1000)  # expired, not reaped yet: the old one is claimed and reported once
        new = await web.create(id=old.id, data={"second": True})
        assert [(e.kind, e.session.id, e.session.data) for e in ended] == [
            ("expired", old.id, {"first": True})
        ]
        assert await web.reap() == []  # nothing left for the reaper: reported exactly once
        got = await web.get(old.id)
        assert got is not None
        assert (got.data, got.version, got.created_at) == ({"second": True}, 1, new.created_at)

    @pytest.mark.asyncio
    async def test_clear_deletes_every_session_and_reports_each_once(
        self, store: Store, clock: ManualClock
    ) -> None:
        ns = store.namespace("clear", idle_ttl=100 * MS)
        other = store.namespace("kept", idle_ttl=100 * MS)
        ended: list[SessionEvent] = []
        store.on("deleted", ended.append)
        store.on("expired", ended.append)
        stale = [await ns.create(data={"n": i}) for i in range(3)]
        clock.advance(150)
        live = [await ns.create(subject="u", data={"n": i}) for i in range(7)]
        survivor = await other.create()
        assert await ns.clear(batch=2) == 7
        assert await ns.count() == 0
        assert await ns.list_subject("u") == []
        assert await ns.reap() == []
        kinds = Counter((e.kind, e.session.id) for e in ended)
        assert kinds == Counter(
            [("expired", s.id) for s in stale] + [("deleted", s.id) for s in live]
        )
        assert await other.get(survivor.id) is not None
        assert await ns.clear() == 0

    @pytest.mark.asyncio
    async def test_concurrent_creates_of_one_id_exactly_one_wins(self, web: Namespace) -> None:
        session_id = ids.new_id()
        results = await asyncio.gather(
            *(web.create(id=session_id, data={"n": n}) for n in range(50)),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, Session)]
        losers = [r for r in results if isinstance(r, SessionExists)]
        assert (len(winners), len(losers)) == (1, 49)
        stored = await web.get(session_id)
        assert stored is not None
        assert stored.data == winners[0].data

    @pytest.mark.asyncio
    async def test_migrations_can_backdate_and_shorten(
        self, store: Store, clock: ManualClock
    ) -> None:
        day = store.namespace("migrated", absolute_ttl=timedelta(hours=24))
        now = clock.now_ms()
        session = await day.create(created_at=now - 3_600_000, expires_at=now + 600_000)
        stored = await day.get(session.id)
        assert stored is not None
        assert (stored.created_at, stored.last_seen_at, stored.expires_at) == (
            now - 3_600_000,
            now,
            now + 600_000,
        )
        capped = await day.create(created_at=now - 3_600_000, expires_at=now + 10**11)
        assert capped.expires_at == now - 3_600_000 + 86_400_000  # never past the policy
        with pytest.raises(ValidationError):
            await day.create(created_at=now + 1)
        with pytest.raises(ValidationError):
            await day.create(created_at=now - 86_400_000)  # born expired
        with pytest.raises(ValidationError):
            await day.create(expires_at=now)

    @pytest.mark.asyncio
    async def test_shared_secrets_are_one_per_name_until_their_time(
        self, store: Store, clock: ManualClock
    ) -> None:
        values = await asyncio.gather(*(store.shared_secret("salt") for _ in range(20)))
        assert len(set(values)) == 1
        assert len(values[0]) == 64
        assert await store.shared_secret("other") != values[0]
        assert await store.shared_secret("salt") == values[0]
        short = await store.shared_secret("daily", lifetime=timedelta(hours=48))
        clock.advance(timedelta(hours=48))
        renewed = await store.shared_secret("daily", lifetime=timedelta(hours=48))
        assert renewed != short
        assert await store.shared_secret("salt") == values[0]

    # -- 3. unknown ids -----------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_unknown_id_is_simply_not_found(self, web: Namespace) -> None:
        unknown = ids.new_id()
        assert await web.get(unknown) is None
        assert await web.touch(unknown) is None
        assert await web.delete(unknown) is False
        with pytest.raises(SessionNotFound):
            await web.update(unknown, data={"x": 1})
        with pytest.raises(SessionNotFound):
            await web.consume(unknown, "searches", limit=5)
        with pytest.raises(SessionNotFound):
            await web.rotate(unknown)
        assert await web.get(unknown) is None  # nothing was created implicitly
        assert await web.count() == 0

    # -- 4. idle expiry -----------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_idle_expiry_slides_with_touch(self, web: Namespace, clock: ManualClock) -> None:
        session = await web.create()
        t0 = clock.now_ms()
        clock.set(t0 + 60)
        touched = await web.touch(session.id)
        assert touched is not None
        assert (touched.last_seen_at, touched.expires_at) == (t0 + 60, t0 + 160)
        clock.set(t0 + 150)
        assert await web.get(session.id) is not None
        clock.set(t0 + 159)
        assert await web.get(session.id) is not None
        clock.set(t0 + 160)  # live while now < expires_at
        assert await web.get(session.id) is None
        clock.set(t0 + 260)
        assert await web.get(session.id) is None
        assert await web.touch(session.id) is None  # a touch does not resurrect

    @pytest.mark.asyncio
    async def test_get_is_a_peek(self, web: Namespace, clock: ManualClock) -> None:
        session = await web.create()
        t0 = clock.now_ms()
        clock.set(t0 + 60)
        peeked = await web.get(session.id)
        assert peeked is not None
        assert (peeked.last_seen_at, peeked.expires_at) == (t0, t0 + 100)
        clock.set(t0 + 99)
        assert await web.get(session.id) is not None
        clock.set(t0 + 100)
        assert await web.get(session.id) is None

    @pytest.mark.asyncio
    async def test_update_records_activity(self, web: Namespace, clock: ManualClock) -> None:
        session = await web.create()
        clock.advance(90)
        updated = await web.update(session.id, data={"a": 1})
        assert updated.expires_at == clock.now_ms() + 100
        clock.advance(99)
        assert await web.get(session.id) is not None

    # -- 5. absolute cap ----------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_absolute_cap_is_never_extended(self, store: Store, clock: ManualClock) -> None:
        web = store.namespace("capped", idle_ttl=100 * MS, absolute_ttl=250 * MS)
        session = await web.create()
        t0 = clock.now_ms()
        for t in (50, 100, 150, 200):
            clock.set(t0 + t)
            touched = await web.touch(session.id)
            assert touched is not None
            assert touched.expires_at == min(t0 + t + 100, t0 + 250)
        clock.set(t0 + 249)
        assert await web.touch(session.id) is not None
        clock.set(t0 + 250)
        assert await web.touch(session.id) is None
        assert await web.get(session.id) is None
        with pytest.raises(SessionNotFound):
            await web.update(session.id, data={})

    @pytest.mark.asyncio
    async def test_absolute_only_is_not_stretched_by_use(
        self, store: Store, clock: ManualClock
    ) -> None:
        playground = store.namespace("absolute", absolute_ttl=timedelta(hours=24), id_prefix="pg_")
        session = await playground.create()
        assert session.id.startswith("pg_")
        clock.advance(timedelta(hours=23))
        touched = await playground.touch(session.id)
        assert touched is not None
        assert touched.expires_at == session.created_at + 24 * 3600 * 1000
        clock.advance(timedelta(hours=1))
        assert await playground.touch(session.id) is None

    # -- 6. optimistic concurrency ------------------------------------------------------

    @pytest.mark.asyncio
    async def test_optimistic_concurrency_loses_no_update(self, web: Namespace) -> None:
        session = await web.create(data={"n": 0})
        await web.update(session.id, data={"n": 1})
        await web.update(session.id, data={"n": 2})
        first = await web.get(session.id)
        second = await web.get(session.id)
        assert first is not None
        assert second is not None
        assert first.version == second.version == 3
        won = await web.update(
            first.id, data={"n": 3, "by": "first"}, metadata={"w": "1"}, expected_version=3
        )
        assert won.version == 4
        with pytest.raises(VersionConflict) as conflict:
            await web.update(second.id, data={"n": 3, "by": "second"}, expected_version=3)
        assert (conflict.value.expected, conflict.value.actual) == (3, 4)
        stored = await web.get(session.id)
        assert stored is not None
        assert (stored.data, stored.metadata, stored.version) == (
            {"n": 3, "by": "first"},
            {"w": "1"},
            4,
        )
        last = await web.update(session.id, metadata={"w": "2"})  # no check: last writer wins
        assert (last.data, last.metadata, last.version) == ({"n": 3, "by": "first"}, {"w": "2"}, 5)

    @pytest.mark.asyncio
    async def test_racing_versioned_writers_exactly_one_wins(self, web: Namespace) -> None:
        session = await web.create(data={"winner": None})
        results = await asyncio.gather(
            *(web.update(session.id, data={"winner": n}, expected_version=1) for n in range(30)),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, Session)]
        assert len(winners) == 1
        assert sum(isinstance(r, VersionConflict) for r in results) == 29
        stored = await web.get(session.id)
        assert stored is not None
        assert (stored.data, stored.version) == (winners[0].data, 2)

    # -- 7. counters --------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_concurrent_consume_never_passes_the_limit(self, web: Namespace) -> None:
        session = await web.create()
        results = await asyncio.gather(
            *(web.consume(session.id, "searches", amount=1, limit=50) for _ in range(200))
        )
        assert sum(r.allowed for r in results) == 50
        assert max(r.used for r in results) == 50
        assert all(r.used <= 50 for r in results)
        now = await web.consume(session.id, "searches", amount=0, limit=50)
        assert (now.used, now.remaining, now.limit) == (50, 0, 50)
        stored = await web.get(session.id)
        assert stored is not None
        assert stored.counters == {"searches": 50}

    @pytest.mark.asyncio
    async def test_consume_refuses_refunds_and_reads(self, web: Namespace) -> None:
        session = await web.create()
        first = await web.consume(session.id, "q", amount=3, limit=5)
        assert (first.allowed, first.used, first.remaining) == (True, 3, 2)
        refused = await web.consume(session.id, "q", amount=3, limit=5)
        assert (refused.allowed, refused.used, refused.remaining) == (False, 3, 2)
        exact = await web.consume(session.id, "q", amount=2, limit=5)
        assert (exact.allowed, exact.used, exact.remaining) == (True, 5, 0)
        refund = await web.consume(session.id, "q", amount=-2, limit=5)
        assert (refund.allowed, refund.used) == (True, 3)
        floor = await web.consume(session.id, "q", amount=-100, limit=5)
        assert (floor.allowed, floor.used) == (True, 0)
        too_big = await web.consume(session.id, "fresh", amount=6, limit=5)
        assert (too_big.allowed, too_big.used) == (False, 0)
        free = await web.consume(session.id, "free", amount=10**12)
        assert (free.allowed, free.used, free.remaining, free.limit) == (True, 10**12, None, None)
        stored = await web.get(session.id)
        assert stored is not None
        assert stored.counters["q"] == 0
        assert stored.counters["free"] == 10**12
        assert stored.version == 1  # counters are not data writes

    @pytest.mark.asyncio
    async def test_consume_does_not_extend_life(self, web: Namespace, clock: ManualClock) -> None:
        session = await web.create()
        clock.advance(99)
        await web.consume(session.id, "q", limit=5)
        clock.advance(1)
        with pytest.raises(SessionNotFound):
            await web.consume(session.id, "q", limit=5)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("counter", "amount", "limit"),
        [
            ("", 1, 5),
            ("has space", 1, 5),
            ("x" * 65, 1, 5),
            ("q", 1.5, 5),
            ("q", True, 5),
            ("q", "1", 5),
            ("q", 1, -1),
            ("q", 1, 2.0),
            (None, 1, 5),
        ],
    )
    async def test_consume_rejects_bad_arguments(
        self, web: Namespace, counter: Any, amount: Any, limit: Any
    ) -> None:
        session = await web.create()
        with pytest.raises(ValidationError):
            await web.consume(session.id, counter, amount=amount, limit=limit)
        stored = await web.get(session.id)
        assert stored is not None
        assert stored.counters == {}

    # -- 8. rotate ----------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_rotate_moves_state_and_kills_the_old_id(
        self, web: Namespace, clock: ManualClock
    ) -> None:
        session = await web.create(subject="u1", data={"cart": [1, 2]}, metadata={"m": "v"})
        await web.consume(session.id, "searches", amount=4, limit=50)
        clock.advance(10)
        rotated = await web.rotate(session.id)
        assert rotated.id != session.id
        assert ids.shard_of(rotated.id) == ids.shard_of(session.id)
        assert (rotated.data, rotated.metadata, rotated.subject) == (
            {"cart": [1, 2]},
            {"m": "v"},
            "u1",
        )
        assert rotated.counters == {"searches": 4}
        assert rotated.created_at == session.created_at
        assert rotated.version == session.version + 1
        assert rotated.expires_at == clock.now_ms() + 100
        assert await web.get(session.id) is None
        assert await web.touch(session.id) is None
        with pytest.raises(SessionNotFound):
            await web.update(session.id, data={"resurrected": True})
        with pytest.raises(SessionNotFound):
            await web.consume(session.id, "searches", limit=50)
        with pytest.raises(SessionNotFound):
            await web.rotate(session.id)
        assert await web.delete(session.id) is False
        assert [s.id for s in await web.list_subject("u1")] == [rotated.id]
        assert await web.get(session.id) is None
        assert await web.count() == 1

    @pytest.mark.asyncio
    async def test_rotate_can_set_the_subject(self, web: Namespace) -> None:
        anonymous = await web.create(data={"cart": ["book"]})
        logged_in = await web.rotate(anonymous.id, subject="alice")
        assert logged_in.subject == "alice"
        assert [s.id for s in await web.list_subject("alice")] == [logged_in.id]
        switched = await web.rotate(logged_in.id, subject="bob")
        assert await web.list_subject("alice") == []
        assert [s.id for s in await web.list_subject("bob")] == [switched.id]

    @pytest.mark.asyncio
    async def test_rotate_racing_an_update_never_resurrects_the_old_id(
        self, web: Namespace
    ) -> None:
        for _ in range(20):
            session = await web.create(subject="racer", data={"v": 0})
            rotated, updated = await asyncio.gather(
                web.rotate(session.id),
                web.update(session.id, data={"v": 1}),
                return_exceptions=True,
            )
            assert isinstance(rotated, Session)
            assert isinstance(updated, (Session, SessionNotFound))
            assert await web.get(session.id) is None
            final = await web.get(rotated.id)
            assert final is not None
            if isinstance(updated, Session):  # the update went first and moved along
                assert final.data == {"v": 1}
            else:
                assert final.data == {"v": 0}
            await web.delete(rotated.id)
        assert await web.list_subject("racer") == []
        assert await web.count() == 0

    @pytest.mark.asyncio
    async def test_rotate_onto_a_taken_id_fails_cleanly(self, web: Namespace) -> None:
        # Ids are random, so this is forced through the contract: what a backend must do if
        # the new id were ever taken.
        first = await web.create(data={"a": 1})
        second = await web.create(id=ids.new_id(shard=ids.shard_of(first.id)), data={"b": 2})
        with pytest.raises(SessionExists):
            await web.store.backend.rotate(
                web.name, first.id, second.id, web.store.clock.now_ms(), web.lifetime, None
            )
        a, b = await web.get(first.id), await web.get(second.id)
        assert a is not None
        assert b is not None
        assert (a.data, b.data) == ({"a": 1}, {"b": 2})

    @pytest.mark.asyncio
    async def test_rotate_replaces_the_payload_under_an_expected_version(
        self, web: Namespace
    ) -> None:
        """What a store that seals payloads with the session id needs: the payload re-sealed
        for the new id lands in the rotate's own step, and only over the version it read."""
        session = await web.create(data={"a": 1}, metadata={"m": "1"})
        backend, now = web.store.backend, web.store.clock.now_ms()
        new_id = ids.new_id(shard=ids.shard_of(session.id))
        with pytest.raises(VersionConflict):
            await backend.rotate(
                web.name, session.id, new_id, now, web.lifetime, KEEP,
                data=encode_data({"a": 2}), expected_version=session.version + 1,
            )  # fmt: skip
        assert await web.get(session.id) == session  # nothing changed
        rotated = await backend.rotate(
            web.name, session.id, new_id, now, web.lifetime, KEEP,
            data=encode_data({"a": 2}), metadata=encode_metadata({"m": "2"}),
            expected_version=session.version,
        )  # fmt: skip
        assert (rotated.id, rotated.version) == (new_id, session.version + 1)
        moved = await web.get(new_id)
        assert moved is not None
        assert (moved.data, moved.metadata) == ({"a": 2}, {"m": "2"})
        assert await web.get(session.id) is None
        kept = await backend.rotate(
            web.name, new_id, ids.new_id(shard=ids.shard_of(new_id)), now, web.lifetime, KEEP
        )
        assert kept.data == encode_data({"a": 2})  # no payload given: it stays

    @pytest.mark.asyncio
    async def test_scan_names_every_stored_session(
        self, web: Namespace, clock: ManualClock
    ) -> None:
        expired = {(await web.create(expires_at=clock.now_ms() + 1)).id for _ in range(20)}
        clock.advance(MS)
        live = {(await web.create()).id for _ in range(230)}
        named: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            found, cursor = await web.store.backend.scan(web.name, cursor, 37)
            named.extend(found)
            pages += 1
            if cursor is None:
                break
        assert set(named) == expired | live  # expired but not reaped yet: still stored
        assert pages >= 2
        assert await web.store.backend.scan("elsewhere", None, 10) == ([], None)

    # -- 9. subjects --------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_revoke_subject_deletes_exactly_its_sessions(
        self, store: Store, web: Namespace
    ) -> None:
        deleted: list[SessionEvent] = []
        store.on("deleted", deleted.append)
        mine = [await web.create(subject="u1", data={"n": n}) for n in range(3)]
        other = await web.create(subject="u2")
        unowned = await web.create()
        assert await web.revoke_subject("u1") == 3
        assert sorted(e.session.id for e in deleted) == sorted(s.id for s in mine)
        assert all(e.session.subject == "u1" for e in deleted)
        assert await web.list_subject("u1") == []
        for session in mine:
            assert await web.get(session.id) is None
        assert await web.get(other.id) is not None
        assert await web.get(unowned.id) is not None
        assert [s.id for s in await web.list_subject("u2")] == [other.id]
        assert await web.revoke_subject("u1") == 0
        assert len(deleted) == 3

    @pytest.mark.asyncio
    async def test_revoke_subject_keeps_the_kept_sessions_untouched(
        self, store: Store, web: Namespace
    ) -> None:
        deleted: list[SessionEvent] = []
        store.on("deleted", deleted.append)
        devices = [await web.create(subject="u1", data={"n": n}) for n in range(5)]
        mine = devices[2]
        other = await web.create(subject="u2")
        unknown = ids.new_id()
        assert await web.revoke_subject("u1", keep=[mine.id, other.id, unknown]) == 4
        assert sorted(e.session.id for e in deleted) == sorted(
            s.id for s in devices if s is not mine
        )
        assert [s.id for s in await web.list_subject("u1")] == [mine.id]
        kept = await web.get(mine.id)
        assert kept is not None
        assert (kept.version, kept.data, kept.expires_at) == (
            mine.version,
            {"n": 2},
            mine.expires_at,
        )
        assert [s.id for s in await web.list_subject("u2")] == [other.id]
        assert await web.get(unknown) is None
        with pytest.raises(ValidationError):  # one id where a sequence of them belongs
            await web.revoke_subject("u1", keep=mine.id)
        assert await web.revoke_subject("u1", keep=[mine.id]) == 0
        assert await web.revoke_subject("u1", keep=[]) == 1  # nothing kept: everyone out
        assert await web.list_subject("u1") == []
        assert [s.id for s in await web.list_subject("u2")] == [other.id]

    @pytest.mark.asyncio
    @pytest.mark.parametrize("bad", MALFORMED_IDS, ids=lambda v: repr(v)[:20])
    async def test_revoke_subject_refuses_a_malformed_kept_id_before_deleting(
        self, web: Namespace, bad: Any
    ) -> None:
        session = await web.create(subject="u1")
        with pytest.raises(InvalidSessionId):
            await web.revoke_subject("u1", keep=[session.id, bad])
        assert [s.id for s in await web.list_subject("u1")] == [session.id]

    @pytest.mark.asyncio
    async def test_revoke_keeping_one_racing_creates_and_moves(
        self, store: Store, web: Namespace
    ) -> None:
        """ "Log out my other devices" while the same user logs in elsewhere and sessions
        move to another user: the kept one survives untouched, every session that was the
        subject's all along is gone, a moved one is deleted only if the revoke came first,
        a new one is either deleted (and reported) or live, never both or neither."""
        deleted: list[SessionEvent] = []
        store.on("deleted", deleted.append)
        for round_ in range(3):
            subject = f"racer{round_}"
            mine = await web.create(subject=subject)
            others = [await web.create(subject=subject) for _ in range(10)]
            movers = [await web.create(subject=subject) for _ in range(10)]
            deleted.clear()
            revoked, *results = await asyncio.gather(
                web.revoke_subject(subject, keep=[mine.id]),
                *(web.create(subject=subject) for _ in range(10)),
                *(web.update(m.id, subject="elsewhere") for m in movers),
                return_exceptions=True,
            )
            created, moved = results[:10], results[10:]
            gone = Counter(e.session.id for e in deleted)
            assert revoked == len(deleted)
            assert all(n == 1 for n in gone.values())  # each reported once
            assert all(e.session.subject == subject for e in deleted)
            assert mine.id not in gone
            kept = await web.get(mine.id)
            assert kept is not None
            assert kept.version == mine.version
            assert all(s.id in gone for s in others)
            for mover, result in zip(movers, moved, strict=True):
                assert isinstance(result, (Session, SessionNotFound))
                assert (mover.id in gone) == isinstance(result, SessionNotFound)
            survivors = {mine.id}
            for new in created:
                assert isinstance(new, Session)
                live = await web.get(new.id) is not None
                assert live != (new.id in gone)
                if live:
                    survivors.add(new.id)
            assert {s.id for s in await web.list_subject(subject)} == survivors

    @pytest.mark.asyncio
    async def test_every_device_logging_out_the_others_at_once_ends_each_once(
        self, store: Store, web: Namespace
    ) -> None:
        """Each call keeps its own session and deletes the rest: whichever runs first
        deletes the others' sessions, so a later call keeps nothing (its own is gone) and
        deletes the first one's. All end, each deleted and reported exactly once."""
        deleted: list[str] = []
        store.on("deleted", lambda event: deleted.append(event.session.id))
        devices = [await web.create(subject="everywhere") for _ in range(10)]
        counts = await asyncio.gather(
            *(web.revoke_subject("everywhere", keep=[d.id]) for d in devices)
        )
        assert sum(counts) == 10
        assert Counter(deleted) == Counter(d.id for d in devices)
        assert await web.list_subject("everywhere") == []

    @pytest.mark.asyncio
    async def test_list_subject_is_newest_first_and_live_only(
        self, web: Namespace, clock: ManualClock
    ) -> None:
        old = await web.create(subject="u3")
        clock.advance(50)
        middle = await web.create(subject="u3")
        clock.advance(10)
        new = await web.create(subject="u3")
        assert [s.id for s in await web.list_subject("u3")] == [new.id, middle.id, old.id]
        clock.advance(45)  # old expired at +100; middle and new live
        assert [s.id for s in await web.list_subject("u3")] == [new.id, middle.id]
        clock.advance(1000)
        assert await web.list_subject("u3") == []
        assert await web.list_subject("nobody") == []

    @pytest.mark.asyncio
    async def test_update_moves_the_subject_index(self, web: Namespace) -> None:
        session = await web.create(subject="before")
        await web.update(session.id, subject="after")
        assert await web.list_subject("before") == []
        assert [s.id for s in await web.list_subject("after")] == [session.id]
        cleared = await web.update(session.id, subject=None)
        assert cleared.subject is None
        assert await web.list_subject("after") == []
        assert await web.revoke_subject("after") == 0
        assert await web.get(session.id) is not None

    @pytest.mark.asyncio
    async def test_subjects_with_separator_like_characters_stay_apart(self, web: Namespace) -> None:
        a = await web.create(subject="team:a")
        ab = await web.create(subject="team:a:b")
        b = await web.create(subject="team:ab")
        assert [s.id for s in await web.list_subject("team:a")] == [a.id]
        assert [s.id for s in await web.list_subject("team:a:b")] == [ab.id]
        assert [s.id for s in await web.list_subject("team:ab")] == [b.id]
        assert await web.revoke_subject("team:a") == 1
        assert await web.get(ab.id) is not None
        assert await web.get(b.id) is not None

    @pytest.mark.asyncio
    @pytest.mark.parametrize("bad", ["", "x" * 257, "a\x00b", "line\nbreak", 7, b"u"], ids=repr)
    async def test_bad_subjects_are_refused(self, web: Namespace, bad: Any) -> None:
        with pytest.raises(ValidationError):
            await web.create(subject=bad)
        with pytest.raises(ValidationError):
            await web.list_subject(bad)
        with pytest.raises(ValidationError):
            await web.revoke_subject(bad)
        assert await web.count() == 0

    @pytest.mark.asyncio
    async def test_a_readiness_ping_proves_a_write_and_leaves_no_session(
        self, store: Store, web: Namespace
    ) -> None:
        """`/readyz` asks `ping(write=True)`: the backend takes a small write (a counter of
        the group `sessionary.health`), again and again, through the contract alone."""
        await store.ping()
        for _ in range(3):
            await store.ping(write=True)
        assert await web.count() == 0

    # -- 10. reaping --------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_concurrent_reapers_expire_each_session_exactly_once(
        self, store: Store, web: Namespace, clock: ManualClock
    ) -> None:
        expired: list[str] = []
        store.on("expired", lambda event: expired.append(event.session.id))
        created: list[str] = []
        for _ in range(10):
            batch = await asyncio.gather(*(web.create(subject=f"u{n % 7}") for n in range(100)))
            created.extend(s.id for s in batch)
        survivor = await web.create(subject="u0")
        clock.advance(99)
        await web.touch(survivor.id)
        clock.advance(1)
        assert await web.count() == 1

        async def reaper() -> list[str]:
            mine: list[str] = []
            while batch := await web.reap(limit=150):
                mine.extend(s.id for s in batch)
            return mine

        results = await asyncio.gather(*(reaper() for _ in range(4)))
        claimed = [session_id for result in results for session_id in result]
        assert len(claimed) == 1000
        assert set(claimed) == set(created)
        assert Counter(expired) == Counter(created)  # each once, no more
        assert await web.reap() == []
        assert await web.get(survivor.id) is not None
        assert [s.id for s in await web.list_subject("u0")] == [survivor.id]

    @pytest.mark.asyncio
    async def test_a_session_touched_between_due_and_claim_is_not_reaped(
        self, store: Store, web: Namespace, clock: ManualClock
    ) -> None:
        backend = store.backend
        expired = await web.create()
        live = await web.create()
        clock.advance(99)
        await web.touch(live.id)
        clock.advance(1)
        now = clock.now_ms()
        assert await backend.due(web.name, now, 10) == [expired.id]
        assert await web.touch(expired.id) is None  # past its time: a touch cannot revive it
        assert [r.id for r in await backend.claim(web.name, [expired.id], now)] == [expired.id]

        clock.advance(99)
        now = clock.now_ms()
        assert await backend.due(web.name, now, 10) == [live.id]
        # The reaper has read `live` as due. Before it claims, a request on a host whose
        # clock is 1 ms behind touches the session, which is live by that clock:
        clock.set(now - 1)
        assert await web.touch(live.id) is not None
        assert await backend.claim(web.name, [live.id], now) == []
        clock.set(now)
        assert await web.get(live.id) is not None
        assert await web.reap() == []

    @pytest.mark.asyncio
    async def test_reap_leaves_live_sessions_and_reports_state(
        self, store: Store, web: Namespace, clock: ManualClock
    ) -> None:
        doomed = await web.create(subject="u", data={"last": "words"})
        await web.consume(doomed.id, "q", amount=2, limit=5)
        clock.advance(60)
        alive = await web.create(subject="u")
        clock.advance(40)
        reaped = await web.reap()
        assert [s.id for s in reaped] == [doomed.id]
        assert reaped[0].data == {"last": "words"}
        assert reaped[0].counters == {"q": 2}
        assert reaped[0].subject == "u"
        assert [s.id for s in await web.list_subject("u")] == [alive.id]
        assert await web.count() == 1

    @pytest.mark.asyncio
    async def test_deleting_an_expired_session_reports_it_expired_once(
        self, store: Store, web: Namespace, clock: ManualClock
    ) -> None:
        events: list[tuple[str, str]] = []
        for kind in ("deleted", "expired"):
            store.on(kind, lambda e: events.append((e.kind, e.session.id)))
        session = await web.create()
        clock.advance(100)
        assert await web.delete(session.id) is False
        assert events == [("expired", session.id)]
        assert await web.reap() == []
        assert events == [("expired", session.id)]

    # -- events -------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_lifecycle_events(self, store: Store, web: Namespace) -> None:
        seen: list[SessionEvent] = []

        async def async_listener(event: SessionEvent) -> None:
            seen.append(event)

        def failing_listener(event: SessionEvent) -> None:
            raise RuntimeError("a broken listener must not break the store")

        for kind in ("created", "updated", "rotated", "deleted"):
            store.on(kind, failing_listener)
            store.on(kind, async_listener)
        session = await web.create(subject="s", data={"a": 1})
        updated = await web.update(session.id, data={"a": 2})
        rotated = await web.rotate(session.id)
        assert await web.delete(rotated.id)
        assert [e.kind for e in seen] == ["created", "updated", "rotated", "deleted"]
        assert seen[0].session == session
        assert seen[1].session == updated
        assert seen[2].session == rotated
        assert seen[2].previous_id == session.id
        assert seen[3].session.id == rotated.id
        assert seen[3].session.data == {"a": 2}
        assert seen[3].namespace == "web"

    @pytest.mark.asyncio
    async def test_unsubscribe_stops_events(self, store: Store, web: Namespace) -> None:
        seen: list[SessionEvent] = []
        unsubscribe = store.on("created", seen.append)
        await web.create()
        unsubscribe()
        await web.create()
        assert len(seen) == 1
        with pytest.raises(ValueError):
            store.on("exploded", seen.append)  # type: ignore[arg-type]

    # -- 12. payload cap and malformed ids ----------------------------------------------

    @pytest.mark.asyncio
    async def test_payload_over_the_cap_is_refused_and_nothing_stored(self, store: Store) -> None:
        small = store.namespace("small", idle_ttl=timedelta(minutes=1), max_payload=1000)
        with pytest.raises(PayloadTooLarge) as too_large:
            await small.create(data={"blob": "x" * 1000})
        assert too_large.value.limit == 1000
        with pytest.raises(PayloadTooLarge):
            await small.create(metadata={"blob": "x" * 1000})
        assert await small.count() == 0
        session = await small.create(data={"blob": "x" * 900})
        with pytest.raises(PayloadTooLarge):
            await small.update(session.id, data={"blob": "x" * 2000})
        stored = await small.get(session.id)
        assert stored is not None
        assert (stored.data, stored.version) == ({"blob": "x" * 900}, 1)

    @pytest.mark.asyncio
    async def test_default_cap_is_one_mebibyte(self, web: Namespace) -> None:
        with pytest.raises(PayloadTooLarge):
            await web.create(data={"blob": "x" * (1 << 20)})
        fits = await web.create(data={"blob": "x" * ((1 << 20) - 100)})
        stored = await web.get(fits.id)
        assert stored is not None
        assert len(stored.data["blob"]) == (1 << 20) - 100

    @pytest.mark.asyncio
    @pytest.mark.parametrize("bad", MALFORMED_IDS, ids=lambda v: repr(v)[:20])
    async def test_malformed_ids_are_refused(self, web: Namespace, bad: Any) -> None:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: web.get(bad),
            lambda: web.touch(bad),
            lambda: web.update(bad, data={}),
            lambda: web.consume(bad, "q", limit=1),
            lambda: web.rotate(bad),
            lambda: web.delete(bad),
        ]
        if bad is not None:  # create(id=None) asks for a fresh id
            calls.append(lambda: web.create(id=bad))
        for call in calls:
            with pytest.raises(InvalidSessionId):
                await call()

    @pytest.mark.asyncio
    async def test_ids_of_another_namespace_prefix_are_malformed(self, store: Store) -> None:
        web = store.namespace("web", idle_ttl=timedelta(minutes=1))
        playground = store.namespace("pg", absolute_ttl=timedelta(minutes=1), id_prefix="pg_")
        anonymous = await playground.create()
        with pytest.raises(InvalidSessionId):
            await web.get(anonymous.id)
        plain = await web.create()
        with pytest.raises(InvalidSessionId):
            await playground.get(plain.id)
        assert await playground.get("pg_" + plain.id) is None  # well-formed, never issued

    @pytest.mark.asyncio
    async def test_namespaces_are_isolated(self, store: Store) -> None:
        a = store.namespace("app-a", idle_ttl=timedelta(minutes=1))
        b = store.namespace("app-b", idle_ttl=timedelta(minutes=1))
        session = await a.create(subject="same")
        assert await b.get(session.id) is None
        assert await b.list_subject("same") == []
        assert await b.revoke_subject("same") == 0
        assert await b.delete(session.id) is False
        assert await a.get(session.id) is not None

    # -- 13. churn ----------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_churn_leaves_nothing_behind(self, store: Store, web: Namespace) -> None:
        baseline = await self.footprint(store)
        chunk = 250

        async def cycle(n: int) -> None:
            session = await web.create(subject=f"user-{n % 50}" if n % 2 else None)
            if n % 3 == 0:
                await web.consume(session.id, "q", limit=10)
            if n % 5 == 0:
                session = await web.rotate(session.id)
            assert await web.delete(session.id)

        for start in range(0, self.churn_cycles, chunk):
            await asyncio.gather(*(cycle(n) for n in range(start, start + chunk)))
        assert await web.count() == 0
        assert await self.footprint(store) == baseline

    # -- invariants under any interleaving ----------------------------------------------

    def test_invariants_hold_under_any_interleaving(self, store_url: str) -> None:
        run_state_machine_as_test(
            machine_for(store_url),
            settings=settings(
                max_examples=self.hypothesis_examples,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
