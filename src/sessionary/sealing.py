"""Encryption at rest: sessions' data and metadata sealed with AES-256-GCM before they reach
a backend, so a backup, a disk image or a `redis-cli` session never shows what they hold.

The store seals and opens; backends keep opaque bytes. A sealed blob is::

    0x01 | len(key id) (1 byte) | key id (ASCII) | nonce (12 bytes) | ciphertext + 16-byte tag

* The first byte can never start a JSON text, so a blob without it is plaintext JSON written
  before encryption was turned on: it is read as it is (turning encryption on logs no one
  out) and `Namespace.rekey` seals it. Whoever can write the store's bytes can therefore
  plant plaintext: encryption at rest keeps the bytes secret, it does not make the store
  trustworthy against its own writers (see docs/encryption.md).
* The nonce is 96 fresh random bits per write (`os.urandom`, see `Nonces`), never a counter:
  processes share keys without sharing state.
* The associated data is the namespace, the session id and the field ("data" or
  "metadata"), NUL-separated: a blob copied to another session, another namespace or the
  other field fails authentication, as does any changed byte.
* The key id is stored in clear: the first key seals, every key opens, which is how keys
  rotate (see docs/encryption.md). A key's id is the one given ("id:base64"), else the first
  8 hex digits of a SHA-256 of the key: a stable name for logs and errors, never the key.

`cryptography` is imported only when a `Sealer` is built: the core installs without it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sessionary.errors import SessionUnreadable
from sessionary.extras import needs

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_BYTES",
    "MAGIC",
    "EncryptionKey",
    "Field",
    "Nonces",
    "RekeyOutcome",
    "RekeyReport",
    "Sealer",
    "UnreadableLog",
    "parse_keys",
    "refuse_sealed",
]

MAGIC = b"\x01"
KEY_BYTES = 32
NONCE_BYTES = 12
#: which part of a session a blob holds: bound into its associated data
Field = Literal["data", "metadata"]
#: how a sealed blob fails to open (`SessionUnreadable.reason`)
Reason = Literal["unknown_key", "tampered"]
#: what a rekey did with one session (see `RekeyReport`)
RekeyOutcome = Literal["resealed", "current", "gone", "unreadable", "busy"]

_KEY_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DERIVED_ID_CONTEXT = b"sessionary encryption key id\x00"

security_log = logging.getLogger("sessionary.security")


class EncryptionKey:
    """A 32-byte AES-256 key and its id. Its repr shows the id only."""

    __slots__ = ("_secret", "id")

    def __init__(self, secret: bytes, id: str | None = None) -> None:
        if not isinstance(secret, bytes) or len(secret) != KEY_BYTES:
            size = len(secret) if isinstance(secret, bytes) else type(secret).__name__
            raise ValueError(f"an encryption key is {KEY_BYTES} random bytes, not {size}")
        if id is None:
            id = hashlib.sha256(_DERIVED_ID_CONTEXT + secret).hexdigest()[:8]
        elif not _KEY_ID_RE.fullmatch(id):
            raise ValueError(f"an encryption key id matches [A-Za-z0-9_.-]{{1,64}}, not {id!r}")
        self._secret = secret
        self.id = id

    @classmethod
    def parse(cls, value: EncryptionKey | bytes | str) -> EncryptionKey:
        """A key as the settings write it: 32 bytes, or text "base64" or "id:base64" (standard
        or URL-safe base64). A bad one is a `ValueError` that never quotes the key."""
        if isinstance(value, EncryptionKey):
            return value
        if isinstance(value, bytes):
            return cls(value)
        if not isinstance(value, str):
            raise ValueError(f"an encryption key is bytes or base64 text, not {type(value)}")
        key_id, colon, encoded = value.strip().rpartition(":")
        text = encoded.replace("-", "+").replace("_", "/")
        try:
            secret = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"an encryption key is {KEY_BYTES} bytes in base64, optionally 'id:'-prefixed; "
                f"this one ({len(encoded)} characters) is not base64"
            ) from None
        if len(secret) != KEY_BYTES:
            raise ValueError(
                f"an encryption key is {KEY_BYTES} bytes in base64; this one decodes to "
                f"{len(secret)} bytes"
            )
        return cls(secret, key_id if colon else None)

    @property
    def secret(self) -> bytes:
        return self._secret

    def __repr__(self) -> str:
        return f"EncryptionKey(id={self.id!r})"


#: Keys as `connect(encryption_keys=...)` takes them: a sequence of keys (`EncryptionKey`, 32
#: bytes, or text "base64" / "id:base64"), or one comma-separated str of text keys.
EncryptionKeys = str | Sequence[EncryptionKey | bytes | str]


def parse_keys(value: EncryptionKeys) -> list[EncryptionKey]:
    """Keys from a sequence, or from comma-separated text (as `SESSIONARY_ENCRYPTION_KEYS`
    carries them); ids must be distinct. The first seals, all open."""
    items = [part for part in value.split(",") if part.strip()] if isinstance(value, str) else value
    keys = []
    for number, item in enumerate(items, 1):
        try:
            keys.append(EncryptionKey.parse(item))
        except ValueError as exc:
            raise ValueError(f"encryption key #{number}: {exc}") from None
    ids = [key.id for key in keys]
    duplicated = sorted({key_id for key_id in ids if ids.count(key_id) > 1})
    if duplicated:
        raise ValueError(f"encryption key ids are not distinct: {', '.join(duplicated)}")
    return keys


class Nonces:
    """96-bit random nonces from `os.urandom`, drawn `batch` at a time.

    One system call per seal would cost more than its microsecond: CPython lets go of the GIL
    around `getrandom`, and a busy thread (SQLite's writer) then holds the event loop until
    its next switch. Each nonce is handed out once (under a lock, across threads), and a
    forked child starts afresh (`os.register_at_fork`), never reusing its parent's."""

    def __init__(self, batch: int = 256) -> None:
        self._size = batch * NONCE_BYTES
        self._forget()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()  # a parent's thread may have held the old one
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        with self._lock:
            if self._at >= len(self._pool):
                self._pool, self._at = os.urandom(self._size), 0
            at = self._at
            self._at = at + NONCE_BYTES
            return self._pool[at : at + NONCE_BYTES]


#: the process's nonces, shared by every `Sealer`
_NONCES = Nonces()


class Sealer:
    """Seals and opens sessions' blobs under a list of keys: the first seals, all open."""

    def __init__(self, keys: EncryptionKeys) -> None:
        parsed = parse_keys(keys)
        if not parsed:
            raise ValueError("encryption needs at least one key")
        with needs("encryption", "encryption at rest"):
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._invalid: tuple[type[Exception], ...] = (InvalidTag, ValueError)
        self.keys = parsed
        self._ciphers: dict[str, AESGCM] = {key.id: AESGCM(key.secret) for key in parsed}
        current = parsed[0].id
        self._sealing = self._ciphers[current]
        #: every blob sealed under the current key starts with these bytes
        self._header = MAGIC + bytes([len(current)]) + current.encode("ascii")
        self._nonce_at = len(self._header)

    @property
    def current_key_id(self) -> str:
        """The id of the key that seals."""
        return self.keys[0].id

    def seal(self, namespace: str, session_id: str, field: Field, plaintext: bytes) -> bytes:
        """`plaintext` sealed under the current key for that field of that session."""
        nonce = _NONCES.next()
        aad = _associated(namespace, session_id, field)
        return self._header + nonce + self._sealing.encrypt(nonce, plaintext, aad)

    def open(self, namespace: str, session_id: str, field: Field, blob: bytes) -> bytes:
        """The plaintext of a blob `seal` made for that field of that session; a blob without
        the format's first byte is legacy plaintext (a JSON object) and comes back as it is.
        `SessionUnreadable` for a key not given ("unknown_key") or bytes that fail
        authentication ("tampered": changed, or moved from elsewhere; or neither sealed nor
        a JSON object)."""
        if blob.startswith(self._header):  # the common case: sealed under the current key
            cipher, key_id, nonce_at = self._sealing, self.keys[0].id, self._nonce_at
        elif not blob.startswith(MAGIC):
            if not blob.startswith(b"{"):  # what this store writes in clear always does
                raise SessionUnreadable(session_id, "", "tampered")
            return blob
        else:
            key_id, nonce_at = _key_id(blob)
            found = self._ciphers.get(key_id)
            if found is None:
                raise _unknown(session_id, key_id)
            cipher = found
        body_at = nonce_at + NONCE_BYTES
        try:
            return cipher.decrypt(
                blob[nonce_at:body_at], blob[body_at:], _associated(namespace, session_id, field)
            )
        except self._invalid:  # InvalidTag, or ValueError for a nonce cut short
            raise SessionUnreadable(session_id, key_id, "tampered") from None

    def is_current(self, blob: bytes) -> bool:
        """Whether `blob` is sealed under the current key (what a rekey leaves alone)."""
        return blob.startswith(self._header)

    def __repr__(self) -> str:
        return f"Sealer(keys={[key.id for key in self.keys]})"


def refuse_sealed(session_id: str, blob: bytes) -> None:
    """For a store given no keys: `SessionUnreadable` if `blob` is sealed (never handed out
    as if it were JSON), nothing if it is plaintext."""
    if blob.startswith(MAGIC):
        raise _unknown(session_id, _key_id(blob)[0])


def _key_id(blob: bytes) -> tuple[str, int]:
    """The key id a sealed blob names, and where its nonce starts."""
    nonce_at = 2 + (blob[1] if len(blob) > 1 else 0)
    return blob[2:nonce_at].decode("ascii", "replace"), nonce_at


def _unknown(session_id: str, key_id: str) -> SessionUnreadable:
    """A key id not given: "unknown_key", unless it is no key id at all (mangled bytes)."""
    reason: Reason = "unknown_key" if _KEY_ID_RE.fullmatch(key_id) else "tampered"
    return SessionUnreadable(session_id, key_id, reason)


def _associated(namespace: str, session_id: str, field: Field) -> bytes:
    return f"{namespace}\0{session_id}\0{field}".encode()


UnreadableListener = Callable[[str, SessionUnreadable], None]


class UnreadableLog:
    """Where a store reports the sealed sessions it could not open: each counted (by
    namespace and reason, and to every listener: the service's metrics), and logged to the
    `sessionary.security` logger once per session (a client retrying with the same cookie
    does not flood the log; at most `remember` ids are remembered, then it starts over)."""

    def __init__(self, remember: int = 10_000) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._listeners: list[UnreadableListener] = []
        self._logged: set[tuple[str, str]] = set()
        self._remember = remember

    def on(self, listener: UnreadableListener) -> Callable[[], None]:
        """Call `listener(namespace, error)` at each report; returns an unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def report(self, namespace: str, error: SessionUnreadable) -> None:
        self.counts[(namespace, error.reason)] += 1
        seen = (namespace, error.session_id)
        if seen not in self._logged:
            if len(self._logged) >= self._remember:
                self._logged.clear()
            self._logged.add(seen)
            security_log.warning("namespace %r: %s", namespace, error)
        for listener in tuple(self._listeners):
            try:
                listener(namespace, error)
            except Exception:
                security_log.exception("an unreadable-session listener failed")


@dataclass(slots=True)
class RekeyReport:
    """What `Namespace.rekey` did: sessions `examined`; `resealed` under the current key
    (legacy plaintext ones included); already `current` (sealed under it, as every write
    since the key became first does, and as a rerun finds what a previous run did); `gone`
    (ended between the scan and the rekey); `unreadable` (sealed under a key not given, or
    tampered with: left as they are, and reported as any unreadable session is); `busy`
    (updated concurrently at every attempt: a rerun picks them up)."""

    examined: int = 0
    resealed: int = 0
    current: int = 0
    gone: int = 0
    unreadable: int = 0
    busy: int = 0

    def count(self, outcome: RekeyOutcome) -> None:
        self.examined += 1
        setattr(self, outcome, getattr(self, outcome) + 1)

    @property
    def complete(self) -> bool:
        """Every session the scan found is now under the current key, or gone."""
        return not (self.unreadable or self.busy)

    def __str__(self) -> str:
        return (
            f"examined {self.examined}, resealed {self.resealed}, already current "
            f"{self.current}, gone meanwhile {self.gone}, unreadable {self.unreadable}, "
            f"busy {self.busy}"
        )
