"""Faults on a node's links to RabbitMQ and Redis: Toxiproxy proxies for real processes, and
the same faults as the simulator plays them.

On real processes every node reaches each service through its own proxy on a
Toxiproxy-compatible server: ours (`dtq.chaos.ToxiproxyServer`, in-process on an ephemeral
loopback port), or the server at `TOXIPROXY_URL` when that is set (the real Toxiproxy of
compose.yaml). Proxies are named `{namespace}-{node}-broker` and `{namespace}-{node}-store`, so
runs never collide. The runner and the submitter talk to the services directly: they observe,
they are not under test. Toxics are added and removed over HTTP with the `toxiproxy-python`
client, always in both directions of the link:

* partition: a `timeout` toxic with timeout 0. Every byte is dropped and nothing is closed, as
  when a cable is pulled: the peers learn only from their own timeouts (the broker's
  heartbeat, Redis's socket timeout). Disabling the proxy would instead close both ends at once
  and refuse new connections, which is a crash of the link, not a partition. Healing removes
  the toxic, which closes the connections it held, as a long partition does to TCP.
* latency (+ jitter), bandwidth, slicer: the toxics of those names.
* reset_peer: the `reset_peer` toxic for `duration` (default `RESET_MS`): every connection of
  the link that carries data meanwhile is reset, reconnects included. A connection that stays
  silent all that time is not touched (worker heartbeats keep links busy).
* drop_connection: the proxy is disabled and enabled again, which closes the node's broker
  connections on both ends at once; the broker returns their unacked deliveries and the node
  reconnects, as when the broker closes a connection. (`rabbitmqctl close_connection` would take
  a second per call, and is not there when RabbitMQ runs in a container.)

Nodes never talk to each other directly (everything goes through the broker), so a partition
between two nodes has no meaning on RabbitMQ: it is refused there. The simulator plays it.

Nodes run under a `ProxiedSupervisor`: their links go through the proxies, but the history
they record goes straight to Redis, because the evidence must not travel the faulty link.

The simulator has no TCP streams, so `SlowLinks` gives it the equivalent of latency, bandwidth
and slicer: an extra delay on every message a node publishes or is delivered.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from dtq.envelope import Codec, Envelope
from dtq.errors import ConfigurationError, ScenarioError
from dtq.runtime import process
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.scenario.faults import LINKS, SLICER_DEFAULTS, simulator_knob, undo_after_ms
from dtq.scenario.model import FaultSpec, Scenario
from transports.memory import BROKER, Simulation

STREAMS = ("upstream", "downstream")
FRAME_BYTES = 100
"""About what AMQP framing adds to a message body on the wire (method, header, body frames)."""
NETWORK_MODEL_KEYS = ("reorder_ms", "retransmit_ms", "broker_heartbeat_ms")
"""`[network]` keys that describe the simulator's model of RabbitMQ, not a fault."""


def fault_end_ms(f: FaultSpec) -> int | None:
    """When a fault is undone on its own: `at + duration`, or after the reset window."""
    after = undo_after_ms(f)
    return f.at_ms + after if after else None


# --- what RabbitMQ cannot play -----------------------------------------------------------------

_PLAYED_NETWORK_KEYS = ("delay_ms", "jitter_ms")


def check_simulator_knobs(scenario: Scenario, backend: str = "rabbitmq") -> None:
    """Refuse what only the simulator can do: `[network]` misbehaviour other than delay (on the
    testbed, delay too: it is played by the proxies), and `[crash_points]`. (`reorder_ms`,
    `retransmit_ms` and `broker_heartbeat_ms` describe the simulator's model of RabbitMQ; the
    real one needs no such setting.)"""
    played = _PLAYED_NETWORK_KEYS if backend == "rabbitmq" else ()
    for key, value in scenario.network.items():
        if value and key not in played and key not in NETWORK_MODEL_KEYS:
            why = simulator_knob(key) if key not in _PLAYED_NETWORK_KEYS else (
                "a delay is played by the fault proxies, and on the testbed the nodes reach "
                "the services directly")
            raise ScenarioError(f"{scenario.path}: network.{key}: cannot be played on the "
                                f"{backend} backend: {why}")
    for key, value in scenario.crash_points.items():
        if value:
            raise ScenarioError(
                f"{scenario.path}: crash_points.{key}: cannot be played on the {backend} "
                f"backend: the simulator crashes a node between the steps of one handler; on "
                f"real processes, kill a node (action = \"kill\") instead")


# --- proxies for real processes ----------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Toxic:
    type: str
    attributes: Mapping[str, int]


def toxic_for(f: FaultSpec) -> Toxic:
    """The Toxiproxy toxic that plays a link fault (see the module docstring for why)."""
    p = {**SLICER_DEFAULTS, **f.params}
    attributes: dict[str, dict[str, int]] = {
        "partition": {"timeout": 0},
        "latency": {"latency": p.get("latency", 0), "jitter": p.get("jitter", 0)},
        "bandwidth": {"rate": p.get("rate", 0)},
        "slicer": {k: p[k] for k in SLICER_DEFAULTS},
        "reset_peer": {"timeout": p.get("timeout", 0)},
    }
    kind = "timeout" if f.action == "partition" else f.action
    return Toxic(type=kind, attributes=attributes[f.action])


def with_address(url: str, address: str) -> str:
    """`url` with its host and port replaced by `address` (`host:port`); user info is kept."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{address}"))


def address_of(url: str, default_port: int) -> str:
    """The one `host:port` a URL names. A Toxiproxy link stands in front of one server, so a
    URL naming several (a `redis+sentinel://` URL, a list of hosts) is refused."""
    parts = urlsplit(url)
    if "," in parts.netloc or parts.scheme.lower().endswith("+sentinel"):
        raise ConfigurationError(
            f"a {parts.scheme}:// URL naming several servers cannot be put behind a fault "
            "proxy: real scenarios need one Redis and one RabbitMQ address (Sentinel "
            "failovers are tried on `dtq testbed` instead)")
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or default_port}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ProxyNet:
    """Two proxies per node on a Toxiproxy-compatible server, and the toxics of faults.

    Use as a context manager: on exit every proxy of the run is deleted (and our own server,
    if one was started, stopped).
    """

    def __init__(
        self, namespace: str, upstreams: Mapping[str, str], *, api_url: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.namespace = namespace
        self.upstreams = dict(upstreams)
        self.api_url = api_url if api_url is not None else os.environ.get("TOXIPROXY_URL")
        self.seed = seed
        self.proxies: dict[tuple[str, str], Any] = {}
        self.addresses: dict[tuple[str, str], str] = {}
        self.toxics: dict[str, list[tuple[str, str, str]]] = {}
        """Toxics by the key of the fault that added them: (node, link, toxic name)."""
        self._server: Any = None

    def __enter__(self) -> ProxyNet:
        if not self.api_url:
            from dtq.chaos import ToxiproxyServer

            self._server = ToxiproxyServer(seed=self.seed)
            self.api_url = self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def host(self) -> str:
        return urlsplit(self.api_url or "").hostname or "127.0.0.1"

    def _client(self) -> Any:
        from toxiproxy import Toxiproxy

        client = Toxiproxy()
        parts = urlsplit(self.api_url or "")
        client.update_api_consumer(parts.hostname or "127.0.0.1", parts.port or 8474)
        return client

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run a client call; its failures become a ScenarioError naming the server."""
        try:
            return fn()
        except Exception as exc:  # requests and toxiproxy-python raise their own types
            raise ScenarioError(f"fault proxy at {self.api_url}: {what} failed: "
                                f"{type(exc).__name__}: {exc}") from exc

    # --- proxies ---------------------------------------------------------------------------

    def name(self, node: str, link: str) -> str:
        return f"{self.namespace}-{node}-{link}"

    def add_node(self, node: str) -> dict[str, str]:
        """Create the node's proxies; return the address it must dial for each link."""
        listen = "127.0.0.1:0" if _loopback(self.host) else "0.0.0.0:0"
        client = self._client()
        for link in LINKS:
            proxy = self._call(f"creating the {link} proxy of {node}", functools.partial(
                client.create, upstream=self.upstreams[link], name=self.name(node, link),
                listen=listen))
            port = int(str(proxy.listen).rpartition(":")[2])
            self.proxies[node, link] = proxy
            self.addresses[node, link] = f"{self.host}:{port}"
        return {link: self.addresses[node, link] for link in LINKS}

    def close(self) -> None:
        """Delete every proxy of the run, then stop our server if we started one."""
        try:
            self._client()
            for (node, link), proxy in list(self.proxies.items()):
                self._call(f"deleting {self.name(node, link)}", proxy.destroy)
            self.proxies.clear()
        finally:
            if self._server is not None:
                self._server.stop()
                self._server = None

    # --- toxics ----------------------------------------------------------------------------

    def add(
        self, key: str, toxic: Toxic, nodes: Iterable[str], links: Iterable[str], *,
        streams: Iterable[str] = STREAMS,
    ) -> None:
        """Add `toxic` to each node's links (both directions by default), remembered under
        `key` for `remove`."""
        self._client()
        added = self.toxics.setdefault(key, [])
        for node, link, stream in itertools.product(nodes, links, streams):
            name = f"{key}-{stream}"
            self._call(f"adding {toxic.type} to {self.name(node, link)}",
                       functools.partial(self.proxies[node, link].add_toxic, type=toxic.type,
                                         stream=stream, name=name,
                                         attributes=dict(toxic.attributes)))
            added.append((node, link, name))

    def remove(self, key: str) -> None:
        """Remove the toxics added under `key` (nothing if they are gone already)."""
        from toxiproxy.exceptions import NotFound

        self._client()
        for node, link, name in self.toxics.pop(key, []):
            try:
                self.proxies[node, link].destroy_toxic(name)
            except NotFound:
                continue
            except Exception as exc:
                raise ScenarioError(f"fault proxy at {self.api_url}: removing {name} from "
                                    f"{self.name(node, link)} failed: {exc}") from exc

    def cut(self, nodes: Iterable[str], link: str = BROKER) -> None:
        """Close every connection of the nodes' links at once, on both ends (the proxy is
        disabled, which closes them, and enabled again on the same port for reconnects)."""
        self._client()
        for node in nodes:
            proxy = self.proxies[node, link]
            self._call(f"closing the connections of {self.name(node, link)}", proxy.disable)
            self._call(f"reopening {self.name(node, link)}", proxy.enable)

    def remove_all(self, prefix: str = "") -> None:
        """Remove every toxic whose key starts with `prefix` (all of them by default)."""
        for key in [k for k in self.toxics if k.startswith(prefix)]:
            self.remove(key)


# --- node processes behind the proxies -------------------------------------------------------


def _node_main(cfg: NodeConfig, history_url: str) -> None:
    """A node's process, as `dtq.runtime.process` runs it, with its history written straight to
    Redis.

    The history is the observer's record. It must not travel the node's faulty store link: a
    cut link would lose the evidence, and a record failing inside a handler would change what
    the node does (it would exit where it should wait for the store). `NodeConfig` has one
    store URL for both, so this process's history connection is redirected before the node
    starts.
    """
    from transports.redis import RedisHistory

    direct = RedisHistory.from_url
    RedisHistory.from_url = staticmethod(  # type: ignore[method-assign,assignment]
        lambda _url, **kw: direct(history_url, **kw))
    process._child(cfg)


class _DirectHistory:
    """The supervisor's process context, starting each node through `_node_main`."""

    def __init__(self, ctx: Any, history_url: str) -> None:
        self._ctx = ctx
        self.history_url = history_url

    def Process(self, *, target: Any, args: tuple[Any, ...], name: str) -> Any:
        """multiprocessing's name; `target` is the supervisor's own node entry point."""
        return self._ctx.Process(target=_node_main, args=(*args, self.history_url), name=name)


class ProxiedSupervisor(Supervisor):
    """A `Supervisor` (restarts, back-off, kill, pause...) for nodes behind proxies, each of
    which records its history over a direct connection to Redis (see `_node_main`)."""

    def __init__(self, configs: Iterable[NodeConfig], *, history_url: str) -> None:
        super().__init__(configs)
        # only the Process factory of the context is used to start nodes
        self.ctx = _DirectHistory(self.ctx, history_url)  # type: ignore[assignment]


# --- the same link faults on the simulator -----------------------------------------------------


@attrs.define(eq=False)
class Slowdown:
    """One latency, bandwidth or slicer fault on some nodes' broker links (simulated)."""

    nodes: frozenset[str]
    latency_ms: int = 0
    jitter_ms: int = 0
    rate: int = 0
    """KB/s, which is bytes per ms; 0 means unlimited."""
    piece_bytes: int = 0
    piece_delay_us: int = 0

    @classmethod
    def of(cls, f: FaultSpec, nodes: Iterable[str]) -> Slowdown:
        p = {**SLICER_DEFAULTS, **f.params}
        slicer = f.action == "slicer"
        return cls(nodes=frozenset(nodes), latency_ms=p.get("latency", 0),
                   jitter_ms=p.get("jitter", 0),
                   rate=p.get("rate", 0) if f.action == "bandwidth" else 0,
                   piece_bytes=p["average_size"] if slicer else 0,
                   piece_delay_us=p["delay"] if slicer else 0)

    def transmit_ms(self, size: int) -> float:
        ms = size / self.rate if self.rate else 0.0
        if self.piece_bytes:
            ms += math.ceil(size / self.piece_bytes) * self.piece_delay_us / 1000
        return ms


class SlowLinks:
    """Slow broker links for chosen nodes, layered on a `Simulation` without changing it.

    A message a slowed node publishes, or one the broker delivers to it, first waits for its
    transmission (size / rate, plus a pause per slicer piece; messages queue behind each other
    as on one TCP stream), then for the latency (± jitter). Order on a link is kept, as
    Toxiproxy keeps it. It wraps the publish and deliver steps of this one instance.
    """

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.active: list[Slowdown] = []
        self.free_at: dict[tuple[str, str], float] = {}
        self.last_at: dict[tuple[str, str], int] = {}
        self.codec = Codec()
        self._publish, self._deliver = sim._publish, sim._deliver
        sim._publish = self._on_publish  # type: ignore[method-assign]
        sim._deliver = self._on_deliver  # type: ignore[method-assign]

    @classmethod
    def of(cls, sim: Simulation) -> SlowLinks:
        """The simulation's slow links, installed on first use."""
        owner = getattr(sim._publish, "__self__", None)
        return owner if isinstance(owner, SlowLinks) else cls(sim)

    def add(self, slow: Slowdown) -> Callable[[], None]:
        """Slow the links down; return the undo."""
        self.active.append(slow)
        return lambda: self.active.remove(slow) if slow in self.active else None

    def _on_publish(self, env: Envelope, **options: Any) -> None:
        self._pass(env.sender, "up", env, functools.partial(self._publish, **options), env)

    def _on_deliver(self, node: Any, inc: int, tag: int, env: Envelope) -> None:
        self._pass(node.name, "down", env, self._deliver, node, inc, tag, env)

    def _pass(
        self, name: str, way: str, env: Envelope, fn: Callable[..., None], *args: Any,
    ) -> None:
        slows = [s for s in self.active if name in s.nodes]
        if not slows:
            fn(*args)
            return
        self.sim.after(self._delay((name, way), env, slows), fn, *args)

    def _delay(self, link: tuple[str, str], env: Envelope, slows: list[Slowdown]) -> int:
        now = self.sim.now_ms
        size = len(self.codec.encode(env)) + FRAME_BYTES
        sent = max(now, self.free_at.get(link, 0)) + sum(s.transmit_ms(size) for s in slows)
        self.free_at[link] = sent
        arrive = max(math.ceil(sent + self._latency(slows)), self.last_at.get(link, 0))
        self.last_at[link] = arrive
        return arrive - now

    def _latency(self, slows: list[Slowdown]) -> int:
        rng = self.sim.rng
        total = sum(s.latency_ms + (rng.randint(-s.jitter_ms, s.jitter_ms) if s.jitter_ms
                                    else 0) for s in slows)
        return max(0, total)
