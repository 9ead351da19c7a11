"""Nodes as OS processes: the entry point of one node, and the supervisor of many.

`run_node` builds one actor (coordinator or worker) with its transport, store and history and
runs it until it stops. `Supervisor` starts nodes as separate processes (multiprocessing, spawn),
restarts those that exit on their own (crash-only: a fenced-out leader comes back as a standby),
and can kill, pause, resume and restart them for scenarios.
"""

from __future__ import annotations

import contextlib
import multiprocessing
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

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_STORE_URL = "redis://127.0.0.1:6379/0"


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
    concurrency: int = 1
    prefetch: int | None = None
    """Dispatches a worker holds at once (default: its concurrency)."""
    task_modules: tuple[str, ...] = ()
    lease_ttl_ms: int = 2000
    detector_timeout_ms: int = 5000
    heartbeat_ms: int = 1000
    log_level: str | None = None
    io_root: str = "."
    result_ttl_ms: int | None = None
    dispatch_bundle: int = 8
    """(Leader) up to this many dispatches published together share one broker message (a
    burst of 32 or more; see `transports.rabbitmq`, "Work bundles"). 1: one each."""
    quorum: bool = False
    """Declare quorum queues (for clustered RabbitMQ) instead of classic ones."""
    trace: bool = False
    """Record every send and receive in the history too (for space-time diagrams)."""


def build_actor(cfg: NodeConfig) -> Any:
    from dtq.coordinator import Coordinator, CoordinatorConfig
    from dtq.tasktypes import load_task_types
    from dtq.worker import Worker

    if cfg.role == "coordinator":
        return Coordinator(cfg.name, CoordinatorConfig(
            lease_ttl_ms=cfg.lease_ttl_ms, detector_timeout_ms=cfg.detector_timeout_ms))
    if cfg.role == "worker":
        return Worker(cfg.name, load_task_types(cfg.task_modules),
                      result_ttl_ms=cfg.result_ttl_ms, heartbeat_ms=cfg.heartbeat_ms,
                      concurrency=cfg.concurrency)
    raise ValueError(f"unknown role {cfg.role!r}")


def _prefetch(cfg: NodeConfig) -> dict[str, int]:
    from dtq.envelope import WORK_QUEUE

    return {WORK_QUEUE: cfg.prefetch} if cfg.prefetch else {}


def run_node(cfg: NodeConfig) -> int:
    """Run one node in this process until it stops; return its exit status."""
    from dtq.logs import configure_logging
    from dtq.runtime import ProcessRuntime, RuntimeOptions
    from transports.rabbitmq import RabbitTransport
    from transports.redis import RedisHistory, RedisStore

    configure_logging(cfg.log_level, default="info")
    log = structlog.get_logger("dtq").bind(actor=cfg.name)
    store = RedisStore.from_url(cfg.store_url, prefix=cfg.namespace)
    history = RedisHistory.from_url(cfg.store_url, prefix=cfg.namespace) if cfg.history else None
    lock = threading.Lock()

    def record(actor: str, kind: str, clock: Any, data: Mapping[str, Any]) -> None:
        if history is not None:
            with lock:
                history.record(actor, kind, clock, data)

    transport = RabbitTransport(cfg.broker_url, namespace=cfg.namespace, name=cfg.name, log=log,
                                quorum=cfg.quorum, work_bundle=cfg.dispatch_bundle)
    runtime = ProcessRuntime(build_actor(cfg), transport=transport, store=store, record=record,
                             options=RuntimeOptions(concurrency=cfg.concurrency,
                                                    io_root=cfg.io_root, trace=cfg.trace,
                                                    prefetch=_prefetch(cfg)))
    log.info("starting", role=cfg.role, pid=os.getpid(), namespace=cfg.namespace)
    try:
        return runtime.run()
    finally:
        if history is not None:
            with contextlib.suppress(Exception):
                history.close()


def _child(cfg: NodeConfig) -> None:
    from dtq.bench.stages import install_from_environment
    from dtq.errors import DtqError

    install_from_environment()
    try:
        code = run_node(cfg)
    except DtqError as exc:
        print(f"dtq {cfg.name}: error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


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
        """Restart nodes that exited on their own; return their names."""
        restarted = []
        now = time.monotonic()
        for name, node in self.nodes.items():
            p = node.process
            if not node.wanted or p is None or p.is_alive():
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
        node = self.nodes[name]
        if node.process is not None and node.process.pid and not node.paused:
            os.kill(node.process.pid, signal.SIGSTOP)
            node.paused = True

    def resume(self, name: str) -> None:
        node = self.nodes[name]
        if node.process is not None and node.process.pid and node.paused:
            os.kill(node.process.pid, signal.SIGCONT)
            node.paused = False

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
