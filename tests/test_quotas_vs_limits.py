"""Our `sliding` counter against `limits`' SlidingWindowCounterRateLimiter, on random traffic.

Both are the sliding window counter over windows aligned at multiples of W since the epoch,
weighing the previous window by the share of [now - W, now) still over it. They differ in one
rounding (docs/quotas.md, "sliding against `limits`"): with x the weighted count, a charge of
n is allowed by us iff x + n <= limit and by `limits` iff floor(x) + n <= limit. So they agree
on every decision where x is a whole number, and elsewhere differ only where the fractional
part of x is what tips it: there `limits` lets the charge through and we refuse.

`limits` computes in floats on `time.time()` seconds; the traffic here keeps every number it
forms exact (W a power of two seconds, moments on a 1/8 s grid), so each of its decisions is
the real-number one and the comparison needs no tolerance.
"""

from __future__ import annotations

import math
import random
import types
from datetime import timedelta
from fractions import Fraction

import limits.storage.memory
import pytest
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from sessionary import Charge, ManualClock, connect

#: moments are multiples of 1/8 s: exact as `limits`' float seconds (ms / 1000)
GRID_MS = 125


class AlignedWindows:
    """An independent exact model: the allowed hits per aligned window, and x from them."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.counts: dict[int, int] = {}

    def weighted(self, now: int) -> Fraction:
        index = now // self.window_ms
        end = (index + 1) * self.window_ms
        previous = self.counts.get(index - 1, 0)
        return Fraction(previous * (end - now), self.window_ms) + self.counts.get(index, 0)

    def add(self, now: int, amount: int) -> None:
        index = now // self.window_ms
        self.counts[index] = self.counts.get(index, 0) + amount


@pytest.mark.parametrize(
    ("window_s", "limit", "seed"),
    [(1, 3, 1), (2, 5, 2), (8, 4, 3), (8, 10, 4), (16, 1, 5), (64, 7, 6)],
)
async def test_sliding_agrees_with_limits_where_the_weighted_count_is_whole(
    monkeypatch: pytest.MonkeyPatch, window_s: int, limit: int, seed: int
) -> None:
    clock = ManualClock()
    assert clock.now_ms() % GRID_MS == 0
    monkeypatch.setattr(
        limits.storage.memory, "time", types.SimpleNamespace(time=lambda: clock.now_ms() / 1000)
    )
    theirs = SlidingWindowCounterRateLimiter(MemoryStorage())
    item = RateLimitItemPerSecond(limit, window_s)
    window_ms = window_s * 1000
    model = AlignedWindows(window_ms)
    store = await connect("memory://", clock=clock)
    quota = store.counters("compare")
    rng = random.Random(seed)
    agreed = {True: 0, False: 0}
    rounded = 0
    try:
        for _ in range(600):
            # mostly within a window, sometimes across one or two
            ticks = window_ms // GRID_MS
            pause = rng.choice([0, rng.randint(0, ticks // 4), rng.randint(0, 5 * ticks // 2)])
            clock.advance(GRID_MS * pause)
            now = clock.now_ms()
            cost = rng.choice([1, 1, 1, 2, limit + 1])
            x = model.weighted(now)
            they_allow = theirs.test(item, "k", cost=cost)
            result = await quota.charge(
                Charge("k", cost, limit, timedelta(seconds=window_s), algorithm="sliding")
            )
            assert result.allowed == (x + cost <= limit)
            assert they_allow == (math.floor(x) + cost <= limit)
            if x.denominator == 1:
                assert result.allowed == they_allow
                agreed[result.allowed] += 1
            elif result.allowed != they_allow:
                # the one difference: the fractional part of x tips the charge over the limit
                assert they_allow
                assert math.floor(x) + cost <= limit < x + cost
                rounded += 1
            if result.allowed:
                assert theirs.hit(item, "k", cost=cost)
                model.add(now, cost)
            elif not they_allow:
                assert not theirs.hit(item, "k", cost=cost)
            # else: they would take it and we do not; neither is charged, so both go on alike
            after = model.weighted(now)
            reading = result["k"]
            # we count the fraction of a hit as used, they count it as free
            assert reading.used == math.ceil(after)
            their_remaining = theirs.get_window_stats(item, "k").remaining
            assert reading.remaining == their_remaining - (after.denominator != 1)
    finally:
        await store.close()
    # the traffic reached both decisions where they agree, and the rounding where they differ
    assert min(agreed.values()) > 20
    assert rounded > 0
