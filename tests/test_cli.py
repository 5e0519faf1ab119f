"""The command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sessionary.cli import main
from tests.servers import free_port


def test_demo_runs_on_the_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    assert "SQLiteBackend('sessionary.db')" in result.output
    assert "the reaper claimed 3" in result.output
    assert (tmp_path / "sessionary.db").exists()


def test_demo_on_redis(redis_url: str) -> None:
    result = CliRunner().invoke(main, ["demo", "--store", redis_url])
    assert result.exit_code == 0, result.output
    assert "revoked 2" in result.output


def test_ping_says_when_the_store_is_down() -> None:
    down = CliRunner().invoke(main, ["ping", "--store", f"redis://127.0.0.1:{free_port()}/0"])
    assert down.exit_code == 1
    assert "unavailable" in down.output
    up = CliRunner().invoke(main, ["ping", "--store", "memory://"])
    assert (up.exit_code, up.output.strip()) == (0, "ok: memory://")
