"""A Hypothesis state machine: any interleaving of operations matches an independent model."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any, cast

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from sessionary.clock import ManualClock
from sessionary.errors import SessionNotFound, VersionConflict
from sessionary.store import Store, connect
from sessionary.testing._values import exact, json_objects

MS = timedelta(milliseconds=1)
IDLE_MS = 100
ABSOLUTE_MS = 300
QUOTA = 10


@dataclasses.dataclass
class _Model:
    """What a session must look like, computed independently of any backend."""

    created_at: int
    last_seen_at: int
    version: int = 1
    used: int = 0
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def expires_at(self) -> int:
        return min(self.last_seen_at + IDLE_MS, self.created_at + ABSOLUTE_MS)


def machine_for(store_url: str) -> type[RuleBasedStateMachine]:
    class SessionMachine(RuleBasedStateMachine):
        sessions = Bundle("sessions")
        _runner = asyncio.Runner()
        _store: Store | None = None
        _serial = 0

        def __init__(self) -> None:
            super().__init__()
            if SessionMachine._store is None:
                SessionMachine._store = self.run(connect(store_url, clock=ManualClock()))
            SessionMachine._serial += 1
            store = SessionMachine._store
            self.clock = cast(ManualClock, store.clock)
            self.ns = store.namespace(
                f"sm{SessionMachine._serial}",
                idle_ttl=IDLE_MS * MS,
                absolute_ttl=ABSOLUTE_MS * MS,
            )
            self.model: dict[str, _Model] = {}
            self.last_versions: dict[str, int] = {}

        def run(self, awaitable: Awaitable[Any]) -> Any:
            async def wrapped() -> Any:
                return await awaitable

            return SessionMachine._runner.run(wrapped())

        def now(self) -> int:
            return self.clock.now_ms()

        def live(self, session_id: str) -> _Model | None:
            model = self.model.get(session_id)
            return model if model is not None and self.now() < model.expires_at else None

        @rule(target=sessions, data=json_objects)
        def create(self, data: dict[str, Any]) -> str:
            session = self.run(self.ns.create(data=data))
            self.model[session.id] = _Model(self.now(), self.now(), data=data)
            return str(session.id)

        @rule(ms=st.integers(min_value=0, max_value=120))
        def advance(self, ms: int) -> None:
            self.clock.advance(ms)

        @rule(session_id=sessions)
        def touch(self, session_id: str) -> None:
            touched = self.run(self.ns.touch(session_id))
            model = self.live(session_id)
            assert (touched is None) == (model is None)
            if model is not None:
                model.last_seen_at = self.now()
                assert touched.expires_at == model.expires_at

        @rule(session_id=sessions, data=json_objects, stale=st.booleans(), check=st.booleans())
        def update(self, session_id: str, data: dict[str, Any], stale: bool, check: bool) -> None:
            model = self.live(session_id)
            expected = None
            if check and model is not None:
                expected = model.version - 1 if stale and model.version > 1 else model.version
            try:
                updated = self.run(self.ns.update(session_id, data=data, expected_version=expected))
            except SessionNotFound:
                assert model is None
                return
            except VersionConflict:
                assert model is not None
                assert expected != model.version
                return
            assert model is not None
            assert expected in (None, model.version)
            model.version += 1
            model.data = data
            model.last_seen_at = self.now()
            assert updated.version == model.version
            assert exact(updated.data) == exact(data)

        @rule(session_id=sessions, amount=st.integers(min_value=-3, max_value=5))
        def consume(self, session_id: str, amount: int) -> None:
            model = self.live(session_id)
            try:
                result = self.run(self.ns.consume(session_id, "q", amount=amount, limit=QUOTA))
            except SessionNotFound:
                assert model is None
                return
            assert model is not None
            if amount < 0:
                model.used = max(0, model.used + amount)
                assert result.allowed
            elif model.used + amount <= QUOTA:
                model.used += amount
                assert result.allowed
            else:
                assert not result.allowed
            assert result.used == model.used

        @rule(session_id=consumes(sessions), target=sessions)
        def rotate(self, session_id: str) -> str:
            model = self.live(session_id)
            try:
                rotated = self.run(self.ns.rotate(session_id))
            except SessionNotFound:
                assert model is None
                return session_id
            assert model is not None
            del self.model[session_id]
            model.version += 1
            model.last_seen_at = self.now()
            self.model[rotated.id] = model
            return str(rotated.id)

        @rule(session_id=consumes(sessions))
        def delete(self, session_id: str) -> None:
            model = self.live(session_id)
            assert self.run(self.ns.delete(session_id)) == (model is not None)
            self.model.pop(session_id, None)

        @rule()
        def reap(self) -> None:
            reaped = {s.id for s in self.run(self.ns.reap())}
            due = {sid for sid, m in self.model.items() if m.expires_at <= self.now()}
            assert reaped == due
            for session_id in reaped:
                del self.model[session_id]

        @invariant()
        def matches_the_model(self) -> None:
            for session_id, model in self.model.items():
                stored = self.run(self.ns.get(session_id))
                if self.now() >= model.expires_at:
                    assert stored is None
                    continue
                assert stored is not None
                assert stored.version == model.version
                assert stored.version > self.last_versions.get(session_id, 0) - 1
                self.last_versions[session_id] = stored.version
                assert stored.expires_at == model.expires_at
                assert stored.counters.get("q", 0) == model.used <= QUOTA
                assert exact(stored.data) == exact(model.data)
            assert self.run(self.ns.count()) == sum(
                1 for m in self.model.values() if self.now() < m.expires_at
            )

        def teardown(self) -> None:
            for session_id in list(self.model):
                self.run(self.ns.delete(session_id))

    return SessionMachine
