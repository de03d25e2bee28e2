"""Is this a secret? Decisions by name and by shape, shared by the masker (policy/redact.py) and the
path templates (http/normalize.py): a path segment that `inspect` writes as ``{token}`` is one the
masker hides, by the same code. Sans-IO; the only state is bounded caches.

By name. A name (header, query parameter, form/JSON/XML field, env variable, path segment) is cut into
words at case changes, digits and separators, so case and separators do not matter:
``sessionToken`` -> session token, ``AWS_SECRET_ACCESS_KEY`` -> aws secret access key,
``X-Auth-Token`` -> x auth token; ``PHPSESSID`` stays one word. It is secret when a word is one of
SECRET_WORDS, or a run-together word ends with one of GLUED_SUFFIXES (``jsessionid``, ``csrftoken``,
``newpassword``) or starts with ``password``. Whole words only: ``keyboard``, ``monkey``, ``author``,
``authority``, ``passed`` are not secret. Three words need more:
  - ``key`` is secret when nothing but a value word (value, data, pem...) follows it and it is not
    a sort/primary/foreign/partition/public/cache/idempotency... key (``privateKey``, ``api_key``,
    ``AWS_SECRET_ACCESS_KEY``, ``key``; not ``sort_key``, ``key_id``, ``publicKey``);
  - ``code`` is secret alone or after reset, verification, auth, otp... (not ``country_code``);
  - a name whose secret word is followed by a word about it rather than its value (type, count,
    expires, method, policy, url, name...) is not secret: ``token_type``, ``session_timeout``,
    ``password_changed_at``, ``auth_method``.

By shape (whatever the name):
  - KNOWN_FORMATS: JWTs, PEM private keys, AWS access key ids, GitHub, GitLab, Slack, Stripe, Google,
    npm, PyPI, SendGrid and OpenAI-style keys;
  - high-entropy tokens: at least 16 ASCII letters and digits (with few - or _ between them, as in
    base64url) holding a digit and a letter, whose character class (lower, upper, digit) changes at
    least 5 times and at least once every 5 characters: hex, base62 and base64url tokens, session
    ids, signatures. Measured on random strings: 89-97% of 16-20 character tokens are found, 98-99%
    of 32 character ones (those without a digit are not). UUIDs, dates, numbers, slugs, words and
    identifiers such as troubleshooting2016 or ISO8601Timestamp are not tokens.
  - a URL's password (``scheme://user:password@host``).

A path segment is secret when it is a token by shape, or when it holds a digit and follows a segment
that names a secret (``/password-reset/771903``, ``/api/tokens/t0k3n``): PATH_CONTEXT_WORDS.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["KNOWN_FORMATS", "SECRET_WORDS", "is_token", "known_kind", "name_is_secret", "names_a_secret",
           "secret_segment", "sub_known", "sub_tokens", "sub_url_passwords", "url_without_password"]

SECRET_WORDS = frozenset({
    "token", "tokens", "secret", "secrets", "password", "passwords", "passwd", "pwd", "pass", "passphrase",
    "passcode", "session", "sessionid", "sessid", "sid", "auth", "authorization", "authentication",
    "credential", "credentials", "signature", "sig", "hmac", "jwt", "bearer", "otp", "totp", "pin", "csrf",
    "xsrf", "apikey", "cookie",
})
GLUED_SUFFIXES = ("token", "tokens", "secret", "password", "passwd", "passphrase", "sessionid", "sessid",
                  "credential", "credentials", "signature", "apikey", "accesskey", "secretkey", "privatekey",
                  "signingkey", "masterkey", "sessionkey", "authkey", "clientkey", "encryptionkey", "jwt")
GLUED_PREFIXES = ("password", "passwd")
# "key" is not secret after these words, nor when another word than these follows it.
NOT_SECRET_KEYS = frozenset({"public", "primary", "foreign", "sort", "partition", "cache", "idempotency", "row",
                             "range", "lookup", "map", "object", "group", "composite", "unique", "dedup", "dedupe",
                             "routing", "shard", "translation", "i18n", "hot", "short", "sort", "index"})
KEY_VALUE_WORDS = frozenset({"value", "data", "material", "pem", "der", "b64", "base64", "hex", "raw", "string",
                             "str", "text", "content", "bytes", "secret", "b", "s"})
CODE_QUALIFIERS = frozenset({"reset", "verification", "verify", "confirmation", "confirm", "activation", "auth",
                             "authorization", "recovery", "otp", "mfa", "2fa", "totp", "sms", "login", "access",
                             "security", "invite", "invitation", "backup", "magic", "one", "time", "pin", "card",
                             "cvv", "cvc", "secret", "device", "pairing", "unlock"})
# Words after a secret word that make the name one about the secret, not the secret itself.
META_WORDS = frozenset({"type", "types", "kind", "count", "length", "len", "size", "expires", "expiry", "expiration",
                        "exp", "ttl", "timeout", "lifetime", "age", "at", "time", "date", "status", "method",
                        "methods", "mode", "policy", "scheme", "name", "enabled", "required", "version", "format",
                        "hint", "strength", "changed", "updated", "created", "url", "uri", "endpoint", "path",
                        "provider", "label", "level", "rule", "rules", "min", "max", "valid", "exists", "present"})
# A path segment with one of these words names what the next segment holds (a reset or magic link...).
PATH_CONTEXT_WORDS = frozenset({"token", "tokens", "secret", "secrets", "password", "passwords", "passwd",
                                "credential", "credentials", "signature", "otp", "pin", "reset", "verify",
                                "verification", "confirm", "confirmation", "activate", "activation", "invite",
                                "invitation", "magic", "unsubscribe", "apikey", "apikeys"})

_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

# Formats of well-known credentials (each also a token by the entropy rule unless noted).
KNOWN_FORMATS: tuple[tuple[str, str], ...] = (
    ("pem private key", r"-----BEGIN[A-Z0-9 ]{0,30} PRIVATE KEY(?: BLOCK)?-----"
                        r"(?:(?:[A-Za-z0-9+/=:,.\- \t\r\n]|\\[nrt])*?-----END[A-Z0-9 ]{0,30} PRIVATE KEY(?: BLOCK)?-----"
                        r"|(?:[A-Za-z0-9+/= \t\r\n]|\\[nrt])*)"),
    ("jwt", r"eyJ[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]*"),
    ("aws access key id", r"(?:AKIA|ASIA|ABIA|ACCA|AROA|AIDA)[A-Z0-9]{16}"),  # may hold no digit
    ("github token", r"gh[pousr]_[A-Za-z0-9]{30,255}|github_pat_[A-Za-z0-9_]{22,255}"),
    ("gitlab token", r"glpat-[A-Za-z0-9_\-]{20,}"),
    ("slack token", r"xox[abposr]-[A-Za-z0-9\-]{10,}"),  # its parts are short
    ("stripe key", r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,}"),
    ("google api key", r"AIza[0-9A-Za-z_\-]{35}"),
    ("npm token", r"npm_[A-Za-z0-9]{36}"),
    ("pypi token", r"pypi-AgE[A-Za-z0-9_\-]{50,}"),
    ("sendgrid key", r"SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}"),
    ("openai key", r"sk-(?:proj-)?[A-Za-z0-9_\-]{20,}"),
)
_KNOWN = re.compile("(?<![A-Za-z0-9_])(?:" + "|".join(f"(?P<f{i}>{p})" for i, (_, p) in enumerate(KNOWN_FORMATS))
                    + ")")
# Candidates for the entropy rule: runs of letters, digits, - and _ (16 or more), holding a digit.
_CANDIDATE = re.compile(r"(?<![A-Za-z0-9_\-])(?=[A-Za-z_\-]*+[0-9])[A-Za-z0-9_\-]{16,}+")
# A run as it stands in text, for replacing: a candidate with its base64 padding.
_RUN = re.compile(_CANDIDATE.pattern + "={0,2}")
_CLASS_RUNS = re.compile(r"[a-z]+|[A-Z]+|[0-9]+")
MIN_TOKEN = 16  # letters and digits
_URL_PASSWORD = re.compile(r"(?i)\b(?P<user>[a-z][a-z0-9+.\-]*://[^\s:/@?#\"'<>]*:)(?P<value>[^\s/@?#\"'<>]+)(?=@)")
_MAX_CACHED = 8192
_NAMES: dict[str, bool] = {}
_CONTEXTS: dict[str, bool] = {}


def words(name: str) -> list[str]:
    """The lower-case words of a name: 'sessionToken' -> ['session', 'token']."""
    return [w.lower() for w in _WORDS.findall(name)]


def _word_is_secret(parts: list[str], i: int) -> bool:
    word = parts[i]
    if word == "key" or (word.endswith("key") and word.endswith(GLUED_SUFFIXES)):
        if i and parts[i - 1] in NOT_SECRET_KEYS:
            return False
        return all(w in KEY_VALUE_WORDS or w.isdigit() for w in parts[i + 1:])
    if word == "code" or word == "codes":
        return len(parts) == 1 or (i > 0 and parts[i - 1] in CODE_QUALIFIERS)
    if word in SECRET_WORDS:
        return True
    return word.endswith(GLUED_SUFFIXES) or word.startswith(GLUED_PREFIXES)


def _name_is_secret(name: str) -> bool:
    parts = words(name)
    last = -1
    for i in range(len(parts)):
        if _word_is_secret(parts, i):
            last = i
    return last >= 0 and not any(w in META_WORDS for w in parts[last + 1:])


def name_is_secret(name: str) -> bool:
    """Does a header, parameter or field with this name hold a secret (see the module docstring)?"""
    known = _NAMES.get(name)
    if known is None:
        known = _name_is_secret(name)
        if len(_NAMES) >= _MAX_CACHED:
            _NAMES.clear()
        _NAMES[name] = known
    return known


def names_a_secret(segment: str) -> bool:
    """Does this path segment say that the next one holds a secret ('password-reset', 'tokens')?"""
    known = _CONTEXTS.get(segment)
    if known is None:
        parts = words(segment.partition(";")[0])
        known = any(w in PATH_CONTEXT_WORDS or w.endswith(GLUED_SUFFIXES) for w in parts)
        if len(_CONTEXTS) >= _MAX_CACHED:
            _CONTEXTS.clear()
        _CONTEXTS[segment] = known
    return known


def known_kind(match: re.Match[str]) -> str:
    """The name of the known credential format a sub_known() match is (KNOWN_FORMATS)."""
    return KNOWN_FORMATS[int(match.lastgroup[1:])][0]


def sub_known(repl, text: str) -> str:
    return _KNOWN.sub(repl, text)


def _random(candidate: str) -> bool:
    """The entropy rule on one candidate run (see the module docstring)."""
    core = candidate.strip("-_")
    joined = core.replace("-", "").replace("_", "")
    n = len(joined)
    if n < MIN_TOKEN or (len(core) - n) * 10 > len(core):  # slugs and snake_case have many separators
        return False
    changes = len(_CLASS_RUNS.findall(joined)) - 1
    return changes >= max(5, n // 5) and not joined.isdigit()


def is_token(value: str) -> bool:
    """Is `value` (or a run in it) a token by shape: a known credential format or a high-entropy run
    (see the module docstring)?"""
    if len(value) < MIN_TOKEN:
        return False
    return any(_random(m[0]) for m in _CANDIDATE.finditer(value)) or _KNOWN.search(value) is not None


def sub_tokens(repl, text: str) -> str:
    """re.sub of every run of token characters (base64 padding included) that is a token by shape
    (is_token, on the run without its leading and trailing - and _): repl gets the match."""
    def one(match: re.Match[str]) -> str:
        return repl(match) if is_token(match[0].strip("_-")) else match[0]

    return _RUN.sub(one, text)


def secret_segment(segment: str, after_secret_name: bool) -> bool:
    """Is this path segment (without its ;parameters, percent-encoded or not) a secret?
    `after_secret_name`: the segment before it names a secret (names_a_secret)."""
    if "%" in segment:
        segment = unquote(segment)
    if after_secret_name and any(c.isdigit() for c in segment):
        return True
    return is_token(segment)


def url_without_password(text: str, placeholder: str = "REDACTED") -> str:
    """`text` with the password of every URL in it (scheme://user:password@host) replaced."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(lambda m: m["user"] + placeholder, text)


def sub_url_passwords(repl, text: str) -> str:
    """re.sub of URL passwords: repl gets a match whose "value" group is the password."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(repl, text)
