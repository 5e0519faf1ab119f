"""What the framework engines' encryption tests share: keys, a marker, and the bytes a store
keeps outside the process, read the way someone holding a copy of them would."""

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
    """Every byte the store at `url` keeps: the SQLite files (the database and its `-wal`,
    `-shm`), or the Redis hashes under the URL's `prefix` (the sessions: their keys, fields
    and values, read by a plain client, no sessionary code)."""
    if url.startswith("sqlite"):
        database = Path(urlsplit(url).path)
        files = sorted(database.parent.glob(f"{database.name}*"))
        assert database in files, f"no SQLite file at {database}"
        return b"".join(path.read_bytes() for path in files)
    prefix = parse_qs(urlsplit(url).query)["prefix"][0]
    client = Redis.from_url(REDIS_URL)
    try:
        found: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            if client.type(key) == b"hash":
                found.append(key)
                for field, value in client.hgetall(key).items():
                    found += [field, value]
        assert found, f"no Redis hash under {prefix!r}"
        return b"\n".join(found)
    finally:
        client.close()
