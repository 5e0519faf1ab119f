"""The per-request session rules on their own (no framework), on every backend: what reaches
the store, which ids are adopted, when a cookie is issued or cleared, change detection, and
concurrent writers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
import pytest_asyncio

from sessionary import ManualClock, Namespace, VersionConflict, ids
from sessionary.session_request import Outcome, RequestSession
from tests.counting import CountingBackend, counted_store

IDLE = timedelta(minutes=30)
WRITERS = 20


@pytest_asyncio.fixture
async def counted(
    store_url: str, clock: ManualClock
) -> AsyncIterator[tuple[Namespace, CountingBackend]]:
    """A namespace on a real backend whose calls are written down."""
    async with counted_store(store_url, clock) as (store, backend):
        yield store.namespace("web", idle_ttl=IDLE), backend


@pytest_asyncio.fixture
async def web(counted: tuple[Namespace, CountingBackend]) -> Namespace:
    return counted[0]


@pytest.fixture
def calls(counted: tuple[Namespace, CountingBackend]) -> list[str]:
    return counted[1].calls


async def test_no_id_costs_no_store_call(web: Namespace, calls: list[str]) -> None:
    for state in (await RequestSession.load(web, None), RequestSession.fresh(web)):
        assert state.untouched
        assert state.get("cart") is None
        assert (state.id, state.is_new, state.subject, state.stale) == (None, True, None, False)
        assert not state.changed()
        assert await state.commit() is Outcome.NOTHING
    assert calls == []


@pytest.mark.parametrize(
    "presented",
    ["not-an-id", "", "x" * 43, ids.new_id("pg_"), ids.new_id() + "'; --"],
)
async def test_a_malformed_id_is_never_adopted_nor_sent_to_the_store(
    web: Namespace, calls: list[str], presented: str
) -> None:
    state = await RequestSession.load(web, presented)
    assert (state.id, state.stale, state.looked_up) == (None, True, False)
    assert calls == []
    assert await RequestSession.load(web, presented) is not state
    assert await (await RequestSession.load(web, presented)).commit() is Outcome.CLEAR
    assert calls == []
    state["cart"] = ["book"]
    assert await state.commit() is Outcome.ISSUE  # a fresh id, issued on the first write
    assert calls == ["create"]
    assert state.id is not None
    assert state.id != presented


async def test_an_unknown_well_formed_id_is_not_adopted_either(
    web: Namespace, calls: list[str]
) -> None:
    planted = ids.new_id()  # an attacker's id, planted in a victim's browser
    state = await RequestSession.load(web, planted)
    assert (state.id, state.stale, state.looked_up) == (None, True, True)
    assert calls == ["touch"]
    await state.rotate(subject="victim")  # a login on the planted id
    assert await state.commit() is Outcome.ISSUE
    assert state.id is not None
    assert state.id != planted
    assert await web.get(planted) is None
    stored = await web.get(state.id)
    assert stored is not None
    assert stored.subject == "victim"


async def test_an_expired_id_is_cleared(
    web: Namespace, calls: list[str], clock: ManualClock
) -> None:
    session = await web.create(data={"cart": ["book"]})
    clock.advance(IDLE)
    calls.clear()
    state = await RequestSession.load(web, session.id)
    assert (state.id, state.stale, dict(state)) == (None, True, {})
    assert await state.commit() is Outcome.CLEAR
    assert calls == ["touch"]


async def test_a_live_id_is_loaded_in_one_round_trip_and_slides_the_idle_expiry(
    web: Namespace, calls: list[str], clock: ManualClock
) -> None:
    session = await web.create(data={"cart": ["book"]})
    clock.advance(IDLE - timedelta(seconds=1))
    calls.clear()
    state = await RequestSession.load(web, session.id)
    assert calls == ["touch"]
    assert (state.id, state.stale, state.is_new, state["cart"]) == (
        session.id,
        False,
        False,
        ["book"],
    )
    clock.advance(timedelta(seconds=2))  # past the first expiry, not the slid one
    assert await web.get(session.id) is not None


async def test_unchanged_data_is_not_written(web: Namespace, calls: list[str]) -> None:
    session = await web.create(data={"cart": ["book"], "theme": {"dark": True}})
    calls.clear()
    state = await RequestSession.load(web, session.id)
    assert state["cart"] == ["book"]
    state["theme"] = {"dark": True}  # the same value again: no change
    state["cart"].append("pen")
    state["cart"].pop()  # changed and changed back
    assert not state.changed()
    assert await state.commit() is Outcome.NOTHING
    assert calls == ["touch"]
    stored = await web.get(session.id)
    assert stored is not None
    assert stored.version == session.version


async def test_a_nested_change_is_written_without_a_new_cookie(
    web: Namespace, calls: list[str]
) -> None:
    session = await web.create(data={"cart": ["book"]})
    calls.clear()
    state = await RequestSession.load(web, session.id)
    state["cart"].append("pen")  # inside a list: the mapping itself is unchanged
    assert state.changed()
    assert await state.commit() is Outcome.NOTHING  # same id: the cookie stands
    assert calls == ["touch", "update"]
    stored = await web.get(session.id)
    assert stored is not None
    assert (stored.data, stored.version) == ({"cart": ["book", "pen"]}, session.version + 1)


async def test_replacing_the_whole_data_drops_the_keys_left_out(web: Namespace) -> None:
    session = await web.create(data={"cart": ["book"], "theme": "dark"})
    state = await RequestSession.load(web, session.id)
    state.data = {"theme": "light"}
    assert await state.commit() is Outcome.NOTHING
    stored = await web.get(session.id)
    assert stored is not None
    assert stored.data == {"theme": "light"}


async def test_rotate_issues_a_new_id_and_kills_the_old_one_at_once(web: Namespace) -> None:
    session = await web.create(data={"cart": ["book"]})
    state = await RequestSession.load(web, session.id)
    await state.rotate(subject="alice")
    assert await web.get(session.id) is None  # dead before the response goes out
    assert await state.commit() is Outcome.ISSUE
    assert state.id is not None
    assert state.id != session.id
    stored = await web.get(state.id)
    assert stored is not None
    assert (stored.subject, stored.data) == ("alice", {"cart": ["book"]})


async def test_rotate_before_anything_is_stored_creates_with_the_subject(
    web: Namespace, calls: list[str]
) -> None:
    state = RequestSession.fresh(web)
    await state.rotate(subject="bob")
    assert state.subject == "bob"
    assert calls == []  # nothing stored until the commit
    assert await state.commit() is Outcome.ISSUE
    assert calls == ["create"]
    assert state.id is not None
    stored = await web.get(state.id)
    assert stored is not None
    assert stored.subject == "bob"


async def test_delete_clears_the_cookie(web: Namespace) -> None:
    session = await web.create(data={"cart": ["book"]})
    state = await RequestSession.load(web, session.id)
    await state.delete()
    assert await web.get(session.id) is None
    assert (state.id, dict(state)) == (None, {})
    assert await state.commit() is Outcome.CLEAR


async def test_concurrent_writers_keep_each_others_keys(web: Namespace) -> None:
    session = await web.create(data={"kept": 1, "dropped": 2})
    loaded = [await RequestSession.load(web, session.id) for _ in range(WRITERS)]
    for number, state in enumerate(loaded):  # all loaded the same version
        state[f"key{number}"] = number
    del loaded[0]["dropped"]

    outcomes = await asyncio.gather(*(state.commit() for state in loaded))

    assert set(outcomes) == {Outcome.NOTHING}
    stored = await web.get(session.id)
    assert stored is not None
    assert stored.data == {"kept": 1, **{f"key{number}": number for number in range(WRITERS)}}


async def test_the_same_key_written_by_two_requests_keeps_the_later_write(
    web: Namespace,
) -> None:
    session = await web.create(data={"theme": "dark", "lang": "en"})
    first = await RequestSession.load(web, session.id)
    second = await RequestSession.load(web, session.id)
    first["theme"] = "light"
    second["lang"] = "fr"
    assert second["theme"] == "dark"  # read, not changed: the first's write must survive
    await first.commit()
    await second.commit()
    stored = await web.get(session.id)
    assert stored is not None
    assert stored.data == {"theme": "light", "lang": "fr"}


async def test_a_session_deleted_meanwhile_is_not_resurrected(
    web: Namespace, calls: list[str]
) -> None:
    session = await web.create(data={"cart": ["book"]})
    writing = await RequestSession.load(web, session.id)
    logging_out = await RequestSession.load(web, session.id)
    await logging_out.delete()
    writing["cart"].append("pen")
    calls.clear()

    assert await writing.commit() is Outcome.CLEAR

    assert writing.deleted_meanwhile
    assert writing.id is None
    assert "create" not in calls
    assert await web.get(session.id) is None
    assert await web.count() == 0


async def test_after_a_failure_a_rotated_id_is_still_issued(web: Namespace) -> None:
    session = await web.create(data={"cart": ["book"]})
    rotated = await RequestSession.load(web, session.id)
    await rotated.rotate(subject="alice")
    assert rotated.outcome_after_failure() is Outcome.ISSUE  # the old id is dead already
    assert rotated.id is not None
    assert rotated.id != session.id

    written = await RequestSession.load(web, rotated.id)
    written["cart"] = []  # not written: the request failed before the commit
    assert written.outcome_after_failure() is Outcome.NOTHING
    fresh = RequestSession.fresh(web)
    fresh["cart"] = ["pen"]
    assert fresh.outcome_after_failure() is Outcome.NOTHING
    assert await web.count() == 1


async def test_after_a_save_the_object_holds_what_is_stored_and_saves_only_later_changes(
    web: Namespace,
) -> None:
    session = await web.create(data={"a": 1})
    mine = await RequestSession.load(web, session.id)
    other = await RequestSession.load(web, session.id)
    other["b"] = 2
    await other.commit()
    mine["c"] = 3
    await mine.commit()  # merged onto the other's write
    assert dict(mine) == {"a": 1, "b": 2, "c": 3}
    version = mine.session.version if mine.session else 0
    assert not mine.changed()
    await mine.commit()  # nothing new: no write
    stored = await web.get(session.id)
    assert stored is not None
    assert stored.version == version
    del mine["b"]  # a later change is compared with what is stored now, not with the load
    await mine.commit()
    stored = await web.get(session.id)
    assert stored is not None
    assert stored.data == {"a": 1, "c": 3}


async def test_writers_of_disjoint_keys_merge_and_both_keep_theirs(web: Namespace) -> None:
    session = await web.create(data={"n": 1, "gone": True, "kept": "x"})
    mine = await RequestSession.load(web, session.id)
    other = await RequestSession.load(web, session.id)
    other["theirs"] = "b"
    del other["gone"]
    await other.commit()
    mine["n"] = 2
    mine["mine"] = "a"
    await mine.commit()  # no key changed by both: merged onto the other's write
    stored = await web.get(session.id)
    assert stored is not None
    assert stored.data == {"n": 2, "kept": "x", "theirs": "b", "mine": "a"}


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.__setitem__("n", s["n"] + 1),  # a counter both incremented: same value
        lambda s: s.__setitem__("n", 99),
        lambda s: s.__delitem__("n"),
        lambda s: s.__setitem__("added", 1),  # a key both added
    ],
)
async def test_a_key_changed_by_both_writers_is_a_conflict_never_a_lost_update(
    web: Namespace, change: Callable[[RequestSession], None]
) -> None:
    session = await web.create(data={"n": 1})
    mine = await RequestSession.load(web, session.id)
    other = await RequestSession.load(web, session.id)
    other["n"] = other["n"] + 1
    other["added"] = 0
    await other.commit()
    change(mine)
    with pytest.raises(VersionConflict):
        await mine.commit()
    stored = await web.get(session.id)
    assert stored is not None
    assert stored.data == {"n": 2, "added": 0}  # the acknowledged write, untouched


async def test_concurrent_increments_of_one_counter_lose_none(web: Namespace) -> None:
    session = await web.create(data={"n": 0})

    async def increment() -> bool:
        state = await RequestSession.load(web, session.id)
        state["n"] = state["n"] + 1
        await asyncio.sleep(0)  # let the others load the same version
        try:
            await state.commit()
        except VersionConflict:
            return False
        return True

    acknowledged = sum(await asyncio.gather(*(increment() for _ in range(WRITERS))))
    stored = await web.get(session.id)
    assert stored is not None
    assert acknowledged >= 1
    assert stored.data["n"] == acknowledged


async def test_set_subject_records_an_owner_without_a_new_id(web: Namespace) -> None:
    session = await web.create(data={"a": 1})
    state = await RequestSession.load(web, session.id)
    state.set_subject("user-9")
    assert state.changed()
    assert await state.commit() is Outcome.NOTHING  # same id: no new cookie
    assert [s.id for s in await web.list_subject("user-9")] == [session.id]
    state.set_subject(None)
    await state.commit()
    assert await web.list_subject("user-9") == []


async def test_list_mine_and_revoke_others_need_a_subject_and_cost_nothing_without(
    web: Namespace, calls: list[str]
) -> None:
    await web.create(subject=None)
    calls.clear()
    for state in (RequestSession.fresh(web), await RequestSession.load(web, None)):
        assert await state.list_mine() == []
        assert await state.revoke_others() == 0
    assert calls == []


async def test_revoke_others_keeps_this_session_in_one_store_call(
    web: Namespace, calls: list[str]
) -> None:
    phone, laptop, tablet = [await web.create(subject="ada", data={"n": n}) for n in range(3)]
    stranger = await web.create(subject="bob")
    state = await RequestSession.load(web, laptop.id)
    assert {s.id for s in await state.list_mine()} == {tablet.id, laptop.id, phone.id}
    calls.clear()
    assert await state.revoke_others() == 2
    assert calls == ["revoke_subject"]  # one atomic step, no list-then-delete loop
    assert [s.id for s in await state.list_mine()] == [laptop.id]
    assert await web.get(phone.id) is None
    assert await web.get(tablet.id) is None
    assert await web.get(stranger.id) is not None
    state["seen"] = True
    assert await state.commit() is Outcome.NOTHING  # this session lives on, same cookie
    assert await state.revoke_others() == 0


async def test_revoke_others_on_login_ends_every_stored_session_of_the_new_subject(
    web: Namespace,
) -> None:
    elsewhere = await web.create(subject="ada")
    state = RequestSession.fresh(web)
    await state.rotate(subject="ada")  # not stored until the commit
    assert [s.id for s in await state.list_mine()] == [elsewhere.id]
    assert await state.revoke_others() == 1
    assert await state.commit() is Outcome.ISSUE
    assert [s.id for s in await state.list_mine()] == [state.id]
