"""What the encryption tests share (the store's and the framework engines'): keys, a marker,
and the bytes a store keeps outside the process, read the way someone holding a copy of them
would."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from redis import Redis

from tests.conftest import REDIS_URL

#: a value no store writes by itself: found in the stored bytes only if a session leaked it
MARKER = "zq-engine-marker-51c0de"
KEY_OLD = bytes(range(32))
KEY_NEW = bytes(range(100, 132))
#: 31 bytes: one short of a key
SHORT_KEY_TEXT = base64.b64encode(bytes(range(31))).decode()


def key_text(secret: bytes, key_id: str) -> str:
    """A key as settings carry it: "id:base64"."""
    return f"{key_id}:{base64.b64encode(secret).decode()}"


OLD = key_text(KEY_OLD, "old")
NEW = key_text(KEY_NEW, "new")


def stored_bytes(url: str) -> bytes:
    """Every byte the store at `url` keeps outside the process: the SQLite files (the database
    and its `-wal`, `-shm`), or every key and value under the Redis URL's `prefix` (read by a
    plain client, no sessionary code); b"" for memory."""
    if url.startswith("sqlite"):
        database = Path(urlsplit(url).path)
        files = sorted(database.parent.glob(f"{database.name}*"))
        assert database in files, f"no SQLite file at {database}"
        return b"".join(path.read_bytes() for path in files)
    if not url.startswith("redis"):
        return b""
    prefix = parse_qs(urlsplit(url).query)["prefix"][0]
    client = Redis.from_url(REDIS_URL)
    try:
        found: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            found.append(key)
            kind = client.type(key).decode()
            if kind == "hash":
                found += [b for pair in client.hgetall(key).items() for b in pair]
            elif kind == "zset":
                found += client.zrange(key, 0, -1)
            elif kind == "string":
                found.append(client.get(key) or b"")
            elif kind == "list":
                found += client.lrange(key, 0, -1)
            elif kind == "stream":
                for _, entry in client.xrange(key):
                    found += [b for pair in entry.items() for b in pair]
            else:
                raise AssertionError(f"a {kind} key the test cannot read: {key!r}")
        assert found, f"no Redis key under {prefix!r}"
        return b"\n".join(found)
    finally:
        client.close()
