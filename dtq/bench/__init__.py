"""`dtq bench` against the peers: dtq, Celery and Dramatiq measured side by side.

Every sub-benchmark prints numbers and asserts nothing. Each run uses its own namespace, queues
and result keys, and removes them when it ends. `configure` adds the subcommands to the
`dtq bench` parser; `dtq bench all` runs everything and writes `bench/results/`.
"""

from __future__ import annotations

import argparse


def configure(bsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the sub-benchmarks to the subparsers of `dtq bench`."""
    from dtq.bench.cli import configure as add

    add(bsub)


__all__ = ["configure"]
