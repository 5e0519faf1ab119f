"""The service's startup and shutdown: every resource it opens is closed, whichever step of
the startup fails, and at shutdown. Failures are injected through the settings, as an
operator makes them: a store URL that cannot open, a Redis that refuses the URL's database,
an analytics sink that cannot open after the background tasks started."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI

from sessionary.errors import BadStoreURL, StoreUnavailable
from sessionary.source import StoreSource
from sessionary.web.app import create_app
from sessionary.web.settings import Settings
from tests.conftest import REDIS_URL


def background_tasks() -> set[str]:
    """The names of the service's background tasks now running in this loop."""
    return {
        task.get_name()
        for task in asyncio.all_tasks()
        if task.get_name().startswith("sessionary-") and not task.done()
    }


def sqlite_writers(path: Path) -> list[threading.Thread]:
    """The SQLite store's writer thread for `path`, while the store is open."""
    return [t for t in threading.enumerate() if t.name == f"sessionary-sqlite:{path}"]


def service(store: str, tmp_path: Path, **overrides: Any) -> FastAPI:
    """The service with its reaper (and the runs' lease watcher) and analytics jobs on."""
    values: dict[str, Any] = {
        "store": store,
        "analytics": {"sink": f"sqlite:///{tmp_path / 'sink.db'}", "jobs": True},
    }
    values.update(overrides)
    return create_app(Settings(**values))


def source_of(app: FastAPI) -> StoreSource:
    source = app.state.sessionary
    assert isinstance(source, StoreSource)
    return source


async def test_shutdown_stops_every_task_and_closes_the_store(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    app = service(f"sqlite:///{path}", tmp_path)
    before = background_tasks()
    async with app.router.lifespan_context(app):
        assert background_tasks() - before == {
            "sessionary-reaper",
            "sessionary-run-leases",
            "sessionary-analytics-jobs",
        }
        assert sqlite_writers(path)
        assert app.state.features.analytics.sink is not None
    assert background_tasks() == before
    assert not sqlite_writers(path)
    assert source_of(app).opened is None


async def test_a_sink_that_fails_to_open_closes_what_was_opened_before(tmp_path: Path) -> None:
    """The sink opens after the store and the tasks sweeping it: its failure stops those
    tasks and closes the store (the store leaked when the sink opened outside the `try`)."""
    path = tmp_path / "store.db"
    app = service(
        f"sqlite:///{path}",
        tmp_path,
        analytics={"sink": f"sqlite:///{tmp_path / 'absent' / 'sink.db'}"},
    )
    before = background_tasks()
    with pytest.raises(StoreUnavailable):
        async with app.router.lifespan_context(app):
            pytest.fail("the service started without its sink")
    assert background_tasks() == before
    assert not sqlite_writers(path)
    assert source_of(app).opened is None


async def test_a_redis_refusing_the_urls_database_fails_the_start_and_is_closed(
    tmp_path: Path,
) -> None:
    """Opened, then refused at the check: the start fails with the fix, no task started,
    the store is closed (not left to answer 503 to every request)."""
    url = urlsplit(REDIS_URL)._replace(path="/99").geturl()
    app = service(url, tmp_path)
    before = background_tasks()
    with pytest.raises(BadStoreURL, match=r"no such database .* redis://[^ ]+/0"):
        async with app.router.lifespan_context(app):
            pytest.fail("the service started on a database Redis does not have")
    assert background_tasks() == before
    assert source_of(app).opened is None


async def test_a_store_that_cannot_open_fails_the_start_and_starts_nothing(
    tmp_path: Path,
) -> None:
    app = service(f"sqlite:///{tmp_path / 'absent' / 'store.db'}", tmp_path)
    before = background_tasks()
    with pytest.raises(BadStoreURL, match="does not exist"):
        async with app.router.lifespan_context(app):
            pytest.fail("the service started without its store")
    assert background_tasks() == before
    assert not (tmp_path / "sink.db").exists()  # the sink was never opened
