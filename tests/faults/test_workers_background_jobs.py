"""Two workers of one `sessionary serve --workers 2`, each running every background job on one
store: their session reapers race for the same due sessions, their analytics reapers for the
same idle visits, their drainers for the same outbox. Each session still expires exactly once
(one `expired` event, counted in the metrics both workers sum), and each visit is closed and
reaches the sink exactly once (one session_start and one session_end row)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from tests.servers import RedisServer, eventually
from tests.service import Service
from tests.web.test_metrics_processes import sample

ADMIN_KEY = "workers-admin-key-0123456789"
PROJECT_KEY = "workers-project-key-0123456789"
SESSIONS = 40
VISITS = 30


def sink_counts(path: Path) -> dict[str, int]:
    """Rows of the sink's events, by name (none before the drainer made the file)."""
    if not path.exists():
        return {}
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT name, count(*) FROM analytics_events GROUP BY name"))


def expired(service: Service) -> float:
    text = httpx.get(f"{service.url}/metrics").text
    if 'event="expired"' not in text:  # none yet: the counter has no sample
        return 0
    return sample(text, "sessionary_session_events_total", namespace="web", event="expired")


async def test_two_workers_expire_each_session_and_close_each_visit_once(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    sink = tmp_path / "sink.db"
    service = Service(
        tmp_path,
        f"""store = "{redis.url}"
workers = 2
api_keys = ["{ADMIN_KEY}"]
[reaper]
every = "50ms"
[analytics]
sink = "sqlite:///{sink}"
reap_every = "50ms"
reap_lag = "500ms"
drain_every = "50ms"
[analytics.projects.shop]
key = "{PROJECT_KEY}"
timeout = "300ms"
""",
    )
    try:
        service.start()
        announced = "sessionary: 2 worker processes"
        await eventually(lambda: announced in service.log.read_text(), 30, "no startup lines")
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(base_url=service.url, headers=admin) as client:
            for _ in range(SESSIONS):
                created = await client.post(
                    "/v1/namespaces/web/sessions", json={"idle_ttl_ms": 200}
                )
                assert created.status_code == 201, created.text
            events = [
                {"name": "screen_view", "device_id": f"d{n}", "path": "/"} for n in range(VISITS)
            ]
            tracked = await client.post(
                "/api/v1/track", json=events, headers={"Authorization": f"Bearer {PROJECT_KEY}"}
            )
            assert tracked.status_code in (200, 202), tracked.text

        def all_done() -> bool:
            ends = sink_counts(sink).get("session_end", 0)
            return expired(service) >= SESSIONS and ends >= VISITS

        await eventually(all_done, 60, "not every session expired and visit closed")
        assert expired(service) == SESSIONS
        service.stop()  # both workers drain what is left and close: any duplicate shows now
        assert sink_counts(sink) == {
            "screen_view": VISITS,
            "session_start": VISITS,
            "session_end": VISITS,
        }
    finally:
        service.stop()
        redis.stop()
