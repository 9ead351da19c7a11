"""Scenario files: the model and the loader.

A scenario is a TOML file (read with the standard library's tomllib) naming its cluster, its
network, its workload, a timeline of faults and its expectations. The loader checks every key;
a broken file gets a `ScenarioError` naming the file, the line where it can be found, and the key.
See `scenarios/README.md` for the format.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from dtq.effectplan import CRASH_AFTER
from dtq.envelope import COORDINATOR_QUEUE
from dtq.errors import ScenarioError
from dtq.poison import DEFAULT_QUEUE, INJECT_KINDS, MAILBOX, NAMES_A_TASK, QUEUES
from dtq.scenario.faults import FAULT_KEYS, FAULT_WHEN, FAULTS
from dtq.task import TaskRecord, TaskSpec, TaskState
from dtq.taskrun import CRASH_POINTS

TARGET_ROLES = ("leader", "standby", "any-worker", "any-coordinator", "all-workers")


@attrs.frozen(kw_only=True)
class StoreSpec:
    """The store a run starts with, and what its reads cost in the simulator."""

    finished_records: int = 0
    """Succeeded records ("done-0000001", ...) written before the run: a long history."""
    read_us_per_record: int = 0
    """Simulator: virtual time a store read costs per record it returns (the reading node is
    busy that long after its handler). Real stores cost what they cost."""


@attrs.frozen(kw_only=True)
class ClusterSpec:
    coordinators: int = 1
    workers: int = 3
    worker_prefetch: int = 1
    lease_ttl_ms: int = 2000
    detector_timeout_ms: int = 5000
    heartbeat_ms: int = 1000
    task_modules: tuple[str, ...] = ()
    quorum: bool = False
    """Quorum queues: the broker counts what consumers give back and dead-letters a message
    given back too often (`dtq.transport.QUORUM_DELIVERY_LIMIT`); workers hand such a dispatch
    back to the leader on its last delivery. On rabbitmq: the namespace's queues are quorum
    queues. In the simulator: the work queue counts."""


@attrs.frozen(kw_only=True)
class TaskTemplate:
    id: str | None = None
    type: str = "echo"
    payload: Any = None
    deps: tuple[str, ...] = ()
    max_attempts: int = 3
    timeout_ms: int = 60_000
    priority: int = 0
    idempotency_key: str | None = None


@attrs.frozen(kw_only=True)
class WorkloadSpec:
    count: int = 0
    template: TaskTemplate = TaskTemplate()
    interval_ms: int = 0
    start_ms: int = 0
    tasks: tuple[TaskTemplate, ...] = ()
    dag: str | None = None
    dag_size: int = 0
    dag_seed: int | None = None


@attrs.frozen(kw_only=True)
class FaultSpec:
    at_ms: int
    action: str
    target: str | None = None
    duration_ms: int | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ExpectSpec:
    deadline_ms: int = 60_000
    succeeded: int | None = None
    failed: int | None = None
    failover_ms_max: int | None = None
    reassign_ms_max: int | None = None
    stale_writes_refused_min: int | None = None
    settle_ms: int = 1000
    dead_lettered_min: int | None = None
    crashes_max: int | None = None


@attrs.frozen(kw_only=True)
class Scenario:
    name: str
    path: Path
    description: str = ""
    seed: int = 1
    cluster: ClusterSpec = ClusterSpec()
    network: Mapping[str, Any] = attrs.field(factory=dict)
    crash_points: Mapping[str, float | int] = attrs.field(factory=dict)
    workload: WorkloadSpec = WorkloadSpec()
    faults: tuple[FaultSpec, ...] = ()
    expect: ExpectSpec = ExpectSpec()
    transcript: bool = False
    store: StoreSpec = StoreSpec()


# --- loading -----------------------------------------------------------------------------------

NETWORK_KEYS = {"delay_ms": int, "jitter_ms": int, "drop": float, "duplicate": float,
                "reorder": float, "reorder_ms": int, "retransmit_ms": int,
                "broker_heartbeat_ms": int, "stale_read": float, "early_dispatch": float}
CLUSTER_KEYS = {"coordinators": int, "workers": int, "worker_prefetch": int,
                "lease_ttl_ms": int, "detector_timeout_ms": int, "heartbeat_ms": int,
                "tasks": list, "quorum": bool}
TASK_KEYS = {"id": str, "type": str, "payload": object, "deps": list, "max_attempts": int,
             "timeout_ms": int, "priority": int, "idempotency_key": str}
WORKLOAD_KEYS = {"count": int, "interval_ms": int, "start_ms": int, "tasks": list,
                 "dag": str, "dag_size": int, "dag_seed": int, **TASK_KEYS}
EXPECT_KEYS = {"deadline_ms": int, "succeeded": int, "failed": int, "failover_ms_max": int,
               "reassign_ms_max": int, "stale_writes_refused_min": int, "settle_ms": int,
               "dead_lettered_min": int, "crashes_max": int}
STORE_KEYS = {"finished_records": int, "read_us_per_record": int}
TOP_KEYS = {"name": str, "description": str, "seed": int, "cluster": dict, "network": dict,
            "crash_points": dict, "workload": dict, "fault": list, "expect": dict,
            "output": dict, "store": dict}


class _Loader:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def error(self, key: str, message: str) -> ScenarioError:
        line = self._line_of(key)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ScenarioError(f"{where}: {key}: {message}")

    def _line_of(self, key: str) -> int | None:
        parts = [p for p in re.split(r"[.\[\]]", key) if p and not p.isdigit()]
        last = parts[-1] if parts else key
        pattern = re.compile(rf"^\s*(\[+\s*)?{re.escape(last)}\s*(=|\]|\.)")
        for i, line in enumerate(self.lines, 1):
            if pattern.search(line):
                return i
        return None

    def table(self, data: Mapping[str, Any], schema: Mapping[str, type], prefix: str) -> None:
        for key, value in data.items():
            full = f"{prefix}{key}"
            if key not in schema:
                expected = ", ".join(sorted(schema))
                raise self.error(full, f"unknown key (expected one of: {expected})")
            self.typed(full, value, schema[key])

    def typed(self, key: str, value: Any, kind: type) -> None:
        if kind is object:
            return
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            if not 0.0 <= float(value) <= 1.0 and key.split(".")[-1] in (
                    "drop", "duplicate", "reorder", "probability", "stale_read",
                    "early_dispatch", *CRASH_AFTER, *CRASH_POINTS):
                raise self.error(key, f"must be a probability from 0 to 1, not {value}")
            return
        if kind is bool:
            if not isinstance(value, bool):
                raise self.error(key, f"must be true or false, not {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, kind):
            raise self.error(key, f"must be {kind.__name__}, not {type(value).__name__}")
        if isinstance(value, int) and value < 0:
            raise self.error(key, f"must not be negative, not {value}")


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: not valid TOML: {exc}") from exc
    return parse(data, p, text)


def parse(data: Mapping[str, Any], path: Path, text: str = "") -> Scenario:
    ld = _Loader(path, text)
    ld.table(data, TOP_KEYS, "")
    return Scenario(
        name=data.get("name", path.stem), path=path, description=data.get("description", ""),
        seed=data.get("seed", 1), cluster=_cluster(ld, data.get("cluster", {})),
        network=_network(ld, data.get("network", {})),
        crash_points=_crash_points(ld, data.get("crash_points", {})),
        workload=_workload(ld, data.get("workload", {})),
        faults=tuple(_fault(ld, i, f) for i, f in enumerate(data.get("fault", []))),
        expect=_expect(ld, data.get("expect", {})),
        transcript=_output(ld, data.get("output", {})),
        store=_store(ld, data.get("store", {})),
    )


def finished_records(n: int) -> Iterator[TaskRecord]:
    """The `[store] finished_records` a run starts with, in id order."""
    for i in range(1, n + 1):
        spec = TaskSpec(id=f"done-{i:07d}", type="echo", payload=i)
        yield TaskRecord(spec=spec, state=TaskState.SUCCEEDED, attempt=1)


def _store(ld: _Loader, d: Mapping[str, Any]) -> StoreSpec:
    ld.table(d, STORE_KEYS, "store.")
    for key in STORE_KEYS:
        if d.get(key, 0) < 0:
            raise ld.error("store." + key, "must be 0 or more")
    return StoreSpec(**d)


def _cluster(ld: _Loader, d: Mapping[str, Any]) -> ClusterSpec:
    ld.table(d, CLUSTER_KEYS, "cluster.")
    spec = ClusterSpec(**{k: v for k, v in d.items() if k != "tasks"},
                       task_modules=tuple(d.get("tasks", ())))
    if spec.coordinators < 1:
        raise ld.error("cluster.coordinators", "needs at least 1 coordinator")
    if spec.workers < 1:
        raise ld.error("cluster.workers", "needs at least 1 worker")
    return spec


def _network(ld: _Loader, d: Mapping[str, Any]) -> dict[str, Any]:
    ld.table(d, NETWORK_KEYS, "network.")
    return dict(d)


def _crash_points(ld: _Loader, d: Mapping[str, Any]) -> dict[str, float]:
    ld.table(d, {**dict.fromkeys((*CRASH_AFTER, *CRASH_POINTS), float), "until_ms": int},
             "crash_points.")
    return {k: (int(v) if k == "until_ms" else float(v)) for k, v in d.items()}


def _task(ld: _Loader, d: Any, prefix: str) -> TaskTemplate:
    if not isinstance(d, Mapping):
        raise ld.error(prefix.rstrip("."), "must be a table")
    ld.table(d, TASK_KEYS, prefix)
    return TaskTemplate(**{**d, "deps": tuple(d.get("deps", ()))})


def _workload(ld: _Loader, d: Mapping[str, Any]) -> WorkloadSpec:
    ld.table(d, WORKLOAD_KEYS, "workload.")
    template = _task(ld, {k: v for k, v in d.items() if k in TASK_KEYS}, "workload.")
    tasks = tuple(_task(ld, t, f"workload.tasks[{i}].") for i, t in enumerate(d.get("tasks", [])))
    dag = d.get("dag")
    if dag is not None and dag not in ("diamond", "chain", "random", "fan"):
        raise ld.error("workload.dag", "must be one of: diamond, chain, random, fan")
    return WorkloadSpec(count=d.get("count", 0), template=template,
                        interval_ms=d.get("interval_ms", 0), start_ms=d.get("start_ms", 0),
                        tasks=tasks, dag=dag, dag_size=d.get("dag_size", 0),
                        dag_seed=d.get("dag_seed"))


def _fault(ld: _Loader, i: int, d: Any) -> FaultSpec:
    prefix = f"fault[{i}]."
    if not isinstance(d, Mapping):
        raise ld.error(f"fault[{i}]", "must be a table ([[fault]])")
    ld.table(d, FAULT_KEYS, prefix)
    for required in ("at", "action"):
        if required not in d:
            raise ld.error(prefix + required, "is required")
    if d["action"] not in FAULTS:
        raise ld.error(prefix + "action", f"unknown action {d['action']!r} (expected one of: "
                       f"{', '.join(sorted(FAULTS))})")
    if "when" in d and d["when"] not in FAULT_WHEN:
        raise ld.error(prefix + "when", f"unknown condition {d['when']!r} (expected one of: "
                       f"{', '.join(sorted(FAULT_WHEN))})")
    if d["action"] == "inject":
        _inject(ld, prefix, d)
    params = {k: v for k, v in d.items() if k not in ("at", "action", "target", "duration")}
    return FaultSpec(at_ms=d["at"], action=d["action"], target=d.get("target"),
                     duration_ms=d.get("duration"), params=params)


def _inject(ld: _Loader, prefix: str, d: Mapping[str, Any]) -> None:
    """`inject`: `message` names a kind of poison, `queue` where it goes (a mailbox is the
    target's), `count` how many (at least 1)."""
    kinds = "; ".join(f"{k} ({v})" for k, v in INJECT_KINDS.items())
    if "message" not in d:
        raise ld.error(prefix + "message", f"'inject' needs the kind of message: one of {kinds}")
    if d["message"] not in INJECT_KINDS:
        raise ld.error(prefix + "message", f"unknown kind {d['message']!r} (expected one of: "
                       f"{', '.join(INJECT_KINDS)})")
    queue = d.get("queue", DEFAULT_QUEUE.get(d["message"], COORDINATOR_QUEUE))
    if queue not in QUEUES:
        raise ld.error(prefix + "queue", f"unknown queue {queue!r} (expected one of: "
                       f"{', '.join(QUEUES)}; \"mailbox\" is the target node's own)")
    if queue == MAILBOX and "target" not in d:
        raise ld.error(prefix + "target", "queue = \"mailbox\" needs a target: the node (or a "
                       "role, like leader or all-workers) whose mailbox gets the messages")
    if queue != MAILBOX and "target" in d:
        raise ld.error(prefix + "target", f"the {queue} queue belongs to no node: leave the "
                       "target out, or use queue = \"mailbox\" to reach a node's own")
    if d.get("count", 1) < 1:
        raise ld.error(prefix + "count", "must be at least 1")
    if (d["message"] in NAMES_A_TASK) != ("task" in d):
        raise ld.error(prefix + "task", f"{d['message']!r} names no task" if "task" in d else
                       f"{d['message']!r} needs the id of a task of the workload (task = ...)")


def _expect(ld: _Loader, d: Mapping[str, Any]) -> ExpectSpec:
    ld.table(d, EXPECT_KEYS, "expect.")
    return ExpectSpec(**d)


def _output(ld: _Loader, d: Mapping[str, Any]) -> bool:
    ld.table(d, {"transcript": bool}, "output.")
    return bool(d.get("transcript", False))
