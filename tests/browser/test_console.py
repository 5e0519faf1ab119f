"""The console in a real browser (Debian's chromium, headless), against `sessionary serve` as a
process on SQLite and on Redis: signing in with the keyboard, finding and revoking a
session, the health page and its check, the analytics chart's numbers against /stats, a
run's events arriving one by one as a producer writes them, every page in a 360 px window. A
screenshot of each page visited is saved into the test's temporary directory (`<page>.png`),
the artifact a person looks at. The runs page's own flow (the demo handler, cancelling) is
tests/browser/test_console_runs.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest_asyncio
from playwright.async_api import BrowserContext, expect

from sessionary import connect
from sessionary.runs import Runs, RunsSettings
from tests.browser.console import API_KEY, WAIT_MS, Console, fits, serving, sign_in

PROJECT_KEY = "console-project-key-0123456789"


@pytest_asyncio.fixture
async def console(console_store: str, tmp_path: Path) -> AsyncIterator[Console]:
    """The service with analytics (a project `shop`), and a client of its admin API."""
    config = f"""
store = "{console_store}"
[analytics]
sink = "sqlite:///{tmp_path / "analytics.db"}"
[analytics.projects.shop]
key = "{PROJECT_KEY}"
"""
    async with serving(tmp_path, config, API_KEY) as started:
        yield started


async def create(console: Console, subject: str, **body: Any) -> dict[str, Any]:
    response = await console.api.post(
        "/v1/namespaces/web/sessions", json={"subject": subject, **body}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_sign_in_find_and_revoke_a_session(console: Console, context: BrowserContext) -> None:
    kept = await create(console, "ann")
    revoked = await create(console, "ann")
    page = await context.new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    wrong = await context.new_page()
    await wrong.goto(f"{console.url}/sign-in")
    await wrong.get_by_label("Admin API key").fill("not-the-key-0123456789")
    await wrong.get_by_role("button", name="Sign in").click()
    assert await wrong.get_by_role("alert").inner_text() == (
        "That is not an admin API key of this service."
    )
    await wrong.close()

    await sign_in(page, console)
    await page.keyboard.press("Tab")  # the first stop skips the navigation
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    cookies = {c["name"]: c for c in await context.cookies()}
    cookie = cookies["sessionary_console"]  # plain http here: not Secure, so not __Host-
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    await fits(page)
    web = page.locator('td[data-field="web"]')
    assert await web.inner_text() == "2"
    await console.screenshot(page, "sessions")

    await create(console, "bob")  # the live count follows, without a reload
    await expect(web).to_have_text("3", timeout=WAIT_MS)

    await page.get_by_label("Namespace", exact=True).select_option("web")
    await page.get_by_label("Subject", exact=True).fill("ann")
    await page.get_by_role("button", name="Find").click()
    await page.wait_for_url("**/sessions?namespace=web&subject=ann")
    rows = page.locator("#found tbody tr")
    assert await rows.count() == 2
    await fits(page)
    await console.screenshot(page, "sessions-found")
    await page.get_by_role("button", name=f"Revoke session {revoked['id'][:12]}…").click()
    await page.wait_for_url("**/sessions?namespace=web&subject=ann&done=*")
    assert await page.get_by_role("status").inner_text() == "Revoked 1 session."
    assert await rows.count() == 1
    assert await page.locator(f'tr[data-session="{kept["id"]}"]').count() == 1
    gone = await console.api.get(f"/v1/namespaces/web/sessions/{revoked['id']}")
    assert gone.status_code == 404
    still = await console.api.get(f"/v1/namespaces/web/sessions/{kept['id']}")
    assert still.status_code == 200

    await page.get_by_role("link", name="Health").click()
    await page.wait_for_url(f"{console.url}/health")
    health = (await console.api.get("/v1/health")).json()
    assert health["ready"] is True
    assert await page.locator('[data-stat="ready"]').inner_text() == "ready"
    jobs = page.locator("#jobs tbody tr[data-name]")
    assert await jobs.evaluate_all("rows => rows.map((row) => row.dataset.name)") == [
        job["name"] for job in health["jobs"]
    ]
    await page.get_by_role("button", name="Run the check").click()
    await expect(page.get_by_role("status")).to_have_text("All clean.")
    assert (await console.api.post("/v1/check")).json()["findings"] == []
    await fits(page)
    await console.screenshot(page, "health")

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{console.url}/sign-in")
    await page.goto(f"{console.url}/sessions")
    assert page.url.startswith(f"{console.url}/sign-in")


async def test_the_analytics_chart_shows_the_numbers_of_stats(
    console: Console, context: BrowserContext
) -> None:
    devices = {"a": ["/", "/pricing", "/buy"], "b": ["/"], "c": ["/docs", "/docs/api"], "d": ["/"]}
    events = [
        {"name": "screen_view", "device_id": device, "path": path, "event_id": f"{device}{k}"}
        for device, paths in devices.items()
        for k, path in enumerate(paths)
    ]
    track = await console.api.post(
        "/api/v1/track", json=events, headers={"Authorization": f"Bearer {PROJECT_KEY}"}
    )
    assert track.status_code == 202, track.text
    stats_url = "/api/v1/projects/shop/stats"
    for _ in range(WAIT_MS // 100):  # the drainer stores them in the sink within a second
        stats = (await console.api.get(stats_url)).json()
        if stats["sessions"] == len(devices):
            break
        await asyncio.sleep(0.1)
    assert stats["sessions"] == len(devices)
    page = await context.new_page()
    await sign_in(page, console)
    await page.get_by_role("link", name="Analytics").click()
    await page.wait_for_url(f"{console.url}/analytics")
    await expect(page.locator("#sessions-chart canvas")).to_have_count(1)
    first = await page.get_by_label("From (UTC day)").input_value()
    last = await page.get_by_label("To (UTC day, included)").input_value()
    start = int(datetime.fromisoformat(first).replace(tzinfo=UTC).timestamp() * 1000)
    end = int(datetime.fromisoformat(last).replace(tzinfo=UTC).timestamp() * 1000) + 86_400_000
    api = (await console.api.get(stats_url, params={"from": start, "to": end})).json()
    assert api["sessions"] == len(devices)
    chart = await page.evaluate(
        "() => sessionaryConsole.charts['sessions-chart'].data.map((s) => Array.from(s))"
    )
    assert chart == [
        [bucket["start"] / 1000 for bucket in api["sessions_over_time"]],
        [bucket["sessions"] for bucket in api["sessions_over_time"]],
        [bucket["bounces"] for bucket in api["sessions_over_time"]],
    ]
    tiles = page.locator("#summary")
    assert await tiles.locator('[data-stat="sessions"]').inner_text() == str(api["sessions"])
    rate = f"{api['bounce_rate'] * 100:.1f} %"
    assert await tiles.locator('[data-stat="bounce_rate"]').inner_text() == rate
    per = f"{api['events_per_session']:.2f}"
    assert await tiles.locator('[data-stat="events_per_session"]').inner_text() == per
    entries = page.locator("#top_entry_paths tbody tr td:first-child")
    assert await entries.all_inner_texts() == [row["path"] for row in api["top_entry_paths"]]
    exits = page.locator("#top_exit_paths tbody tr td:first-child")
    assert await exits.all_inner_texts() == [row["path"] for row in api["top_exit_paths"]]
    await fits(page)
    await console.screenshot(page, "analytics")


async def test_a_runs_events_arrive_as_they_are_produced(
    console: Console, console_store: str, context: BrowserContext
) -> None:
    store = await connect(console_store)
    try:
        runs = Runs(store, RunsSettings())
        conversation = await runs.create_conversation("alice")
        run = await runs.start(conversation.id, "alice")
        page = await context.new_page()
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await sign_in(page, console)
        await page.get_by_role("link", name="Runs").click()
        await page.get_by_role("textbox", name="Owner (the subject)").fill("alice")
        await page.get_by_role("button", name="Find conversations").click()
        await expect(page.locator(f'tr[data-run="{run.id}"]')).to_have_count(1)
        await fits(page)
        await console.screenshot(page, "runs")
        await page.locator(f'tr[data-run="{run.id}"] a').first.click()
        await page.wait_for_url(f"{console.url}/runs/{run.id}")
        events = page.locator("ol.events li")
        await expect(events).to_have_count(1)  # the run's `status queued`, replayed
        async with runs.producer(run.id, worker="browser-test") as producer:
            for n in range(5):
                await producer.emit("chunk", {"n": n})
                await expect(events).to_have_count(3 + n)  # status running came first
            await producer.complete({"chunks": 5})
        await expect(events).to_have_count(8)
        await expect(page.locator("[data-run-status]")).to_have_text("completed")
        logged = [event.type for event in (await runs.runs.read(run.id)).events]
        shown = [await item.get_attribute("data-type") for item in await events.all()]
        assert shown == logged == ["status", "status", *["chunk"] * 5, "end"]
        await fits(page)
        await console.screenshot(page, "run")
    finally:
        await store.close()
