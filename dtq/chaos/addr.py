"""``host:port`` addresses as Toxiproxy's Go server handles them.

Parsing follows Go's ``net.SplitHostPort``; resolution prefers IPv4 like Go's ``net.Listen``;
a wildcard host (``""``, ``0.0.0.0`` or ``::``) binds a dual-stack IPv6 socket reported as
``[::]:PORT``; failures carry Go's error text, because the API returns it verbatim in 500s
(``listen tcp 127.0.0.1:3310: bind: address already in use``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

WILDCARDS = frozenset({"0.0.0.0", "::"})


class AddressError(Exception):
    """An address that cannot be parsed, resolved or bound; the message is Go's text."""


@dataclass(frozen=True)
class ResolvedAddress:
    """An IP (None for the unspecified host) and a port."""

    ip: str | None
    port: int

    def go_string(self) -> str:
        """The address as Go's ``TCPAddr.String`` prints it."""
        return join_host_port(self.ip or "", self.port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, str]:
    """Split ``host:port`` exactly where Go's ``net.SplitHostPort`` would, or raise."""

    def fail(why: str) -> AddressError:
        return AddressError(f"address {address}: {why}")

    colon = address.rfind(":")
    if colon < 0:
        raise fail("missing port in address")
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise fail("missing ']' in address")
        if end + 1 == len(address):
            raise fail("missing port in address")
        if end + 1 != colon:
            colons = address[end + 1] == ":"
            raise fail("too many colons in address" if colons else "missing port in address")
        host, rest_from, tail_from = address[1:end], 1, end + 1
    else:
        host, rest_from, tail_from = address[:colon], 0, colon
        if ":" in host:
            raise fail("too many colons in address")
    if "[" in address[rest_from:]:
        raise fail("unexpected '[' in address")
    if "]" in address[tail_from:]:
        raise fail("unexpected ']' in address")
    return host, address[colon + 1 :]


def parse_port(port: str) -> int:
    """A decimal port, an empty string (0), or a service name from the services database."""
    if port == "":
        return 0
    if port.isdigit():
        number = int(port)
        if number > 65535:
            raise AddressError(f"address {port}: invalid port")
        return number
    try:
        return socket.getservbyname(port, "tcp")
    except OSError:
        raise AddressError(f"lookup tcp/{port}: unknown port") from None


def _literal_ip(host: str) -> str | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


async def resolve(address: str) -> ResolvedAddress:
    """Resolve ``host:port`` to one IP (IPv4 preferred) the way Go's resolver picks it."""
    if address == "":  # Go treats an empty address as ":0"
        return ResolvedAddress(None, 0)
    host, port_text = split_host_port(address)
    port = parse_port(port_text)
    if host == "":
        return ResolvedAddress(None, port)
    literal = _literal_ip(host)
    if literal is not None:
        return ResolvedAddress(literal, port)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise AddressError(f"lookup {host}: no such host") from None
    ips = [str(info[4][0]) for info in infos]
    ipv4 = [ip for ip in ips if ":" not in ip]
    if not ips:
        raise AddressError(f"lookup {host}: no such host")
    return ResolvedAddress((ipv4 or ips)[0], port)


def _go_errno_text(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def bind_listener(address: ResolvedAddress) -> socket.socket:
    """A listening, non-blocking socket with SO_REUSEADDR, dual-stack for wildcard hosts."""
    try:
        return _bind(address)
    except OSError as exc:
        text = f"listen tcp {address.go_string()}: bind: {_go_errno_text(exc)}"
        raise AddressError(text) from None


def _bind(address: ResolvedAddress) -> socket.socket:
    if address.ip is None or address.ip in WILDCARDS:
        if socket.has_ipv6:
            try:
                return _open_socket(socket.AF_INET6, "::", address.port, dual_stack=True)
            except OSError as exc:
                if exc.errno not in {97, 99}:  # EAFNOSUPPORT, EADDRNOTAVAIL: no IPv6 here
                    raise
        return _open_socket(socket.AF_INET, "0.0.0.0", address.port, dual_stack=False)
    family = socket.AF_INET6 if ":" in address.ip else socket.AF_INET
    return _open_socket(family, address.ip, address.port, dual_stack=False)


def _open_socket(family: int, host: str, port: int, *, dual_stack: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def sockname_text(sock: socket.socket) -> str:
    """The bound address of a socket in Go's ``host:port`` form."""
    name = sock.getsockname()
    host = str(name[0])
    return join_host_port(_literal_ip(host) or host, int(name[1]))


def upstream_target(address: str) -> tuple[str, int]:
    """Host and port to dial for an upstream; an empty host means this machine."""
    host, port_text = split_host_port(address)
    return host or "127.0.0.1", parse_port(port_text)
