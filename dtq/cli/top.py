"""`dtq top`: the cluster at a glance in the terminal, refreshed from the REST API.

Each frame reads `GET /cluster` (leader, workers, queues) and `GET /metrics` (tasks by state)
through `dtq.client.http.Client`; the rate of finished tasks is the change of the succeeded and
failed counts between two frames over the time between them (none on the first frame, and never
below 0: the retention's purge lowers the counts). `--once` prints one frame and exits.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

import attrs
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dtq.cli.client import EXIT_OK, _api_arg, _client, _wrap
from dtq.client.http import Client
from dtq.errors import DtqError

if TYPE_CHECKING:
    from dtq.cli.client import Subparsers

__all__ = ["Frame", "Top", "add_parser", "render"]

FINISHED = ("succeeded", "failed")

EPILOG = """examples:
  dtq top                                   # every second, until Ctrl-C
  dtq top --interval 5 --api http://dtq-api:8000 --token-file /run/secrets/dtq-api
  dtq top --once > cluster.txt              # one frame, for scripts

The rate is tasks finished (succeeded or failed) per second between two frames."""


@attrs.frozen
class Frame:
    """What one refresh read: `/cluster` as it is, the task counts, the finish rate."""

    cluster: dict[str, Any]
    tasks: dict[str, int]
    rate: float | None
    """Tasks finished per second since the frame before (None: the first frame)."""


def task_counts(metrics_text: str) -> dict[str, int]:
    """`dtq_tasks{state}` of a `/metrics` scrape: state -> count."""
    return {sample.labels["state"]: int(sample.value)
            for family in text_string_to_metric_families(metrics_text)
            if family.name == "dtq_tasks" for sample in family.samples}


class Top:
    """Reads frames from the API, remembering the last finished count for the rate."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._last: tuple[float, int] | None = None

    def frame(self) -> Frame:
        cluster = self.client.cluster()
        tasks = task_counts(self.client.metrics())
        now, finished = time.monotonic(), sum(tasks.get(s, 0) for s in FINISHED)
        rate = None
        if self._last is not None and now > self._last[0]:
            rate = max(0.0, (finished - self._last[1]) / (now - self._last[0]))
        self._last = (now, finished)
        return Frame(cluster=cluster, tasks=tasks, rate=rate)


def render(frame: Frame, url: str) -> RenderableType:
    """The leader line, then the workers, queues and tasks tables."""
    leader = frame.cluster.get("leader")
    head = Text.assemble(("dtq top ", "bold"), f"{url}  leader: ",
                         (f"{leader['name']} (epoch {leader['epoch']})", "bold green")
                         if leader else ("none", "bold red"),
                         "  finished/s: ", "-" if frame.rate is None else f"{frame.rate:.1f}")
    workers = Table(title="workers", title_justify="left")
    workers.add_column("name")
    for column in ("state", "heartbeat age", "running"):
        workers.add_column(column, justify="right")
    for w in frame.cluster.get("workers", []):
        shown = Text(w["state"], style="green" if w["state"] == "alive" else "red")
        workers.add_row(w["name"], shown, f"{w['heartbeat_age_ms'] / 1000:.1f} s",
                        str(len(w.get("running", []))))
    queues = Table(title="queues", title_justify="left")
    queues.add_column("queue")
    queues.add_column("depth", justify="right")
    for name, depth in sorted(frame.cluster.get("queues", {}).items()):
        queues.add_row(name, str(depth))
    tasks = Table(title="tasks", title_justify="left")
    tasks.add_column("state")
    tasks.add_column("count", justify="right")
    for state, n in frame.tasks.items():
        tasks.add_row(state, str(n))
    return Group(head, workers, _side_by_side(queues, tasks))


def _side_by_side(*tables: Table) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_row(*tables)
    return grid


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("top", help="watch the cluster in the terminal (leader, workers, "
                       "queues, tasks)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=_wrap(
                           "Show the leader and its epoch, each worker's state and heartbeat "
                           "age, the queue depths, the tasks by state and how many finish per "
                           "second, read from the REST API (GET /cluster and GET /metrics) and "
                           "refreshed every --interval seconds until Ctrl-C."))
    p.add_argument("--interval", type=_positive_float, default=1.0, metavar="S",
                   help="seconds between refreshes (default 1.0)")
    p.add_argument("--once", action="store_true",
                   help="print one frame and exit (no rate: it needs two frames)")
    _api_arg(p)
    p.set_defaults(func=_top)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _top(args: argparse.Namespace) -> int:
    console = Console()
    with _client(args) as client:
        top = Top(client)
        if args.once:
            console.print(render(top.frame(), client.base_url))
            return EXIT_OK
        with Live(render(top.frame(), client.base_url), console=console,
                  auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(args.interval)  # the refresh period the user chose
                    try:
                        live.update(render(top.frame(), client.base_url), refresh=True)
                    except DtqError as exc:  # keep watching through an API restart
                        live.update(Text(f"dtq top: {exc}", style="red"), refresh=True)
            except KeyboardInterrupt:
                return EXIT_OK
