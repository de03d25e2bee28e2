"""gRPC replayed over HTTP/2 and judged per message (targets/h2.py, verdicts/grpc.py, policy/writes.py):
the capture recorded from a grpcio client (fixtures/captures/recorded/grpc_catalog.pcap) replayed to
the grpcio server it was recorded from (v1: passes), to v2 (one field changed: fails naming the
field's path when a descriptor set is given, the message's bytes otherwise) and v3 (a grpc-status
changed); NO_SIDE_EFFECTS methods are reads; gRPC to an in-process app or to a target without HTTP/2
is a per-item error naming why; a bad descriptor set is a usage error."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import FIXTURES, free_port, serving

from pytest_replay.capture import load
from pytest_replay.http.message import Response
from pytest_replay.policy.writes import WritePolicy, WriteRules
from pytest_replay.verdicts.diff import DiffConfig, compare
from pytest_replay.verdicts.grpc import load_descriptors, messages

CAPTURE = FIXTURES / "recorded" / "grpc_catalog.pcap"
TRUTH = FIXTURES / "recorded" / "grpc_catalog.pcap.truth.jsonl"
APP = Path(__file__).resolve().parent / "apps" / "grpc_catalog"
GET = "/shop.v1.Catalog/GetItem"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """protoc's Python modules and the descriptor set of catalog.proto."""
    out = tmp_path_factory.mktemp("grpc_gen")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(APP), f"--python_out={out}",
                    f"--grpc_python_out={out}", f"--descriptor_set_out={out / 'catalog.desc'}", "--include_imports",
                    "catalog.proto"], check=True)
    return out


@contextlib.contextmanager
def grpc_server(version: str, generated: Path) -> Iterator[str]:
    port = free_port()
    with serving([sys.executable, str(APP / "server.py"), str(port), version, str(generated)], port,
                 f"grpc server {version}") as url:
        yield url


def replay(pytester: pytest.Pytester, target: str, *args: str):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--replay", str(CAPTURE), "--replay-target",
                                         target, "--speed", "0", "-q", *args, timeout=300)


def test_capture_holds_the_ground_truth(generated) -> None:
    """Each exchange of the recorded capture is what the client sent and got (truth.jsonl)."""
    sys.path.insert(0, str(generated))
    try:
        import catalog_pb2
        from google.protobuf import json_format
    finally:
        sys.path.remove(str(generated))
    truth = [json.loads(line) for line in TRUTH.read_text().splitlines()]
    exchanges, _ = load(str(CAPTURE))
    assert [e.request.path for e in exchanges] == [t["method"] for t in truth]
    for exchange, expected in zip(exchanges, truth):
        replies, problem = messages(exchange.response)
        assert problem is None
        cls = catalog_pb2.ListItemsRequest if expected["method"].endswith("ListItems") else catalog_pb2.Item
        got = [json_format.MessageToDict(cls.FromString(r) if cls is catalog_pb2.Item else catalog_pb2.Item.FromString(r))
               for r in replies]
        assert got == expected["replies"]
        status = exchange.response.header("grpc-status") or dict(exchange.response.trailers)[b"grpc-status"]
        assert int(status) == expected["status"]


def test_v1_passes_v2_fails_naming_the_field(pytester, generated) -> None:
    """With the descriptor set: GetItem and ListItems are reads (NO_SIDE_EFFECTS) and are sent,
    CreateItem is a write (mocked). v1 passes; v2 changed item 2's price: both exchanges that carry it
    fail, naming $.price_cents (unary) and $[1].price_cents (the second message of the stream)."""
    desc = str(generated / "catalog.desc")
    with grpc_server("v1", generated) as url:
        result = replay(pytester, url, "--replay-proto-descriptors", desc)
    result.assert_outcomes(passed=6, skipped=1)
    result.stdout.fnmatch_lines(["*1 mocked (answered from the recording), 0 sent*"])
    result.stdout.fnmatch_lines(["*HTTP/2 captures over HTTP/2 (h2c with prior knowledge)*"])
    with grpc_server("v2", generated) as url:
        result = replay(pytester, url, "--replay-proto-descriptors", desc)
    result.assert_outcomes(passed=4, failed=2, skipped=1)
    result.stdout.fnmatch_lines(["*POST /shop.v1.Catalog/GetItem HTTP/2*", "*body $.price_cents: 450 -> 499*"])
    result.stdout.fnmatch_lines(["*POST /shop.v1.Catalog/ListItems HTTP/2*", "*body $[[]1].price_cents: 450 -> 499*"])


def test_without_descriptors_messages_are_compared_as_bytes(pytester, generated) -> None:
    """No schema: every gRPC call is a write (mocked) unless allowed; the README's one-line allow sends
    the Get calls, and v2's changed reply fails on the message's bytes."""
    with grpc_server("v2", generated) as url:
        result = replay(pytester, url)
        result.assert_outcomes(skipped=7)
        result = replay(pytester, url, "--replay-allow-write", "POST ^/shop.v1.Catalog/Get")
    result.assert_outcomes(passed=4, failed=1, skipped=2)
    result.stdout.fnmatch_lines(["*body grpc message 1: 30 bytes -> 30 bytes, differing from byte 13*"])


def test_changed_grpc_status_fails(pytester, generated) -> None:
    with grpc_server("v3", generated) as url:
        result = replay(pytester, url, "--replay-proto-descriptors", str(generated / "catalog.desc"))
    result.assert_outcomes(passed=5, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*POST /shop.v1.Catalog/GetItem #2*", "*header grpc-status: 5 -> 0", "*header grpc-message: no item 99 -> (absent)"])


def test_grpc_to_a_target_without_http2_is_an_error_per_item(pytester, generated, tmp_path) -> None:
    """An HTTP/1.1-only server (python http.server): each gRPC call fails saying gRPC needs HTTP/2."""
    port = free_port()
    with serving([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], port, "http.server",
                 cwd=tmp_path, stderr=subprocess.DEVNULL):
        result = replay(pytester, f"http://127.0.0.1:{port}", "--replay-proto-descriptors",
                        str(generated / "catalog.desc"))
    result.assert_outcomes(failed=6, skipped=1)
    result.stdout.fnmatch_lines([f"*refused: gRPC needs HTTP/2 and http://127.0.0.1:{port} does not speak it "
                                 "(the HTTP/2 preface was answered with*"])


def test_grpc_to_an_in_process_app_is_an_error_naming_why(pytester, generated) -> None:
    """In-process apps get the writes too (--replay-writes pass is their default): all seven fail."""
    result = replay(pytester, "demo", "--replay-proto-descriptors", str(generated / "catalog.desc"))
    result.assert_outcomes(failed=7)
    result.stdout.fnmatch_lines(["*error (transport): app-error: gRPC needs HTTP/2; httpx calls in-process apps "
                                 "over HTTP/1.1: serve the app, replay to its URL"])


@pytest.mark.parametrize("content, expected", [
    (None, "cannot read {path}: No such file or directory"),
    (b"\xff\xff\xff", "{path} is not a FileDescriptorSet (expected the output of protoc --descriptor_set_out"),
    (b"", "{path} holds no file descriptor"),
])
def test_bad_descriptor_set_is_a_usage_error(pytester, tmp_path, content, expected) -> None:
    path = tmp_path / "bad.desc"
    if content is not None:
        path.write_bytes(content)
    result = replay(pytester, "demo", "--replay-proto-descriptors", str(path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--replay-proto-descriptors: {expected.format(path=path)}*"])
    assert "Traceback" not in result.stderr.str()


def test_descriptor_missing_imports_is_named(generated, tmp_path) -> None:
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString((generated / "catalog.desc").read_bytes())
    files.file[0].dependency.append("missing/dep.proto")
    path = tmp_path / "noimports.desc"
    path.write_bytes(files.SerializeToString())
    with pytest.raises(ValueError, match=r"catalog.proto' can not be loaded .*--include_imports"):
        load_descriptors(str(path))


def test_no_side_effects_methods_are_reads(generated) -> None:
    schema = load_descriptors(str(generated / "catalog.desc"))
    assert schema.read_paths == {GET, "/shop.v1.Catalog/ListItems"}
    exchanges, _ = load(str(CAPTURE))
    policy = WritePolicy(rules=WriteRules.declaring(reads=schema.read_paths))
    assert [policy.decide(e) for e in exchanges] == ["send"] * 4 + ["mock"] + ["send"] * 2
    # the same path without gRPC's content-type is a plain POST: a write
    plain = exchanges[0].request.build("POST", GET, ((b"content-type", b"application/json"),), b"{}")
    assert policy.decide(plain) == "mock"
    assert [WritePolicy().decide(e) for e in exchanges] == ["mock"] * 7


def _grpc(status: int, *replies: bytes, trailers=True) -> Response:
    body = b"".join(b"\x00" + len(r).to_bytes(4, "big") + r for r in replies)
    headers = ((b"content-type", b"application/grpc"),)
    response = Response.build(200, "OK", headers if trailers else headers + ((b"grpc-status", str(status).encode()),),
                              body)
    return response.__class__(*[getattr(response, f) for f in ("status", "reason", "version", "head", "body", "raw")],
                              ((b"grpc-status", str(status).encode()),) if trailers else (), (), False, None, "h2c")


def test_verdict_units() -> None:
    same = compare(_grpc(0, b"\x08\x01"), _grpc(0, b"\x08\x01"))
    assert same.passed
    status = compare(_grpc(0, b"\x08\x01"), _grpc(5, trailers=False))
    assert [str(d) for d in status.differences] == ["header grpc-status: 0 -> 5", "body grpc messages: 1 messages -> 0 messages"]
    count = compare(_grpc(0, b"a", b"b"), _grpc(0, b"a"), DiffConfig())
    assert not count.passed and count.differences[0].path == "grpc messages"
