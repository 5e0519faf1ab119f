"""Request heads are bounded before the application runs: one header, the whole head and the
number of headers (431, connection closed), so a flood of header bytes cannot grow the process.

Against `sessionary serve` in a process of its own, with raw sockets.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.service import Service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    directory = tmp_path_factory.mktemp("heads")
    running = Service(directory, f'store = "sqlite:///{directory / "store.db"}"\n')
    running.start()
    yield running
    running.stop()


def exchange(service: Service, head: bytes) -> tuple[int, bytes, bool]:
    """Send `head` (a request line and headers, without the blank line), then read the
    answer: its status, body, and whether the server closed the connection after it."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # refused mid-send: the answer is there to read
            sock.sendall(head + b"\r\n\r\n")
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
            if b"\r\n\r\n" in received and b"connection: close" not in received.lower():
                closed = False
                break
        else:  # pragma: no cover
            closed = False
    status_line, _, rest = received.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body, closed


def request(*headers: bytes) -> bytes:
    return b"\r\n".join([b"GET /healthz HTTP/1.1", b"host: x", *headers])


def test_heads_within_the_limits_are_served(service: Service) -> None:
    status, _, _ = exchange(service, request(b"x-big: " + b"a" * 8000))
    assert status == 200
    status, _, _ = exchange(service, request(*(b"x-%d: 1" % n for n in range(98))))
    assert status == 200  # 99 headers with host
    near = [b"x-%d: " % n + b"b" * 6000 for n in range(9)]  # ~54 KiB of head
    assert exchange(service, request(*near))[0] == 200


def test_the_head_bound_is_per_request_on_a_kept_alive_connection(service: Service) -> None:
    headers = {f"x-{n}": "c" * 6000 for n in range(8)}  # ~48 KiB each time
    with httpx.Client(base_url=service.url) as client:
        answers = [client.get("/healthz", headers=headers) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len({a.extensions["network_stream"] for a in answers}) == 1  # one connection


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ([b"x-big: " + b"a" * 9000], "a header is over 8192 bytes"),
        ([b"x-%d: 1" % n for n in range(100)], "at most 100 headers"),
        ([b"x-%d: " % n + b"b" * 7000 for n in range(10)], "head is over 65536 bytes"),
        ([b"x-url: 1"], "head is over 65536 bytes"),  # with a 70 KiB URL, below
    ],
)
def test_a_head_past_a_limit_is_refused_with_431_and_the_connection_closed(
    service: Service, headers: list[bytes], says: str
) -> None:
    head = request(*headers)
    if headers == [b"x-url: 1"]:
        head = b"GET /healthz?" + b"q" * 70_000 + b" HTTP/1.1\r\nhost: x\r\nx-url: 1"
    status, body, closed = exchange(service, head)
    assert status == 431
    assert closed
    answer = orjson.loads(body)
    assert answer["error"] == "headers_too_large"
    assert says in answer["message"]


def flood(port: int, megabytes: int) -> None:
    """Send one endless header, `megabytes` long, until the server hangs up."""
    chunk = b"a" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-flood: ")
            for _ in range(megabytes * 16):
                sock.sendall(chunk)
        except OSError:
            return


def test_a_header_flood_does_not_grow_the_process(service: Service, tmp_path: Path) -> None:
    before = service.rss_mb()
    floods = [threading.Thread(target=flood, args=(service.port, 50)) for _ in range(10)]
    for thread in floods:
        thread.start()
    for thread in floods:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in floods)
    grown = service.rss_mb() - before
    assert grown < 20, f"10 floods of 50 MB grew the process by {grown:.0f} MiB"
    assert httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200
