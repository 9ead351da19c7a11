"""`python -m dtq.bench WHAT`: the peer-comparison benchmarks without the `dtq` command (the
same subcommands `configure` adds under `dtq bench`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dtq.bench.cli import configure
from dtq.errors import DtqError


def main(argv: Sequence[str] | None = None) -> int:
    from dtq.runtime.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m dtq.bench",
                                     description="dtq against the peers. Benchmarks print "
                                     "measurements; they assert nothing.")
    configure(parser.add_subparsers(dest="bench_cmd", required=True, metavar="WHAT"))
    args = parser.parse_args(argv)
    configure_logging(None)
    try:
        code: int = args.func(args)
    except DtqError as exc:
        print(f"dtq bench: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
