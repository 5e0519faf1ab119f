"""The `workers` fixture: `sessionary worker` processes a test starts, all killed when it
ends (their stderr printed then, which pytest shows when the test failed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runs.workers import Workers


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        for process in started.started:
            process.kill()
            print(f"--- {process.name} (exit {process.process.returncode}):")
            print(process.stderr[-5_000:])
