"""`clickhouses://`: the ClickHouse sink over HTTPS, against a private clickhouse-server serving
a self-signed certificate (tests/servers.py, `ClickHouseServer(..., tls=True)`). httpx trusts
what SSL_CERT_FILE names (its default `trust_env`); a certificate it does not trust is a server
out of reach, StoreUnavailable, not a bug."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sessionary.analytics.sink import sink_from_url
from sessionary.errors import StoreUnavailable
from tests.analytics.test_sinks import S1_CLOSED, sample
from tests.servers import ClickHouseServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ClickHouseServer]:
    server = ClickHouseServer(tmp_path, tls=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def fresh_database(server: ClickHouseServer) -> tuple[str, str]:
    """A database name nothing made yet, and the sink's URL over HTTPS to it."""
    database = f"test_{uuid.uuid4().hex}"
    return database, server.tls_url.rsplit("/", 1)[0] + f"/{database}"


def databases_named(server: ClickHouseServer, database: str) -> str:
    return server.query(f"SELECT count() FROM system.databases WHERE name = '{database}'")


async def test_the_sink_writes_and_reads_over_https_when_it_trusts_the_certificate(
    server: ClickHouseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert server.certificate is not None
    assert server.certificate.exists()
    assert server.tls_url == f"clickhouses://default@127.0.0.1:{server.https_port}/default"
    monkeypatch.setenv("SSL_CERT_FILE", str(server.certificate))
    database, url = fresh_database(server)
    sink = await sink_from_url(url)
    try:
        await sink.write(sample())
        assert (await sink.sessions("p")).sessions == [S1_CLOSED]
    finally:
        await sink.close()
    # the server's own (seen over plain HTTP too): s1, closed at version 3
    sql = f"SELECT id, version, closed FROM {database}.analytics_sessions FINAL"
    assert server.query(sql) == "s1\t3\t1\n"


async def test_an_untrusted_certificate_is_a_server_out_of_reach(
    server: ClickHouseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    database, url = fresh_database(server)
    with pytest.raises(StoreUnavailable, match="unreachable") as raised:
        await sink_from_url(url)
    # httpx's ConnectError (of httpcore's), of the handshake's failed verification
    cause = raised.value.__cause__
    assert isinstance(cause, httpx.ConnectError), repr(cause)
    assert "CERTIFICATE_VERIFY_FAILED" in str(cause)
    chain: list[BaseException] = []
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    assert isinstance(chain[-1], ssl.SSLCertVerificationError), chain
    assert databases_named(server, database) == "0\n"  # nothing reached the server
