"""Lifecycle events: listeners registered with `Store.on` hear what this process changed.

Listeners run after the change is stored, in registration order, awaited one after the
other (so they see events in order and slow listeners push back instead of piling up tasks).
A listener that raises is logged and skipped; it never undoes or fails the operation.
Events are in-process: each is delivered by the process that made the change (for
`expired`, the reaper that claimed it, which is exactly one).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable

from sessionary.model import EVENT_KINDS, EventKind, SessionEvent

Listener = Callable[[SessionEvent], Awaitable[None] | None]

log = logging.getLogger("sessionary.events")


class EventBus:
    def __init__(self) -> None:
        self._listeners: dict[EventKind, list[Listener]] = {kind: [] for kind in EVENT_KINDS}

    def on(self, kind: EventKind, listener: Listener) -> Callable[[], None]:
        """Register `listener` for `kind`; returns a function that unregisters it."""
        if kind not in self._listeners:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {EVENT_KINDS}")
        listeners = self._listeners[kind]
        listeners.append(listener)

        def unsubscribe() -> None:
            if listener in listeners:
                listeners.remove(listener)

        return unsubscribe

    def wants(self, kind: EventKind) -> bool:
        return bool(self._listeners[kind])

    async def emit(self, event: SessionEvent) -> None:
        for listener in tuple(self._listeners[event.kind]):
            try:
                outcome = listener(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception(
                    "a %r listener failed for session %s...", event.kind, event.session.id[:8]
                )
