"""The console in a real browser (Debian's chromium, headless), against `sessionary serve` as a
process on SQLite and on Redis: signing in with the keyboard, finding and revoking a
session, and every page in a narrow window. A screenshot of each page visited is saved into
the test's temporary directory (`<page>.png`), the artifact a person looks at."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, expect

from tests.service import Service

API_KEY = "console-admin-key-0123456789"
PROJECT_KEY = "console-project-key-0123456789"
NARROW = {"width": 360, "height": 740}
WAIT_MS = 30_000
#: the elements reaching past the window's right edge, outside any scrolling box (to say
#: which, when the page is too wide)
WIDE_ELEMENTS = """(width) => [...document.querySelectorAll("body *")]
  .filter((el) => el.getBoundingClientRect().right > width && !el.parentElement.closest(".scroll"))
  .map((el) => el.tagName + (el.id ? "#" + el.id : "") + "." + el.className)"""


@dataclass
class Console:
    """`sessionary serve` with the console, and an admin client of its JSON API."""

    service: Service
    api: httpx.AsyncClient
    shots: Path

    @property
    def url(self) -> str:
        return f"{self.service.url}/console"

    async def screenshot(self, page: Page, name: str) -> None:
        await page.screenshot(path=self.shots / f"{name}.png", full_page=True)


@pytest.fixture(params=["sqlite", "redis"])
def console_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'console.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest_asyncio.fixture
async def console(console_store: str, tmp_path: Path) -> AsyncIterator[Console]:
    config = f"""
store = "{console_store}"
api_keys = ["{API_KEY}"]
[analytics]
sink = "sqlite:///{tmp_path / 'analytics.db'}"
[analytics.projects.shop]
key = "{PROJECT_KEY}"
"""
    service = Service(tmp_path, config)
    await asyncio.to_thread(service.start)
    try:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=10) as api:
            yield Console(service, api, tmp_path)
    finally:
        await asyncio.to_thread(service.stop)


@pytest_asyncio.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    opened = await browser.new_context(viewport=NARROW)
    opened.set_default_timeout(WAIT_MS)
    try:
        yield opened
    finally:
        await opened.close()


async def sign_in(page: Page, console: Console) -> None:
    """Sign in as a keyboard user: the key field has the focus, Enter submits."""
    await page.goto(f"{console.url}/sessions")
    assert page.url.startswith(f"{console.url}/sign-in")
    await console.screenshot(page, "sign-in")
    focused = await page.evaluate("document.activeElement.id")
    assert focused == "key"  # the field has the focus, and its label names it
    assert await page.get_by_label("Admin API key").count() == 1
    await page.keyboard.type(API_KEY)
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{console.url}/sessions")


async def fits(page: Page) -> None:
    """Nothing of the page is wider than the narrow window (tables scroll in their box)."""
    width = await page.evaluate("document.documentElement.scrollWidth")
    wide = await page.evaluate(WIDE_ELEMENTS, NARROW["width"])
    assert width <= NARROW["width"], f"{width} px wide in a {NARROW['width']} px window: {wide}"


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

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{console.url}/sign-in")
    await page.goto(f"{console.url}/sessions")
    assert page.url.startswith(f"{console.url}/sign-in")
