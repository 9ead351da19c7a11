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
    """Writes each line to whatever `sys.stderr` is now, whole: the line and its newline in one
    `os.write` to the stream's file descriptor (after flushing what the stream holds), so lines
    from several processes or threads sharing a pipe or file never interleave. A pipe keeps
    a write of up to `PIPE_BUF` (4 KiB on Linux) bytes whole; a file opened for appending keeps
    any single write whole. A stream without a descriptor (a test's capture) gets one `write`.
    A closed or broken stream never raises into the caller (a log line must not take down a
    connection's I/O thread)."""

    def msg(self, message: str) -> None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            stream = sys.stderr
            line = message + "\n"
            try:
                fd = stream.fileno()
            except (ValueError, OSError):  # io.UnsupportedOperation: no descriptor
                stream.write(line)
                stream.flush()
                return
            stream.flush()
            data = line.encode(getattr(stream, "encoding", None) or "utf-8", "backslashreplace")
            while data:  # one write unless a signal cuts it short
                data = data[os.write(fd, data):]

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
