"""What noise learning needs besides the diff itself: which writes may explain a difference, and
where the varying tokens of a text body are.

Writes. Two identical reads may differ because a write changed the resource between them (a POST
that adds a row changes a list's count): such a difference is state, not noise. `WriteTimeline`
holds the capture's writes (every method but GET, HEAD, OPTIONS and TRACE, complete or not) by path
template, in capture time across connections, and answers "did a write that may touch this read
happen between these two reads?". A write may touch a read (`related`) when their paths share a
named segment (the collection: /api/rows and /api/rows/{id}, /api/orders and
/api/users/{id}/orders), after leading API roots such as /api and /v1; or when either path names
no collection at all, or the write goes to an RPC-style path (/graphql, /rpc, /batch): then we
cannot tell, and assume it does.

Text. A text body (HTML, plain text) is cut into tokens (runs of letters, digits and ``_+/=-``,
with inner ``.`` and ``:``: numbers, ids, timestamps, CSRF tokens) and the text between them. Two
bodies are comparable when that text between tokens is the same; a token that differs is then
noise at its position, learned as a regex mask: the literal text before it (`ANCHOR` characters,
cut after the last digit, so it holds no number of its own), the token's shape (character classes
and lengths, literal words kept), the literal text after it. A mask must match only varying tokens
in every body it was learned from, or it is not learned: it never covers a whole body.

Also: how learned noise is described in the report (`describe_noise`). Sans-IO: values in, values out.
"""

from __future__ import annotations

import re
import string
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache

from ..http.normalize import path_template

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # others change state: their answers reflect it
NOISE_REASON = "learned noise "  # Verdict.ignored reasons of learned noise: NOISE_REASON + str(learned)

# -- writes ------------------------------------------------------------------------------------------
# Leading path segments that name an API, not a collection: /api/v1/rows is the collection "rows".
ROOT_SEGMENTS = frozenset({"api", "apis", "rest", "public", "internal", "external", "svc", "service", "services",
                           "app", "web"})
_VERSION = re.compile(r"v\d+(?:\.\d+)*|\{[a-z]+\}")
# Writes whose path says nothing about what they touch: assume they touch everything.
RPC_SEGMENTS = frozenset({"graphql", "gql", "rpc", "jsonrpc", "xmlrpc", "soap", "batch", "$batch", "bulk",
                          "command", "commands", "execute", "invoke"})


@lru_cache(maxsize=4096)
def _collections(template: str) -> tuple[str, ...]:
    """The named segments of a path template after its API roots: /api/v1/users/{id}/orders ->
    ('users', 'orders')."""
    segments = [s.lower() for s in template.split("/") if s]
    while segments and (segments[0] in ROOT_SEGMENTS or _VERSION.fullmatch(segments[0])):
        segments.pop(0)
    return tuple(s for s in segments if not (s.startswith("{") and s.endswith("}")))


@lru_cache(maxsize=65536)
def related(read: str, write: str) -> bool:
    """May a write to path template `write` change the answer to a read of `read`? (When unsure: yes.)"""
    reads, writes = _collections(read), _collections(write)
    if not reads or not writes or RPC_SEGMENTS.intersection(writes):
        return True
    return not set(reads).isdisjoint(writes)


class WriteTimeline:
    """The capture's writes by path template: (start, end) intervals in capture time (ns)."""

    def __init__(self) -> None:
        self._spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self._index: dict[str, tuple[list[int], list[int]]] | None = None

    def add(self, exchange) -> None:
        start = exchange.request_ts_ns
        end = exchange.response_ts_ns if exchange.response_ts_ns is not None else start
        self._spans[path_template(exchange.request.target)].append((start, max(start, end)))
        self._index = None

    def __len__(self) -> int:
        return sum(len(spans) for spans in self._spans.values())

    def _built(self) -> dict[str, tuple[list[int], list[int]]]:
        """Per template: starts in order, and the latest end among the writes up to each."""
        if self._index is None:
            self._index = {}
            for template, spans in self._spans.items():
                spans.sort()
                latest, ends = -1, []
                for _, end in spans:
                    latest = max(latest, end)
                    ends.append(latest)
                self._index[template] = ([start for start, _ in spans], ends)
        return self._index

    def between(self, read: str, after_ns: int, before_ns: int) -> bool:
        """Did a write related to `read` overlap (after_ns, before_ns)? (it started before
        `before_ns` and had not answered by `after_ns`)."""
        for template, (starts, ends) in self._built().items():
            if not related(read, template):
                continue
            i = bisect_left(starts, before_ns)
            if i and ends[i - 1] > after_ns:
                return True
        return False

    def runs(self, read: str, exchanges: Sequence) -> tuple[list[list], int]:
        """`exchanges` (identical reads, in capture time) cut where a related write came between
        two of them: (runs, how many neighbouring pairs were separated)."""
        runs: list[list] = [[exchanges[0]]] if exchanges else []
        separated = 0
        for earlier, later in zip(exchanges, exchanges[1:]):
            end = later.response_ts_ns if later.response_ts_ns is not None else later.request_ts_ns
            if self.between(read, earlier.request_ts_ns, end):
                separated += 1
                runs.append([later])
            else:
                runs[-1].append(later)
        return runs, separated


# -- text tokens --------------------------------------------------------------------------------------
TOKEN = re.compile(r"[\w+/=-]+(?:[.:][\w+/=-]+)*")
ANCHOR = 24  # characters of literal text before a varying token kept as its anchor
SUFFIX = 8  # and after it
MIN_CONTEXT = 3  # a mask needs at least this many characters of anchor and suffix together
MAX_TEXT = 1 << 20  # bodies longer than this are not examined for text noise
_PART = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9]")
_LAST_DIGIT = re.compile(r".*\d", re.DOTALL)
_CLASSES = ((set(string.digits), r"\d"), (set("0123456789abcdef"), "[0-9a-f]"), (set("0123456789ABCDEF"), "[0-9A-F]"),
            (set(string.ascii_lowercase), "[a-z]"), (set(string.ascii_uppercase), "[A-Z]"),
            (set(string.ascii_letters), "[A-Za-z]"), (set(string.ascii_letters + string.digits), "[A-Za-z0-9]"))
_TOKEN_CHAR = r"[\w+/=.:-]"


def _char_class(values: Sequence[str]) -> str:
    chars = set("".join(values))
    for members, pattern in _CLASSES:
        if chars <= members:
            cls = pattern
            break
    else:
        extra = "".join(sorted(chars - set(string.ascii_letters + string.digits)))
        cls = "[A-Za-z0-9" + re.escape(extra).replace("]", r"\]") + "]"
    if cls == r"\d":
        return r"\d+"  # numbers: any length (a counter grows from 99 to 100)
    low, high = min(map(len, values)), max(map(len, values))
    return cls + (f"{{{low}}}" if low == high else f"{{{low},{high}}}")


def shape(values: Sequence[str]) -> str:
    """A regex for tokens like `values`: punctuation and words the same in all kept literal, other
    runs of letters and digits as their character class and lengths (digits: any length)."""
    parts = [_PART.findall(value) for value in values]
    first = parts[0]
    aligned = all(len(p) == len(first) for p in parts) and all(
        all(a == b for a, b in zip(p, first) if not a.isalnum() or not b.isalnum()) for p in parts)
    if not aligned:
        return _char_class(values)
    out = []
    for column in zip(*parts):
        if not column[0].isalnum() or (len(set(column)) == 1 and column[0].isalpha()):
            out.append(_literal(column[0]))
        else:
            out.append(_char_class(column))
    return "".join(out)


def _tokens(text: str) -> tuple[list[tuple[int, int]], tuple[str, ...]]:
    """Token spans, and the literal text around them (one more piece than tokens)."""
    spans = [m.span() for m in TOKEN.finditer(text)]
    bounds = [0] + [edge for span in spans for edge in span] + [len(text)]
    return spans, tuple(text[bounds[i]:bounds[i + 1]] for i in range(0, len(bounds), 2))


def _context(text: str, start: int, end: int, varying: list[tuple[int, int]], i: int) -> tuple[str, str]:
    """The literal text before (to the previous varying token, at most ANCHOR characters, after its
    last digit) and after (to the next varying token, at most SUFFIX characters, before its first
    digit) the i-th varying token."""
    floor = varying[i - 1][1] if i else 0
    begin = max(floor, start - ANCHOR)
    anchor = text[begin:start]
    if begin > floor and TOKEN.match(text, begin - 1):  # cut in the middle of a word: start after it
        anchor = anchor[len(TOKEN.match(anchor)[0]):] if TOKEN.match(anchor) else anchor
    digit = _LAST_DIGIT.match(anchor)
    anchor = anchor[digit.end():] if digit else anchor
    ceiling = varying[i + 1][0] if i + 1 < len(varying) else len(text)
    suffix = text[end:min(ceiling, end + SUFFIX)]
    suffix = re.split(r"\d", suffix, maxsplit=1)[0]
    return anchor, suffix


def _literal(text: str) -> str:
    """re.escape(), leaving spaces and hyphens as they are (both mean themselves outside a class)."""
    return re.escape(text).replace("\\ ", " ").replace("\\-", "-")


def _mask(anchor: str, token_shape: str, suffix: str) -> str:
    before = f"(?<={_literal(anchor)})" if anchor else f"(?<!{_TOKEN_CHAR})"
    after = f"(?={_literal(suffix)})" if suffix else f"(?!{_TOKEN_CHAR})"
    return before + token_shape + after


def text_noise(texts: Sequence[str]) -> list[str] | None:
    """Masks (regex patterns) for the tokens that vary across `texts`, bodies of identical requests;
    None when they differ otherwise (other text between tokens, a token whose place cannot be told
    apart from a stable one): state, or a change we cannot describe, never noise."""
    if len(texts) < 2 or any(len(text) > MAX_TEXT for text in texts):
        return None
    cut = [_tokens(text) for text in texts]
    spans, literal = cut[0]
    if any(other != literal or len(other_spans) != len(spans) for other_spans, other in cut[1:]):
        return None
    values = [[text[a:b] for a, b in text_spans] for text, (text_spans, _) in zip(texts, cut)]
    positions = [i for i in range(len(spans)) if len({v[i] for v in values}) > 1]
    body, varying = texts[0], [spans[i] for i in positions]  # the literal text around tokens is the same in all
    patterns: dict[str, None] = {}
    for k, i in enumerate(positions):
        anchor, suffix = _context(body, *varying[k], varying, k)
        if len(anchor.strip()) + len(suffix.strip()) < MIN_CONTEXT:
            return None
        patterns[_mask(anchor, shape([v[i] for v in values]), suffix)] = None
    for pattern in patterns:
        compiled = re.compile(pattern)
        for text, (text_spans, _) in zip(texts, cut):
            allowed = {text_spans[i] for i in positions}
            if any(match.span() not in allowed for match in compiled.finditer(text)):
                return None  # it would also cover a token that did not vary
    return list(patterns)


# -- the report ----------------------------------------------------------------------------------------
def describe_noise(summary: dict, hidden: dict[str, int] | None = None) -> list[str]:
    """NoiseModel.summary() data as report lines; `hidden`: rule -> differences it hid in this run."""
    if not summary:
        return []
    lines = [summary["summary"]]
    for entry in summary.get("rules", ()):
        count = hidden.get(entry["rule"], 0) if hidden is not None else 0
        hid = f" hid {count:,} difference{'s' * (count != 1)}" if hidden is not None else ""
        lines.append(f"  {entry['rule']}{hid}  ({entry['learned']})")
    lines.extend(f"  {line}" for line in summary.get("not_used", ()))
    return lines
