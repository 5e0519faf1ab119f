"""The private clickhouse-server the ClickHouse sink tests run against (`clickhouse_server`,
one for the session, see tests/servers.py): it answers over HTTP, keeps what a test creates in
a database of the test's own, and a second one stops and starts on its own ports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ClickHouseServer


@pytest.fixture
def http(clickhouse_server: ClickHouseServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=clickhouse_server.http_url, timeout=10) as client:
        yield client


def query(client: httpx.Client, sql: str) -> str:
    response = client.post("/", content=sql)
    assert response.status_code == 200, response.text
    return response.text


def test_it_answers_over_http_on_localhost(
    clickhouse_server: ClickHouseServer, http: httpx.Client
) -> None:
    version = query(http, "SELECT version()").strip()
    assert version.split(".")[0].isdigit(), version
    assert query(http, "SELECT timezone()").strip() in {"UTC", "Etc/UTC"}
    assert http.get("/ping").text == "Ok.\n"
    assert clickhouse_server.url == (
        f"clickhouse://default@127.0.0.1:{clickhouse_server.http_port}/default"
    )
    assert clickhouse_server.http_url == f"http://127.0.0.1:{clickhouse_server.http_port}"


def test_a_table_in_a_database_of_its_own(http: httpx.Client) -> None:
    database = f"test_{uuid.uuid4().hex}"
    query(http, f"CREATE DATABASE {database}")
    try:
        query(
            http,
            f"CREATE TABLE {database}.events (at DateTime, name String)"
            " ENGINE = MergeTree ORDER BY at",
        )
        query(
            http,
            f"INSERT INTO {database}.events VALUES"
            " ('2026-01-02 03:04:05', 'a'), ('2026-01-02 03:04:06', 'b')",
        )
        rows = query(http, f"SELECT toUnixTimestamp(at), name FROM {database}.events ORDER BY at")
        assert rows == "1767323045\ta\n1767323046\tb\n"  # the server's time zone is UTC
    finally:
        query(http, f"DROP DATABASE {database}")
    assert query(http, f"SELECT count() FROM system.databases WHERE name = '{database}'") == "0\n"


def test_a_second_server_stops_and_starts_again(
    tmp_path: Path, clickhouse_server: ClickHouseServer
) -> None:
    server = ClickHouseServer(tmp_path)
    assert {server.http_port, server.tcp_port}.isdisjoint(
        {clickhouse_server.http_port, clickhouse_server.tcp_port}
    )
    with server:
        assert server.query("CREATE TABLE kept (n UInt8) ENGINE = MergeTree ORDER BY n") == ""
        server.query("INSERT INTO kept VALUES (7)")
        process = server.process
        assert process is not None
        server.stop()
        assert process.poll() is not None  # gone, and reaped
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.http_url}/ping")

        server.start()  # same ports, same data
        assert server.process is not None
        assert server.process.pid != process.pid
        assert httpx.post(server.http_url, content="SELECT n FROM kept").text == "7\n"
    assert server.process is None
    assert process.poll() is not None


def test_a_server_that_cannot_start_says_why(
    tmp_path: Path, clickhouse_server: ClickHouseServer
) -> None:
    server = ClickHouseServer(tmp_path)
    server.http_port = clickhouse_server.http_port  # taken (by one that answers): it exits
    server._write_config()
    with pytest.raises(RuntimeError, match="clickhouse-server exited") as failed:
        server.start()
    assert "Address already in use" in str(failed.value)
    assert server.process is None
