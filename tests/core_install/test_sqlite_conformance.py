"""The conformance suite on SQLite, needing nothing beyond the core and the `testing` extra.

`scripts/check-core-install` runs this file alone in a fresh venv that has only
`pip install '.[testing]'`, without the repository's conftest (which needs redis and the test
servers), to prove that the core install stores sessions by itself. So it imports nothing but
sessionary, pytest and the standard library; the normal suite collects it too.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sessionary import Store
from sessionary.backends.sqlite import SQLiteBackend
from sessionary.testing import StoreConformance


class TestSQLiteCoreInstall(StoreConformance):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'sessions.db'}"

    async def footprint(self, store: Store) -> int:
        assert isinstance(store.backend, SQLiteBackend)
        with sqlite3.connect(store.backend.path) as db:
            return int(
                db.execute(
                    "SELECT (SELECT count(*) FROM sessions) + (SELECT count(*) FROM work)"
                ).fetchone()[0]
            )
