"""The console's runs page in a real browser (Debian's chromium, headless), against `sessionary
serve` as a process on SQLite and on Redis, its runs produced by the demo handler in that
process: finding an owner's runs, watching a run's events arrive and its status change, and
cancelling one with the keyboard, all within a 360 px window. Screenshots (`runs.png`,
`run.png`, `run-cancelled.png`) are saved into the test's temporary directory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from playwright.async_api import BrowserContext, expect

from tests.browser.console import WAIT_MS, Console, fits, serving, sign_in
from tests.service import events_in

RUNS_KEY = "console-runs-key-0123456789"
CONVERSATIONS = "/api/v1/conversations"


@pytest_asyncio.fixture
async def console(console_store: str, tmp_path: Path) -> AsyncIterator[Console]:
    """The service with the runs feature, whose runs the demo handler produces, and a
    client of the runs API acting as `alice`."""
    config = f"""
store = "{console_store}"
[runs]
handler = "sessionary.runs.demo:echo"
[[runs.users]]
key = "{RUNS_KEY}"
subject = "alice"
"""
    async with serving(tmp_path, config, RUNS_KEY) as started:
        yield started


async def start(console: Console, conversation: str, words: int, delay_ms: int) -> dict[str, Any]:
    text = " ".join(f"word{n}" for n in range(words))
    started = await console.api.post(
        f"{CONVERSATIONS}/{conversation}/runs",
        json={"multitask": "enqueue", "input": {"text": text, "delay_ms": delay_ms}},
    )
    assert started.status_code == 201, started.text
    return dict(started.json())


async def test_watch_a_runs_events_arrive_and_cancel_one(
    console: Console, context: BrowserContext
) -> None:
    made = await console.api.post(CONVERSATIONS)
    assert made.status_code == 201, made.text
    conversation = made.json()["conversationId"]
    run = await start(console, conversation, words=6, delay_ms=500)
    page = await context.new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await sign_in(page, console)

    await page.get_by_role("link", name="Runs").click()
    await page.wait_for_url(f"{console.url}/runs")
    await page.get_by_label("Owner (the subject)").fill("alice")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{console.url}/runs?owner=alice")
    await fits(page)
    await console.screenshot(page, "runs")
    await page.locator(f'tr[data-run="{run["runId"]}"] a').click()
    await page.wait_for_url(f"{console.url}/runs/{run['runId']}")

    # the events arrive, the stream's `end` sets the status shown and takes Cancel away
    status = page.locator("[data-run-status]")
    await expect(status).to_have_text("completed", timeout=WAIT_MS)
    await expect(page.get_by_role("button", name="Cancel the run")).to_be_hidden()
    read = (await console.api.get(f"{CONVERSATIONS}/{conversation}/runs/{run['runId']}")).json()
    assert read["status"] == "completed"
    # the run's facts, rendered again once it ended: the API's times and duration
    await expect(page.locator("ol.events[data-refreshed]")).to_have_count(1)
    took = page.locator("#run-facts [data-duration-ms]")
    assert await took.get_attribute("data-duration-ms") == str(
        read["finishedAt"] - read["startedAt"]
    )
    assert '"words": 6' in await page.locator("#run-facts pre").inner_text()
    stream = await console.api.get(f"{CONVERSATIONS}/{conversation}/runs/{run['runId']}/events")
    api_events = events_in(stream.text)
    shown = page.locator("ol.events li")
    await expect(shown).to_have_count(len(api_events))
    assert await shown.locator("strong").all_inner_texts() == [e["event"] for e in api_events]
    assert await shown.locator("code").all_inner_texts() == [e["data"] for e in api_events]
    assert [text.strip() for text in await shown.locator("small").all_inner_texts()] == [
        e["id"] for e in api_events
    ]
    await fits(page)
    await console.screenshot(page, "run")

    # a long run, cancelled from its page with the keyboard
    long = await start(console, conversation, words=50, delay_ms=2_000)
    await page.goto(f"{console.url}/runs/{long['runId']}")
    await expect(page.locator("ol.events li[data-type=chunk]").first).to_be_visible()
    await page.get_by_role("button", name="Cancel the run").focus()
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{console.url}/runs/{long['runId']}?done=*")
    assert await page.locator(".notice").inner_text() == "Cancelled the run (now cancelled)."
    await expect(status).to_have_text("cancelled")
    read = await console.api.get(f"{CONVERSATIONS}/{conversation}/runs/{long['runId']}")
    assert read.json()["status"] == "cancelled"
    await expect(page.locator("ol.events li[data-type=end]")).to_have_count(1)
    await fits(page)
    await console.screenshot(page, "run-cancelled")
