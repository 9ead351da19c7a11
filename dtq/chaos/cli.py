"""``dtq toxiproxy``: run the Toxiproxy-compatible fault proxy from the command line.

:func:`configure` adds the options to a parser (the ``dtq`` command wires it in as a
sub-command) and :func:`run` serves until SIGINT or SIGTERM, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from .addr import AddressError
from .api import VERSION
from .logs import JsonFormatter, TextFormatter, event
from .server import ToxiproxyApp

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}

DESCRIPTION = """\
Run a Toxiproxy-compatible TCP fault proxy with its HTTP API.

Toxiproxy clients (toxiproxy-python, the Ruby, Go and Node clients, toxiproxy-cli) can drive it:
create proxies, then add toxics such as latency, bandwidth, slow_close, timeout,
reset_peer, slicer and limit_data to either direction of the traffic."""

EPILOG = """\
example:
  dtq toxiproxy --port 8474 --config proxies.json &
  curl -s -XPOST localhost:8474/proxies \\
       -d '{"name":"redis","listen":"127.0.0.1:26379","upstream":"127.0.0.1:6379"}'
  curl -s -XPOST localhost:8474/proxies/redis/toxics \\
       -d '{"type":"latency","attributes":{"latency":100}}'

The config file is a JSON array of proxies, as for POST /populate:
  [{"name": "redis", "listen": "127.0.0.1:26379", "upstream": "127.0.0.1:6379"}]

Toxiproxy's single-dash spellings (-host, -port, -config, ...) are accepted too.

environment:
  LOG_LEVEL  default log level (trace, debug, info, warn, error, fatal, panic)"""


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``dtq toxiproxy`` options to ``parser``."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--host",
        "-host",
        default="127.0.0.1",
        help="address the HTTP API listens on (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        "-port",
        type=int,
        default=8474,
        help="port the HTTP API listens on (default: %(default)s)",
    )
    parser.add_argument(
        "--config",
        "-config",
        metavar="FILE",
        help="JSON file of proxies to create before the API starts",
    )
    parser.add_argument(
        "--seed",
        "-seed",
        type=int,
        metavar="N",
        help="seed for toxicity rolls, jitter and slicing (default: random)",
    )
    parser.add_argument(
        "--proxy-metrics",
        "-proxy-metrics",
        action="store_true",
        help="serve per-proxy byte counters on GET /metrics",
    )
    parser.add_argument(
        "--runtime-metrics",
        "-runtime-metrics",
        action="store_true",
        help="serve process metrics on GET /metrics",
    )
    parser.add_argument(
        "--log-level",
        choices=sorted(_LEVELS),
        metavar="LEVEL",
        default=os.environ.get("LOG_LEVEL", "info").lower(),
        help="trace, debug, info, warn, error, fatal or panic (default: $LOG_LEVEL or info)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text or as JSON objects (default: %(default)s)",
    )
    parser.add_argument(
        "--version",
        "-version",
        action="version",
        version=f"toxiproxy-server version {VERSION} (dtq)",
    )


def _setup_logging(level_name: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger = logging.getLogger("dtq.chaos")
    logger.handlers = [handler]
    logger.setLevel(_LEVELS.get(level_name, logging.INFO))
    logger.propagate = False


def run(args: argparse.Namespace) -> int:
    """Serve the API and proxies until SIGINT or SIGTERM. Returns the exit status."""
    _setup_logging(args.log_level, args.log_format)
    try:
        return asyncio.run(_serve(args))
    except KeyboardInterrupt:  # a signal that arrived before the handlers were installed
        return 0


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Installed first, so a signal at any later point ends the server cleanly.
        loop.add_signal_handler(signum, stop.set)
    app = ToxiproxyApp(
        seed=args.seed, proxy_metrics=args.proxy_metrics, runtime_metrics=args.runtime_metrics
    )
    if args.config:
        await app.populate_from_file(args.config)
    try:
        await app.start(args.host, args.port)
    except AddressError as exc:
        event(logging.ERROR, "Cannot start the API server", error=str(exc))
        await app.close()
        return 1
    await stop.wait()
    event(logging.INFO, "Shutting down")
    await app.close()
    return 0
