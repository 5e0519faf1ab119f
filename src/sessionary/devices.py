"""What a session records of the device that created it: user agent and client IP.

Off by default: a user agent and an IP address are personal data, and a session store is not
the place to collect them unasked. An operator turns it on with a `DevicePolicy`, choosing how
much of each to keep:

* the user agent, cut to `user_agent_max` characters (256 by default), or nothing;
* the client IP `full`, `truncated` (the /24 of an IPv4 address, the /48 of an IPv6 one:
  enough to tell a home network from an office, not to tell the machine), `hashed` (a keyed
  BLAKE2b hash, as the playground keeps IPs: the same address gives the same hash under one
  key, and nothing without it), or `none`.

It is recorded once, when the session is created (by a web integration, from the request
that first stores something), as reserved entries of the session's `metadata` (`device.*`):
they survive rotation (a login keeps the device it happened on) and travel with the session
everywhere metadata does (`list_subject`, the admin API). `Device.of(session)` reads them back
with the session's creation and last-seen times (the store keeps those for every session).

This module is framework-free: each integration extracts the user agent and the client IP
from its own request (behind its own trusted proxies) and hands them to `DevicePolicy.seen`.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sessionary.clock import to_datetime
from sessionary.model import Session
from sessionary.store import Store

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPForm = Literal["none", "full", "truncated", "hashed"]
IP_FORMS: tuple[IPForm, ...] = ("none", "full", "truncated", "hashed")

#: the metadata keys a device is recorded under (reserved: an application's own metadata
#: should not use the `device.` prefix)
USER_AGENT_KEY = "device.user_agent"
IP_KEY = "device.ip"

#: the prefixes `truncated` keeps: a household or a small office, not one machine
IPV4_PREFIX = 24
IPV6_PREFIX = 48

#: the name of the store's shared secret that keys `hashed` IPs (`Store.shared_secret`)
IP_HASH_KEY_NAME = "sessionary.device-ip"


def parse_ip(text: str) -> IPAddress | None:
    """The address in `text` ("v4", "v6", "v4:port", "[v6]:port"), an IPv4-mapped IPv6
    address as the IPv4 one it carries (a dual-stack socket reports IPv4 clients so); None
    when it is not an address (a test client's "testclient", a Unix socket)."""
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


def ip_hash(address: IPAddress | None, secret: str) -> str:
    """A keyed hash of an IP (128 bits, hex): stable for one secret, useless without it."""
    text = "unknown" if address is None else address.compressed
    key = hashlib.blake2b(secret.encode(), digest_size=32).digest()
    return hashlib.blake2b(text.encode(), key=key, digest_size=16).hexdigest()


def truncated(address: IPAddress) -> str:
    """The network `address` is in: its /24 (IPv4) or /48 (IPv6), e.g. "203.0.113.0/24"."""
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False).compressed


def clean_user_agent(user_agent: str, limit: int) -> str:
    """`user_agent` cut to `limit` characters, surrounding blanks dropped and any lone
    surrogate (which a store refuses as invalid Unicode) replaced: a header is the client's
    to write, so it is made storable rather than refused."""
    cut = user_agent.strip()[:limit]
    return cut.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    """What to record of a session's device (see the module docstring). The default records
    nothing. `ip_hash_key` keys the `hashed` form; None (the default) uses the store's shared
    secret `IP_HASH_KEY_NAME`, which every process of the store agrees on."""

    ip: IPForm = "none"
    user_agent: bool = False
    user_agent_max: int = 256
    ip_hash_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.ip not in IP_FORMS:
            raise ValueError(f"ip is one of {', '.join(IP_FORMS)}, not {self.ip!r}")
        if type(self.user_agent_max) is not int or self.user_agent_max < 1:
            raise ValueError("user_agent_max is a positive number of characters")

    @property
    def records(self) -> bool:
        """Whether this policy records anything at all."""
        return self.user_agent or self.ip != "none"

    def entries(
        self, user_agent: str | None, client_ip: str | IPAddress | None, key: str | None = None
    ) -> dict[str, str]:
        """The metadata entries recording a client that sent `user_agent` from `client_ip`
        (either may be unknown: None, or not an address, records nothing of it). `key` keys
        the `hashed` form, and is required for it."""
        found: dict[str, str] = {}
        if self.user_agent and user_agent:
            cleaned = clean_user_agent(user_agent, self.user_agent_max)
            if cleaned:
                found[USER_AGENT_KEY] = cleaned
        address = parse_ip(client_ip) if isinstance(client_ip, str) else client_ip
        if address is None or self.ip == "none":
            return found
        if self.ip == "full":
            found[IP_KEY] = address.compressed
        elif self.ip == "truncated":
            found[IP_KEY] = truncated(address)
        else:
            if key is None:
                raise ValueError("the hashed form of an IP needs a key")
            found[IP_KEY] = ip_hash(address, key)
        return found

    def seen(self, user_agent: str | None, client_ip: str | IPAddress | None) -> Sighting | None:
        """What a request showed of its client, to record if it creates a session; None when
        this policy records nothing (so an integration with devices off does no work)."""
        if not self.records:
            return None
        return Sighting(self, user_agent, client_ip)


@dataclass(frozen=True, slots=True)
class Sighting:
    """One request's client, as a `DevicePolicy` will record it. The entries are computed
    only for a request that creates a session (`metadata`): the hashed form may need the
    store's secret, and a request that creates nothing must cost no store call."""

    policy: DevicePolicy
    user_agent: str | None
    client_ip: str | IPAddress | None

    async def metadata(self, store: Store) -> dict[str, str]:
        """The metadata entries to create the session with."""
        key = self.policy.ip_hash_key
        if self.policy.ip == "hashed" and key is None and self.client_ip is not None:
            key = await store.shared_secret(IP_HASH_KEY_NAME)
        return self.policy.entries(self.user_agent, self.client_ip, key)


@dataclass(frozen=True, slots=True)
class Device:
    """A session's device: what was recorded when it was created (None: not recorded), and
    when it was created and last seen (every session has those; integer ms since the epoch,
    UTC, as `Session` keeps them, and as aware datetimes)."""

    user_agent: str | None
    ip: str | None
    created_at: int
    last_seen_at: int

    @classmethod
    def of(cls, session: Session) -> Device:
        return cls(
            user_agent=session.metadata.get(USER_AGENT_KEY),
            ip=session.metadata.get(IP_KEY),
            created_at=session.created_at,
            last_seen_at=session.last_seen_at,
        )

    @property
    def created(self) -> datetime:
        return to_datetime(self.created_at)

    @property
    def last_seen(self) -> datetime:
        return to_datetime(self.last_seen_at)

    @property
    def recorded(self) -> bool:
        """Whether anything of the device was recorded (a policy was on at its creation)."""
        return self.user_agent is not None or self.ip is not None
