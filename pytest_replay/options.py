"""Every option declared once: command-line flag, ini twin, help text with its default, converter.

Precedence: the command line, then the ini file ([tool.pytest.ini_options] or pytest.ini), then
the default. Repeatable options (captures, filters, ignore rules) add the command line's values to
the ini file's. A bad value is a pytest.UsageError naming the option and the accepted forms.

Every pytest run imports this module, replay or not (issue 13.5: the plugin costs pytest's start-up
at most 5 ms): it imports nothing of ours at import, and a converter imports what it needs when it
converts a value (the vocabularies' StrEnums, the policy parsers).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from dataclasses import FrozenInstanceError, make_dataclass
from dataclasses import field as dataclass_field
from typing import Any

import pytest


@functools.cache  # pytest_addoption and pytest_configure both ask; a look-up costs ~0.2 ms
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


def _vocabulary(name: str) -> tuple[str, ...]:
    """The members of vocab.py's StrEnum `name`, imported on first use (building the StrEnums costs
    ~1.7 ms, which a pytest run without --replay does not pay)."""
    from . import vocab

    return tuple(getattr(vocab, name))


# options.GROUPS, options.DIFF_PARTS: the vocabularies' members (module __getattr__ below).
_VOCABULARIES = {"GROUPS": "Group", "DIFF_PARTS": "DiffPart"}


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


JUDGE_WORKERS_RANGE = (0, 64)


def judge_workers(text: str) -> int | str:
    """--replay-judge-workers: 'auto' or a whole number of judging processes (0: none)."""
    if text.strip() == "auto":
        return "auto"
    low, high = JUDGE_WORKERS_RANGE
    value = _number("--replay-judge-workers", text, (1, high), zero=True, meaning="judging processes")
    if value != int(value):
        raise pytest.UsageError(f"--replay-judge-workers: expected auto or a whole number from {low} to {high}, "
                                f"got {text!r}")
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


def choice(flag: str, choices: tuple[str, ...] | str) -> Callable[[str], str]:
    """`choices`: the accepted strings, or the name of a vocabulary of vocab.py ("Group"), whose
    member the value becomes (imported when a value is converted, not at import)."""
    def convert(text: str) -> str:
        values = _vocabulary(choices) if isinstance(choices, str) else choices
        for value in values:  # the vocabulary's member (a StrEnum is equal to its string)
            if value == text:
                return value
        raise pytest.UsageError(f"{flag}: expected one of {', '.join(values)}, got {text!r}")
    return convert


def diff_parts(text: str) -> frozenset[str]:
    accepted = _vocabulary("DiffPart")
    parts = {p.strip() for p in text.split(",") if p.strip()}
    unknown = parts - set(accepted)
    if not parts or unknown:
        raise pytest.UsageError(f"--replay-diff: expected a comma-separated subset of {', '.join(accepted)}, "
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


def _noise_rules(text: str) -> tuple:
    """The ignore rules of a file (blank lines and # comments skipped); usage errors name the line."""
    from .verdicts.rules import parse_rule

    try:
        lines = Path(text).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise pytest.UsageError(f"--replay-noise-from {text}: cannot read it ({exc.strerror or exc})") from None
    rules = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                rules.append(parse_rule(line))
            except ValueError as exc:
                raise pytest.UsageError(f"--replay-noise-from {text}, line {number}: {exc}") from None
    return tuple(rules)


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


def _rewrite_url(flag: str):
    def convert(text: str):
        from .policy.rewrite import parse_rewrite_url
        return _policy(flag, parse_rewrite_url)(text)
    return convert


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


def _stages(text: str):
    from .schedule.stages import parse_stages
    return _policy("--replay-stages", parse_stages)(text)


def _abort_on(text: str):
    from .verdicts.budgets import parse_stop_condition
    return _policy("--replay-abort-on", parse_stop_condition)(text)


def loop_count(text: str) -> int:
    value = _number("--replay-loop", text, (1, 1_000_000), meaning="how many times the capture is replayed")
    if value != int(value):
        raise pytest.UsageError(f"--replay-loop: expected a whole number from 1 to 1000000, got {text!r}")
    return int(value)


def duration(flag: str) -> Callable[[str], float]:
    def convert(text: str) -> float:
        from .schedule.stages import parse_duration_ns
        try:
            value = parse_duration_ns(text) / 1e9
        except ValueError:
            value = -1
        if not 0 < value <= 1e6:
            raise pytest.UsageError(f"{flag}: expected a duration such as 90s, 10m, 1h or 500ms (a bare number "
                                    f"is seconds, at most 1e6 s), got {text!r}")
        return value
    return convert


def percent(flag: str) -> Callable[[str], float]:
    def convert(text: str) -> float:
        return _number(flag, str(text).strip().removesuffix("%"), (0, 100), meaning="a percentage, e.g. 0.5 or 2%")
    return convert


def pid(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise pytest.UsageError(f"--replay-target-pid: expected a process id (a positive whole number), got {text!r}")
    return int(text)


def link(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name.strip() or not url.strip():
        raise pytest.UsageError(f"--replay-link: expected NAME=URL, e.g. dashboard=https://grafana/d/abc, got {text!r}")
    return name.strip(), url.strip()


def _percent(flag: str) -> Callable[[str], float]:
    return lambda text: _number(flag, text.strip().removesuffix("%"), (0, 100), meaning="a percentage, e.g. 20 or 0.03%")


def _window(text: str):
    from .policy.filters import parse_window
    return _policy("--replay-window", parse_window)(text)


def _descriptors(text: str):
    """A descriptor set file, read and checked now: a bad file is a usage error naming it."""
    from .verdicts.grpc import load_descriptors

    try:
        return load_descriptors(text)
    except ValueError as exc:
        raise pytest.UsageError(f"--replay-proto-descriptors: {exc}") from None


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


class Option:
    """One setting: its flag, its ini twin, how its text becomes a value, and its help. Frozen, and
    compared by value, as a frozen dataclass would be; written by hand because @dataclass generates
    and compiles its methods when the class is made: ~1.3 ms of every pytest start-up."""

    __slots__ = ("dest", "flag", "help", "default", "convert", "many", "flag_only", "metavar", "field")
    dest: str
    flag: str
    help: str
    default: Any
    convert: Callable[[str], Any] | None
    many: bool  # repeatable (append); the ini twin is a list of lines
    flag_only: bool  # a boolean switch
    metavar: str | None
    field: str  # its Settings attribute; default: dest without the replay_ prefix

    def __init__(self, dest: str, flag: str, help: str, default: Any = None,
                 convert: Callable[[str], Any] | None = None, many: bool = False, flag_only: bool = False,
                 metavar: str | None = None, field: str = "") -> None:
        init = object.__setattr__
        init(self, "dest", dest)
        init(self, "flag", flag)
        init(self, "help", help)
        init(self, "default", default)
        init(self, "convert", convert)
        init(self, "many", many)
        init(self, "flag_only", flag_only)
        init(self, "metavar", metavar)
        init(self, "field", field)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return self._values() == other._values() if other.__class__ is self.__class__ else NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"Option({', '.join(f'{name}={value!r}' for name, value in zip(self.__slots__, self._values()))})"

    @property
    def ini(self) -> str:
        return self.dest

    @property
    def name(self) -> str:
        return self.field or self.dest.removeprefix("replay_")

    @property
    def empty(self) -> Any:
        """Its value when nothing sets it."""
        return () if self.many else self.default


OPTIONS: tuple[Option, ...] = (
    Option("replay", "--replay", "capture to replay: a .gor, pcap or pcapng file, a glob or a directory "
           "(repeatable; several are merged by timestamp). Turns replay on. Default: none.", many=True,
           metavar="PATH", field="captures"),
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
    Option("replay_connections", "--replay-connections", "requests of one captured connection: 'strict' sends "
           "them in captured order on one replay connection, each after the previous response (faithful to what "
           "the server saw on it; a request due while its connection is busy is late, and the summary says "
           "'connection'); 'spill' sends such a request at its deadline on an extra connection (the schedule kept, "
           "the captured order and connection reuse given up: the server sees more connections, at most "
           "--replay-concurrency extra ones in all, beyond which a request waits on its own). Extra connections "
           "are reused while idle and closed when their captured connection has no more requests. Default: strict.",
           "strict", choice("--replay-connections", ("strict", "spill")), metavar="MODE", field="connection_mode"),
    Option("replay_event_loop", "--replay-event-loop", "the replay engine's event loop: 'auto' (uvloop when it is "
           "installed, e.g. with pip install pytest-traffic-replay[fast]: less CPU per request on the network "
           "path), 'asyncio' or 'uvloop'. In-process apps (asgi:, wsgi:) always run on asyncio's loop, where the "
           "outbound-call blocker sees their sockets. The header line names the loop. Default: auto.", "auto",
           choice("--replay-event-loop", ("auto", "asyncio", "uvloop")), metavar="LOOP"),
    Option("replay_max_wait", "--replay-max-wait", "cap each idle gap between requests to this many seconds "
           "(after --speed). Default: no cap.", None, seconds("--replay-max-wait"), metavar="SECONDS"),
    Option("replay_timeout", "--replay-timeout", "time allowed for each request and its response. "
           "Default: 10.", 10.0, seconds("--replay-timeout"), metavar="SECONDS"),
    Option("replay_stages", "--replay-stages", "capacity run: comma-separated stages 'PACE:DURATION', PACE a speed "
           "(2x), a mean rate over the recorded timing (500/s), an even rate ('fixed 500/s') or a linear ramp "
           "('ramp 2x..5x', 'ramp 500/s..4000/s'); the capture loops when a stage needs more. Excludes --speed, "
           "--rate and --replay-duration. Default: off.", (), _stages, metavar="STAGES"),
    Option("replay_loop", "--replay-loop", "replay the capture N times in a row (GoReplay's --input-file-loop); "
           "loops after the first are counted in the summary, budgets and evidence, judged by no item. "
           "Default: 1.", None, loop_count, metavar="N"),
    Option("replay_duration", "--replay-duration", "replay for this long, looping the capture as needed "
           "(e.g. 10m). Default: the capture's length.", None, duration("--replay-duration"), metavar="DURATION"),
    Option("replay_abort_on", "--replay-abort-on", "stop the replay when this holds over the last "
           "--replay-abort-window seconds (repeatable): 'p99>2s', '5xx>5%%', 'errors>1%%', 'lateness>50ms'. "
           "Latency conditions judge the response time from schedule: from the instant a request would have "
           "been sent had the replayer been on time (time queued behind a busy connection, a barrier or a slot "
           "counts; requests still waiting count at their age); 'service p99>2s' judges the latency from send. "
           "'lateness' is p99 of the engine's own lateness (those waits do not count). The run then fails. "
           "Default: none.", many=True, convert=_abort_on, metavar="CONDITION"),
    Option("replay_abort_window", "--replay-abort-window", "seconds of the sliding window stop conditions are "
           "judged on. Default: 10.", 10.0, seconds("--replay-abort-window"), metavar="SECONDS"),
    Option("replay_max_capture_loss", "--replay-max-capture-loss", "fail the run when the capture lost more "
           "than PCT percent of its bytes to gaps (bytes lost over bytes captured; a capture that dropped traffic "
           "misrepresents it). Above 1%% a warning is shown whatever this says. Default: off.", None,
           percent("--replay-max-capture-loss"), metavar="PCT"),
    Option("replay_target_pid", "--replay-target-pid", "capacity runs: sample the target process's CPU, RSS and "
           "open files from /proc/PID once a second (per stage in the evidence). Default: none.", None,
           pid, metavar="PID"),
    Option("replay_metrics", "--replay-metrics", "capacity runs: scrape this Prometheus metrics URL once a second "
           "(process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds and --replay-metric); "
           "failures are reported, never fatal. Default: none.", None, metavar="URL", field="metrics_url"),
    Option("replay_metric", "--replay-metric", "one more metric NAME scraped from --replay-metrics (repeatable; "
           "summed over its labels). Default: none.", many=True, metavar="NAME", field="metrics"),
    Option("replay_environment", "--replay-environment", "the environment replayed against, recorded in the "
           "evidence (e.g. staging-eu). Default: none.", None, metavar="NAME"),
    Option("replay_owner", "--replay-owner", "who owns this run, recorded in the evidence. Default: none.", None,
           metavar="NAME"),
    Option("replay_link", "--replay-link", "a link recorded in the evidence, NAME=URL (repeatable), e.g. "
           "dashboard=https://grafana/d/abc. Default: none.", many=True, convert=link, metavar="NAME=URL",
           field="links"),
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
           choice("--replay-noise", "NoiseMode"), metavar="MODE"),
    Option("replay_noise_export", "--replay-noise-export", "write the noise learned from the capture to FILE as "
           "ignore rules, one a line, ready to review and put under replay_ignore in the ini file. Default: none.",
           metavar="FILE"),
    Option("replay_noise_from", "--replay-noise-from", "use the reviewed ignore rules in FILE (one a line, as "
           "--replay-noise-export writes them) instead of learning noise from the capture, so a gate's noise "
           "decisions are deterministic and go through code review. Default: learn.", None, _noise_rules,
           metavar="FILE"),
    Option("replay_origins", "--replay-origins", "how responses naming the service's own origin are compared: "
           "same (the recorded origin - the captured Host with the capture's scheme, and the captured server "
           "address - and the replayed one - the Host the target was sent, and the target URL's origin - are "
           "one value in headers such as Location and Link and in JSON, text and HTML bodies; counted in the "
           "summary) or strict (compared as captured). Default: same.", "same",
           choice("--replay-origins", "Origins"), metavar="MODE"),
    Option("replay_max_latency", "--replay-max-latency", "fail an exchange whose replayed latency exceeds this "
           "many seconds. Default: no cap.", None, seconds("--replay-max-latency"), metavar="SECONDS"),
    Option("replay_group", "--replay-group", "one test item per exchange, per endpoint (method and path "
           "template) or per captured connection; group huge captures (pytest costs ~1 ms per item). "
           "Default: exchange.", "exchange", choice("--replay-group", "Group"), metavar="BY"),
    Option("replay_server_ports", "--replay-server-ports", "ports that are servers, for pcap connections "
           "captured without their SYN on unusual ports. Default: common HTTP ports.", None, ports,
           metavar="P1,P2"),
    Option("replay_keylog", "--replay-keylog", "TLS key log (NSS SSLKEYLOGFILE format) to decrypt TLS 1.2 and 1.3 "
           "connections in pcap captures with (repeatable). Keys embedded in a pcapng (Decryption Secrets Blocks) "
           "are used without it. Default: none.", many=True, metavar="FILE"),
    Option("replay_http_version", "--replay-http-version", "what exchanges captured over HTTP/2 are replayed over "
           "on an http(s):// target: auto (HTTP/2 when the target speaks it: h2c with prior knowledge for http://, "
           "ALPN h2 for https://; probed once), 2 (HTTP/2 required: a usage error when the target does not speak "
           "it), 1.1 (HTTP/1.1). gRPC always goes over HTTP/2; HTTP/1.x captures over HTTP/1.1. Default: auto.",
           "auto", choice("--replay-http-version", ("auto", "1.1", "2")), metavar="VERSION", field="http_version"),
    Option("replay_proto_descriptors", "--replay-proto-descriptors", "a protobuf FileDescriptorSet (protoc "
           "--descriptor_set_out=FILE --include_imports): gRPC messages are decoded and compared field by field "
           "like JSON, and methods with idempotency_level NO_SIDE_EFFECTS are reads under the write policy "
           "(repeatable). Default: none (messages compared as bytes; every gRPC call is a write).", many=True,
           convert=_descriptors, metavar="FILE"),
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
           many=True, convert=_rewrite_url("--replay-rewrite-url"), metavar="'REGEX:REPLACEMENT'"),
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
           "the pytest_replay_budgets hook). Default: none.", many=True, convert=_budget, metavar="BUDGET", field="budgets"),
    Option("replay_report", "--replay-report", "write the evidence package to this directory, also when the "
           "run is interrupted: DIR/replay-evidence.json, or DIR/replay-evidence-shard-K-of-N.json under "
           "--replay-shard K/N (so a CI matrix's shards can share one directory). Default: none.", metavar="DIR"),
    Option("replay_html", "--replay-html", "write a self-contained HTML report to this file (run, budgets, a "
           "sortable per-endpoint table, latency charts, failures by cause with their masked diffs, noise, skipped "
           "exchanges), also when the run is interrupted; needs no network to open. Default: none.", metavar="FILE"),
    Option("replay_shard", "--replay-shard", "replay only shard K of N (a stable split by captured "
           "connection, for CI matrices); merge the shards' evidence with 'python -m pytest_replay merge', "
           "which exits non-zero when any shard's item or a budget failed. Default: everything.", None, _shard,
           metavar="K/N"),
    Option("replay_secret_header", "--replay-secret-header", "one more header whose value is masked in "
           "everything printed or written (repeatable). Default: Authorization, Proxy-Authorization, Cookie, "
           "Set-Cookie and names with a secret word (token, secret, password, key, session, auth, credential, "
           "signature...; any case or separator: X-Auth-Token, X-Session-Token).", many=True, metavar="NAME", field="secret_headers"),
    Option("replay_secret_param", "--replay-secret-param", "one more query parameter, form or JSON field name "
           "whose value is masked (repeatable). Default: names with a secret word (token, secret, password, key, "
           "session, auth, credential, signature...; any case or separator: sessionToken, PHPSESSID, "
           "AWS_SECRET_ACCESS_KEY), card fields, and values shaped like secrets whatever their name.", many=True,
           metavar="NAME", field="secret_params"),
    Option("replay_show_header", "--replay-show-header", "allowlist mode: mask every header value except these "
           "(repeatable). Default: off.", many=True, metavar="NAME", field="show_headers"),
    Option("replay_show_field", "--replay-show-field", "allowlist mode: mask every query, form and JSON field "
           "value except these (repeatable). Default: off.", many=True, metavar="NAME", field="show_fields"),
    Option("replay_judge", "--replay-judge", "when items are judged: 'after' the whole replay (pytest's own "
           "work, ~1 ms per item, then never competes with the replay for the CPU and the GIL: best timing and "
           "throughput) or 'during' it (results stream as requests complete). Default: after.", "after",
           choice("--replay-judge", "Judge"), metavar="WHEN"),
    Option("replay_judge_workers", "--replay-judge-workers", "processes that judge, while the engine sends, the "
           "exchanges whose bodies differ and are large (16 KB or more together: a 200 KB JSON body takes ~20 ms of "
           "Python, holding the GIL the engine's thread needs to send on time): N processes, 'auto' (1 if a core "
           "is left once each process of the run has one for its engine, so none under xdist -n 2 on 2 cores) or "
           "0 (every exchange judged in the run's process). They start before the replay when N is given or the "
           "capture holds large bodies, else at the first large difference. A run's judging thread waits for one "
           "verdict at a time: more than 1 process adds no throughput yet. Verdicts, failure texts and counts are "
           "the same either way; judged in the run's process: with a live baseline, and items judged after a "
           "replay that holds the capture (--replay-judge after, --replay-stream off). Default: auto.", "auto",
           judge_workers, metavar="N|auto"),
    Option("replay_stream", "--replay-stream", "read the capture twice instead of holding it (issue 13): "
           "'auto' streams the run (a bounded window of exchanges between read and verdict, failures spilled to "
           "a temporary file) when nothing needs the whole capture at once (not under xdist, not with endpoint "
           "groups, filters, stages, --replay-update, a baseline, hooks, middleware, sent writes, HTTP/2 or "
           "malformed requests); 'off' "
           "holds every exchange for the run, as before. Default: auto.", "auto",
           choice("--replay-stream", ("auto", "off")), metavar="WHEN"),
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
    Option("replay_baseline_set_header", "--replay-baseline-set-header", "with a baseline: set a request header on "
           "the baseline's requests only (and the noise probe's, --replay-baseline2 included), e.g. its own "
           "credentials or Host (repeatable). Applied last, after --replay-set-header, hooks and middleware: it "
           "replaces a header of that name set for both sides; the target never gets it. Masked like every "
           "secret in what is printed or written. Default: none (the baseline gets what the target gets).",
           many=True, convert=_set_header("--replay-baseline-set-header"), metavar="'NAME: VALUE'"),
    Option("replay_baseline_rewrite_url", "--replay-baseline-rewrite-url", "with a baseline: rewrite the baseline's "
           "request targets only, 'REGEX:replacement' as --replay-rewrite-url (repeatable; the first that matches "
           "applies), applied after --replay-rewrite-url to the target as the target gets it. Default: none.",
           many=True, convert=_rewrite_url("--replay-baseline-rewrite-url"), metavar="'REGEX:REPLACEMENT'"),
    Option("replay_baseline_original_host", "--replay-baseline-original-host", "with a baseline: send the captured "
           "Host header unchanged to a network baseline (as --replay-original-host does for both sides); a Host set "
           "with --replay-baseline-set-header wins. Default: the baseline's host:port.", False, flag_only=True),
    Option("replay_noise_relative", "--replay-noise-relative", "with a baseline: a field of an endpoint fails the "
           "run when its differences beyond noise, (raw - noise) / raw, exceed this percent (raw: exchanges in "
           "which baseline and target differ on the field; noise: in which the two baseline sends differ) and "
           "the absolute threshold is exceeded too. Default: 20.", 20.0, _percent("--replay-noise-relative"),
           metavar="PERCENT"),
    Option("replay_noise_absolute", "--replay-noise-absolute", "with a baseline: the other threshold a field must "
           "pass to fail the run: (raw - noise) / requests to the endpoint above this percent. Default: 0.03.", 0.03, _percent("--replay-noise-absolute"),
           metavar="PERCENT"),
    Option("replay_update", "--replay-update", "accept the replayed responses (like snapshot tools' --update): "
           "write a new capture, in the capture's format, next to it as NAME.updated.EXT (demo.pcap -> "
           "demo.updated.pcap, x.gor.gz -> x.updated.gor.gz) or to --replay-update-to, whose recorded responses are "
           "the replayed ones of the exchanges that ran and differed (stamped request time + replayed latency; "
           "requests and their timing untouched; matching exchanges, mocked writes and the rest kept as "
           "recorded), and print how many were updated, unchanged and not replayed. Not written after an "
           "interrupted replay (see --replay-update-partial). Default: off.", False, flag_only=True),
    Option("replay_update_to", "--replay-update-to", "with --replay-update: write the updated capture to FILE "
           "(one capture only) instead of NAME.updated.EXT; its suffix chooses the format (.gor, .pcap, .pcapng, "
           "each optionally .gz), else the capture's. Default: next to the capture.", metavar="FILE"),
    Option("replay_update_partial", "--replay-update-partial", "with --replay-update: write the updated capture "
           "even when the replay was interrupted (Ctrl-C, -x, a stopped engine): what was not replayed is kept as "
           "recorded. Default: off (an interrupted replay writes nothing).", False, flag_only=True),
    Option("replay_window", "--replay-window", "replay only the exchanges whose request started in START..END: "
           "absolute times as `inspect` prints them (2024-05-01T12:00:00.000+00:00; no zone means UTC), or "
           "offsets from the capture's first request like +600s..+660s (units ms, s, m, h); either side may be "
           "left open. Default: the whole capture.", None, _window, metavar="START..END"),
    Option("replay_connection", "--replay-connection", "replay only the exchanges of this captured connection, "
           "as `inspect --json` names it (e.g. '10.0.0.1:51534 -> 10.0.0.2:80'; repeatable). Default: every "
           "connection.", many=True, metavar="ID", field="connections"),
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


def _value(config: pytest.Config, option: Option, *, ini: bool = True) -> Any:
    """The option's value: the command line's, else (ini=True) the ini twin's, else the default;
    converted, so a bad value stops the run with the converter's UsageError."""
    cli = config.getoption(option.dest, default=None)
    if option.many:
        texts = [*((config.getini(option.ini) or []) if ini else ()), *(cli or [])]
        return tuple(option.convert(t) if option.convert else t for t in texts)
    if option.flag_only:
        return bool(cli) or (ini and bool(config.getini(option.ini)))
    text = config.getini(option.ini) if cli is None and ini else cli
    if text is None or text == "":
        return option.default
    return option.convert(str(text)) if option.convert else text


def _enabled(self) -> bool:
    return bool(self.captures)


def _selects(self, label: str) -> bool:
    """Does 'METHOD target' pass --replay-include/--replay-exclude?"""
    if self.include and not any(p.search(label) for p in self.include):
        return False
    return not any(p.search(label) for p in self.exclude)


def _settings_class() -> type:
    """The parsed options of one run: a frozen dataclass with one attribute per Option (its `name`)
    and the Option's default. Made on first use (options.Settings), so a pytest run without
    --replay does not pay for it."""
    global _SETTINGS
    if _SETTINGS is None:
        _SETTINGS = make_dataclass(
            "Settings", [(option.name, Any, dataclass_field(default=option.empty)) for option in OPTIONS],
            frozen=True, namespace={"__doc__": "The parsed options of one run (generated from OPTIONS).",
                                    "__module__": __name__, "enabled": property(_enabled), "selects": _selects})
    return _SETTINGS


_SETTINGS: type | None = None


def __getattr__(name: str):
    if name == "Settings":
        return _settings_class()
    if name in _VOCABULARIES:
        return _vocabulary(_VOCABULARIES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(config: pytest.Config) -> Settings | None:  # noqa: F821 (made by _settings_class)
    """The run's Settings, or None when replay is off. Off, only the values given on this command line
    are checked: a project's ini may hold its replay budgets, stages and noise rules, whose parsers
    would cost its every other pytest run tens of ms; they are checked when a run turns replay on."""
    captures = _value(config, BY_DEST["replay"])
    on = bool(captures)
    value = {option.dest: captures if option.dest == "replay" else _value(config, option, ini=on)
             for option in OPTIONS}
    if value["replay_rate"] is not None and config.getoption("replay_speed") is not None:
        raise pytest.UsageError("--rate and --speed exclude each other: --speed scales the recorded timing, "
                                "--rate replaces it with a fixed arrival rate")
    _exclusive(config, value, ini=on)
    if not on:
        return None  # the command line's values were checked, the Settings class is not needed
    return _settings_class()(**{option.name: value[option.dest] for option in OPTIONS})


def _exclusive(config: pytest.Config, value: dict, *, ini: bool) -> None:
    """--replay-stages sets the pace itself; --replay-loop and --replay-duration say how long."""
    if value["replay_stages"]:
        given = [flag for flag, dest in (("--speed", "replay_speed"), ("--rate", "replay_rate"),
                                         ("--replay-duration", "replay_duration"), ("--replay-loop", "replay_loop"))
                 if value[dest] is not None and (dest != "replay_speed" or config.getoption(dest) is not None
                                                 or (ini and config.getini(dest)))]
        if given:
            raise pytest.UsageError(f"--replay-stages sets the pace and the length of the run: it excludes "
                                    f"{', '.join(given)} (put the pace in a stage: '2x:60s', '500/s:60s', "
                                    f"'fixed 500/s:60s')")
    if value["replay_loop"] is not None and value["replay_duration"] is not None:
        raise pytest.UsageError("--replay-loop and --replay-duration exclude each other: both say how long to replay")
    if (value["replay_loop"] or value["replay_duration"]) and value["replay_speed"] == 0 and not value["replay_rate"]:
        raise pytest.UsageError("--replay-loop and --replay-duration need a pace: --speed 0 sends everything at once")
