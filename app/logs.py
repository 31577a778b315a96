"""Logging set-up: readable text by default, one JSON object per line with `--log-format json`."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=` and belongs in the JSON line.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: anything a terminal or a log reader could
# take for the end of a line or an escape sequence.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with control characters written as escapes, so a client-chosen path or header cannot forge a log
    line: `%0a` in a URL becomes the four characters `\\x0a`, never a line break."""
    return _UNPRINTABLE.sub(_escape, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_config(level: str, fmt: str, audit_log: str | None = None) -> dict[str, Any]:
    """A dictConfig for uvicorn's `log_config`, so worker processes log the same way."""
    formatter: dict[str, Any] = (
        {"()": "app.logs.JsonFormatter"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    handlers: dict[str, Any] = {
        "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"},
    }
    audit: dict[str, Any] = {"handlers": [], "propagate": False, "level": "CRITICAL"}
    if audit_log:
        # Audit lines are always JSON: they are read by machines first.
        handlers["audit"] = (
            {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
            if audit_log == "-"
            else {"class": "logging.FileHandler", "formatter": "json", "filename": audit_log}
        )
        audit = {"handlers": ["audit"], "propagate": False, "level": "INFO"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter, "json": {"()": "app.logs.JsonFormatter"}},
        "handlers": handlers,
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
            "artifact_proxy.audit": audit,
        },
    }
