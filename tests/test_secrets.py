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
import re
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_replay.capture import load
from pytest_replay.capture.gor import SEPARATOR
from pytest_replay.capture.writer import write_pcap
from pytest_replay.http.message import Exchange, Request, Response, Source
from pytest_replay.http.normalize import path_template
from pytest_replay.policy.redact import DEFAULT, Redactor, is_masked

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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(script), str(port)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the test server did not start")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


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
