"""The shipped deployment (compose.yaml, Dockerfile) keeps its data and exposes only the API,
and credentials reach nodes through their URLs, TLS schemes included.

The rule checked on compose.yaml: only the API publishes a port, on 127.0.0.1 unless changed;
Redis writes an append-only file fsynced every second to a volume and needs a password;
RabbitMQ has its own user and password (never guest) and keeps its data on a volume; the API
has tokens; Toxiproxy runs only under the `chaos` profile; every secret is required (compose
refuses to start without it).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pika
import pytest
import redis

from dtq.runtime.process import NodeConfig, broker_url, store_url
from transports.rabbitmq import redact
from transports.redis import RedisStore

ROOT = Path(__file__).resolve().parent.parent
NODES = ["coordinator-1", "coordinator-2", "worker-1", "worker-2", "worker-3", "api"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    doc: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return doc


def test_only_the_api_is_published_and_on_loopback(compose: dict[str, Any]) -> None:
    services = compose["services"]
    published = {name for name, s in services.items() if s.get("ports") or s.get("expose")}
    assert published == {"api"}
    assert services["api"]["ports"] == ["${DTQ_API_BIND:-127.0.0.1}:${DTQ_API_PORT:-8000}:8000"]
    assert services["toxiproxy"]["profiles"] == ["chaos"]
    assert all(s.get("network_mode") != "host" for s in services.values())


def test_redis_keeps_its_data_and_needs_a_password(compose: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    command = " ".join(redis_service["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert "--save \"\"" not in command and "--appendonly no" not in command
    assert "--requirepass ${DTQ_REDIS_PASSWORD:?" in command
    assert "redis-data:/data" in redis_service["volumes"] and "redis-data" in compose["volumes"]


def test_rabbitmq_has_its_own_user_and_keeps_its_data(compose: dict[str, Any]) -> None:
    rabbit = compose["services"]["rabbitmq"]
    env = rabbit["environment"]
    assert env["RABBITMQ_DEFAULT_USER"] not in ("", "guest")
    assert env["RABBITMQ_DEFAULT_PASS"].startswith("${DTQ_RABBITMQ_PASSWORD:?")
    assert "rabbitmq-data:/var/lib/rabbitmq" in rabbit["volumes"]
    assert "guest" not in (ROOT / "compose.yaml").read_text()


def test_nodes_reach_the_services_with_credentials_and_the_api_has_tokens(
    compose: dict[str, Any],
) -> None:
    for name in NODES:
        env = compose["services"][name]["environment"]
        assert re.fullmatch(r"amqp://dtq:\$\{DTQ_RABBITMQ_PASSWORD:\?[^}]*\}@rabbitmq:5672/dtq",
                            env["DTQ_BROKER_URL"]), env
        assert re.fullmatch(r"redis://:\$\{DTQ_REDIS_PASSWORD:\?[^}]*\}@redis:6379/0",
                            env["DTQ_STORE_URL"]), env
    assert compose["services"]["api"]["environment"]["DTQ_API_TOKENS"].startswith(
        "${DTQ_API_TOKENS:?")
    assert compose["services"]["api"]["command"][:3] == ["api", "--host", "0.0.0.0"]


def test_the_image_runs_unprivileged_with_its_own_io_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER dtq$", text, re.MULTILINE)
    assert "DTQ_IO_ROOT=/var/lib/dtq/io" in text


def test_credentials_and_tls_schemes_pass_through_to_the_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    amqps = "amqps://dtq:s3cret@rabbit.example:5671/ns-a"
    rediss = "rediss://ns-a-user:s3cret@redis.example:6380/0"
    monkeypatch.setenv("DTQ_BROKER_URL", amqps)
    monkeypatch.setenv("DTQ_STORE_URL", rediss)
    assert (broker_url(), store_url()) == (amqps, rediss)
    cfg = NodeConfig(role="worker", name="w", broker_url=broker_url(), store_url=store_url())
    params = pika.URLParameters(cfg.broker_url)
    assert params.ssl_options is not None and params.virtual_host == "ns-a"
    assert (params.credentials.username, params.credentials.password) == ("dtq", "s3cret")
    assert "s3cret" not in redact(cfg.broker_url)
    store = RedisStore.from_url(cfg.store_url, prefix="ns-a")  # connects lazily
    try:
        kwargs = store.client.connection_pool.connection_kwargs
        assert store.client.connection_pool.connection_class is redis.SSLConnection
        assert (kwargs["username"], kwargs["password"]) == ("ns-a-user", "s3cret")
    finally:
        store.close()


def test_the_command_line_runs_without_the_test_extra() -> None:
    """The README's first command installs dtq without pytest and runs a scenario: nothing the
    command line imports may need pytest (the conformance suites load when named)."""
    code = ("import sys; sys.modules['pytest'] = None; sys.modules['_pytest'] = None\n"
            "from dtq.cli.main import main\n"
            "sys.exit(main(['scenario', 'run', 'scenarios/round-robin.toml', '--json']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"ok": true' in done.stdout
