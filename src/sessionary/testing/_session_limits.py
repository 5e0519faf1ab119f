"""Sessions per subject ("max sessions", Spring Security's maximumSessions) in the conformance
suite: a session that gains a subject finds at most `max_sessions - 1` other live sessions of
it, decided in the write's own atomic step; "refuse" raises `TooManySessions` and writes
nothing, "evict_oldest" removes the least recently active others in that step and announces
each once (`deleted`, reason "evicted"). Expired sessions never count."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionary.clock import ManualClock
from sessionary.contract import OnMaxSessions
from sessionary.errors import SessionNotFound, TooManySessions
from sessionary.model import SessionEvent
from sessionary.store import Namespace, Store, connect

HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)
#: concurrent logins of one subject against a limit of `LIMIT`: the issue's race
LOGINS, LIMIT = 20, 3


def limited(store: Store, on_max: OnMaxSessions, name: str = "") -> Namespace:
    return store.namespace(
        name or f"limit-{on_max}",
        idle_ttl=HOUR,
        max_sessions_per_subject=LIMIT,
        on_max_sessions=on_max,
    )


def evictions(store: Store) -> list[SessionEvent]:
    """The `deleted` events for evictions this process announces from now on."""
    heard: list[SessionEvent] = []
    store.on("deleted", lambda event: heard.append(event) if event.reason == "evicted" else None)
    return heard


async def outcomes(logins: list[asyncio.Future[object]]) -> tuple[int, int]:
    """(logins that succeeded, logins refused with `TooManySessions`); anything else raises."""
    done = await asyncio.gather(*logins, return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException) and not isinstance(outcome, TooManySessions):
            raise outcome
    refused = sum(isinstance(outcome, TooManySessions) for outcome in done)
    return len(done) - refused, refused


class SessionLimitConformance:
    """At most N live sessions per subject, on every backend."""

    hypothesis_examples: int

    @pytest.mark.asyncio
    async def test_concurrent_logins_past_the_limit_are_refused(self, store: Store) -> None:
        ns = limited(store, "refuse")
        created, refused = await outcomes(
            [asyncio.ensure_future(ns.create(subject="alice")) for _ in range(LOGINS)]
        )
        assert (created, refused) == (LIMIT, LOGINS - LIMIT)
        assert len(await ns.list_subject("alice")) == LIMIT
        assert await ns.count() == LIMIT  # a refused create wrote nothing

    @pytest.mark.asyncio
    async def test_concurrent_logins_evict_the_oldest_each_announced_once(
        self, store: Store
    ) -> None:
        ns = limited(store, "evict_oldest")
        heard = evictions(store)
        anonymous = [await ns.create() for _ in range(LOGINS)]
        logged_in = await asyncio.gather(*(ns.rotate(s.id, subject="bob") for s in anonymous))
        live = {s.id for s in await ns.list_subject("bob")}
        assert len(live) == LIMIT
        evicted = Counter(event.session.id for event in heard)
        assert len(evicted) == LOGINS - LIMIT
        assert set(evicted.values()) == {1}
        assert live | set(evicted) == {s.id for s in logged_in}
        assert not live & set(evicted)
        assert all(event.kind == "deleted" and event.session.subject == "bob" for event in heard)
        for session_id in evicted:
            assert await ns.get(session_id) is None

    @pytest.mark.asyncio
    async def test_the_least_recently_active_go_first(
        self, store: Store, clock: ManualClock
    ) -> None:
        ns = limited(store, "evict_oldest")
        heard = evictions(store)
        first, second, third = [await ns.create(subject="carol") for _ in range(LIMIT)]
        clock.advance(SECOND)
        await ns.touch(third.id)
        clock.advance(SECOND)
        await ns.touch(first.id)  # now the second is the one idle longest
        clock.advance(SECOND)
        fourth = await ns.create(subject="carol")
        assert [event.session.id for event in heard] == [second.id]
        remaining = {s.id for s in await ns.list_subject("carol")}
        assert remaining == {first.id, third.id, fourth.id}

    @pytest.mark.asyncio
    async def test_expired_sessions_never_count_and_are_not_evicted(
        self, store: Store, clock: ManualClock
    ) -> None:
        refusing, evicting = limited(store, "refuse"), limited(store, "evict_oldest")
        heard = evictions(store)
        for ns in (refusing, evicting):
            for _ in range(LIMIT):
                await ns.create(subject="dave", idle_ttl=SECOND, absolute_ttl=HOUR)
        clock.advance(2 * SECOND)
        for ns in (refusing, evicting):
            fresh = [await ns.create(subject="dave") for _ in range(LIMIT)]
            assert {s.id for s in await ns.list_subject("dave")} == {s.id for s in fresh}
        assert heard == []  # the expired ones are the reaper's to announce, as expired
        assert len(await evicting.reap()) == LIMIT

    @pytest.mark.asyncio
    async def test_every_way_of_gaining_a_subject_is_limited(self, store: Store) -> None:
        ns = limited(store, "refuse")
        for _ in range(LIMIT):
            await ns.create(subject="erin")
        by_update, by_rotate = await ns.create(data={"cart": 1}), await ns.create()
        with pytest.raises(TooManySessions) as refused:
            await ns.update(by_update.id, subject="erin", data={"cart": 2})
        assert refused.value.code == "too_many_sessions"
        assert refused.value.details() == {"max_sessions": LIMIT}
        with pytest.raises(TooManySessions):
            await ns.rotate(by_rotate.id, subject="erin")
        with pytest.raises(TooManySessions):
            await ns.create(subject="erin")
        # refused writes changed nothing: same ids, data, versions and subjects
        assert await ns.get(by_update.id) == by_update
        assert await ns.get(by_rotate.id) == by_rotate
        assert len(await ns.list_subject("erin")) == LIMIT

    @pytest.mark.asyncio
    async def test_a_session_that_keeps_its_subject_is_not_counted_again(
        self, store: Store
    ) -> None:
        ns = limited(store, "refuse")
        sessions = [await ns.create(subject="fay") for _ in range(LIMIT)]
        rotated = await ns.rotate(sessions[0].id)  # a privilege change: same subject
        rotated = await ns.rotate(rotated.id, subject="fay")
        updated = await ns.update(sessions[1].id, subject="fay", data={"n": 1})
        assert updated.version == 2
        ids = {rotated.id, updated.id, sessions[2].id}
        assert {s.id for s in await ns.list_subject("fay")} == ids
        await ns.create(subject="gus")  # other subjects have their own room
        for _ in range(LIMIT + 2):
            await ns.create()  # no subject, no limit
        assert await ns.count() == LIMIT + 1 + LIMIT + 2

    @pytest.mark.asyncio
    async def test_a_refused_or_missing_session_evicts_nothing(self, store: Store) -> None:
        ns = limited(store, "evict_oldest")
        heard = evictions(store)
        full = [await ns.create(subject="hal") for _ in range(LIMIT)]
        gone = await ns.create()
        await ns.delete(gone.id)
        with pytest.raises(SessionNotFound):
            await ns.update(gone.id, subject="hal")
        with pytest.raises(SessionNotFound):
            await ns.rotate(gone.id, subject="hal")
        assert heard == []
        assert {s.id for s in await ns.list_subject("hal")} == {s.id for s in full}

    def test_the_limit_is_validated_and_part_of_the_policy(self, store: Store) -> None:
        unchecked: Any = store.namespace  # wrong types on purpose
        for bad in (0, -1, True, 2.5):
            with pytest.raises(ValueError, match="max_sessions_per_subject"):
                unchecked("bad-limit", max_sessions_per_subject=bad, idle_ttl=HOUR)
        with pytest.raises(ValueError, match="on_max_sessions"):
            unchecked("bad-mode", idle_ttl=HOUR, max_sessions_per_subject=2, on_max_sessions="lru")
        ns = limited(store, "refuse", "policy")
        assert limited(store, "refuse", "policy").name == ns.name  # the same policy again
        with pytest.raises(ValueError, match="another policy"):
            limited(store, "evict_oldest", "policy")

    def test_no_subject_ever_holds_more_than_the_limit(self, store_url: str) -> None:
        """Whatever mix of logins, rotations, subject changes, logouts and pauses, no subject
        ever has more than the limit of live sessions, under either mode."""
        clock = ManualClock()
        names = itertools.count()
        steps = st.lists(
            st.tuples(
                st.sampled_from(["create", "rotate", "update", "delete", "anonymous", "wait"]),
                st.sampled_from(["ivy", "jon"]),
                st.integers(0, 7),
            ),
            max_size=30,
        )
        with asyncio.Runner() as runner:
            store = runner.run(connect(store_url, clock=clock))

            @settings(
                max_examples=self.hypothesis_examples,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(st.sampled_from(["refuse", "evict_oldest"]), steps)
            def model(on_max: OnMaxSessions, plan: list[tuple[str, str, int]]) -> None:
                ns = limited(store, on_max, f"limit-model-{next(names)}")

                async def check() -> None:
                    held: list[str] = []
                    for action, subject, pick in plan:
                        target = held[pick % len(held)] if held else None
                        try:
                            if action == "create":
                                held.append((await ns.create(subject=subject)).id)
                            elif action == "anonymous":
                                held.append((await ns.create()).id)
                            elif action == "wait":
                                clock.advance(timedelta(minutes=20 * (pick + 1)))
                            elif target is not None and action == "rotate":
                                rotated = await ns.rotate(target, subject=subject)
                                held[held.index(target)] = rotated.id
                            elif target is not None and action == "update":
                                await ns.update(target, subject=subject)
                            elif target is not None:
                                await ns.delete(target)
                        except (TooManySessions, SessionNotFound):
                            pass
                        for name in ("ivy", "jon"):
                            assert len(await ns.list_subject(name)) <= LIMIT

                runner.run(check())

            try:
                model()
            finally:
                runner.run(store.close())
