"""The command-line entry points and the in-process server helper."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtq.chaos import ToxiproxyServer, cli
from dtq.chaos.testkit import ApiClient, TcpServer, connect, wait_until

ROOT = Path(__file__).resolve().parents[2]


class Running:
    """``python -m dtq.chaos`` in a subprocess, with its log lines collected as they come."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dtq.chaos", "--port", "0", "--log-format", "json", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[dict[str, object]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(json.loads(line))

    def logged(self, message: str) -> dict[str, object]:
        wait_until(
            lambda: (
                any(line["message"] == message for line in self.lines)
                or self.process.poll() is not None
            ),
            timeout=20,
            what=message,
        )
        return next(line for line in self.lines if line["message"] == message)

    def address(self) -> str:
        return str(self.logged("Starting Toxiproxy HTTP server")["address"])

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=20)
        self._reader.join(5)
        return code


@pytest.fixture
def config(tmp_path: Path) -> Iterator[tuple[Path, TcpServer]]:
    with TcpServer() as upstream:
        path = tmp_path / "toxiproxy.json"
        entries = [{"name": "web", "listen": "127.0.0.1:0", "upstream": upstream.address}]
        path.write_text(json.dumps(entries))
        yield path, upstream


def test_configure_defaults_and_help() -> None:
    parser = argparse.ArgumentParser(prog="dtq toxiproxy")
    cli.configure(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.config, args.seed) == ("127.0.0.1", 8474, None, None)
    assert not args.proxy_metrics and not args.runtime_metrics
    text = parser.format_help()
    for expected in ("--host", "--port", "--config", "example:", "/populate", "LOG_LEVEL"):
        assert expected in text


def test_module_serves_until_sigterm(config: tuple[Path, TcpServer]) -> None:
    path, _ = config
    running = Running("--config", str(path), "--seed", "3")
    try:
        api = ApiClient(running.address())
        listed = api.request("GET", "/proxies").json()
        assert isinstance(listed, dict)
        listen = listed["web"]["listen"]
        with connect(listen) as sock:
            sock.sendall(b"hi")
            assert sock.recv(2) == b"hi"
        api.close()
    finally:
        code = running.stop()
    assert code == 0
    assert running.logged("Shutting down")
    assert running.logged("Populated proxies from file")["proxies"] == 1


def test_module_exits_cleanly_on_sigint() -> None:
    running = Running()
    running.address()
    assert running.stop(signal.SIGINT) == 0


def test_busy_api_port_exits_1() -> None:
    with ToxiproxyServer() as server:
        running = Running("--port", str(server.port))
        assert running.process.wait(timeout=20) == 1
        assert running.logged("Cannot start the API server")


def test_bad_config_is_logged_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"name": "not a list"}')
    running = Running("--config", str(path))
    try:
        assert running.logged("Error parsing config file")
        running.address()
    finally:
        assert running.stop() == 0


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--version"])
    assert "2.12.0" in capsys.readouterr().out


def test_server_helper_lifecycle(config: tuple[Path, TcpServer]) -> None:
    path, _ = config
    server = ToxiproxyServer(config=path)
    url = server.start()
    assert url == f"http://127.0.0.1:{server.port}"
    assert server.start() == url  # idempotent
    api = ApiClient(server.address)
    listen = str(api.request("GET", "/proxies/web").json()["listen"])  # type: ignore[index]
    api.close()
    server.stop()
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        connect(listen)
    with pytest.raises(ConnectionRefusedError):
        connect(server.address)


def test_server_helper_reports_bind_errors() -> None:
    with ToxiproxyServer() as first, pytest.raises(Exception, match="address already in use"):
        ToxiproxyServer(port=first.port).start()
