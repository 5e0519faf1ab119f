"""Session ids: 256 random bits from `secrets`, URL-safe, with an optional readable prefix.

An id is `<prefix><token>`, where the token is the canonical unpadded base64url encoding of 32
random bytes: 43 characters. The 43rd character carries the last 4 bits of the 256 (its 2 low
bits are always zero), so it takes one of 16 values; those 4 bits are the id's *shard*. A
backend that spreads data over a cluster (Redis) places a session, its index entries and its
expiry entry in the slot of that shard, and `rotate` mints the new id in the old id's shard so
that the swap is one atomic step on one node.

Validation is strict (type, length, charset, canonical last character, prefix) and happens
before any I/O: a malformed id never reaches a backend.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from sessionary.errors import InvalidSessionId

TOKEN_BYTES = 32
TOKEN_LENGTH = 43
SHARDS = 16

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The 16 characters a canonical token can end with, in shard order.
_SHARD_CHARS = _ALPHABET[::4]
_SHARD_OF_CHAR = {c: i for i, c in enumerate(_SHARD_CHARS)}
#: a token as a regular expression (what an OpenAPI document states as a `pattern`)
TOKEN_PATTERN = r"[A-Za-z0-9_-]{42}[" + re.escape(_SHARD_CHARS) + "]"
_TOKEN_RE = re.compile(TOKEN_PATTERN)
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,15}_")


def check_prefix(prefix: str) -> str:
    """Validate a namespace's id prefix ('' or lowercase letters/digits ending in '_')."""
    if prefix and not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"id prefix {prefix!r} must be empty or match [a-z][a-z0-9]{{0,15}}_ (like 'pg_')"
        )
    return prefix


def new_id(prefix: str = "", shard: int | None = None) -> str:
    """A fresh id. With `shard`, the id lands in that shard (252 random bits instead of 256)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    if shard is not None:
        token = token[:-1] + _SHARD_CHARS[shard]
    return prefix + token


def derived(name: str) -> str:
    """A canonical id computed from `name` (BLAKE2b-256 of it), for well-known records such
    as store-wide secrets. Never hand such an id to a client: anyone who knows the name can
    compute it."""
    digest = hashlib.blake2b(b"sessionary:" + name.encode(), digest_size=TOKEN_BYTES).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def shard_of(session_id: str) -> int:
    """The shard (0..15) a valid id belongs to."""
    return _SHARD_OF_CHAR[session_id[-1]]


def validate(session_id: object, prefix: str = "") -> str:
    """Return `session_id` if it is a well-formed id of a namespace with `prefix`, else raise."""
    if not isinstance(session_id, str):
        raise InvalidSessionId(f"a session id is a str, not {type(session_id).__name__}")
    if len(session_id) != len(prefix) + TOKEN_LENGTH:
        raise InvalidSessionId(
            f"a session id has {len(prefix) + TOKEN_LENGTH} characters, not {len(session_id)}"
        )
    if not session_id.startswith(prefix):
        raise InvalidSessionId(f"a session id of this namespace starts with {prefix!r}")
    if not _TOKEN_RE.fullmatch(session_id, len(prefix)):
        raise InvalidSessionId("a session id is canonical base64url (A-Z a-z 0-9 - _)")
    return session_id
