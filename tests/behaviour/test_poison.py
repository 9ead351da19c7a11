"""Poison: the `inject` fault sends malformed and forged messages on both backends; what does
not decode is dead-lettered with a record through the production decoder, forged submissions
end refused with a reason, and nothing crashes because of a message."""

from __future__ import annotations

import json
import threading
import types
import uuid
from pathlib import Path
from typing import Any

import attrs
import pytest

from dtq.actor import Actor, Context, receive
from dtq.cli.main import main
from dtq.clock import VectorClock
from dtq.envelope import (
    Cancel,
    Codec,
    Completed,
    Dispatch,
    Envelope,
    Heartbeat,
    Message,
    Submit,
)
from dtq.errors import ScenarioError
from dtq.history import History
from dtq.poison import (
    FORGED_EPOCH,
    INJECT_KINDS,
    DeadLetter,
    decode_delivery,
    expectation_texts,
    forge,
    poison_summary,
    poison_violations,
    summary_lines,
)
from dtq.runtime.node import EXIT_ACTOR, ProcessRuntime
from dtq.scenario.model import load
from dtq.scenario.real import wait_for
from dtq.scenario.sim import run_memory
from dtq.transport import DEAD_QUEUE, queue_name
from transports.memory_store import SimStore
from transports.rabbitmq import RabbitTransport, blocking, delete_namespace

ROOT = Path(__file__).resolve().parents[2]
POISON = ROOT / "scenarios/poison-messages.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "inject.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(("fault", "key", "says"), [
    ("", "fault[0].message", "needs the kind of message"),
    ("message = 'rude'", "fault[0].message", "unknown kind 'rude'"),
    ("message = 'undecodable'\nqueue = 'dead'", "fault[0].queue", "unknown queue 'dead'"),
    ("message = 'undecodable'\nqueue = 'mailbox'", "fault[0].target", "needs a target"),
    ("message = 'undecodable'\ntarget = 'worker-1'", "fault[0].target", "belongs to no node"),
    ("message = 'undecodable'\ncount = 0", "fault[0].count", "at least 1"),
    ("message = 'undecodable'\ncount = 'two'", "fault[0].count", "must be int"),
    ("message = 'completed_forged'", "fault[0].task", "needs the id of a task"),
    ("message = 'cancel_unknown'\ntask = 'task-00001'", "fault[0].task", "names no task"),
])
def test_a_wrong_inject_fault_is_refused_naming_the_key(
    tmp_path: Path, fault: str, key: str, says: str,
) -> None:
    path = write(tmp_path, f"[[fault]]\nat = 10\naction = 'inject'\n{fault}\n")
    with pytest.raises(ScenarioError) as err:
        load(path)
    assert key in str(err.value) and says in str(err.value), str(err.value)


def test_every_kind_is_forged_the_same_way_and_decodes_as_documented() -> None:
    codec = Codec()
    decoded = {k: decode_delivery(codec, forge(k, 1, target="coordinator").body,
                                  redelivered=False) for k in INJECT_KINDS}
    dead = {k for k, d in decoded.items() if isinstance(d, DeadLetter)}
    assert dead == {"undecodable", "wrong_shape", "unknown_kind", "missing_body"}
    bodies = {k: d.body for k, d in decoded.items() if isinstance(d, Envelope)}
    specs = {k: b.spec for k, b in bodies.items() if isinstance(b, Submit)}
    assert specs["submit_priority"].priority == 999
    assert specs["submit_wrong_types"].to_json()["type"] == 5  # (the leader refuses it)
    assert specs["submit_self_dependency"].deps == (specs["submit_self_dependency"].id,)
    assert len(json.dumps(specs["submit_huge_payload"].payload)) > 1024 * 1024
    assert isinstance(bodies["dispatch_epoch"], Dispatch)
    dispatch = decoded["dispatch_epoch"]
    assert isinstance(dispatch, Envelope) and dispatch.epoch == FORGED_EPOCH
    assert isinstance(bodies["completed_unknown"], Completed)
    assert isinstance(bodies["heartbeat_unknown"], Heartbeat)
    assert isinstance(bodies["cancel_unknown"], Cancel)
    assert forge("submit_priority", 3, target="coordinator") == \
        forge("submit_priority", 3, target="coordinator")


def test_the_simulator_dead_letters_undecodable_bytes_with_the_production_decoder(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, """
[cluster]
workers = 2
[workload]
count = 4
interval_ms = 100
[[fault]]
at = 150
action = "inject"
message = "undecodable"
queue = "work"
[[fault]]
at = 150
action = "inject"
message = "unknown_kind"
queue = "mailbox"
target = "worker-2"
[expect]
succeeded = 4
dead_lettered_min = 2
crashes_max = 0
""")
    result = run_memory(load(path))
    assert result.ok, result.summary["violations"]
    dead = [e for e in result.events if e.kind == "dead_lettered"]
    codec = Codec()
    want = {d.reason for k in ("undecodable", "unknown_kind")
            if isinstance(d := decode_delivery(codec, forge(k, 1, target="work").body,
                                               redelivered=False), DeadLetter)}
    assert {e.data["reason"] for e in dead} == want
    assert {e.actor for e in dead} <= {"worker-1", "worker-2"}
    assert result.summary["injected"]["dead_lettered"] == 2


def test_poison_messages_on_the_simulator() -> None:
    result = run_memory(load(POISON))
    s = result.summary
    assert result.ok, s["violations"]
    assert s["tasks"]["succeeded"] == 40 and s["tasks"]["failed"] == 5
    injected = s["injected"]
    assert injected["sent"] == 18 and injected["dead_lettered"] >= 5
    assert all(end.startswith("rejected: ") for end in injected["submissions"].values())
    assert not [e for e in result.events if e.kind in ("crash", "abdicated")]
    assert "5 of 5 forged submissions refused" in summary_lines(s)[0]
    assert injected["crashes"] == 0
    assert expectation_texts(s, 5, 0) == ["dead-lettered 5 (expected at least 5)",
                                          "crashes 0 (at most 0)"]


def _history(*events: tuple[str, str, dict[str, Any]]) -> History:
    h = History(lambda: 0)
    for actor, kind, data in events:
        h.record(actor, kind, VectorClock(), data)
    return h


def test_a_forged_submission_that_succeeds_or_ends_without_a_reason_is_a_violation() -> None:
    inject = ("intruder", "inject", {"message": "submit_priority", "task": "t"})
    for end, bad in [(("leader", "succeeded", {"task": "t"}), True),
                     (("leader", "rejected", {"task": "t"}), True),
                     (("leader", "rejected", {"task": "t", "reason": "priority"}), False)]:
        events = _history(inject, end).events
        found = poison_violations(events, dead_lettered_min=None, crashes_max=None)
        assert [v["invariant"] for v in found] == (["poison_refused"] if bad else []), end
    assert poison_summary(_history(inject).events)["injected"]["submissions"] == {
        "t": "never ended"}


def test_a_success_recorded_on_a_forged_completion_is_a_violation() -> None:
    inject = ("intruder", "inject", {"message": "completed_forged", "about": "t"})
    forged = _history(inject, ("leader", "succeeded", {"task": "t"}),
                      ("w", "effect", {"task": "t"})).events
    found = poison_violations(forged, dead_lettered_min=None, crashes_max=None)
    assert [v["invariant"] for v in found] == ["poison_refused"], found
    h = History(lambda: 0)
    h.record("intruder", "inject", VectorClock(), inject[2])
    h.record("w", "effect", VectorClock.of({"w": 1}), {"task": "t"})
    h.record("leader", "succeeded", VectorClock.of({"w": 1, "leader": 1}), {"task": "t"})
    assert poison_violations(h.events, dead_lettered_min=None, crashes_max=None) == []


FORGED_REPORT = """
[cluster]
workers = 2
[workload]
count = 6
type = "sleep"
payload = { ms = 500 }
interval_ms = 10
[[fault]]
at = 100
action = "inject"
message = "{kind}"
task = "task-00006"
[expect]
succeeded = 6
"""


@pytest.mark.parametrize("kind", ["completed_forged", "failed_forged"])
def test_a_forged_report_of_a_real_tasks_end_is_not_believed(tmp_path: Path, kind: str) -> None:
    result = run_memory(load(write(tmp_path, FORGED_REPORT.replace("{kind}", kind))))
    assert result.ok, result.summary["violations"]
    [refused] = [e for e in result.events if e.kind == "forged_completion_refused"]
    assert refused.data["task"] == "task-00006"


@pytest.mark.parametrize("kind", ["completed_forged", "failed_forged"])
def test_without_the_token_check_a_forged_report_is_believed(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("dtq.coordinator.hmac",
                        types.SimpleNamespace(compare_digest=lambda a, b: True))
    result = run_memory(load(write(tmp_path, FORGED_REPORT.replace("{kind}", kind))))
    assert not result.ok


def test_dead_letters_and_crashes_are_held_to_their_bounds() -> None:
    events = _history(("w", "dead_lettered", {"reason": "x"}),
                      ("c1", "crash", {"reason": "killed by scenario"}),
                      ("c2", "crash", {"reason": "exited with status 5"}),
                      ("c2", "abdicated", {"reason": "lease lost"})).events
    assert poison_violations(events, dead_lettered_min=1, crashes_max=2) == []
    found = poison_violations(events, dead_lettered_min=2, crashes_max=1)
    assert len(found) == 2 and "dead_lettered_min = 2, but 1" in found[0]["detail"]
    assert "crashes_max = 1, but" in found[1]["detail"] and "c2" in found[1]["detail"]
    assert "c1" not in found[1]["detail"]


@attrs.frozen(kw_only=True)
class Boom(Message):
    """A message whose handler always raises."""


@attrs.frozen(kw_only=True)
class Stop(Message):
    pass


class _Fragile(Actor):
    def on_start(self, ctx: Context) -> None:
        ctx.send(self.name, Boom())

    @receive(Boom)
    def on_boom(self, msg: Boom, ctx: Context) -> None:
        raise RuntimeError("this handler always fails")

    @receive(Stop)
    def on_stop(self, msg: Stop, ctx: Context) -> None:
        ctx.exit("stopped")


@pytest.mark.rabbitmq
def test_a_message_whose_handler_keeps_failing_is_dead_lettered_with_a_record(
    rabbitmq_url: str,
) -> None:
    ns = f"test-poison-{uuid.uuid4().hex[:8]}"
    records: list[tuple[str, dict[str, Any]]] = []
    runtime = ProcessRuntime(
        _Fragile("fragile"), store=SimStore(),
        transport=RabbitTransport(rabbitmq_url, namespace=ns, name="fragile"),
        record=lambda actor, kind, clock, data: records.append((kind, dict(data))))
    code: list[int] = []
    thread = threading.Thread(target=lambda: code.append(runtime.run()), daemon=True)
    thread.start()
    try:
        wait_for(lambda: any(k == "dead_lettered" for k, _ in records), 30, "a dead letter")
        dead = [data for kind, data in records if kind == "dead_lettered"]
        assert len(dead) == 1 and "failed 3 times" in dead[0]["reason"]
        assert "always fails" in dead[0]["reason"]
        with blocking(rabbitmq_url) as ch:
            _, _, body = ch.basic_get(queue_name(ns, DEAD_QUEUE), auto_ack=True)
            assert body is not None and b'"Boom"' in body
            env = Envelope(id="stop", sender="test", target="fragile", body=Stop())
            ch.basic_publish("", queue_name(ns, "fragile"), Codec().encode(env))
        thread.join(30)
        assert code == [EXIT_ACTOR]
    finally:
        delete_namespace(rabbitmq_url, ns, ["fragile"])


@pytest.mark.rabbitmq
def test_poison_messages_on_rabbitmq(
    rabbitmq_url: str, redis_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["scenario", "run", str(POISON), "--transport", "rabbitmq", "--json"])
    s = json.loads(capsys.readouterr().out)
    assert code == 0, s["violations"]
    assert s["tasks"]["succeeded"] == 40 and s["tasks"]["failed"] == 5
    assert s["injected"]["sent"] == 18 and s["injected"]["dead_lettered"] >= 5
    assert all(end.startswith("rejected: ") for end in s["injected"]["submissions"].values())
