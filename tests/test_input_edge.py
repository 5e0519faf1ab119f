"""The store at its edge, on every backend: what it accepts it can always read and answer again,
and what it cannot store exactly (too deep, not Unicode, an integer past 64 bits, a counter
past what Redis computes exactly) is refused before any I/O, with nothing changed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest

from sessionary import ManualClock, Store
from sessionary.codec import INT64_MAX, INT64_MIN, MAX_DEPTH, MAX_SAFE_INT
from sessionary.counters import MAX_COUNT, Charge
from sessionary.errors import PayloadTooDeep, ValidationError
from sessionary.logs import Event
from sessionary.store import Namespace

LONE = "\udfff"


def nested(depth: int, inner: Any = 1) -> Any:
    """A value nesting `depth` arrays (an object at the top: session data's own level)."""
    value = inner
    for _ in range(depth - 1):
        value = [value]
    return {"deep": value}


@pytest.fixture
def web(store: Store) -> Namespace:
    return store.namespace("web", idle_ttl=timedelta(minutes=5))


# -- depth --------------------------------------------------------------------------------------


async def test_data_at_the_stated_depth_is_read_and_answered_on_every_path(web: Namespace) -> None:
    """254 levels were stored, then every read crashed: now MAX_DEPTH is stored and every
    read answers, with room to spare for what wraps it (a response, an event)."""
    data = nested(MAX_DEPTH)
    made = await web.create(subject="u", data=data)
    for session in (
        made,
        await web.get(made.id),
        await web.touch(made.id),
        await web.update(made.id, data=data),
        *(await web.list_subject("u")),
    ):
        assert session is not None
        assert session.data == data
        # a response wraps the data in a few objects of its own: still encodable
        orjson.dumps({"session": {"data": session.data}, "list": [[session.data]]})
    rotated = await web.rotate(made.id)
    assert rotated.data == data
    await web.append(rotated.id, "deep", nested(MAX_DEPTH))
    [event] = (await web.read(rotated.id)).events
    assert event.data == nested(MAX_DEPTH)


async def test_deeper_than_the_stated_depth_is_refused_and_nothing_changes(
    web: Namespace,
) -> None:
    for depth in (MAX_DEPTH + 1, 254, 255, 1000):
        with pytest.raises(PayloadTooDeep) as refused:
            await web.create(data=nested(depth))
        assert refused.value.code == "payload_too_deep"
        assert refused.value.details() == {"max_depth": MAX_DEPTH}
    assert await web.count() == 0
    session = await web.create(data={"ok": 1})
    with pytest.raises(PayloadTooDeep):
        await web.update(session.id, data=nested(MAX_DEPTH + 1))
    with pytest.raises(PayloadTooDeep):  # event data is a value of its own: 65 arrays
        await web.append(session.id, "deep", [nested(MAX_DEPTH)])
    with pytest.raises(PayloadTooDeep):
        await web.update(session.id, data={"ok": 2}, append=[Event("e", nested(MAX_DEPTH + 1))])
    stored = await web.get(session.id)
    assert stored is not None
    assert (stored.data, stored.version) == ({"ok": 1}, 1)
    assert (await web.read(session.id)).events == []


# -- lone surrogates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"data": {"text": LONE}},
        {"data": {LONE: 1}},
        {"data": {"list": ["ok", f"a{LONE}b"]}},
        {"metadata": {"k": LONE}},
        {"metadata": {LONE: "v"}},
        {"subject": f"user{LONE}"},
    ],
    ids=["data-value", "data-key", "data-nested", "metadata-value", "metadata-key", "subject"],
)
async def test_lone_surrogates_are_refused_wherever_text_is_stored(
    web: Namespace, fields: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError):
        await web.create(**fields)
    assert await web.count() == 0
    session = await web.create(subject="u", data={"ok": 1})
    with pytest.raises(ValidationError):
        await web.update(session.id, **fields)
    stored = await web.get(session.id)
    assert stored is not None
    assert (stored.subject, stored.data, stored.version) == ("u", {"ok": 1}, 1)


async def test_lone_surrogates_are_refused_in_names_subjects_and_events(
    store: Store, web: Namespace
) -> None:
    session = await web.create(subject="u")
    bad = f"x{LONE}"
    with pytest.raises(ValidationError):
        await web.rotate(session.id, subject=bad)
    for call in (web.list_subject(bad), web.revoke_subject(bad)):
        with pytest.raises(ValidationError):
            await call
    with pytest.raises(ValidationError):
        await web.consume(session.id, bad)
    with pytest.raises(ValidationError):
        await web.append(session.id, bad, {})
    with pytest.raises(ValidationError):
        await web.append(session.id, "t", {"text": bad})
    with pytest.raises(ValidationError):
        await web.append(session.id, "t", {}, producer=bad, seq=1)
    with pytest.raises(ValidationError):
        await store.counters("g").charge(Charge(bad, window=timedelta(seconds=1)))
    stored = await web.get(session.id)
    assert stored is not None
    assert (stored.id, stored.subject, stored.counters) == (session.id, "u", {})
    assert (await web.read(session.id)).events == []


async def test_any_valid_unicode_round_trips(web: Namespace) -> None:
    text = "é漢字\U0001f600\u200d\U0010ffff\ufffd"
    made = await web.create(subject=text, data={text: text}, metadata={text: text})
    stored = await web.get(made.id)
    assert stored is not None
    assert (stored.subject, stored.data, stored.metadata) == (text, {text: text}, {text: text})
    assert [s.id for s in await web.list_subject(text)] == [made.id]


# -- integers -----------------------------------------------------------------------------------


async def test_times_past_64_bits_are_refused_naming_the_field(
    web: Namespace, clock: ManualClock
) -> None:
    for created_at in (2**63, 2**64, -1, True, "1700000000000"):
        with pytest.raises(ValidationError, match="created_at"):
            await web.create(created_at=created_at)  # type: ignore[arg-type]
    for expires_at in (2**63, 2**64, 2**70, -1, False):
        with pytest.raises(ValidationError, match="expires_at"):
            await web.create(expires_at=expires_at)  # type: ignore[arg-type]
    assert await web.count() == 0
    session = await web.create()
    for expires_at in (2**63, -(2**63) - 1):
        with pytest.raises(ValidationError, match="expires_at"):
            await web.update(session.id, expires_at=expires_at)
    with pytest.raises(ValidationError, match="expected_version"):
        await web.update(session.id, data={"a": 1}, expected_version=2**63)
    # the largest time is fine: it never extends the policy's deadline
    kept = await web.update(session.id, expires_at=INT64_MAX)
    assert kept.expires_at == clock.now_ms() + 5 * 60_000
    for limit in (2**63, 0, True):
        with pytest.raises(ValidationError, match="limit"):
            await web.read(session.id, limit=limit)


@pytest.mark.parametrize(
    ("amount", "limit"),
    [
        (MAX_COUNT + 1, None),
        (-MAX_COUNT - 1, None),
        (2**63, None),
        (2**64, None),
        (-(2**63) - 1, None),
        (1, MAX_COUNT + 1),
        (1, 2**63),
        (1, 2**64),
        (False, None),
        (True, None),
        ("3", None),
        (1, True),
        (1.0, None),
    ],
)
async def test_counter_numbers_out_of_range_or_not_ints_are_refused(
    store: Store, web: Namespace, amount: Any, limit: Any
) -> None:
    session = await web.create()
    with pytest.raises(ValidationError, match=r"amount|limit"):
        await web.consume(session.id, "c", amount=amount, limit=limit)
    with pytest.raises(ValidationError, match=r"amount|limit"):
        await store.counters("g").charge(
            Charge("c", amount=amount, limit=limit, window=timedelta(hours=1))
        )
    stored = await web.get(session.id)
    assert stored is not None
    assert stored.counters == {}
    assert (await store.counters("g").read(Charge("c", window=timedelta(hours=1))))["c"].used == 0


async def test_an_unlimited_counter_of_a_group_stops_at_the_most(store: Store) -> None:
    """Redis computes counters in Lua doubles: 2^53 + 1 came back as 2^53, and 2^63 - 1 twice
    wrapped around to a negative number. Every backend is exact up to MAX_COUNT (the
    conformance suite holds session counters to it), and a charge past it is refused."""
    group = store.counters("g")
    hour = timedelta(hours=1)
    assert (await group.charge(Charge("c", MAX_COUNT, window=hour)))["c"].used == MAX_COUNT
    refused = await group.charge(Charge("c", 1, window=hour), Charge("d", 1, window=hour))
    assert not refused.allowed
    assert refused.refused is not None
    assert (refused.refused.key, refused.refused.used, refused.refused.limit) == (
        "c",
        MAX_COUNT,
        None,
    )
    assert (await group.read(Charge("d", window=hour)))["d"].used == 0
    assert (await group.charge(Charge("c", -3, window=hour)))["c"].used == MAX_COUNT - 3


async def test_counter_windows_and_settings_past_64_bits_are_refused(
    store: Store, clock: ManualClock
) -> None:
    group = store.counters("g")
    for until in (MAX_SAFE_INT + 1, 2**63, 2**64, True):
        with pytest.raises(ValidationError, match="until"):
            await group.charge(Charge("c", until=until))
    with pytest.raises(ValidationError, match="window"):
        await group.charge(Charge("c", window=timedelta(days=999_999_999)))
    for value in (MAX_COUNT + 1, 2**63, -1, True):
        with pytest.raises(ValidationError, match="value"):
            await group.set("c", value, clock.now_ms() + 1000)
    for resets_at in (MAX_SAFE_INT + 1, 2**63, INT64_MIN - 1, -1, 1.5):
        with pytest.raises(ValidationError, match="resets_at"):
            await group.set("c", 1, resets_at)  # type: ignore[arg-type]
    assert (await group.read(Charge("c", window=timedelta(hours=1))))["c"].used == 0


async def test_producer_seqs_stay_where_every_backend_compares_them_exactly(
    web: Namespace,
) -> None:
    """A producer's seq decides whether an append is a retry: Redis compares them in Lua
    doubles (2^53 + 1 equals 2^53 there), and SQLite failed on 2^64 with a 500."""
    session = await web.create()
    for seq in (MAX_SAFE_INT + 1, 2**63, 2**64, 0, True):
        with pytest.raises(ValidationError, match="seq"):
            await web.append(session.id, "t", 1, producer="p", seq=seq)
    assert await web.append(session.id, "t", 1, producer="p", seq=MAX_SAFE_INT) is not None
    assert await web.append(session.id, "t", 2, producer="p", seq=MAX_SAFE_INT) is None
    assert [e.data for e in (await web.read(session.id)).events] == [1]
