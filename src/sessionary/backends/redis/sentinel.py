"""`redis+sentinel://` and `rediss+sentinel://`: the primary a set of Redis Sentinels names.

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?options]

The hosts are the sentinels (port 26379 unless given), `service` the name they monitor
(`sentinel monitor <service> ...`), `db` the database (0 unless given). The user and password
authenticate to the Redis servers; sentinels that require a password of their own get
`sentinel_username` and `sentinel_password`. With `rediss+sentinel://` both the servers and
the sentinels are spoken to over TLS (redis-py's `ssl_*` options apply to both). Every other
option is the backend's or redis-py's, as for `redis://`.

redis-py's asyncio Sentinel support does the rest: a connection asks the sentinels for the
primary's address when it connects, so after a failover every connection that broke connects
to the new primary, and one still open to a demoted primary is dropped on its first READONLY
answer. Nothing is retried: a call in flight when the primary dies answers `StoreUnavailable`.
(`PrimaryConnection` makes sure of the asking: redis-py asks in `connect()` only, and a
command written on a closed connection connects by another way, to localhost:6379.)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, urlencode, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection

DEFAULT_SENTINEL_PORT = 26379
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


class PrimaryConnection(SentinelManagedConnection):
    """A connection to the primary the sentinels name now, however it comes to connect."""

    async def connect(self) -> None:
        await self.connect_check_health()

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:
            return
        pool = self.connection_pool
        self.host, self.port = await pool.get_master_address()
        await super().connect_check_health(
            check_health=check_health and pool.check_connection, retry_socket_connect=False
        )


class PrimarySSLConnection(PrimaryConnection, SSLConnection):
    pass


def _address(text: str) -> tuple[str, int]:
    """host, host:port, [v6] or [v6]:port."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"a sentinel is host[:port], not {text!r}")
    try:
        return host, int(port) if port else DEFAULT_SENTINEL_PORT
    except ValueError:
        raise ValueError(f"a sentinel's port is a number, not {port!r}") from None


def sentinel_client(
    parts: SplitResult, passed: list[tuple[str, str]], settings: dict[str, Any]
) -> tuple[Redis, Sentinel, str]:
    """A client of the primary the sentinels of the URL name, the `Sentinel` to close with it,
    and where it is (for messages)."""
    tls = parts.scheme.startswith("rediss")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = [_address(host) for host in hosts.split(",")]
    service, _, db = parts.path.strip("/").partition("/")
    if not service or "/" in db:
        raise ValueError("a Sentinel URL names its service: redis+sentinel://hosts/service[/db]")
    own = {key: value for key, value in passed if key in _SENTINEL_OPTIONS}
    rest = [(key, value) for key, value in passed if key not in _SENTINEL_OPTIONS]
    # redis-py parses the options (and the user, the password, the db) as for redis://
    connection = parse_url(
        urlunsplit(
            (
                "rediss" if tls else "redis",
                f"{userinfo}@sentinel" if userinfo else "sentinel",
                f"/{db or 0}",
                urlencode(rest),
                "",
            )
        )
    )
    kwargs: dict[str, Any] = {**settings, **connection}
    for key in ("host", "port", "connection_class"):
        kwargs.pop(key, None)
    to_sentinels: dict[str, Any] = {
        key: value
        for key, value in kwargs.items()
        if key.startswith(("socket_", "ssl_")) or key in ("retry", "protocol")
    }
    kwargs["connection_class"] = PrimarySSLConnection if tls else PrimaryConnection
    if tls:
        to_sentinels["ssl"] = True
    for key, value in own.items():
        to_sentinels[key.removeprefix("sentinel_")] = value
    sentinel = Sentinel(sentinels, sentinel_kwargs=to_sentinels)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(service, **kwargs)
    where = f"sentinel {service} at {','.join(f'{h}:{p}' for h, p in sentinels)}"
    return client, sentinel, where
