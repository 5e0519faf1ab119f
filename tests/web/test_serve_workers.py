"""`sessionary serve --workers N`: N processes answer on one port, their metrics summed; the
supervisor replaces a worker that dies, stops them all on SIGTERM and cleans up after itself,
and its mistakes are one line as `serve`'s are."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sessionary.web.settings import SettingsError, load_settings
from sessionary.web.workers import cores, worker_count
from tests.servers import eventually
from tests.service import Service
from tests.test_operator_errors import one_line, sessionary
from tests.web.test_metrics_processes import healthz_requests, sample


def worker_pids(service: Service) -> set[int]:
    """The supervisor's children: its workers."""
    assert service.process is not None
    children = Path(f"/proc/{service.process.pid}/task/{service.process.pid}/children")
    return {int(pid) for pid in children.read_text().split()}


def metrics(service: Service) -> str:
    return httpx.get(f"{service.url}/metrics").text


def until(check: Callable[[], bool], what: str) -> None:
    """`eventually`, for a test that drives processes with blocking calls."""
    asyncio.run(eventually(check, 30, what))


def test_two_workers_serve_one_port_and_report_together(tmp_path: Path) -> None:
    service = Service(tmp_path, 'store = "memory://"\nworkers = 2\n')
    service.start()
    try:
        announced = "sessionary: 2 worker processes, their metrics summed in"
        until(lambda: announced in service.log.read_text(), "no startup lines")
        assert sample(metrics(service), "sessionary_processes") == 2  # both serve
        first = worker_pids(service)
        assert len(first) == 2
        said = service.log.read_text()
        temporary = re.search(r"summed in (\S+) \(made for them", said)
        assert temporary is not None
        assert Path(temporary[1]).is_dir()

        again = sessionary(tmp_path, "serve", "--port", str(service.port), "--workers", "2")
        assert one_line(again).startswith(f"Error: port {service.port} is in use")  # not joined

        for _ in range(20):  # new connections: the kernel hands them to either worker
            assert httpx.get(f"{service.url}/healthz").status_code == 200
        assert healthz_requests(metrics(service)) == 20  # whichever worker answers, all count

        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        until(lambda: len(worker_pids(service) - first) == 1, "not replaced")
        until(lambda: sample(metrics(service), "sessionary_processes") == 2, "not counted")
        assert healthz_requests(metrics(service)) == 20  # the dead worker's counts stay
        said = service.log.read_text()
        assert said.count("was killed by SIGKILL") == 1, said  # logged once
        assert f"(pid {victim}) was killed by SIGKILL" in said

        workers = worker_pids(service)
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(timeout=30) == -signal.SIGTERM  # as one process ends
        for pid in workers:  # the supervisor ends after every worker
            assert not Path(f"/proc/{pid}").exists()
        assert not Path(temporary[1]).exists()  # the directory made for them is gone
    finally:
        service.stop()


def test_a_worker_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    """The first worker starts alone: its failure is said once, and is the exit status."""
    missing = tmp_path / "nowhere"
    done = sessionary(
        tmp_path,
        "serve",
        "--store",
        "memory://",
        "--port",
        str(Service(tmp_path, "").port),
        "--workers",
        "2",
        PROMETHEUS_MULTIPROC_DIR=str(missing),
    )
    assert one_line(done).startswith(f"Error: PROMETHEUS_MULTIPROC_DIR={missing}: no such")


def test_a_port_in_use_is_one_line_before_any_worker(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = sessionary(tmp_path, "serve", "--port", str(port), "--workers", "2")
    assert one_line(done).startswith(f"Error: port {port} is in use on 127.0.0.1")


def test_workers_auto_is_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONARY_WORKERS", "auto")
    assert worker_count(load_settings().workers) == cores() == len(os.sched_getaffinity(0))
    assert worker_count(load_settings(workers="3").workers) == 3  # the flag over the variable


def test_workers_below_one_are_refused() -> None:
    with pytest.raises(SettingsError, match=r"^workers"):
        load_settings(workers="0")


def test_workers_stop_when_their_supervisor_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor killed outright leaves no worker serving the port on its own."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # none it would leave behind
    service = Service(tmp_path, 'store = "memory://"\nworkers = 2\n')
    service.start()
    try:
        until(lambda: len(worker_pids(service)) == 2, "not two workers")
        workers = worker_pids(service)
        assert service.process is not None
        service.process.kill()
        service.process.wait(timeout=10)
        until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), "orphans")
    finally:
        service.stop()
