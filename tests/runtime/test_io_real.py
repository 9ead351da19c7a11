"""The `io` task on a real worker process: files only inside its I/O root, HTTP only to public
addresses or those its allow-list names (`dtq.runtime.sandbox`, wired through
`dtq.runtime.process`).

Skipped when RabbitMQ or Redis is down locally; failing under CI.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dtq.client.submitter import Submitter
from dtq.envelope import Finished
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.scenario.real import wait_for
from dtq.task import TaskSpec
from transports.rabbitmq import delete_namespace
from transports.redis import RedisStore

pytestmark = pytest.mark.rabbitmq


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_io_task_stays_inside_its_root_and_off_private_addresses(
    rabbitmq_url: str, redis_url: str, tmp_path: Path, local_server: int,
) -> None:
    ns = f"test-{uuid.uuid4().hex[:8]}"
    root, outside = tmp_path / "io", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    common: dict[str, Any] = {"broker_url": rabbitmq_url, "store_url": redis_url,
                              "namespace": ns, "log_level": "warning"}
    sup = Supervisor([
        NodeConfig(role="coordinator", name="coordinator-1", **common),
        NodeConfig(role="worker", name="worker-1", io_root=str(root),
                   io_http_allow=(f"127.0.0.1:{local_server}",), **common)])
    store = RedisStore.from_url(redis_url, prefix=ns)
    heard: queue.Queue[Finished] = queue.Queue()
    sup.start()
    submitter = Submitter(rabbitmq_url, namespace=ns, name="client", on_finished=heard.put,
                          store_url=redis_url)
    tasks = {
        "write": {"op": "write", "path": "a/b.txt", "data": "inside"},
        "write-up": {"op": "write", "path": "../outside/planted", "data": "x"},
        "write-dot": {"op": "write", "path": ".", "data": "x"},
        "read-up": {"op": "read", "path": "../outside/secret"},
        "metadata": {"op": "http_get", "url": "http://169.254.169.254/latest/meta-data/"},
        "private": {"op": "http_get", "url": "http://10.0.0.1/"},
        "loopback": {"op": "http_get", "url": f"http://127.0.0.1:{local_server + 1}/"},
        "allowed": {"op": "http_get", "url": f"http://127.0.0.1:{local_server}/"},
        "via-link": {"op": "read", "path": "link/secret"},
    }
    try:
        wait_for(lambda: store.lease("coordinator") is not None, 60, "a leader", sup.poll)
        submitter.submit([TaskSpec(id=name, type="io", payload=payload, max_attempts=1)
                          for name, payload in tasks.items()])
        ends: dict[str, tuple[str, str | None]] = {}
        while len(ends) < len(tasks):
            f = heard.get(timeout=60)
            ends[f.task_id] = (f.state, f.reason)
    finally:
        submitter.close()
        sup.stop_all()
        store.delete_all()
        store.close()
        delete_namespace(rabbitmq_url, ns, ["coordinator-1", "worker-1", "client"])
    assert ends.pop("write") == ("succeeded", None)
    assert (root / "a" / "b.txt").read_text() == "inside"
    assert ends.pop("allowed") == ("succeeded", None)
    expected = {"write-up": "'..'", "write-dot": "names no file", "read-up": "'..'",
                "via-link": "symbolic link", "metadata": "not a public address",
                "private": "not a public address", "loopback": "not a public address"}
    for name, words in expected.items():
        state, reason = ends[name]
        assert state == "failed" and words in str(reason), (name, state, reason)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["io", "outside"]
