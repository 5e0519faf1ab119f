"""What every framework engine answers while the session store is down: the service's 503;
and, with the same JSON, a login its namespace's session limit refuses (`error_body`) and a
save that another request's write to the same keys made impossible (`CONFLICT_BODY`, the 409
`session_conflict` of the ASGI middleware).

A store outage is not a bug, so it is never a 500 with a traceback: the client gets `503`,
`Retry-After` and the JSON body of sessionary's own service (`sessionary.http.errors`), so a
client that knows one knows all::

    {"error": "store_unavailable", "message": "...", "retry_after": 30}

and the operator gets one warning when the outage starts and one line when it ends, however
many requests failed in between (`sessionary.outage.OutageLog`).
"""

from __future__ import annotations

import logging
import threading

import orjson

from sessionary.errors import SessionaryError, StoreUnavailable
from sessionary.outage import RETRY_AFTER_UNAVAILABLE, OutageLog
from sessionary.session_request import CONFLICT_CODE, CONFLICT_MESSAGE

STATUS = 503
CONTENT_TYPE = "application/json"
MESSAGE = "the session store is unavailable; try again shortly"
BODY = orjson.dumps(
    {"error": StoreUnavailable.code, "message": MESSAGE, "retry_after": RETRY_AFTER_UNAVAILABLE}
)
HEADERS = {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)}

CONFLICT_STATUS = 409
#: a key this request changed was changed by another request too (`VersionConflict` from
#: `RequestSession.save`): saving either way would lose one of the two updates
CONFLICT_BODY = orjson.dumps({"error": CONFLICT_CODE, "message": CONFLICT_MESSAGE})

log = logging.getLogger("sessionary.contrib")


def error_body(error: SessionaryError) -> bytes:
    """The service's JSON body of one of sessionary's errors (its `http_status` is the
    status): `{"error": "too_many_sessions", "message": "...", "max_sessions": 3}` for a
    login refused by `max_sessions_per_subject`, the same bytes whatever engine answers."""
    return orjson.dumps({"error": error.code, "message": str(error), **error.details()})


class Outage:
    """One engine's `OutageLog`, safe from the many threads of a sync web server (two threads
    failing at once must still make one warning)."""

    def __init__(self, where: str) -> None:
        self._log = OutageLog(log, where)
        self._lock = threading.Lock()

    def failed(self, error: StoreUnavailable, consequence: str) -> None:
        with self._lock:
            self._log.failed(error, consequence)

    def worked(self) -> None:
        """A store call succeeded: the outage, if any, may be over (cheap when there is none)."""
        if self._log.down:
            with self._lock:
                self._log.recovered()
