"""Nodes as OS processes: the entry point of one node, and the supervisor of many.

`run_node` builds one actor (coordinator or worker) with its transport, store and history and
runs it until it stops. `Supervisor` starts nodes as separate processes (multiprocessing, spawn),
restarts those that crash (crash-only: a fenced-out leader comes back as a standby), and can
kill, pause, resume and restart them for scenarios.

The rules of stopping: a node runs in a process group of its own, so a Ctrl-C at a terminal
reaches the supervisor alone, and each node gets exactly one signal (the supervisor's SIGTERM),
which lets it finish or hand back its running tasks within the grace period. A node whose
supervisor dies gets SIGTERM from the kernel (PR_SET_PDEATHSIG on Linux; elsewhere a thread
watching the supervisor's pipe). A node that exits with status 0 was stopped on purpose and is
not restarted; one that exits with `EXIT_CONFIG` (a task module that does not import, a bad I/O
setting) would fail again the same way, so the supervisor stops and says why.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import structlog

from dtq.errors import ConfigurationError, DtqError

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_STORE_URL = "redis://127.0.0.1:6379/0"
EXIT_CONFIG = 78
"""A node's (and `dtq`'s) exit status for a configuration error (sysexits' EX_CONFIG)."""

# The defaults of `dtq worker`, `dtq coordinator` and `dtq cluster`, of `NodeConfig` and so of
# the supervisor, and of the benchmark's "dtq" row: one place, so that they cannot drift apart.
DEFAULT_CONCURRENCY = 8
"""Tasks a worker runs at once, each on a thread of its pool (Dramatiq runs 8 threads per
process by default). Inline task types (`echo`) take no slot."""
DEFAULT_PREFETCH_PER_SLOT = 1
"""Broker messages a worker holds per concurrency slot when `--prefetch` is not given: those
it has not started wait in it (listed in its heartbeats, handed on if it goes silent), kept
from idle workers meanwhile."""
DEFAULT_DISPATCH_BUNDLE = 8
"""(Leader) dispatches of one burst that may share a broker message."""
DEFAULT_LEASE_TTL_MS = 3000
"""(Coordinator) the leader lease."""


def broker_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("DTQ_BROKER_URL") or DEFAULT_BROKER_URL


def store_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("DTQ_STORE_URL") or DEFAULT_STORE_URL


@attrs.frozen(kw_only=True)
class NodeConfig:
    role: str
    name: str
    broker_url: str = DEFAULT_BROKER_URL
    store_url: str = DEFAULT_STORE_URL
    namespace: str = "dtq"
    history: bool = False
    concurrency: int = DEFAULT_CONCURRENCY
    prefetch: int | None = None
    """Broker messages a worker holds at once (default: `DEFAULT_PREFETCH_PER_SLOT` per
    concurrency slot; see `work_prefetch`)."""
    task_modules: tuple[str, ...] = ()
    lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS
    detector_timeout_ms: int = 5000
    heartbeat_ms: int = 1000
    log_level: str | None = None
    io_root: str | None = None
    """(Worker) the `io` task's root directory (default: $DTQ_IO_ROOT, else dtq's own data
    directory; see `dtq.runtime.sandbox`)."""
    io_http_allow: tuple[str, ...] = ()
    """(Worker) non-public addresses `io` http_get may reach, besides $DTQ_IO_HTTP_ALLOW."""
    result_ttl_ms: int | None = None
    dispatch_bundle: int = DEFAULT_DISPATCH_BUNDLE
    """(Leader) up to this many dispatches published together share one broker message (a
    burst of 32 or more; see `transports.rabbitmq`, "Work bundles"). 1: one each."""
    quorum: bool | None = None
    """Declare quorum queues (for clustered RabbitMQ) instead of classic ones; None: as
    `$DTQ_QUORUM` says (`transports.rabbitmq.QUORUM_ENV`)."""
    trace: bool = False
    """Record every send and receive in the history too (for space-time diagrams)."""
    metrics_port: int | None = None
    """Serve this node's Prometheus metrics (`dtq.runtime.metrics`) on 127.0.0.1 at this port."""

    @property
    def work_prefetch(self) -> int:
        """(Worker) the work queue's prefetch: `prefetch`, else per slot as the default says."""
        return self.prefetch or DEFAULT_PREFETCH_PER_SLOT * max(1, self.concurrency)


def load_task_modules(modules: Iterable[str]) -> dict[str, Any]:
    """The built-in task types and those of `modules`, imported from the current directory
    too (as `celery -A` does); any failure is one `ConfigurationError` line naming the module."""
    from dtq.tasktypes import load_task_types

    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # ImportError, SyntaxError, or anything the module raises
            where = f" ({exc.filename}, line {exc.lineno})" if isinstance(exc, SyntaxError) \
                else ""
            raise ConfigurationError(f"cannot import task module {name!r}: "
                                     f"{type(exc).__name__}: {_first_line(exc)}{where}") from None
    try:
        return load_task_types(tuple(modules))
    except DtqError as exc:
        raise ConfigurationError(str(exc)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc.msg if isinstance(exc, SyntaxError) else exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def build_actor(cfg: NodeConfig) -> Any:
    from dtq.coordinator import Coordinator, CoordinatorConfig
    from dtq.worker import Worker

    if cfg.role == "coordinator":
        return Coordinator(cfg.name, CoordinatorConfig(
            lease_ttl_ms=cfg.lease_ttl_ms, detector_timeout_ms=cfg.detector_timeout_ms))
    if cfg.role == "worker":
        return Worker(cfg.name, load_task_modules(cfg.task_modules),
                      result_ttl_ms=cfg.result_ttl_ms, heartbeat_ms=cfg.heartbeat_ms,
                      concurrency=cfg.concurrency)
    raise ValueError(f"unknown role {cfg.role!r}")


def _prefetch(cfg: NodeConfig) -> dict[str, int]:
    from dtq.envelope import WORK_QUEUE

    return {WORK_QUEUE: cfg.work_prefetch}


def run_node(cfg: NodeConfig) -> int:
    """Run one node in this process until it stops; return its exit status."""
    from dtq.runtime.logs import configure_logging
    from dtq.runtime.node import ProcessRuntime, RuntimeOptions, kill_at
    from transports.redis import RedisHistory
    from transports.registry import open_store, open_transport

    configure_logging(cfg.log_level, default="info")
    log = structlog.get_logger("dtq").bind(actor=cfg.name)
    io_root = _io_settings(cfg) if cfg.role == "worker" else RuntimeOptions().io_root
    built = build_actor(cfg)
    store = open_store(cfg.store_url, prefix=cfg.namespace)
    history = RedisHistory.from_url(cfg.store_url, prefix=cfg.namespace) if cfg.history else None
    lock = threading.Lock()
    metrics = None
    if cfg.metrics_port is not None:
        from dtq.runtime.metrics import NodeMetrics

        metrics = NodeMetrics(cfg.name, cfg.role)
        metrics.serve(cfg.metrics_port)

    def record(actor: str, kind: str, clock: Any, data: Mapping[str, Any]) -> None:
        if metrics is not None:
            metrics.observe(kind, data)
        if history is not None:
            with lock:
                history.record(actor, kind, clock, data)

    transport = open_transport(cfg.broker_url, namespace=cfg.namespace, name=cfg.name, log=log,
                               quorum=cfg.quorum, work_bundle=cfg.dispatch_bundle)
    runtime = ProcessRuntime(built, transport=transport, store=store, record=record,
                             options=RuntimeOptions(concurrency=cfg.concurrency,
                                                    io_root=io_root, trace=cfg.trace,
                                                    prefetch=_prefetch(cfg),
                                                    crash=kill_at(os.environ.get(
                                                        "DTQ_CRASH_AT", ""))))
    log.info("starting", role=cfg.role, pid=os.getpid(), namespace=cfg.namespace)
    try:
        return runtime.run()
    finally:
        if history is not None:
            with contextlib.suppress(Exception):
                history.close()


def _io_settings(cfg: NodeConfig) -> str:
    """This node's I/O root (created) and HTTP policy (installed for its task threads)."""
    from dtq.runtime.sandbox import HttpPolicy, IoConfigError, resolve_io_root, use_http_policy

    try:
        use_http_policy(HttpPolicy.from_environment(cfg.io_http_allow))
        return resolve_io_root(cfg.io_root)
    except IoConfigError as exc:
        raise ConfigurationError(str(exc)) from None


def _child(cfg: NodeConfig) -> None:
    from dtq.runtime.markfile import install_from_environment

    _leave_terminal_group()
    _exit_with_parent()
    install_from_environment()
    try:
        code = run_node(cfg)
    except ConfigurationError as exc:
        print(f"dtq {cfg.name}: configuration error: {exc}", file=sys.stderr)
        code = EXIT_CONFIG
    except DtqError as exc:
        print(f"dtq {cfg.name}: error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


def _leave_terminal_group() -> None:
    """A process group of its own: a terminal's Ctrl-C (sent to the foreground group) reaches
    the supervisor, which stops the node with one signal, not the node as well."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)


_PR_SET_PDEATHSIG = 1


def _exit_with_parent() -> None:
    """SIGTERM this node when the supervisor that started it dies (even by SIGKILL). On Linux
    the kernel sends it when the supervisor's thread that started the node ends: start nodes
    from a thread that outlives them (the main thread, as `dtq cluster` does)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
            if os.getppid() != parent.pid:  # it died before the request took effect
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@attrs.define(eq=False)
class _Proc:
    cfg: NodeConfig
    process: multiprocessing.process.BaseProcess | None = None
    wanted: bool = True
    """False once the node was stopped or killed on purpose (it is not restarted)."""
    restarts: int = 0
    paused: bool = False
    started_s: float | None = None
    quick_exits: int = 0


class Supervisor:
    """Starts nodes as processes and keeps them running (crash-only restarts)."""

    def __init__(self, configs: Iterable[NodeConfig], *, restart_delay_s: float = 0.2) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.nodes = {cfg.name: _Proc(cfg=cfg) for cfg in configs}
        self.restart_delay_s = restart_delay_s
        self.log = structlog.get_logger("dtq.supervisor")
        self._exited_at: dict[str, float] = {}
        self.config_error: str | None = None
        """Set when a node exited with `EXIT_CONFIG`: why the cluster cannot run."""

    def run_until_stopped(self, period_s: float = 0.2) -> int:
        """Start every node and keep them running until SIGTERM or SIGINT (SIGINT only if this
        process did not start with it ignored, as a script's background job does) or until a
        node exits with a configuration error; then stop every node, with one SIGTERM each.
        The exit status: 0, or `EXIT_CONFIG`.

        The handler only sets a flag, which the loop checks every period: it takes no lock. (A
        `threading.Event` set from the handler deadlocks when the signal lands while this thread
        is inside `Event.wait` holding the event's lock, and the cluster never stops.)"""
        stopping: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            stopping.append(signum)

        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(sig, on_signal)
        try:
            self.start()
            while not stopping:
                time.sleep(period_s)  # the supervision period (a stop waits for its end at most)
                if stopping:
                    break
                self.poll()
                if self.config_error is not None:
                    break
        finally:
            self.stop_all()
            for sig, handler in previous.items():
                if handler is not signal.SIG_IGN and handler is not None:
                    signal.signal(sig, handler)
        return EXIT_CONFIG if self.config_error is not None else 0

    def start(self) -> None:
        for name in self.nodes:
            self.start_node(name)

    def start_node(self, name: str) -> None:
        node = self.nodes[name]
        node.process = self.ctx.Process(target=_child, args=(node.cfg,), name=name)
        node.process.start()
        node.wanted, node.paused = True, False
        if node.started_s is not None and time.monotonic() - node.started_s < 30:
            node.quick_exits += 1
        node.started_s = time.monotonic()
        self.log.info("started node", node=name, pid=node.process.pid)

    def pid(self, name: str) -> int | None:
        p = self.nodes[name].process
        return p.pid if p is not None else None

    def alive(self, name: str) -> bool:
        p = self.nodes[name].process
        return p is not None and p.is_alive()

    def poll(self) -> list[str]:
        """Restart nodes that crashed; return their names. A node that exited with status 0
        was stopped on purpose (by a signal) and stays stopped; one that exited with
        `EXIT_CONFIG` stays stopped and sets `config_error`."""
        restarted = []
        now = time.monotonic()
        for name, node in self.nodes.items():
            p = node.process
            if not node.wanted or p is None or p.is_alive():
                continue
            if p.exitcode in (0, EXIT_CONFIG):
                node.wanted = False
                if p.exitcode == EXIT_CONFIG:
                    self.config_error = f"node {name} exited with a configuration error"
                    self.log.error("node exited with a configuration error; not restarting",
                                   node=name, status=p.exitcode)
                else:
                    self.log.warning("node stopped (status 0); not restarting", node=name)
                continue
            first = self._exited_at.setdefault(name, now)
            if now - first < self._backoff_s(node):
                continue
            del self._exited_at[name]
            self.log.warning("node exited; restarting", node=name, status=p.exitcode,
                             restarts=node.restarts + 1)
            node.restarts += 1
            self.start_node(name)
            restarted.append(name)
        return restarted

    def _backoff_s(self, node: _Proc) -> float:
        """A node that keeps exiting soon after it starts is restarted less and less often
        (up to every 10 s); one that ran for a while is restarted at once."""
        if node.started_s is not None and time.monotonic() - node.started_s > 30:
            node.quick_exits = 0
        return min(10.0, self.restart_delay_s * 2.0 ** node.quick_exits)

    def kill(self, name: str) -> None:
        node = self.nodes[name]
        node.wanted = False
        if node.process is not None and node.process.pid and node.process.is_alive():
            os.kill(node.process.pid, signal.SIGKILL)
            node.process.join(5)

    def pause(self, name: str) -> None:
        """SIGSTOP the node's process; nothing for a node that is not running (killed and not
        restarted yet), as in the simulator."""
        node = self.nodes[name]
        if node.process is not None and node.process.pid and not node.paused \
                and node.process.is_alive():
            with contextlib.suppress(ProcessLookupError):  # it may die between check and kill
                os.kill(node.process.pid, signal.SIGSTOP)
                node.paused = True

    def resume(self, name: str) -> None:
        node = self.nodes[name]
        if node.process is not None and node.process.pid and node.paused:
            node.paused = False
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.process.pid, signal.SIGCONT)

    def restart(self, name: str) -> None:
        if not self.alive(name):
            self.start_node(name)

    def stop_all(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every node (finishing running tasks), then SIGKILL what is left."""
        for node in self.nodes.values():
            node.wanted = False
            if node.paused:
                self.resume(node.cfg.name)
            if node.process is not None and node.process.is_alive() and node.process.pid:
                os.kill(node.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes.values():
            if node.process is not None:
                node.process.join(max(0.0, deadline - time.monotonic()))
                if node.process.is_alive():
                    node.process.kill()
                    node.process.join(2)
