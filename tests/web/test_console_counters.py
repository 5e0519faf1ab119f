"""The sessions page's counter groups on every backend: each configured group the key may
act on, a page of its counters with the numbers `GET /v1/counters/{group}` answers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio

from sessionary import ManualClock, Store
from sessionary.counters import Charge
from sessionary.web.console.app import short_key
from tests.web.conftest import client_for
from tests.web.test_console import page, sign_in
from tests.web.test_counters_api import (
    CHARGES,
    PLAYGROUND_KEY,
    WEB_ONLY_KEY,
    all_pages,
    app_over,
    charge_some,
    store_url,
)

__all__ = ["store_url"]  # the backends, Redis a server of the test's own (see there)

_ROW = re.compile(
    r'<tr data-counter="([^"]+)">\s*<th scope="row"><code>[^<]*</code></th>\s*'
    r'<td class="num">([^<]+)</td>\s*<td class="num">([^<]+)</td>\s*'
    r'<td><time data-ms="(\d+)">[^<]*</time></td>\s*<td>(\w+)</td>'
)
_NEXT = re.compile(r'href="(/console/sessions\?[^"#]*group=playground[^"#]*)#counters-playground"')


def rows(html: str) -> dict[str, dict[str, Any]]:
    """The playground group's table, as the API's JSON would say it."""
    table = re.search(r'<table[^>]*data-group="playground">(.*?)</table>', html, re.S)
    if table is None:
        return {}
    return {
        key: {
            "key": key,
            "used": None if used == "unknown" else int(used),
            "limit": None if limit == "no limit" else int(limit),
            "resets_at": int(resets_at),
            "algorithm": algorithm,
        }
        for key, used, limit, resets_at, algorithm in _ROW.findall(table.group(1))
    }


def as_shown(counter: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in counter.items() if k != "window_ms"}


@pytest_asyncio.fixture
async def console(store: Store, clock: ManualClock) -> AsyncIterator[httpx.AsyncClient]:
    app = app_over(store, clock)
    async with app.router.lifespan_context(app), client_for(app) as client:
        yield client


async def test_the_pages_numbers_are_the_apis(
    console: httpx.AsyncClient, store: Store, clock: ManualClock
) -> None:
    await charge_some(store, clock)
    opened = await console.get("/api/v1/playground/session")  # the playground charges too
    assert opened.status_code == 200, opened.text
    await sign_in(console)
    html = (await page(console, "/console/sessions")).text
    assert '<h2 id="counters-heading">Counter groups</h2>' in html
    shown = rows(html)
    api = await all_pages(console, "playground", 1000)
    assert len(shown) == len(api) == len(CHARGES) + 1  # and the session the playground opened
    assert shown == {c["key"]: as_shown(c) for c in api}
    assert _NEXT.search(html) is None  # one page holds them


async def test_a_group_of_many_counters_pages_on_by_its_next_link(
    console: httpx.AsyncClient, store: Store
) -> None:
    quota = store.counters("playground")
    for n in range(0, 130, 10):
        await quota.charge(
            *(Charge(f"k:{m:03}", limit=5, window=CHARGES[0].window) for m in range(n, n + 10))
        )
    await sign_in(console)
    seen: dict[str, dict[str, Any]] = {}
    path: str | None = "/console/sessions"
    for _ in range(100):
        assert path is not None
        html = (await page(console, path)).text
        seen.update(rows(html))
        found = _NEXT.search(html)
        if found is None:
            break
        path = found.group(1).replace("&amp;", "&")
    else:
        raise AssertionError("the pages never ended")
    api = await all_pages(console, "playground", 1000)
    assert seen == {c["key"]: as_shown(c) for c in api}
    assert len(seen) == 130


async def test_a_key_sees_only_the_groups_it_may_act_on(
    console: httpx.AsyncClient, store: Store, clock: ManualClock
) -> None:
    await charge_some(store, clock)
    await sign_in(console, WEB_ONLY_KEY)
    html = (await page(console, "/console/sessions")).text
    assert 'data-group="playground"' not in html
    assert "Your key may act on no counter group" in html
    await sign_in(console, PLAYGROUND_KEY)
    assert len(rows((await page(console, "/console/sessions")).text)) == len(CHARGES)


async def test_a_bad_cursor_shows_the_first_page_and_says_so(
    console: httpx.AsyncClient, store: Store, clock: ManualClock
) -> None:
    await charge_some(store, clock)
    await sign_in(console)
    html = (await page(console, "/console/sessions?group=playground&after=_w", 400)).text
    assert "is gone; here is its first page" in html
    assert len(rows(html)) == len(CHARGES)


def test_a_key_holding_an_id_is_shown_cut() -> None:
    key = "session:" + "x" * 43
    assert short_key(key) == "session:" + "x" * 12 + "…"
    assert short_key("ip:203.0.113.7") == "ip:203.0.113.7"
