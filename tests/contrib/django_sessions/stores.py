"""A store of a test's own for Django's sessions."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.test import override_settings
from redis import Redis

from sessionary.contrib.django import close_stores
from tests.conftest import REDIS_URL


@contextmanager
def on_store(kind: str, **options: Any) -> Iterator[str]:
    """Django's sessions on a store of their own for the duration: an SQLite file in a fresh
    directory, or Redis under a fresh key prefix (its keys deleted afterwards). Yields the
    store's URL."""
    with tempfile.TemporaryDirectory() as directory:
        prefix = f"test:django:{uuid.uuid4().hex[:12]}:"
        url = (
            f"sqlite:///{Path(directory) / 'sessions.db'}"
            if kind == "sqlite"
            else f"{REDIS_URL}?prefix={prefix}"
        )
        try:
            with override_settings(SESSIONARY={"store": url, "namespace": "django", **options}):
                yield url
        finally:
            close_stores()
            if kind == "redis":
                client = Redis.from_url(REDIS_URL)
                try:
                    for key in client.scan_iter(match=f"{prefix}*", count=1000):
                        client.delete(key)
                finally:
                    client.close()
