"""The fault table: every kind of fault a scenario can play, in one place.

Each `FaultKind` says what the fault does, whether it needs (or refuses) a target, the
parameters it must have, whether a `duration` undoes it, whether it acts on a node's links,
and which backends cannot play it and why. The loader (`dtq.scenario.model`), the checks run
before a run (`check_supported`), both runners and `dtq scenario faults` read it.

A runner plays faults through a `FaultTarget`: it resolves targets, tells whether a `when`
condition holds, records the `fault` event, schedules later steps, and has one method per fault
kind, named as the kind. `play` is the one way a fault is played, on either backend.
Adding a kind means: an entry in `FAULTS`, a method in `FaultTarget`, and that method on the
simulator (`dtq.scenario.sim.SimFaults`) and the real runner (`dtq.scenario.real.RealRun`), or
a refusal in the entry for a backend that cannot play it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from transports.memory import BROKER, STORE

if TYPE_CHECKING:
    from dtq.scenario.model import FaultSpec

Undo = Callable[[], None] | None
"""What a fault handler returns: how to undo the fault after its `duration`, or None."""
Refusal = Callable[["FaultSpec"], str | None]
"""Why a backend cannot play a fault (a sentence), or None when it can."""

BACKENDS = ("memory", "rabbitmq", "testbed")
"""Where a scenario can run: the simulator; real processes over one RabbitMQ and one Redis,
each node behind fault proxies; real processes on the local cluster testbed (`dtq testbed`:
three RabbitMQ nodes, a Redis primary with a replica behind Sentinels), reached directly."""
LINKS = (BROKER, STORE)
RESET_MS = 1000
"""How long a `reset_peer` without `duration` keeps resetting the target's connections."""
SLICER_DEFAULTS = {"average_size": 64, "size_variation": 32, "delay": 1000}
"""Slicer pieces of about 64 bytes (± 32), with a pause of 1000 µs after each."""

FAULT_KEYS = {"at": int, "action": str, "target": str, "duration": int, "from": list,
              "message": str, "queue": str, "count": int, "task": str,
              "latency": int, "jitter": int, "probability": float, "rate": int,
              "timeout": int, "average_size": int, "size_variation": int, "delay": int,
              "when": str, "node": int}
"""Every key a `[[fault]]` may have, and its type."""
FAULT_WHEN = {"busy": "wait, from `at` on, until every target runs a task, then fire",
              "accepted": "wait, from `at` on, until a leader has accepted every task of the "
                          "workload, then fire"}


@attrs.frozen(kw_only=True)
class FaultKind:
    """One kind of fault (an `action` of a `[[fault]]`)."""

    name: str
    doc: str
    target: str = "optional"
    """"required" (a node or a role), "optional" (without one: every node) or "none"."""
    required: tuple[str, ...] = ()
    """Parameters the fault cannot do without."""
    undoable: bool = False
    """`duration` undoes it (restart, resume, heal, remove the slowdown...)."""
    default_duration_ms: int | None = None
    """How long it lasts without a `duration` (None: until something undoes it)."""
    link: bool = False
    """Acts on a node's links: `from` names them ("broker", "store" or both)."""
    refused: Mapping[str, Refusal] = attrs.field(factory=dict)
    """Backend -> why it cannot play this fault (None from the rule: it can, this time)."""

    def refusal(self, backend: str, fault: FaultSpec) -> str | None:
        rule = self.refused.get(backend)
        return rule(fault) if rule is not None else None

    def unsupported(self, backend: str) -> bool:
        """The backend never plays this kind (it has no handler there)."""
        return self.refusal(backend, self.bare()) is not None

    def bare(self) -> FaultSpec:
        """A fault of this kind with no target and no parameters."""
        from dtq.scenario.model import FaultSpec

        return FaultSpec(at_ms=0, action=self.name)


def _store_link_refused(f: FaultSpec) -> str | None:
    if STORE in f.params.get("from", [BROKER]):
        return ("the simulated store answers at once, so its link cannot be slowed; slow the "
                "broker link (from = [\"broker\"]) or cut the store (partition)")
    return None


_ADVICE = {
    "duplicate": "To make the broker deliver a message twice, reset a worker's connection "
                 "while it holds tasks (reset_peer or drop_connection)",
    "drop": "To hold messages back, cut a node from the broker (partition): its publishes "
            "wait unconfirmed and are sent again",
    "reorder": "To delay some messages more than others, add latency with jitter to some "
               "nodes' links",
}


def simulator_knob(knob: str) -> str:
    """Why the rabbitmq backend cannot play a knob of the simulated network."""
    advice = _ADVICE.get(knob, "Play it on the memory backend")
    return (f"{knob} is a knob of the simulator: it makes the simulated network or store "
            f"misbehave in a way RabbitMQ and Redis over TCP do not by themselves. {advice}")


def _knob_refused(knob: str) -> Refusal:
    return lambda f: simulator_knob(knob)


def _node_partition(f: FaultSpec) -> str | None:
    names = [x for x in f.params.get("from", [BROKER]) if x not in LINKS]
    if not names:
        return None
    return (f"nodes never talk to each other directly over RabbitMQ, so there is no link to "
            f"cut between them and {', '.join(map(repr, names))}; cut the node from the broker "
            f"(from = [\"broker\"]) or the store (from = [\"store\"]) instead")


def _testbed_only(f: FaultSpec) -> str | None:
    return (f"{f.action} acts on the services of the local cluster testbed (several RabbitMQ "
            "nodes, Redis behind Sentinels); run the scenario there: `dtq testbed up --dir "
            "DIR`, then `dtq scenario run FILE --transport rabbitmq --testbed DIR`")


def _no_proxy(f: FaultSpec) -> str | None:
    return (f"{f.action} needs the fault proxies in front of one RabbitMQ and one Redis; on the "
            "testbed the nodes reach the services directly (its faults are kill_broker_node, "
            "restart_broker_node, redis_failover and kill_redis_primary, and kill, pause and "
            "restart of nodes)")


_PROXIED = {"testbed": _no_proxy}


def _kinds(*kinds: FaultKind) -> dict[str, FaultKind]:
    return {k.name: k for k in kinds}


_SLOW = {"memory": _store_link_refused, **_PROXIED}
_TESTBED = {"rabbitmq": _testbed_only}

FAULTS = _kinds(
    FaultKind(name="kill", target="required", undoable=True,
              doc="stop a node at once (SIGKILL); with `duration`, restart it afterwards"),
    FaultKind(name="crash", target="required", undoable=True, doc="the same as kill"),
    FaultKind(name="restart", target="required", doc="start a killed node again"),
    FaultKind(name="pause", target="required", undoable=True,
              doc="freeze a node (SIGSTOP); with `duration`, resume it afterwards"),
    FaultKind(name="resume", target="required", doc="unfreeze a paused node (SIGCONT)"),
    FaultKind(name="partition", undoable=True,
              refused={"rabbitmq": _node_partition, **_PROXIED},
              doc="cut the target from `from` (default: the broker); with `duration`, heal "
                  "after"),
    FaultKind(name="heal", doc="remove every partition"),
    FaultKind(name="drop_connection", refused=_PROXIED,
              doc="the broker closes the target's connection (it reconnects)"),
    FaultKind(name="latency", required=("latency",), undoable=True, link=True, refused=_SLOW,
              doc="add `latency` ms (and `jitter` ms) to every message; with `duration`, "
                  "undo after"),
    FaultKind(name="duplicate", required=("probability",), undoable=True,
              refused={"rabbitmq": _knob_refused("duplicate"),
                       "testbed": _knob_refused("duplicate")},
              doc="duplicate messages with probability `probability`"),
    FaultKind(name="drop", required=("probability",), undoable=True,
              refused={"rabbitmq": _knob_refused("drop"),
                       "testbed": _knob_refused("drop")},
              doc="drop messages with probability `probability` (publishers retransmit)"),
    FaultKind(name="reorder", required=("probability",), undoable=True,
              refused={"rabbitmq": _knob_refused("reorder"),
                       "testbed": _knob_refused("reorder")},
              doc="reorder messages with probability `probability`"),
    FaultKind(name="bandwidth", required=("rate",), undoable=True, link=True, refused=_SLOW,
              doc="limit the target's links to `rate` KB/s (the simulator: a delay per "
                  "message)"),
    FaultKind(name="slicer", undoable=True, link=True, refused=_SLOW,
              doc="slice the target's TCP stream into small pieces (the simulator: a small "
                  "delay)"),
    FaultKind(name="reset_peer", undoable=True, default_duration_ms=RESET_MS, link=True,
              refused=_PROXIED,
              doc="reset the target's connections (the simulator: drops its connection)"),
    FaultKind(name="lose_store_data", target="none", refused=_PROXIED,
              doc="the store restarts without persistence: every key of the run's namespace "
                  "is gone and its store connections are dropped (no target)"),
    FaultKind(name="inject", refused=_PROXIED,
              doc="publish `count` malformed or forged messages of kind `message` to `queue`"),
    FaultKind(name="kill_broker_node", target="none", undoable=True, refused=_TESTBED,
              doc="kill -9 RabbitMQ node `node` (1-3, default 1: the first address, which "
                  "every process tries first; they fail over to another, and quorum queues "
                  "keep what they confirmed); with `duration`, start it again after (the "
                  "simulator: every node's broker connection drops and comes back after a "
                  "second)"),
    FaultKind(name="restart_broker_node", target="none", refused=_TESTBED,
              doc="start every RabbitMQ node killed by kill_broker_node again (the simulator: "
                  "nothing changes for the nodes)"),
    FaultKind(name="redis_failover", target="none", refused=_TESTBED,
              doc="SENTINEL FAILOVER: the replica becomes the primary, the old primary its "
                  "replica (the simulator: every node is cut from the store for "
                  "2 s, and keeps every acknowledged write)"),
    FaultKind(name="kill_redis_primary", target="none", undoable=True,
              default_duration_ms=1000, refused=_TESTBED,
              doc="kill -9 the Redis primary: the Sentinels promote the replica; after "
                  "`duration` (default 1 s) the old primary starts again, as the new one's "
                  "replica (the simulator: every node is cut from the store for 5 s)"),
)
"""Every kind of fault, by name."""


def bad_params(f: FaultSpec) -> tuple[str, str] | None:
    """A (key, problem) pair for a fault whose parameters make no sense on any backend."""
    kind = FAULTS[f.action]
    if kind.target == "required" and f.target is None:
        return "target", f"{f.action!r} needs a target (a node name, or a role like leader)"
    if kind.target == "none" and f.target is not None:
        return "target", f"{f.action!r} acts on the whole store: it takes no target"
    for key in kind.required:
        if key not in f.params:
            return key, f"{f.action!r} needs `{key}`"
    links = f.params.get("from", [BROKER])
    if not all(isinstance(x, str) for x in links):
        return "from", "must be a list of names, like [\"broker\"] or [\"store\"]"
    if kind.link and not set(links) <= set(LINKS):
        return "from", f"{f.action!r} acts on a node's links: \"broker\", \"store\" or both"
    if "node" in f.params and (f.action != "kill_broker_node" or f.params["node"] not in (1, 2, 3)):
        return "node", "only kill_broker_node takes a `node`: 1, 2 or 3 (the testbed's nodes)"
    if f.action == "bandwidth" and f.params["rate"] < 1:
        return "rate", "must be at least 1 KB/s (to cut a link, use partition)"
    slicer = {**SLICER_DEFAULTS, **f.params}
    if f.action == "slicer" and not 0 <= slicer["size_variation"] < slicer["average_size"]:
        return "size_variation", "must be smaller than average_size"
    return None


def undo_after_ms(f: FaultSpec) -> int | None:
    """How long after it fires a fault is undone (its `duration`, or its kind's default)."""
    return f.duration_ms or FAULTS[f.action].default_duration_ms


class FaultTarget(Protocol):
    """What a runner gives `play`: one method per fault kind, each `(fault, targets) -> Undo`,
    and what playing a fault needs around it."""

    def targets(self, fault: FaultSpec) -> list[str]:
        """The fault's target resolved now: node names (none for a fault without one)."""

    def busy(self, targets: list[str]) -> bool:
        """`when = "busy"`: every target is running a task."""

    def accepted(self) -> bool:
        """`when = "accepted"`: a leader has accepted every task of the workload."""

    def too_late(self) -> bool:
        """The deadline has come: a fault waiting for its `when` fires anyway."""

    def later(self, fault: FaultSpec) -> None:
        """Play the fault again at the next step (its `when` does not hold yet)."""

    def record_fault(self, fault: FaultSpec, data: Mapping[str, Any]) -> None:
        """Record the `fault` event with `data` (and report it)."""

    def after(self, delay_ms: int, undo: Callable[[], None]) -> None:
        """Run `undo` `delay_ms` after now."""

    def kill(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def crash(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def restart(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def pause(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def resume(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def partition(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def heal(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def drop_connection(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def latency(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def duplicate(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def drop(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def reorder(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def bandwidth(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def slicer(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def reset_peer(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def lose_store_data(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def inject(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def kill_broker_node(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def restart_broker_node(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def redis_failover(self, fault: FaultSpec, targets: list[str]) -> Undo: ...
    def kill_redis_primary(self, fault: FaultSpec, targets: list[str]) -> Undo: ...


Handler = Callable[["FaultSpec", list[str]], Undo]


def handler(target: FaultTarget, action: str) -> Handler:
    """The target's method for a fault kind of the table."""
    kind = FAULTS[action]
    fn: Handler = getattr(target, kind.name)
    return fn


def play(target: FaultTarget, fault: FaultSpec) -> None:
    """Play one fault of the timeline on `target`: resolve its targets; while its `when` does
    not hold (and the deadline has not come) try again at the next step; record the `fault`
    event; apply it; schedule its undo after its duration."""
    targets = target.targets(fault)
    when = fault.params.get("when")
    not_yet = (when == "busy" and not target.busy(targets)) \
        or (when == "accepted" and not target.accepted())
    if not_yet and not target.too_late():
        target.later(fault)
        return
    target.record_fault(fault, {"action": fault.action, "targets": targets,
                                "duration_ms": fault.duration_ms})
    undo = handler(target, fault.action)(fault, targets)
    delay = undo_after_ms(fault)
    if undo is not None and delay:
        target.after(delay, undo)


def describe() -> list[str]:
    """`dtq scenario faults`: every kind, what it does, what it needs, where it is refused."""
    lines = []
    for kind in FAULTS.values():
        needs = [f"target {kind.target}" if kind.target != "optional" else "",
                 *(f"`{p}`" for p in kind.required),
                 "`from`" if kind.link or kind.name == "partition" else "",
                 "`duration` undoes it" if kind.undoable else ""]
        lines.append(f"{kind.name:<16} {kind.doc}")
        facts = ", ".join(x for x in needs if x)
        if facts:
            lines.append(f"{'':<16}   needs/takes: {facts}")
        for backend in BACKENDS:
            if kind.unsupported(backend):
                lines.append(f"{'':<16}   not on {backend}: "
                             f"{kind.refusal(backend, kind.bare())}")
            elif backend in kind.refused:
                lines.append(f"{'':<16}   on {backend}: refused with some settings (the error "
                             "says why)")
    lines += ["", "when (any kind):"]
    lines += [f"  {name:<10} {doc}" for name, doc in FAULT_WHEN.items()]
    return lines
