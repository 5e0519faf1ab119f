"""Who is asking: the client's IP, behind trusted proxies, and its keyed hash.

The IP is the socket's peer, unless that peer is a trusted proxy: then `X-Forwarded-For` is
read from the right, skipping trusted hops, and the first untrusted address is the client
(the rightmost one a trusted proxy vouched for; whatever is left of it the client could have
written itself). IPs are stored only as a keyed BLAKE2b hash.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]:port"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "v4:port"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientIP:
    """Resolves the client IP of an ASGI scope."""

    def __init__(self, trusted_proxies: Iterable[str | IPNetwork] = ()) -> None:
        self.trusted = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)

    def is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self.trusted)

    def of(self, scope: Mapping[str, Any]) -> IPAddress | None:
        client = scope.get("client")
        peer = _parse(str(client[0])) if client else None
        if peer is None or not self.is_trusted(peer):
            return peer
        hops: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                hops.extend(value.decode("latin-1").split(","))
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                return peer  # garbage in the chain: trust nothing further left
            if not self.is_trusted(address):
                return address
            peer = address
        return peer


def ip_hash(address: IPAddress | None, secret: str) -> str:
    """A keyed hash of an IP (128 bits, hex): stable for one secret, useless without it."""
    text = "unknown" if address is None else address.compressed
    key = hashlib.blake2b(secret.encode(), digest_size=32).digest()
    return hashlib.blake2b(text.encode(), key=key, digest_size=16).hexdigest()
