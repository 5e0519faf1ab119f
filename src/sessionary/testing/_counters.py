"""The counter-group half of the conformance suite."""

from __future__ import annotations

import asyncio
import base64
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from fractions import Fraction
from math import ceil
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionary.clock import ManualClock
from sessionary.counters import (
    Charge,
    ChargeResult,
    CounterReading,
    Counters,
    CounterUsage,
)
from sessionary.errors import InvalidCursor, ValidationError
from sessionary.store import Store

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
HOUR_MS = 3_600_000


@dataclass
class SlidingModel:
    """The sliding window counter from its definition, in exact fractions: windows of
    `window` ms aligned at its multiples; the count is the previous window's count weighted
    by the share of the sliding window still over it, plus the current window's."""

    limit: int
    window: int
    index: int = 0  # the window the counts belong to (now // window)
    current: int = 0
    previous: int = 0

    def _roll(self, now: int) -> None:
        index = now // self.window
        if index == self.index + 1:
            self.previous, self.current = self.current, 0
        elif index != self.index:
            self.previous = self.current = 0
        self.index = index

    def used(self, now: int) -> int:
        """The count at `now` (rounded up), changing nothing."""
        index = now // self.window
        current, previous = self.current, self.previous
        if index == self.index + 1:
            current, previous = 0, current
        elif index != self.index:
            current = previous = 0
        left = Fraction((index + 1) * self.window - now, self.window)
        return ceil(previous * left + current)

    def charge(self, now: int, amount: int) -> bool:
        if amount > 0 and self.used(now) + amount > self.limit:
            return False
        self._roll(now)
        self.current = max(0, self.current + amount)
        return True


@dataclass
class GcraModel:
    """GCRA from its definition, in exact fractions: emission interval window / limit, a
    theoretical arrival time `tat`, a charge allowed while tat stays within a window of now."""

    limit: int
    window: int
    tat: Fraction = field(default_factory=Fraction)

    def used(self, now: int) -> int:
        if self.limit == 0:
            return 0
        return ceil(max(Fraction(0), self.tat - now) * self.limit / self.window)

    def charge(self, now: int, amount: int) -> bool:
        if amount > 0:
            if self.limit == 0:
                return False
            after = max(self.tat, Fraction(now)) + Fraction(amount * self.window, self.limit)
            if after - now > self.window:
                return False
            self.tat = after
        elif amount < 0 and self.limit:
            self.tat = max(Fraction(now), self.tat - Fraction(-amount * self.window, self.limit))
        return True


Algorithm = Literal["sliding", "gcra"]


class CounterConformance:
    """Counter groups: windows, all-or-nothing charges, refunds, races, listings."""

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

    # -- sliding window counters and gcra ------------------------------------------------

    @pytest.mark.asyncio
    async def test_sliding_counters_weigh_the_previous_window(
        self, store: Store, clock: ManualClock
    ) -> None:
        quota = store.counters("slide")
        start = (clock.now_ms() // HOUR_MS + 1) * HOUR_MS  # windows align at multiples
        clock.set(start)

        def search(amount: int = 1) -> Charge:
            return Charge("ip:s", amount, limit=4, window=HOUR, algorithm="sliding")

        burst = await quota.charge(search(4))
        assert (burst.allowed, burst["ip:s"].used, burst["ip:s"].remaining) == (True, 4, 0)
        assert burst["ip:s"].resets_at == start + 2 * HOUR_MS  # the next window still weighs
        refused = await quota.charge(search())
        assert refused.refused is not None
        # the next window starts weighing 4; one more fits once 4 * (left) / hour <= 3
        assert refused.refused.retry_at == start + HOUR_MS + HOUR_MS // 4
        clock.set(start + HOUR_MS)
        assert not (await quota.charge(search())).allowed
        clock.set(start + HOUR_MS + HOUR_MS // 4 - 1)
        assert (await quota.read(search()))["ip:s"].used == 4  # 3.0001 rounds up
        clock.set(start + HOUR_MS + HOUR_MS // 4)
        steady = await quota.charge(search())
        assert (steady.allowed, steady["ip:s"].used) == (True, 4)  # 3 weighed + 1 now
        assert not (await quota.charge(search())).allowed
        back = await quota.refund(search())
        assert (back.allowed, back["ip:s"].used) == (True, 3)
        assert back["ip:s"].resets_at == start + 2 * HOUR_MS  # this window holds nothing
        clock.set(start + 2 * HOUR_MS + HOUR_MS // 2)  # the 4 now weigh nothing
        again = await quota.charge(search(4))
        assert (again.allowed, again["ip:s"].used) == (True, 4)
        clock.set(start + 4 * HOUR_MS)  # two windows on: nothing weighs
        assert (await quota.read(search()))["ip:s"].used == 0

    @pytest.mark.asyncio
    async def test_gcra_counters_allow_a_burst_then_the_steady_rate(
        self, store: Store, clock: ManualClock
    ) -> None:
        quota = store.counters("gcra")
        now = clock.now_ms()
        quarter = HOUR_MS // 4

        def call(amount: int = 1) -> Charge:
            return Charge("api:g", amount, limit=4, window=HOUR, algorithm="gcra")

        burst = await quota.charge(call(4))
        assert (burst.allowed, burst["api:g"].used) == (True, 4)
        assert burst["api:g"].resets_at == now + HOUR_MS  # full again an hour on
        refused = await quota.charge(call())
        assert refused.refused is not None
        assert (refused.refused.key, refused.refused.retry_at) == ("api:g", now + quarter)
        clock.set(now + quarter - 1)
        assert not (await quota.charge(call())).allowed
        clock.set(now + quarter)
        one = await quota.charge(call())
        assert (one.allowed, one["api:g"].used, one["api:g"].retry_at) == (
            True,
            4,
            now + 2 * quarter,
        )
        assert not (await quota.charge(call())).allowed
        clock.set(now + 2 * quarter + quarter // 2)  # one and a half units drained
        reading = (await quota.read(call()))["api:g"]
        assert (reading.used, reading.remaining, reading.retry_at) == (
            3,
            1,
            now + 2 * quarter + quarter // 2,
        )
        back = await quota.refund(call(2))
        assert back["api:g"].used == 1
        assert back["api:g"].resets_at == now + 2 * quarter + quarter
        assert (await quota.charge(call(3))).allowed
        clock.set(now + 10 * HOUR_MS)
        assert (await quota.read(call()))["api:g"].used == 0

    @pytest.mark.asyncio
    async def test_a_refusal_charges_no_counter_whatever_its_algorithm(
        self, store: Store, clock: ManualClock
    ) -> None:
        quota = store.counters("mixed")
        counters = (
            Charge("session:m", limit=10, window=DAY),
            Charge("ip:m", limit=10, window=HOUR, algorithm="sliding"),
            Charge("global", limit=2, window=HOUR, algorithm="gcra"),
        )
        assert (await quota.charge(*counters)).allowed
        assert (await quota.charge(*counters)).allowed
        refused = await quota.charge(*counters)
        assert refused.refused is not None
        assert refused.refused.key == "global"
        assert [r.used for r in (await quota.read(*counters)).counters] == [2, 2, 2]
        refunded = await quota.refund(*counters)
        assert [r.used for r in refunded.counters] == [1, 1, 1]
        clock.advance(MINUTE)
        assert (await quota.charge(*counters)).allowed

    @pytest.mark.asyncio
    async def test_a_running_counter_keeps_its_algorithm(
        self, store: Store, clock: ManualClock
    ) -> None:
        quota = store.counters("algo")
        await quota.charge(Charge("k", limit=5, window=HOUR, algorithm="gcra"))
        others: tuple[Literal["fixed", "sliding"], ...] = ("fixed", "sliding")
        for algorithm in others:
            with pytest.raises(ValidationError, match="gcra"):
                await quota.charge(
                    Charge("other", limit=5, window=HOUR),
                    Charge("k", limit=5, window=HOUR, algorithm=algorithm),
                )
        assert (await quota.read(Charge("other", limit=5, window=HOUR)))["other"].used == 0
        clock.advance(HOUR)  # the gcra counter is full again: gone, the key is free
        fixed = await quota.charge(Charge("k", limit=5, window=HOUR))
        assert (fixed.allowed, fixed["k"].used) == (True, 1)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "charge",
        [
            Charge("k", limit=1, until=2**50, algorithm="sliding"),
            Charge("k", window=HOUR, algorithm="gcra"),
            Charge("k", limit=2**31, window=timedelta(days=60), algorithm="sliding"),
            Charge("k", limit=1, window=HOUR, algorithm="leaky"),  # type: ignore[arg-type]
        ],
    )
    async def test_bad_rate_charges_are_refused(self, store: Store, charge: Charge) -> None:
        with pytest.raises(ValidationError):
            await store.counters("q").charge(charge)

    @pytest.mark.asyncio
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        algorithm=st.sampled_from(["sliding", "gcra"]),
        limit=st.integers(0, 6),
        units=st.integers(1, 12),
        # each pause a share (in %) of the window: mostly within it, sometimes past two
        steps=st.lists(st.tuples(st.integers(0, 250), st.integers(-3, 7)), max_size=25),
    )
    async def test_rate_counters_agree_with_their_models(
        self,
        store: Store,
        clock: ManualClock,
        algorithm: Algorithm,
        limit: int,
        units: int,
        steps: list[tuple[int, int]],
    ) -> None:
        """Random traffic against an independent model of each algorithm: every decision,
        count, `resets_at` and `retry_at` as the model says. On a store that expires counters
        on its own clock (Redis), time moves in steps of 10 s and a gcra window is a whole
        number of emission intervals of them, so no counter is due within a step the test
        clock has not made."""
        unit = 1 if self.sweeps_counters else 10_000
        window = units * unit * (max(limit, 1) if algorithm == "gcra" and unit > 1 else 1)
        model = (SlidingModel if algorithm == "sliding" else GcraModel)(limit, window)
        quota = store.counters("model")
        key = f"k{secrets.token_hex(6)}"
        for share, amount in steps:
            clock.advance(window // unit * share // 100 * unit)
            now = clock.now_ms()
            charge = Charge(key, amount, limit, timedelta(milliseconds=window), algorithm=algorithm)
            result: ChargeResult = await quota.charge(charge)
            assert result.allowed == model.charge(now, amount)
            reading = result[key]
            assert reading.used == model.used(now)
            _check_moments(reading, model, now)

    # -- listing a group ---------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_listing_names_each_running_counter_once(
        self, store: Store, clock: ManualClock
    ) -> None:
        """Page after page of a small limit: every running counter once, as a zero charge
        under its own rate reads it (so a sliding or gcra counter shows its real usage),
        the finished ones and other groups' left out."""
        quota = store.counters("listing")
        charges = [
            *(Charge(f"ip:{n}", amount=n % 3 + 1, limit=9, window=DAY) for n in range(12)),
            *(Charge(f"s:{n}", limit=5, window=HOUR, algorithm="sliding") for n in range(4)),
            *(Charge(f"g:{n}", 2, limit=4, window=HOUR, algorithm="gcra") for n in range(4)),
            Charge("session:u", limit=50, until=clock.now_ms() + 2 * HOUR_MS),
            Charge("global", 7, window=HOUR),  # unlimited
        ]
        for charge in charges:
            assert (await quota.charge(charge)).allowed
        await quota.charge(Charge("short", limit=5, window=MINUTE))
        await store.counters("other").charge(Charge("ip:0", limit=5, window=DAY))
        clock.advance(MINUTE)  # "short" is over; the sliding and gcra counters drained some
        listed = await _list_all(quota, 3)
        assert sorted(c.key for c in listed) == sorted(c.key for c in charges)
        readings = (await quota.read(*charges)).counters
        for charge, reading in zip(charges, readings, strict=True):
            (usage,) = (c for c in listed if c.key == charge.key)
            assert (usage.used, usage.limit, usage.resets_at, usage.algorithm) == (
                reading.used,
                reading.limit,
                reading.resets_at,
                charge.algorithm,
            )
        assert {c.window_ms for c in listed if c.key.startswith(("s:", "g:"))} == {HOUR_MS}
        assert next(c for c in listed if c.key == "session:u").window_ms == 2 * HOUR_MS
        assert next(c for c in listed if c.key == "g:0").used == 2  # a minute drains < 1

    @pytest.mark.asyncio
    async def test_a_listing_of_an_empty_or_finished_group_is_empty(
        self, store: Store, clock: ManualClock
    ) -> None:
        quota = store.counters("quiet")
        # (every page, to the last: a backend may answer a page with none before the end, as
        # Redis does when its SCAN steps meet only other keys)
        assert await _list_all(quota, 10) == []
        await quota.charge(Charge("k", limit=5, window=MINUTE))
        assert [c.key for c in await _list_all(quota, 10)] == ["k"]
        clock.advance(MINUTE)
        assert await _list_all(quota, 10) == []

    @pytest.mark.asyncio
    async def test_a_counter_without_a_known_rate_lists_what_is_known(
        self, store: Store, clock: ManualClock
    ) -> None:
        """A counter set outright (`Counters.set`: no charge, so no rate) lists with its count
        and its window's end, and no limit or window. (Counters an older sessionary wrote,
        sliding ones among them, are each backend's own test.)"""
        now = clock.now_ms()
        legacy = store.counters("legacy")
        await legacy.set("fixed", 4, now + HOUR_MS)
        assert await _list_all(legacy, 10) == [
            CounterUsage("fixed", 4, None, now + HOUR_MS, None, "fixed"),  # its count is its use
        ]

    @pytest.mark.asyncio
    @pytest.mark.parametrize("after", ["", "not a cursor", "a" * 513, "A", "_w"])
    async def test_a_bad_cursor_is_refused(self, store: Store, after: str) -> None:
        await store.counters("q").charge(Charge("k", limit=5, window=DAY))
        with pytest.raises(InvalidCursor):
            await store.counters("q").list(2, after)

    @pytest.mark.asyncio
    async def test_a_forged_cursor_is_refused_or_a_place_to_start(self, store: Store) -> None:
        """A well-formed cursor the backend did not issue: `InvalidCursor`, or a page (never
        another error), whatever the backend makes of it."""
        quota = store.counters("q")
        await quota.charge(Charge("k", limit=5, window=DAY))
        for raw in ("zz", "-1", "99999999999999999999", "ip:0", "\u00e9"):
            forged = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
            try:
                page = await quota.list(2, forged)
            except InvalidCursor:
                continue
            assert all(c.key == "k" for c in page.counters)


async def _list_all(quota: Counters, limit: int) -> list[CounterUsage]:
    """Every page of the group's listing, in order."""
    listed: list[CounterUsage] = []
    after: str | None = None
    for _ in range(10_000):
        page = await quota.list(limit, after)
        listed += page.counters  # (about `limit`: a Redis SCAN step may return more)
        if (after := page.next) is None:
            return listed
    raise AssertionError("the listing never ended")


def _check_moments(reading: CounterReading, model: SlidingModel | GcraModel, now: int) -> None:
    """`resets_at` is the first moment the model reads 0, `retry_at` the first it takes 1."""
    assert model.used(reading.resets_at) == 0
    assert reading.resets_at == now or model.used(reading.resets_at - 1) > 0
    if model.limit == 0:
        assert reading.retry_at is None
        return
    assert reading.retry_at is not None
    assert model.used(reading.retry_at) + 1 <= model.limit
    assert reading.retry_at == now or model.used(reading.retry_at - 1) + 1 > model.limit
