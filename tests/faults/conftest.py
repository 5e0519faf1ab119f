"""Fixtures and helpers of the fault suite."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionary import Namespace


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB tmpfs of the test's own: what is written there soon finds the disk full."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


async def collect(ns: Namespace, session_id: str) -> list[Any]:
    """The data of every event of a log, followed until its final event."""
    return [event.data async for event in ns.follow(session_id)]
