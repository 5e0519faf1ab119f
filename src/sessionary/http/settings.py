"""Types for settings models: durations written as "30s", "15m", "1h30m"."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, ConfigDict, PlainSerializer

from sessionary.clock import parse_duration, to_ms

#: The longest duration a setting takes: times a moment plus it stays exact in every backend
#: (Redis's Lua doubles) and a date a clock can print.
MAX_DURATION = timedelta(days=36_525)  # 100 years


def _positive(value: object) -> timedelta:
    """A duration of whole milliseconds (anything finer is dropped, as `clock.to_ms` does),
    from 1 ms to `MAX_DURATION`: so it serializes as "<n>ms" and reads back the same."""
    ms = to_ms(parse_duration(value))  # type: ignore[arg-type]
    if not 1 <= ms <= to_ms(MAX_DURATION):
        raise ValueError("a duration is from 1ms to 100 years")
    return timedelta(milliseconds=ms)


Duration = Annotated[
    timedelta,
    BeforeValidator(_positive),
    PlainSerializer(lambda d: f"{to_ms(d)}ms", return_type=str),
]

#: Settings sections refuse keys they do not know, so a typo is an error, not a default.
STRICT = ConfigDict(extra="forbid", frozen=True)
