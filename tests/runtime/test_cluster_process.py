"""`dtq cluster` as an operator runs it: a real supervisor process and its nodes.

The rules shown: SIGTERM, and a terminal's Ctrl-C (SIGINT to the whole foreground process
group), stop the cluster alike: every node gets one signal, finishes its running task within the
grace period, and exits, leaving no dtq process behind; a background job of a script (SIGINT
ignored) still stops on SIGTERM and restarts nothing; nodes exit when the supervisor is killed;
a task module that does not import is one line naming it and no node is started; a node that
exits with a configuration error stops the cluster instead of being restarted in a loop.

Every wait is for an event (a file the task writes, a process's exit), bounded by a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dtq.bench.common import queue_counts
from dtq.client.submitter import Submitter
from dtq.envelope import WORK_QUEUE
from dtq.runtime.process import EXIT_CONFIG
from dtq.task import TaskSpec
from dtq.transport import queue_name
from transports.rabbitmq import delete_namespace
from transports.redis import RedisStore

pytestmark = pytest.mark.rabbitmq

TASKS = '''
import sys
import time
from pathlib import Path

from dtq import TaskActor


class Hold(TaskActor):
    """Says it started (a file), then works for a while."""

    type_name = "hold"

    def run(self, task, ctx):
        Path(task.payload["started"]).write_text("started")
        time.sleep(task.payload["ms"] / 1000)
        print("hold: done", file=sys.stderr, flush=True)
        return "held to the end"
'''


def _until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)  # polling period of the wait


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _nodes(pid: int) -> set[int]:
    """The node processes the supervisor `pid` started (not multiprocessing's tracker)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                found.add(child)
    return found


class Cluster:
    def __init__(self, workdir: Path, ns: str, broker: str, store: str) -> None:
        self.workdir, self.ns, self.broker, self.store = workdir, ns, broker, store
        self.log = workdir / "cluster.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, ignore_sigint: bool = False,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-c", "import sys; from dtq.cli.main import main; sys.exit(main())",
               "cluster", "--namespace", self.ns, "--broker-url", self.broker,
               "--store-url", self.store, "--coordinators", "1", "--workers", "1",
               "--io-root", str(self.workdir / "io"), *args]

        def ignore() -> None:  # what a shell does for a script's background job
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=ignore if ignore_sigint else None,
                env={**os.environ, **(env or {})})
        return self.proc

    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the cluster did not stop:\n{self.output()}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def cluster(tmp_path: Path, rabbitmq_url: str, redis_url: str) -> Iterator[Cluster]:
    (tmp_path / "holdtasks.py").write_text(TASKS)
    c = Cluster(tmp_path, f"test-{uuid.uuid4().hex[:8]}", rabbitmq_url, redis_url)
    pids: set[int] = set()
    try:
        yield c
    finally:
        if c.proc is not None:
            pids = _nodes(c.proc.pid)
        c.stop()
        for pid in pids:  # never leave a node behind, even when the test failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        store = RedisStore.from_url(redis_url, prefix=c.ns)
        store.delete_all()
        store.close()
        delete_namespace(rabbitmq_url, c.ns, ["coordinator-1", "worker-1", "worker-2", "client"])


def _running_task(c: Cluster) -> tuple[set[int], RedisStore]:
    """Start the cluster's task and wait until it runs; the node pids and the store."""
    assert c.proc is not None
    _until(lambda: len(_nodes(c.proc.pid)) == 2, "two nodes")  # type: ignore[union-attr]
    nodes = _nodes(c.proc.pid)
    started = c.workdir / "started"
    submitter = Submitter(c.broker, namespace=c.ns)
    try:
        submitter.submit([TaskSpec(id="held", type="hold",
                                   payload={"started": str(started), "ms": 1500})])
    finally:
        submitter.close()
    _until(started.exists, "the task to start")
    return nodes, RedisStore.from_url(c.store, prefix=c.ns)


@pytest.mark.parametrize("how", ["sigterm-background-job", "ctrl-c"])
def test_a_stop_signal_lets_running_tasks_finish_and_leaves_no_process(
    cluster: Cluster, how: str,
) -> None:
    proc = cluster.start("--tasks", "holdtasks", ignore_sigint=how != "ctrl-c")
    nodes, store = _running_task(cluster)
    before = len(cluster.output())
    try:
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # the terminal signals its foreground group
        else:
            os.killpg(proc.pid, signal.SIGINT)  # a background job ignores it...
            proc.send_signal(signal.SIGTERM)    # ...and stops on `kill`
        assert cluster.wait() == 0, cluster.output()
        _until(lambda: not any(map(_alive, nodes)), "every node to exit", 30)
        after = cluster.output()[before:]
        assert "node exited; restarting" not in after and '"starting"' not in after, after
        result = store.get_result("held")
        assert result is not None and result.value == "held to the end", cluster.output()
        lines = after.splitlines()
        stopped = [i for i, line in enumerate(lines)
                   if '"actor": "worker-1"' in line and '"event": "stopped"' in line]
        # one signal: the worker stopped once its task was done (a second signal would have
        # stopped it at once, abandoning the task's acknowledgement)
        assert stopped and lines.index("hold: done") < stopped[0], after
        # ...and once the broker had confirmed its report, so it acked the dispatch: nothing
        # is left to hand out again (every node is gone: a message left would be ready)
        ready, _ = queue_counts(cluster.broker, queue_name(cluster.ns, WORK_QUEUE))
        assert ready == 0, "the stopped worker left its dispatch unacknowledged"
    finally:
        store.close()


def test_nodes_exit_when_the_supervisor_is_killed(cluster: Cluster) -> None:
    proc = cluster.start()
    _until(lambda: len(_nodes(proc.pid)) == 2, "two nodes")
    nodes = _nodes(proc.pid)
    proc.kill()
    proc.wait()
    _until(lambda: not any(map(_alive, nodes)), "the orphaned nodes to exit", 30)


@pytest.mark.parametrize(("source", "message"), [
    ("def broken(:\n", "SyntaxError: invalid syntax"),
    ("import no_such_module_anywhere\n", "ModuleNotFoundError: No module named "
                                         "'no_such_module_anywhere'"),
    ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
])
def test_a_task_module_that_does_not_import_is_one_line(
    cluster: Cluster, source: str, message: str,
) -> None:
    (cluster.workdir / "badtasks.py").write_text(source)
    proc = cluster.start("--tasks", "badtasks")
    assert cluster.wait() == EXIT_CONFIG
    lines = cluster.output().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("dtq: error: cannot import task module 'badtasks': ")
    assert message in lines[0]
    assert _nodes(proc.pid) == set()


def test_a_node_with_a_configuration_error_stops_the_cluster(cluster: Cluster) -> None:
    cluster.start("--workers", "2", "--log-level", "info",
                  env={"DTQ_IO_HTTP_ALLOW": "not-an-address"})
    assert cluster.wait() == EXIT_CONFIG
    out = cluster.output()
    assert "exited with a configuration error" in out
    assert "'not-an-address'" in out
    assert "node exited; restarting" not in out
    assert out.count("started node") == 3  # each node once: none was started again
