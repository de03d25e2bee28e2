"""Production guard: refuse to replay a capture against the host it was recorded from.

Replaying production traffic at production multiplies its writes and load; the usual mistake is a
target URL copied from the capture. The capture names its hosts twice: Host headers, and (pcap) the
server side of each connection. Both are normalized to lower-case ``host:port``:

- a Host header without a port stands for the default port of whatever scheme was used, which a
  capture can not tell: it is recorded as both ``host:80`` and ``host:443``;
- IPv6 literals are written ``[compressed]:port``, as connection names are.

Loopback is not exempt (a capture recorded on 127.0.0.1:8000 is refused on 127.0.0.1:8000); a
different port is fine. Names are not resolved (sans-IO): ``localhost`` and ``127.0.0.1`` differ.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
FORCE_FLAG = "--replay-force-production"
# "10.0.0.1:51534 -> 10.0.0.2:80", "[::1]:5 -> [2001:db8::1]:80 #2" (a reused 4-tuple)
_CONNECTION = re.compile(r"^\S+ -> (\S+?)(?: #\d+)?$")


def _host(name: str) -> str:
    """Lower-case, brackets off, IP literals in canonical form."""
    name = name.strip().lower().strip("[]")
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name.rstrip(".")


def host_port(name: str, port: int) -> str:
    name = _host(name)
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


def _split_authority(text: str) -> tuple[str, int | None] | None:
    """'Host:8080' -> ('host', 8080); '[::1]' -> ('::1', None); None when it is not an authority."""
    text = text.strip()
    if not text or any(c in text for c in " /?#@\\"):
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        name, rest = text[1:end], text[end + 1:]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return name, int(rest[1:]) if rest else None
    name, sep, port = text.rpartition(":")
    if sep and ":" not in name:
        if not name or (port and not port.isdigit()):
            return None
        return name, int(port) if port else None  # 'host:' is allowed: the default port
    return text, None  # no port (or a bare IPv6 address)


@dataclass(frozen=True, slots=True)
class RecordedHosts:
    """The `host:port`s a capture was recorded from, with how many requests / connections named each.
    Behaves as a set of strings (`in`, iteration, len)."""

    by_header: dict[str, int] = field(default_factory=dict)  # host:port -> requests with that Host
    by_address: dict[str, int] = field(default_factory=dict)  # server ip:port -> connections

    def __contains__(self, item: object) -> bool:
        return item in self.by_header or item in self.by_address

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(set(self.by_header) | set(self.by_address)))

    def __len__(self) -> int:
        return len(set(self.by_header) | set(self.by_address))

    def evidence(self, key: str) -> str:
        parts = []
        if key in self.by_header:
            n = self.by_header[key]
            parts.append(f"Host header of {n:,} request{'s' if n != 1 else ''}")
        if key in self.by_address:
            n = self.by_address[key]
            parts.append(f"server address of {n:,} connection{'s' if n != 1 else ''}")
        return ", ".join(parts)


def server_address(connection: str) -> str | None:
    """The server side of a pcap connection name ('10.0.0.1:51534 -> 10.0.0.2:80' -> '10.0.0.2:80',
    IPv6 as '[2001:db8::1]:80'); None for other names (.gor connections have no address)."""
    match = _CONNECTION.match(connection)
    if match is None:
        return None
    parsed = _split_authority(match.group(1))
    return match.group(1) if parsed is not None and parsed[1] is not None else None


def recorded_hosts(exchanges: Iterable) -> RecordedHosts:
    """The hosts named by the Host headers and pcap connection names of `exchanges`."""
    headers: Counter[str] = Counter()
    connections: set[str] = set()
    for exchange in exchanges:
        value = exchange.request.host
        if value is not None and (parsed := _split_authority(value)) is not None:
            name, port = parsed
            if port is None:
                headers[host_port(name, 80)] += 1
                headers[host_port(name, 443)] += 1
            else:
                headers[host_port(name, port)] += 1
        connections.add(exchange.connection)
    addresses: Counter[str] = Counter()
    for name in connections:
        if (address := server_address(name)) is not None:
            addresses[host_port(*_split_authority(address))] += 1
    return RecordedHosts(dict(headers), dict(addresses))


def target_host_port(url: str) -> str | None:
    """'https://API.example.com/' -> 'api.example.com:443'; None for a target that is not a URL."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            return None
        return host_port(parts.hostname, parts.port or DEFAULT_PORTS[scheme])
    except ValueError:
        return None


def check_target(url: str, hosts: RecordedHosts | Iterable[str]) -> str | None:
    """A message refusing `url` when its host:port is one the capture was recorded from, else None."""
    key = target_host_port(url)
    if key is None or key not in hosts:
        return None
    evidence = hosts.evidence(key) if isinstance(hosts, RecordedHosts) else f"recorded as {key}"
    return (f"refusing to replay against {url.strip()}: the capture was recorded from this host ({evidence}); "
            f"pass {FORCE_FLAG} if this is really intended")
