"""Throwaway redis-server processes for tests that stop, pause, flush or cluster a server, a
private clickhouse-server (for the tests and benchmarks of the ClickHouse sink), and
`eventually`, the bounded wait for what such a server (or a job) gets to in its own time."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self
from xml.sax.saxutils import escape

import redis


def free_port() -> int:
    """A TCP port nothing listens on now (and, for cluster nodes, whose bus port +10000 is
    free too)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisServer:
    """A redis-server of the test's own, on its own port, that the test may stop and start."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def flushall(self) -> None:
        """FLUSHALL: the data is gone, the server (and its loaded scripts) stays."""
        with redis.Redis(port=self.port) as client:
            client.flushall()

    def restart_empty(self) -> None:
        """kill -9, then start again on the same port: no persistence, so nothing comes back
        (not even the scripts)."""
        self.stop()
        self.start()

    def clients(self, command: str | None = None) -> int:
        """Clients of the server (those whose last command was `command`), not counting the
        one asking."""
        with redis.Redis(port=self.port) as client:
            found = client.client_list()
        return len([c for c in found if command is None or c["cmd"] == command]) - (command is None)


class RedisClusterNodes:
    """Three redis-server masters joined into a Redis Cluster, for the cluster-safety tests."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.nodes = []
        for n in range(size):
            node_dir = directory / f"node{n}"
            node_dir.mkdir()
            self.nodes.append(
                RedisServer(
                    node_dir,
                    None,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout",
                    "5000",
                )
            )

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        for node in self.nodes:
            client = redis.Redis(port=node.port)
            try:
                while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the test cluster did not converge")
                    time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinelSet:
    """A primary, its replicas and three sentinels watching it as `service`, each a process
    of the test's own on a free port, quick to fail over (down after `down_after_ms`)."""

    service = "mymaster"

    def __init__(self, directory: Path, replicas: int = 1, down_after_ms: int = 500) -> None:
        self.directory = directory
        self.down_after_ms = down_after_ms
        quick = ("--repl-diskless-sync-delay", "0")  # a replica syncs at once, not in 5 s
        self.servers = [RedisServer(self._mkdir("primary"), None, *quick)]
        primary = str(self.servers[0].port)
        self.servers += [
            RedisServer(
                self._mkdir(f"replica{n}"), None, *quick, "--replicaof", "127.0.0.1", primary
            )
            for n in range(replicas)
        ]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.sentinel_ports = [free_port() for _ in range(3)]

    def _mkdir(self, name: str) -> Path:
        path = self.directory / name
        path.mkdir()
        return path

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self) -> None:
        for server in self.servers:
            server.start()
        # each sentinel is told of the replicas and the other sentinels (as it would write
        # into its own file once it found them), which saves the seconds of finding them
        ids = [os.urandom(20).hex() for _ in self.sentinel_ports]
        for n, port in enumerate(self.sentinel_ports):
            config = self._mkdir(f"sentinel{n}") / "sentinel.conf"
            lines = [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {config.parent}",
                f"sentinel myid {ids[n]}",
                f"sentinel monitor {self.service} 127.0.0.1 {self.servers[0].port} 2",
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
                f"sentinel failover-timeout {self.service} 2000",
                f"sentinel parallel-syncs {self.service} {len(self.servers)}",
                *(
                    f"sentinel known-replica {self.service} 127.0.0.1 {replica.port}"
                    for replica in self.servers[1:]
                ),
                *(
                    f"sentinel known-sentinel {self.service} 127.0.0.1 {other} {ids[m]}"
                    for m, other in enumerate(self.sentinel_ports)
                    if m != n
                ),
            ]
            config.write_text("\n".join(lines) + "\n")
            self.sentinels.append(
                subprocess.Popen(
                    ["redis-server", str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        # ready when every sentinel sees the primary, every replica and the two others (they
        # find each other through the primary, every 2 s), so a failover can be voted
        self.wait_until(lambda: all(self._ready(port) for port in self.sentinel_ports), 20)

    def _ready(self, port: int) -> bool:
        client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            state = client.sentinel_master(self.service)
            replicas = client.sentinel_slaves(self.service)
        except (redis.ConnectionError, redis.ResponseError):
            return False
        finally:
            client.close()
        up = [r for r in replicas if not (r["is_sdown"] or r["is_odown"])]
        return (
            int(state["num-other-sentinels"]) == 2
            and len(up) == len(self.servers) - 1
            and all(r["master-link-status"] == "ok" for r in up)
        )

    def primary(self) -> RedisServer:
        """The server the sentinels name as the primary now."""
        client = redis.Redis(port=self.sentinel_ports[0], socket_timeout=1)
        try:
            _, port = client.sentinel_get_master_addr_by_name(self.service)
        finally:
            client.close()
        return next(server for server in self.servers if server.port == int(port))

    def wait_until(self, condition: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the sentinel set did not get there in time")
            time.sleep(0.05)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
            sentinel.wait(timeout=10)
        self.sentinels.clear()
        for server in self.servers:
            server.stop()


class ClickHouseServer:
    """A clickhouse-server of the caller's own (Debian's package, which starts no service of
    its own): listening on 127.0.0.1 only, on free HTTP and native ports (and HTTPS with
    `tls`), with its data, logs and config in `directory`, time zone UTC, and user `default`
    without a password. Free of pytest, so a benchmark can start one too (`with
    ClickHouseServer(directory) as server:`).
    """

    start_timeout = 20.0  # s from exec to answering (it takes ~0.1 s)
    stop_timeout = 5.0  # s from SIGTERM to exit before SIGKILL (it takes ~0.3-0.5 s)

    def __init__(self, directory: Path, *extra: str, tls: bool = False) -> None:
        """`extra` are server settings for its command line, each `--name=value`. With `tls`
        it serves HTTPS as well, on `https_port` (`tls_url`), with a self-signed certificate
        for 127.0.0.1 and localhost made in `directory` (`certificate`, which a client trusts
        by SSL_CERT_FILE)."""
        self.directory = directory.resolve()
        self.http_port = free_port()
        self.tcp_port = free_port()
        while self.tcp_port == self.http_port:
            self.tcp_port = free_port()
        self.https_port: int | None = None
        self.certificate: Path | None = None
        self.private_key: Path | None = None
        if tls:
            self.https_port = free_port()
            while self.https_port in (self.http_port, self.tcp_port):
                self.https_port = free_port()
            self.certificate = self.directory / "server.crt"
            self.private_key = self.directory / "server.key"
        self.extra = extra
        # a macro of this instance's own: start() waits for a server that names it, not for
        # whatever else may answer on the port
        self.instance = os.urandom(8).hex()
        self.process: subprocess.Popen[bytes] | None = None
        self.config_file = self.directory / "config.xml"
        self.output = self.directory / "clickhouse-server.out"  # its stdout and stderr
        self.log = self.directory / "clickhouse-server.log"  # its logger, at warning
        self._write_config()
        if tls:
            self._make_certificate()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"clickhouse://default@127.0.0.1:{self.http_port}/default"

    @property
    def tls_url(self) -> str:
        """The sink URL over HTTPS (a server started with `tls`)."""
        if self.https_port is None:
            raise RuntimeError("this clickhouse-server was made without tls")
        return f"clickhouses://default@127.0.0.1:{self.https_port}/default"

    def _write_config(self) -> None:
        def path(name: str) -> str:
            return escape(f"{self.directory / name}/")

        tls = ""
        if self.https_port is not None:
            assert self.certificate is not None
            assert self.private_key is not None
            # Poco's server context: no client certificates asked for, no system CAs loaded
            tls = f"""
    <https_port>{self.https_port}</https_port>
    <openSSL>
        <server>
            <certificateFile>{escape(str(self.certificate))}</certificateFile>
            <privateKeyFile>{escape(str(self.private_key))}</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>"""
        self.directory.mkdir(parents=True, exist_ok=True)
        # No interserver_http_port (nor mysql_port, which 18.16 does not know): only the two
        # ports below are opened (three with tls). The caches are allocated on demand; capped
        # for a test box.
        self.config_file.write_text(
            f"""<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{escape(str(self.log))}</log>
        <errorlog>{escape(str(self.directory / "clickhouse-server.err.log"))}</errorlog>
        <size>10M</size>
        <count>1</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{self.http_port}</http_port>
    <tcp_port>{self.tcp_port}</tcp_port>{tls}
    <path>{path("data")}</path>
    <tmp_path>{path("tmp")}</tmp_path>
    <user_files_path>{path("user_files")}</user_files_path>
    <format_schema_path>{path("format_schemas")}</format_schema_path>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mlock_executable>false</mlock_executable>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <macros>
        <instance>{self.instance}</instance>
    </macros>
</yandex>
"""
        )
        (self.directory / "users.xml").write_text(
            """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default/>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""
        )

    def _make_certificate(self) -> None:
        """A P-256 key and a self-signed certificate (CN=127.0.0.1, subjectAltName IP:127.0.0.1
        and DNS:localhost, a week long), by the openssl command if there is one, else by the
        cryptography package."""
        assert self.certificate is not None
        assert self.private_key is not None
        openssl = shutil.which("openssl")
        if openssl is not None:
            subprocess.run(
                [
                    openssl,
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    str(self.private_key),
                    "-out",
                    str(self.certificate),
                    "-days",
                    "7",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost",
                ],
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
            )
            return
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.DNSName("localhost"),
                    ]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        self.private_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.private_key.chmod(0o600)
        self.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    def start(self) -> None:
        """Start it and wait until it answers over HTTP (as itself); raise with the tail of its
        logs if it exits first or does not answer within `start_timeout`."""
        if self.process is not None:
            raise RuntimeError("this clickhouse-server is running already")
        binary = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"
        if not Path(binary).exists():
            raise FileNotFoundError(
                "clickhouse-server is not installed (scripts/ensure-clickhouse installs it)"
            )
        command = [binary, f"--config-file={self.config_file}"]
        if self.extra:
            command += ["--", *self.extra]
        with self.output.open("ab") as output:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        deadline = time.monotonic() + self.start_timeout
        while not self._answers():
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"clickhouse-server exited with {code}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"clickhouse-server did not answer within {self.start_timeout} s:\n"
                    + self.log_tail()
                )
            time.sleep(0.02)

    def _answers(self) -> bool:
        sql = "SELECT substitution FROM system.macros WHERE macro = 'instance'"
        url = f"{self.http_url}/?{urllib.parse.urlencode({'query': sql})}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.read().decode().strip() == self.instance)
        except OSError:  # refused, reset, timed out, or an HTTP error
            return False

    def query(self, sql: str) -> str:
        """Run `sql` over HTTP; its output (TabSeparated unless `sql` says FORMAT)."""
        request = urllib.request.Request(f"{self.http_url}/", data=sql.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(response.read().decode())

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its output and of its log (where a failed start says why)."""
        tail = []
        for file in (self.output, self.log):
            if file.exists():
                text = file.read_text(errors="replace").splitlines()[-lines:]
                tail.append(f"--- {file.name}\n" + "\n".join(text))
        return "\n".join(tail) or "(no log)"

    def stop(self) -> None:
        """SIGTERM and wait for it to exit (SIGKILL after `stop_timeout`); it keeps its data,
        so start() brings it back on the same ports."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    within: float,
    what: str = "not within the time bound",
    every: float = 0.05,
) -> None:
    """Wait until `check()` (a function or a coroutine function) is true, asking every
    `every` s; fail the test with `what` after `within` s."""
    deadline = time.monotonic() + within
    while True:
        done = check()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return
        assert time.monotonic() < deadline, what
        await asyncio.sleep(every)
