"""What a task may touch on real processes: files inside one root directory, HTTP only to public
addresses.

The rule: a task reads and writes nothing but regular files under its I/O root, and fetches
nothing but addresses on the public internet, or ones an operator named in an allow-list.

Files. The root is the worker's `--io-root`, else `$DTQ_IO_ROOT`, else a data directory of
dtq's own (`$XDG_DATA_HOME/dtq/io`, by default `~/.local/share/dtq/io`), created on first use;
never the working directory. A task's path is taken relative to the root (a leading `/` is
dropped); a path with a `..` part, and one that names no file (`""`, `"."`, `"/"`), is refused.
Every directory on the way is opened relative to the one before with O_NOFOLLOW, so a
symbolic link anywhere in the path refuses the access, even one planted after a check. Only a
regular file with a single link is read or replaced: devices, FIFOs, sockets and hard links
(which may share a file outside the root) are refused. A write goes to a temporary file created
(O_EXCL) in the target's own directory, so temporary names stay inside the root too, then is
renamed over the target.

HTTP. `http_get` resolves the host itself, refuses every address that is not global unicast
(loopback, private, link-local, which holds the 169.254.169.254 metadata service, shared
100.64/10, multicast, reserved, unspecified; IPv4 carried inside IPv6 is checked as IPv4), and
connects to the very address it checked, so a second DNS answer cannot swap it. Redirects are
followed by hand, each hop checked the same way, at most `MAX_REDIRECTS`. A response is capped
in size (`HTTP_MAX_BYTES`) and time (`HTTP_TIMEOUT_S`, or the task's own deadline if sooner).
The allow-list (`--io-http-allow`, `$DTQ_IO_HTTP_ALLOW`, comma-separated `ADDR`, `ADDR:PORT`,
`[V6]:PORT` or `NET/LEN`) lets the addresses it names through.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import ipaddress
import os
import secrets
import socket
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import attrs

from dtq.errors import DtqError
from dtq.tasktypes import TaskError

__all__ = [
    "HTTP_MAX_BYTES", "HTTP_TIMEOUT_S", "MAX_READ_BYTES", "MAX_REDIRECTS", "HttpPolicy",
    "IoRoot", "current_http_policy", "default_io_root", "http_get", "resolve_io_root",
    "use_http_policy",
]

MAX_READ_BYTES = 64 * 1024 * 1024
HTTP_MAX_BYTES = 10 * 1024 * 1024
HTTP_TIMEOUT_S = 30.0
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class IoConfigError(DtqError, ValueError):
    """The I/O root or the HTTP allow-list is misconfigured."""


# --- the root --------------------------------------------------------------------------------


def default_io_root() -> Path:
    """dtq's own data directory for task files: $XDG_DATA_HOME/dtq/io or ~/.local/share/dtq/io."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "dtq" / "io"


def resolve_io_root(explicit: str | None = None) -> str:
    """The root a node uses (`explicit`, else $DTQ_IO_ROOT, else `default_io_root()`), created
    with mode 0700 if missing, as an absolute path with links resolved."""
    root = Path(explicit or os.environ.get("DTQ_IO_ROOT") or default_io_root()).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IoConfigError(f"cannot create the I/O root {str(root)!r}: {exc.strerror}") from exc
    if not root.is_dir():
        raise IoConfigError(f"the I/O root {str(root)!r} is not a directory")
    return str(root.resolve())


class IoRoot:
    """Contained file access under `root` (an existing directory)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def read(self, path: str) -> bytes:
        parts = _parts(path)
        with _Fd(self._open_dir(path, parts[:-1], create=False)) as dirfd:
            try:
                _check_file(os.stat(parts[-1], dir_fd=dirfd, follow_symlinks=False), path)
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError as exc:
                raise _refused("read", path, exc) from exc
            with _Fd(fd):
                info = os.fstat(fd)
                _check_file(info, path)
                if info.st_size > MAX_READ_BYTES:
                    raise TaskError(f"cannot read {path!r}: larger than {MAX_READ_BYTES} bytes")
                return _read_all(fd, path)

    def write(self, path: str, data: bytes) -> None:
        parts = _parts(path)
        name = parts[-1]
        with _Fd(self._open_dir(path, parts[:-1], create=True)) as dirfd:
            with contextlib.suppress(FileNotFoundError):
                _check_file(os.stat(name, dir_fd=dirfd, follow_symlinks=False), path)
            tmp = f".{name}.{secrets.token_hex(6)}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
            except OSError as exc:
                raise _refused("write", path, exc) from exc
            try:
                with _Fd(fd):
                    _write_all(fd, data)
                    os.fsync(fd)
                os.replace(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dirfd)
                raise _refused("write", path, exc) from exc

    def _open_dir(self, path: str, parts: list[str], *, create: bool) -> int:
        """A descriptor of the directory `parts` under the root, each step without links."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                fd = _step(fd, part, create=create)
        except OSError as exc:
            os.close(fd)
            raise _refused("write" if create else "read", path, exc) from exc
        return fd


def _step(fd: int, part: str, *, create: bool) -> int:
    """Open directory `part` inside `fd` (never through a link), closing `fd`."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        child = os.open(part, flags, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, 0o700, dir_fd=fd)
        child = os.open(part, flags, dir_fd=fd)
    os.close(fd)
    return child


def _parts(path: str) -> list[str]:
    if "\0" in path:
        raise TaskError(f"path {path!r} holds a NUL character")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TaskError(f"path {path!r} has a '..' part: paths stay inside the I/O root")
    if not parts:
        raise TaskError(f"path {path!r} names no file inside the I/O root")
    return parts


def _check_file(info: os.stat_result, path: str) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise TaskError(f"path {path!r} is a symbolic link: links are refused")
    if not stat.S_ISREG(info.st_mode):
        raise TaskError(f"path {path!r} is not a regular file")
    if info.st_nlink > 1:
        raise TaskError(f"path {path!r} has {info.st_nlink} hard links: refused")


def _refused(what: str, path: str, exc: OSError) -> TaskError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return TaskError(f"cannot {what} {path!r}: a symbolic link or a non-directory is on "
                         "the way (links are refused)")
    return TaskError(f"cannot {what} {path!r}: {exc.strerror or exc}")


def _read_all(fd: int, path: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, 1 << 20):
        total += len(chunk)
        if total > MAX_READ_BYTES:
            raise TaskError(f"cannot read {path!r}: larger than {MAX_READ_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Fd:
    """Closes a file descriptor on leaving the block."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)


# --- HTTP ------------------------------------------------------------------------------------


@attrs.frozen
class HttpPolicy:
    """Which addresses `http_get` may connect to, and how much it may take."""

    allow: tuple[tuple[IpNetwork, int | None], ...] = ()
    max_bytes: int = HTTP_MAX_BYTES
    timeout_s: float = HTTP_TIMEOUT_S
    max_redirects: int = MAX_REDIRECTS

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> HttpPolicy:
        """A policy allowing the comma-separated `ADDR`, `ADDR:PORT`, `[V6]:PORT`, `NET/LEN`."""
        allow = [_allow_entry(e.strip()) for text in entries for e in text.split(",")
                 if e.strip()]
        return cls(allow=tuple(allow))

    @classmethod
    def from_environment(cls, extra: Iterable[str] = ()) -> HttpPolicy:
        """`extra` entries (a worker's flags) and those of $DTQ_IO_HTTP_ALLOW."""
        return cls.from_entries([*extra, os.environ.get("DTQ_IO_HTTP_ALLOW", "")])

    def allows(self, ip: IpAddress, port: int) -> bool:
        for net, allowed_port in self.allow:
            if ip.version == net.version and ip in net and allowed_port in (None, port):
                return True
        return all(_public(a) for a in _embedded(ip))


def _allow_entry(entry: str) -> tuple[IpNetwork, int | None]:
    try:
        if "/" in entry:
            return ipaddress.ip_network(entry, strict=False), None
        if entry.startswith("["):
            addr, bracket, port = entry[1:].partition("]")
            if not bracket or (port and not port.startswith(":")):
                raise ValueError(entry)
            return ipaddress.ip_network(addr), int(port[1:]) if port else None
        if entry.count(":") == 1:
            addr, port = entry.split(":")
            return ipaddress.ip_network(addr), int(port)
        return ipaddress.ip_network(entry), None
    except ValueError:
        raise IoConfigError(f"HTTP allow-list entry {entry!r} is not ADDR, ADDR:PORT, "
                            "[V6]:PORT or NET/LEN") from None


def _embedded(ip: IpAddress) -> list[IpAddress]:
    """`ip` and every IPv4 address it carries (mapped, 6to4, Teredo, NAT64)."""
    found: list[IpAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        found += [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
        if ip.teredo is not None:
            found += list(ip.teredo)
        if ip in _NAT64:
            found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _public(ip: IpAddress) -> bool:
    return ip.is_global and not (
        ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local))


_policy: HttpPolicy | None = None


def use_http_policy(policy: HttpPolicy | None) -> None:
    """Set this process's policy (a node's entry point does, from its flags); None: the
    environment's."""
    global _policy
    _policy = policy


def current_http_policy() -> HttpPolicy:
    return _policy if _policy is not None else HttpPolicy.from_environment()


@attrs.frozen
class _Target:
    scheme: str
    host: str
    port: int
    path: str


def http_get(url: str, *, deadline: float, policy: HttpPolicy) -> tuple[int, bytes]:
    """GET `url` (an absolute http or https URL) by the policy; (status, body). Error statuses
    are answers; a refused address, a timeout, an oversized body or a broken exchange raise
    `TaskError`. `deadline` is on the monotonic clock."""
    end = min(deadline, time.monotonic() + policy.timeout_s)
    for _ in range(policy.max_redirects + 1):
        target = _target(url)
        family, sockaddr = _checked_address(target, policy)
        status, location, body = _fetch(target, family, sockaddr, end, policy)
        if status not in _REDIRECTS or location is None:
            return status, body
        url = urljoin(url, location)
    raise TaskError(f"GET: more than {policy.max_redirects} redirects")


def _target(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TaskError(f"GET {url!r}: not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise TaskError(f"only http and https URLs are fetched, not {url!r}")
    if not parts.hostname:
        raise TaskError(f"GET {url!r}: no host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(scheme, parts.hostname, port or (443 if scheme == "https" else 80), path)


def _checked_address(target: _Target, policy: HttpPolicy) -> tuple[int, tuple[Any, ...]]:
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TaskError(f"GET: cannot resolve {target.host!r}: {exc}") from None
    refused = []
    for family, _, _, _, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if policy.allows(ip, target.port):
            return family, sockaddr
        refused.append(str(ip))
    raise TaskError(
        f"GET {target.host}:{target.port}: refused, {', '.join(dict.fromkeys(refused))} is not "
        "a public address (an operator may allow it: DTQ_IO_HTTP_ALLOW or --io-http-allow)")


def _connect(family: int, sockaddr: tuple[Any, ...], timeout: float) -> socket.socket:
    """A TCP connection to exactly `sockaddr` (an address `_checked_address` let through)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def _fetch(
    target: _Target, family: int, sockaddr: tuple[Any, ...], end: float, policy: HttpPolicy,
) -> tuple[int, str | None, bytes]:
    kind = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
    conn = kind(target.host, target.port, timeout=_remaining(end, target))
    conn._create_connection = (  # type: ignore[attr-defined]
        lambda _address, timeout, _source=None: _connect(family, sockaddr, timeout))
    try:
        conn.request("GET", target.path, headers={
            "User-Agent": "dtq-io", "Accept-Encoding": "identity", "Connection": "close"})
        resp = conn.getresponse()
        if resp.status in _REDIRECTS and resp.getheader("Location"):
            return resp.status, resp.getheader("Location"), b""
        length = resp.getheader("Content-Length", "")
        if length.isdigit() and int(length) > policy.max_bytes:
            raise TaskError(f"GET {target.host}: body of {length} bytes is over the "
                            f"{policy.max_bytes}-byte limit")
        chunks: list[bytes] = []
        total = 0
        while True:
            if conn.sock is not None:
                conn.sock.settimeout(_remaining(end, target))
            chunk = resp.read1(65536)
            if not chunk:
                return resp.status, None, b"".join(chunks)
            total += len(chunk)
            if total > policy.max_bytes:
                raise TaskError(f"GET {target.host}: body over the {policy.max_bytes}-byte "
                                "limit")
            chunks.append(chunk)
    except (OSError, http.client.HTTPException) as exc:
        raise TaskError(f"GET {target.host}{target.path} failed: "
                        f"{type(exc).__name__}: {exc}") from None
    finally:
        conn.close()


def _remaining(end: float, target: _Target) -> float:
    left = end - time.monotonic()
    if left <= 0:
        raise TaskError(f"GET {target.host}: out of time")
    return left
