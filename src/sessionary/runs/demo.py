"""A run handler to try the runs API with: `runs.handler = "sessionary.runs.demo:echo"`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sessionary.runs.service import Producer


async def echo(producer: Producer, input: Any) -> dict[str, int]:
    """Stream the input's text back a word at a time, `delay_ms` apart (default 200), as
    `chunk` events `{"text": word}`; stop early when the run is cancelled. Input: a string,
    or `{"text": ..., "delay_ms": ...}`."""
    options = input if isinstance(input, dict) else {"text": input}
    text = str(options.get("text") or "hello from a sessionary run")
    delay = max(0, min(int(options.get("delay_ms", 200)), 60_000)) / 1000
    words = text.split()
    sent = 0
    for word in words:
        if producer.cancelled:
            break
        await producer.emit("chunk", {"text": word})
        sent += 1
        with contextlib.suppress(TimeoutError):  # a cancel cuts the pause short
            async with asyncio.timeout(delay):
                await producer.until_cancelled()
    return {"words": sent}
