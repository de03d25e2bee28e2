"""Every option declared once: command-line flag, ini twin, help text with its default, converter.

Precedence: the command line, then the ini file ([tool.pytest.ini_options] or pytest.ini), then
the default. Repeatable options (captures, filters, ignore rules) add the command line's values to
the ini file's. A bad value is a pytest.UsageError naming the option and the accepted forms.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import metadata
from dataclasses import dataclass
from typing import Any

import pytest

def clashing_plugin() -> str | None:
    """ESSS's pytest-replay also installs a module named pytest_replay and a --replay flag."""
    try:
        dist = metadata.distribution("pytest-replay")
    except metadata.PackageNotFoundError:
        return None
    return (f"pytest-traffic-replay cannot run beside the 'pytest-replay' plugin {dist.version} (ESSS, "
            "'replay test runs'): both install a module named pytest_replay and both define --replay. "
            "Fix: pip uninstall pytest-replay, then pip install --force-reinstall pytest-traffic-replay "
            "(or use separate virtual environments).")


GROUPS = ("exchange", "endpoint", "connection")
DIFF_PARTS = ("status", "headers", "body")


# Ranges of the numeric options. The schedule computes gap / speed and i * 1e9 / rate in floats and
# rounds them to integer nanoseconds, and the engine adds seconds to its clock: NaN, infinities,
# negative and denormal values would overflow or be meaningless there, so they are refused here.
# Beyond the upper bounds nothing changes any more (speed 1e6 turns a day into 86 ms: use 0; a rate
# of 1e9 is one request per nanosecond, the clock's resolution); 1e6 seconds is 11.6 days.
SPEED_RANGE = (1e-6, 1e6)
RATE_RANGE = (1e-6, 1e9)
SECONDS_RANGE = (1e-6, 1e6)
CONCURRENCY_RANGE = (1, 100_000)


def _number(flag: str, text: str, bounds: tuple[float, float], *, meaning: str, zero: bool = False) -> float:
    """A finite number within `bounds` (or exactly 0 when `zero`), else a UsageError that says the range."""
    low, high = bounds
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = None
    if value is not None and (low <= value <= high or (zero and value == 0)):  # NaN compares false
        return value + 0.0  # -0.0 -> 0.0
    accepted = ("0 (no waiting) or " if zero else "") + f"a number from {low:g} to {high:g}"
    raise pytest.UsageError(f"{flag}: expected {accepted} ({meaning}), got {text!r}")


def speed(text: str) -> float:
    return _number("--speed", text, SPEED_RANGE, zero=True,
                   meaning="1 = the recorded pace, 2 = twice as fast, 0.5 = half, 0 = no waiting")


def rate(text: str) -> float:
    return _number("--rate", text, RATE_RANGE, meaning="requests per second")


def seconds(flag: str) -> Callable[[str], float]:
    return lambda text: _number(flag, text, SECONDS_RANGE, meaning="seconds, e.g. 2.5")


def concurrency(text: str) -> int:
    low, high = CONCURRENCY_RANGE
    value = _number("--replay-concurrency", text, CONCURRENCY_RANGE, meaning="requests in flight")
    if value != int(value):
        raise pytest.UsageError(f"--replay-concurrency: expected a whole number from {low} to {high}, got {text!r}")
    return int(value)


def record_size(text: str) -> int:
    from .capture.limits import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise pytest.UsageError(f"--replay-max-record-size: {exc}") from None


def regex(flag: str) -> Callable[[str], re.Pattern[str]]:
    def convert(text: str) -> re.Pattern[str]:
        try:
            return re.compile(text)
        except re.error as exc:
            raise pytest.UsageError(f"{flag}: {text!r} is not a valid regular expression ({exc}); it is "
                                    "matched against 'METHOD target', e.g. '^GET /api/' or 'POST .*/orders'") from None
    return convert


def choice(flag: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in choices:
            raise pytest.UsageError(f"{flag}: expected one of {', '.join(choices)}, got {text!r}")
        return text
    return convert


def diff_parts(text: str) -> frozenset[str]:
    parts = {p.strip() for p in text.split(",") if p.strip()}
    unknown = parts - set(DIFF_PARTS)
    if not parts or unknown:
        raise pytest.UsageError(f"--replay-diff: expected a comma-separated subset of {', '.join(DIFF_PARTS)}, "
                                f"got {text!r}")
    return frozenset(parts)


def ignore_rule(text: str):
    from .verdicts.rules import parse_rule

    try:
        return parse_rule(text)
    except ValueError as exc:
        raise pytest.UsageError(f"--replay-ignore: {exc}") from None


def _policy(flag: str, parse):
    """A converter from the policy modules: their ValueError (naming the accepted forms) becomes a
    UsageError naming the flag."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise pytest.UsageError(f"{flag}: {exc}") from None
    return convert


def _write_mode(text: str) -> str:
    from .policy.writes import parse_write_mode
    return _policy("--replay-writes", parse_write_mode)(text)


def _allow_write(text: str):
    from .policy.rules import parse_allow_write
    return _policy("--replay-allow-write", parse_allow_write)(text)


def _allow_host(text: str):
    from .targets.blocker import parse_allow_host
    return _policy("--replay-allow-host", parse_allow_host)(text)


def _write_pattern(text: str):
    from .policy.rules import parse_write_pattern
    return _policy("--replay-write-pattern", parse_write_pattern)(text)


def _write_methods(text: str) -> frozenset[str]:
    from .policy.writes import write_methods
    return _policy("--replay-write-methods", lambda t: write_methods([t]))(text)


def _set_header(flag: str):
    def convert(text: str):
        from .policy.rewrite import parse_set_header
        return _policy(flag, parse_set_header)(text)
    return convert


def _rewrite_url(text: str):
    from .policy.rewrite import parse_rewrite_url
    return _policy("--replay-rewrite-url", parse_rewrite_url)(text)


def _header_filter(flag: str):
    def convert(text: str):
        from .policy.rules import parse_header_filter
        return _policy(flag, parse_header_filter)(text)
    return convert


def _sample(text: str):
    from .policy.filters import Sampler
    return _policy("--replay-sample", Sampler.parse)(text)


def _budget(text: str):
    from .verdicts.budgets import parse_budget
    return _policy("--replay-budget", parse_budget)(text)


def _shard(text: str) -> tuple[int, int]:
    from .distribute import parse_shard
    return _policy("--replay-shard", parse_shard)(text)


def _percent(flag: str) -> Callable[[str], float]:
    return lambda text: _number(flag, text.strip().removesuffix("%"), minimum=0, inclusive=True,
                                meaning="a percentage, e.g. 20 or 0.03%")


def names(text: str) -> tuple[str, ...]:
    return tuple(n.strip().lower() for n in text.split(",") if n.strip())


def ports(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        values = ()
    if not values or not all(0 < p < 65536 for p in values):
        raise pytest.UsageError(f"--replay-server-ports: expected comma-separated ports (1-65535), got {text!r}")
    return values


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its ini twin, how its text becomes a value, and its help."""

    dest: str
    flag: str
    help: str
    default: Any = None
    convert: Callable[[str], Any] | None = None
    many: bool = False  # repeatable (append); the ini twin is a list of lines
    flag_only: bool = False  # a boolean switch
    metavar: str | None = None

    @property
    def ini(self) -> str:
        return self.dest


OPTIONS: tuple[Option, ...] = (
    Option("replay", "--replay", "capture to replay: a .gor, pcap or pcapng file, a glob or a directory "
           "(repeatable; several are merged by timestamp). Turns replay on. Default: none.", many=True,
           metavar="PATH"),
    Option("replay_speed", "--speed", "replay speed factor over the recorded timing: 1 = recorded pace, "
           "2 = twice as fast, 0 = no waiting. Default: 1.", 1.0, speed, metavar="FACTOR"),
    Option("replay_rate", "--rate", "send at a fixed arrival rate (requests per second) instead of the "
           "recorded timing. Default: off.", None, rate, metavar="RPS"),
    Option("replay_target", "--replay-target", "where to send: an http(s) URL, 'asgi:module:app', "
           "'wsgi:module:app', or 'demo' (the embedded demo service). A replay_target fixture in conftest.py "
           "may return a URL, an ASGI or WSGI app, or an httpx.AsyncClient instead. Default: none.",
           metavar="URL"),
    Option("replay_concurrency", "--replay-concurrency", "most requests in flight at once. Default: 64.", 64,
           concurrency, metavar="N"),
    Option("replay_max_wait", "--replay-max-wait", "cap each idle gap between requests to this many seconds "
           "(after --speed). Default: no cap.", None, seconds("--replay-max-wait"), metavar="SECONDS"),
    Option("replay_timeout", "--replay-timeout", "time allowed for each request and its response. "
           "Default: 10.", 10.0, seconds("--replay-timeout"), metavar="SECONDS"),
    Option("replay_include", "--replay-include", "replay only exchanges whose 'METHOD target' matches this "
           "regular expression (repeatable: any may match). Default: all.", many=True,
           convert=regex("--replay-include"), metavar="REGEX"),
    Option("replay_exclude", "--replay-exclude", "do not replay exchanges whose 'METHOD target' matches this "
           "regular expression (repeatable). Default: none.", many=True, convert=regex("--replay-exclude"),
           metavar="REGEX"),
    Option("replay_diff", "--replay-diff", "what each exchange compares: a comma-separated subset of status, "
           "headers, body. Default: status,body.", frozenset({"status", "body"}), diff_parts,
           metavar="PARTS"),
    Option("replay_headers", "--replay-headers", "response headers compared when --replay-diff includes "
           "headers (comma-separated names). Default: none.", (), names, metavar="NAMES"),
    Option("replay_ignore", "--replay-ignore", "diff ignore rule (repeatable): 'header:NAME', 'json:$.path', "
           "'regex:PATTERN', 'keep:json:$.path', optionally scoped as 'GET /api/x: json:$.id'. Default: none.",
           many=True, convert=ignore_rule, metavar="RULE"),
    Option("replay_noise", "--replay-noise", "treat fields that differ between recorded responses of "
           "identical requests as noise: auto or off. Default: auto.", "auto",
           choice("--replay-noise", ("auto", "off")), metavar="MODE"),
    Option("replay_origins", "--replay-origins", "how responses naming the service's own origin are compared: "
           "same (the recorded origin - the captured Host with the capture's scheme, and the captured server "
           "address - and the replayed one - the Host the target was sent, and the target URL's origin - are "
           "one value in headers such as Location and Link and in JSON, text and HTML bodies; counted in the "
           "summary) or strict (compared as captured). Default: same.", "same",
           choice("--replay-origins", ("same", "strict")), metavar="MODE"),
    Option("replay_max_latency", "--replay-max-latency", "fail an exchange whose replayed latency exceeds this "
           "many seconds. Default: no cap.", None, seconds("--replay-max-latency"), metavar="SECONDS"),
    Option("replay_group", "--replay-group", "one test item per exchange, per endpoint (method and path "
           "template) or per captured connection; group huge captures (pytest costs ~1 ms per item). "
           "Default: exchange.", "exchange", choice("--replay-group", GROUPS), metavar="BY"),
    Option("replay_server_ports", "--replay-server-ports", "ports that are servers, for pcap connections "
           "captured without their SYN on unusual ports. Default: common HTTP ports.", None, ports,
           metavar="P1,P2"),
    Option("replay_keylog", "--replay-keylog", "TLS key log (NSS SSLKEYLOGFILE format) to decrypt TLS 1.2 and 1.3 "
           "connections in pcap captures with (repeatable). Keys embedded in a pcapng (Decryption Secrets Blocks) "
           "are used without it. Default: none.", many=True, metavar="FILE"),
    Option("replay_writes", "--replay-writes", "what happens to writes (every method but GET, HEAD and OPTIONS, "
           "and requests whose method override names one): mock "
           "(answered from the recorded response, never sent), pass (sent) or skip (not replayed). Default: mock "
           "for network targets; in-process apps get the writes (their outbound calls are intercepted).", None,
           _write_mode, metavar="MODE"),
    Option("replay_allow_write", "--replay-allow-write", "send writes matching 'METHOD PATH_REGEX [@HOST]' "
           "(METHOD may be a comma list or *), e.g. 'POST ^/api/cart/items$' (repeatable). Default: none.",
           many=True, convert=_allow_write, metavar="PATTERN"),
    Option("replay_allow_host", "--replay-allow-host", "during an in-process replay, let the app reach HOST "
           "(any port) or HOST:PORT, e.g. its database on 127.0.0.1:5432 (repeatable). Every other TCP connection "
           "or UDP datagram to an IPv4/IPv6 address is blocked and fails the exchange that made it (or the run, "
           "for a call tied to no exchange); UNIX sockets are never blocked. Default: none.", many=True,
           convert=_allow_host, metavar="HOST[:PORT]"),
    Option("replay_write_methods", "--replay-write-methods", "deprecated (every method but GET, HEAD and OPTIONS "
           "is a write): methods treated as writes (comma-separated). Use --replay-write-pattern. Default: none.",
           frozenset(), _write_methods, metavar="METHODS"),
    Option("replay_write_pattern", "--replay-write-pattern", "requests that are writes although their method is a "
           "read: 'METHOD PATH_REGEX [@HOST]' as --replay-allow-write, e.g. 'GET ^/api/delete' (repeatable). "
           "Default: none.", many=True, convert=_write_pattern, metavar="PATTERN"),
    Option("replay_dry_run_header", "--replay-dry-run-header", "header added to writes that are sent, so the "
           "service can take its dry-run path, e.g. 'X-Dry-Run: 1'. Default: none.", None,
           _set_header("--replay-dry-run-header"), metavar="'NAME: VALUE'"),
    Option("replay_set_header", "--replay-set-header", "set a request header on every replayed request, e.g. "
           "credentials for a redacted capture (repeatable). Default: none.", many=True,
           convert=_set_header("--replay-set-header"), metavar="'NAME: VALUE'"),
    Option("replay_original_host", "--replay-original-host", "send the captured Host header unchanged to a "
           "network target (GoReplay's --http-original-host), instead of the target's host:port; a Host set with "
           "--replay-set-header wins over both. Default: the target's host:port.", False, flag_only=True),
    Option("replay_rewrite_url", "--replay-rewrite-url", "rewrite request targets, GoReplay style: "
           "'REGEX:replacement' on path and query (repeatable; the first that matches applies). Default: none.",
           many=True, convert=_rewrite_url, metavar="'REGEX:REPLACEMENT'"),
    Option("replay_allow_header", "--replay-allow-header", "replay only requests whose header matches "
           "'Name: REGEX' (repeatable: all must match). Default: none.", many=True,
           convert=_header_filter("--replay-allow-header"), metavar="'NAME: REGEX'"),
    Option("replay_disallow_header", "--replay-disallow-header", "do not replay requests whose header matches "
           "'Name: REGEX' (repeatable: any). Default: none.", many=True,
           convert=_header_filter("--replay-disallow-header"), metavar="'NAME: REGEX'"),
    Option("replay_sample", "--replay-sample", "keep a stable share of requests chosen by the hash of a "
           "header or query parameter value: 'header:NAME:N%%' or 'param:NAME:N%%'. Default: all.", None, _sample,
           metavar="RULE"),
    Option("replay_force_production", "--replay-force-production", "replay even against the host the capture "
           "was recorded from (refused by default). Default: refuse.", False, flag_only=True),
    Option("replay_middleware", "--replay-middleware", "a GoReplay middleware command (hex lines, record types 1, "
           "2 and 3 on stdin; echoed requests are sent, dropped ones are not). Default: none.", metavar="CMD"),
    Option("replay_middleware_drop_timeout", "--replay-middleware-drop-timeout", "seconds without an answer "
           "after which the middleware is taken to have dropped a request. Default: 1.", 1.0,
           seconds("--replay-middleware-drop-timeout"), metavar="SECONDS"),
    Option("replay_middleware_timeout", "--replay-middleware-timeout", "seconds of silence after which the "
           "middleware is declared hung and the replay stops. Default: 10.", 10.0,
           seconds("--replay-middleware-timeout"), metavar="SECONDS"),
    Option("replay_budget", "--replay-budget", "a latency or error budget in k6 threshold syntax, judged over "
           "the whole run: 'p95<200ms', 'p99<1.2x' (of the recorded latency; of the baseline's with "
           "--replay-baseline; '1.2x recorded', '1.2x baseline' to choose), 'max<1s', '5xx<1%%', "
           "'errors<0.5%%', '5xx<=recorded+0.5%%', '5xx<=baseline+0.5%%', scoped as 'GET /api/users/*: p99<300ms' (repeatable; also "
           "the pytest_replay_budgets hook). Default: none.", many=True, convert=_budget, metavar="BUDGET"),
    Option("replay_report", "--replay-report", "write the evidence package to this directory, also when the "
           "run is interrupted: DIR/replay-evidence.json, or DIR/replay-evidence-shard-K-of-N.json under "
           "--replay-shard K/N (so a CI matrix's shards can share one directory). Default: none.", metavar="DIR"),
    Option("replay_shard", "--replay-shard", "replay only shard K of N (a stable split by captured "
           "connection, for CI matrices); merge the shards' evidence with 'python -m pytest_replay merge', "
           "which exits non-zero when any shard's item or a budget failed. Default: everything.", None, _shard,
           metavar="K/N"),
    Option("replay_secret_header", "--replay-secret-header", "one more header whose value is masked in "
           "everything printed or written (repeatable). Default: Authorization, Proxy-Authorization, Cookie, "
           "Set-Cookie and names with a secret word (token, secret, password, key, session, auth, credential, "
           "signature...; any case or separator: X-Auth-Token, X-Session-Token).", many=True, metavar="NAME"),
    Option("replay_secret_param", "--replay-secret-param", "one more query parameter, form or JSON field name "
           "whose value is masked (repeatable). Default: names with a secret word (token, secret, password, key, "
           "session, auth, credential, signature...; any case or separator: sessionToken, PHPSESSID, "
           "AWS_SECRET_ACCESS_KEY), card fields, and values shaped like secrets whatever their name.", many=True,
           metavar="NAME"),
    Option("replay_show_header", "--replay-show-header", "allowlist mode: mask every header value except these "
           "(repeatable). Default: off.", many=True, metavar="NAME"),
    Option("replay_show_field", "--replay-show-field", "allowlist mode: mask every query, form and JSON field "
           "value except these (repeatable). Default: off.", many=True, metavar="NAME"),
    Option("replay_judge", "--replay-judge", "when items are judged: 'after' the whole replay (pytest's own "
           "work, ~1 ms per item, then never competes with the replay for the CPU and the GIL: best timing and "
           "throughput) or 'during' it (results stream as requests complete). Default: after.", "after",
           choice("--replay-judge", ("after", "during")), metavar="WHEN"),
    Option("replay_progress_every", "--replay-progress-every", "seconds between progress lines during a long "
           "replay (shown on a terminal, not under -q). Default: 5.", 5.0, seconds("--replay-progress-every"),
           metavar="SECONDS"),
    Option("replay_max_record_size", "--replay-max-record-size", "the longest .gor record, pcap packet or pcapng "
           "block read (a number of bytes, or with K, M or G); a .gor record beyond it stops reading the capture with "
           "an error naming the file and offset, a longer packet or block is reported as damaged. It bounds the "
           "memory a damaged file or a decompression bomb can take. Default: 64M.", None, record_size,
           metavar="SIZE"),
    Option("replay_insecure", "--replay-insecure", "do not verify the TLS certificate of an https target "
           "(sandboxes with self-signed certificates). Default: verify.", False, flag_only=True),
    Option("replay_baseline", "--replay-baseline", "judge against a live baseline (a known-good version, e.g. "
           "the last release) instead of the recorded responses: every request goes to the target and to the "
           "baseline at the same deadline, and the target's response is compared with the baseline's. Same forms "
           "as --replay-target (also a replay_baseline fixture); must differ from the target; noise is then measured "
           "live (--replay-noise does not apply). Sent writes go "
           "once to each side: if both sides share a database, writes apply twice. Default: none (judge against "
           "the recording).", metavar="URL"),
    Option("replay_baseline2", "--replay-baseline2", "a second known-good instance for measuring noise: each read "
           "is also sent to it, and fields that differ between the two baselines are noise. Default: the "
           "baseline again (a second send at the same deadline).", metavar="URL"),
    Option("replay_noise_relative", "--replay-noise-relative", "with a baseline: a field of an endpoint fails the "
           "run when its differences beyond noise, (raw - noise) / raw, exceed this percent (raw: exchanges in "
           "which baseline and target differ on the field; noise: in which the two baseline sends differ) and "
           "the absolute threshold is exceeded too. Default: 20.", 20.0, _percent("--replay-noise-relative"),
           metavar="PERCENT"),
    Option("replay_noise_absolute", "--replay-noise-absolute", "with a baseline: the other threshold a field must "
           "pass to fail the run: (raw - noise) / requests to the endpoint above this percent. Default: 0.03.", 0.03, _percent("--replay-noise-absolute"),
           metavar="PERCENT"),
)
BY_DEST = {option.dest: option for option in OPTIONS}


def register(parser: pytest.Parser, *, skip: tuple[str, ...] = ()) -> None:
    group = parser.getgroup("replay", "traffic replay (pytest-traffic-replay)")
    for option in OPTIONS:
        if option.flag in skip:
            continue
        if option.flag_only:
            group.addoption(option.flag, dest=option.dest, action="store_true", default=None, help=option.help)
            parser.addini(option.ini, option.help, type="bool", default=False)
        elif option.many:
            group.addoption(option.flag, dest=option.dest, action="append", default=[], metavar=option.metavar,
                            help=option.help)
            parser.addini(option.ini, option.help, type="linelist", default=[])
        else:
            group.addoption(option.flag, dest=option.dest, default=None, metavar=option.metavar, help=option.help)
            parser.addini(option.ini, option.help, type="string", default=None)


def _value(config: pytest.Config, option: Option) -> Any:
    cli = config.getoption(option.dest, default=None)
    if option.many:
        ini = config.getini(option.ini) or []
        texts = [*ini, *(cli or [])]
        return tuple(option.convert(t) if option.convert else t for t in texts)
    if option.flag_only:
        return bool(cli) or bool(config.getini(option.ini))
    text = cli if cli is not None else config.getini(option.ini)
    if text is None or text == "":
        return option.default
    return option.convert(str(text)) if option.convert else text


@dataclass(frozen=True)
class Settings:
    """The parsed options of one run."""

    captures: tuple[str, ...] = ()
    speed: float = 1.0
    rate: float | None = None
    target: str | None = None
    concurrency: int = 64
    max_wait: float | None = None
    timeout: float = 10.0
    include: tuple[re.Pattern[str], ...] = ()
    exclude: tuple[re.Pattern[str], ...] = ()
    diff: frozenset[str] = frozenset({"status", "body"})
    headers: tuple[str, ...] = ()
    ignore: tuple = ()  # parsed rules (verdicts.rules)
    noise: str = "auto"
    origins: str = "same"
    original_host: bool = False
    max_latency: float | None = None
    group: str = "exchange"
    server_ports: tuple[int, ...] | None = None
    keylog: tuple[str, ...] = ()  # TLS key log files
    insecure: bool = False
    writes: str | None = None  # None: mock for network targets, pass for in-process apps
    allow_write: tuple = ()
    allow_host: tuple = ()  # AllowedHost values (targets.blocker)
    write_methods: frozenset[str] = frozenset()
    write_pattern: tuple = ()  # parsed rules (policy.rules.parse_write_pattern)
    dry_run_header: tuple[bytes, bytes] | None = None
    set_header: tuple = ()
    rewrite_url: tuple = ()
    allow_header: tuple = ()
    disallow_header: tuple = ()
    sample: object = None
    force_production: bool = False
    middleware: str | None = None
    middleware_drop_timeout: float = 1.0
    middleware_timeout: float = 10.0
    judge: str = "after"
    secret_headers: tuple = ()
    secret_params: tuple = ()
    show_headers: tuple = ()
    show_fields: tuple = ()
    budgets: tuple = ()
    report: str | None = None
    shard: tuple[int, int] | None = None
    progress_every: float = 5.0
    max_record_size: int | None = None  # None: capture.limits.DEFAULT_MAX_RECORD (64 MiB)
    baseline: str | None = None
    baseline2: str | None = None
    noise_relative: float = 20.0
    noise_absolute: float = 0.03

    @property
    def enabled(self) -> bool:
        return bool(self.captures)

    def selects(self, label: str) -> bool:
        """Does 'METHOD target' pass --replay-include/--replay-exclude?"""
        if self.include and not any(p.search(label) for p in self.include):
            return False
        return not any(p.search(label) for p in self.exclude)


def load(config: pytest.Config) -> Settings:
    value = {option.dest: _value(config, option) for option in OPTIONS}
    if value["replay_rate"] is not None and config.getoption("replay_speed") is not None:
        raise pytest.UsageError("--rate and --speed exclude each other: --speed scales the recorded timing, "
                                "--rate replaces it with a fixed arrival rate")
    return Settings(
        captures=value["replay"], speed=value["replay_speed"], rate=value["replay_rate"],
        target=value["replay_target"], concurrency=value["replay_concurrency"], max_wait=value["replay_max_wait"],
        timeout=value["replay_timeout"], include=value["replay_include"], exclude=value["replay_exclude"],
        diff=value["replay_diff"], headers=value["replay_headers"], ignore=value["replay_ignore"],
        noise=value["replay_noise"], origins=value["replay_origins"], original_host=value["replay_original_host"],
        max_latency=value["replay_max_latency"], group=value["replay_group"],
        server_ports=value["replay_server_ports"], insecure=value["replay_insecure"], writes=value["replay_writes"],
        keylog=value["replay_keylog"],
        allow_write=value["replay_allow_write"], write_methods=value["replay_write_methods"],
        allow_host=value["replay_allow_host"],
        write_pattern=value["replay_write_pattern"],
        dry_run_header=value["replay_dry_run_header"], set_header=value["replay_set_header"],
        rewrite_url=value["replay_rewrite_url"], allow_header=value["replay_allow_header"],
        disallow_header=value["replay_disallow_header"], sample=value["replay_sample"],
        force_production=value["replay_force_production"], middleware=value["replay_middleware"],
        middleware_drop_timeout=value["replay_middleware_drop_timeout"],
        middleware_timeout=value["replay_middleware_timeout"], budgets=value["replay_budget"],
        report=value["replay_report"], shard=value["replay_shard"], secret_headers=value["replay_secret_header"],
        secret_params=value["replay_secret_param"], show_headers=value["replay_show_header"],
        show_fields=value["replay_show_field"], judge=value["replay_judge"],
        progress_every=value["replay_progress_every"], max_record_size=value["replay_max_record_size"],
        baseline=value["replay_baseline"], baseline2=value["replay_baseline2"],
        noise_relative=value["replay_noise_relative"], noise_absolute=value["replay_noise_absolute"])
