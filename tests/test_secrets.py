"""Secrets that show (issue 10, finding 2): what the masker finds by name and by shape, everywhere a
value can sit, end to end.

A .gor capture (and a pcap regenerated from it) carries planted secrets of every kind the audit found
leaking; it is replayed through pytester against a real server on 127.0.0.1 that answers differently
from the recording (so failure diffs are printed), with --junitxml, --replay-report and -rA. None of the
planted values may then appear in the terminal output, the JUnit XML, the pytest cache (node ids), the
evidence files or the output of `python -m pytest_replay redact`.
"""

from __future__ import annotations

import base64
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import free_port, serving

from pytest_replay.capture import load
from pytest_replay.capture.gor import SEPARATOR
from pytest_replay.capture.writer import write_pcap
from pytest_replay.http.message import Exchange, Request, Response, Source
from pytest_replay.http.normalize import path_template
from pytest_replay.http.sensitive import words
from pytest_replay.policy.redact import Redactor, is_masked

T0 = 1_700_000_000_000_000_000

# -- planted secrets --------------------------------------------------------------------------------------
# Values found by name are built so that their shape says nothing ("xx-PLANTED-..."): only the name can
# find them. Values found by shape sit under innocent names.
PATH_TOKEN = "Xk9Lp2Qw8Zr4Tn6Vb3Mc7Yd1"  # inspect templates it as {token}
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJib2IiLCJleHAiOjE3MDAwMDAwMDB9."
       "c2lnbmF0dXJlLXBsYW50ZWQtMTIzNDU2")
JSESSIONID = "js-PLANTED-sess-77"
RESET_CODE = "771903"  # a short reset code in a path: only where it sits says what it is
QUERY = {"sessionToken": "st-PLANTED-qs-1", "authToken": "at-PLANTED-qs-2", "PHPSESSID": "php-PLANTED-qs-3"}
REF = "Zq7Wm2Xn9Vb4Lk8Jh3Gf6Ds1"  # a high-entropy value under an innocent name
AUTHENTICATION = "authn-PLANTED-hdr-4"
SESSION_HEADER = "xst-PLANTED-hdr-5"
REQUEST_JSON = {"newPassword": "np-PLANTED-6", "privateKey": "pk-PLANTED-7", "secretKey": "sk-PLANTED-8"}
FORM = {"newPassword": "form-PLANTED-np-9", "passwd": "form-PLANTED-pw-10"}
MULTIPART = {"password": "mp-PLANTED-pw-11", "apiKey": "mp-PLANTED-key-12"}
RESPONSE_JSON = {"sessionToken": "st-PLANTED-resp-13", "privateKey": "pk-PLANTED-resp-14",
                 "authToken": "at-PLANTED-resp-15", "credential": "cr-PLANTED-resp-16"}
SHAPES = {
    "github": "ghp_PLANTEDghTokenAbCdEfGhIjKlMnOpQrStUv12",
    "aws": "AKIAPLANTED0EXAMPLE1",
    "slack": "xoxb-1234567890-PLANTED-slackToken",
    "stripe": "sk_live_PLANTEDstripeKey0123456789",
    "jwt": JWT,
}
PEM_BODY = "MIIEowIBAAKCAQEAplantedPEMbodyAbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----"
XML_SECRETS = {"password": "xml-PLANTED-pw-17", "apiKey": "xml-PLANTED-key-18", "attr": "xml-PLANTED-attr-19"}
ENV_SECRETS = {"AWS_SECRET_ACCESS_KEY": "env-PLANTED-aws-20", "DB_PASSWORD": "yaml-PLANTED-db-21",
               "API_TOKEN": "env-PLANTED-tok-22"}
SET_COOKIE = "sc-PLANTED-phpsess-23"
URL_PASSWORD = "url-PLANTED-pw-24"
EMAIL = "bob.replay@example.com"
PHONE = "+1 415 555 0199"

BY_NAME = [JSESSIONID, RESET_CODE, *QUERY.values(), AUTHENTICATION, SESSION_HEADER, *REQUEST_JSON.values(),
           *FORM.values(), *MULTIPART.values(), *RESPONSE_JSON.values(), *XML_SECRETS.values(),
           *ENV_SECRETS.values(), SET_COOKIE]
BY_SHAPE = [PATH_TOKEN, REF, *SHAPES.values(), PEM_BODY]
PII = ["bob.replay", "415 555", "4155550199"]  # what a cut-then-masked value would still show
PLANTED = BY_NAME + BY_SHAPE + PII


def forms(secret: str) -> set[str]:
    """The ways a value can be written: as is, URL-encoded, JSON-escaped, base64; and the parts of a
    JWT (each is a secret on its own)."""
    out = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1],
           base64.b64encode(secret.encode()).decode()}
    if secret.count(".") == 2 and secret.startswith("eyJ"):
        out |= {part for part in secret.split(".") if len(part) >= 16}
    return out


def assert_no_secret(text: str | bytes, where: str, planted: list[str] = PLANTED) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for secret in planted:
        for form in forms(secret):
            assert form not in text, f"{secret!r} leaked into {where} as {form!r}"


# -- the capture --------------------------------------------------------------------------------------------
def _json_body(data: dict) -> bytes:
    return json.dumps(data, indent=1).encode()


def _long_note(value: str, pad: int) -> str:
    """A value that a diff cuts in the middle of `value` (values are shown up to 120 characters)."""
    return "x" * pad + " " + value + " and more text after it"


def recorded_bodies() -> dict[str, tuple[str, bytes]]:
    """path -> (content type, recorded response body)."""
    account = {**RESPONSE_JSON, **SHAPES, "pem": PEM, "ref": REF, "note": _long_note(EMAIL, 96),
               "contact": _long_note(PHONE, 103), "n": 1}
    xml = (f'<config>\n  <password>{XML_SECRETS["password"]}</password>\n  <apiKey>{XML_SECRETS["apiKey"]}</apiKey>\n'
           f'  <db user="app" password="{XML_SECRETS["attr"]}"/>\n</config>\n')
    env = (f"AWS_SECRET_ACCESS_KEY={ENV_SECRETS['AWS_SECRET_ACCESS_KEY']}\n"
           f"DB_PASSWORD: {ENV_SECRETS['DB_PASSWORD']}\nexport API_TOKEN=\"{ENV_SECRETS['API_TOKEN']}\"\nmode: 1\n")
    return {"/api/account": ("application/json", _json_body(account)),
            "/api/config.xml": ("application/xml", xml.encode()),
            "/api/settings.env": ("text/plain", env.encode())}


def planted_exchanges() -> list[tuple[bytes, bytes]]:
    """(request bytes, recorded response bytes) carrying every planted secret."""
    bodies = recorded_bodies()

    def ok(path: str, extra: bytes = b"") -> bytes:
        ctype, body = bodies.get(path, ("application/json", b'{"ok": true}'))
        return (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype.encode() + b"\r\n" + extra
                + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    host = b"Host: shop.test\r\n"
    query = "&".join(f"{k}={v}" for k, v in QUERY.items())
    request_json = json.dumps(REQUEST_JSON).encode()
    form = "&".join(f"{k}={quote_plus(v)}" for k, v in FORM.items()).encode()
    boundary = "PLANTEDboundary"
    multipart = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                        for k, v in MULTIPART.items()).encode() + f"--{boundary}--\r\n".encode()
    return [
        (b"GET /api/password-reset/" + PATH_TOKEN.encode() + b"/confirm HTTP/1.1\r\n" + host + b"\r\n", ok("")),
        (b"GET /api/magic/" + JWT.encode() + b" HTTP/1.1\r\n" + host + b"\r\n", ok("")),
        (b"GET /shop/cart;jsessionid=" + JSESSIONID.encode() + b"?page=1 HTTP/1.1\r\n" + host + b"\r\n", ok("")),
        (b"GET /api/password-reset/" + RESET_CODE.encode() + b" HTTP/1.1\r\n" + host + b"\r\n", ok("")),
        (f"GET /api/account?{query}&ref={REF} HTTP/1.1\r\n".encode() + host + b"Authentication: Token "
         + AUTHENTICATION.encode() + b"\r\nX-Session-Token: " + SESSION_HEADER.encode() + b"\r\n\r\n",
         ok("/api/account", b"Set-Cookie: PHPSESSID=" + SET_COOKIE.encode() + b"; Path=/\r\n")),
        (b"GET /api/config.xml HTTP/1.1\r\n" + host + b"\r\n", ok("/api/config.xml")),
        (b"GET /api/settings.env HTTP/1.1\r\n" + host + b"\r\n", ok("/api/settings.env")),
        (b"POST /api/password HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
         % len(request_json) + request_json, ok("")),
        (b"POST /api/form HTTP/1.1\r\n" + host + b"Content-Type: application/x-www-form-urlencoded\r\n"
         b"Content-Length: %d\r\n\r\n" % len(form) + form, ok("")),
        (b"POST /api/upload HTTP/1.1\r\n" + host + f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
         .encode() + b"Content-Length: %d\r\n\r\n" % len(multipart) + multipart, ok("")),
    ]


def write_capture(path: Path) -> Path:
    records = []
    for i, (request, response) in enumerate(planted_exchanges()):
        rid = f"{i + 1:016x}00000000"  # one connection per exchange
        ts = T0 + i * 10_000_000
        records.append(f"1 {rid} {ts} -1\n".encode() + request)
        records.append(f"2 {rid} {ts + 1_000_000} -1\n".encode() + response)
    path.write_bytes(b"".join(record + SEPARATOR for record in records))
    return path


def write_pcap_copy(gor: Path, path: Path) -> Path:
    exchanges, _ = load(str(gor))
    renamed = [Exchange(e.index, e.request, e.response, e.request_ts_ns, e.response_ts_ns,
                        f"10.1.2.{n + 1}:{50000 + n} -> 10.9.9.9:80", e.position, e.source, e.flags)
               for n, e in enumerate(exchanges)]
    write_pcap(renamed, path)
    return path


# -- a real server that answers differently -------------------------------------------------------------------
SERVER = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JSON = {"sessionToken": "st-SERVER-1", "privateKey": "pk-SERVER-2", "authToken": "at-SERVER-3",
        "credential": "cr-SERVER-4", "github": "gh-SERVER-5", "aws": "aws-SERVER-6", "slack": "sl-SERVER-7",
        "stripe": "str-SERVER-8", "jwt": "jwt-SERVER-9", "pem": "pem-SERVER-10", "ref": "ref-SERVER-11",
        "note": "x" * 108 + " carol.server@example.org and more text after it",
        "contact": "x" * 108 + " +1 212 555 0142 and more text after it", "n": 2}
XML = ('<config>\n  <password>xml-SERVER-pw</password>\n  <apiKey>xml-SERVER-key</apiKey>\n'
       '  <db user="app" password="xml-SERVER-attr"/>\n</config>\n')
ENV = 'AWS_SECRET_ACCESS_KEY=env-SERVER-aws\nDB_PASSWORD: yaml-SERVER-db\nexport API_TOKEN="env-SERVER-tok"\nmode: 2\n'


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?")[0]
        if path == "/api/config.xml":
            ctype, body = "application/xml", XML.encode()
        elif path == "/api/settings.env":
            ctype, body = "text/plain", ENV.encode()
        elif path == "/api/account":
            ctype, body = "application/json", json.dumps(JSON, indent=1).encode()
        else:
            ctype, body = "application/json", b'{"ok": false}'
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if path == "/api/account":
            self.send_header("Set-Cookie", "PHPSESSID=server-session-value; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    script = tmp_path_factory.mktemp("server") / "server.py"
    script.write_text(SERVER)
    port = free_port()
    with serving([sys.executable, str(script), str(port)], port, "the test server"):
        yield port


def replay_args(captures: list[Path], port: int, *extra: str) -> list[str]:
    args = [a for c in captures for a in ("--replay", str(c))]
    return [*args, "--replay-target", f"http://127.0.0.1:{port}", "--speed", "0",
            "--replay-allow-write", "POST ^/api/", "--replay-diff", "status,headers,body",
            "--replay-headers", "*", *extra]


def junit_ids(path: Path) -> list[str]:
    return sorted(f"{case.get('classname')}::{case.get('name')}" for case in ET.parse(path).iter("testcase"))


def cache_files(root: Path) -> dict[str, str]:
    cache = root / ".pytest_cache" / "v" / "cache"
    return {name: (cache / name).read_text() for name in ("lastfailed", "nodeids") if (cache / name).exists()}


# -- end to end -------------------------------------------------------------------------------------------------
def test_planted_secrets_show_nowhere(pytester: pytest.Pytester, server: int) -> None:
    gor = write_capture(pytester.path / "planted.gor")
    pcap = write_pcap_copy(gor, pytester.path / "planted.pcap")
    junit = pytester.path / "junit.xml"
    evidence = pytester.path / "evidence"
    result = pytester.runpytest_subprocess(*replay_args([gor, pcap], server, "-rA", "-vv", f"--junitxml={junit}",
                                                        "--replay-report", str(evidence)))
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 10, outcomes  # diffs were printed
    terminal = result.stdout.str() + result.stderr.str()
    assert "REDACTED" in terminal and "body $.authToken" in terminal  # the diffs are there, masked
    assert "REDACTED-EMAIL-" in terminal and "REDACTED-PHONE" in terminal  # masked before being cut
    assert_no_secret(terminal, "the terminal output")
    assert_no_secret(junit.read_text(), "the JUnit XML")
    caches = cache_files(pytester.path)
    assert caches.get("lastfailed") and caches.get("nodeids")
    for name, text in caches.items():
        assert_no_secret(text, f".pytest_cache {name}")
    files = [p for p in evidence.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert_no_secret(path.read_bytes(), f"the evidence file {path.name}")
    # redact: the sanitized copies, and what the command printed
    for capture in (gor, pcap):
        out = pytester.path / f"clean{capture.suffix}"
        run = pytester.run(sys.executable, "-m", "pytest_replay", "redact", str(capture), str(out))
        assert run.ret == 0, run.stderr.str()
        assert_no_secret(out.read_bytes(), f"the redacted {capture.name}")
        assert_no_secret(run.stdout.str() + run.stderr.str(), f"the output of redact {capture.name}")
        before, _ = load(str(capture))
        after, stats = load(str(out))
        assert [e.request.method for e in after] == [e.request.method for e in before] and not stats.warnings
    inspect = pytester.run(sys.executable, "-m", "pytest_replay", "inspect", "--json", str(gor))
    assert_no_secret(inspect.stdout.str(), "inspect --json")


def test_ids_are_stable_across_runs_and_workers(pytester: pytest.Pytester, server: int) -> None:
    gor = write_capture(pytester.path / "planted.gor")
    ids = []
    for n, extra in enumerate([(), (), ("-n", "2")]):
        junit = pytester.path / f"junit{n}.xml"
        pytester.runpytest_subprocess(*replay_args([gor], server, "-q", f"--junitxml={junit}", *extra))
        ids.append(junit_ids(junit))
    assert len(ids[0]) == len(planted_exchanges())
    assert ids[0] == ids[1] == ids[2]
    assert any("REDACTED" in i for i in ids[0])
    assert_no_secret("\n".join(ids[0]), "the test ids")


def test_target_url_password_shows_nowhere(pytester: pytest.Pytester, server: int) -> None:
    gor = write_capture(pytester.path / "planted.gor")
    junit = pytester.path / "junit.xml"
    evidence = pytester.path / "evidence"
    result = pytester.runpytest_subprocess("--replay", str(gor), "--speed", "0", "--replay-target",
                                           f"http://replayer:{URL_PASSWORD}@127.0.0.1:{server}", "-rA",
                                           f"--junitxml={junit}", "--replay-report", str(evidence))
    terminal = result.stdout.str() + result.stderr.str()
    assert "replayer" in terminal  # the target is named, its password is not
    assert_no_secret(terminal, "the terminal output", [URL_PASSWORD])
    for path in [junit, *evidence.rglob("*")]:
        if path.is_file():
            assert_no_secret(path.read_bytes(), path.name, [URL_PASSWORD])


# -- by name -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "sessionToken", "privateKey", "secretKey", "newPassword", "authToken", "PHPSESSID", "jsessionid",
    "JSESSIONID", "ASP.NET_SessionId", "connect.sid", "Authentication", "X-Auth-Token", "X-Session-Token",
    "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "API_TOKEN", "apiKey", "APIKey", "api-key", "x-api-key", "key",
    "client_secret", "csrfmiddlewaretoken", "_csrf", "access_token", "refresh_token", "id_token", "passwd",
    "pwd", "password_confirmation", "passwordConfirm", "session_id", "signature", "X-Hub-Signature-256",
    "sig", "otp", "pin", "reset_code", "code", "verificationCode", "credentials", "private_key_pem",
    "signingKey", "Ocp-Apim-Subscription-Key", "ns:apiKey", "bearer", "jwt",
])
def test_secret_names(name: str) -> None:
    assert Redactor().is_secret_name(name) and Redactor().is_secret_header(name)


@pytest.mark.parametrize("name", [
    "keyboard", "monkey", "author", "authors", "authority", "authorId", "passed", "bypass", "secretary",
    "possession", "sort_key", "sortKey", "publicKey", "primary_key", "key_id", "keyName", "country_code",
    "statusCode", "errorCode", "token_type", "tokenType", "expires_in", "token_expires_in", "session_timeout",
    "password_changed_at", "auth_method", "sessions", "tokens_count", "page", "id", "name", "Content-Type",
    "User-Agent", "WWW-Authenticate", "X-Request-Id", "Accept", "turkey", "hockey",
])
def test_innocent_names(name: str) -> None:
    assert not Redactor().is_secret_name(name) and not Redactor().is_secret_header(name)


# -- by shape ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [*SHAPES.values(), PEM, PATH_TOKEN, REF, "AKIAIOSFODNN7EXAMPLE",
                                   "d8d37b52eaa3137bdfd7fd67a4ffc8a7", "TiU7TKv1IdO6jAfQmdX4AQ",
                                   "glpat-PLANTEDgitlab0123456789", "AIzaSyPLANTED0googleKey_abcdefghijklmno12",
                                   "npm_PLANTED0npmTokenAbCdEfGhIjKlMnOpQrSt12"])
def test_shapes_are_masked_in_any_text(value: str) -> None:
    redactor = Redactor()
    for text in (value, f"see {value}.", f'{{"note": {json.dumps(value)}}}', f"note={quote(value)}&x=1"):
        assert value not in redactor.text(text) and PEM_BODY not in redactor.text(text)
    assert redactor.text(f"x {value} y") == redactor.text(f"z {value} w").replace("z ", "x ").replace(" w", " y")


@pytest.mark.parametrize("text", [
    "52433dd1-60fb-4804-86cc-27c7a7eca242", "2024-01-15T10:44:44Z", "1700000000000000000", "troubleshooting2016",
    "ISO8601Timestamp", "PeterJohansson73", "order-2024-05-summer-sale-ab12cd", "Mozilla/5.0 (X11; Linux x86_64)",
    "internationalization", "GetUserProfileById", "/api/v1/users/42/orders", "REDACTED-1a2b3c4d",
    "REDACTED-EMAIL-1a2b3c4d", "user_profile_2024_v2_final",
])
def test_ordinary_values_are_left_alone(text: str) -> None:
    assert Redactor().text(text) == text and Redactor().target("/a/" + text.replace("/", "_")) == \
        "/a/" + text.replace("/", "_")


def test_url_password_is_masked() -> None:
    redactor = Redactor()
    shown = redactor.text(f"target http://replayer:{URL_PASSWORD}@127.0.0.1:8080/x failed")
    assert URL_PASSWORD not in shown and "http://replayer:REDACTED-" in shown and "@127.0.0.1:8080/x" in shown
    from pytest_replay.http.sensitive import url_without_password
    assert url_without_password(f"https://u:{URL_PASSWORD}@h/") == "https://u:REDACTED@h/"


# -- where values sit ------------------------------------------------------------------------------------------
def test_every_place_a_value_can_sit() -> None:
    redactor = Redactor()
    gone = lambda text, *values: all(v not in text for v in values)  # noqa: E731
    target = redactor.target(f"/api/password-reset/{PATH_TOKEN}/confirm;jsessionid={JSESSIONID}?"
                             f"sessionToken={QUERY['sessionToken']}&ref={REF}&page=2")
    assert gone(target, PATH_TOKEN, JSESSIONID, QUERY["sessionToken"], REF) and "page=2" in target
    assert target.startswith("/api/password-reset/REDACTED-") and "/confirm;jsessionid=REDACTED-" in target
    assert gone(redactor.target(f"/api/password-reset/{RESET_CODE}"), RESET_CODE)
    assert redactor.target("/api/orders/771903") == "/api/orders/771903"  # an id stays an id
    assert gone(redactor.header_value("Authentication", f"Token {AUTHENTICATION}"), AUTHENTICATION)
    assert redactor.header_value("Authentication", f"Token {AUTHENTICATION}").startswith("Token REDACTED-")
    assert gone(redactor._header_text("Location", f"https://shop.test/api/password-reset/{RESET_CODE}", None),
                RESET_CODE)
    bodies = recorded_bodies()
    for path, (ctype, body) in bodies.items():
        assert_no_secret(redactor.body(body, ctype), path, BY_NAME + BY_SHAPE)
    boundary = "b0undary"
    multipart = (f'--{boundary}\r\nContent-Disposition: form-data; name="password"\r\n\r\n{MULTIPART["password"]}\r\n'
                 f'--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n'
                 f'Content-Type: application/octet-stream\r\n\r\n\x00\x01{REF}\r\n--{boundary}--\r\n').encode()
    out = redactor.body(multipart, f"multipart/form-data; boundary={boundary}")
    assert MULTIPART["password"].encode() not in out and REF.encode() in out  # binary files stay as they are
    form = "&".join(f"{k}={quote_plus(v)}" for k, v in FORM.items()).encode()
    assert_no_secret(redactor.body(form, "application/x-www-form-urlencoded"), "form", list(FORM.values()))
    assert_no_secret(redactor.body(json.dumps(REQUEST_JSON).encode(), "application/json"), "json",
                     list(REQUEST_JSON.values()))


def test_a_secret_masks_the_same_everywhere() -> None:
    redactor = Redactor(key=b"k")
    standin = redactor.mask(PATH_TOKEN)
    assert standin in redactor.target(f"/reset/{PATH_TOKEN}")
    assert standin in redactor.header_value("Authorization", f"Bearer {PATH_TOKEN}")
    assert standin in redactor.body(json.dumps({"note": f"token {PATH_TOKEN}"}).encode(), "application/json").decode()
    assert standin in redactor.body(json.dumps({"token": PATH_TOKEN}).encode(), "application/json").decode()
    assert standin in redactor.text(f"TOKEN={PATH_TOKEN}")


def test_test_ids_use_a_fixed_placeholder() -> None:
    from pytest_replay.session.items import item_name

    request = Request.build("GET", f"/api/password-reset/{PATH_TOKEN}/confirm?authToken=x&page=1")
    exchange = Exchange(7, request, None, T0, None, "c", 0, Source("f", 0))
    names = {item_name(exchange, Redactor(key=key)) for key in (b"one", b"two", None)}
    assert names == {"GET /api/password-reset/REDACTED/confirm?authToken=REDACTED&page=1 #7"}


def test_personal_data_is_masked_before_values_are_cut() -> None:
    from pytest_replay.verdicts.diff import compare, render_failure

    def response(note: str) -> Response:
        body = json.dumps({"note": note}).encode()
        return Response.build(200, "OK", ((b"Content-Type", b"application/json"),), body)

    recorded, replayed = response(_long_note(EMAIL, 96)), response(_long_note(PHONE, 103))
    exchange = Exchange(0, Request.build("GET", "/a"), recorded, T0, T0, "c", 0, Source("f", 0))
    verdict = compare(recorded, replayed, exchange=exchange)
    shown = render_failure(exchange, verdict, recorded_latency_ns=None, replayed_latency_ns=None,
                           replayed_status=200)
    assert "REDACTED-EMAIL-" in shown and "REDACTED-PHONE" in shown
    assert_no_secret(shown + repr(verdict), "the diff", PII)


# -- one decision for templates and the masker ----------------------------------------------------------------
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_tokens = st.text(alphabet=_ALNUM, min_size=16, max_size=40).filter(
    lambda v: __import__("pytest_replay.http.sensitive", fromlist=["is_token"]).is_token(v))
_segments = st.one_of(
    st.sampled_from(["api", "v1", "users", "orders", "password-reset", "tokens", "confirm", "reset", "magic",
                     "troubleshooting2016", "cart", "a-b-c", "", "x.json", "771903", "v2"]),
    st.integers(0, 10**12).map(str), _tokens, st.text(alphabet="abcdef0123456789", min_size=12, max_size=40),
    st.builds(lambda a, b: f"{a};jsessionid={b}", st.sampled_from(["cart", "app"]),
              st.text(alphabet=_ALNUM + "-", min_size=1, max_size=12)),
    st.text(alphabet=_ALNUM + "-_.", min_size=1, max_size=30))


class Recording(Redactor):
    """A Redactor that remembers every value it replaced."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.masked: set[str] = set()

    def mask(self, value):
        self.masked.add(value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value)
        return super().mask(value)

    def pii_standin(self, kind, value):
        self.masked.add(value)
        return super().pii_standin(kind, value)


@settings(max_examples=200, deadline=None)
@given(st.lists(_segments, min_size=1, max_size=7))
def test_path_templates_never_show_what_the_masker_hides(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    redactor = Recording()
    masked = redactor.path(path)
    template = path_template(path)
    template_segments = template.split("/")
    for i, (before, after) in enumerate(zip(path.split("/"), masked.split("/"))):
        if before.partition(";")[0] != after.partition(";")[0]:  # the masker hid this segment
            assert template_segments[i].startswith("{"), (path, masked, template)
        elif before != after:  # a path parameter's value: the template keeps its name only
            assert "=" not in template_segments[i], (path, masked, template)


# -- property: redact output holds no value the masker masks --------------------------------------------------
_WORDS_BY_STYLE = {
    "camel": lambda words: words[0] + "".join(w.capitalize() for w in words[1:]),
    "snake": "_".join, "kebab": "-".join, "upper": lambda words: "_".join(words).upper(),
    "title": lambda words: "-".join(w.capitalize() for w in words),
}
_SECRET_WORDS = ["token", "secret", "password", "passwd", "session", "auth", "credential", "signature", "key"]
_PREFIXES = ["", "new", "user", "api", "db", "x", "private", "access", "client"]
_SUFFIXES = {"key": ["", "value", "data"]}


@st.composite
def secret_names(draw) -> str:
    word = draw(st.sampled_from(_SECRET_WORDS))
    words = [w for w in (draw(st.sampled_from(_PREFIXES)), word,
                         draw(st.sampled_from(_SUFFIXES.get(word, ["", "value", "id", "hash"])))) if w]
    if draw(st.booleans()) and words[-1] in ("token", "secret", "password", "passwd", "signature") and len(words) > 1:
        return "".join(words)  # run together: newpassword, authtoken
    return _WORDS_BY_STYLE[draw(st.sampled_from(sorted(_WORDS_BY_STYLE)))](words)


_plain_values = st.text(alphabet=_ALNUM + "-.", min_size=6, max_size=20)
_known_values = st.one_of(
    st.text(alphabet=_ALNUM, min_size=36, max_size=40).map(lambda v: "ghp_" + v),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16, max_size=16).map(lambda v: "AKIA" + v),
    st.text(alphabet=_ALNUM, min_size=12, max_size=30).map(lambda v: "xoxb-1234-" + v),
    st.text(alphabet=_ALNUM, min_size=12, max_size=30).map(lambda v: "sk_live_" + v),
    st.text(alphabet=_ALNUM, min_size=8, max_size=40).map(
        lambda v: f"-----BEGIN PRIVATE KEY-----\nMII{v}\n-----END PRIVATE KEY-----"),
    st.tuples(st.text(alphabet=_ALNUM, min_size=8, max_size=20), st.text(alphabet=_ALNUM, min_size=8, max_size=30))
    .map(lambda p: "eyJ" + p[0] + ".eyJ" + p[1] + ".sig" + p[1][:6]),
)
PLACES = ("header", "query", "path parameter", "json", "form", "xml", "xml attribute", "env", "yaml", "multipart")
SHAPE_PLACES = ("header", "query", "path", "json", "text", "xml")


def _place_by_name(place: str, name: str, value: str, parts: dict) -> None:
    xml_name = name if name[0].isalpha() else "x" + name
    {"header": lambda: parts["headers"].append((name.encode(), value.encode())),
     "query": lambda: parts["query"].append(f"{quote(name)}={quote(value, safe='')}"),
     "path parameter": lambda: parts["params"].append(f"{name}={quote(value, safe='')}"),
     "json": lambda: parts["json"].__setitem__(name, value),
     "form": lambda: parts["form"].append(f"{quote_plus(name)}={quote_plus(value)}"),
     "xml": lambda: parts["xml"].append(f"<{xml_name}>{value}</{xml_name}>"),
     "xml attribute": lambda: parts["xml"].append(f'<item {xml_name}="{value}"/>'),
     "env": lambda: parts["text"].append(f"{'_'.join(words(name)).upper()}={value}"),  # TOKEN_VALUE=...
     "yaml": lambda: parts["text"].append(f"{name}: {value}"),
     "multipart": lambda: parts["multipart"].append((name, value)),
     }[place]()


def _place_by_shape(place: str, value: str, parts: dict) -> None:
    {"header": lambda: parts["headers"].append((b"X-Note", value.replace("\n", "\\n").encode())),
     "query": lambda: parts["query"].append(f"q={quote(value, safe='')}"),
     "path": lambda: parts["path"].append(quote(value, safe="")),
     "json": lambda: parts["json"].__setitem__("note", f"see {value} here"),
     "text": lambda: parts["text"].append(f"the value is {value} here"),
     "xml": lambda: parts["xml"].append(f"<note>{value}</note>"),
     }[place]()


def _build(parts: dict) -> tuple[Exchange, list[Response]]:
    """The request (target, headers, JSON body) and one response per kind of body."""
    target = "/api/" + "/".join(["items", *parts["path"]]) + "".join(";" + p for p in parts["params"])
    target += ("?" + "&".join(parts["query"])) if parts["query"] else ""
    body = json.dumps(parts["json"]).encode()
    request = Request.build("POST", target, ((b"Host", b"shop.test"), *parts["headers"],
                                             (b"Content-Type", b"application/json"),
                                             (b"Content-Length", str(len(body)).encode())), body)
    boundary = "HyPoThEsIsBoundary"
    multipart = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n'
                        for n, v in parts["multipart"]) + f"--{boundary}--\r\n"
    pieces = [("application/x-www-form-urlencoded", "&".join(parts["form"])),
              ("application/xml", "<r>" + "".join(parts["xml"]) + "</r>"), ("text/plain", "\n".join(parts["text"])),
              (f"multipart/form-data; boundary={boundary}", multipart)]
    responses = [Response.build(200, "OK", ((b"Content-Type", ctype.encode()),
                                            (b"Content-Length", str(len(text.encode())).encode())), text.encode())
                 for ctype, text in pieces]
    return Exchange(0, request, responses[0], T0, T0 + 1, "c", 0, Source("f", 0)), responses[1:]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(secret_names(), _plain_values, st.sampled_from(PLACES)), max_size=8),
       st.lists(st.tuples(st.one_of(_tokens, _known_values), st.sampled_from(SHAPE_PLACES)), max_size=5))
def test_redact_output_holds_no_value_the_masker_masks(by_name, by_shape) -> None:
    parts = {k: [] for k in ("headers", "query", "params", "form", "xml", "text", "multipart", "path")}
    parts["json"] = {}
    planted = []
    for i, (name, value, place) in enumerate(by_name):
        value = f"V{i}{value}"  # unique: no planted value is a part of another
        _place_by_name(place, name, value, parts)
        planted.append(value)
    for value, place in by_shape:
        _place_by_shape(place, value, parts)
        planted.append(value.replace("\n", "\\n") if place == "header" else value)
    exchange, more = _build(parts)
    redactor = Recording(key=b"property")
    from io import BytesIO

    from pytest_replay.capture.writer import write_gor

    sink = BytesIO()
    write_gor([redactor.exchange(exchange)], sink)
    output = sink.getvalue() + b"".join(redactor.message(response).raw for response in more)
    text = output.decode("utf-8", "surrogateescape")
    for value in planted:
        for form in {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}:
            assert form not in text, (value, form)
    for value in redactor.masked:
        if len(value) >= 6 and not is_masked(value):
            assert value not in text, value
