"""A bounded schemathesis run against the live OpenAPI document of a real `sessionary serve`.

The service runs as a process of its own (uvicorn, as in production) on a free port, on a
temporary SQLite file and on the shared Redis (a key prefix of the test's own), with every
feature on: the admin API, runs (a handler that ends each run at once), analytics (a project
and its SQLite sink) and the playground, all behind one key, so the authenticated routes are
exercised past their key check. Before the run the test creates live sessions, conversations
with a finished run and tracked events; the hooks (tests/web/schemathesis_hooks.py) hand their
ids to the fuzzer beside the generated ones and add hostile values to the generated bodies and
query strings (integers past 64 bits, booleans and numeric strings for integers, lone
surrogates, data nested past the stated depth, bad paging cursors).

Every operation, every phase (examples, coverage, fuzzing, stateful), a fixed seed, a bounded
number of examples per operation, twice against the same service:

* the document's run: `--checks all`, on what the document describes (the live ids aside):
  every answer is documented, with the declared body, headers and content type; schema-valid
  requests are accepted (but for a cursor this server did not issue or an If-Match naming
  another version, which no schema can foretell: see the hooks), schema-invalid ones
  refused, each method not served is a 405 listing the path's methods, credentials are not
  ignored...;
* the hostile run: the same checks with hostile values in bodies and query strings (see the
  hooks), but positive_data_acceptance: the hooks put values no schema rules out (a lone
  surrogate, data nested past the stated depth) into requests the fuzzer takes as valid, and
  the service rightly refuses them.

What is asserted: schemathesis finds nothing in either, in particular no 5xx (a 503 with
Retry-After that the operation documents excepted) and no dropped connection, and the server
logged no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from tests.service import Service
from tests.web.schemathesis_hooks import FUZZ_IDS, HOSTILE

ROOT = Path(__file__).resolve().parents[2]
KEY = "schemathesis-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
SEED = 20261130
EXAMPLES = 30


def config(directory: Path, store: str) -> str:
    return f"""store = "{store}"
api_keys = ["{KEY}"]

[playground]
sessions_per_ip = 1000000
ip_limit = 1000000
secure_cookies = false

[runs]
handler = "tests.web.schemathesis_hooks:instant"
users = [{{ key = "{KEY}", subject = "fuzzer" }}]

[analytics]
sink = "sqlite:///{directory / "sink.db"}"

[analytics.projects.shop]
key = "{KEY}"
"""


def live_resources(client: httpx.Client) -> dict[str, object]:
    """What the fuzzer gets besides generated ids: live sessions, a finished run, a project
    with sessions in its sink."""
    sessions: dict[str, list[str]] = {"sessions": [], "ending": []}
    for n in range(40):
        kind = "ending" if n % 2 else "sessions"
        body = {"data": {"n": n, "list": [1, 2]}, "metadata": {"k": "v"}}
        if kind == "ending":  # the subject routes delete them all
            body["subject"] = "fuzzed"
        answer = client.post("/v1/namespaces/web/sessions", json=body, headers=AUTH)
        assert answer.status_code == 201, answer.text
        sessions[kind].append(answer.json()["id"])
    runs = []
    for _ in range(4):
        conversation = client.post("/api/v1/conversations", headers=AUTH).json()["conversationId"]
        run = client.post(f"/api/v1/conversations/{conversation}/runs", json={"input": "hi"},
                          headers=AUTH)  # fmt: skip
        assert run.status_code == 201, run.text
        runs.append((conversation, run.json()["runId"]))
    events = [{"name": "screen_view", "device_id": f"d{n}", "path": "/"} for n in range(5)]
    assert client.post("/api/v1/track", json=events, headers=AUTH).status_code == 202
    return {
        "namespace": "web",
        **sessions,
        "subject": "fuzzed",
        "runs": runs,
        "project": "shop",
    }


def schemathesis(
    url: str, ids: dict[str, object], *, hostile: bool
) -> subprocess.CompletedProcess[str]:
    """One schemathesis run against the document at `url` (see the module docstring)."""
    excluded = ["--exclude-checks", "positive_data_acceptance"] if hostile else []
    return subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", url,
            "--header", f"Authorization: Bearer {KEY}",
            "--checks", "all", *excluded,
            "--phases", "examples,coverage,fuzzing,stateful",
            "--seed", str(SEED),
            "--max-examples", str(EXAMPLES),
            "--generation-database", "none",
            "--workers", "1",
            "--request-timeout", "10",
            "--no-color",
        ],
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.web.schemathesis_hooks",
             FUZZ_IDS: orjson.dumps(ids).decode(), HOSTILE: "1" if hostile else ""},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip


def test_schemathesis_finds_nothing(
    tmp_path: Path, shared_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the service imports its run handler from this checkout
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    service = Service(tmp_path, config(tmp_path, shared_url))
    service.start()
    try:
        with httpx.Client(base_url=service.url, timeout=10) as client:
            ids = live_resources(client)
        runs = {
            name: schemathesis(f"{service.url}/openapi.json", ids, hostile=name == "hostile")
            for name in ("document", "hostile")
        }
    finally:
        service.stop()
    for name, run in runs.items():
        (tmp_path / f"schemathesis-{name}.txt").write_text(run.stdout + run.stderr)
    for name, run in runs.items():
        assert run.returncode == 0, name + run.stdout[-30_000:] + run.stderr[-5_000:]
    logged = service.log.read_text(errors="replace")
    assert "Traceback" not in logged, logged
