"""`dtq namespace`: what a namespace holds in Redis, its retention, and purging finished state.

`report` prints the namespace's keys (count and bytes, by MEMORY USAGE), its records by state,
the finished records waiting to expire and the retention; `retention MS` sets the namespace's
retention of finished tasks (0: forever), which every fenced write that ends a task reads;
`purge` removes finished tasks whose retention is over, `purge --all` every finished task
(unfinished ones are never touched). Each prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from transports.redis import RedisStore
from transports.registry import open_store, require


def add_parser(sub: Any) -> None:
    p = sub.add_parser("namespace", help="report, set the retention of, or purge a namespace",
                       description=__doc__)
    p.add_argument("--store-url", default=None,
                   help="Redis URL (default: $DTQ_STORE_URL or redis://127.0.0.1:6379/0)")
    p.add_argument("--namespace", default="dtq", help="the namespace (key prefix)")
    nsub = p.add_subparsers(dest="namespace_cmd", required=True, metavar="COMMAND")
    nsub.add_parser("report", help="keys, bytes, records by state, retention")
    ret = nsub.add_parser("retention", help="set the retention of finished tasks (ms)")
    ret.add_argument("ms", type=int, help="milliseconds; 0 keeps finished tasks forever")
    purge = nsub.add_parser("purge", help="remove finished tasks whose retention is over")
    purge.add_argument("--all", action="store_true", help="every finished task, due or not")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = args.store_url or os.environ.get("DTQ_STORE_URL") or "redis://127.0.0.1:6379/0"
    store = require(open_store(url, prefix=args.namespace), RedisStore, "dtq namespace")
    try:
        out: dict[str, Any]
        if args.namespace_cmd == "retention":
            if args.ms < 0:
                raise SystemExit("dtq namespace retention: the retention cannot be negative")
            store.set_retention_ms(args.ms)
            out = {"namespace": args.namespace, "retention_ms": store.retention_ms()}
        elif args.namespace_cmd == "purge":
            out = {"namespace": args.namespace, "purged": store.purge(everything=args.all)}
        else:
            out = store.report()
        print(json.dumps(out, sort_keys=True))
        return 0
    finally:
        store.close()
