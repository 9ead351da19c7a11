"""Structured log events for the fault proxy, and the formatters the command line uses.

Code logs through :func:`event` with a message and key/value fields; the fields travel on the
record so that the JSON formatter (one object per line, like Toxiproxy's own logs) and the
text formatter can both show them.
"""

from __future__ import annotations

import json
import logging
import time

logger = logging.getLogger("dtq.chaos")


def event(level: int, message: str, **fields: object) -> None:
    """Log ``message`` with structured ``fields`` on the ``dtq.chaos`` logger."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields})


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """``{"level": "info", "time": "...", "message": "...", ...fields}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        entry: dict[str, object] = {"level": record.levelname.lower(), "time": created}
        entry.update(_fields(record))
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``2026-05-01 12:00:00 INFO Started proxy name=redis listen=127.0.0.1:26379``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        return f"{text} {pairs}" if pairs else text
