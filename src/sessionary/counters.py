"""Counter groups: named counters with windows, charged several at a time, all or nothing.

Quotas and rate limits are counters: "50 searches per session", "100 per client IP per day",
"10,000 per hour in all". A charge names the counters it touches; if any of them would pass its
limit, none is charged, and the result says which refused and when its window ends (the real
moment, stored with the counter). A counter starts at its first charge and its window runs
from there (`window`), or until a fixed moment (`until`, e.g. its session's expiry).

    quota = store.counters("playground")
    result = await quota.charge(
        Charge(f"session:{sid}", limit=50, until=session.expires_at),
        Charge(f"ip:{ip_hash}", limit=100, window=timedelta(days=1)),
        Charge("global", limit=10_000, window=timedelta(hours=1)),
    )
    if not result.allowed: ... result.refused.key, result.refused.resets_at

On Redis all counters of a group share one hash tag, so a charge is one script on one node.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, get_args

from sessionary.clock import to_ms
from sessionary.codec import MAX_SAFE_INT, check_int
from sessionary.contract import (
    MAX_RATE_PRODUCT,
    CounterAlgorithm,
    CounterCharge,
    CounterState,
    counter_at,
    counter_used,
    gcra_level,
)
from sessionary.errors import InvalidCursor, ValidationError

if TYPE_CHECKING:
    from sessionary.store import Store

#: The most a counter holds, and the largest amount or limit of a charge (either sign for an
#: amount): what every backend computes exactly (Redis scripts compute in doubles, exact up to
#: 2^53). An unlimited counter refuses a charge that would take it past this.
MAX_COUNT = MAX_SAFE_INT

GROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_KEY_RE = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,200}")
#: a page's cursor: base64url without padding, as `_page_cursor` makes it
CURSOR_PATTERN = "[A-Za-z0-9_-]{1,512}"
_CURSOR_RE = re.compile(CURSOR_PATTERN)


@dataclass(frozen=True, slots=True)
class Charge:
    """Charge `amount` to the counter `key`, refused past `limit` (None: unlimited).

    Its window is `window` from its first charge, or ends at `until` (ms since the epoch);
    give exactly one; either way it ends by `codec.MAX_SAFE_INT` ms (the year 287,396), where
    every backend still computes with it exactly. A negative amount refunds, 0 reads.

    `algorithm` (docs/quotas.md): "fixed" windows; "sliding", the sliding window counter
    (the previous window's count weighs by how much of it the sliding window still covers);
    "gcra", `limit` per `window` refilled evenly, a burst of up to `limit`. Sliding and gcra
    counters take a `window` (no `until`) and a `limit`, with limit * window in ms at most
    2^52. A counter keeps its algorithm while it runs: charging it under another one is a
    `ValidationError`.
    """

    key: str
    amount: int = 1
    limit: int | None = None
    window: timedelta | None = None
    until: int | None = None
    algorithm: CounterAlgorithm = "fixed"


@dataclass(frozen=True, slots=True)
class CounterReading:
    key: str
    used: int
    limit: int | None
    resets_at: int  # ms since the epoch, UTC: when it is back to 0 if nothing more is charged
    #: ms since the epoch: the first moment a charge of 1 is allowed if nothing else is
    #: charged meanwhile (the charge's own moment when one is allowed now); None: never
    #: (a limit of 0)
    retry_at: int | None = None

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """`allowed`: every charge applied. Otherwise none was, and `refused` is the first counter
    that said no (in the order charged). `counters` are the readings, in that order."""

    allowed: bool
    counters: tuple[CounterReading, ...]
    refused: CounterReading | None = None

    def __getitem__(self, key: str) -> CounterReading:
        for reading in self.counters:
            if reading.key == key:
                return reading
        raise KeyError(key)


@dataclass(frozen=True, slots=True)
class CounterUsage:
    """A running counter as a listing shows it (`Counters.list`): what it uses at the
    listing's moment and when that is back to 0 (as a charge's `CounterReading` says), under
    the rate of the charge that last wrote it. Where that rate is unknown (a counter written
    before backends kept it, or set outright) `window_ms` and `limit` are None, and so is
    `used` for a sliding or gcra counter, whose usage depends on it (a fixed one's is its
    count)."""

    key: str
    used: int | None
    limit: int | None
    resets_at: int  # ms since the epoch
    window_ms: int | None
    algorithm: CounterAlgorithm


@dataclass(frozen=True, slots=True)
class CounterPage:
    counters: tuple[CounterUsage, ...]
    next: str | None  # an opaque cursor for the next page, or None at the end


class Counters:
    """The counters of one group. Get it from `Store.counters`."""

    def __init__(self, store: Store, group: str) -> None:
        if not isinstance(group, str) or not GROUP_RE.fullmatch(group):
            raise ValueError(f"counter group {group!r} must match {GROUP_RE.pattern}")
        self.group = group
        self._backend = store.guarded
        self._clock = store.clock

    async def charge(self, *charges: Charge) -> ChargeResult:
        """Apply every charge, or none if one would pass its limit."""
        now = self._clock.now_ms()
        planned = [_plan(charge, now) for charge in charges]
        if not planned:
            raise ValidationError("charge at least one counter")
        if len({p.key for p in planned}) != len(planned):
            raise ValidationError("each counter appears once in a charge")
        allowed, states = await self._backend.charge_counters(self.group, planned, now)
        for plan, state in zip(planned, states, strict=True):
            if state.algorithm != plan.algorithm:
                raise ValidationError(
                    f"counter {plan.key!r} runs as {state.algorithm}, not {plan.algorithm}"
                )
        readings = tuple(
            _reading(plan, state, now, charge.limit)
            for charge, plan, state in zip(charges, planned, states, strict=True)
        )
        refused = None
        if not allowed:
            refused = next(
                reading
                for charge, reading in zip(charges, readings, strict=True)
                if charge.amount > 0 and reading.used + charge.amount > _limit_of(reading.limit)
            )
        return ChargeResult(allowed, readings, refused)

    async def refund(self, *charges: Charge) -> ChargeResult:
        """Give back what `charges` took (counters never go below 0)."""
        return await self.charge(*(_with_amount(c, -abs(c.amount)) for c in charges))

    async def read(self, *charges: Charge) -> ChargeResult:
        """The counters as they stand (a counter not running reads 0), charging nothing."""
        return await self.charge(*(_with_amount(c, 0) for c in charges))

    async def set(self, key: str, value: int, resets_at: int) -> None:
        """Set a counter outright (for migrations: running it twice changes nothing)."""
        _check_key(key)
        check_int("a counter's value", value, 0, MAX_COUNT)
        check_int("resets_at (ms since the epoch)", resets_at, 0, MAX_SAFE_INT)
        now = self._clock.now_ms()
        await self._backend.set_counters(self.group, [CounterState(key, value, resets_at)], now)

    async def sweep(self, limit: int = 1000) -> int:
        """Drop up to `limit` counters whose window has ended (Redis does this by itself)."""
        return await self._backend.sweep_counters(self.group, self._clock.now_ms(), limit)

    async def list(self, limit: int = 100, after: str | None = None) -> CounterPage:
        """The group's running counters, about `limit` a page (a page may hold fewer, even
        none, before the last): pass `next` as `after` until it is None. Every counter
        running throughout is listed at least once. For operators (the console, the admin
        API): it walks the group, never for a request's path. A cursor this did not issue is
        an `InvalidCursor`."""
        check_int("a page's limit", limit, 1, 10_000)
        now = self._clock.now_ms()
        states, cursor = await self._backend.scan_counters(
            self.group, now, _backend_cursor(after), limit
        )
        usages = {state.key: _usage(state, now) for state in states}  # a key named twice
        return CounterPage(tuple(usages.values()), _page_cursor(cursor))


def _usage(state: CounterState, now: int) -> CounterUsage:
    """What `state` (running at `now`) reads, as a zero charge under its stored rate would."""
    window = state.window_ms or None
    limit = None if state.limit == MAX_COUNT else state.limit  # how `_plan` says "unlimited"
    if state.algorithm != "fixed" and (window is None or state.limit is None):
        return CounterUsage(state.key, None, limit, state.resets_at, window, state.algorithm)
    charge = CounterCharge(state.key, 0, state.limit, state.window_ms, state.algorithm)
    reading = _reading(charge, counter_at(charge, state, now), now, limit)
    return CounterUsage(state.key, reading.used, limit, reading.resets_at, window, state.algorithm)


def _page_cursor(cursor: str | None) -> str | None:
    """A backend's cursor as the page gives it: base64url, so it travels in a URL as is."""
    if cursor is None:
        return None
    return base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=")


def _backend_cursor(after: str | None) -> str | None:
    """The backend's cursor a page's `next` carries; `InvalidCursor` for anything else."""
    if after is None:
        return None
    if not _CURSOR_RE.fullmatch(after):
        raise InvalidCursor(f"not a counters cursor: {after[:40]!r}")
    try:
        return base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidCursor(f"not a counters cursor: {after[:40]!r}") from None


def check_amount(what: str, amount: object) -> int:
    """A charge's amount: an int within +-`MAX_COUNT`."""
    return check_int(what, amount, -MAX_COUNT, MAX_COUNT)


def check_limit(what: str, limit: object) -> int | None:
    """A charge's limit: None (unlimited) or an int from 0 to `MAX_COUNT`."""
    return None if limit is None else check_int(what, limit, 0, MAX_COUNT)


def _limit_of(limit: int | None) -> int:
    return MAX_COUNT if limit is None else limit


def _with_amount(charge: Charge, amount: int) -> Charge:
    return replace(charge, amount=amount)


def _reading(
    charge: CounterCharge, state: CounterState, now: int, limit: int | None
) -> CounterReading:
    """What a counter reads at `now` (`state` as the backend reports it at `now`)."""
    used = counter_used(charge, state, now)
    window = charge.window_ms
    resets_at = state.resets_at
    if charge.algorithm == "sliding":
        ends = state.resets_at - window  # the current window's end
        resets_at = state.resets_at if state.value else ends if state.previous else now
    elif charge.algorithm == "gcra":
        resets_at = max(now, state.resets_at)
    return CounterReading(state.key, used, limit, resets_at, _retry_at(charge, state, now, used))


def _retry_at(charge: CounterCharge, state: CounterState, now: int, used: int) -> int | None:
    """The first moment from `now` at which `used + 1 <= limit` (see `CounterReading`)."""
    limit, window = _limit_of(charge.limit), charge.window_ms
    if used + 1 <= limit:
        return now
    if limit == 0:
        return None
    if charge.algorithm == "fixed":
        return state.resets_at
    if charge.algorithm == "gcra":  # the level drains `limit` per ms down to (limit - 1) windows
        return now + -(-(gcra_level(charge, state, now) - (limit - 1) * window) // limit)
    ends = state.resets_at - window
    if state.value + 1 > limit:  # wait for the next window, where this one's count weighs
        weight = min(state.value, limit)
        return max(ends, ends + window - (limit - 1) * window // weight)
    weight = min(state.previous, limit)  # wait until the previous window weighs little enough
    return ends - (limit - 1 - state.value) * window // weight


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValidationError(f"counter key {key!r} must match {_KEY_RE.pattern}")
    return key


def _plan(charge: Charge, now: int) -> CounterCharge:
    _check_key(charge.key)
    check_amount("a charge's amount", charge.amount)
    check_limit("a charge's limit", charge.limit)
    if charge.algorithm not in get_args(CounterAlgorithm):
        raise ValidationError(f"a charge's algorithm is one of {get_args(CounterAlgorithm)}")
    if (charge.window is None) == (charge.until is None):
        raise ValidationError("a charge has a window or an until, exactly one")
    if charge.window is not None:
        if not isinstance(charge.window, timedelta) or to_ms(charge.window) < 1:
            raise ValidationError("a charge's window is a timedelta of at least 1 ms")
        window_ms = to_ms(charge.window)
        # a sliding counter lives until the end of the window after the current one
        spans = 2 if charge.algorithm == "sliding" else 1
        if now + spans * window_ms > MAX_SAFE_INT:
            raise ValidationError(f"a charge's window ends by {MAX_SAFE_INT} ms since the epoch")
    else:
        if charge.algorithm != "fixed":
            raise ValidationError(f"a {charge.algorithm} charge has a window, not an until")
        until = check_int("a charge's until (ms since the epoch)", charge.until, 0, MAX_SAFE_INT)
        if until <= now:
            raise ValidationError("a charge's until is a moment (int ms) still to come")
        window_ms = until - now
    if charge.algorithm != "fixed" and (
        charge.limit is None or charge.limit * window_ms > MAX_RATE_PRODUCT
    ):
        raise ValidationError(
            f"a {charge.algorithm} charge has a limit, with limit * window ms <= 2^52"
        )
    return CounterCharge(
        charge.key, charge.amount, _limit_of(charge.limit), window_ms, charge.algorithm
    )
