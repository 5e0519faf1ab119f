"""/metrics across processes: `sessionary serve` processes sharing PROMETHEUS_MULTIPROC_DIR each
report what all of them counted, and one that ended stops counting as alive."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.runs.workers import WorkerProcess
from tests.servers import eventually, free_port
from tests.service import Service
from tests.test_operator_errors import one_line, sessionary


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly `labels` in a Prometheus text exposition."""
    found = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and s.labels == labels
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def healthz_requests(text: str) -> float:
    return sample(
        text,
        "sessionary_http_requests_total",
        method="GET",
        route="/healthz",
        status="200",
    )


def test_any_process_reports_the_sum_over_every_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))  # the processes inherit it
    services = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        services.append(Service(tmp_path / name, 'store = "memory://"\n'))
    first, second = services
    try:
        first.start()
        second.start()
        for _ in range(3):
            assert httpx.get(f"{first.url}/healthz").status_code == 200
        for _ in range(2):
            assert httpx.get(f"{second.url}/healthz").status_code == 200

        for service in services:  # either one's scrape sees both
            text = httpx.get(f"{service.url}/metrics").text
            assert healthz_requests(text) == 5
            assert sample(text, "sessionary_processes") == 2

        second.stop()
        text = httpx.get(f"{first.url}/metrics").text
        assert healthz_requests(text) == 5  # what the ended process counted, it counted
        assert sample(text, "sessionary_processes") == 1  # but it is no longer alive
    finally:
        for service in services:
            service.stop()


def test_a_reap_process_counts_in_the_service_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `sessionary reap --analytics` counted, in a process that has ended, is in what
    `serve` reports (whose own analytics jobs are off, so every run counted is the reap's)."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    store = f"sqlite:///{tmp_path / 'store.db'}"
    service = Service(tmp_path, f'store = "{store}"\n[analytics]\njobs = false\n')
    try:
        service.start()
        reaped = sessionary(tmp_path, "reap", "--analytics", "--store", store)
        assert reaped.returncode == 0, reaped.stderr
        text = httpx.get(f"{service.url}/metrics").text
        assert sample(text, "sessionary_analytics_job_runs_total", job="reaper") == 1
        assert sample(text, "sessionary_processes") == 1  # reap serves nothing
    finally:
        service.stop()


def test_without_a_shared_directory_a_process_reports_itself(tmp_path: Path) -> None:
    service = Service(tmp_path, 'store = "memory://"\n')
    try:
        service.start()
        httpx.get(f"{service.url}/healthz")
        text = httpx.get(f"{service.url}/metrics").text
        assert healthz_requests(text) == 1
        assert sample(text, "sessionary_processes") == 1
    finally:
        service.stop()


def test_a_shared_directory_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    done = sessionary(
        tmp_path,
        "serve",
        "--store",
        "memory://",
        "--port",
        str(free_port()),
        PROMETHEUS_MULTIPROC_DIR=str(missing),
    )
    assert one_line(done) == (
        f"Error: PROMETHEUS_MULTIPROC_DIR={missing}: no such directory: create it (empty) "
        "before starting the service's processes, or unset the variable"
    )


async def test_what_a_sessionary_worker_executed_counts_in_the_service_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs dispatched by `serve` and executed by a `sessionary worker` process (which serves
    no HTTP): `serve`'s /metrics counts them, by outcome, once the worker shares its
    directory."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    store = f"sqlite:///{tmp_path / 'store.db'}"
    service = Service(
        tmp_path,
        f'store = "{store}"\n[runs]\ndispatch = "queue"\n'
        'users = [{ key = "alice-local-key-0123", subject = "alice" }]\n',
    )
    worker = None
    try:
        service.start()
        worker = WorkerProcess(
            tmp_path, "w1", "--store", store, "--handler", "tests.runs.workers:chunks"
        )
        await worker.started()
        alice = {"Authorization": "Bearer alice-local-key-0123"}
        api = f"{service.url}/api/v1/conversations"
        async with httpx.AsyncClient(headers=alice) as client:
            runs = []
            for _ in range(3):
                conversation = (await client.post(api)).json()["conversationId"]
                run = (await client.post(f"{api}/{conversation}/runs", json={})).json()
                runs.append(f"{api}/{conversation}/runs/{run['runId']}")

            async def all_completed() -> bool:
                answers = [(await client.get(url)).json()["status"] for url in runs]
                return answers == ["completed"] * 3

            await eventually(all_completed, 30, "the worker did not complete the runs")
            text = (await client.get(f"{service.url}/metrics")).text
        assert sample(text, "sessionary_runs_executed_total", outcome="completed") == 3
        assert sample(text, "sessionary_runs_in_flight") == 0
        assert sample(text, "sessionary_processes") == 1  # the worker serves nothing
    finally:
        if worker is not None:
            worker.process.send_signal(signal.SIGTERM)
            worker.process.wait(timeout=30)
        service.stop()
