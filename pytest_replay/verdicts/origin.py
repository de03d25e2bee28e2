"""Origins: the recorded service and the replayed one are the same service at another address.

A service builds absolute URLs from the Host header it receives: pagination `next`/`previous`
links, a redirect's Location, `<link href>`. Replayed to a sandbox, it receives the sandbox's Host,
so every such URL differs from the recording although nothing changed. In `same` mode (the
default, `--replay-origins`) the recorded origin and the replayed origin are one value in diffs:

- recorded origins: the captured request's Host with the capture's scheme (X-Forwarded-Proto or
  Forwarded `proto=` when the captured request carries one, else http: captures hold cleartext
  HTTP/1.x), and the captured server address:port (pcap connections);
- replayed origins: the Host the target was sent, with the scheme of the request (the same
  forwarding headers) or the target's, and the target URL's own origin.

Before a header value (Location, Content-Location, Link, Refresh, any header compared) or a body
(JSON string values, text and HTML) is compared, every one of these origins is replaced on both
sides by the main replayed origin, written `scheme://host[:port]` or protocol-relative
`//host[:port]`, the scheme's default port written or not, case-insensitively. Only an exact
origin at URL boundaries is replaced: `http://127.0.0.1:80001`, `http://shop.example.com.evil` and a
link to another host stay as they are, and so do paths and queries: they are still compared.
Each replacement is counted in the verdict's `ignored` under the reason
"origin <recorded> treated as <replayed>". `strict` compares responses as captured.

Sans-IO: strings and JSON values in, strings and JSON values out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from ..http.message import Exchange, Request
from ..policy.guard import server_address
from ..vocab import Origins
from .lookup import header as _header, headers as _headers

_ORIGIN_FIELDS = (b"host", b"x-forwarded-proto", b"forwarded")  # what an exchange's origins are made of (the memo key)
MEMO_HEAD = 1024  # a request head up to this long is a memo key itself,
MEMO_HEADS = 256  # in a memo of its own of this many heads at most (256 KB): a capture of distinct targets
# (an id in every path) would otherwise fill 4,096 keys of heads no later request repeats, MBs for nothing
_MISS = object()

SAME, STRICT = Origins.SAME, Origins.STRICT
MODES = (SAME, STRICT)
PREFIX = "origin "  # every reason this module puts in a Verdict's `ignored` starts so
DEFAULT_PORTS = {"http": "80", "https": "443"}

# host (a bracketed IPv6 literal or a reg-name / IPv4) and an optional port
_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(?::(\d*))?")
# An origin starts where no scheme character comes before it ("xhttp://" is not "http://"); a
# protocol-relative one also not after ':' or '/' (inside "http://..." or a path's "//").
_BEFORE_FULL = r"(?<![A-Za-z0-9+.-])"
_BEFORE_RELATIVE = r"(?<![A-Za-z0-9+.:/-])"
# ...and ends where no host or port character follows ("http://h:80001", "http://h.evil", "http://h@x");
# a '.' or ':' ending a sentence is fine.
_AFTER = r"(?![A-Za-z0-9_~%@-]|[.:][A-Za-z0-9])"
_LEAVES = frozenset({int, float, bool, type(None)})  # JSON values with no origin in them
_PROTO = re.compile(r"\bproto=\"?(https?)\b", re.IGNORECASE)


# -- building origins ------------------------------------------------------------------------------
def make_origin(scheme: str, authority: str | None) -> str | None:
    """'http', 'Shop.example.com:8000' -> 'http://shop.example.com:8000'; None when `authority` is
    not a host[:port] (empty, a path, credentials...)."""
    if not authority:
        return None
    match = _AUTHORITY.fullmatch(authority.strip())
    if match is None:
        return None
    host, port = match.group(1).lower(), match.group(2)
    return f"{scheme.lower()}://{host}:{port}" if port else f"{scheme.lower()}://{host}"


def _scheme(x_forwarded_proto: bytes | None, forwarded: bytes | None) -> str | None:
    if x_forwarded_proto is not None:
        scheme = x_forwarded_proto.decode("latin-1").split(",")[0].strip().lower()
        return scheme if scheme in DEFAULT_PORTS else None
    if forwarded is not None and (match := _PROTO.search(forwarded.decode("latin-1").split(",")[0])):
        return match.group(1).lower()
    return None


def forwarded_scheme(request: Request) -> str | None:
    """The scheme a proxy in front of the service said the client used, if the request says it."""
    return _scheme(_header(request, b"x-forwarded-proto"), _header(request, b"forwarded"))


def recorded_origins(exchange: Exchange) -> tuple[str, ...]:
    """The origins the recorded response may name its service by: captured Host, then server address."""
    scheme = forwarded_scheme(exchange.request) or exchange.scheme  # "https" when decrypted from TLS
    found = (make_origin(scheme, exchange.request.host), make_origin(scheme, server_address(exchange.connection)))
    return tuple(dict.fromkeys(o for o in found if o is not None))


def _forms(origin: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """'http://h' -> (('http://h', 'http://h:80'), ('//h', '//h:80')): the ways it may be written."""
    scheme, _, authority = origin.partition("://")
    host, port = _AUTHORITY.fullmatch(authority).groups()
    default = DEFAULT_PORTS.get(scheme)
    if port and port != default:
        authorities: tuple[str, ...] = (authority,)
    else:
        authorities = (host, f"{host}:{default}") if default else (host,)
    return tuple(f"{scheme}://{a}" for a in authorities), tuple(f"//{a}" for a in authorities)


@lru_cache(maxsize=256)
def _replacer(origins: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    """A pattern matching every form of `origins`, and each form (lower-case) -> its origin."""
    full: dict[str, str] = {}
    relative: dict[str, str] = {}
    for origin in origins:
        absolute, protocol_relative = _forms(origin)
        full.update((f, origin) for f in absolute if f not in full)
        relative.update((f, origin) for f in protocol_relative if f not in relative)

    def alternatives(forms: Iterable[str]) -> str:
        return "|".join(re.escape(f) for f in sorted(forms, key=lambda f: (-len(f), f)))

    pattern = re.compile(f"{_BEFORE_FULL}(?:{alternatives(full)}){_AFTER}"
                         f"|{_BEFORE_RELATIVE}(?:{alternatives(relative)}){_AFTER}", re.IGNORECASE)
    return pattern, {**full, **relative}


# -- one exchange's origins -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Origins:
    """The origins of one exchange; `replayed[0]` (the Host the target was sent) is the main one.
    `text` and `json` put it in place of each of the others, counting each replacement in `counts`
    under "origin <the one replaced> treated as <replayed[0]>"."""

    recorded: tuple[str, ...]
    replayed: tuple[str, ...]

    @property
    def differ(self) -> bool:
        """Is there anything to replace (an origin of one side the other side does not have)?"""
        return bool(self.recorded) and bool(self.replayed) and set(self.recorded) != set(self.replayed)

    def text(self, text: str, counts: Counter | None = None) -> str:
        if "//" not in text:
            return text
        return self._substitute(counts)(text)

    def _substitute(self, counts: Counter | None) -> Callable[[str], str]:
        """text -> text with every origin made the canonical one (built once per body)."""
        canonical = self.replayed[0]
        relative = "//" + canonical.partition("://")[2]
        pattern, origin_of = _replacer(tuple(dict.fromkeys(self.replayed + self.recorded)))

        def replace(match: re.Match[str]) -> str:
            found = match.group(0)
            new = relative if found.startswith("//") else canonical
            origin = origin_of[found.lower()]
            if found != new and origin != canonical and counts is not None:
                counts[f"{PREFIX}{origin} treated as {canonical}"] += 1
            return new

        return lambda text: pattern.sub(replace, text)

    def json(self, value, counts: Counter | None = None):
        """A JSON value with its string values (not its keys) rewritten. One Python call per
        container and per string holding "//", not per value: a 200 KB body takes a few ms."""
        return _rewrite(value, self._substitute(counts))


def _rewrite(value, substitute: Callable[[str], str]):
    kind = type(value)
    if kind is str:
        return substitute(value) if "//" in value else value
    if kind is dict:
        return {k: v if type(v) in _LEAVES or type(v) is str and "//" not in v else _rewrite(v, substitute)
                for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _LEAVES or type(v) is str and "//" not in v else _rewrite(v, substitute)
                for v in value]
    if isinstance(value, str):  # subclasses: the general (slower) way
        return substitute(value)
    if isinstance(value, dict):
        return {k: _rewrite(v, substitute) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, substitute) for v in value]
    return value


class OriginResolver:
    """The Origins of each exchange of one run, or None when there is nothing to treat as equal.

    `sent_host(request)`: the Host the target sends for a captured request (None: unknown);
    `target_url`: the target's URL ('http://127.0.0.1:8000'; None in-process); `set_headers`: the
    run's --replay-set-header pairs (a Host or forwarding header set there is what the target got)."""

    def __init__(self, sent_host: Callable[[Request], str | None], target_url: str | None = None,
                 set_headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.sent_host = sent_host
        parts = urlsplit(target_url or "")
        self.target_scheme = parts.scheme.lower() if parts.scheme in DEFAULT_PORTS else "http"
        self.target_origin = make_origin(parts.scheme, parts.netloc) if parts.scheme in DEFAULT_PORTS else None
        headers = {name.lower(): value for name, value in set_headers}
        self.set_host = headers[b"host"].decode("latin-1") if b"host" in headers else None
        self.set_scheme = _scheme(headers.get(b"x-forwarded-proto"), headers.get(b"forwarded"))
        self._cache: dict[tuple, Origins | None] = {}
        self._heads: dict[tuple, Origins | None] = {}  # (short head, connection) -> origins: MEMO_HEADS at most

    @staticmethod
    def treated(ignored: Iterable[tuple[str, int]]) -> list[str]:
        """The origin reasons among a Verdict's `ignored` entries (one response counts once for each)."""
        return [why for why, _ in ignored if why.startswith(PREFIX)]

    def sent_origins(self, request: Request) -> tuple[str, ...]:
        """The origins this target was given for `request`: the Host it was sent (with the scheme),
        then the target URL's own."""
        host = self.set_host if self.set_host is not None else self.sent_host(request)
        scheme = self.set_scheme or forwarded_scheme(request) or self.target_scheme
        return tuple(dict.fromkeys(o for o in (make_origin(scheme, host), self.target_origin) if o))

    def __call__(self, exchange: Exchange) -> Origins | None:
        """Memoised on what they are made of: the request's Host and forwarding headers (as bytes, looked
        up without splitting its head) and its connection (the server address); first on a short HTTP/1
        head whole and the connection (the head holds those headers: one hash, kept by the bytes, where
        three lookups cost ~2 us of the judge thread), then on the headers (many heads, one host).
        `resolve` is the reference, which computes them every time."""
        request = exchange.request
        head = request.head
        cache, heads = self._cache, self._heads
        whole = None  # a short HTTP/1 head holds what its origins are made of: the head itself, a first key
        if len(head) <= MEMO_HEAD and request.protocol == "http/1":  # (its hash is kept by the bytes, and a
            whole = (head, exchange.connection)  # capture's framer hands out the same bytes for the same head)
            found = heads.get(whole, _MISS)
            if found is not _MISS:
                return found
        key = (*_headers(request, _ORIGIN_FIELDS), exchange.connection)
        origins = cache.get(key, _MISS)
        if origins is _MISS:
            if len(cache) > 4096:
                cache.clear()
            origins = cache[key] = self.resolve(exchange)
        if whole is not None:
            if len(heads) >= MEMO_HEADS:
                heads.clear()
            heads[whole] = origins
        return origins

    def resolve(self, exchange: Exchange) -> Origins | None:
        origins = Origins(recorded_origins(exchange), self.sent_origins(exchange.request))
        return origins if origins.differ else None

    def against(self, other: OriginResolver, exchange: Exchange) -> Origins | None:
        """Two live sides of one request (a baseline and the target): each side's own origins are one
        value, the other side's (`other` is the canonical one)."""
        origins = Origins(self.sent_origins(exchange.request), other.sent_origins(exchange.request))
        return origins if origins.differ else None
