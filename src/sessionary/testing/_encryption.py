"""Encryption at rest in the conformance suite: what a backend must do for a store that seals
payloads (`sessionary.sealing`): keep any bytes exactly (sealed blobs are not JSON, nor UTF-8),
let a rotate carry a payload re-sealed for the new id, page through a namespace (`scan`) for
a rekey, and take a write that is no activity. And what the store then guarantees on top of
it: a blob moved elsewhere never opens, keys rotate, `rekey` under concurrent writers loses
nothing, a session ending unreadable is still announced.

These need the `cryptography` package (`pip install 'sessionary[testing]'` brings it)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta

import pytest

from sessionary import ids
from sessionary.backends import open_backend
from sessionary.clock import ManualClock
from sessionary.contract import KEEP, Lifetime, Record
from sessionary.errors import SessionUnreadable, VersionConflict
from sessionary.model import SessionEvent
from sessionary.sealing import MAGIC, EncryptionKeys, Sealer
from sessionary.store import Namespace, Store

IDLE = timedelta(minutes=30)
POLICY = Lifetime(30 * 60_000, None)
KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
#: bytes no JSON encoder writes and no UTF-8 decoder accepts, NUL among them
BINARY = bytes(range(256)) + b"\x00\xff\xfe"


@asynccontextmanager
async def stores(
    url: str, clock: ManualClock, *keysets: EncryptionKeys | None
) -> AsyncIterator[list[Store]]:
    """Stores over one backend (memory too), each with its own keys (None: none): as
    processes sharing a store with different configurations. For a backend's own tests of
    encryption, too."""
    backend = await open_backend(url)
    try:
        yield [
            Store(backend, clock=clock, sealer=None if keys is None else Sealer(keys))
            for keys in keysets
        ]
    finally:
        await backend.close()


def _web(store: Store, name: str = "sealed") -> Namespace:
    return store.namespace(name, idle_ttl=IDLE)


async def stored(store: Store, session_id: str, ns: str = "sealed") -> Record:
    """What the backend holds for a live session, as bytes."""
    record = await store.backend.get(ns, session_id, store.clock.now_ms())
    assert record is not None
    return record


def _current(store: Store, records: Sequence[Record]) -> bool:
    sealer = store.sealer
    assert sealer is not None
    return all(sealer.is_current(r.data) and sealer.is_current(r.metadata) for r in records)


class EncryptionConformance:
    """Encryption at rest over every backend."""

    @pytest.mark.asyncio
    async def test_any_bytes_round_trip_through_the_backend(
        self, store: Store, clock: ManualClock
    ) -> None:
        backend, now = store.backend, clock.now_ms()
        record = Record(ids.new_id(), None, now, now, now + 60_000, 1, BINARY, BINARY[::-1])
        await backend.create("bytes", record)
        found = await backend.get("bytes", record.id, now)
        assert found is not None
        assert (found.data, found.metadata) == (BINARY, BINARY[::-1])
        updated = await backend.update(
            "bytes", record.id, now, POLICY, data=BINARY[1:], metadata=None,
            subject=KEEP, expected_version=1,
        )  # fmt: skip
        assert (updated.data, updated.metadata) == (BINARY[1:], BINARY[::-1])
        new_id = ids.new_id(shard=ids.shard_of(record.id))
        rotated = await backend.rotate(
            "bytes", record.id, new_id, now, POLICY, KEEP, metadata=BINARY[2:]
        )
        assert (rotated.data, rotated.metadata) == (BINARY[1:], BINARY[2:])
        touched = await backend.touch("bytes", new_id, now, POLICY)
        assert touched is not None
        assert (touched.data, touched.metadata) == (BINARY[1:], BINARY[2:])

    @pytest.mark.asyncio
    async def test_a_write_that_is_no_activity_leaves_last_seen_and_expiry(
        self, store: Store, clock: ManualClock
    ) -> None:
        ns = _web(store)
        session = await ns.create(data={"a": 1})
        clock.advance(timedelta(minutes=5))
        record = await store.backend.update(
            ns.name, session.id, clock.now_ms(), ns.lifetime, data=b'{"a":2}', metadata=None,
            subject=KEEP, expected_version=session.version, activity=False,
        )  # fmt: skip
        assert (record.last_seen_at, record.expires_at) == (
            session.last_seen_at,
            session.expires_at,
        )
        assert record.version == session.version + 1
        assert record.data == b'{"a":2}'
        clock.advance(IDLE - timedelta(minutes=5))
        assert await ns.get(session.id) is None  # it ended when it would have

    @pytest.mark.asyncio
    async def test_a_blob_moved_to_another_session_namespace_or_field_fails(
        self, store_url: str, clock: ManualClock
    ) -> None:
        async with stores(store_url, clock, [KEY_A]) as (store,):
            ns, other = _web(store), _web(store, "sealed-other")
            victim = await ns.create(data={"role": "admin"}, metadata={"ua": "x"})
            blob = await stored(store, victim.id)
            moves = {
                "another session": (ns, ids.new_id(), blob.data, blob.metadata),
                "another namespace": (other, victim.id, blob.data, blob.metadata),
                "data and metadata swapped": (ns, ids.new_id(), blob.metadata, blob.data),
            }
            for what, (target, session_id, data, metadata) in moves.items():
                copy = replace(blob, id=session_id, data=data, metadata=metadata)
                await store.backend.create(target.name, copy)
                with pytest.raises(SessionUnreadable) as caught:
                    await target.get(session_id)
                assert caught.value.reason == "tampered", what
            still = await ns.get(victim.id)
            assert still is not None
            assert still.data == {"role": "admin"}

    @pytest.mark.asyncio
    async def test_rotation_with_two_keys_then_the_old_key_dropped(
        self, store_url: str, clock: ManualClock
    ) -> None:
        async with stores(store_url, clock, [KEY_A], [KEY_B, KEY_A], [KEY_B]) as (a, ba, b):
            made = [await _web(a).create(data={"n": n}, metadata={"m": str(n)}) for n in range(12)]
            for session in made:  # the new configuration opens what the old sealed
                found = await _web(ba).get(session.id)
                assert found is not None
                assert found.data == session.data
            with pytest.raises(SessionUnreadable):  # not yet: nothing is under B
                await _web(b).get(made[0].id)
            clock.advance(timedelta(minutes=10))  # a rekey recording activity would show
            report = await _web(ba).rekey(batch=5)
            assert (report.examined, report.resealed, report.complete) == (12, 12, True)
            for session in made:
                got = await _web(b).get(session.id)
                assert got is not None
                assert (got.data, got.metadata) == (session.data, session.metadata)
                assert (got.last_seen_at, got.expires_at) == (
                    session.last_seen_at,
                    session.expires_at,
                )  # a rekey is no activity
            again = await _web(ba).rekey()
            assert (again.examined, again.current, again.resealed) == (12, 12, 0)

    @pytest.mark.asyncio
    async def test_legacy_plaintext_is_read_then_sealed_by_rekey(
        self, store_url: str, clock: ManualClock
    ) -> None:
        async with stores(store_url, clock, None, [KEY_A]) as (bare, sealed):
            legacy = await _web(bare).create(data={"cart": [1]}, metadata={"ua": "old"})
            assert not (await stored(bare, legacy.id)).data.startswith(MAGIC)
            got = await _web(sealed).touch(legacy.id)  # turning encryption on logs no one out
            assert got is not None
            assert (got.data, got.metadata) == ({"cart": [1]}, {"ua": "old"})
            report = await _web(sealed).rekey()
            assert (report.examined, report.resealed) == (1, 1)
            assert _current(sealed, [await stored(sealed, legacy.id)])
            with pytest.raises(SessionUnreadable):  # a store without the key cannot read it
                await _web(bare).get(legacy.id)

    @pytest.mark.asyncio
    async def test_rotate_reseals_for_the_new_id(self, store_url: str, clock: ManualClock) -> None:
        async with stores(store_url, clock, [KEY_A]) as (store,):
            ns = _web(store)
            session = await ns.create(data={"cart": ["a"]}, metadata={"ua": "x"})
            before = await stored(store, session.id)
            rotated = await ns.rotate(session.id, subject="u1")
            assert (rotated.data, rotated.metadata, rotated.subject) == (
                {"cart": ["a"]},
                {"ua": "x"},
                "u1",
            )
            after = await stored(store, rotated.id)
            assert after.data != before.data
            assert after.version == before.version + 1
            touched = await ns.touch(rotated.id)
            assert touched is not None
            assert touched.data == {"cart": ["a"]}

    @pytest.mark.asyncio
    async def test_rekey_under_concurrent_updates_loses_nothing(
        self, store_url: str, clock: ManualClock
    ) -> None:
        """Writers increment counts in the sessions' data (read, then a versioned update,
        again on a conflict) for as long as the rekey runs: every increment survives, and
        every session ends under the new key."""
        sessions, writers = 12, 8
        async with stores(store_url, clock, [KEY_A], [KEY_B, KEY_A], [KEY_B]) as (a, ba, b):
            made = [(await _web(a).create(data={"n": 0})).id for _ in range(sessions)]
            rng = random.Random(7)
            rekeyed = asyncio.Event()
            increments = 0

            async def writer() -> None:
                nonlocal increments
                while not rekeyed.is_set():
                    session_id = rng.choice(made)
                    while True:
                        found = await _web(ba).get(session_id)
                        assert found is not None
                        try:
                            await _web(ba).update(
                                session_id,
                                data={"n": found.data["n"] + 1},
                                expected_version=found.version,
                            )
                            break
                        except VersionConflict:
                            continue
                    increments += 1
                    await asyncio.sleep(0)  # a turn for the rekey, not a wait for time

            async def rekey() -> None:
                try:
                    await _web(ba).rekey(batch=2)
                finally:
                    rekeyed.set()

            await asyncio.gather(*(writer() for _ in range(writers)), rekey())
            assert (await _web(ba).rekey()).complete  # picks up any session left busy
            records = [await stored(b, session_id) for session_id in made]
            assert _current(b, records)
            counts = [await _web(b).get(session_id) for session_id in made]
            assert sum(s.data["n"] for s in counts if s is not None) == increments > 0

    @pytest.mark.asyncio
    async def test_a_session_ending_unreadable_is_still_announced(
        self, store_url: str, clock: ManualClock
    ) -> None:
        """Deleted or reaped, a session this store cannot open is announced with empty data
        (its end is never lost, no reaper gets stuck) and counted as unreadable."""
        async with stores(store_url, clock, [KEY_A], [KEY_B]) as (a, b):
            doomed = await _web(a).create(data={"x": 1}, subject="s")
            deleted = await _web(a).create(data={"x": 2})
            heard: list[SessionEvent] = []
            b.on("expired", heard.append)
            b.on("deleted", heard.append)
            assert await _web(b).delete(deleted.id)
            clock.advance(IDLE + timedelta(seconds=1))
            reaped = await _web(b).reap()
            assert [(s.id, s.data, s.subject) for s in reaped] == [(doomed.id, {}, "s")]
            assert [(e.kind, e.session.id, e.session.data) for e in heard] == [
                ("deleted", deleted.id, {}),
                ("expired", doomed.id, {}),
            ]
            assert sum(b.unreadable.counts.values()) == 2
