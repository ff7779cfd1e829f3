"""Decide which IP addresses the image fetcher may connect to, so a record cannot aim it at internal services.

A pure decision: the caller resolves the URL's host and passes in the address it will connect to. Loopback,
private, link-local, cloud metadata and other special-purpose addresses are refused unless allow-listed; an
IPv6 address that carries an IPv4 address is judged by that IPv4 address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from bridge.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# One part of an inet_aton address: hex, octal (leading 0) or decimal. Ten decimal digits cover 2**32.
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]{0,9}")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")

# (reason, networks), checked in order: the first match names the reason, so the more specific ranges come
# before the ranges that contain them (metadata inside link-local, private and CGNAT; 0.0.0.0 inside 0/8).
_REFUSED_RANGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cloud metadata", (
        "169.254.169.254/32",  # AWS, GCP, Azure, Oracle, OpenStack, DigitalOcean, ...
        "169.254.170.2/32",  # AWS ECS task metadata and credentials
        "169.254.170.23/32", "fd00:ec2::23/128",  # AWS EKS Pod Identity agent
        "fd00:ec2::254/128",  # AWS instance metadata over IPv6
        "fd20:ce::254/128",  # GCP metadata over IPv6
        "fe80::a9fe:a9fe/128",  # OpenStack metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud
        "169.254.0.23/32",  # Tencent Cloud
        "192.0.0.192/32",  # Oracle Cloud (legacy)
        "168.63.129.16/32",  # Azure WireServer
    )),
    ("unspecified", ("0.0.0.0/32", "::/128")),
    ("this network", ("0.0.0.0/8",)),
    ("loopback", ("127.0.0.0/8", "::1/128")),
    ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")),
    ("link-local", ("169.254.0.0/16", "fe80::/10")),
    ("shared (CGNAT)", ("100.64.0.0/10",)),
    ("multicast", ("224.0.0.0/4", "ff00::/8")),
    ("broadcast", ("255.255.255.255/32",)),
    ("reserved", ("240.0.0.0/4",)),
    ("IETF protocol assignment", ("192.0.0.0/24",)),
    ("documentation", ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20")),
    ("benchmarking", ("198.18.0.0/15", "2001:2::/48")),
    ("site-local", ("fec0::/10",)),
    ("discard-only", ("100::/64",)),
)
_REFUSED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(network), reason) for reason, networks in _REFUSED_RANGES for network in networks
)
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def parse_host_address(host: str) -> IPAddress | None:
    """The IP address a URL host spells, or None for a host name (or anything else).

    Accepts what inet_aton does: dotted quads and their shorter forms (127.1, 10.1.2), parts in octal (0177)
    or hex (0x7f), one 32-bit number (2130706433, 0x7f000001); also one trailing dot. IPv6 may be bracketed
    and may carry a zone id (fe80::1%eth0, or %25eth0 as in a URL), which is dropped.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
    return _parse_ipv4(host)


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    parts = host.removesuffix(".").split(".")
    if len(parts) > 4 or not all(_IPV4_PART.fullmatch(part) for part in parts):
        return None
    values = [int(part, 16 if part[1:2] in ("x", "X") else 8 if part[0] == "0" else 10) for part in parts]
    *head, last = values
    # The last part fills all the bytes the earlier parts leave: 127.1 is 127.0.0.1.
    if any(value > 0xFF for value in head) or last >= 1 << 8 * (5 - len(values)):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << 8 * (3 - index)
    return ipaddress.IPv4Address(number)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, or None.

    IPv4-mapped ::ffff:a.b.c.d, IPv4-compatible ::a.b.c.d (not :: or ::1), 6to4 2002:AABB:CCDD::/48, NAT64
    64:ff9b::/96 and 64:ff9b:1::/48 (the last 32 bits), Teredo 2001:0::/32 (the client address).
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address))
    return None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str  # "allowed", "allow-listed", or why not: "loopback", "private", "cloud metadata", ...


@dataclass(frozen=True)
class AddressPolicy:
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()  # lower-case host names; "*.example.com" matches its subdomains

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> AddressPolicy:
        """A policy allowing the given CIDRs (10.0.0.0/8, fd00::/8), addresses (127.0.0.1, ::1) and host names
        (images.internal, *.corp.example); raises ConfigError naming the first entry that is none of these."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in entries:
            text = entry.strip()
            if "/" in text:
                try:
                    networks.append(ipaddress.ip_network(text))
                except ValueError as exc:
                    raise ConfigError(f"invalid allow-list entry {entry!r}: {exc}") from exc
            elif (address := parse_host_address(text)) is not None:
                networks.append(ipaddress.ip_network(address))
            elif _is_host_pattern(name := _normalise_host(text)):
                hosts.add(name)
            else:
                raise ConfigError(f"invalid allow-list entry {entry!r}: not a CIDR, an IP address or a host name")
        return cls(tuple(networks), frozenset(hosts))

    def check(self, host: str, address: IPAddress) -> Verdict:
        """Whether the fetcher may connect to `address`, which `host` (the URL's host, name or literal) resolved
        to: allow-listed hosts and networks first, then the refused ranges, then Python's is_global."""
        address = type(address)(int(address))  # drops an IPv6 zone id
        target: IPAddress = address
        if isinstance(address, ipaddress.IPv6Address):
            target = embedded_ipv4(address) or address
        if self._host_allowed(host) or any(
            candidate in network for network in self.allowed_networks for candidate in (address, target)
        ):
            return Verdict(True, "allow-listed")
        for network, reason in _REFUSED:
            if target in network:
                return Verdict(False, reason)
        if not target.is_global:
            return Verdict(False, "not globally routable")
        return Verdict(True, "allowed")

    def _host_allowed(self, host: str) -> bool:
        name = _normalise_host(host)
        labels = name.split(".")
        return name in self.allowed_hosts or any(
            "*." + ".".join(labels[index:]) in self.allowed_hosts for index in range(1, len(labels))
        )


def _normalise_host(host: str) -> str:
    return host.lower().removesuffix(".")


def _is_host_pattern(name: str) -> bool:
    """Whether name is a host name, optionally with a leading "*." wildcard label, whose last label is not a
    number (so a mistyped address such as 10.0.0.256 is not taken for a name)."""
    labels = name.removeprefix("*.").split(".")
    return (len(name) <= 253 and not labels[-1].isdigit()
            and all(_HOST_LABEL.fullmatch(label) for label in labels))
