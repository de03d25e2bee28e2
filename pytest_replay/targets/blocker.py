"""Socket-level blocking of the process's outbound network calls while an in-process app is replayed.

Like pytest-socket and pytest-recording's --block-network, but scoped and reporting: Python's
`socket.socket.connect`, `connect_ex`, `sendto` and `sendmsg` (with an address) check where they go.
Everything built on them is covered: socket.create_connection, http.client, urllib.request,
urllib3/requests, asyncio's loop.create_connection / sock_connect / open_connection and datagram
endpoints (so aiohttp), ssl sockets. Not covered: code that does not use Python's socket module
(a C library's own sockets: libpq under psycopg, libcurl, uvloop's event loop) and name resolution
(getaddrinfo is left alone). Only IPv4 and IPv6 sockets are checked: UNIX-domain sockets (a local
database on a socket file) and other families pass.

Whether a call is blocked, and what it is tied to, is decided by the owner (targets/outbound.py)
through `exempt` and `record`; this module only knows sockets and the allowlist.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

OPTION = "--replay-allow-host"
ACCEPTED = "HOST or HOST:PORT, e.g. 127.0.0.1:5432, localhost, db.internal:6379, [::1]:5432"
_CHECKED_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})
_PATCHED = ("connect", "connect_ex", "sendto", "sendmsg")
_install_lock = threading.Lock()


class OutboundBlocked(ConnectionRefusedError):
    """What the app's code sees for a blocked connection: a refused connection (an OSError, so its
    client library and error handling take their "upstream unreachable" path), whose message names
    the address and the option that allows it."""


@dataclass(frozen=True)
class AllowedHost:
    host: str  # lower case; an IPv6 address without its brackets
    port: int | None = None  # None: every port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def endpoint(host: str, port: int) -> str:
    """host:port as --replay-allow-host takes it ('[::1]:5432' for IPv6)."""
    return str(AllowedHost(str(host).lower(), port))


def parse_allow_host(text: str) -> AllowedHost:
    """'HOST', 'HOST:PORT', '[IPv6]:PORT' or a bare IPv6 address; ValueError naming the accepted forms."""
    raw = text.strip()
    host, port = _split_host_port(raw)
    if not host or any(c in host for c in " /?#@[]"):
        raise ValueError(f"expected {ACCEPTED}, got {text!r}")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address; expected {ACCEPTED}") from None
    return AllowedHost(host.lower(), _port(port, text))


def _split_host_port(raw: str) -> tuple[str, str | None]:
    if raw.startswith("["):
        host, bracket, rest = raw[1:].partition("]")
        if not bracket or rest and not rest.startswith(":"):
            raise ValueError(f"expected {ACCEPTED}, got {raw!r}")
        return host, rest[1:] if rest else None
    if raw.count(":") == 1:
        host, _, port = raw.partition(":")
        return host, port
    return raw, None  # a name, an IPv4 address, or a bare IPv6 address (several colons)


def _port(text: str | None, whole: str) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"the port must be 1-65535, got {text!r} in {whole!r}; expected {ACCEPTED}")
    return int(text)


def _addresses(host: str) -> frozenset[str]:
    """The addresses a host name or address stands for (normalised text; empty if it does not resolve)."""
    try:
        return frozenset({_normal(host)})
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return frozenset()
    return frozenset(_normal(info[4][0]) for info in infos)


def _normal(address: str) -> str:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    return str(mapped or ip)


class Allowlist:
    """The hosts (and ports) a replayed app may reach. A name matches by itself and by the addresses
    it resolves to, so 'localhost' allows 127.0.0.1 and ::1, and '127.0.0.1' allows 'localhost'."""

    def __init__(self, hosts: Iterable[AllowedHost] = ()) -> None:
        self.hosts = tuple(hosts)
        self._resolved: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        for allowed in self.hosts:  # resolved once, now, not in the middle of an app's call
            self._addresses_of(allowed.host)

    def allows(self, host: str, port: int) -> bool:
        if not self.hosts:
            return False
        name = str(host).lower()
        candidates = [h for h in self.hosts if h.port is None or h.port == port]
        if any(h.host == name for h in candidates):
            return True
        mine = self._addresses_of(name) if candidates else frozenset()
        return any(mine & self._addresses_of(h.host) for h in candidates)

    def _addresses_of(self, host: str) -> frozenset[str]:
        found = self._resolved.get(host)
        if found is None:
            found = _addresses(host)
            with self._lock:
                self._resolved[host] = found
        return found


def _destination(sock: socket.socket, address) -> tuple[str, int] | None:
    """(host, port) of an IPv4/IPv6 destination; None for other families or odd addresses (left to
    the real call to accept or refuse)."""
    if sock.family not in _CHECKED_FAMILIES or not isinstance(address, tuple) or len(address) < 2:
        return None
    host, port = address[0], address[1]
    if not isinstance(host, (str, bytes)) or not isinstance(port, int):
        return None
    return (host.decode("ascii", "replace") if isinstance(host, bytes) else host), port


def _kind(sock: socket.socket, verb: str) -> str:
    protocol = {socket.SOCK_STREAM: "TCP", socket.SOCK_DGRAM: "UDP"}.get(sock.type, "IP")
    return f"{protocol} {verb}"


class SocketBlocker:
    """Patches socket.socket while installed. `exempt()` says the current call is the pytest process's
    own (not checked); `record(description)` is told each blocked call. Blocked: connect raises
    OutboundBlocked, connect_ex returns ECONNREFUSED, sendto/sendmsg raise OutboundBlocked."""

    def __init__(self, allowlist: Allowlist, *, exempt: Callable[[], bool], record: Callable[[str], None]) -> None:
        self.allowlist = allowlist
        self.exempt = exempt
        self.record = record
        self.active = False
        self._saved: dict[str, object] | None = None  # socket.socket's own attributes before install
        self._wrappers: dict[str, Callable] = {}

    def check(self, sock: socket.socket, address, verb: str) -> str | None:
        """The message for a blocked call (recorded), or None when it may go."""
        if not self.active:
            return None
        destination = _destination(sock, address)
        if destination is None or self.exempt() or self.allowlist.allows(*destination):
            return None
        where = endpoint(*destination)
        call = f"{_kind(sock, verb)} to {where} blocked: allow it with {OPTION} {where}"
        self.record(call)
        return f"{call} (pytest-traffic-replay blocks an in-process app's network calls during a replay)"

    def install(self) -> None:
        with _install_lock:
            if self._saved is not None:
                return
            self._saved = {name: vars(socket.socket).get(name) for name in _PATCHED}
            self._wrappers = self._make_wrappers({name: getattr(socket.socket, name) for name in _PATCHED})
            for name, wrapper in self._wrappers.items():
                setattr(socket.socket, name, wrapper)
            self.active = True

    def uninstall(self) -> None:
        """Put socket.socket back. A wrapper someone else installed over ours stays (ours, under it,
        is inactive from now on and lets everything through)."""
        with _install_lock:
            self.active = False
            saved, self._saved = self._saved, None
            if saved is None:
                return
            for name, wrapper in self._wrappers.items():
                if vars(socket.socket).get(name) is not wrapper:
                    continue
                if saved[name] is None:
                    delattr(socket.socket, name)  # inherited from _socket.socket again
                else:
                    setattr(socket.socket, name, saved[name])

    def _make_wrappers(self, real: dict[str, Callable]) -> dict[str, Callable]:
        check = self.check

        def connect(sock, address):
            message = check(sock, address, "connection")
            if message is not None:
                raise OutboundBlocked(errno.ECONNREFUSED, message)
            return real["connect"](sock, address)

        def connect_ex(sock, address):
            if check(sock, address, "connection") is not None:
                return errno.ECONNREFUSED
            return real["connect_ex"](sock, address)

        def sendto(sock, data, *args):  # sendto(data, address) or sendto(data, flags, address)
            message = check(sock, args[-1] if args else None, "datagram")
            if message is not None:
                raise OutboundBlocked(errno.ECONNREFUSED, message)
            return real["sendto"](sock, data, *args)

        def sendmsg(sock, buffers, *args):  # sendmsg(buffers, ancdata, flags, address)
            message = check(sock, args[2], "datagram") if len(args) > 2 else None
            if message is not None:
                raise OutboundBlocked(errno.ECONNREFUSED, message)
            return real["sendmsg"](sock, buffers, *args)

        wrappers = {"connect": connect, "connect_ex": connect_ex, "sendto": sendto, "sendmsg": sendmsg}
        for name, wrapper in wrappers.items():
            wrapper.__qualname__ = f"socket.{name}"
            wrapper.__doc__ = getattr(real[name], "__doc__", None)
        return wrappers
