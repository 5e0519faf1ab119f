"""Types for settings models: durations written as "30s", "15m", "1h30m"."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, ConfigDict, PlainSerializer

from sessionary.clock import parse_duration


def _positive(value: object) -> timedelta:
    duration = parse_duration(value)  # type: ignore[arg-type]
    if duration <= timedelta(0):
        raise ValueError("a duration must be positive")
    return duration


Duration = Annotated[
    timedelta,
    BeforeValidator(_positive),
    PlainSerializer(lambda d: f"{int(d.total_seconds() * 1000)}ms", return_type=str),
]

#: Settings sections refuse keys they do not know, so a typo is an error, not a default.
STRICT = ConfigDict(extra="forbid", frozen=True)
