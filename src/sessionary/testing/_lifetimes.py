"""Per-session lifetimes ("remember me") in the conformance suite: a session's own lifetime is
stored with it, and every touch, update and rotate recomputes its expiry from it (not from the
namespace's policy the call passes) inside the same atomic step."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionary.clock import ManualClock
from sessionary.contract import KEEP, Lifetime
from sessionary.errors import SessionNotFound, ValidationError, VersionConflict
from sessionary.model import Session
from sessionary.store import Namespace, Store, connect

SECOND = timedelta(seconds=1)
DAY = timedelta(days=1)
DAY_MS = 86_400_000


def _lifetime_of(session: Session | None) -> tuple[int | None, int | None, bool]:
    assert session is not None
    return session.lifetime.idle_ms, session.lifetime.absolute_ms, session.own_lifetime


class LifetimeConformance:
    """A session's own idle and absolute ttl, on every backend."""

    hypothesis_examples: int

    @pytest.fixture
    def short(self, store: Store) -> Namespace:
        """A namespace whose policy is short: a session with its own lifetime outlives it."""
        return store.namespace("short", idle_ttl=100 * timedelta(milliseconds=1), absolute_ttl=DAY)

    @pytest.mark.asyncio
    async def test_an_own_lifetime_is_stored_and_slides_by_its_own_idle(
        self, short: Namespace, clock: ManualClock
    ) -> None:
        plain = await short.create()
        remembered = await short.create(subject="u", idle_ttl=10 * SECOND, absolute_ttl=60 * SECOND)
        now = clock.now_ms()
        assert remembered.expires_at == now + 10_000
        assert _lifetime_of(remembered) == (10_000, 60_000, True)
        assert _lifetime_of(plain) == (100, DAY_MS, False)
        assert await short.get(remembered.id) == remembered
        assert [s.id for s in await short.list_subject("u")] == [remembered.id]
        assert _lifetime_of((await short.list_subject("u"))[0]) == (10_000, 60_000, True)
        clock.advance(5 * SECOND)
        assert await short.touch(plain.id) is None  # the policy's 100 ms are long over
        touched = await short.touch(remembered.id)
        assert touched is not None
        assert touched.expires_at == clock.now_ms() + 10_000  # its own idle, not the policy's
        assert _lifetime_of(touched) == (10_000, 60_000, True)
        clock.advance(10 * SECOND)
        assert await short.touch(remembered.id) is None  # idle for its whole own idle ttl

    @pytest.mark.asyncio
    async def test_an_own_absolute_ttl_caps_it(self, short: Namespace, clock: ManualClock) -> None:
        session = await short.create(idle_ttl=10 * SECOND, absolute_ttl=15 * SECOND)
        clock.advance(9 * SECOND)
        assert (touched := await short.touch(session.id)) is not None
        assert touched.expires_at == session.created_at + 15_000
        updated = await short.update(session.id, data={"n": 1})  # an update slides it too
        assert updated.expires_at == session.created_at + 15_000
        clock.advance(6 * SECOND)
        assert await short.touch(session.id) is None
        with pytest.raises(SessionNotFound):
            await short.update(session.id, data={"n": 2})

    @pytest.mark.asyncio
    async def test_a_ttl_not_asked_for_is_the_namespaces(
        self, short: Namespace, clock: ManualClock
    ) -> None:
        idle_only = await short.create(idle_ttl=DAY)
        assert _lifetime_of(idle_only) == (DAY_MS, DAY_MS, True)
        capped = await short.create(absolute_ttl=2 * SECOND)
        assert _lifetime_of(capped) == (100, 2000, True)
        assert capped.expires_at == clock.now_ms() + 100

    @pytest.mark.asyncio
    async def test_rotate_gives_a_lifetime_with_the_new_id_in_one_step(
        self, short: Namespace, clock: ManualClock
    ) -> None:
        anonymous = await short.create(data={"cart": [1]})
        clock.advance(50)
        remembered = await short.rotate(
            anonymous.id, subject="alice", idle_ttl=30 * SECOND, absolute_ttl=DAY
        )
        assert remembered.id != anonymous.id
        assert await short.get(anonymous.id) is None
        assert _lifetime_of(remembered) == (30_000, DAY_MS, True)
        assert remembered.expires_at == clock.now_ms() + 30_000
        assert remembered.subject == "alice"
        assert remembered.data == {"cart": [1]}
        clock.advance(20 * SECOND)
        assert (touched := await short.touch(remembered.id)) is not None
        assert touched.expires_at == clock.now_ms() + 30_000

    @pytest.mark.asyncio
    async def test_an_absolute_ttl_runs_from_creation_not_from_a_rotation(
        self, short: Namespace, clock: ManualClock
    ) -> None:
        session = await short.create(idle_ttl=10 * SECOND, absolute_ttl=15 * SECOND)
        clock.advance(8 * SECOND)
        rotated = await short.rotate(session.id, idle_ttl=10 * SECOND, absolute_ttl=15 * SECOND)
        assert rotated.created_at == session.created_at
        assert rotated.expires_at == session.created_at + 15_000

    @pytest.mark.asyncio
    async def test_the_lifetime_survives_a_rotation_that_does_not_name_one(
        self, short: Namespace, clock: ManualClock
    ) -> None:
        session = await short.create(idle_ttl=10 * SECOND, absolute_ttl=60 * SECOND)
        rotated = await short.rotate(session.id, subject="bob")
        assert _lifetime_of(rotated) == (10_000, 60_000, True)
        assert rotated.expires_at == clock.now_ms() + 10_000
        clock.advance(5 * SECOND)
        assert (touched := await short.touch(rotated.id)) is not None
        assert touched.expires_at == clock.now_ms() + 10_000
        back = await short.rotate(rotated.id, idle_ttl=None, absolute_ttl=None)
        assert _lifetime_of(back) == (100, DAY_MS, False)
        assert back.expires_at == clock.now_ms() + 100  # the policy again, at once
        clock.advance(100)
        assert await short.touch(back.id) is None

    @pytest.mark.asyncio
    async def test_update_gives_keeps_and_drops_an_own_lifetime(
        self, short: Namespace, clock: ManualClock
    ) -> None:
        session = await short.create(data={"n": 0})
        given = await short.update(session.id, data={"n": 1}, idle_ttl=10 * SECOND)
        assert _lifetime_of(given) == (10_000, DAY_MS, True)  # absolute: the namespace's
        assert given.expires_at == clock.now_ms() + 10_000
        kept = await short.update(session.id, data={"n": 2})
        assert _lifetime_of(kept) == (10_000, DAY_MS, True)
        clock.advance(5 * SECOND)  # past the policy's 100 ms idle: alive by its own
        assert await short.touch(session.id) is not None
        dropped = await short.update(session.id, idle_ttl=None, absolute_ttl=None)
        assert _lifetime_of(dropped) == (100, DAY_MS, False)
        assert dropped.expires_at == clock.now_ms() + 100

    @pytest.mark.asyncio
    async def test_a_backend_sets_and_clears_it_in_a_versioned_update(
        self, store: Store, short: Namespace, clock: ManualClock
    ) -> None:
        """The contract beneath `update(idle_ttl=...)`: `own_lifetime` is applied in the same
        step as the write, recomputing the expiry from it, or not at all."""
        backend = store.backend
        session = await short.create()
        own = Lifetime(20_000, 40_000)

        async def update(version: int, change: Lifetime | None) -> int:
            record = await backend.update(
                short.name,
                session.id,
                clock.now_ms(),
                short.lifetime,
                data=None,
                metadata=None,
                subject=KEEP,
                expected_version=version,
                own_lifetime=change,
            )
            assert record.lifetime == change
            return record.expires_at

        with pytest.raises(VersionConflict):
            await update(7, own)
        assert _lifetime_of(await short.get(session.id)) == (100, DAY_MS, False)
        assert await update(1, own) == clock.now_ms() + 20_000
        clock.advance(SECOND)
        assert (touched := await short.touch(session.id)) is not None
        assert touched.expires_at == clock.now_ms() + 20_000
        assert await update(2, None) == clock.now_ms() + 100

    @pytest.mark.asyncio
    async def test_the_reaper_reaps_by_each_sessions_own_expiry(
        self, store: Store, short: Namespace, clock: ManualClock
    ) -> None:
        expired: list[Session] = []
        store.on("expired", lambda event: expired.append(event.session))
        plain = await short.create()
        remembered = await short.create(idle_ttl=10 * SECOND)
        clock.advance(SECOND)
        assert [s.id for s in await short.reap()] == [plain.id]
        assert await short.count() == 1
        clock.advance(9 * SECOND)
        reaped = await short.reap()
        assert [s.id for s in reaped] == [remembered.id]
        assert reaped[0].own_lifetime
        assert reaped[0].lifetime.idle_ms == 10_000
        assert [s.id for s in expired] == [plain.id, remembered.id]

    @pytest.mark.asyncio
    async def test_a_namespace_bounds_what_a_session_may_ask(
        self, store: Store, clock: ManualClock
    ) -> None:
        bounded = store.namespace(
            "bounded", idle_ttl=SECOND, absolute_ttl=DAY, max_absolute_ttl=30 * DAY
        )
        assert (await bounded.create(idle_ttl=7 * DAY, absolute_ttl=30 * DAY)).own_lifetime
        refusals = [
            {"absolute_ttl": 31 * DAY},
            {"idle_ttl": 31 * DAY},
            {"idle_ttl": timedelta(0)},
            {"absolute_ttl": -SECOND},
            {"idle_ttl": 5},
        ]
        for asked in refusals:
            with pytest.raises(ValidationError):
                await bounded.create(**asked)  # type: ignore[arg-type]
        assert await bounded.count() == 1  # nothing stored by a refusal
        session = await bounded.create()
        with pytest.raises(ValidationError, match="above"):
            await bounded.rotate(session.id, absolute_ttl=31 * DAY)
        assert await bounded.get(session.id) == session  # untouched: same id, same lifetime
        unbounded = store.namespace("unbounded-policy", idle_ttl=SECOND, max_absolute_ttl=DAY)
        with pytest.raises(ValidationError, match="absolute_ttl"):
            await unbounded.create(idle_ttl=SECOND * 2)  # its absolute would be unbounded
        assert (await unbounded.create(idle_ttl=2 * SECOND, absolute_ttl=DAY)).own_lifetime
        with pytest.raises(ValueError, match="max_absolute_ttl"):
            store.namespace("over", absolute_ttl=2 * DAY, max_absolute_ttl=DAY)

    def test_expiry_follows_the_own_lifetime_through_any_activity(self, store_url: str) -> None:
        """Against a model: after any sequence of pauses, each followed by a touch or an
        update, a session lives exactly min(last activity + own idle, created + own absolute)
        and is absent once that has passed, whatever the namespace's policy."""
        clock = ManualClock()
        with asyncio.Runner() as runner:
            store = runner.run(connect(store_url, clock=clock))
            ns = store.namespace("lifetime-model", idle_ttl=timedelta(milliseconds=3))

            @settings(
                max_examples=self.hypothesis_examples,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(
                idle=st.integers(1, 500),
                absolute=st.none() | st.integers(1, 2000),
                steps=st.lists(st.tuples(st.integers(0, 600), st.booleans()), max_size=8),
            )
            def model(idle: int, absolute: int | None, steps: list[tuple[int, bool]]) -> None:
                async def check() -> None:
                    ttl = timedelta(milliseconds=idle)
                    cap = None if absolute is None else timedelta(milliseconds=absolute)
                    session = await ns.create(idle_ttl=ttl, absolute_ttl=cap)
                    created = session.created_at
                    expected = Lifetime(idle, absolute).expires_at(created, created)
                    for pause, updates in steps:
                        clock.advance(pause)
                        now = clock.now_ms()
                        if updates:
                            try:
                                got: Session | None = await ns.update(session.id, data={})
                            except SessionNotFound:
                                got = None
                        else:
                            got = await ns.touch(session.id)
                        if now >= expected:
                            assert got is None
                            return
                        expected = Lifetime(idle, absolute).expires_at(created, now)
                        assert got is not None
                        assert got.expires_at == expected

                runner.run(check())

            try:
                model()
            finally:
                runner.run(store.close())
