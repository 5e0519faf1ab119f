"""Every benchmark script runs at its smoke size so none can rot unnoticed.

Each `benchmarks/*.py` (but the helper modules in HELPERS and this file) is run as a
subprocess with `--smoke` (seconds, not minutes), in a directory of its own, against the shared
test Redis, and must exit 0 and print its result lines. `make bench-smoke` runs this file, and
`.ci/run` runs that. A new benchmark is picked up by the glob: it must accept `--smoke` and declare
the lines it prints in RESULTS, or this test fails and says so. wrk is found or installed by
`scripts/ensure-wrk`, the same step `make bench` runs. A key of RESULTS with arguments after the
script's name ("analytics_stress.py --sink clickhouse") is a further run of that script, with
`--smoke` and those arguments.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/9")  # as the tests use
ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
#: not benchmarks: the applications middleware.py serves, the Celery app run_dispatch.py runs,
#: what several share
HELPERS = {"middleware_apps.py", "run_dispatch_app.py", "shared.py"}
NUMBER = r"[\d,.]+"

# For each benchmark (and each further run, "script.py args"), patterns its output must match:
# one result row or line each.
RESULTS: dict[str, list[str]] = {
    "store_ops.py": [
        rf"memory\s*│\s*touch\s*│\s*8\s*│\s*{NUMBER}",
        rf"sqlite\s*│\s*update\s*│\s*1\s*│\s*{NUMBER}",
        # against the bare sqlite3 loop, with the loop's lag and CPU per tick
        rf"sqlite\s*│\s*touch\s*│\s*1\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x\s*│\s*{NUMBER}\s*│\s*{NUMBER}",
        rf"redis\s*│\s*consume\s*│\s*8\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        rf"│\s*8\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",  # touch against its bare script
        rf"sqlite\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",  # the blocking API's touch
        rf"redis\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        # encryption at rest: sealed against plain
        rf"sqlite\s*│\s*update\s*│\s*8\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
    ],
    "ingest.py": [
        rf"sessionary on redis\s*│\s*4 batches\s*│\s*{NUMBER}",
        rf"naive GET\+SET per event\s*│\s*32 events\s*│\s*{NUMBER}",
        rf"TrackEvent.parse alone: {NUMBER} events/s",
    ],
    "analytics_parts.py": [
        rf"browser page view\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        rf"sqlite\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        rf"postgres\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        rf"clickhouse\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        rf"clickhouse drains {NUMBER}x as fast as postgres",
    ],
    "runs.py": [
        rf"Producer.emit\s*│\s*per task\s*│\s*4\s*│\s*{NUMBER}\s*│\s*{NUMBER}",
        rf"sessionary Runs.events\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}"
        r"\s*│\s*10/10",
    ],
    "middleware.py": [
        rf"sessionary /rw\s*│\s*{NUMBER}",
        rf"no middleware /plain\s*│\s*{NUMBER}",
        rf"sessionary / starsessions = {NUMBER}x",
        rf"sessionary /ro\s*│\s*{NUMBER}",
        rf"sessionary /ro / its /plain, no cookie = {NUMBER}x",
        rf"sessionary\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*0\s*│",  # lost updates
        rf"starsessions\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│",
    ],
    "serve_workers.py": [
        rf"/rw\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        rf"/track, 1 event\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
    ],
    "track_http.py": [
        rf"GET /healthz\s*│\s*{NUMBER}",
        rf"/track, 1 event\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",  # / healthz
        rf"/track, 100 events\s*│\s*{NUMBER}\s*│\s*{NUMBER}",
    ],
    "handoff.py": [
        rf"sqlite\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        rf"redis\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
    ],
    "session_limits.py": [
        rf"sqlite\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        rf"redis\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
    ],
    "run_dispatch.py": [
        rf"bare Celery round trip\s*│\s*-\s*│\s*{NUMBER}\s*│\s*1.00x",
        rf"sessionary runs through Celery\s*│\s*sqlite\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        rf"sessionary runs through Celery\s*│\s*redis\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        rf"sessionary worker\s*│\s*sqlite\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        rf"sessionary worker\s*│\s*redis\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
    ],
    "tracing.py": [
        rf"memory\s*│\s*touch\s*│\s*unconfigured\s*│\s*{NUMBER}\s*│\s*{NUMBER}x\s*│\s*-?{NUMBER}",
        rf"sqlite\s*│\s*update\s*│\s*in-memory\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
        rf"redis\s*│\s*touch\s*│\s*no-op provider\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
    ],
    "analytics_stress.py": [r"20 sessions, 20 session_start, 20 session_end, 80 event rows"],
    "analytics_stress.py --sink clickhouse": [
        r"20 sessions, 20 session_start, 20 session_end, 80 event rows"
    ],
    "console.py": [
        rf"sqlite\s*│\s*sessions page\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x"
        rf"\s*│\s*-?{NUMBER}",
        rf"redis\s*│\s*analytics page\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}x",
    ],
    "edge.py": [
        rf"sqlite\s*│\s*header flood\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}",
        rf"sqlite\s*│\s*readers, one replayed log\s*│\s*{NUMBER}\s*│\s*{NUMBER}",
        rf"redis\s*│\s*readers, live logs\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│\s*{NUMBER}\s*│"
        r"\s*\d+ of \d+\s*│\s*\d+\s*│\s*\d+\s*│",  # RSS, p99, probes, Redis connections
        rf"redis\s*│\s*/track batches\s*│\s*{NUMBER}\s*│\s*{NUMBER}",
    ],
}


def benchmarks() -> list[str]:
    return sorted(
        path.name
        for path in BENCHMARKS.glob("*.py")
        if path.name not in HELPERS and not path.name.startswith("test_")
    )


@pytest.fixture(scope="module")
def wrk() -> None:
    subprocess.run([ROOT / "scripts" / "ensure-wrk"], check=True, timeout=300)


def runs() -> list[str]:
    """Each benchmark, then each further run RESULTS declares ("script.py args")."""
    return benchmarks() + sorted(key for key in RESULTS if " " in key)


def test_every_benchmark_is_declared() -> None:
    assert set(benchmarks()) == {key for key in RESULTS if " " not in key}, (
        "declare each benchmark's result lines in RESULTS"
    )
    assert {key.split()[0] for key in RESULTS} <= set(benchmarks()), "a run of no benchmark"


@pytest.mark.parametrize("name", runs())
def test_benchmark_runs_at_smoke_size(name: str, wrk: None, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "REDIS_BENCH_URL": REDIS_URL,
        "BENCH_REDIS_URL": REDIS_URL,
        "COLUMNS": "200",  # rich wraps tables to the terminal: keep each row on one line
        "PYTHONUNBUFFERED": "1",
    }
    script, *arguments = name.split()
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # files a benchmark names (an SQLite store, say) never land in the checkout
        timeout=100,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    missing = [
        pattern
        for pattern in RESULTS.get(name, ["(no RESULTS entry)"])
        if not re.search(pattern, done.stdout)
    ]
    assert not missing, f"{name} did not print {missing}:\n{output}"
