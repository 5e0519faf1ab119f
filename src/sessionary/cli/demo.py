"""`sessionary demo`: the session lifecycle, step by step, on any store."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from sessionary import __version__
from sessionary.cli.ops import _connect, _one_line, _settings, config_option, store_option
from sessionary.clock import to_datetime
from sessionary.errors import VersionConflict
from sessionary.model import EVENT_KINDS, Session, SessionEvent
from sessionary.store import Store

if TYPE_CHECKING:
    from sessionary.web.settings import Settings


@click.command()
@store_option
@config_option
def demo(store: str | None, config: str | None) -> None:
    """Walk through the session lifecycle on a store, printing each step."""
    settings = _settings(config, store=store)
    with _one_line():
        asyncio.run(_demo(settings, Console()))


def _short(session: Session) -> str:
    return f"{session.id[:10]}..."


async def _demo(settings: Settings, console: Console) -> None:
    store = await _connect(settings)
    try:
        await _walk_through(store, console)
    finally:
        await store.close()


async def _walk_through(store: Store, console: Console) -> None:
    say = console.print
    say(f"[bold]sessionary {__version__}[/] on {store.backend!r}\n")
    events: list[str] = []

    def record(event: SessionEvent) -> None:
        events.append(f"{event.kind} {event.session.id[:10]}...")

    for kind in EVENT_KINDS:
        store.on(kind, record)

    web = store.namespace(
        "demo-web", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12)
    )
    session = await web.create(data={"cart": []}, metadata={"ua": "sessionary-demo"})
    say(
        f"1. created anonymous session {_short(session)} (version {session.version}), "
        f"expires {to_datetime(session.expires_at):%H:%M:%S} UTC"
    )

    touched = await web.touch(session.id)
    assert touched is not None
    say(
        f"2. touched: last seen {to_datetime(touched.last_seen_at):%H:%M:%S.%f} UTC, "
        "idle expiry slid forward, never past the 12 h cap"
    )

    updated = await web.update(session.id, data={"cart": ["book"]}, expected_version=1)
    say(f"3. updated the cart with expected_version=1 -> version {updated.version}")
    try:
        await web.update(session.id, data={"cart": []}, expected_version=1)
    except VersionConflict as conflict:
        say(f"   a second writer still holding version 1 is refused: [yellow]{conflict}[/]")

    table = Table("charge", "allowed", "used", "remaining")
    for n in range(1, 6):
        result = await web.consume(session.id, "searches", amount=1, limit=3)
        table.add_row(
            str(n),
            "yes" if result.allowed else "[red]no[/]",
            str(result.used),
            str(result.remaining),
        )
    say("4. five searches against a quota of 3 (atomic on every backend):")
    say(table)

    logged_in = await web.rotate(session.id, subject="alice")
    say(
        f"5. login: rotated to {_short(logged_in)} for subject 'alice'; "
        f"the old id now finds {await web.get(session.id)}"
    )
    second = await web.create(subject="alice")
    devices = await web.list_subject("alice")
    say(f"6. alice has {len(devices)} sessions; newest first: {[_short(s) for s in devices]}")
    revoked = await web.revoke_subject("alice")
    say(
        f"7. 'log out everywhere' revoked {revoked}; {second.id[:10]}... is gone: "
        f"{await web.get(second.id) is None}"
    )

    short = store.namespace("demo-short", idle_ttl=timedelta(milliseconds=200))
    for _ in range(3):
        await short.create()
    await asyncio.sleep(0.25)  # real time passes in a demo; tests move a ManualClock instead
    reaped = await short.reap()
    say(
        f"8. three sessions idle past 200 ms: the reaper claimed {len(reaped)}, "
        f"each exactly once even with many reapers"
    )

    say("\n[bold]lifecycle events heard:[/] " + ", ".join(events))
