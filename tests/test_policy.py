"""Safety policy: request matchers, rewrites, filters and sampling, the write policy and its counts,
the production guard, and mocked writes answered from the recording (PolicyTarget + respx)."""

from __future__ import annotations

import asyncio
import gzip
import json

import httpx
import pytest
import respx
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_replay.http.message import Exchange, Request, Response, Source, split_head
from pytest_replay.policy.filters import SAMPLER_FORMS, RequestFilter, Sampler, fnv1a32, query_param
from pytest_replay.policy.guard import RecordedHosts, check_target, recorded_hosts, target_host_port
from pytest_replay.policy.rewrite import (REWRITE_URL_FORMS, SET_HEADER_FORMS, Rewrites, parse_rewrite_url,
                                          parse_set_header, with_header)
from pytest_replay.http.fields import form_values, query_values
from pytest_replay.policy.rules import (ALLOW_WRITE_FORMS, HEADER_FILTER_FORMS, WRITE_PATTERN_FORMS, HasBody,
                                        HeaderMatch, Host, Labeled, Method, Path, parse_allow_write,
                                        parse_header_filter, parse_write_pattern)
from pytest_replay.policy.writes import (READ_METHODS, WRITE_MODE_FORMS, Decision, WriteCounts, WritePolicy,
                                         WriteRules, parse_write_mode, write_methods)
from pytest_replay.schedule.clock import FakeClock, RealClock
from pytest_replay.schedule.engine import Engine
from pytest_replay.schedule.plan import PlannedRequest, Timing, build_plan
from pytest_replay.schedule.target import CANCELLED, TargetError
from pytest_replay.targets.mock import EXCHANGE_HEADER, NO_RECORDING, PolicyTarget, RecordedWrites
from pytest_replay.targets.raw import RawTarget


def req(method="GET", target="/", headers=((b"Host", b"api.example.com"),), body=b""):
    return Request.build(method, target, tuple(headers), body)


def exchange(index, request, response=None, connection="gor:00", ts=None):
    return Exchange(index, request, response, index * 1_000_000 if ts is None else ts, None, connection, 0,
                    Source("c.gor", 0))


# -- rules -----------------------------------------------------------------------------------------------------
def test_method_rule():
    assert Method({"post", "PUT"}).matches(req("POST"))
    assert Method("PUT").matches(req("put"))
    assert not Method({"POST"}).matches(req("GET"))
    assert Method({"*"}).matches(req("PURGE"))


def test_path_rule_is_searched_in_path_and_query():
    r = req("GET", "/api/items?user=42&page=2")
    assert Path(r"^/api/").matches(r)
    assert Path(r"user=\d+").matches(r)  # the query is part of the target, as GoReplay's --http-allow-url
    assert not Path(r"^/items").matches(r)
    assert not Path(r"/api/items$").matches(r)


def test_host_rule_exact_with_or_without_port_and_regex():
    r = req(headers=((b"Host", b"Sandbox.Example.com:8080"),))
    assert Host("sandbox.example.com").matches(r)
    assert Host("sandbox.example.com:8080").matches(r)
    assert not Host("sandbox.example.com:9090").matches(r)
    assert Host(r".*\.example\.com").matches(r)
    assert not Host(r"example\.com").matches(r)  # a regex matches the whole host
    assert not Host("example.com").matches(req(headers=()))  # no host: no match
    assert Host("other").matches(r, host="other")  # a given host wins over the Host header
    assert Host("[::1]").matches(req(headers=((b"Host", b"[::1]:80"),)))


def test_header_match_first_value_and_missing_header():
    r = req(headers=((b"X-Env", b"staging"), (b"x-env", b"prod")))
    assert HeaderMatch("x-ENV", "^stag").matches(r)
    assert not HeaderMatch("X-Env", "^prod").matches(r)  # GoReplay reads the first value
    assert not HeaderMatch("X-Missing", ".*").matches(r)
    assert not HeaderMatch("X-Empty", "^$").matches(req(headers=((b"X-Empty", b""),)))


def test_rules_compose_with_and_or_not():
    post, put, get = Method("POST"), Method("PUT"), Method("GET")
    api = Path("^/api/")
    assert (post & api).matches(req("POST", "/api/x"))
    assert not (post & api).matches(req("POST", "/web"))
    assert (post | put).matches(req("PUT"))
    assert (~get).matches(req("DELETE")) and not (~get).matches(req("GET"))
    rule = (post | put) & ~Path("/health")
    assert rule.matches(req("PUT", "/a")) and not rule.matches(req("PUT", "/health"))
    assert str(post & api) == "(POST & ^/api/)"
    with pytest.raises(Exception):
        post.names = frozenset()  # frozen values


@pytest.mark.parametrize("text, yes, no", [
    ("POST ^/api/cart/items$", [req("POST", "/api/cart/items")], [req("POST", "/api/cart/items/1"),
                                                                  req("PUT", "/api/cart/items")]),
    ("* ^/api/idempotent/", [req("POST", "/api/idempotent/x"), req("DELETE", "/api/idempotent/")],
     [req("POST", "/api/other")]),
    ("PUT,patch /api/users/.* @sandbox.example.com",
     [req("PATCH", "/api/users/7", ((b"Host", b"sandbox.example.com"),))],
     [req("PATCH", "/api/users/7"), req("POST", "/api/users/7", ((b"Host", b"sandbox.example.com"),))]),
])
def test_parse_allow_write(text, yes, no):
    rule = parse_allow_write(text)
    assert isinstance(rule, Labeled) and str(rule) == text
    assert all(rule.matches(r) for r in yes)
    assert not any(rule.matches(r) for r in no)


@pytest.mark.parametrize("text", ["", "POST", "POST /a /b", "POST /a host", "P@ST /a", "POST [", "POST /a @",
                                  "@host /a", "POST,, /a"])
def test_parse_allow_write_rejects_with_accepted_forms(text):
    with pytest.raises(ValueError) as info:
        parse_allow_write(text)
    assert ALLOW_WRITE_FORMS in str(info.value) and "accepted forms" in str(info.value)


def test_parse_header_filter():
    rule = parse_header_filter("X-Tenant:  ^acme$ ")
    assert rule == HeaderMatch("X-Tenant", "^acme$")
    assert parse_header_filter("Header2:^:$").pattern == "^:$"  # split on the first ':' only, as GoReplay
    for bad in ["X-Tenant ^acme$", ": x", "Bad Name: x", "X: [", "X: \u20ac"]:
        with pytest.raises(ValueError, match="accepted form"):
            parse_header_filter(bad)
    with pytest.raises(ValueError) as info:
        parse_header_filter("nocolon")
    assert HEADER_FILTER_FORMS in str(info.value)


# -- rewrites --------------------------------------------------------------------------------------------------
def test_parse_set_header():
    assert parse_set_header("X-Replay:  yes please ") == (b"X-Replay", b"yes please")
    assert parse_set_header("X-Empty:") == (b"X-Empty", b"")
    for bad in ["X-Replay yes", ": v", "Bad Name: v", "Content-Length: 3", "transfer-encoding: chunked"]:
        with pytest.raises(ValueError) as info:
            parse_set_header(bad)
        assert SET_HEADER_FORMS in str(info.value)


def test_parse_rewrite_url_splits_on_first_colon_and_accepts_both_group_syntaxes():
    rw = parse_rewrite_url(r"^/v1/(\w+):/v2/\1")
    assert rw.rewrite("/v1/users?x=1") == "/v2/users?x=1"
    assert parse_rewrite_url("^/v1/(\\w+):/v2/$1").rewrite("/v1/users") == "/v2/users"
    assert parse_rewrite_url("^/v1/(?P<n>\\w+):/v2/${n}").rewrite("/v1/users") == "/v2/users"
    assert parse_rewrite_url("/a:/b:c").rewrite("/a") == "/b:c"  # everything after the first ':' replaces
    assert parse_rewrite_url("^/old:/new").rewrite("/other") is None
    assert parse_rewrite_url("o:0").rewrite("/foo/boo") == "/f00/b00"  # every match, as Go's ReplaceAll


@pytest.mark.parametrize("text", ["no-colon", ":/x", "[:/x", r"^/a:/b/\1", r"^/(a):/\q", "^/a:/b c"])
def test_parse_rewrite_url_rejects_with_accepted_forms(text):
    with pytest.raises(ValueError) as info:
        parse_rewrite_url(text)
    assert REWRITE_URL_FORMS in str(info.value)


def test_rewrites_set_header_in_place_of_the_first_and_drop_the_others():
    head = (b"POST /api/x?q=1 HTTP/1.1\r\nHost: a\r\nX-Tag: one\r\n  folded\r\nContent-Length: 2\r\n"
            b"x-tag: two\r\nAccept: */*\r\n\r\n")
    r = Request("POST", "/api/x?q=1", "1.1", head, b"{}", head + b"{}")
    out = Rewrites(set_headers=["X-TAG: new", "X-Added: 1"]).apply(r)
    assert out.head == (b"POST /api/x?q=1 HTTP/1.1\r\nHost: a\r\nX-Tag: new\r\nContent-Length: 2\r\n"
                        b"Accept: */*\r\nX-Added: 1\r\n\r\n")
    assert out.raw == out.head + b"{}" and out.body == b"{}"
    assert out.header("x-tag") == b"new" and out.header("x-added") == b"1"
    assert (out.method, out.target, out.version) == ("POST", "/api/x?q=1", "1.1")


def test_rewrites_url_changes_request_line_and_target_only():
    r = req("GET", "/v1/items?page=2", ((b"Host", b"h"), (b"Accept", b"*/*")))
    rw = Rewrites(rewrite_url=[r"^/v1/:/v2/", r"^/v2/:/v3/", r"^/v:/never/"])
    out = rw.apply(r)
    assert out.target == "/v2/items?page=2"  # the first matching rewrite applies, as in GoReplay
    assert out.head == b"GET /v2/items?page=2 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"
    assert out.path == "/v2/items"


def test_rewrites_keep_bare_lf_heads_and_chunked_raw_bodies():
    head = b"POST /u HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n"
    raw = head + b"3\nabc\n0\n\n"
    r = Request("POST", "/u", "1.1", head, b"abc", raw, (), True)
    out = Rewrites(set_headers=[(b"X-Dry-Run", b"1")], rewrite_url=["^/u:/w"]).apply(r)
    assert out.head == b"POST /w HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nX-Dry-Run: 1\n\n"
    assert out.raw == out.head + b"3\nabc\n0\n\n"  # the chunked framing as captured
    assert out.lf_only and out.body == b"abc"


def test_rewrites_return_the_same_object_when_nothing_changes():
    r = req("GET", "/a", ((b"Host", b"h"), (b"X-Replay", b"1")))
    assert Rewrites().apply(r) is r
    assert not Rewrites()
    assert Rewrites(set_headers=["X-Replay: 1"]).apply(r) is r
    assert Rewrites(rewrite_url=["^/zzz:/b"]).apply(r) is r


def test_with_header():
    r = req("POST", "/a", ((b"Host", b"h"), (b"x-dry-run", b"0")), b"x")
    out = with_header(r, "X-Dry-Run", "1")
    assert out.head == b"POST /a HTTP/1.1\r\nHost: h\r\nx-dry-run: 1\r\n\r\n"  # captured name case kept
    assert out.header("X-Dry-Run") == b"1" and out.raw == out.head + b"x"
    assert with_header(req(), b"X-New", b"v").headers[-1] == (b"X-New", b"v")


_names = st.sampled_from(["X-A", "x-a", "X-B", "Accept", "Host", "Cookie"])
_values = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=8)


@settings(max_examples=200, deadline=None)
@given(headers=st.lists(st.tuples(_names, _values), max_size=6), sets=st.lists(st.tuples(_names, _values), max_size=3),
       body=st.binary(max_size=8))
def test_rewrites_properties(headers, sets, body):
    r = req("PUT", "/p", [(n.encode(), v.encode()) for n, v in headers], body)
    rw = Rewrites(set_headers=[(n.encode(), v.encode()) for n, v in sets])
    out = rw.apply(r)
    assert rw.apply(out).raw == out.raw  # idempotent
    assert out.raw == out.head + body and out.body == body
    parsed = split_head(out.head)
    assert parsed == out.headers
    final = {}
    for n, v in sets:
        final[n.lower()] = v
    for key, value in final.items():
        assert [v for n, v in parsed if n.decode().lower() == key] == [value.encode()]
    untouched = [(n, v) for n, v in r.headers if n.decode().lower() not in final]
    assert [(n, v) for n, v in parsed if n.decode().lower() not in final] == untouched  # order and case kept


# -- filters and sampling --------------------------------------------------------------------------------------
def test_fnv1a32_matches_reference_vectors():
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968


def test_sampler_parse_forms():
    assert Sampler.parse("header:X-User-Id:10%") == Sampler("header", "X-User-Id", 10)
    assert Sampler.parse("param:user:25%") == Sampler("param", "user", 25)
    assert Sampler.parse(" HEADER : X-User-Id : 1/4 ") == Sampler("header", "X-User-Id", 25)
    assert str(Sampler.parse("param:user:1/3")) == "param:user:33%"


@pytest.mark.parametrize("text", ["X-User-Id:10%", "cookie:sid:10%", "header:X-User-Id", "header::10%",
                                  "header:X:10", "header:X:101%", "header:X:1/0", "param:u:-5%", "header:X:abc%"])
def test_sampler_rejects_with_accepted_forms(text):
    with pytest.raises(ValueError) as info:
        Sampler.parse(text)
    assert SAMPLER_FORMS in str(info.value)


def test_sampler_matches_goreplay_and_is_stable():
    # GoReplay's own test: "Header2:1/2" drops a request with "Header2: 3" (hash too high) and keeps one
    # without the header.
    half = Sampler.parse("header:Header2:1/2")
    assert not half.keep(req(headers=((b"Header2", b"3"),)))
    assert half.keep(req(headers=()))
    assert half.keep(req(headers=((b"Header2", b""),)))  # empty counts as absent, as GoReplay
    ten = Sampler.parse("header:X-User-Id:10%")
    users = [str(i).encode() for i in range(5000)]
    kept = [u for u in users if ten.keep(req(headers=((b"X-User-Id", u),)))]
    assert 400 < len(kept) < 600
    assert kept == [u for u in users if ten.keep(req(headers=((b"x-user-id", u),)))]  # stable, name case-free
    assert all(fnv1a32(u) % 100 < 10 for u in kept)
    assert not Sampler("header", "X", 0).keep(req(headers=((b"X", b"v"),)))
    assert Sampler("header", "X", 100).keep(req(headers=((b"X", b"v"),)))


def test_param_sampler_uses_the_raw_query_value():
    s = Sampler.parse("param:user:50%")
    for value in ["a", "b%20c", "42", ""]:
        expected = fnv1a32(value.encode()) % 100 < 50
        assert s.keep(req("GET", f"/x?page=1&user={value}&user=zzz")) is expected
    assert s.keep(req("GET", "/x?page=1"))  # without the parameter: kept
    assert query_param("/x?a=1&b=2#frag", "b") == "2" and query_param("/x?a", "a") == "" \
        and query_param("/x", "a") is None


def test_request_filter_allow_and_disallow_headers():
    f = RequestFilter(allow_headers=["X-Env: ^staging$", "X-Tenant: ."],
                      disallow_headers=["User-Agent: (?i)bot", "X-Debug: 1"])
    ok = ((b"X-Env", b"staging"), (b"X-Tenant", b"acme"), (b"User-Agent", b"curl"))
    assert f.keep(req(headers=ok))
    assert not f.keep(req(headers=ok[:1]))  # every allow filter must match (AND); missing header fails
    assert not f.keep(req(headers=ok + ((b"X-Debug", b"1"),)))  # any disallow filter drops (OR)
    assert not f.keep(req(headers=ok[:2] + ((b"User-Agent", b"GoogleBot"),)))
    assert RequestFilter(disallow_headers=["X-Debug: 1"]).keep(req(headers=()))  # missing: not disallowed
    assert not RequestFilter() and RequestFilter().keep(req())
    sampled = RequestFilter(sampler="header:X-User-Id:0%")
    assert not sampled.keep(req(headers=((b"X-User-Id", b"1"),))) and sampled.keep(req(headers=()))
    with pytest.raises(ValueError, match="accepted form"):
        RequestFilter(allow_headers=["broken"])


# -- write policy ----------------------------------------------------------------------------------------------
READ, POST, PUT, DELETE = req("GET", "/api/items"), req("POST", "/api/cart/items"), req("PUT", "/api/users/1"), \
    req("DELETE", "/api/users/1")


@pytest.mark.parametrize("mode, write_decision", [("mock", "mock"), ("pass", "send"), ("skip", "skip")])
def test_decide_reads_always_send_writes_by_mode(mode, write_decision):
    policy = WritePolicy(mode=mode)
    for method in ("GET", "HEAD", "OPTIONS"):
        assert policy.decide(req(method)) == "send"
    for r in (POST, PUT, DELETE, req("PATCH")):
        assert policy.decide(r) == write_decision


def test_decide_allowlist_extra_methods_and_inputs():
    policy = WritePolicy(methods=write_methods(["OPTIONS", "lock,unlock"]),
                         allow=("POST ^/api/cart/items$", parse_allow_write("* ^/api/users/ @sandbox")))
    assert policy.methods == {"OPTIONS", "LOCK", "UNLOCK"}
    assert policy.decide(req("OPTIONS")) == "mock"  # declared by the deprecated --replay-write-methods
    assert policy.classify(req("OPTIONS")).reason == "--replay-write-methods 'LOCK,OPTIONS,UNLOCK'"
    assert policy.decide(POST) == "send"
    assert policy.decide(req("POST", "/api/cart/items/2")) == "mock"
    assert policy.decide(PUT) == "mock" and policy.decide(PUT, host="sandbox") == "send"
    assert policy.decide(req("PURGE", "/cache")) == "mock"
    assert policy.decide(exchange(0, POST)) == "send"  # an Exchange
    assert policy.decide(PlannedRequest(0, 0, "l", req("PURGE"), b"")) == "mock"  # a PlannedRequest
    with pytest.raises(ValueError, match="write method"):
        write_methods(["*"])


# -- what is a write: deny by default ------------------------------------------------------------------------
FORM = (b"Content-Type", b"application/x-www-form-urlencoded")


@pytest.mark.parametrize("request_, methods, reason", [
    (req("PURGE", "/cache"), ("PURGE",), "method PURGE"),
    (req("CONNECT", "internal:443"), ("CONNECT",), "method CONNECT"),
    (req("FOO"), ("FOO",), "method FOO"),
    (req("get"), ("get",), "method get"),  # methods are case-sensitive: 'get' is not GET
    (req("POST", "/grpc.Svc/Call"), ("POST",), "method POST"),  # gRPC
    (req(headers=((b"x-http-method-override", b" delete "),)), ("DELETE",), "X-HTTP-Method-Override: DELETE"),
    (req(headers=((b"X-HTTP-Method", b"PUT"),)), ("PUT",), "X-HTTP-Method: PUT"),
    (req(headers=((b"X-Method-Override", b"patch"),)), ("PATCH",), "X-Method-Override: PATCH"),
    (req(headers=((b"X-Method-Override", b"GET"), (b"X-Method-Override", b"MOVE"))), ("MOVE",),
     "X-Method-Override: MOVE"),  # every value counts
    (req("GET", "/a?x=1&_method=DELETE"), ("DELETE",), "query _method=DELETE"),
    (req("HEAD", "/a?_method=%44ELETE"), ("DELETE",), "query _method=DELETE"),  # percent-decoded
    (req("POST", "/a", (FORM,), b"a=1&_method=DELETE"), ("POST", "DELETE"), "method POST; form field _method=DELETE"),
    (req("GET", "/a", (FORM,), b"_method=put"), ("PUT",), "form field _method=PUT"),
    (req("POST", "/a", ((b"Content-Type", b"multipart/form-data; boundary=XyZ"),),
         b'--XyZ\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--XyZ--\r\n'),
     ("POST", "DELETE"), "method POST; form field _method=DELETE"),
    (req("POST", "/a", ((b"Content-Type", b"application/json"),), b'{"_method": "PATCH"}'), ("POST", "PATCH"),
     "method POST; form field _method=PATCH"),
])
def test_classify_writes_and_why(request_, methods, reason):
    why = WriteRules().classify(request_)
    assert why.write and why.methods == methods and why.reason == reason


@pytest.mark.parametrize("request_", [
    req("GET"), req("HEAD"), req("OPTIONS"),
    req(headers=((b"X-HTTP-Method-Override", b"GET"),)),  # an override naming a read
    req(headers=((b"X-HTTP-Method-Override", b""),)),  # naming nothing
    req("GET", "/a?_method=get&method=DELETE"),
    req("GET", "/a?x=_method"),  # not the parameter
    req("GET", "/a", ((b"Content-Type", b"text/plain"),), b""),
    req("GET", "/a", headers=((b"X-Custom-Method-Override", b"DELETE"),)),  # not one of the three names
])
def test_classify_reads(request_):
    why = WriteRules().classify(request_)
    assert not why.write and why.reason == "" and why.flagged == ""
    assert READ_METHODS == {"GET", "HEAD", "OPTIONS"}


_NAMES = st.sampled_from(["X-HTTP-Method-Override", "x-http-method", "X-METHOD-OVERRIDE", "X-Other", "Method"])
_VALUES = st.sampled_from(["DELETE", "get", "", " Put ", "GET", "FOO", "method"])


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["GET", "HEAD", "OPTIONS", "POST", "get", "PURGE"]),
       headers=st.lists(st.tuples(_NAMES.map(str.encode), _VALUES.map(str.encode)), max_size=3),
       query=st.sampled_from(["", "?_method=DELETE", "?_METHOD=DELETE", "?x=1&_method=get", "?method=PUT"]),
       body=st.sampled_from([b"", b"_method=DELETE", b"x=1", b'{"_method": "PUT"}']),
       content_type=st.sampled_from([None, b"application/x-www-form-urlencoded", b"application/json"]))
def test_classify_fast_path_agrees_with_the_reference(method, headers, query, body, content_type):
    """The hint (skip the override sources when the head never says "method" and there is no body)
    changes nothing: the reference path looks at every source of every request."""
    headers = headers + ([(b"Content-Type", content_type)] if content_type else [])
    request = req(method, "/a" + query, headers, body)
    assert WriteRules().classify(request) == WriteRules(hint=lambda head: True).classify(request)


def test_reads_with_a_body_are_flagged_and_sent():
    policy = WritePolicy()
    for method in ("GET", "HEAD"):
        decision = policy.decision(req(method, "/search", body=b'{"q": 1}'))
        assert decision == Decision("send", decision.why) and decision.why.flagged == f"{method} with a body"
        assert not decision.why.write and decision.column == "flagged"
    assert policy.decision(req("OPTIONS", body=b"x")).column is None  # OPTIONS may carry content
    assert policy.decision(req("GET")).column is None
    assert policy.decision(req("GET", "/a", (FORM,), b"_method=DELETE")).column == "mocked"  # a write first
    assert HasBody().matches(req(body=b"x")) and not HasBody().matches(req())


def test_declared_write_patterns():
    rules = WriteRules.declaring(["GET ^/api/delete", parse_write_pattern("* /purge$ @cdn")])
    why = rules.classify(req("GET", "/api/delete/7"))
    assert why.write and why.methods == ("GET",) and why.reason == "--replay-write-pattern 'GET ^/api/delete'"
    assert rules.classify(req("HEAD", "/x/purge", ((b"Host", b"cdn"),))).methods == ("HEAD",)
    assert not rules.classify(req("GET", "/api/items")).write
    assert not WriteRules().classify(req("GET", "/api/delete/7")).write
    policy = WritePolicy(rules=rules, allow=("GET ^/api/delete/ok",))
    assert policy.decide(req("GET", "/api/delete/7")) == "mock"
    assert policy.decide(req("GET", "/api/delete/ok")) == "send"


@pytest.mark.parametrize("text", ["GET", "GET ^/x @", "GET [unclosed", "G?T ^/x", "GET ^/x extra", "@h ^/x"])
def test_parse_write_pattern_errors_name_the_accepted_forms(text):
    with pytest.raises(ValueError) as info:
        parse_write_pattern(text)
    assert WRITE_PATTERN_FORMS in str(info.value) and text in str(info.value)


def test_allowlist_must_name_every_write_method_a_request_means():
    override = req("GET", "/api/items/1", ((b"X-HTTP-Method-Override", b"DELETE"),))
    form = req("POST", "/api/items/1", (FORM,), b"_method=DELETE")
    assert WritePolicy(allow=("DELETE ^/api/items/",)).decide(override) == "send"
    assert WritePolicy(allow=("GET ^/api/items/",)).decide(override) == "mock"
    assert WritePolicy(allow=("POST ^/api/items/",)).decide(form) == "mock"
    assert WritePolicy(allow=("POST,DELETE ^/api/items/",)).decide(form) == "send"
    assert WritePolicy(allow=("POST ^/api/items/", "DELETE ^/api/")).decide(form) == "send"
    assert WritePolicy(allow=("* ^/api/items/",)).decide(form) == "send"
    assert WritePolicy(allow=("GET ^/api/items/",)).unused_allow_patterns([exchange(0, override)]) == \
        ["GET ^/api/items/"]


def test_fields_of_queries_and_bodies():
    assert query_values("/a?_method=DELETE&_method=&b=1#_method=PUT", "_method") == ["DELETE", ""]
    assert query_values("/a", "_method") == [] and query_values("/_method", "_method") == []
    assert form_values(b"application/x-www-form-urlencoded; charset=utf-8", b"_method=PUT&x=1", "_method") == ["PUT"]
    assert form_values(None, b"_method=PUT", "_method") == []  # no Content-Type: not a form
    assert form_values(b"application/json", b"[1, {\"_method\": \"PUT\"}]", "_method") == []
    assert form_values(b"application/json", b"{bad _method", "_method") == []
    multipart = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="_method"\r\n\r\nxx\r\n'
                 b'--b\r\ncontent-disposition: form-data; name=_method\r\n\r\nPATCH\r\n--b--\r\n')
    assert form_values(b'multipart/form-data; boundary="b"', multipart, "_method") == ["PATCH"]
    assert form_values(b"multipart/form-data", multipart, "_method") == []  # no boundary


def test_parse_write_mode():
    assert parse_write_mode(" Pass ") == "pass"
    with pytest.raises(ValueError) as info:
        parse_write_mode("dry")
    assert WRITE_MODE_FORMS in str(info.value)
    with pytest.raises(ValueError, match="accepted forms"):
        WritePolicy(mode="yolo")
    with pytest.raises(ValueError, match="accepted forms"):
        WritePolicy(allow=("POST",))


def test_unused_allow_patterns():
    policy = WritePolicy(allow=("POST ^/api/cart/", "DELETE ^/api/users/", "PUT ^/nowhere", "* ^/api/items"))
    capture = [exchange(0, READ), exchange(1, POST), exchange(2, DELETE)]
    # '* ^/api/items' matches only a read: no write uses it
    assert policy.unused_allow_patterns(capture) == ["PUT ^/nowhere", "* ^/api/items"]
    assert WritePolicy().unused_allow_patterns(capture) == []


def test_mark_adds_the_dry_run_header_to_passed_writes_only():
    policy = WritePolicy(allow=("POST ^/api/cart/",), dry_run_header=parse_set_header("X-Dry-Run: 1"))
    assert policy.mark(POST).header("x-dry-run") == b"1"
    assert policy.mark(PUT) is PUT  # mocked: never reaches the target
    assert policy.mark(READ) is READ
    assert WritePolicy(mode="pass", dry_run_header=(b"X-Dry-Run", b"1")).mark(PUT).header("X-Dry-Run") == b"1"
    assert WritePolicy(mode="pass").mark(PUT) is PUT


def test_write_counts_by_endpoint_merge_and_plain_data():
    a = WriteCounts()
    a.add(req("POST", "/api/users/1/orders?x=1"), "mock")
    a.add(req("POST", "/api/users/2/orders"), "mock")
    a.add(PUT, "send")
    a.add(exchange(0, DELETE), "skip")
    assert a.to_dict() == {
        "DELETE /api/users/{id}": {"mocked": 0, "passed": 0, "skipped": 1, "flagged": 0},
        "POST /api/users/{id}/orders": {"mocked": 2, "passed": 0, "skipped": 0, "flagged": 0},
        "PUT /api/users/{id}": {"mocked": 0, "passed": 1, "skipped": 0, "flagged": 0},
    }
    b = WriteCounts(json.loads(json.dumps(a.to_dict())))  # crosses a worker boundary as JSON
    assert b == a
    b.merge(a).merge({"PURGE /cache": {"passed": 3}})
    assert b.totals() == {"mocked": 4, "passed": 5, "skipped": 2, "flagged": 0}
    assert b.rows()[0] == ("POST /api/users/{id}/orders", 4, 0, 0, 0)
    assert b.rows()[1] == ("PURGE /cache", 0, 3, 0, 0)
    b.add(req("GET", "/search", body=b"{}"), "flagged")
    assert b.to_dict()["GET /search"] == {"mocked": 0, "passed": 0, "skipped": 0, "flagged": 1}
    with pytest.raises(ValueError, match="unknown write outcome"):
        a.add(POST, "dropped")


# -- production guard ------------------------------------------------------------------------------------------
def test_recorded_hosts_from_host_headers_and_pcap_connections():
    capture = [
        exchange(0, req(headers=((b"Host", b"API.Example.com"),))),
        exchange(1, req(headers=((b"Host", b"api.example.com:8080"),))),
        exchange(2, req(headers=((b"Host", b"[2001:DB8::1]:8443"),))),
        exchange(3, req(headers=()), connection="10.0.0.1:51534 -> 10.0.0.2:80"),
        exchange(4, req(headers=()), connection="10.0.0.1:51534 -> 10.0.0.2:80 #2"),
        exchange(5, req(headers=()), connection="[::1]:5 -> [2001:db8:0::1]:80"),
        exchange(6, req(headers=((b"Host", b"bad host/x"),)), connection="gor:1f90c1a2b3c4d5e6"),
    ]
    hosts = recorded_hosts(capture)
    assert set(hosts) == {"api.example.com:80", "api.example.com:443", "api.example.com:8080",
                          "[2001:db8::1]:8443", "10.0.0.2:80", "[2001:db8::1]:80"}
    assert hosts.by_header["api.example.com:80"] == 1
    assert hosts.by_address == {"10.0.0.2:80": 2, "[2001:db8::1]:80": 1}
    assert "10.0.0.2:80" in hosts and len(hosts) == 6


def test_check_target_refuses_the_recorded_host():
    capture = [exchange(i, req(headers=((b"Host", b"api.example.com"),))) for i in range(1204)]
    hosts = recorded_hosts(capture)
    assert check_target("http://api.example.com", hosts) == (
        "refusing to replay against http://api.example.com: the capture was recorded from this host (Host header "
        "of 1,204 requests); pass --replay-force-production if this is really intended")
    assert check_target("https://API.example.com/", hosts) is not None  # no port in Host: 443 too
    assert check_target("http://api.example.com:80", hosts) is not None
    assert check_target("http://api.example.com:8080", hosts) is None
    assert check_target("http://staging.example.com", hosts) is None
    assert check_target("asgi:app:app", hosts) is None and check_target("demo", hosts) is None


def test_check_target_loopback_is_not_exempt_but_another_port_is_fine():
    capture = [exchange(0, req(headers=((b"Host", b"127.0.0.1:8000"),)), connection="127.0.0.1:40000 -> "
                        "127.0.0.1:8000"), exchange(1, req(headers=()), connection="[::1]:4 -> [::1]:9000")]
    hosts = recorded_hosts(capture)
    message = check_target("http://127.0.0.1:8000", hosts)
    assert "recorded from this host (Host header of 1 request, server address of 1 connection)" in message
    assert check_target("http://127.0.0.1:8001", hosts) is None
    assert check_target("http://[0:0::1]:9000", hosts) is not None
    assert check_target("http://127.0.0.1:8000", {"127.0.0.1:8000"}) is not None  # any set of strings
    assert target_host_port("https://[::1]") == "[::1]:443" and target_host_port("ftp://x") is None
    assert not RecordedHosts()


# -- mocked writes and PolicyTarget ----------------------------------------------------------------------------
class RecordingTarget:
    """A fake network target: records what it was asked to send, answers 200 with the key."""

    name = "fake"

    def __init__(self):
        self.sent: list[PlannedRequest] = []
        self.started = self.closed = False
        self.closed_lanes: list[str] = []

    def wire(self, request):
        return b"WIRE " + request.raw

    async def start(self):
        self.started = True

    async def send(self, planned, clock):
        self.sent.append(planned)
        now = clock.now_ns()
        return Response.build(200, "OK", body=f"live {planned.key}".encode()), now, now, now

    def close_lane(self, lane):
        self.closed_lanes.append(lane)

    async def close(self):
        self.closed = True


JSON = (b"Content-Type", b"application/json")
GZ_BODY = gzip.compress(b'{"ok": true}')


def capture():
    """Reads, two identical writes with different recorded answers, an allowlisted write, a write recorded
    without a response, and a gzip-encoded recorded answer."""
    same = req("POST", "/api/cart/items", ((b"Host", b"shop"), JSON), b'{"sku": 1}')
    return [
        exchange(0, req("GET", "/api/items", ((b"Host", b"shop"),))),
        exchange(1, same, Response.build(201, "Created", (JSON, (b"X-Cart", b"a"), (b"Content-Length", b"9")),
                                         b'{"n": 1}\n')),
        exchange(2, same, Response.build(409, "Conflict", (JSON, (b"x-cart", b"b")), b'{"n": 2}')),
        exchange(3, req("PUT", "/api/idempotent/7", ((b"Host", b"shop"),), b"x"),
                 Response.build(204, "No Content")),
        exchange(4, req("DELETE", "/api/users/9", ((b"Host", b"shop"),))),
        exchange(5, req("PATCH", "/api/users/9", ((b"Host", b"shop"),), b"{}"),
                 Response.build(200, "OK", ((b"Content-Encoding", b"gzip"), (b"Content-Length",
                                                                            str(len(GZ_BODY)).encode())), GZ_BODY)),
        exchange(6, req("GET", "/api/items/9", ((b"Host", b"shop"),))),
    ]


def replay(policy, exchanges, clock=None):
    """What the session does: skip writes left out, dry-run header on passed writes, plan, run."""
    inner = RecordingTarget()
    counts = WriteCounts()
    kept = []
    for e in exchanges:
        decision = policy.decide(e)
        if decision == "skip":
            counts.add(e, "skip")
            continue
        kept.append(Exchange(e.index, policy.mark(e.request), e.response, e.request_ts_ns, e.response_ts_ns,
                             e.connection, e.position, e.source))
    target = PolicyTarget(inner, policy, RecordedWrites.from_exchanges(exchanges, policy.is_write), counts=counts)
    plan = build_plan(kept, Timing(speed=0), wire=target.wire)
    engine = Engine(plan, target, clock=clock or FakeClock(), timeout_s=5)
    observations = {o.key: o for o in asyncio.run(engine.run())}
    return inner, target, observations, plan


def test_policy_target_end_to_end_mock_mode():
    exchanges = capture()
    policy = WritePolicy(allow=("PUT ^/api/idempotent/",), dry_run_header=(b"X-Dry-Run", b"1"))
    inner, target, obs, plan = replay(policy, exchanges)
    assert sorted(p.key for p in inner.sent) == [0, 3, 6]  # reads and the allowlisted write only
    assert inner.started and inner.closed
    passed = next(p for p in inner.sent if p.key == 3)
    assert passed.request.header("X-Dry-Run") == b"1" and b"X-Dry-Run: 1" in passed.wire
    assert passed.wire.startswith(b"WIRE ")  # the inner target's wire bytes are planned
    assert all(p.request.header("X-Dry-Run") is None for p in inner.sent if p.key != 3)
    assert all(o.ok for o in obs.values()) and obs[0].response.body == b"live 0"
    for key in (1, 2, 5):  # exactly the recorded answer, per exchange even for identical requests
        recorded, got = exchanges[key].response, obs[key].response
        assert (got.status, got.reason, got.headers, got.body) == \
            (recorded.status, recorded.reason, recorded.headers, recorded.body)
    assert obs[1].response.header("X-Cart") == b"a" and obs[2].response.header("x-cart") == b"b"
    assert obs[5].response.body == GZ_BODY  # raw, not decoded
    missing = obs[4].response
    assert missing.status == 502 and json.loads(missing.body)["error"] == NO_RECORDING
    assert obs[1].sent_ns <= obs[1].first_byte_ns <= obs[1].done_ns
    assert target.counts.to_dict() == {
        "DELETE /api/users/{id}": {"mocked": 1, "passed": 0, "skipped": 0, "flagged": 0},
        "PATCH /api/users/{id}": {"mocked": 1, "passed": 0, "skipped": 0, "flagged": 0},
        "POST /api/cart/items": {"mocked": 2, "passed": 0, "skipped": 0, "flagged": 0},
        "PUT /api/idempotent/{id}": {"mocked": 0, "passed": 1, "skipped": 0, "flagged": 0},
    }
    assert target.decisions[3] == Decision("send", policy.classify(exchanges[3]))  # kept per exchange
    assert target.recorded.answered == 4 and not target.recorded.router.calls  # respx calls not kept


def test_policy_target_skip_and_pass_modes():
    exchanges = capture()
    inner, target, obs, plan = replay(WritePolicy(mode="skip"), exchanges)
    assert sorted(obs) == [0, 6] and sorted(p.key for p in inner.sent) == [0, 6]
    assert target.counts.totals() == {"mocked": 0, "passed": 0, "skipped": 5, "flagged": 0}
    inner, target, obs, plan = replay(WritePolicy(mode="pass"), exchanges)
    assert sorted(p.key for p in inner.sent) == list(range(7))
    assert target.counts.totals() == {"mocked": 0, "passed": 5, "skipped": 0, "flagged": 0}


def test_policy_target_with_a_plain_decide_callable_and_a_skip_at_send_time():
    exchanges = capture()
    decisions = {1: "mock", 2: "skip"}
    target = PolicyTarget(RecordingTarget(), lambda planned: decisions.get(planned.key, "send"),
                          RecordedWrites.from_exchanges(exchanges))

    async def main():
        await target.start()
        clock = FakeClock(100)
        ok = await target.send(PlannedRequest(1, 0, "l", exchanges[1].request, b""), clock)
        with pytest.raises(TargetError) as info:
            await target.send(PlannedRequest(2, 0, "l", exchanges[2].request, b""), clock)
        live = await target.send(PlannedRequest(3, 0, "l", exchanges[3].request, b""), clock)
        target.close_lane("l")
        await target.close()
        return ok, info.value, live

    ok, error, live = asyncio.run(main())
    assert ok[0].status == 201 and ok[1:] == (100, 100, 100)
    assert error.kind == CANCELLED and "skips" in error.message
    assert live[0].body == b"live 3" and target.inner.closed_lanes == ["l"]
    assert target.closed_lanes is target.inner.closed_lanes and target.name == "fake"  # delegated
    assert target.counts.totals() == {"mocked": 1, "passed": 1, "skipped": 1, "flagged": 0}


def test_recorded_writes_router_is_a_respx_router():
    recorded = RecordedWrites({7: Response.build(201, "Created", ((b"X-Id", b"7"),), b"made")})
    assert isinstance(recorded.router, respx.MockRouter)
    request = recorded.httpx_request(req("POST", "/a", ((b"Host", b"odd host"), (b"x-replay-exchange", b"99"))), 7)
    assert request.headers.get_list(EXCHANGE_HEADER.decode()) == ["7"]  # a captured one is replaced
    response = recorded.router.handler(request)  # the sync handler works too
    assert response.status_code == 201 and response.headers.raw == [(b"X-Id", b"7")]


# -- the replay's own traffic is never caught by a user's respx mocks ------------------------------------------
@pytest.mark.parametrize("using", ["httpcore", "httpx"])
def test_user_respx_mock_does_not_catch_mocked_writes(using):
    exchanges = capture()
    with respx.mock(assert_all_mocked=True, assert_all_called=False, using=using) as user_mock:
        user_route = user_mock.route().respond(599)
        inner, target, obs, plan = replay(WritePolicy(), exchanges)
        assert not user_route.called
    assert obs[1].response.status == 201 and obs[2].response.status == 409


def test_an_httpx_client_would_be_caught_by_respx_using_httpx():
    """Why PolicyTarget calls the MockTransport directly instead of through an httpx.AsyncClient."""
    recorded = RecordedWrites({1: Response.build(201)})

    async def via_client():
        async with httpx.AsyncClient(transport=httpx.MockTransport(recorded.router.async_handler)) as client:
            return (await client.post("http://x/a", headers={"x-replay-exchange": "1"})).status_code

    with respx.mock(assert_all_mocked=False, using="httpx") as user_mock:
        user_mock.route().respond(599)
        assert asyncio.run(via_client()) == 599  # caught: the user's mock answered instead of the recording


def test_user_respx_mock_does_not_catch_the_raw_target():
    async def main():
        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        raw = RawTarget(f"http://127.0.0.1:{port}")
        target = PolicyTarget(raw, WritePolicy(), RecordedWrites({1: Response.build(201, "Created", (), b"rec")}))
        await target.start()
        try:
            clock = RealClock(precise=False)
            read = req("GET", "/", ((b"Host", b"x"),))
            write = req("POST", "/w", ((b"Host", b"x"),), b"b")
            live = await target.send(PlannedRequest(0, 0, "a", read, target.wire(read)), clock)
            mocked = await target.send(PlannedRequest(1, 0, "b", write, target.wire(write)), clock)
        finally:
            await target.close()
            server.close()
            await server.wait_closed()
        return live[0], mocked[0]

    for using in ("httpcore", "httpx"):
        with respx.mock(assert_all_mocked=True, assert_all_called=False, using=using) as user_mock:
            user_route = user_mock.route().respond(599)
            live, mocked = asyncio.run(main())
            assert not user_route.called
        assert (live.status, live.body) == (200, b"real")
        assert (mocked.status, mocked.body) == (201, b"rec")
