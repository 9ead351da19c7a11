"""What the `io` task may touch on real processes (`dtq.runtime.sandbox`): files inside the I/O root
only, HTTP to public addresses only, unless an allow-list names them.

HTTP refusals are checked before any connection: `_connect` is replaced by one that fails the
test, so no packet leaves for a refused address. Allowed fetches go to a server on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dtq.runtime import sandbox as runtime_io
from dtq.runtime.sandbox import HttpPolicy, IoConfigError, IoRoot, http_get, resolve_io_root
from dtq.tasktypes import TaskError

# --- files -----------------------------------------------------------------------------------


@pytest.fixture
def box(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): the I/O root and a sibling directory it must never reach."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    return root, outside


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_files_inside_the_root_are_written_and_read(box: tuple[Path, Path]) -> None:
    root, _ = box
    files = IoRoot(str(root))
    files.write("/a/b/c.txt", b"hello")
    files.write("a/b/c.txt", b"again")
    assert files.read("a/./b//c.txt") == b"again"
    assert _tree(root) == {"a", "a/b", "a/b/c.txt"}  # no temporary file left behind


@pytest.mark.parametrize("path", ["../outside/x", "a/../../outside/x", "/../outside/x", "a/.."])
def test_a_path_leaving_the_root_is_refused(box: tuple[Path, Path], path: str) -> None:
    root, _ = box
    before = _tree(root.parent)
    with pytest.raises(TaskError, match=r"'\.\.'"):
        IoRoot(str(root)).write(path, b"x")
    with pytest.raises(TaskError, match=r"'\.\.'"):
        IoRoot(str(root)).read("../outside/secret")
    assert _tree(root.parent) == before


@pytest.mark.parametrize("path", ["", ".", "/", "./", "//."])
def test_a_path_naming_no_file_writes_nothing_anywhere(box: tuple[Path, Path], path: str) -> None:
    root, _ = box
    before = _tree(root.parent)
    with pytest.raises(TaskError, match="names no file"):
        IoRoot(str(root)).write(path, b"x")
    with pytest.raises(TaskError, match="names no file"):
        IoRoot(str(root)).read(path)
    assert _tree(root.parent) == before  # the old temporary name landed in the root's parent


def test_a_symbolic_link_on_the_way_is_refused(box: tuple[Path, Path]) -> None:
    root, outside = box
    (root / "link").symlink_to(outside, target_is_directory=True)
    files = IoRoot(str(root))
    with pytest.raises(TaskError, match="symbolic link"):
        files.write("link/planted", b"x")
    with pytest.raises(TaskError, match="symbolic link"):
        files.read("link/secret")
    assert _tree(outside) == {"secret"}


def test_a_symbolic_link_as_the_file_is_refused(box: tuple[Path, Path]) -> None:
    root, outside = box
    (root / "f").symlink_to(outside / "secret")
    files = IoRoot(str(root))
    with pytest.raises(TaskError, match="symbolic link"):
        files.read("f")
    with pytest.raises(TaskError, match="symbolic link"):
        files.write("f", b"overwritten")
    assert (outside / "secret").read_bytes() == b"secret"


def test_special_files_and_hard_links_are_refused(box: tuple[Path, Path]) -> None:
    root, outside = box
    os.mkfifo(root / "fifo")
    os.link(outside / "secret", root / "hard")
    files = IoRoot(str(root))
    with pytest.raises(TaskError, match="not a regular file"):
        files.read("fifo")  # refused without blocking on a FIFO with no writer
    with pytest.raises(TaskError, match="hard links"):
        files.read("hard")
    with pytest.raises(TaskError, match="not a regular file"):
        files.write("fifo", b"x")


def test_the_default_root_is_a_data_directory_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DTQ_IO_ROOT", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    root = resolve_io_root()
    assert root == str(tmp_path / "data" / "dtq" / "io") and Path(root).is_dir()
    assert root != os.getcwd()
    monkeypatch.setenv("DTQ_IO_ROOT", str(tmp_path / "env-root"))
    assert resolve_io_root() == str(tmp_path / "env-root")
    assert resolve_io_root(str(tmp_path / "flag-root")) == str(tmp_path / "flag-root")


# --- HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every address `http_get` connects to (it still connects, to the local test server)."""
    seen: list[Any] = []
    real = runtime_io._connect

    def recording(family: int, sockaddr: tuple[Any, ...], timeout: float) -> Any:
        seen.append(sockaddr[0])
        assert ipaddress.ip_address(sockaddr[0]).is_loopback, "traffic left the machine"
        return real(family, sockaddr, timeout)

    monkeypatch.setattr(runtime_io, "_connect", recording)
    return seen


def _get(url: str, policy: HttpPolicy | None = None) -> tuple[int, bytes]:
    return http_get(url, deadline=time.monotonic() + 10, policy=policy or HttpPolicy())


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6379/", "http://localhost:8000/cluster", "http://169.254.169.254/latest",
    "http://10.0.0.1/", "http://192.168.1.1/", "http://172.16.0.1/", "http://100.64.0.1/",
    "http://0.0.0.0:8000/", "http://224.0.0.1/", "http://240.0.0.1/", "http://[::1]:8000/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:169.254.169.254]/", "http://[fd00::1]/",
    "http://[fe80::1]/", "http://[64:ff9b::a00:1]/", "http://[2002:a00:1::]/",
    "https://127.0.0.1/",
])
def test_non_public_addresses_are_refused_before_connecting(
    url: str, connects: list[Any],
) -> None:
    with pytest.raises(TaskError, match="not a public address"):
        _get(url)
    assert connects == []


def test_the_checked_address_is_the_one_connected_to(
    server: tuple[int, type[_Handler]], connects: list[Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name is resolved once; the connection goes to the answer that was checked, so a
    second DNS answer (rebinding) cannot send it elsewhere."""
    port, handler = server
    handler.routes["/"] = (200, {}, b"pinned")
    answers = iter([[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]])
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: next(answers))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("resolved"))
    policy = HttpPolicy.from_entries([f"127.0.0.1:{port}"])
    assert _get(f"http://rebind.test:{port}/", policy) == (200, b"pinned")
    assert connects == ["127.0.0.1"]


def test_only_http_urls_are_fetched(connects: list[Any]) -> None:
    for url in ("file:///etc/passwd", "gopher://127.0.0.1/", "http:///nohost", "ftp://x/"):
        with pytest.raises(TaskError):
            _get(url)
    assert connects == []


class _Handler(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}
    hits: ClassVar[list[str]] = []
    stall: ClassVar[threading.Event] = threading.Event()

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        if self.path == "/stall":
            self.send_response(200)
            self.end_headers()
            self.wfile.flush()
            self.stall.wait(30)
            return
        status, headers, body = self.routes.get(self.path, (404, {}, b"no"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[int, type[_Handler]]]:
    class Handler(_Handler):
        routes: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}
        hits: ClassVar[list[str]] = []
        stall: ClassVar[threading.Event] = threading.Event()

    handler = Handler
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], handler
    finally:
        handler.stall.set()
        httpd.shutdown()
        httpd.server_close()


def test_an_allowed_address_is_fetched(
    server: tuple[int, type[_Handler]], connects: list[Any],
) -> None:
    port, handler = server
    handler.routes["/x?q=1"] = (200, {}, b"body")
    with pytest.raises(TaskError, match="not a public address"):
        _get(f"http://127.0.0.1:{port}/x?q=1")
    with pytest.raises(TaskError, match="not a public address"):
        _get(f"http://127.0.0.1:{port}/x?q=1", HttpPolicy.from_entries([f"127.0.0.1:{port + 1}"]))
    assert handler.hits == [] and connects == []
    for entry in (f"127.0.0.1:{port}", "127.0.0.0/8", "127.0.0.1"):
        assert _get(f"http://127.0.0.1:{port}/x?q=1", HttpPolicy.from_entries([entry])) == (
            200, b"body")
    handler.routes["/missing"] = (404, {}, b"gone")
    assert _get(f"http://127.0.0.1:{port}/missing",
                HttpPolicy.from_entries([f"127.0.0.1:{port}"])) == (404, b"gone")


def test_the_allow_list_comes_from_the_environment(
    server: tuple[int, type[_Handler]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, handler = server
    handler.routes["/"] = (200, {}, b"ok")
    monkeypatch.setenv("DTQ_IO_HTTP_ALLOW", f"10.1.2.3, 127.0.0.1:{port}")
    runtime_io.use_http_policy(None)
    assert _get(f"http://127.0.0.1:{port}/", runtime_io.current_http_policy()) == (200, b"ok")
    monkeypatch.setenv("DTQ_IO_HTTP_ALLOW", "not-an-address")
    with pytest.raises(IoConfigError, match="not-an-address"):
        runtime_io.current_http_policy()


@pytest.mark.parametrize("target", ["http://127.0.0.1:{other}/", "http://169.254.169.254/",
                                    "http://[::1]:{port}/", "http://localhost:{other}/"])
def test_a_redirect_to_a_refused_address_is_refused(
    server: tuple[int, type[_Handler]], connects: list[Any], target: str,
) -> None:
    port, handler = server
    handler.routes["/go"] = (302, {"Location": target.format(port=port, other=port + 1)}, b"")
    with pytest.raises(TaskError, match="not a public address"):
        _get(f"http://127.0.0.1:{port}/go", HttpPolicy.from_entries([f"127.0.0.1:{port}"]))
    assert connects == ["127.0.0.1"]  # the first hop only


def test_redirects_are_followed_up_to_a_limit(
    server: tuple[int, type[_Handler]], connects: list[Any],
) -> None:
    port, handler = server
    policy = HttpPolicy.from_entries([f"127.0.0.1:{port}"])
    handler.routes["/a"] = (301, {"Location": "/b"}, b"")
    handler.routes["/b"] = (200, {}, b"arrived")
    assert _get(f"http://127.0.0.1:{port}/a", policy) == (200, b"arrived")
    handler.routes["/loop"] = (307, {"Location": "/loop"}, b"")
    handler.hits.clear()
    with pytest.raises(TaskError, match="more than 5 redirects"):
        _get(f"http://127.0.0.1:{port}/loop", policy)
    assert handler.hits == ["/loop"] * 6


def test_a_response_over_the_size_limit_is_refused(server: tuple[int, type[_Handler]]) -> None:
    port, handler = server
    policy = HttpPolicy.from_entries([f"127.0.0.1:{port}"])
    small = HttpPolicy(allow=policy.allow, max_bytes=1000)
    handler.routes["/big"] = (200, {}, b"x" * 1001)
    handler.routes["/lying"] = (200, {"Content-Length": "10"}, b"x" * 1001)
    handler.routes["/fits"] = (200, {}, b"x" * 1000)
    with pytest.raises(TaskError, match="1000-byte limit"):
        _get(f"http://127.0.0.1:{port}/big", small)
    assert _get(f"http://127.0.0.1:{port}/fits", small) == (200, b"x" * 1000)
    assert _get(f"http://127.0.0.1:{port}/big", policy) == (200, b"x" * 1001)


def test_a_response_too_slow_is_cut_off(server: tuple[int, type[_Handler]]) -> None:
    port, _ = server
    policy = HttpPolicy(allow=HttpPolicy.from_entries([f"127.0.0.1:{port}"]).allow,
                        timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(TaskError, match=r"out of time|timed out"):
        _get(f"http://127.0.0.1:{port}/stall", policy)
    assert time.monotonic() - started < 10  # the server holds the answer for 30 s


def test_allow_list_entries() -> None:
    policy = HttpPolicy.from_entries(["10.0.0.0/8", "[::1]:8080,192.168.1.5"])
    assert policy.allows(ipaddress.ip_address("10.9.9.9"), 1)
    assert policy.allows(ipaddress.ip_address("::1"), 8080)
    assert not policy.allows(ipaddress.ip_address("::1"), 8081)
    assert policy.allows(ipaddress.ip_address("192.168.1.5"), 22)
    assert not policy.allows(ipaddress.ip_address("192.168.1.6"), 22)
    assert HttpPolicy().allows(ipaddress.ip_address("93.184.216.34"), 80)
    for bad in ("host.example:80", "10.0.0.1:port", "[::1"):
        with pytest.raises(IoConfigError):
            HttpPolicy.from_entries([bad])
