"""``python -m dtq.chaos``: the same server as ``dtq toxiproxy``."""

from __future__ import annotations

import argparse
import sys

from .cli import configure, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtq.chaos")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
