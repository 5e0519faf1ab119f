"""What the console's browser tests share: the service under test (`Console`), signing in
as a keyboard user, and the check that a page fits a narrow window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from playwright.async_api import Page

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

#: the form controls a screen reader could not name: no label, no aria-label, no text
UNNAMED_CONTROLS = """() => [...document.querySelectorAll(
    "input:not([type=hidden]), select, textarea, button")]
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label")
    && !(el.tagName === "BUTTON" && el.textContent.trim()))
  .map((el) => el.outerHTML)"""


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
    """The page is usable in the narrow window and by keyboard and screen reader: nothing is
    wider than the window (tables scroll in their own box), and every field and button has
    a name (a label, or an aria-label)."""
    width = await page.evaluate("document.documentElement.scrollWidth")
    wide = await page.evaluate(WIDE_ELEMENTS, NARROW["width"])
    assert width <= NARROW["width"], f"{width} px wide in a {NARROW['width']} px window: {wide}"
    assert await page.evaluate(UNNAMED_CONTROLS) == []


@asynccontextmanager
async def serving(directory: Path, config: str, key: str) -> AsyncIterator[Console]:
    """`sessionary serve` with the admin key `API_KEY` and `config` (TOML lines), in
    `directory`, and a client of its API sending `key`; stopped at the end."""
    service = Service(directory, f'api_keys = ["{API_KEY}"]\n{config}')
    await asyncio.to_thread(service.start)
    try:
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=10) as api:
            yield Console(service, api, directory)
    finally:
        await asyncio.to_thread(service.stop)
