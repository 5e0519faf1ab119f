"""Say an outage out loud once, not once per request."""

from __future__ import annotations

import logging


class OutageLog:
    """Logs a warning when `where` first fails and an info line when it works again."""

    def __init__(self, logger: logging.Logger, where: str) -> None:
        self.logger = logger
        self.where = where
        self.down = False

    def failed(self, error: BaseException, consequence: str) -> None:
        if not self.down:
            self.down = True
            self.logger.warning(
                "%s: the store is unavailable (%s); %s", self.where, error, consequence
            )

    def recovered(self) -> None:
        if self.down:
            self.down = False
            self.logger.info("%s: the store is back", self.where)
