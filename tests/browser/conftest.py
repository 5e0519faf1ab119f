"""Fixtures for the browser tests: Debian's chromium driven headless by Playwright, the
application (tests/browser/app.py) as a uvicorn process the test may kill and start again,
page.html served from other origins, and the store both the application and the test open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, Response, async_playwright

from sessionary import connect
from sessionary.runs import Runs
from tests.browser.app import ORIGINS_ENV, PAGE, RUNS, STORE_ENV
from tests.browser.console import NARROW, WAIT_MS
from tests.servers import eventually, free_port

CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by scripts/ensure-chromium
ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 60  # bounds, generous for a loaded CI machine; the waits end at their condition


class AppServer:
    """tests/browser/app.py under uvicorn on a port of its own, which it keeps across
    restarts (the browser reconnects to the same URL)."""

    def __init__(self, directory: Path, store_url: str, origins: list[str]) -> None:
        self.port = free_port()
        self.log = directory / "app.log"  # what the server printed (its tracebacks, say)
        self.env = {**os.environ, STORE_ENV: store_url, ORIGINS_ENV: " ".join(origins)}
        self.process: asyncio.subprocess.Process | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "uvicorn", "tests.browser.app:create_app"),
                *("--factory", "--host", "127.0.0.1", "--port", str(self.port)),
                *("--log-level", "warning"),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        async with httpx.AsyncClient(base_url=self.origin, timeout=2) as client:

            async def ready() -> bool:
                assert self.process is not None
                assert self.process.returncode is None, f"the app exited: see {self.log}"
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, STARTUP_S, f"the app did not start: see {self.log}")

    async def kill(self) -> None:
        """SIGKILL: no graceful shutdown, its streams cut as a crash cuts them."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):  # it exited by itself
                self.process.kill()
            await self.process.wait()
            self.process = None


class PageServer:
    """page.html from an origin of its own (another port of 127.0.0.1: another origin, the
    same site), for the pages calling the application's API from elsewhere."""

    def __init__(self) -> None:
        page = PAGE.read_bytes()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads the page, not this server's log."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def page_for(self, api: str) -> str:
        """The page's URL, calling the API at the origin `api`."""
        return f"{self.origin}/?api={api}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=30)


class Tab:
    """A browser page, and the statuses of the answers its requests got, as the network saw
    them: the 204 that ends an event stream, which EventSource does not show the page.
    (Playwright reports neither preflights nor the answers the browser refused by CORS.)"""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.statuses: dict[str, list[int]] = {}
        page.on("response", self._seen)

    def _seen(self, response: Response) -> None:
        path = response.url.split("?")[0].rsplit("/", 1)[-1]
        self.statuses.setdefault(path, []).append(response.status)

    def of(self, route: str) -> list[int]:
        """The statuses of the responses to requests whose path ends in `/<route>`."""
        return self.statuses.get(route, [])

    async def until(self, condition: str, arg: Any = None) -> None:
        """Wait until the JavaScript `condition` (a function of `arg`) holds in the page."""
        await self.page.wait_for_function(condition, arg=arg, timeout=STARTUP_S * 1000)

    async def screenshot(self, directory: Path) -> None:
        await self.page.screenshot(path=directory / "page.png", full_page=True)


@pytest.fixture
def store_file(tmp_path: Path) -> str:
    """The store of the application and of the test: a SQLite file both processes open,
    which outlives the application's process."""
    return f"sqlite:///{tmp_path / 'browser.db'}"


@pytest_asyncio.fixture
async def runs(store_file: str) -> AsyncIterator[Runs]:
    """The runs as the test sees them: to produce a run's events, and to read its log."""
    store = await connect(store_file)
    yield Runs(store, RUNS)
    await store.close()


@pytest.fixture
def allowed_origin() -> Iterator[PageServer]:
    """The page on an origin in the application's allow-list."""
    server = PageServer()
    yield server
    server.close()


@pytest.fixture
def foreign_origin() -> Iterator[PageServer]:
    """The page on an origin the application does not allow."""
    server = PageServer()
    yield server
    server.close()


@pytest_asyncio.fixture
async def app(
    tmp_path: Path, store_file: str, allowed_origin: PageServer, runs: Runs
) -> AsyncIterator[AppServer]:
    """The application, started (after the test's own store created the file's tables)."""
    server = AppServer(tmp_path, store_file, [allowed_origin.origin])
    try:
        await server.start()
        yield server
    finally:
        await server.kill()


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture
async def tab(browser: Browser, tmp_path: Path) -> AsyncIterator[Tab]:
    """A page in a fresh browser context (no cookie yet); its screenshot is saved into the
    test's tmp_path when the test ends, whatever the outcome."""
    context = await browser.new_context()
    opened = Tab(await context.new_page())
    try:
        yield opened
    finally:
        await opened.screenshot(tmp_path)
        await context.close()


@pytest.fixture(params=["sqlite", "redis"])
def console_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store of a console test's `sessionary serve`: SQLite, then Redis."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'console.db'}"
    return str(request.getfixturevalue("redis_url"))


@pytest_asyncio.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser context in a narrow window (a phone's width), waiting at most
    `WAIT_MS` for anything."""
    opened = await browser.new_context(viewport=NARROW)
    opened.set_default_timeout(WAIT_MS)
    try:
        yield opened
    finally:
        await opened.close()
