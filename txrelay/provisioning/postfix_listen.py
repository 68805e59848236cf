"""Listen addresses of master.cf inet services: parsing --listen, and whether a port is taken.

A master.cf inet service is named PORT, NAME (/etc/services), HOST:PORT or [IPV6]:PORT; a
name without a host listens on every address of inet_interfaces. txrelay never takes an
address that another service of the same master.cf or another process already listens on.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from txrelay.errors import InvalidInput

# Stands for every address (0.0.0.0, ::, inet_interfaces = all).
ANY = "*"
PROC_NET = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_LISTEN = "0A"
LISTEN_FORMS = (
    "give a port (2587), a service name from /etc/services (submission), "
    "IPV4:PORT (192.0.2.10:587) or [IPV6]:PORT ([2001:db8::10]:587)"
)


@dataclass(frozen=True)
class ListenAddress:
    """A master.cf inet service name and what it means: a host (None: inet_interfaces)."""

    service: str
    host: str | None
    port: int

    def addresses(self, inet_interfaces: str) -> frozenset[str]:
        if self.host is not None:
            return frozenset({_normal_host(self.host)})
        return interface_addresses(inet_interfaces)

    def describe(self) -> str:
        where = self.host if self.host is not None else "all addresses"
        return f"port {self.port} on {where}"


def parse_listen(spec: str, option: str = "--listen") -> ListenAddress:
    """An admin's --listen value; anything else is one line naming the accepted forms."""
    found = _parse(spec.strip(), strict=True)
    if found is None:
        raise InvalidInput(f"{option} {spec!r} is not a listen address: {LISTEN_FORMS}")
    return found


def parse_service_name(name: str) -> ListenAddress | None:
    """What an existing master.cf inet service listens on (None when it cannot be told)."""
    return _parse(name, strict=False)


def _parse(spec: str, *, strict: bool) -> ListenAddress | None:
    host: str | None = None
    port_part = spec
    if spec.startswith("["):
        inside, sep, rest = spec[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        host, port_part = inside, rest[1:]
        if not _is_ip(host, version=6):
            return None
    elif ":" in spec:
        host, _, port_part = spec.rpartition(":")
        if not _is_ip(host, version=4):
            if strict:
                return None
            host = _resolve(host)
            if host is None:
                return None
    port = _port(port_part)
    if port is None:
        return None
    return ListenAddress(spec, host, port)


def _port(text: str) -> int | None:
    if text.isdigit():
        number = int(text)
        return number if 0 < number < 65536 else None
    if not text or not all(c.isalnum() or c in "-_." for c in text):
        return None
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        return None


def _is_ip(text: str, *, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _resolve(host: str) -> str | None:
    try:
        return str(socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0])
    except (OSError, IndexError):
        return None


def _normal_host(host: str) -> str:
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        return ANY
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def interface_addresses(inet_interfaces: str) -> frozenset[str]:
    """The addresses inet_interfaces names (ANY for all)."""
    names = inet_interfaces.replace(",", " ").split() or ["all"]
    addresses: set[str] = set()
    for name in names:
        if name == "all":
            return frozenset({ANY})
        if name in ("loopback-only", "localhost"):
            addresses.update({"127.0.0.1", "::1"})
            continue
        resolved = (
            name.strip("[]")
            if _is_ip(name.strip("[]"), version=4) or _is_ip(name.strip("[]"), version=6)
            else _resolve(name)
        )
        # An interface name nobody can resolve: assume the worst, it may be any address.
        addresses.add(_normal_host(resolved) if resolved else ANY)
    return frozenset(addresses)


def overlap(first: Iterable[str], second: Iterable[str]) -> bool:
    """Whether two sets of listen addresses on one port would collide."""
    first, second = set(first), set(second)
    return ANY in first or ANY in second or bool(first & second)


def listening_sockets() -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket of this host's network namespace."""
    found = []
    for path in PROC_NET:
        try:
            lines = path.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == TCP_LISTEN:
                address, _, port = fields[1].partition(":")
                found.append((_normal_host(_proc_address(address)), int(port, 16)))
    return found


def _proc_address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def bound_elsewhere(addresses: frozenset[str], port: int) -> bool:
    """Whether some process listens on this port at one of these addresses (or all)."""
    sockets = listening_sockets()
    if sockets:
        return any(p == port and overlap(addresses, {a}) for a, p in sockets)
    return not all(_can_bind(address, port) for address in addresses)


def _can_bind(address: str, port: int) -> bool:
    host = "0.0.0.0" if address == ANY else address  # noqa: S104 - a bind probe, closed at once
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except PermissionError:
            return True  # a privileged port: cannot tell by binding, assume free
        except OSError:
            return False
    return True
