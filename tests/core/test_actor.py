"""The actor framework: handlers by message class, timers as messages, holds and acks."""

from __future__ import annotations

import attrs

from dtq.actor import Actor, ActorCell, Context, receive
from dtq.clock import VectorClock
from dtq.envelope import Envelope, Message
from dtq.history import History
from transports.memory import SimStore, Simulation


@attrs.frozen(kw_only=True)
class Ping(Message):
    n: int


@attrs.frozen(kw_only=True)
class LoudPing(Ping):
    pass


@attrs.frozen(kw_only=True)
class Tick(Message):
    n: int


class Echoer(Actor):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.seen: list[str] = []

    @receive(Ping)
    def on_ping(self, msg: Ping, ctx: Context) -> None:
        self.seen.append(f"ping {msg.n}")
        ctx.record("pinged", n=msg.n)
        ctx.schedule(100, Tick(n=msg.n))

    @receive(Tick)
    def on_tick(self, msg: Tick, ctx: Context) -> None:
        self.seen.append(f"tick {msg.n} at {ctx.now_ms}")
        ctx.send("other", Ping(n=msg.n + 1))


def cell_for(actor: Actor) -> ActorCell:
    history = History(lambda: 0)
    return ActorCell(actor, store=SimStore(), rng=__import__("random").Random(1),
                     record=history.record, new_id=lambda: "id")


def test_handler_chosen_by_message_class_and_subclass() -> None:
    actor = Echoer("e")
    cell = cell_for(actor)
    env = Envelope(id="1", sender="x", target="e", body=LoudPing(n=7))
    fx = cell.deliver(env, None, 0)
    assert actor.seen == ["ping 7"]
    assert fx.timers[0].message == Tick(n=7) and fx.timers[0].delay_ms == 100


def test_receive_merges_then_ticks_and_sends_tick() -> None:
    cell = cell_for(Echoer("e"))
    env = Envelope(id="1", sender="x", target="e", body=Ping(n=1),
                   clock=VectorClock.of({"x": 5}))
    cell.deliver(env, None, 0)
    assert cell.clock["x"] == 5 and cell.clock["e"] >= 1
    fx = cell.fire(Tick(n=1), 100)
    [sent] = fx.sends
    assert sent.clock["e"] == cell.clock["e"] and sent.clock["x"] == 5
    assert sent.body == Ping(n=2) and sent.target == "other" and sent.sender == "e"


def test_unhandled_messages_are_logged_not_fatal() -> None:
    @attrs.frozen(kw_only=True)
    class Strange(Message):
        pass

    cell = cell_for(Echoer("e"))
    fx = cell.deliver(Envelope(id="1", sender="x", target="e", body=Strange()), None, 0)
    assert not fx.sends and not fx.timers


def test_timers_come_back_as_messages_in_the_simulator() -> None:
    sim = Simulation(1)
    actors: list[Echoer] = []

    def make() -> Echoer:
        actors.append(Echoer("e"))
        return actors[-1]

    sim.spawn("e", make)
    sim.send("client", "e", Ping(n=1))
    sim.run(until_ms=1000)
    [pinged] = [e for e in sim.history.events if e.kind == "pinged"]
    assert pinged.time_ms in (1, 2)  # 1 ms on the network, up to 1 ms more to be delivered
    assert actors[0].seen == ["ping 1", f"tick 1 at {pinged.time_ms + 100}"]


def test_crash_loses_volatile_state_and_restart_runs_on_start() -> None:
    sim = Simulation(1)
    made: list[Echoer] = []
    sim.spawn("e", lambda: made.append(Echoer("e")) or made[-1])
    sim.send("client", "e", Ping(n=1))
    sim.run(until_ms=10)
    sim.crash("e")
    sim.run(until_ms=500)
    assert made[0].seen == ["ping 1"]  # its timer died with it
    sim.restart("e")
    assert len(made) == 2 and made[1].seen == []
