"""Logging setup: readable console lines in development, JSON lines in production.

`DTQ_LOG_FORMAT=json|console` chooses the renderer (default: console on a terminal, JSON
otherwise); `DTQ_LOG_LEVEL` the level (default: warning for scenario runs, info for services).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import structlog


class _StderrLogger:
    """Writes each line to whatever `sys.stderr` is now; a closed or broken stream never
    raises into the caller (a log line must not take down a connection's I/O thread)."""

    def msg(self, message: str) -> None:
        with contextlib.suppress(ValueError, OSError):
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_logger(*_args: object) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(level: str | None = None, *, default: str = "warning") -> None:
    name = (level or os.environ.get("DTQ_LOG_LEVEL") or default).upper()
    numeric = logging.getLevelNamesMapping().get(name, logging.WARNING)
    fmt = os.environ.get("DTQ_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
