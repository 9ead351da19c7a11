"""The backend registry: stores and transports opened by URL scheme (`transports.registry`)."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from dtq.cli.main import build_parser
from dtq.client.backend import RabbitBackend
from dtq.errors import ConfigurationError
from dtq.task import TaskSpec
from dtq.transport import Delivery, Outgoing
from transports import registry
from transports.memory_store import SimStore
from transports.rabbitmq import RabbitTransport, delete_namespace
from transports.redis import RedisStore
from transports.registry import open_store, open_transport

ROOT = Path(__file__).resolve().parents[2]


class FakeTransport:
    """A transport of a made-up scheme: it records what it was opened with and published."""

    def __init__(self, url: str, *, namespace: str, name: str, **options: Any) -> None:
        self.url, self.namespace, self.name, self.options = url, namespace, name, options
        self.on_delivery: Callable[[Delivery], None] = lambda d: None
        self.published: list[Outgoing] = []
        self.started = self.closed = False
        self.ready = threading.Event()

    def queue_depths(self, addresses: Sequence[str]) -> dict[str, int]:
        return {a: 0 for a in addresses[:1]}

    def start(self, timeout_s: float = 10.0) -> None:
        self.started = True
        self.ready.set()

    def close(self) -> None:
        self.closed = True

    def consume(self, address: str, prefetch: int = 0) -> None: ...

    def cancel(self, address: str, *, wait_s: float = 0.0) -> None: ...

    def publish(self, messages: Sequence[Outgoing], then: Callable[[], None] | None = None,
                ) -> None:
        self.published.extend(messages)
        if then is not None:
            then()

    def ack(self, delivery: Delivery, *, multiple: bool = False) -> None: ...

    def reject(self, delivery: Delivery, *, requeue: bool) -> None: ...


@pytest.fixture
def fake_scheme() -> Iterator[str]:
    """The scheme `fake` for stores (a SimStore) and transports (a FakeTransport), registered
    for the test and gone after it."""
    registry.register_store("fake", lambda url, *, prefix, **options: SimStore())
    registry.register_transport("fake", FakeTransport)
    try:
        yield "fake"
    finally:
        registry.unregister_store("fake")
        registry.unregister_transport("fake")


# --- schemes that need no service ---------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0",
    "unix:///tmp/dtq-no-such.sock?db=0", "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster/0",
])
def test_redis_schemes_open_a_redis_store_with_its_prefix(url: str) -> None:
    store = open_store(url, prefix="ns-a")  # redis-py connects on first use, not here
    try:
        assert isinstance(store, RedisStore)
        assert store.prefix == "ns-a"
    finally:
        store.close()


def test_memory_opens_a_fresh_sim_store() -> None:
    a, b = open_store("memory:"), open_store("memory://")
    assert isinstance(a, SimStore) and isinstance(b, SimStore)
    assert a is not b


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:1/%2F",
                                 "amqps://guest:guest@127.0.0.1:1/%2F"])
def test_amqp_schemes_open_an_unstarted_rabbit_transport_with_the_options(url: str) -> None:
    transport = open_transport(url, namespace="ns-b", name="w-1", quorum=True, work_bundle=8)
    assert isinstance(transport, RabbitTransport)
    assert (transport.url, transport.namespace, transport.name) == (url, "ns-b", "w-1")
    assert transport.quorum is True and transport.work_bundle == 8


def test_the_first_of_several_urls_picks_the_scheme() -> None:
    assert registry.scheme_of("amqp://a:5672/%2F,amqps://b:5671/%2F") == "amqp"
    assert registry.scheme_of(" Redis+Sentinel://h1:1,h2:2/svc") == "redis+sentinel"
    assert registry.scheme_of("no-scheme-here") == ""


@pytest.mark.parametrize("open_one, url, known", [
    (lambda u: open_store(u), "etcd://127.0.0.1:2379", ["redis:", "rediss:", "unix:",
                                                         "redis+sentinel:", "memory:"]),
    (lambda u: open_transport(u), "redis://127.0.0.1:6379/0", ["amqp:", "amqps:"]),
    (lambda u: open_store(u), "127.0.0.1:6379", ["redis:"]),
])
def test_an_unknown_scheme_is_refused_naming_the_known_ones(
        open_one: Callable[[str], object], url: str, known: list[str]) -> None:
    with pytest.raises(ConfigurationError) as err:
        open_one(url)
    assert all(k in str(err.value) for k in known), str(err.value)


def test_a_registered_opener_is_used_and_gone_once_unregistered() -> None:
    made: list[tuple[str, str, dict[str, Any]]] = []

    def opener(url: str, *, prefix: str, **options: Any) -> SimStore:
        made.append((url, prefix, options))
        return SimStore()

    registry.register_store("mystore", opener)
    try:
        assert "mystore" in registry.store_schemes()
        store = open_store("MyStore://somewhere/3", prefix="p", timeout_s=2)
        assert isinstance(store, SimStore)
        assert made == [("MyStore://somewhere/3", "p", {"timeout_s": 2})]
    finally:
        registry.unregister_store("mystore")
    with pytest.raises(ConfigurationError, match="mystore"):
        open_store("mystore://somewhere/3")


def test_an_unknown_scheme_loads_the_installed_backends_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "dtq_regtest_backend.py").write_text(
        "from transports.memory_store import SimStore\n"
        "from transports.registry import register_store\n"
        "register_store('regtest', lambda url, *, prefix, **options: SimStore())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    asked: list[str] = []

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        asked.append(group)
        return [importlib.metadata.EntryPoint("regtest", "dtq_regtest_backend", group)]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_loaded", False)
    try:
        assert isinstance(open_store("regtest://x"), SimStore)
        with pytest.raises(ConfigurationError):
            open_store("other://x")
        assert asked == ["dtq.backends"]
    finally:
        registry.unregister_store("regtest")
        sys.modules.pop("dtq_regtest_backend", None)


def test_the_api_backend_takes_its_store_and_transport_from_the_registry(
        fake_scheme: str) -> None:
    backend = RabbitBackend(f"{fake_scheme}://broker", f"{fake_scheme}://store", "ns-c",
                            name="api-1", quorum=True, confirm_timeout_s=1)
    transport = backend.submitter.transport
    try:
        assert isinstance(backend.store, SimStore)
        assert isinstance(transport, FakeTransport) and transport.started
        assert (transport.url, transport.namespace, transport.name) == (
            "fake://broker", "ns-c", "api-1")
        assert transport.options == {"quorum": True}
        backend.submit([TaskSpec(id="t-1", type="echo")])
        assert [m.queue for m in transport.published] == ["ns-c.coordinator"]
        assert backend.ready() and backend.queue_depths() == {"coordinator": 0}
    finally:
        backend.close()
    assert transport.closed


class BlindTransport(FakeTransport):
    """A transport that cannot say whether it is connected nor how deep its queues are."""

    def start(self, timeout_s: float = 10.0) -> None:
        self.started = True

    def __getattribute__(self, name: str) -> Any:
        if name in ("ready", "queue_depths"):
            raise AttributeError(name)
        return super().__getattribute__(name)


def test_the_api_backend_refuses_a_transport_it_cannot_watch(fake_scheme: str) -> None:
    registry.register_transport(fake_scheme, BlindTransport)
    with pytest.raises(ConfigurationError, match="ready"):
        RabbitBackend(f"{fake_scheme}://broker", f"{fake_scheme}://store", "ns-d")


def test_commands_that_need_redis_refuse_another_store() -> None:
    with pytest.raises(ConfigurationError, match="RedisStore"):
        registry.require(open_store("memory:"), RedisStore, "dtq namespace")


def _run_choices() -> list[str]:
    parser = build_parser()
    scenario = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = scenario.choices["scenario"]
    sub = next(a for a in run._actions if isinstance(a, argparse._SubParsersAction))
    transport = next(a for a in sub.choices["run"]._actions if a.dest == "transport")
    return list(transport.choices or ())


def test_scenario_backends_come_from_the_registry(monkeypatch: pytest.MonkeyPatch,
                                                 fake_scheme: str) -> None:
    assert registry.backend_names() == ["memory", "rabbitmq"]
    assert _run_choices() == ["memory", "rabbitmq"]
    monkeypatch.setattr(registry, "BACKENDS", {**registry.BACKENDS,
                                               "fakemq": (fake_scheme, fake_scheme),
                                               "absent": ("nosuch", "nosuch")})
    assert _run_choices() == ["fakemq", "memory", "rabbitmq"]


def test_importing_the_registry_imports_no_client_library() -> None:
    code = ("import sys, transports.registry as r; r.open_store('memory:'); "
            "print(sorted(m for m in ('pika', 'redis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]", out.stderr


# --- the running services -----------------------------------------------------------------------


def test_a_redis_url_opens_a_working_store(redis_url: str) -> None:
    store = open_store(redis_url, prefix=f"reg-{uuid.uuid4().hex[:8]}")
    try:
        assert isinstance(store, RedisStore)
        assert store.epoch() == 0 and store.get_task("nothing") is None
    finally:
        store.close()


def test_an_amqp_url_opens_a_transport_that_connects(rabbitmq_url: str) -> None:
    ns = f"reg-{uuid.uuid4().hex[:8]}"
    transport = open_transport(rabbitmq_url, namespace=ns, name="reg", quorum=False)
    assert isinstance(transport, RabbitTransport)
    try:
        transport.start(10)
        assert transport.ready.is_set()
    finally:
        transport.close()
        delete_namespace(rabbitmq_url, ns, [])
