"""sessionary: server-side sessions for Python backends.

store = await sessionary.connect("sqlite:///sessions.db")
web = store.namespace("web", idle_ttl=timedelta(minutes=30), absolute_ttl=timedelta(hours=12))
session = await web.create(subject="user-1", data={"cart": []})
"""

from sessionary import clock, errors
from sessionary.clock import Clock, ManualClock, SystemClock
from sessionary.contract import KEEP, Backend, Lifetime, OnMaxSessions, Record, SessionLimit
from sessionary.counters import Charge, ChargeResult, CounterReading, Counters
from sessionary.devices import Device, DevicePolicy
from sessionary.errors import (
    InvalidSessionId,
    PayloadTooDeep,
    PayloadTooLarge,
    SessionaryError,
    SessionExists,
    SessionNotFound,
    SessionUnreadable,
    StoreUnavailable,
    TooManySessions,
    ValidationError,
    VersionConflict,
)
from sessionary.model import ConsumeResult, Session, SessionEvent
from sessionary.queues import QueueDepth, WorkItem, WorkQueue
from sessionary.sealing import EncryptionKey, RekeyReport
from sessionary.store import Namespace, Store, connect
from sessionary.sync import SyncCounters, SyncNamespace, SyncStore, SyncWorkQueue, connect_sync

__version__ = "0.1.0"

__all__ = [
    "KEEP",
    "Backend",
    "Charge",
    "ChargeResult",
    "Clock",
    "ConsumeResult",
    "CounterReading",
    "Counters",
    "Device",
    "DevicePolicy",
    "EncryptionKey",
    "InvalidSessionId",
    "Lifetime",
    "ManualClock",
    "Namespace",
    "OnMaxSessions",
    "PayloadTooDeep",
    "PayloadTooLarge",
    "QueueDepth",
    "Record",
    "RekeyReport",
    "Session",
    "SessionEvent",
    "SessionExists",
    "SessionLimit",
    "SessionNotFound",
    "SessionUnreadable",
    "SessionaryError",
    "Store",
    "StoreUnavailable",
    "SyncCounters",
    "SyncNamespace",
    "SyncStore",
    "SyncWorkQueue",
    "SystemClock",
    "TooManySessions",
    "ValidationError",
    "VersionConflict",
    "WorkItem",
    "WorkQueue",
    "__version__",
    "clock",
    "connect",
    "connect_sync",
    "errors",
]
