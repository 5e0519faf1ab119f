"""What a console page costs against the JSON API route whose numbers it shows.

    python benchmarks/console.py [--requests 2000] [--stores sqlite,redis] [--smoke]

The service in this process (`create_app`, driven through httpx's ASGI transport: no socket,
so the numbers are the server's work plus the same client overhead on both sides), signed in
to the console and holding an admin key. Each pair asks the same question twice, as a page
and as the API:

* the sessions page (HTML: every namespace with its live count, lifetimes, the counter
  groups) against `GET /v1/namespaces` (the same counts, JSON);
* the page's live refresh (`/console/sessions/counts`) against `GET /v1/namespaces`;
* the analytics page (a week per day: tiles, chart data, top paths) against
  `GET /api/v1/projects/shop/stats` for the same range.

The two sides of a pair alternate in slices, each first in turn, so a drift of the machine
weighs on both alike; each rate is the median of its slices. The ratio is page / API: what
the rendering (templates, the session middleware's touch of the admin session) adds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from sessionary.web.app import create_app
from sessionary.web.settings import Settings
from shared import forget_redis_keys

REDIS_URL = os.environ.get("REDIS_BENCH_URL", "redis://127.0.0.1:6379/9")
KEY = "bench-console-admin-key-0123456789"
PROJECT_KEY = "bench-console-project-key-0123456789"
SLICES = 10
ORIGIN = "https://bench"


PREFIX = f"bench-console:{os.getpid()}:"


@asynccontextmanager
async def store_url(kind: str) -> AsyncIterator[str]:
    """A store of the benchmark's own: a SQLite file in a temporary directory, or its own
    prefix on Redis, whose keys are deleted afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield f"sqlite:///{Path(directory) / 'console.db'}"
    else:
        try:
            yield f"{REDIS_URL}?prefix={PREFIX}"
        finally:
            await forget_redis_keys(REDIS_URL, PREFIX)


async def rate(client: httpx.AsyncClient, path: str, count: int, headers: dict[str, str]) -> float:
    """Requests per second of `count` GETs of `path`, one at a time (each checked: 200)."""
    started = time.perf_counter()
    for _ in range(count):
        response = await client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.status_code, response.text[:200])
    return count / (time.perf_counter() - started)


async def measure(kind: str, requests: int, directory: Path) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    async with store_url(kind) as url:
        settings = Settings(
            store=url,
            api_keys=[KEY],
            reaper={"enabled": False},
            analytics={
                "sink": f"sqlite:///{directory / f'{kind}-analytics.db'}",
                "jobs": False,
                "projects": {"shop": {"key": PROJECT_KEY}},
            },
        )
        app = create_app(settings)
        admin = {"Authorization": f"Bearer {KEY}"}
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=ORIGIN, timeout=30
            ) as client,
        ):
            for n in range(50):  # something to count
                made = await client.post(
                    "/v1/namespaces/web/sessions", json={"subject": f"u{n % 7}"}, headers=admin
                )
                assert made.status_code == 201
            events = [
                {"name": "screen_view", "device_id": f"d{n}", "path": f"/p{n % 5}"}
                for n in range(200)
            ]
            tracked = await client.post(
                "/api/v1/track", json=events, headers={"Authorization": f"Bearer {PROJECT_KEY}"}
            )
            assert tracked.status_code == 202
            await app.state.features.analytics.drain()
            signed = await client.post(
                "/console/sign-in", data={"key": KEY}, headers={"Origin": ORIGIN}
            )
            assert signed.status_code == 303, signed.text
            today = datetime.now(UTC).date()
            first = today - timedelta(days=6)
            start = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp())
            end = start + 7 * 86400
            page = {"Accept": "text/html"}
            pairs = [
                ("sessions page", "/console/sessions", page, "/v1/namespaces", admin),
                ("live counts", "/console/sessions/counts", {}, "/v1/namespaces", admin),
                (
                    "analytics page",
                    f"/console/analytics?project=shop&from={first}&to={today}",
                    page,
                    f"/api/v1/projects/shop/stats?from={start * 1000}&to={end * 1000}",
                    admin,
                ),
            ]
            per_slice = max(1, requests // SLICES)
            for name, path, headers, api_path, api_headers in pairs:
                pages, apis = [], []  # (signed out, a page would be a 303: `rate` checks 200)
                for turn in range(SLICES):
                    sides = [(pages, path, headers), (apis, api_path, api_headers)]
                    for found, where, sent in sides if turn % 2 == 0 else reversed(sides):
                        found.append(await rate(client, where, per_slice, sent))
                shown, answered = statistics.median(pages), statistics.median(apis)
                rows.append(
                    (
                        kind,
                        name,
                        f"{shown:,.0f}",
                        f"{answered:,.0f}",
                        f"{shown / answered:.2f}x",
                        f"{1e6 / shown - 1e6 / answered:,.0f}",
                    )
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per side of each pair")
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--smoke", action="store_true", help="a CI size: seconds")
    args = parser.parse_args()
    requests = 100 if args.smoke else args.requests
    table = Table(title=f"console pages against their API routes ({requests} requests a side)")
    for column in ("store", "page", "page req/s", "API req/s", "page / API", "+us/request"):
        table.add_column(column, justify="left" if column in ("store", "page") else "right")
    with tempfile.TemporaryDirectory() as directory:
        for kind in args.stores.split(","):
            for row in asyncio.run(measure(kind, requests, Path(directory))):
                table.add_row(*row)
    Console(width=110).print(table)
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
