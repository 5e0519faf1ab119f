"""One conversion from a duration to milliseconds, exact, everywhere: `clock.to_ms`.

Five helpers used to compute `int(delta.total_seconds() * 1000)`, which goes through a float:
1001 ms became 1000, and 741 durations under 100,000 ms came out one short."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import sessionary
from sessionary import ManualClock, connect
from sessionary.analytics.settings import AnalyticsSettings, ProjectSettings
from sessionary.clock import iso_utc, parse_duration, to_ms
from sessionary.runs import Runs, RunsSettings
from sessionary.web.app import create_app
from sessionary.web.settings import NamespaceSettings, ReaperSettings, Settings

KEY = "a-project-key-0123456789"
# whole milliseconds whose float conversion came out one short (1001 is the first)
FLOAT_LOSSES = [1001, 1003, 4007, 64_002, 65_526]
durations = st.builds(
    timedelta,
    milliseconds=st.integers(min_value=1, max_value=10**12),
    microseconds=st.integers(min_value=0, max_value=999),
)


def test_the_float_losses_are_real() -> None:
    """The values below are the ones the old helpers got wrong (so the tests below can fail)."""
    for ms in FLOAT_LOSSES:
        assert int(timedelta(milliseconds=ms).total_seconds() * 1000) == ms - 1


@settings(max_examples=300, deadline=None)
@given(delta=durations)
def test_settings_read_and_write_every_duration_as_to_ms_does(delta: timedelta) -> None:
    ms = to_ms(delta)
    assert ms == (delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000)
    project = ProjectSettings(key=KEY, timeout=delta, max_length=delta, lateness=f"{ms}ms")  # type: ignore[arg-type]
    analytics = AnalyticsSettings(reap_lag=delta)  # type: ignore[arg-type]
    rules = project.rules(analytics)
    assert (rules.timeout_ms, rules.max_length_ms, rules.lateness_ms, rules.reap_lag_ms) == (
        ms,
        ms,
        ms,
        ms,
    )
    assert analytics.default_rules().reap_lag_ms == ms
    # a settings file written from the settings reads back the same
    namespace = NamespaceSettings(idle_ttl=delta)  # type: ignore[arg-type]
    written = namespace.model_dump(mode="json")
    assert written["idle_ttl"] == f"{ms}ms"
    assert NamespaceSettings(**written) == namespace
    assert to_ms(parse_duration(written["idle_ttl"])) == ms
    reaper = ReaperSettings(every=written["idle_ttl"])
    assert reaper.every == timedelta(milliseconds=ms)


async def test_runs_use_the_exact_milliseconds() -> None:
    clock = ManualClock()
    for ms in FLOAT_LOSSES:
        async with await connect("memory://", clock=clock) as store:  # no durations known yet
            settings = RunsSettings(
                default_duration=timedelta(milliseconds=ms),  # type: ignore[arg-type]
                retention=timedelta(milliseconds=ms),  # type: ignore[arg-type]
            )
            runs = Runs(store, settings)
            conversation = await runs.create_conversation("alice")
            run = await runs.start(conversation.id, "alice")
            assert await runs.estimated_completion(run) == clock.now_ms() + ms
            async with runs.producer(run.id):
                pass
            finished = await runs.runs.get(run.id)
            assert finished is not None
            assert finished.expires_at == clock.now_ms() + ms


async def test_the_playground_uses_the_exact_milliseconds() -> None:
    clock = ManualClock()
    for ms in FLOAT_LOSSES:
        app = create_app(
            Settings(
                store="memory://",
                reaper={"enabled": False},  # type: ignore[arg-type]
                playground={"repo_ttl": f"{ms}ms"},  # type: ignore[arg-type]
                analytics={"enabled": False},  # type: ignore[arg-type]
            ),
            clock=clock,
        )
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="https://testserver"
            ) as client,
        ):
            await client.get("/api/v1/playground/session")
            repo = await client.put(
                "/api/v1/playground/session/indexed-repo",
                json={"github_url": "https://github.com/a/b", "name": "b"},
            )
            assert repo.status_code == 201, repo.text
            assert repo.json()["indexed_repo"]["expires_at"] == iso_utc(clock.now_ms() + ms)


def test_no_module_converts_through_a_float() -> None:
    """Durations become ms through `clock.to_ms` only: no module multiplies seconds again."""
    source = Path(sessionary.__file__).parent
    through_a_float = re.compile(r"total_seconds\(\)\s*\*\s*1_?000")
    offenders = [
        str(path.relative_to(source))
        for path in source.rglob("*.py")
        if through_a_float.search(path.read_text())
    ]
    assert offenders == []


def test_durations_past_the_bounds_are_refused_as_settings_errors() -> None:
    """Not an OverflowError from deep inside (a float or a count of days too large for a
    timedelta), and not a duration whose end no backend stores exactly."""
    for bad in ("0ms", "36526d", "99999999999999d", 1e300, float("inf"), float("nan"), -1, 0.0001):
        with pytest.raises(ValidationError):
            ReaperSettings(every=bad)  # type: ignore[arg-type]
    assert ReaperSettings(every="36525d").every == timedelta(days=36_525)  # type: ignore[arg-type]
