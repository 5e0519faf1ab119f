"""The counter-group half of the conformance suite."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from sessionary.clock import ManualClock
from sessionary.counters import Charge
from sessionary.errors import ValidationError
from sessionary.store import Store

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


class CounterConformance:
    """Counter groups: windows, all-or-nothing charges, refunds, races."""

    #: False for a backend whose store drops finished counters by itself (Redis TTLs).
    sweeps_counters = True

    @pytest.mark.asyncio
    async def test_charges_count_within_their_windows(
        self, store: Store, clock: ManualClock
    ) -> None:
        quota = store.counters("q")
        now = clock.now_ms()
        first = await quota.charge(Charge("ip:a", amount=2, limit=5, window=DAY))
        assert first.allowed
        reading = first["ip:a"]
        assert (reading.used, reading.limit, reading.remaining) == (2, 5, 3)
        assert reading.resets_at == now + 86_400_000
        clock.advance(HOUR)
        second = await quota.charge(Charge("ip:a", amount=3, limit=5, window=DAY))
        assert (second.allowed, second["ip:a"].used, second["ip:a"].resets_at) == (
            True,
            5,
            now + 86_400_000,
        )
        refused = await quota.charge(Charge("ip:a", limit=5, window=DAY))
        assert not refused.allowed
        assert refused.refused is not None
        assert (refused.refused.key, refused.refused.used, refused.refused.remaining) == (
            "ip:a",
            5,
            0,
        )
        clock.set(now + 86_400_000)  # the window is over: a fresh one starts
        fresh = await quota.charge(Charge("ip:a", limit=5, window=DAY))
        assert (fresh.allowed, fresh["ip:a"].used) == (True, 1)
        assert fresh["ip:a"].resets_at == now + 2 * 86_400_000

    @pytest.mark.asyncio
    async def test_a_refusal_by_one_counter_charges_none(self, store: Store) -> None:
        quota = store.counters("q")
        await quota.charge(Charge("ip:b", amount=3, limit=3, window=DAY))
        result = await quota.charge(
            Charge("session:s", limit=50, window=DAY),
            Charge("ip:b", limit=3, window=DAY),
            Charge("global", limit=1000, window=HOUR),
        )
        assert not result.allowed
        assert result.refused is not None
        assert result.refused.key == "ip:b"
        after = await quota.read(
            Charge("session:s", limit=50, window=DAY),
            Charge("ip:b", limit=3, window=DAY),
            Charge("global", limit=1000, window=HOUR),
        )
        assert [r.used for r in after.counters] == [0, 3, 0]
        ok = await quota.charge(
            Charge("session:s", limit=50, window=DAY), Charge("global", limit=1000, window=HOUR)
        )
        assert ok.allowed
        assert [r.used for r in ok.counters] == [1, 1]

    @pytest.mark.asyncio
    async def test_until_ties_a_counter_to_a_moment(self, store: Store, clock: ManualClock) -> None:
        # A write gives the counter a real time to live of (until - the clock's now): Redis
        # expires the key on its own clock. So the writes happen a minute before the moment
        # (a test taking a minute between two calls would be broken anyway), and the last
        # millisecond is probed with a refused charge, which writes nothing.
        quota = store.counters("q")
        until = clock.now_ms() + 3_600_000
        result = await quota.charge(Charge("session:x", limit=2, until=until))
        assert result["session:x"].resets_at == until
        clock.advance(3_600_000 - 60_000)
        second = await quota.charge(Charge("session:x", limit=2, until=until))
        assert (second.allowed, second["session:x"].used) == (True, 2)
        assert second["session:x"].resets_at == until  # the same window, not a new one
        clock.advance(60_000 - 1)
        last = await quota.charge(Charge("session:x", limit=2, until=until))
        assert not last.allowed  # the counter still holds at the moment's last millisecond
        assert (last["session:x"].used, last["session:x"].resets_at) == (2, until)
        clock.advance(1)
        with pytest.raises(ValidationError):
            await quota.charge(Charge("session:x", limit=2, until=until))  # that moment passed

    @pytest.mark.asyncio
    async def test_refunds_floor_at_zero_and_never_start_a_counter(self, store: Store) -> None:
        quota = store.counters("q")
        await quota.charge(Charge("k", amount=2, limit=10, window=DAY))
        back = await quota.refund(Charge("k", amount=5, limit=10, window=DAY))
        assert (back.allowed, back["k"].used) == (True, 0)
        nothing = await quota.refund(Charge("never", amount=1, limit=10, window=DAY))
        assert nothing["never"].used == 0
        reading = await quota.read(Charge("never", limit=10, window=DAY))
        assert reading["never"].used == 0

    @pytest.mark.asyncio
    async def test_groups_are_apart_and_set_is_idempotent(
        self, store: Store, clock: ManualClock
    ) -> None:
        a, b = store.counters("a"), store.counters("b")
        await a.charge(Charge("k", amount=4, limit=10, window=DAY))
        assert (await b.read(Charge("k", limit=10, window=DAY)))["k"].used == 0
        resets_at = clock.now_ms() + 60_000
        for _ in range(2):
            await b.set("k", 7, resets_at)
        reading = (await b.read(Charge("k", limit=10, window=DAY)))["k"]
        assert (reading.used, reading.resets_at) == (7, resets_at)
        assert (await a.read(Charge("k", limit=10, window=DAY)))["k"].used == 4

    @pytest.mark.asyncio
    async def test_concurrent_charges_never_pass_any_limit(self, store: Store) -> None:
        quota = store.counters("race")

        def search(session: str) -> tuple[Charge, ...]:
            return (
                Charge(f"session:{session}", limit=50, window=DAY),
                Charge("ip:shared", limit=70, window=DAY),
                Charge("global", limit=10_000, window=HOUR),
            )

        results = await asyncio.gather(
            *(quota.charge(*search("one" if n % 2 else "two")) for n in range(240))
        )
        allowed = [r for r in results if r.allowed]
        assert len(allowed) == 70  # the shared IP limit binds
        final = await quota.read(*search("one"), Charge("session:two", limit=50, window=DAY))
        used = {r.key: r.used for r in final.counters}
        assert used["ip:shared"] == used["global"] == 70
        assert used["session:one"] + used["session:two"] == 70
        assert max(used["session:one"], used["session:two"]) <= 50
        refusals = {r.refused.key for r in results if r.refused is not None}
        assert refusals <= {"ip:shared", "session:one", "session:two"}

    @pytest.mark.asyncio
    async def test_sweep_forgets_finished_windows(self, store: Store, clock: ManualClock) -> None:
        quota = store.counters("sweep")
        for n in range(30):
            await quota.charge(Charge(f"ip:{n}", limit=5, window=timedelta(seconds=10)))
        clock.advance(timedelta(seconds=10))
        assert await quota.sweep() == (30 if self.sweeps_counters else 0)
        assert (await quota.read(Charge("ip:3", limit=5, window=DAY)))["ip:3"].used == 0

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "charges",
        [
            (),
            (Charge("bad key", limit=1, window=DAY),),
            (Charge("k{", limit=1, window=DAY),),
            (Charge("k", limit=1),),
            (Charge("k", limit=1, window=DAY, until=1),),
            (Charge("k", limit=-1, window=DAY),),
            (Charge("k", amount=1.5, limit=1, window=DAY),),  # type: ignore[arg-type]
            (Charge("k", limit=1, window=timedelta(0)),),
            (Charge("k", limit=1, window=DAY), Charge("k", limit=1, window=DAY)),
        ],
    )
    async def test_bad_charges_are_refused(self, store: Store, charges: tuple[Charge, ...]) -> None:
        with pytest.raises(ValidationError):
            await store.counters("q").charge(*charges)
