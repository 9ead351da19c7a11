"""The scenario runner's fault plumbing: what each backend refuses, how the simulator plays link
faults, the per-node proxies on the Toxiproxy-compatible server, progress and the checks table.

Everything here binds 127.0.0.1 on ephemeral ports and names its proxies after its own
namespace, so `pytest -n auto` never collides. Nothing sleeps to synchronise.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer

from dtq.chaos import ToxiproxyServer
from dtq.chaos.testkit import TcpServer, closed_by_peer, connect, echo_works, refused
from dtq.cli.main import main
from dtq.errors import ScenarioError
from dtq.history import Event
from dtq.scenario.links import ProxyNet, Toxic, address_of, fault_end_ms, toxic_for, with_address
from dtq.scenario.model import FaultSpec, Scenario, load
from dtq.scenario.real import Progress, RealRun, run_real
from dtq.scenario.sim import run_memory
from dtq.scenario.summary import summary_table

ROOT = Path(__file__).resolve().parents[2]
BASE = """name = "t"
[cluster]
coordinators = 1
workers = {workers}
[workload]
count = {count}
type = "sleep"
payload = {{ ms = 10 }}
{workload}
[expect]
deadline_ms = 30000
succeeded = {count}
"""


def scenario(
    tmp_path: Path, extra: str = "", *, workers: int = 2, count: int = 4, workload: str = "",
) -> Scenario:
    path = tmp_path / "t.toml"
    path.write_text(BASE.format(workers=workers, count=count, workload=workload) + extra)
    return load(path)


def proxies_on(server: ToxiproxyServer) -> dict[str, Any]:
    client = Toxiproxy()
    client.update_api_consumer(server.host, server.port)
    return dict(client.proxies())


def fault(action: str, **params: Any) -> str:
    lines = [f"[[fault]]\nat = 100\naction = {action!r}"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in params.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def _restore_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """toxiproxy-python keeps its server address on a class; put it back after each test."""
    monkeypatch.setattr(APIConsumer, "host", APIConsumer.host)
    monkeypatch.setattr(APIConsumer, "port", APIConsumer.port)
    monkeypatch.delenv("TOXIPROXY_URL", raising=False)


# --- what each backend refuses, before anything starts ------------------------------------------


@pytest.mark.parametrize("knob", ["drop", "duplicate", "reorder", "stale_read"])
def test_rabbitmq_refuses_the_simulators_network_knobs(tmp_path: Path, knob: str) -> None:
    s = scenario(tmp_path, f"[network]\n{knob} = 0.2\n")
    with pytest.raises(ScenarioError, match=rf"network\.{knob}: cannot be played on the "
                                            r"rabbitmq backend: .*knob of the simulator"):
        run_real(s, live=False)


@pytest.mark.parametrize("action", ["duplicate", "drop", "reorder"])
def test_rabbitmq_refuses_network_faults_naming_the_fault(tmp_path: Path, action: str) -> None:
    s = scenario(tmp_path, fault("latency", latency=5) + fault(action, probability=0.1))
    with pytest.raises(ScenarioError) as err:
        run_real(s, live=False)
    assert f"fault[1].action: '{action}' cannot be played on the rabbitmq backend" in str(err.value)
    assert str(s.path) in str(err.value)


def test_rabbitmq_refuses_a_partition_between_nodes(tmp_path: Path) -> None:
    s = scenario(tmp_path, fault("partition", target="worker-1", **{"from": ["worker-2"]}))
    with pytest.raises(ScenarioError, match="never talk to each other directly"):
        run_real(s, live=False)
    run_memory(s)  # the simulator can cut two nodes apart


def test_rabbitmq_refuses_crash_points(tmp_path: Path) -> None:
    s = scenario(tmp_path, "[crash_points]\nafter_persist = 0.1\n")
    with pytest.raises(ScenarioError, match=r"crash_points\.after_persist: .*kill"):
        run_real(s, live=False)


@pytest.mark.parametrize("action", ["latency", "bandwidth", "slicer"])
def test_the_simulator_refuses_to_slow_the_store_link(tmp_path: Path, action: str) -> None:
    s = scenario(tmp_path, fault(action, target="worker-1", latency=5, rate=10,
                                 **{"from": ["store"]}))
    with pytest.raises(ScenarioError, match=rf"fault\[0\]\.action: '{action}' cannot be played "
                                            r"on the memory backend: the simulated store"):
        run_memory(s)


@pytest.mark.parametrize(("text", "key"), [
    (fault("kill"), "fault[0].target"),
    (fault("kill", target="worker-9"), "fault[0].target"),
    (fault("bandwidth", target="worker-1"), "fault[0].rate"),
    (fault("bandwidth", target="worker-1", rate=0), "fault[0].rate"),
    (fault("latency", target="worker-1"), "fault[0].latency"),
    (fault("slicer", target="worker-1", average_size=8, size_variation=8),
     "fault[0].size_variation"),
    (fault("reset_peer", target="worker-1", **{"from": ["disk"]}), "fault[0].from"),
], ids=["kill-without-target", "unknown-target", "bandwidth-without-rate", "bandwidth-0",
        "latency-without-ms", "slicer-variation", "unknown-link"])
def test_bad_fault_parameters_are_refused_on_both_backends(
    tmp_path: Path, text: str, key: str,
) -> None:
    s = scenario(tmp_path, text)
    for run in (run_memory, lambda s: run_real(s, live=False)):
        with pytest.raises(ScenarioError, match=re.escape(f"{s.path}: {key}:")):
            run(s)


def test_the_command_reports_a_refusal_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    s = scenario(tmp_path, "[network]\nduplicate = 0.2\n")
    assert main(["scenario", "run", str(s.path), "--transport", "rabbitmq"]) == 2
    assert "network.duplicate: cannot be played on the rabbitmq backend" in \
        capsys.readouterr().err


# --- link faults on the simulator ---------------------------------------------------------------


def _waits(events: list[Event], worker: str) -> list[int]:
    """For each task `worker` started: ms from its dispatch to its start."""
    sent = {e.data["task"]: e.time_ms for e in events if e.kind == "dispatched"}
    return [e.time_ms - sent[e.data["task"]] for e in events
            if e.kind == "started" and e.actor == worker]


@pytest.mark.parametrize(("text", "at_least_ms"), [
    (fault("latency", target="worker-1", latency=200, jitter=20), 180),
    (fault("bandwidth", target="worker-1", rate=1), 300),
    (fault("slicer", target="worker-1", average_size=10, size_variation=2, delay=10_000), 300),
], ids=["latency", "bandwidth", "slicer"])
def test_the_simulator_slows_only_the_targets_link(
    tmp_path: Path, text: str, at_least_ms: int,
) -> None:
    s = scenario(tmp_path, text.replace("at = 100", "at = 0"), count=8)
    result = run_memory(s)
    assert result.ok, result.summary["violations"]
    slow, fast = _waits(result.events, "worker-1"), _waits(result.events, "worker-2")
    assert slow and fast
    assert min(slow) >= at_least_ms  # dispatch to start: the slowed link, plus any queueing
    assert max(fast) < at_least_ms // 2  # queueing only


def test_a_slow_link_is_fast_again_after_its_duration(tmp_path: Path) -> None:
    s = scenario(tmp_path, fault("latency", target="worker-1", latency=300, duration=200),
                 workload="start_ms = 1000", count=6)
    result = run_memory(s)
    assert result.ok
    assert all(w < 50 for w in _waits(result.events, "worker-1"))


def test_link_faults_on_the_simulator_are_deterministic() -> None:
    s = load(ROOT / "scenarios" / "constrained-links.toml")
    assert run_memory(s, 3).summary["history_digest"] == \
        run_memory(s, 3).summary["history_digest"]


def test_reset_peer_on_the_simulator_drops_the_connection_for_its_window(tmp_path: Path) -> None:
    s = scenario(tmp_path, fault("reset_peer", target="worker-1", duration=300))
    result = run_memory(s)
    assert result.ok
    closed = [e for e in result.events if e.kind == "connection_closed"]
    assert [e.actor for e in closed][:1] == ["worker-1"] and closed[0].time_ms == 100
    heal = next(e for e in result.events if e.kind == "heal")
    assert heal.time_ms == 400


def test_reset_peer_on_the_store_link_cuts_the_store_for_its_window(tmp_path: Path) -> None:
    s = scenario(tmp_path, fault("reset_peer", target="worker-1", **{"from": ["store"]}))
    result = run_memory(s)
    assert result.ok
    cut = next(e for e in result.events if e.kind == "partition")
    assert (cut.time_ms, cut.data) == (100, {"a": ["worker-1"], "b": ["store"]})
    assert next(e for e in result.events if e.kind == "heal").time_ms == 1100


def test_fault_end() -> None:
    assert fault_end_ms(FaultSpec(at_ms=100, action="pause", duration_ms=50)) == 150
    assert fault_end_ms(FaultSpec(at_ms=100, action="kill")) is None
    assert fault_end_ms(FaultSpec(at_ms=100, action="reset_peer")) == 1100


# --- the per-node proxies -------------------------------------------------------------------------


def test_addresses_in_urls_are_swapped_keeping_credentials() -> None:
    amqp = "amqp://guest:secret@127.0.0.1:5672/%2F"
    assert with_address(amqp, "127.0.0.1:40001") == "amqp://guest:secret@127.0.0.1:40001/%2F"
    assert with_address("redis://127.0.0.1:6379/0", "127.0.0.1:40002") == \
        "redis://127.0.0.1:40002/0"
    assert address_of("redis://127.0.0.1/0", 6379) == "127.0.0.1:6379"


def test_toxics_for_faults() -> None:
    assert toxic_for(FaultSpec(at_ms=0, action="partition")) == \
        Toxic(type="timeout", attributes={"timeout": 0})
    assert toxic_for(FaultSpec(at_ms=0, action="latency", params={"latency": 40, "jitter": 5})) \
        == Toxic(type="latency", attributes={"latency": 40, "jitter": 5})
    assert toxic_for(FaultSpec(at_ms=0, action="slicer")).attributes == \
        {"average_size": 64, "size_variation": 32, "delay": 1000}


@pytest.fixture
def upstream() -> Iterator[TcpServer]:
    with TcpServer() as server:
        yield server


@pytest.fixture
def net(upstream: TcpServer) -> Iterator[ProxyNet]:
    ns = f"test-{uuid.uuid4().hex[:8]}"
    with ProxyNet(ns, {"broker": upstream.address, "store": upstream.address}) as proxies:
        yield proxies


def test_every_node_gets_its_own_two_proxies_on_loopback(net: ProxyNet) -> None:
    a, b = net.add_node("worker-1"), net.add_node("worker-2")
    addresses = [*a.values(), *b.values()]
    assert len(set(addresses)) == 4
    assert all(x.startswith("127.0.0.1:") and not x.endswith(":0") for x in addresses)
    assert set(net.proxies) == {(n, link) for n in ("worker-1", "worker-2")
                                for link in ("broker", "store")}
    assert net.proxies["worker-1", "store"].name == f"{net.namespace}-worker-1-store"
    assert all(echo_works(x) for x in addresses)


def test_a_partition_drops_bytes_silently_until_healed(net: ProxyNet) -> None:
    links = net.add_node("worker-1")
    other = net.add_node("worker-2")
    with connect(links["broker"], timeout=0.3) as sock:
        net.add("partition-0", toxic_for(FaultSpec(at_ms=0, action="partition")),
                ["worker-1"], ["broker"])
        sock.sendall(b"ping\n")
        with pytest.raises(TimeoutError):  # nothing comes back, nothing is closed
            sock.recv(16)
        assert echo_works(links["store"]) and echo_works(other["broker"])
        net.remove_all("partition-")
        sock.settimeout(5)
        assert closed_by_peer(sock)  # healing closes what the partition held, as TCP would
    assert echo_works(links["broker"])


def test_drop_connection_closes_both_ends_and_the_node_can_reconnect(
    net: ProxyNet, upstream: TcpServer,
) -> None:
    links = net.add_node("worker-1")
    with connect(links["broker"]) as sock:
        sock.sendall(b"ping\n")
        assert sock.recv(16) == b"ping\n"
        net.cut(["worker-1"])
        assert closed_by_peer(sock)
    upstream.sides[0].closed.wait(5)
    assert upstream.sides[0].closed.is_set()
    assert echo_works(links["broker"])


def test_closing_deletes_the_proxies_and_stops_our_server(upstream: TcpServer) -> None:
    ns = f"test-{uuid.uuid4().hex[:8]}"
    with ProxyNet(ns, {"broker": upstream.address, "store": upstream.address}) as net:
        links = net.add_node("worker-1")
        api = net.api_url or ""
    assert refused(links["broker"]) and refused(links["store"])
    assert refused(api.removeprefix("http://"))


def test_the_server_at_toxiproxy_url_is_used_and_left_running(
    upstream: TcpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ToxiproxyServer() as server:
        monkeypatch.setenv("TOXIPROXY_URL", server.url)
        ns = f"test-{uuid.uuid4().hex[:8]}"
        with ProxyNet(ns, {"broker": upstream.address, "store": upstream.address}) as net:
            net.add_node("worker-1")
            assert net.api_url == server.url
            assert sorted(proxies_on(server)) == [f"{ns}-worker-1-broker",
                                                  f"{ns}-worker-1-store"]
        assert proxies_on(server) == {}
        assert not refused(server.address)


# --- progress and the checks table ----------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_prints_phases_tasks_and_faults() -> None:
    out = io.StringIO()
    p = Progress(out, "demo")
    p.phase("running")
    p.tasks(3, 10)
    p.fault(400, "kill", ["worker-1"])
    p.fault(900, "partition", [])
    p.phase("settling")
    text = out.getvalue()
    assert "[demo] running" in text and "[demo] settling: 3/10 tasks done" in text
    assert "fault at 400 ms: kill worker-1" in text
    assert "fault at 900 ms: partition every node" in text
    assert "\r" not in text


def test_progress_redraws_one_line_on_a_terminal() -> None:
    out = _Terminal()
    p = Progress(out, "demo")
    p.phase("electing")
    p.phase("running")
    p.close()
    assert out.getvalue().count("\r\x1b[K") == 3 and "\n" not in out.getvalue()


def test_progress_is_silent_without_a_stream() -> None:
    p = Progress(None, "demo")
    p.phase("running")
    p.fault(1, "kill", ["x"])
    p.close()


def test_the_checks_table_says_what_broke_and_why(tmp_path: Path) -> None:
    s = scenario(tmp_path)
    summary = run_memory(s).summary
    assert summary_table(s, summary)[0].endswith("OK: every check held")
    summary = {**summary, "ok": False, "failover_ms": [2500], "violations": [
        {"invariant": "no_lost_task", "detail": "1 submitted task(s) never finished: t1"},
        {"invariant": "dependency_order", "detail": "t2 started before t1 finished"}]}
    lines = summary_table(s, summary)
    assert "FAILED: 2 check(s) broke" in lines[0]
    assert any(line.startswith("  no lost task          FAILED") for line in lines)
    assert any(line.startswith("  dependency order      FAILED") for line in lines)
    assert lines[lines.index("why:") + 1] == \
        "  no_lost_task: 1 submitted task(s) never finished: t1"


# --- on real processes ---------------------------------------------------------------------------


@pytest.mark.rabbitmq
def test_each_node_is_started_behind_its_own_proxies(
    tmp_path: Path, rabbitmq_url: str, redis_url: str,
) -> None:
    s = scenario(tmp_path)
    run = RealRun(s, 1, progress=Progress(None, s.name))
    try:
        with ProxyNet(run.namespace, {"broker": "127.0.0.1:5672",
                                      "store": "127.0.0.1:6379"}) as run.net:
            configs = run._configs()
            urls = [c.broker_url for c in configs] + [c.store_url for c in configs]
            assert len(set(urls)) == 6 == len(run.net.proxies)
            assert all("@127.0.0.1:" in c.broker_url and ":5672" not in c.broker_url
                       for c in configs)
            assert all(c.store_url.startswith("redis://127.0.0.1:") for c in configs)
            assert {p.upstream for p in run.net.proxies.values()} == \
                {"127.0.0.1:5672", "127.0.0.1:6379"}
    finally:
        run._clean_up()


@pytest.mark.rabbitmq
def test_a_real_run_shows_progress_and_leaves_no_proxy_behind(
    tmp_path: Path, rabbitmq_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = scenario(tmp_path, fault("partition", target="worker-1", duration=300,
                                 **{"from": ["broker"]}), workers=1, count=3)
    with ToxiproxyServer() as server:
        monkeypatch.setenv("TOXIPROXY_URL", server.url)
        result = run_real(s)
        assert proxies_on(server) == {}
    assert result.ok, result.summary["violations"]
    err = capsys.readouterr().err
    for phase in ("starting", "electing", "running", "settling", "checking"):
        assert f"[t] {phase}" in err
    assert "fault at 100 ms: partition worker-1" in err
    assert any(e.kind == "fault" and e.data["action"] == "partition" for e in result.events)
