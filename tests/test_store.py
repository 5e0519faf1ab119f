"""The store layer on its own: validation before I/O, policies, ids, clock, connect."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sessionary import (
    InvalidSessionId,
    ManualClock,
    PayloadTooLarge,
    SessionNotFound,
    Store,
    ValidationError,
    VersionConflict,
    connect,
    ids,
)
from sessionary.backends.memory import MemoryBackend
from sessionary.backends.sqlite import SQLiteBackend
from sessionary.clock import to_datetime
from sessionary.contract import Lifetime
from sessionary.model import ConsumeResult

HOUR = timedelta(hours=1)


class Untouchable:
    """A backend any call to which fails the test: validation must stop bad input first."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"backend.{name} was called")


@pytest.fixture
def guarded() -> Store:
    return Store(Untouchable(), clock=ManualClock())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call",
    [
        lambda web: web.get("not-an-id"),
        lambda web: web.touch(None),
        lambda web: web.update("x" * 43, data={}),
        lambda web: web.consume(b"id", "q"),
        lambda web: web.rotate(""),
        lambda web: web.delete(ids.new_id("pg_")),
        lambda web: web.create(id="short"),
    ],
)
async def test_malformed_ids_never_reach_the_backend(guarded: Store, call: Any) -> None:
    web = guarded.namespace("web", idle_ttl=HOUR)
    with pytest.raises(InvalidSessionId):
        await call(web)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda web: web.create(data={"t": (1, 2)}), ValidationError),
        (lambda web: web.create(data={"big": "x" * 600}), PayloadTooLarge),
        (lambda web: web.create(metadata={"k": 1}), ValidationError),
        (lambda web: web.create(subject=""), ValidationError),
        (lambda web: web.update(ids.new_id(), data={"n": float("nan")}), ValidationError),
        (lambda web: web.update(ids.new_id(), expected_version=0), ValidationError),
        (lambda web: web.update(ids.new_id(), expected_version=True), ValidationError),
        (lambda web: web.consume(ids.new_id(), "bad name"), ValidationError),
        (lambda web: web.consume(ids.new_id(), "q", amount=1.0), ValidationError),
        (lambda web: web.consume(ids.new_id(), "q", limit=-1), ValidationError),
        (lambda web: web.list_subject(None), ValidationError),
        (lambda web: web.reap(limit=0), ValidationError),
    ],
)
async def test_bad_input_never_reaches_the_backend(
    guarded: Store, call: Any, error: type[Exception]
) -> None:
    web = guarded.namespace("web", idle_ttl=HOUR, max_payload=512)
    with pytest.raises(error):
        await call(web)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"idle_ttl": timedelta(0)},
        {"idle_ttl": timedelta(microseconds=999)},
        {"absolute_ttl": timedelta(seconds=-1)},
        {"idle_ttl": 30},
        {"idle_ttl": HOUR, "id_prefix": "PG_"},
        {"idle_ttl": HOUR, "id_prefix": "pg"},
        {"idle_ttl": HOUR, "id_prefix": "a_very_long_prefix_"},
        {"idle_ttl": HOUR, "max_payload": 0},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, Any]) -> None:
    store = Store(MemoryBackend())
    with pytest.raises(ValueError):
        store.namespace("web", **kwargs)


@pytest.mark.parametrize("name", ["", "has space", "brace{", "-leading", "x" * 65, None])
def test_bad_namespace_names_are_refused(name: Any) -> None:
    with pytest.raises(ValueError):
        Store(MemoryBackend()).namespace(name, idle_ttl=HOUR)


def test_one_name_one_policy() -> None:
    store = Store(MemoryBackend())
    web = store.namespace("web", idle_ttl=HOUR)
    assert store.namespace("web", idle_ttl=HOUR) is web
    with pytest.raises(ValueError, match="another policy"):
        store.namespace("web", idle_ttl=2 * HOUR)
    assert web.idle_ttl == HOUR
    assert web.absolute_ttl is None


def test_lifetime_math() -> None:
    assert Lifetime(100, None).expires_at(0, 50) == 150
    assert Lifetime(None, 250).expires_at(0, 200) == 250
    assert Lifetime(100, 250).expires_at(0, 200) == 250
    assert Lifetime(100, 250).expires_at(0, 100) == 200
    with pytest.raises(ValueError):
        Lifetime(None, None)


def test_ids_are_256_bits_url_safe_and_carry_a_shard() -> None:
    seen = {ids.new_id("pg_") for _ in range(2000)}
    assert len(seen) == 2000
    for session_id in seen:
        assert ids.validate(session_id, "pg_") == session_id
        assert len(session_id) == 3 + 43
        assert 0 <= ids.shard_of(session_id) < ids.SHARDS
    assert len({ids.shard_of(s) for s in seen}) == ids.SHARDS
    for shard in range(ids.SHARDS):
        assert ids.shard_of(ids.new_id(shard=shard)) == shard


def test_no_message_or_repr_carries_a_whole_id() -> None:
    session_id = ids.new_id()
    for text in (
        str(SessionNotFound(session_id)),
        str(VersionConflict(session_id, 1, 2)),
    ):
        assert session_id not in text
        assert session_id[:8] in text


async def test_session_repr_hides_the_id() -> None:
    store = await connect("memory://")
    session = await store.namespace("web", idle_ttl=HOUR).create()
    assert session.id not in repr(session)


def test_manual_clock_and_datetimes() -> None:
    clock = ManualClock(1_000)
    assert clock.advance(timedelta(seconds=2)) == 3_000
    assert clock.advance(5) == 3_005
    with pytest.raises(ValueError):
        clock.advance(-1)
    assert to_datetime(1_700_000_000_123) == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)


def test_consume_result_remaining() -> None:
    assert ConsumeResult(True, 3, 5).remaining == 2
    assert ConsumeResult(False, 7, 5).remaining == 0
    assert ConsumeResult(True, 3, None).remaining is None


async def test_connect_defaults_to_an_sqlite_file_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = await connect()
    try:
        assert isinstance(store.backend, SQLiteBackend)
        await store.namespace("web", idle_ttl=HOUR).create()
    finally:
        await store.close()
    assert "sessionary.db" in os.listdir(tmp_path)


@pytest.mark.parametrize("url", ["nosuch://x", "no-scheme", "memory://options?x=1"])
async def test_unknown_store_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        await connect(url)


async def test_a_backend_object_can_be_passed() -> None:
    backend = MemoryBackend()
    store = await connect(backend)
    assert store.backend is backend
