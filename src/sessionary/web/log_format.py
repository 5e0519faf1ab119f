"""How sessionary's processes write their logs: text for a terminal (the default), or, with
`log_format = "json"` (`SESSIONARY_LOG_FORMAT=json`), one JSON object per line on stderr, for a
log collector that should not have to parse text.

Each object has `ts` (ISO 8601, UTC, milliseconds), `level`, `logger` and `message`, then the
structured fields the record carries (a logging call's `extra`; for uvicorn's access log its
client, method, path, http_version and status), and an exception's traceback as the
`exception` field: a line never breaks, so a collector never takes a traceback's lines for
records of their own. In JSON, everything a running process says goes through logging
(uvicorn's loggers, sessionary's, the libraries'), what it would print to an operator (`say`)
too; only a mistake that stops a command before it runs stays click's one `Error:` line.
"""

from __future__ import annotations

import logging
import logging.config
from datetime import UTC, datetime
from typing import Any, Literal

import click
import orjson

LogFormat = Literal["text", "json"]

#: what every record has: the rest of its attributes are the fields a call added
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's colored copy of the message
    "taskName",  # Python 3.12 adds it to every record
}
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JSONLines(logging.Formatter):
    """A record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, Any] = {
            "ts": stamp.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = {key: value for key, value in record.__dict__.items() if key not in _STANDARD}
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            fields.update(zip(_ACCESS_FIELDS, record.args, strict=False))
        for key, value in fields.items():  # a field never hides what every record has
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def json_log_config(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` writing every logger's records at `level` and above as
    JSON lines to stderr: uvicorn's (which keep no handler of their own, and propagate) and
    everyone else's, through the root logger. uvicorn takes it as its `log_config`."""
    propagate = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JSONLines}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": dict.fromkeys(("uvicorn", "uvicorn.error", "uvicorn.access"), propagate),
    }


def use_json_logs(level: str) -> None:
    """Every record of this process, at `level` and above, a JSON line on stderr (for the
    commands that are not uvicorn's: worker, reap, vacuum)."""
    logging.config.dictConfig(json_log_config(level))


def say(text: str, logger: logging.Logger, log_format: LogFormat) -> None:
    """What a command tells its operator: plain lines on stderr, or in JSON each line an info
    record of `logger` (the JSON stream stays JSON)."""
    if log_format == "json":
        for line in text.splitlines():
            logger.info(line)
    else:
        click.echo(text, err=True)
