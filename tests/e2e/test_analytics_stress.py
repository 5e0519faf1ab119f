"""The end-to-end stress run (benchmarks/analytics_stress.py) as a test: `sessionary serve`
in a subprocess, 500 sessions x 3 events over HTTP at concurrency 25, its own reaper and
drainer, on SQLite and on Redis."""

from __future__ import annotations

from benchmarks.analytics_stress import run


async def test_500_sessions_of_3_events_at_concurrency_25(shared_url: str) -> None:
    outcome = await run(shared_url, sessions=500, events=3, concurrency=25)
    assert outcome.problems(500, 3) == []
    assert (outcome.sessions, outcome.starts, outcome.ends) == (500, 500, 500)
    assert (outcome.events, outcome.open_left) == (2500, 0)
