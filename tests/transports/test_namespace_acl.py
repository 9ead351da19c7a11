"""A namespace as a boundary: a Redis ACL user limited to its own keys and channels (the
README's recipe, `~NS:*` and `&NS:*` with `+@all -@admin -@dangerous`) passes the whole store
conformance suite, and cannot read or write another namespace.

Runs on a redis-server of its own (a free port, its own directory), never the shared one.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from uuid import uuid4

import pytest
import redis

from dtq.errors import StoreError
from dtq.store import PutTask
from dtq.task import TaskRecord, TaskSpec
from dtq.testing.conformance import PollingClock, StoreClock, StoreConformance
from transports.redis import RedisStore

PASSWORD = "ns-a-" + uuid4().hex


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port, workdir = _free_port(), tmp_path_factory.mktemp("redis-acl")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(workdir), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = redis.Redis(port=port, socket_connect_timeout=1)
    try:
        deadline = time.monotonic() + 30
        while True:  # until it answers
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)  # polling period of a bounded wait
        for ns in ("ns-a", "ns-b"):
            admin.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "SETUSER", ns, "on", f">{PASSWORD}", f"~{ns}:*", f"&{ns}:*", "+@all",
                "-@admin", "-@dangerous")
        admin.set("ns-b:secret", "b's")
        yield port
    finally:
        admin.close()
        proc.terminate()
        proc.wait(30)


def _store(port: int, user: str, prefix: str) -> RedisStore:
    return RedisStore.from_url(f"redis://{user}:{PASSWORD}@127.0.0.1:{port}/0", prefix=prefix)


class TestStoreAsANamespaceUser(StoreConformance):
    short_ttl_ms = 150

    @pytest.fixture
    def store_clock(self) -> StoreClock:
        return PollingClock()

    @pytest.fixture
    def store(self, server: int) -> Iterator[RedisStore]:
        store = _store(server, "ns-a", "ns-a")
        try:
            yield store
        finally:
            store.delete_all()
            store.close()


def test_a_namespace_user_cannot_touch_another_namespace(server: int) -> None:
    own = _store(server, "ns-a", "ns-a")
    other = _store(server, "ns-a", "ns-b")
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            own.client.get("ns-b:secret")
        record = TaskRecord(spec=TaskSpec(id="t-1", type="echo"))
        with pytest.raises(StoreError, match=r"permission|NOPERM"):
            other.apply([PutTask(record=record)], epoch=0)
        own.apply([PutTask(record=record)], epoch=0)
        assert own.get_task("t-1") is not None
    finally:
        own.delete_all()
        own.close()
        other.close()
