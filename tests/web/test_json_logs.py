"""`log_format = "json"`: everything `sessionary serve`, `worker` and `reap` say on stderr is
one JSON object per line (ts, level, logger, message, and the record's own fields), an
exception's traceback included, as the `exception` field of its one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sessionary.runs import Producer
from tests.runs.workers import ROOT, WorkerProcess
from tests.servers import eventually, free_port
from tests.test_operator_errors import sessionary

KEY = "a-key-for-the-json-log-test"
FAILURE = "this handler fails on purpose"


async def fails(producer: Producer, input: Any) -> None:
    """The run handler of these tests: its failure is logged with a traceback."""
    raise RuntimeError(FAILURE)


def records(stderr: str) -> list[dict[str, Any]]:
    """Each line of `stderr` as the JSON object it must be, with the keys every record has."""
    parsed = []
    for line in stderr.splitlines():
        record = orjson.loads(line)  # raises on a line that is not JSON
        assert {"ts", "level", "logger", "message"} <= record.keys(), line
        stamp = datetime.fromisoformat(record["ts"])
        assert record["ts"].endswith("Z"), line
        assert stamp.utcoffset() is not None, line
        parsed.append(record)
    return parsed


def serve(config: Path, output: Path) -> subprocess.Popen[bytes]:
    """`sessionary serve --config CONFIG`, from the checkout (where the handler's module is),
    writing its stdout and stderr to `output`."""
    with output.open("wb") as writing:
        return subprocess.Popen(
            [sys.executable, "-m", "sessionary", "serve", "--config", str(config)],
            cwd=ROOT,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=writing,
            stderr=writing,
        )


def environment(**variables: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SESSIONARY_")} | variables


async def test_serve_logs_json_lines_an_exception_in_one(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "sessionary.toml"
    config.write_text(
        f'port = {port}\nstore = "memory://"\nlog_format = "json"\n'
        f'[runs]\nhandler = "tests.web.test_json_logs:fails"\n'
        f'users = [{{ key = "{KEY}", subject = "alice" }}]\n'
    )
    stderr = tmp_path / "stderr"
    process = serve(config, stderr)
    url = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> bool:
            async with httpx.AsyncClient() as client:
                try:
                    return (await client.get(f"{url}/readyz")).status_code == 200
                except httpx.TransportError:
                    return process.poll() is not None  # then say why below

        await eventually(ready, 30, "serve did not start")
        assert process.poll() is None, stderr.read_text()
        bearer = {"authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=url, headers=bearer) as client:
            conversation = (await client.post("/api/v1/conversations")).json()
            started = await client.post(
                f"/api/v1/conversations/{conversation['conversationId']}/runs"
            )
            assert started.status_code == 201, started.text
        await eventually(lambda: FAILURE in stderr.read_text(), 30, "the failure was not logged")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)  # uvicorn ends by raising the signal again: its status is -15

    logged = records(stderr.read_text())
    messages = [r["message"] for r in logged]
    said = ("sessionary: storing in ", "Finished server process")  # serve's, uvicorn's
    for start in said:
        assert any(m.startswith(start) for m in messages), messages
    access = [r for r in logged if r["logger"] == "uvicorn.access" and r["method"] == "POST"]
    assert [(r["path"], r["status"]) for r in access] == [
        ("/api/v1/conversations", 201),
        (f"/api/v1/conversations/{conversation['conversationId']}/runs", 201),
    ]
    (failed,) = [r for r in logged if "exception" in r]
    assert failed["level"] == "error"
    assert failed["exception"].startswith("Traceback (most recent call last)")
    assert failed["exception"].endswith(f"RuntimeError: {FAILURE}")


async def test_worker_logs_json_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("SESSIONARY_LOG_FORMAT", "json")  # the worker inherits it
    worker = WorkerProcess(
        tmp_path, "w-json", "--store", store, "--handler", "tests.web.test_json_logs:fails"
    )
    try:
        await eventually(
            lambda: "worker w-json: runs of" in worker.stderr or worker.process.poll() is not None,
            30,
            "the worker did not start",
        )
        worker.terminate()
        assert await worker.exited() == 0, worker.stderr
    finally:
        worker.kill()
    logged = records(worker.stderr)
    assert [(r["logger"], r["level"]) for r in logged] == [
        ("sessionary.worker", "info"),  # its startup line
        ("sessionary.worker", "info"),  # stopping
    ], logged
    assert logged[0]["message"].startswith("worker w-json: runs of sqlite:///")


def test_reap_logs_json_lines_with_what_it_did_as_fields(tmp_path: Path) -> None:
    done = sessionary(tmp_path, "reap", "--store", "memory://", SESSIONARY_LOG_FORMAT="json")
    assert done.returncode == 0, done.stderr
    (reaped,) = records(done.stderr)
    assert (reaped["logger"], reaped["message"]) == ("sessionary.cli", "reaped")
    assert reaped["expired"]["web"] == 0
    assert reaped["swept"] == {"playground": 0}
