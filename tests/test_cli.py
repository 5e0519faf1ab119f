"""The command line."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from sessionary import connect
from sessionary.analytics import Sessionizer, TrackEvent
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


def test_reap_analytics_and_vacuum(tmp_path: Path) -> None:
    """Events ingested long ago: `reap --analytics` closes their sessions and drains them to
    the sink; `vacuum` then reports and forgets the old state."""
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    sink = tmp_path / "sink.db"
    config = tmp_path / "sessionary.toml"
    config.write_text(f'store = "{store_url}"\n[analytics]\nsink = "sqlite:///{sink}"\n')

    async def ingest() -> None:
        store = await connect(store_url)
        old = store.clock.now_ms() - 10 * 86_400_000  # ten days ago
        events = [
            TrackEvent.parse({"name": "screen_view", "device_id": f"d{i}", "timestamp": old})
            for i in range(3)
        ]
        await Sessionizer(store).ingest("shop", events)
        await store.close()

    asyncio.run(ingest())
    reaped = CliRunner().invoke(main, ["reap", "--analytics", "--config", str(config)])
    assert reaped.exit_code == 0, reaped.output
    assert "analytics: closed 3 sessions" in reaped.output
    with sqlite3.connect(sink) as db:
        assert db.execute("SELECT count(*) FROM analytics_sessions WHERE closed").fetchone() == (3,)
    vacuumed = CliRunner().invoke(main, ["vacuum", "--config", str(config), "--older-than", "1d"])
    assert vacuumed.exit_code == 0, vacuumed.output
    assert "closed 0 sessions, forgot 0 device states" in vacuumed.output  # closed just now
    bad = CliRunner().invoke(main, ["vacuum", "--config", str(config), "--older-than", "soon"])
    assert bad.exit_code == 2
