"""Encryption at rest beyond the conformance suite (`sessionary.testing._encryption`, which
holds moved blobs, key rotation, rekey under concurrent writers, legacy plaintext, rotate
and sessions ending unreadable on every backend): what reaches the store's bytes, changed
bytes, nonces, the typed error, a rekey losing a race, the web path (absent, logged,
counted), the settings and the `sessionary rekey` command."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi import FastAPI

from sessionary import (
    EncryptionKey,
    ManualClock,
    Namespace,
    SessionUnreadable,
    Store,
    VersionConflict,
    connect,
)
from sessionary.cli import main
from sessionary.contract import Backend, Record
from sessionary.http.metrics import Metrics
from sessionary.sealing import MAGIC, Nonces, Sealer, parse_keys
from sessionary.session_request import Outcome, RequestSession
from sessionary.testing._encryption import stored, stores
from sessionary.web import CurrentSession, SessionMiddleware
from sessionary.web.settings import SettingsError, load_settings
from tests.at_rest import stored_bytes
from tests.web.conftest import client_for

IDLE = timedelta(minutes=30)
MARKER = "zq-marker-7f3a9c"
KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
KeySet = Sequence[EncryptionKey | bytes | str] | None


def text_key(secret: bytes, key_id: str | None = None) -> str:
    encoded = base64.b64encode(secret).decode()
    return encoded if key_id is None else f"{key_id}:{encoded}"


def web(store: Store, name: str = "web") -> Namespace:
    return store.namespace(name, idle_ttl=IDLE)


# -- the bytes at rest ------------------------------------------------------------------------


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "plain (control)"])
async def test_no_plaintext_of_data_or_metadata_reaches_the_store(
    store_url: str,
    clock: ManualClock,
    sealed: bool,
) -> None:
    """The marker is in data (key and value) and metadata; written by create, update and
    rotate. The control run without keys finds it, so the check can fail."""
    store = await connect(store_url, clock=clock, encryption_keys=[KEY_A] if sealed else None)
    try:
        ns = web(store)
        session = await ns.create(
            subject="subject-in-clear",
            data={MARKER: f"{MARKER}-created"},
            metadata={"device": f"{MARKER}-metadata"},
        )
        await ns.update(session.id, data={"cart": [f"{MARKER}-updated"]})
        rotated = await ns.rotate(session.id, subject="subject-in-clear")
        touched = await ns.touch(rotated.id)
        assert touched is not None
        assert touched.data == {"cart": [f"{MARKER}-updated"]}
        assert touched.metadata == {"device": f"{MARKER}-metadata"}
        record = await stored(store, rotated.id, "web")
        in_memory = record.data + record.metadata
    finally:
        await store.close()
    at_rest = await asyncio.to_thread(stored_bytes, store_url)
    marker = MARKER.encode()
    if sealed:
        assert marker not in in_memory
        assert marker not in at_rest
        assert record.data.startswith(MAGIC)
        assert record.metadata.startswith(MAGIC)
    else:
        assert marker in in_memory
        assert marker in at_rest or store_url == "memory://"
    if store_url != "memory://":  # the subject stays in clear (the subject index needs it)
        assert b"subject-in-clear" in at_rest


async def test_the_payload_cap_applies_to_the_plaintext(clock: ManualClock) -> None:
    store = await connect("memory://", clock=clock, encryption_keys=[KEY_A])
    try:
        capped = store.namespace("capped", idle_ttl=IDLE, max_payload=64)
        exact = {"k": "x" * 56}  # {"k":"...."} is 64 bytes encoded
        session = await capped.create(data=exact)
        assert len((await stored(store, session.id, "capped")).data) > 64
        assert (await capped.get(session.id)).data == exact  # type: ignore[union-attr]
    finally:
        await store.close()


# -- moved and changed blobs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "where", [0, 1, 2, 20, -1], ids=["magic", "length", "key id", "body", "tag"]
)
async def test_a_changed_byte_never_yields_garbage(clock: ManualClock, where: int) -> None:
    async with stores("memory://", clock, [KEY_A]) as (store,):
        ns = web(store)
        session = await ns.create(data={"role": "user"})
        record = await stored(store, session.id, "web")
        changed = bytearray(record.data)
        changed[where] ^= 0x01
        await store.backend.delete("web", session.id)
        await store.backend.create("web", replace(record, data=bytes(changed)))
        with pytest.raises(SessionUnreadable) as caught:
            await ns.get(session.id)
        assert caught.value.reason in ("tampered", "unknown_key")
        assert caught.value.code == "session_unreadable"
        await store.backend.delete("web", session.id)
        await store.backend.create("web", record)
        assert (await ns.get(session.id)).data == {"role": "user"}  # type: ignore[union-attr]


def test_nonces_are_never_handed_out_twice_nor_shared_with_a_forked_child() -> None:
    nonces = Nonces(batch=4)  # refilled every 4: several refills below
    drawn = [nonces.next() for _ in range(1000)]
    assert len(set(drawn)) == 1000
    assert {len(nonce) for nonce in drawn} == {12}
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # the child continues from the parent's pool unless it starts afresh
        os.write(writing, nonces.next())
        os._exit(0)
    os.close(writing)
    os.waitpid(child, 0)
    assert os.read(reading, 12) != nonces.next()
    os.close(reading)


# -- keys: rotation, unknown keys, legacy plaintext -------------------------------------------


async def test_an_unknown_key_is_a_typed_error_that_says_what_to_do(
    store_url: str, clock: ManualClock
) -> None:
    async with stores(store_url, clock, [text_key(KEY_A, "k1")], [KEY_B], None) as (a, b, bare):
        session = await web(a).create(data={"x": 1})
        for store in (b, bare):  # another key, or no keys at all: never parsed as JSON
            with pytest.raises(SessionUnreadable) as caught:
                await web(store).get(session.id)
            error = caught.value
            assert (error.code, error.http_status) == ("session_unreadable", 409)
            assert error.details() == {"reason": "unknown_key", "key_id": "k1"}
            assert "add the key that sealed it to encryption_keys" in str(error)
            assert session.id not in str(error)  # a bearer credential is never printed whole
            assert store.unreadable.counts[("web", "unknown_key")] == 1


class RacedBackend:
    """A real backend where another process updates a session just before the rekey's
    first write to it lands: deterministically, the race the rekey must lose gracefully."""

    def __init__(self, inner: Backend, rival: Namespace) -> None:
        self.inner = inner
        self.rival = rival
        self.raced: list[str] = []
        self.conflicts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def update(self, ns: str, session_id: str, *args: Any, **kwargs: Any) -> Record:
        rekeying = kwargs.get("activity") is False
        if rekeying and session_id not in self.raced:
            self.raced.append(session_id)
            await self.rival.update(session_id, data={"rival": True})
        try:
            return await self.inner.update(ns, session_id, *args, **kwargs)  # type: ignore[no-any-return]
        except VersionConflict:
            self.conflicts += 1
            raise


async def test_a_concurrent_update_wins_over_the_rekey_which_reads_again(
    store_url: str, clock: ManualClock
) -> None:
    async with stores(store_url, clock, [KEY_A], [KEY_B, KEY_A]) as (a, rival):
        made = [(await web(a).create(data={"n": n}, metadata={"m": "x"})).id for n in range(3)]
        raced = RacedBackend(a.backend, web(rival))
        rekeying = Store(raced, clock=clock, sealer=Sealer([KEY_B, KEY_A]))  # type: ignore[arg-type]
        report = await web(rekeying).rekey()
        assert (report.resealed, report.complete) == (3, True)
        assert raced.conflicts == 3  # each first write lost to the rival's, then retried
        for session_id in made:
            got = await web(rival).get(session_id)
            assert got is not None
            assert (got.data, got.metadata) == ({"rival": True}, {"m": "x"})  # the rival won
            record = await stored(rival, session_id, "web")
            assert rekeying.sealer is not None
            assert rekeying.sealer.is_current(record.metadata)


# -- the web path -----------------------------------------------------------------------------


async def test_a_request_treats_an_unreadable_session_as_absent_logs_once_and_counts(
    store_url: str, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with stores(store_url, clock, [KEY_A], [KEY_B]) as (a, b):
        sealed_elsewhere = await web(a).create(data={"user": "alice"})
        metrics = Metrics()
        metrics.watch(b)
        with caplog.at_level(logging.WARNING, logger="sessionary.security"):
            for _ in range(3):  # the client keeps presenting its cookie
                state = await RequestSession.load(web(b), sealed_elsewhere.id)
                assert (state.stale, state.looked_up, state.id, dict(state)) == (
                    True,
                    True,
                    None,
                    {},
                )
            state["user"] = "bob"
            assert await state.commit() is Outcome.ISSUE
        assert state.id is not None
        assert state.id != sealed_elsewhere.id
        logged = [r for r in caplog.records if r.name == "sessionary.security"]
        assert len(logged) == 1  # once per session, however often it is presented
        assert "add the key that sealed it" in logged[0].getMessage()
        assert b.unreadable.counts[("web", "unknown_key")] == 3
        exposed = metrics.render().decode()
        assert (
            'sessionary_sessions_unreadable_total{namespace="web",reason="unknown_key"} 3.0'
            in exposed
        )
        # left in the store as it was: the configuration with its key still reads it
        assert (await web(a).get(sealed_elsewhere.id)).data == {"user": "alice"}  # type: ignore[union-attr]


async def test_the_middleware_issues_a_new_session_for_an_unreadable_one(
    clock: ManualClock,
) -> None:
    async with stores("memory://", clock, [KEY_A], [KEY_B]) as (a, b):
        unreadable = await web(a).create(data={"user": "alice"})
        app = FastAPI()
        app.add_middleware(SessionMiddleware, namespace=web(b))

        @app.post("/visit")
        async def visit(session: CurrentSession) -> dict[str, object]:
            seen = session.get("user")
            session["user"] = "bob"
            return {"seen": seen}

        async with client_for(app) as client:
            client.cookies.set("__Host-session", unreadable.id)
            response = await client.post("/visit")
        assert response.status_code == 200
        assert response.json() == {"seen": None}
        issued = response.cookies["__Host-session"]
        assert issued != unreadable.id
        assert (await web(b).get(issued)).data == {"user": "bob"}  # type: ignore[union-attr]


async def test_the_litestar_store_reads_an_unreadable_key_as_absent_and_replaces_it(
    store_url: str, clock: ManualClock
) -> None:
    from sessionary.contrib.litestar import SessionaryStore

    async with stores(store_url, clock, [KEY_A], [KEY_B]) as (a, b):
        await SessionaryStore(a).set("key", b'{"user": "alice"}')
        unreadable = SessionaryStore(b)
        assert await unreadable.get("key") is None
        assert await unreadable.get("key", renew_for=60) is None
        assert not await unreadable.exists("key")
        assert await unreadable.expires_in("key") is None
        await unreadable.set("key", b'{"user": "bob"}')
        assert await unreadable.get("key") == b'{"user": "bob"}'


async def test_the_admin_api_answers_409_for_an_unreadable_session(
    store_url: str, clock: ManualClock
) -> None:
    from sessionary.web.app import create_app
    from sessionary.web.settings import Settings
    from tests.web.conftest import ADMIN, API_KEY

    async with stores(store_url, clock, [KEY_A]) as (a,):
        session = await web(a).create(data={"x": 1})
        settings = Settings(
            store=store_url,
            api_keys=[API_KEY],
            reaper={"enabled": False},
            analytics={"enabled": False},
            encryption_keys=[text_key(KEY_B)],
        )
        if store_url == "memory://":  # one process's memory: serve this very backend
            b = Store(a.backend, clock=clock, sealer=Sealer([KEY_B]))
            app = create_app(settings, store=b, clock=clock)
        else:
            app = create_app(settings, clock=clock)
        async with app.router.lifespan_context(app), client_for(app) as client:
            response = await client.get(f"/v1/namespaces/web/sessions/{session.id}", headers=ADMIN)
            metrics = (await client.get("/metrics")).text
        assert response.status_code == 409
        assert response.json()["error"] == "session_unreadable"
        assert response.json()["reason"] == "unknown_key"
        assert (
            'sessionary_sessions_unreadable_total{namespace="web",reason="unknown_key"} 1.0'
            in metrics
        )


# -- keys and settings ------------------------------------------------------------------------


def test_keys_parse_from_bytes_and_base64_text_with_or_without_an_id() -> None:
    plain, named = parse_keys(f"{text_key(KEY_A)}, {text_key(KEY_B, 'k2')}")
    assert plain.secret == KEY_A
    assert named.secret == KEY_B
    assert named.id == "k2"
    assert plain.id == EncryptionKey(KEY_A).id
    assert len(plain.id) == 8
    assert base64.b64encode(KEY_A).decode() not in plain.id + repr(plain)
    urlsafe = base64.urlsafe_b64encode(KEY_B).decode().rstrip("=")
    assert EncryptionKey.parse(urlsafe).secret == KEY_B
    assert Sealer([named, plain]).current_key_id == "k2"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (text_key(os.urandom(16)), "decodes to 16 bytes"),
        ("k1:not base64 at all!", "is not base64"),
        (b"short", "not 5"),
        (f"bad id:{text_key(KEY_A)}", "key id matches"),
        ([KEY_A, text_key(KEY_A)], "not distinct"),
    ],
)
def test_a_bad_key_is_one_clear_line_that_never_quotes_it(value: object, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        parse_keys(value if isinstance(value, list) else [value])  # type: ignore[list-item]
    message = str(caught.value)
    assert "\n" not in message
    if isinstance(value, str):
        assert value.rpartition(":")[2] not in message


def test_the_service_reads_comma_separated_keys_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "SESSIONARY_ENCRYPTION_KEYS", f"{text_key(KEY_B, 'new')},{text_key(KEY_A, 'old')}"
    )
    settings = load_settings()
    assert [key.id for key in parse_keys(settings.encryption())] == ["new", "old"]
    assert text_key(KEY_B) not in repr(settings)
    short = text_key(os.urandom(31))
    monkeypatch.setenv("SESSIONARY_ENCRYPTION_KEYS", f"{text_key(KEY_A)},{short}")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith("encryption_keys: ")
    assert "key #2" in str(caught.value)
    assert "31 bytes" in str(caught.value)
    assert short not in str(caught.value)
    assert text_key(KEY_A) not in str(caught.value)


# -- the command ------------------------------------------------------------------------------


def test_the_rekey_command_reseals_reports_and_resumes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sessions.db'}"
    old, new = text_key(KEY_A, "old"), text_key(KEY_B, "new")

    async def create(n: int) -> list[str]:
        async with await connect(url, encryption_keys=[old]) as store:
            return [(await web(store).create(data={"n": i})).id for i in range(n)]

    async def read(made: list[str], keys: list[str]) -> list[object]:
        async with await connect(url, encryption_keys=keys) as store:
            return [(await web(store).get(i)).data["n"] for i in made]  # type: ignore[union-attr]

    made = asyncio.run(create(7))
    config = tmp_path / "sessionary.toml"
    config.write_text(f'store = "{url}"\nencryption_keys = ["{new}", "{old}"]\n')

    first = CliRunner().invoke(main, ["rekey", "--config", str(config), "--batch", "3"])
    assert first.exit_code == 0, first.output
    assert "web: examined 7, resealed 7, already current 0" in first.output
    again = CliRunner().invoke(main, ["rekey", "--config", str(config), "--namespace", "web"])
    assert again.exit_code == 0, again.output
    assert again.output.strip().endswith(
        "web: examined 7, resealed 0, already current 7, gone meanwhile 0, unreadable 0, busy 0"
    )
    assert asyncio.run(read(made, [new])) == list(range(7))  # the old key can go now

    config.write_text(f'store = "{url}"\n')
    refused = CliRunner().invoke(main, ["rekey", "--config", str(config)])
    assert refused.exit_code == 2  # the settings' mistake, as every operator's mistake
    assert "rekey needs encryption keys" in refused.output
