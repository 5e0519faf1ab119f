"""Time, injected. Everything in sessionary asks a `Clock` for "now" (integer ms since the Unix
epoch, UTC), so tests move time forward instead of sleeping."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch, UTC."""
        ...


class SystemClock:
    """The wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to. For tests and simulations."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = int(start_ms)

    def now_ms(self) -> int:
        return self._now

    def advance(self, by: int | timedelta) -> int:
        """Move forward by `by` (ms or a timedelta); returns the new now."""
        step = to_ms(by) if isinstance(by, timedelta) else int(by)
        if step < 0:
            raise ValueError("a ManualClock never goes backwards; use set() on purpose")
        self._now += step
        return self._now

    def set(self, now_ms: int) -> None:
        self._now = int(now_ms)

    def __repr__(self) -> str:
        return f"ManualClock(now_ms={self._now})"


def to_ms(delta: timedelta) -> int:
    """A timedelta as whole milliseconds (floor), exactly: integer arithmetic on the
    timedelta's days, seconds and microseconds (going through `total_seconds()`, a float, makes
    1001 ms into 1000). Every duration in sessionary becomes ms through this."""
    return delta // _MS


_MS = timedelta(milliseconds=1)
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_RE = re.compile(r"(\d+)(ms|s|m|h|d)")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """ "30s", "15m", "1h30m", "500ms", "2d" (or a number of seconds) as a timedelta.
    Anything else, or a duration too long for a timedelta, is a ValueError."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError("a duration is like '30s', '15m', '1h30m' or a number of seconds")
    try:
        if isinstance(text, int | float):
            return timedelta(seconds=text)
        compact = text.replace(" ", "").lower()
        parts = _DURATION_RE.findall(compact)
        if not parts or "".join(n + u for n, u in parts) != compact:
            raise ValueError(
                f"{text!r} is not a duration: write it like '30s', '15m', '1h30m', '500ms' or '2d'"
            )
        return timedelta(milliseconds=sum(int(n) * _UNITS[u] for n, u in parts))
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None


def to_datetime(ms: int) -> datetime:
    """Milliseconds since the epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=ms)


def iso_utc(ms: int) -> str:
    """Milliseconds since the epoch as ISO-8601 UTC with milliseconds: 2026-11-22T09:30:00.250Z."""
    return to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SYSTEM_CLOCK = SystemClock()
