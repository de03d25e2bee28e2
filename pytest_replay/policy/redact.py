"""Masking secrets and personal data in what the plugin prints or writes (sans-IO).

A secret value becomes ``REDACTED-<8 hex>``: a short hash of the value, so two equal secrets stay
recognisably equal across a report while neither can be read back. Personal data found by shape
(e-mail addresses, card numbers, phone numbers) becomes ``REDACTED-EMAIL-<8 hex>`` (``CARD``,
``PHONE``) the same way. With a ``key`` the hash is an HMAC: equal values still map to equal
stand-ins, but guessable values (a card number, a phone number, a short password) can no longer be
recovered by hashing candidates, which an unkeyed 32-bit hash allows.

What is secret (the decisions by name and by shape are http/sensitive.py's, shared with the path
templates, so `inspect` writes `{token}` exactly where a segment is masked):
  - by name, in every place a name can sit: headers (SECRET_HEADERS and secret names), query
    parameters, path parameters (`;jsessionid=`), form and multipart fields, JSON keys, XML elements
    and attributes (`<password>`, `password="..."`, `key="ApiKey" value="..."`), `name=value`,
    `name="value"` and line-start `name: value` in text (env files, YAML, header lines). A name is
    secret when one of its words is (case and separators do not matter: sessionToken, PHPSESSID,
    AWS_SECRET_ACCESS_KEY, X-Auth-Token), or it matches SECRET_FIELD (card, cvc, pin, ssn...), or
    it is an extra. `Authorization: Bearer <token>` keeps its scheme, cookies keep their names and
    attributes: only the credential is replaced, so a token masks the same in a header and in a
    JSON body. Everything under a secret JSON key is masked; strings and numbers are,
    true/false/null are not.
  - by shape, wherever they are (values, text, path segments): JWTs, PEM private keys, AWS access
    key ids, GitHub/GitLab/Slack/Stripe/Google/npm/PyPI/SendGrid/OpenAI keys, high-entropy tokens
    (16+ letters and digits, at least two of each), and the password of a URL (user:pass@host).
  - path segments: a token by shape, or a segment holding a digit after one that names a secret
    (`/password-reset/<code>`); the whole segment is replaced.
  - allowlist mode (`allow_headers` / `allow_fields`): every header value / field value not listed
    is masked too. It only adds masking: a listed name that is secret is still masked. Headers that
    frame the message (Content-Length, Transfer-Encoding, Content-Type...) are never masked.

Personal data (mask_pii), chosen to leave ordinary numbers alone:
  - e-mail: local@domain.tld (also with the @ URL-encoded as %40).
  - card: 13-19 digits, plain or in 4-4-4-4(-3) / 4-6-4(5) groups separated by one space or dash,
    starting like a card (2221-2720, 3, 4, 5, 6: so millisecond/nanosecond timestamps and
    snowflake ids, which start with 1, are left alone) and passing the Luhn check.
  - phone: "+" and a country code with 8-15 digits in all (separators optional), "00" + country
    code with separators; North American (555) 123-4567 / 555-123-4567 / 555.123.4567 /
    555 123 4567, optionally with 1- in front; trunk-prefixed national numbers 0xx... with one kind
    of separator (030 1234567, 020 7946 0958, 06 12 34 56 78, 089/1234567) and 10-12 digits.
    Never: digits without a separator or "+", dates (8 digits), times (colons), IPv4 addresses,
    versions, UUIDs and ids glued to letters or dashes.
    Fields named like e-mail or phone (email, phone, mobile, msisdn...) are masked whatever the
    format of their value.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections import Counter
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from ..http.content import Undecodable, undo
from ..http.message import codings, field_value, head_lines, header_fields, header_value, is_chunked
from ..http.sensitive import (is_token, known_kind, name_is_secret, names_a_secret, secret_segment,
                              sub_known as _sub_known, sub_tokens, sub_url_passwords)

__all__ = ["DEFAULT", "SECRET_FIELD", "SECRET_HEADERS", "STRUCTURAL_HEADERS", "Redactor",
           "is_masked", "luhn_ok", "mask", "mask_body", "mask_pii", "mask_text"]

SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token",
    "x-access-token", "x-csrf-token", "x-xsrf-token", "x-amz-security-token", "x-goog-api-key", "api-key",
})
# Field names (whole names) that hold payment card or identity data.
SECRET_FIELD = re.compile(
    r"(?i)^(?:card|credit[-_]?card|debit[-_]?card|payment[-_]?card|card[-_]?(?:number|num|no|data|details)|"
    r"cc|cc[-_]?(?:number|num|no)|pan|cvc2?|cvv2?|csc|card[-_]?(?:code|cvc|cvv|security[-_]?code)|"
    r"security[-_]?code|pin|pin[-_]?code|ssn|social[-_]?security[-_]?number|iban)$")
EMAIL_FIELD = re.compile(r"(?i)^(?:(?:user|contact|billing|shipping|customer|work|personal)[-_]?)?"
                         r"e[-_]?mail(?:[-_]?address)?$|^mail$")
PHONE_FIELD = re.compile(r"(?i)^(?:(?:mobile|cell|home|work|contact|billing|shipping|customer)[-_]?)?"
                         r"(?:phone|telephone|tel|mobile|cell|msisdn|fax)(?:[-_]?(?:number|no|num))?$")
# Headers that frame a message: never masked, or the message could not be read back.
STRUCTURAL_HEADERS = frozenset({"content-length", "transfer-encoding", "content-encoding", "content-type",
                                "connection", "keep-alive", "upgrade", "te", "trailer", "expect"})
PREFIX = "REDACTED-"
REDACTION_NOTES = (  # what the evidence package says about masking
    "secrets masked as REDACTED-<keyed hash> (equal values, equal stand-ins, within this run); test ids show "
    "REDACTED without the hash",
    "by name (words of the name, any case or separator: token, secret, password, key, session, auth, credential, "
    "signature...) in headers, query and path parameters, form, multipart, JSON and XML fields, name=value and "
    "name: value lines of text",
    "by shape anywhere: JWTs, PEM private keys, AWS/GitHub/GitLab/Slack/Stripe/Google/npm/PyPI/SendGrid/OpenAI "
    "keys, high-entropy tokens, URL passwords; whole path segments that are tokens or follow a segment naming a "
    "secret",
    "e-mail addresses, Luhn-valid card numbers and phone numbers masked in shown bodies, targets and headers, "
    "before values are shortened",
)


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def mask(value: bytes | str) -> str:
    """The stand-in for a secret value (unkeyed): equal inputs give equal stand-ins."""
    return PREFIX + hashlib.sha256(_bytes(value)).hexdigest()[:8]


def is_masked(value: str) -> bool:
    """Is this already a stand-in (or the shape placeholder diffs show for Set-Cookie values, or the
    fixed placeholder of test ids and URL passwords)?"""
    return value.startswith(PREFIX) or value == "..." or value == "REDACTED"


def luhn_ok(digits: str) -> bool:
    """The Luhn check of a string of digits (card numbers pass it, 9 in 10 random numbers do not)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_prefix(digits: str) -> bool:
    first = digits[0]
    return first in "3456" or (first == "2" and 2221 <= int(digits[:4]) <= 2720)


# -- patterns ---------------------------------------------------------------------------------------
# Secrets in free text, by name: (a character the text must hold, the names the pattern could mask,
# the pattern with "name" and "value" groups). A pattern runs only if one of its names is secret.
_PAIR = re.compile(r"(?P<name>[\w.\-]+)=(?P<value>[^&\s;,\"'<>]+)")  # name=value (query, env, cookies)
_QUOTED = re.compile(r"\"(?P<name>[\w.\-]+)\"\s*:\s*\"(?P<value>(?:[^\"\\]|\\.)*)\"")  # "name": "value"
_QUOTED_NAMES = re.compile(r"\"([\w.\-]+)\"\s*:")
_PAIR_NAMES = re.compile(r"([\w.\-]+)=[^&\s;,\"'<>]")
_ASSIGNED = re.compile(r"(?P<name>[\w.\-]+)[ \t]*=[ \t]*(?P<q>[\"'])(?P<value>[^\"'\r\n]+)(?P=q)"  # name="value"
                       r"(?!\s+(?:value|content)\s*=)")  # (not key="ApiKey" value="...": _KEY_VALUE's)
_ASSIGNED_NAMES = re.compile(r"([\w.\-]+)[ \t]*=[ \t]*[\"']")
_ELEMENT = re.compile(r"<(?P<name>[A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?)(?:\s[^<>]*)?>"  # <name>value</name>
                      r"(?P<value><!\[CDATA\[.*?\]\]>|[^<]+)</(?P=name)\s*>", re.DOTALL)
_ELEMENT_NAMES = re.compile(r"<([A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?)[\s>]")
_KEY_VALUE = re.compile(r"""\b(?:key|name)\s*=\s*["'](?P<name>[\w.\-: ]+)["']\s+(?:value|content)\s*=\s*["']"""
                        r"""(?P<value>[^"']+)["']""")  # <add key="ApiKey" value="...">, <meta name=.. content=..>
_KEY_VALUE_NAMES = re.compile(r"""\b(?:key|name)\s*=\s*["']([\w.\-: ]+)["']\s+(?:value|content)\s*=""")
_LINE = re.compile(r"(?m)^[ \t]*(?:-[ \t]+)?(?:export[ \t]+)?(?P<name>[A-Za-z_][\w.\-]*)[ \t]*:[ \t]*"
                   r"(?P<value>[^\s\"'#|>][^\r\n]*?|\"[^\"\r\n]+\"|'[^'\r\n]+')[ \t]*\r?$")  # name: value
_LINE_NAMES = re.compile(r"(?m)^[ \t]*(?:-[ \t]+)?(?:export[ \t]+)?([A-Za-z_][\w.\-]*)[ \t]*:[ \t]*[^\s|>]")
TEXT_RULES = (('"', _QUOTED_NAMES, _QUOTED), ("=", _PAIR_NAMES, _PAIR), ("=", _ASSIGNED_NAMES, _ASSIGNED),
              ("<", _ELEMENT_NAMES, _ELEMENT), ("=", _KEY_VALUE_NAMES, _KEY_VALUE), (":", _LINE_NAMES, _LINE))
_BOUNDARY = re.compile(r'(?i)\bboundary=(?:"([^"]+)"|([^;\s]+))')
_PART_NAME = re.compile(r'(?i)\bname="([^"]*)"|\bname=([^;\s]+)')
_SCHEME = re.compile(r"(?i)\b(?P<name>bearer|basic|token|digest)\s+(?P<value>[\w.~+/=\-]{8,})")

_AT = re.compile(r"@|%40")
_LOCAL_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)+[A-Za-z]{{2,24}}(?![\w-])")
_CARD = re.compile(r"(?=\d)(?<![\w.+-])(?:\d{13,19}|\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{1,4}(?:(?P=s)\d{1,3})?|"
                   r"\d{4}(?P<t>[ -])\d{6}(?P=t)\d{4,5})(?![\w]|[.,][\d]|[ -]\d)")
_PHONE = re.compile(
    r"(?=[\d+(])(?<![\w+.\-/])(?:"  # the lookahead first: 2x faster on text with few digits
    r"(?P<plain>\+[1-9]\d{7,14})"  # +4915112345678 (E.164)
    r"|(?P<intl>(?:\+|00)[1-9]\d{0,3}(?:[ .-]?\(\d{1,4}\) ?\d{1,8})?(?:[ .-]\d{1,8}){0,6})"  # +44 20 7946 0958
    r"|(?P<nanp>(?:1[ .-])?(?:\(\d{3}\) ?\d{3}[ .-]|\d{3}(?P<a>[ .-])\d{3}(?P=a))\d{4})"  # 555-123-4567
    r"|(?P<trunk>0[1-9]\d{0,3}(?P<b>[ ./-])\d{2,8}(?:(?P=b)\d{2,8}){0,3}"  # 030 1234567, 06 12 34 56 78
    r"|\(0[1-9]\d{0,3}\) ?\d{2,8}(?:[ -]\d{2,8}){0,2})"
    r")(?![\w]|[.\-/:]\d)")
_DIGITS = re.compile(r"\D")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
_ANY_DIGIT_RUN = re.compile(r"\d(?:\D{0,2}\d){7}")  # 8 digits close together: a card or phone may be there

# JSON tokens: a string (a key when a colon follows), a number, a literal, or a bracket.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"(?P<colon>\s*:)?|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[\[\]{}]')
_JSON_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')

BINARY_TYPES = ("image/", "audio/", "video/", "font/", "octet-stream", "pdf", "zip", "protobuf", "grpc",
                "msgpack", "cbor", "avro", "wasm")
TEXT_TYPES = ("text/", "xml", "javascript", "ecmascript", "yaml", "csv", "graphql", "html", "multipart/")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _charset(content_type: str) -> str:
    match = re.search(r"charset=\"?([\w.:-]+)", content_type)
    if match:
        try:
            "".encode(match[1])
            return match[1]
        except LookupError:
            pass
    return "utf-8"


def body_kind(body: bytes, content_type: str) -> str:
    """"json" | "form" | "text" | "binary" (what mask_body does with it), from the type or a sniff."""
    declared = content_type.split(";")[0].strip()
    if "json" in declared:
        return "json"
    if "x-www-form-urlencoded" in declared:
        return "form"
    if any(fragment in declared for fragment in TEXT_TYPES):
        return "text"
    if any(fragment in declared for fragment in BINARY_TYPES):
        return "binary"
    sample = body[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 4:  # not just a character cut at the end of the sample
            return "binary"
        text = sample[:exc.start].decode("utf-8")
    if len(_CONTROL.findall(text)) > len(text) // 20:
        return "binary"
    return "json" if text.lstrip()[:1] in ("{", "[") else "text"


class Redactor:
    """Masks secrets (headers, query/form/JSON fields) and personal data in messages and text.

    extra_headers / extra_params: more secret header names / field names (query, form and JSON),
    matched whole and case-insensitively. allow_headers / allow_fields: allowlist mode (see the
    module docstring). key: makes stand-ins keyed hashes (HMAC-SHA256); pii: mask personal data.
    headers replaces the default secret header set; name_pattern, when given, replaces the word rule
    of http/sensitive.py (name_is_secret) for header and field names.
    """

    def __init__(self, extra_headers: Iterable[str] = (), extra_params: Iterable[str] = (),
                 allow_headers: Iterable[str] | None = None, allow_fields: Iterable[str] | None = None, *,
                 headers: Iterable[str] = SECRET_HEADERS, name_pattern: re.Pattern[str] | None = None,
                 key: bytes | str | None = None, pii: bool = True) -> None:
        self.headers = frozenset(h.lower() for h in headers) | frozenset(h.lower() for h in extra_headers)
        self.name_pattern = name_pattern
        self.extra_params = frozenset(p.lower() for p in extra_params)
        self.allow_headers = None if allow_headers is None else frozenset(h.lower() for h in allow_headers)
        self.allow_fields = None if allow_fields is None else frozenset(f.lower() for f in allow_fields)
        self.key = _bytes(key) if key else None
        self.pii = pii
        self._names: dict[str, bool] = {}  # is_secret_name, remembered
        self._segments: dict[tuple[str, bool], str | None] = {}  # path segment -> its stand-in, remembered
        self._secret_headers: dict[str, bool] = {}  # is_secret_header, remembered
        self._plain_headers: set[tuple[str, str]] = set()  # (name, value) with nothing to mask, remembered

    # -- stand-ins --------------------------------------------------------------------------------
    def _hash(self, data: bytes) -> str:
        if self.key is None:
            return hashlib.sha256(data).hexdigest()[:8]
        return hmac.new(self.key, data, hashlib.sha256).hexdigest()[:8]

    def mask(self, value: bytes | str) -> str:
        """The stand-in for a secret value: REDACTED-<8 hex>."""
        return PREFIX + self._hash(_bytes(value))

    def pii_standin(self, kind: str, value: str) -> str:
        """REDACTED-EMAIL-<8 hex> (CARD, PHONE): of the normalised value, so that formatting
        differences (spaces in a card number, case in an e-mail address) do not matter."""
        if kind == "EMAIL":
            norm = unquote(value).lower()
        else:
            norm = ("+" if value.lstrip().startswith("+") else "") + _DIGITS.sub("", value)
        return f"{PREFIX}{kind}-{self._hash(norm.encode('utf-8', 'surrogateescape'))}"

    # -- names ------------------------------------------------------------------------------------
    def _secret_word_name(self, name: str) -> bool:
        if self.name_pattern is not None:
            return self.name_pattern.search(name) is not None
        return name_is_secret(name)

    def is_secret_header(self, name: bytes | str) -> bool:
        text = name.decode("latin-1") if isinstance(name, bytes) else name
        known = self._secret_headers.get(text)
        if known is None:
            known = text.lower() in self.headers or self._secret_word_name(text)
            if len(self._secret_headers) < 4096:
                self._secret_headers[text] = known
        return known

    def hides_header(self, name: bytes | str) -> bool:
        """Is this header's value masked (a secret, or not listed in allowlist mode)?"""
        text = name.decode("latin-1") if isinstance(name, bytes) else name
        lname = text.lower()
        if lname in STRUCTURAL_HEADERS:
            return False
        return self.is_secret_header(text) or (self.allow_headers is not None and lname not in self.allow_headers)

    def is_secret_name(self, name: str) -> bool:
        """Is a query parameter, form field or JSON key with this name a secret?"""
        known = self._names.get(name)
        if known is None:
            known = (self._secret_word_name(name) or bool(SECRET_FIELD.match(name))
                     or name.lower() in self.extra_params)
            if len(self._names) < 4096:
                self._names[name] = known
        return known

    def allowed(self, name: str) -> bool:
        return self.allow_fields is None or name.lower() in self.allow_fields

    @staticmethod
    def pii_field(name: str) -> str | None:
        """"EMAIL" / "PHONE" for fields named like one, else None."""
        return "EMAIL" if EMAIL_FIELD.match(name) else "PHONE" if PHONE_FIELD.match(name) else None

    # -- header values ------------------------------------------------------------------------------
    def header_value(self, name: bytes | str, value: bytes | str, counts: Counter | None = None) -> str:
        """A header value as it may be shown: credentials masked (the auth scheme and cookie names
        and attributes kept), in allowlist mode unlisted values masked whole."""
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        name = name.decode("latin-1") if isinstance(name, bytes) else name
        lname = name.lower()
        if not self.hides_header(name):
            return text
        if is_masked(text.strip()):
            return text
        if counts is not None:
            counts["header", lname] += 1
        if not self.is_secret_header(name):  # allowlist mode: not listed
            return self.mask(text)
        if lname == "cookie":
            return "; ".join(self._cookie_pair(p.strip()) for p in text.split(";") if p.strip())
        if lname == "set-cookie":
            pair, sep, attributes = text.partition(";")
            return self._cookie_pair(pair.strip()) + sep + attributes
        scheme, space, credentials = text.strip().partition(" ")
        if space and credentials.strip() and re.fullmatch(r"[A-Za-z][\w.+-]*", scheme):
            credentials = credentials.strip()
            return f"{scheme} {credentials if is_masked(credentials) else self.mask(credentials)}"
        return self.mask(text)

    def _cookie_pair(self, pair: str) -> str:
        name, eq, value = pair.partition("=")
        if not eq:
            return self.mask(pair)
        value = value.strip()
        quoted = len(value) >= 2 and value[0] == value[-1] == '"'
        inner = value[1:-1] if quoted else value
        if not inner or is_masked(inner):
            return pair
        return f"{name.strip()}={self.mask(inner)}"

    def headers_text(self, pairs) -> list[tuple[str, str]]:
        return [(name.decode("latin-1"), self.header_value(name, value)) for name, value in pairs]

    def _header_text(self, name: str, value: str, counts: Counter | None) -> str:
        """Any header value for rewriting: secrets masked, else secrets and PII in the text masked
        (a URL or a path, as in Location or Referer, is masked as a request target is)."""
        if self.hides_header(name):
            return self.header_value(name, value, counts)
        if name.lower() in STRUCTURAL_HEADERS or (name, value) in self._plain_headers:
            return value  # (header values repeat: User-Agent, Accept...; those with nothing to mask are remembered)
        new = self._url(value, counts) if value.startswith("/") or "://" in value[:12] else value
        new = self.mask_pii(self.text(new, counts), counts) if self.pii else self.text(new, counts)
        if new == value and len(self._plain_headers) < 4096:
            self._plain_headers.add((name, value))
        return new

    def _url(self, url: str, counts: Counter | None) -> str:
        """A URL or an absolute path with its path segments and query masked as a request target's."""
        scheme, sep, rest = url.partition("://")
        if not sep:
            return self.target(url, counts)
        authority, slash, target = rest.partition("/")
        return scheme + sep + authority + slash + self.target(target, counts) if slash else url

    # -- targets and fields -----------------------------------------------------------------------
    def target(self, target: str, counts: Counter | None = None) -> str:
        """The request target with secret path segments and path parameter values, secret (and, in
        allowlist mode, unlisted) query parameter values, and personal data masked."""
        path, sep, query = target.partition("?")
        path = self.path(path, counts)
        if self.pii:
            path = self.mask_pii(path, counts)
        if not sep:
            return path
        return path + "?" + self._pairs(query, "param", counts, form=False)

    def path(self, path: str, counts: Counter | None = None) -> str:
        """A path with every secret segment (sensitive.secret_segment, the decision path templates
        use) and every secret path parameter value (;jsessionid=...) replaced by its stand-in."""
        out = []
        after = False
        changed = False
        for segment in path.split("/"):
            key = (segment, after)
            new = self._segments.get(key, False)
            if new is False:
                new = self._segment(segment, after)
                if len(self._segments) >= 4096:
                    self._segments.clear()
                self._segments[key] = new
            if new is not None:
                changed = True
                if counts is not None:
                    same_base = new.partition(";")[0] == segment.partition(";")[0]
                    counts["path", "parameter" if same_base else "segment"] += 1
            out.append(segment if new is None else new)
            after = bool(segment) and names_a_secret(segment)
        return "/".join(out) if changed else path

    def _segment(self, segment: str, after: bool) -> str | None:
        """The masked form of one path segment, or None when there is nothing to mask in it."""
        base, semi, params = segment.partition(";")
        changed = False
        if base and not is_masked(base) and secret_segment(base, after):
            base = self.mask(unquote(base))
            changed = True
        if semi:
            kept = []
            for param in params.split(";"):
                name, eq, value = param.partition("=")
                if eq and value and not is_masked(value) and (self.is_secret_name(unquote(name)) or is_token(value)):
                    param = name + eq + self.mask(unquote(value))
                    changed = True
                kept.append(param)
            params = ";".join(kept)
        return base + semi + params if changed else None

    def _pairs(self, text: str, kind: str, counts: Counter | None, form: bool) -> str:
        parts = []
        decode = unquote_plus if form else unquote
        for item in text.split("&"):
            name, eq, value = item.partition("=")
            if eq and value:
                value = self._field(decode(name), value, kind, counts, form)
            parts.append(name + eq + value)
        return "&".join(parts)

    def _field(self, name: str, raw: str, kind: str, counts: Counter | None, form: bool) -> str:
        """One url-encoded value of field `name`, masked as it should be."""
        if is_masked(unquote(raw)):
            return raw
        if self.is_secret_name(name) or not self.allowed(name):
            if counts is not None:
                counts[kind, name if self.is_secret_name(name) else "(not allowed)"] += 1
            return quote(self.mask(unquote_plus(raw) if form else unquote(raw)))
        pii = self.pii_field(name) if self.pii else None
        if pii is not None:
            if counts is not None:
                counts["pii", pii.lower()] += 1
            return self.pii_standin(pii, unquote_plus(raw) if form else unquote(raw))
        if not self.pii and len(raw) < 16 and not _PAIR.search(raw):
            return raw
        # Decoded as a form would decode it ("+" is a space) and, if nothing is found that way, with
        # "+" kept (a phone number written +49... in a query string).
        for decode, encode in ((unquote_plus, quote_plus), (unquote, lambda s: quote(s, safe="+"))):
            value = decode(raw)
            masked = self.text(value, counts)
            if self.pii:
                masked = self.mask_pii(masked, counts)
            if masked != value:
                return encode(masked)
        return raw

    # -- free text ----------------------------------------------------------------------------------
    def text(self, text: str, counts: Counter | None = None) -> str:
        """Secrets in free text masked: by name (`name=value`, `name="value"`, `"name": "value"`,
        `<name>value</name>`, `key="name" value="..."`, line-start `name: value`), after an auth
        scheme (`Bearer <token>`), URL passwords, and by shape (known formats, high-entropy tokens)."""
        if len(text) < 8:
            return text

        def pair(match: re.Match[str]) -> str:
            name, value = match["name"], match["value"]
            if match.re is not _SCHEME and not self.is_secret_name(name):
                return match[0]
            start, end = match.span("value")
            if match.re is _ELEMENT and value.startswith("<![CDATA["):
                value, start, end = value[9:-3], start + 9, end - 3
            elif match.re is _LINE and value[:1] in "\"'":
                value, start, end = value[1:-1], start + 1, end - 1
            if is_masked(value.strip()) or not value.strip():
                return match[0]
            if counts is not None:
                counts["text", name.lower()] += 1
            if match.re is _LINE and name.lower() in self.headers:
                new = self.header_value(name, value)  # "Authorization: Bearer x" keeps its scheme
            else:
                new = self.mask(value)
            base = match.start()
            return match[0][:start - base] + new + match[0][end - base:]

        if "://" in text:
            text = sub_url_passwords(lambda m: self._shape_standin(m, "url password", counts), text)
        # A pattern runs (with a Python call per match) only if a name it would mask is there.
        for needle, names, pattern in TEXT_RULES:
            if needle in text and any(self.is_secret_name(n) for n in set(names.findall(text))):
                text = pattern.sub(pair, text)
        if " " in text:
            text = _SCHEME.sub(pair, text)
        return self.shapes(text, counts)

    def _shape_standin(self, match: re.Match[str], kind: str, counts: Counter | None) -> str:
        value = match["value"] if kind == "url password" else match[0]
        if is_masked(value):
            return match[0]
        if counts is not None:
            counts["shape", kind] += 1
        if kind == "url password":
            return match["user"] + self.mask(value)
        return self.mask(value)

    def shapes(self, text: str, counts: Counter | None = None) -> str:
        """Secrets found by their shape (whatever their name): known credential formats (JWT, PEM private
        key, AWS, GitHub, Slack, Stripe...) and high-entropy tokens; each replaced by its stand-in."""
        if len(text) < 16:
            return text
        text = _sub_known(lambda m: self._shape_standin(m, known_kind(m), counts), text)

        def run(match: re.Match[str]) -> str:
            whole = match[0]
            core = whole.strip("_-")
            if is_masked(core):
                return whole
            if counts is not None:
                counts["shape", "token"] += 1
            lead = len(whole) - len(whole.lstrip("_-"))
            return whole[:lead] + self.mask(core) + whole[lead + len(core):]

        return sub_tokens(run, text)  # a run sensitive.is_token calls a token

    def mask_pii(self, text: str, counts: Counter | None = None) -> str:
        """E-mail addresses, card numbers and phone numbers in `text`, replaced by stand-ins."""
        if "@" in text or "%40" in text:
            text = self._emails(text, counts)
        if _ANY_DIGIT_RUN.search(text) is None:
            return text

        def card(match: re.Match[str]) -> str:
            value = match[0]
            digits = _DIGITS.sub("", value)
            if 13 <= len(digits) <= 19 and _card_prefix(digits) and luhn_ok(digits):
                if counts is not None:
                    counts["pii", "card"] += 1
                return self.pii_standin("CARD", value)
            return value

        def phone(match: re.Match[str]) -> str:
            value = match[0]
            digits = _DIGITS.sub("", value)
            n = len(digits)
            if match["plain"] or match["intl"]:
                if value.startswith("00"):  # 0049 30 1234567: only with separators (else an id)
                    ok = 8 <= n - 2 <= 15 and len(value) > n
                else:
                    ok = 8 <= n <= 15
            elif match["nanp"]:
                ok = n in (10, 11)
            else:
                ok = 10 <= n <= 12
            if not ok:
                return value
            if counts is not None:
                counts["pii", "phone"] += 1
            return self.pii_standin("PHONE", value)

        text = _CARD.sub(card, text)
        return _PHONE.sub(phone, text)

    def _emails(self, text: str, counts: Counter | None) -> str:
        out = []
        last = 0
        for at in _AT.finditer(text):
            start, end = at.start(), at.end()
            if start < last:
                continue
            local = _LOCAL_PART.search(text, max(last, start - 64), start)
            domain = _DOMAIN.match(text, end)
            if local is None or domain is None:
                continue
            begin = local.start()
            if begin > 0 and text[begin - 1] == "%" and _HEX2.match(text, begin):
                begin += 2  # "%20alice@...": the escape is not part of the address
                if begin >= start:
                    continue
            out.append(text[last:begin])
            out.append(self.pii_standin("EMAIL", text[begin:domain.end()]))
            last = domain.end()
            if counts is not None:
                counts["pii", "email"] += 1
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    # -- bodies -------------------------------------------------------------------------------------
    def body(self, body: bytes, content_type: bytes | str | None = None, counts: Counter | None = None) -> bytes:
        """A body (already without chunked framing and content coding) with secret JSON/form fields,
        secrets in text and personal data masked. Binary bodies are returned as they are."""
        if not body:
            return body
        declared = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type or ""
        ctype = declared.lower()
        kind = body_kind(body, ctype)
        if kind == "binary":
            return body
        if ctype.startswith("multipart/") and self.allow_fields is None:
            boundary = _BOUNDARY.search(declared)
            if boundary:
                return self._multipart(body, (boundary[1] or boundary[2]).encode("latin-1"), counts)
        charset = _charset(ctype)
        text = body.decode(charset, "surrogateescape")
        if kind == "json":
            text = self._json(text, counts)
        elif kind == "form":
            text = self._pairs(text, "form", counts, form=True)
        elif self.allow_fields is not None:  # allowlist mode: a text body has no listed fields
            if counts is not None:
                counts["body", "text body (not allowed)"] += 1
            return self.mask(body).encode()
        text = self.text(text, counts)
        if self.pii:
            text = self.mask_pii(text, counts)
        out = text.encode(charset, "surrogateescape")
        return body if out == body else out

    def _multipart(self, body: bytes, boundary: bytes, counts: Counter | None) -> bytes:
        """A multipart body part by part: a part named like a secret is masked whole (unless it is a
        file), the others are masked as bodies of their own Content-Type; binary parts stay as they
        are. The delimiters and the preamble and epilogue are kept byte for byte."""
        delimiter = b"--" + boundary
        pieces = body.split(delimiter)
        out = [pieces[0]]  # the preamble
        for piece in pieces[1:]:
            if piece.startswith(b"--"):  # the close delimiter and the epilogue
                out.append(piece)
                continue
            out.append(self._part(piece, counts))
        return delimiter.join(out)

    def _part(self, piece: bytes, counts: Counter | None) -> bytes:
        """One part of a multipart body: its line ending, headers, empty line, content, line ending."""
        cut = piece.find(b"\r\n\r\n")
        gap = 4
        if cut < 0:
            cut, gap = piece.find(b"\n\n"), 2
        if cut < 0:
            return piece
        head, content = piece[:cut], piece[cut + gap:]
        ending = b"\r\n" if content.endswith(b"\r\n") else b"\n" if content.endswith(b"\n") else b""
        content = content[:len(content) - len(ending)]
        headers = dict(line.decode("latin-1").partition(":")[::2] for line in head.splitlines() if b":" in line)
        headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
        disposition = headers.get("content-disposition", "")
        name = _PART_NAME.search(disposition)
        is_file = "filename" in disposition.lower()
        if name and not is_file and self.is_secret_name(name[1]) and content and not is_masked(content.decode(
                "latin-1")):
            if counts is not None:
                counts["multipart", name[1]] += 1
            content = self.mask(content).encode()
        else:
            content = self.body(content, headers.get("content-type") or ("" if is_file else "text/plain"), counts)
        new_head = self.text(head.decode("latin-1"), counts).encode("latin-1", "replace")
        return new_head + piece[cut:cut + gap] + content + ending

    def _json(self, text: str, counts: Counter | None) -> str:
        """Values under secret (or, in allowlist mode, unlisted) keys, PII-named fields and card numbers
        written as JSON numbers, masked; everything else byte for byte as it was."""
        allowlist = self.allow_fields is not None
        if not allowlist and not any(self.is_secret_name(k) or self.pii_field(k)
                                     for k in set(_JSON_KEY.findall(text))) \
                and not re.search(r"(?<![\d.])\d{13,19}(?![\d.])", text):
            return text  # nothing to do here that the text passes will not do
        # A frame per open container: [secret key name or None, allowed, pii kind]; `pending` is the
        # state of the value that comes next (after a key, or an array's element).
        top = [None, not allowlist, None]
        stack: list[tuple[bool, list]] = []  # (is object, state of the container)
        pending = [top]

        def state_for_key(name: str) -> list:
            parent = stack[-1][1] if stack else top
            secret = name if self.is_secret_name(name) else parent[0]
            allowed = parent[1] or self.allowed(name)
            pii = parent[2] or (self.pii_field(name) if self.pii else None)
            return [secret, allowed, pii]

        def value_state() -> list:
            if stack and not stack[-1][0]:  # array element: the array's state
                return stack[-1][1]
            return pending[0]

        def token(match: re.Match[str]) -> str:
            tok = match[0]
            first = tok[0]
            if first == '"':
                if match["colon"] is not None:
                    try:
                        name = json.loads(tok[: tok.rindex('"') + 1])
                    except ValueError:
                        name = tok[1: tok.rindex('"')]
                    pending[0] = state_for_key(str(name))
                    return tok
                return self._json_scalar(tok, value_state(), True, counts)
            if first in "{[":
                stack.append((first == "{", value_state()))
                return tok
            if first in "}]":
                if stack:
                    stack.pop()
                return tok
            return self._json_scalar(tok, value_state(), False, counts)

        return _JSON_TOKEN.sub(token, text)

    def _json_scalar(self, tok: str, state: list, is_string: bool, counts: Counter | None) -> str:
        secret, allowed, pii = state
        if is_string:
            try:
                value = json.loads(tok)
            except ValueError:
                value = tok[1:-1]
            if not isinstance(value, str):
                value = tok[1:-1]
            if is_masked(value):
                return tok
        else:
            value = tok
        if secret is not None or not allowed:
            if counts is not None:
                counts["json", secret if secret is not None else "(not allowed)"] += 1
            digits = _DIGITS.sub("", value) if len(value) < 40 else ""
            if 13 <= len(digits) <= 19 and _card_prefix(digits) and luhn_ok(digits) \
                    and _CARD.fullmatch(value.strip()):  # a card number masks the same everywhere
                return '"' + self.pii_standin("CARD", value) + '"'
            return '"' + self.mask(value) + '"'
        if pii is not None and value != "":
            if counts is not None:
                counts["pii", pii.lower()] += 1
            return '"' + self.pii_standin(pii, value) + '"'
        if not is_string and self.pii and 13 <= len(tok) <= 19 and tok.isdigit() and _card_prefix(tok) \
                and luhn_ok(tok):
            if counts is not None:
                counts["pii", "card"] += 1
            return '"' + self.pii_standin("CARD", tok) + '"'
        return tok

    # -- messages -----------------------------------------------------------------------------------
    def message(self, msg, counts: Counter | None = None):
        """A Request or Response with every secret and personal datum replaced, still valid HTTP:
        Content-Length follows a changed body; a chunked body is written with Content-Length; a
        content-encoded body (any coding http/content.py undoes) that had anything to mask is written
        back identity-encoded, without its Content-Encoding header. Bytes after the end of the message
        are not kept."""
        from ..http.message import Request

        is_request = isinstance(msg, Request)
        headers = msg.headers
        te = field_value(headers, b"transfer-encoding")
        chunked = is_chunked(te)
        other_te = [c for c in codings(te) if c != "chunked"]
        ctype = header_value(headers, b"content-type")
        body = msg.body
        wire_body: bytes | None = None  # bytes after the head, when kept as they are
        drop_coding = False
        if other_te:  # a transfer coding besides chunked: not inspected, kept as it is
            if counts is not None:
                counts["body", f"not inspected (transfer-encoding {','.join(other_te)})"] += 1
            wire_body = msg.raw[len(msg.head):]
        else:
            try:
                decoded = undo(body, field_value(headers, b"content-encoding"))
            except Undecodable as exc:
                if counts is not None:
                    counts["body", f"not inspected (content-encoding {exc.coding})"] += 1
            else:
                masked = self.body(decoded, ctype, counts)
                if masked != decoded:
                    body = masked
                    if decoded is not msg.body:  # it was content-encoded: now it is not
                        drop_coding = True
                        if counts is not None:
                            counts["body", "content-encoded, rewritten identity-encoded"] += 1
        body_changed = body != msg.body or drop_coding
        if chunked and wire_body is None and counts is not None:
            counts["body", "chunked, rewritten with Content-Length"] += 1
        new_length = str(len(body)).encode() if (body_changed or chunked) and wire_body is None else None

        lines = head_lines(msg.head)
        out = [self._start_line(msg, lines[0][0], counts) + lines[0][1]] if is_request else [lines[0][0] + lines[0][1]]
        eol = lines[0][1] or b"\r\n"
        had_length = False
        for group in header_fields(lines[1:]):
            name, value, raw = group
            lname = name.lower()
            if lname == b"content-length" and new_length is not None:
                if had_length:
                    continue  # duplicates were equal (the parser checks): one is enough
                had_length = True
                out.append(name + b": " + new_length + raw[-1][1])
                continue
            if lname == b"transfer-encoding" and chunked and wire_body is None:
                continue
            if lname == b"content-encoding" and drop_coding:
                continue
            text = value.decode("latin-1")
            new = self._header_text(name.decode("latin-1"), text, counts)
            if new == text:
                out.extend(line + ending for line, ending in raw)
            else:
                out.append(name + b": " + new.encode("latin-1", "replace") + raw[-1][1])
        if new_length is not None and not had_length and (chunked or is_request or body):
            out.append(b"Content-Length: " + new_length + eol)
        if chunked and wire_body is None:
            for name, value in msg.trailers:  # merged into the head (RFC 9110 6.5.1)
                if name.lower() in (b"content-length", b"transfer-encoding"):
                    continue
                new = self._header_text(name.decode("latin-1"), value.decode("latin-1"), counts)
                out.append(name + b": " + new.encode("latin-1", "replace") + eol)
        out.append(lines[-1][0] + lines[-1][1])  # the empty line ending the head
        head = b"".join(out)
        raw = head + (wire_body if wire_body is not None else body)
        trailers = msg.trailers if wire_body is not None else ()
        if is_request:
            target = self.target(msg.target)  # counted with the start line
            return Request(msg.method, target, msg.version, head, body, raw, trailers, msg.lf_only)
        from ..http.message import Response

        return Response(msg.status, msg.reason, msg.version, head, body, raw, trailers, msg.interim, msg.lf_only)

    def head(self, msg, counts: Counter | None = None) -> bytes:
        """A message's head alone, masked as message() masks it, its framing headers kept as they are:
        for a message stored without its body (the recorder's bodies over their cap), which must not
        turn into a whole message with an empty body."""
        from ..http.message import Request

        lines = head_lines(msg.head)
        start = self._start_line(msg, lines[0][0], counts) if isinstance(msg, Request) else lines[0][0]
        out = [start + lines[0][1]]
        for name, value, raw in header_fields(lines[1:]):
            text = value.decode("latin-1")
            new = self._header_text(name.decode("latin-1"), text, counts)
            if new == text:
                out.extend(line + ending for line, ending in raw)
            else:
                out.append(name + b": " + new.encode("latin-1", "replace") + raw[-1][1])
        out.append(lines[-1][0] + lines[-1][1])
        return b"".join(out)

    def _start_line(self, msg, line: bytes, counts: Counter | None) -> bytes:
        target = self.target(msg.target, counts)
        if target == msg.target:
            return line
        start = len(msg.method) + 1
        old = msg.target.encode("latin-1")
        if line[start:start + len(old)] != old:
            return f"{msg.method} {target} HTTP/{msg.version}".encode("latin-1", "replace")
        return line[:start] + target.encode("latin-1", "replace") + line[start + len(old):]

    def exchange(self, exchange, counts: Counter | None = None):
        """An Exchange with its request and recorded response redacted (replayed responses dropped)."""
        from ..http.message import Exchange

        response = exchange.response
        return Exchange(exchange.index, self.message(exchange.request, counts),
                        self.message(response, counts) if response is not None else None,
                        exchange.request_ts_ns, exchange.response_ts_ns, exchange.connection, exchange.position,
                        exchange.source, exchange.flags, ())


DEFAULT = Redactor()


def mask_text(text: str, redactor: Redactor = DEFAULT) -> str:
    """Secret-looking `name=value`, `"name": "value"` and `Bearer <token>` in free text, masked."""
    return redactor.text(text)


def mask_pii(text: str) -> str:
    """E-mail addresses, card numbers and phone numbers in `text`, replaced by stand-ins."""
    return DEFAULT.mask_pii(text)


def mask_body(body: bytes, content_type: bytes | str | None = None) -> bytes:
    """A body with secret JSON/form fields, secrets in text and personal data masked."""
    return DEFAULT.body(body, content_type)
