"""Logging setup: readable console lines in development, JSON lines in production.

`DTQ_LOG_FORMAT=json|console` chooses the renderer (default: console on a terminal, JSON
otherwise); `DTQ_LOG_LEVEL` the level (default: warning for scenario runs, info for services).
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
