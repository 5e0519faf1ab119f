"""Who is asking: the client's IP, behind trusted proxies, and its keyed hash.

The IP is the socket's peer, unless that peer is a trusted proxy: then `X-Forwarded-For` is
read from the right, skipping trusted hops, and the first untrusted address is the client
(the rightmost one a trusted proxy vouched for; whatever is left of it the client could have
written itself). The service keeps IPs only as a keyed BLAKE2b hash (`ip_hash`, defined
with what sessions record of their device in `sessionary.devices`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from sessionary.devices import IPAddress, parse_ip

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientIP:
    """Resolves the client IP of an ASGI scope."""

    def __init__(self, trusted_proxies: Iterable[str | IPNetwork] = ()) -> None:
        self.trusted = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)

    def is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted)

    def of(self, scope: Mapping[str, Any]) -> IPAddress | None:
        client = scope.get("client")
        peer = parse_ip(str(client[0])) if client else None
        if peer is None or not self.is_trusted(peer):
            return peer
        hops: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                hops.extend(value.decode("latin-1").split(","))
        for hop in reversed(hops):
            address = parse_ip(hop)
            if address is None:
                return peer  # garbage in the chain: trust nothing further left
            if not self.is_trusted(address):
                return address
            peer = address
        return peer
