"""Where the model servers are, as one gRPC channel target that gRPC balances round_robin.

--model-server takes:
- HOST:PORT: gRPC's DNS resolver finds every address of HOST; calls go round-robin over the ones that are up;
- HOST:PORT,HOST:PORT,...: several servers. Names are resolved once, at start, to the channel's fixed list of
  addresses (gRPC has no resolver for a list of names);
- dns:///NAME:PORT: gRPC resolves NAME again when connections fail, so servers that come and go behind one name
  (a Kubernetes headless Service) are followed.

round_robin keeps a connection to every address and picks only those that are READY: a server that stops
answering is skipped as soon as its connection fails, and taken back once it reconnects. Calls that were in
flight on it fail UNAVAILABLE, and the predictor retries them, on the servers that are left.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Callable
from typing import Any

from bridge.errors import ConfigError

DNS_SCHEME = "dns:///"
ROUND_ROBIN = ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))
_HOST_PORT = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+)):(\d{1,5})$")

Resolver = Callable[..., list[tuple[Any, ...]]]


def _split(address: str) -> tuple[str, int] | None:
    match = _HOST_PORT.match(address)
    if not match or not 0 < int(match.group(3)) < 65536:
        return None
    return match.group(1) or match.group(2), int(match.group(3))


def valid_model_servers(value: object) -> bool:
    """HOST:PORT, a comma-separated list of them, or dns:///NAME:PORT."""
    if not isinstance(value, str) or not value:
        return False
    if value.startswith(DNS_SCHEME):
        return _split(value[len(DNS_SCHEME):]) is not None
    return all(_split(part) is not None for part in value.split(","))


def channel_target(servers: str, resolve: Resolver = socket.getaddrinfo) -> str:
    """The gRPC target for --model-server (see the module docstring). ConfigError if a listed name does not
    resolve, or the list mixes IPv4 and IPv6 (one target holds one address family)."""
    parts = servers.split(",")
    if servers.startswith(DNS_SCHEME) or len(parts) == 1:
        return servers
    addresses: dict[str, list[str]] = {"ipv4": [], "ipv6": []}
    for host, port in (_split(part) for part in parts):  # type: ignore[misc]  # valid_model_servers checked
        for family, address in _addresses(host, port, resolve):
            entry = f"{address}:{port}" if family == "ipv4" else f"[{address}]:{port}"
            if entry not in addresses[family]:
                addresses[family].append(entry)
    if addresses["ipv4"] and addresses["ipv6"]:
        raise ConfigError(f"--model-server {servers!r} mixes IPv4 and IPv6 servers; list one family, or use "
                          "dns:///NAME:PORT")
    family = "ipv4" if addresses["ipv4"] else "ipv6"
    return f"{family}:{','.join(addresses[family])}"


def _addresses(host: str, port: int, resolve: Resolver) -> list[tuple[str, str]]:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [("ipv4" if literal.version == 4 else "ipv6", str(literal))]
    try:
        found = resolve(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"--model-server: cannot resolve {host!r}: {exc}") from None
    return [("ipv4" if info[0] == socket.AF_INET else "ipv6", info[4][0]) for info in found
            if info[0] in (socket.AF_INET, socket.AF_INET6)]
