"""A store that stalls while a run's event stream is open ends the stream with an event that
says so (`event: error`, code `store_unavailable`, the cursor to resume after), not a silent
cut; the client resumes with Last-Event-ID once the store is back."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import orjson

from sessionary.errors import StoreUnavailable
from sessionary.runs import Runs
from sessionary.web.app import create_app
from sessionary.web.server import uvicorn_config
from sessionary.web.settings import Settings
from tests.servers import RedisServer, free_port
from tests.service import events_in, serving

KEY = "alice-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
BASE = "/api/v1/conversations"


async def test_a_stalled_store_ends_the_stream_with_an_error_event(
    private_redis: RedisServer,
) -> None:
    settings = Settings(
        store=f"{private_redis.url}?socket_timeout=1",
        reaper={"enabled": False},
        analytics={"enabled": False},
        runs={"users": [{"key": KEY, "subject": "alice"}]},
    )
    app = create_app(settings)
    async with (
        serving(uvicorn_config(app, settings, port=free_port(), log_level="warning")) as base,
        httpx.AsyncClient(base_url=base, headers=AUTH, timeout=30) as client,
    ):
        runs: Runs = app.state.features.runs
        conversation = (await client.post(BASE)).json()["conversationId"]
        run = (await client.post(f"{BASE}/{conversation}/runs")).json()["runId"]
        for n in range(3):
            await runs.runs.append(run, "chunk", {"n": n})
        url = f"{BASE}/{conversation}/runs/{run}/events"
        seen = ""
        stopped_at = None
        assert private_redis.process is not None
        try:
            async with client.stream("GET", url) as response:
                async for text in response.aiter_text():
                    seen += text
                    if stopped_at is None and seen.count("event: chunk") == 3:
                        private_redis.process.send_signal(signal.SIGSTOP)
                        stopped_at = time.monotonic()
            ended_after = time.monotonic() - (stopped_at or 0)
        finally:
            private_redis.process.send_signal(signal.SIGCONT)
        events = events_in(seen)
        assert [e["event"] for e in events] == ["status", "chunk", "chunk", "chunk", "error"]
        error = orjson.loads(events[-1]["data"])
        assert error["error"] == "store_unavailable"
        assert error["last"] == events[-2]["id"]
        assert ended_after < 15
        # once the store answers again, the client resumes after what it saw
        deadline = time.monotonic() + 10
        while True:
            try:
                await runs.runs.append(run, "chunk", {"n": 3})
                break
            except StoreUnavailable:  # failing fast a little longer after the outage
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        await runs.runs.append(run, "end", None, final=True)
        resumed = await client.get(url, headers={"Last-Event-ID": error["last"]})
        assert [e["data"] for e in events_in(resumed.text)] == ['{"n":3}', "null"]
