"""gRPC verdicts: grpc-status (and grpc-message) from the trailers, then each message of the body.

Messages are split by their 5-byte length prefix (compressed ones inflated when grpc-encoding is gzip
or deflate). Without a schema they are compared as bytes (count, then the size of each that differs and
where it starts to differ: a digest would be masked as a secret-looking token). With descriptor sets (`--replay-proto-descriptors`, `protoc --descriptor_set_out`) the
messages of a known method are decoded with the `protobuf` package and become dicts
(json_format.MessageToDict, proto field names, fields at their default included so a value reset to
0 shows as changed rather than removed), then diffed like JSON bodies (diff.py): same paths
(`$.user.name`; `$[1].name` for the second message of a stream), same ignore rules and noise.

`Schema.read_paths` are the methods whose options say `idempotency_level = NO_SIDE_EFFECTS`: the
write policy treats calls to them as reads (session/run.py hands them to policy/writes.py).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..http.h2 import grpc_status, is_grpc
from ..http.message import Response

MAX_DESCRIPTOR_FILE = 64 << 20  # a descriptor set larger than this is not one


@dataclass(frozen=True)
class Schema:
    """The methods of one or more descriptor sets: '/pkg.Service/Method' -> (input, output message
    class, idempotency level name). Built once per run; sans-IO after loading."""

    files: tuple[str, ...]
    methods: dict = field(compare=False, repr=False)

    @property
    def read_paths(self) -> frozenset[str]:
        return frozenset(path for path, (_, _, level) in self.methods.items() if level == "NO_SIDE_EFFECTS")

    def message_class(self, path: str, response: bool):
        entry = self.methods.get(path)
        return None if entry is None else entry[1 if response else 0]

    def merged(self, other: Schema) -> Schema:
        return Schema(self.files + other.files, {**self.methods, **other.methods})


def load_descriptors(path: str) -> Schema:
    """A Schema from a FileDescriptorSet file; ValueError naming the file and what was expected."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
        from google.protobuf.message import DecodeError
    except ImportError:
        raise ValueError("decoding gRPC messages needs the protobuf package: pip install "
                         "'pytest-traffic-replay[grpc]'") from None

    where = Path(path)
    try:
        size = where.stat().st_size
        if size > MAX_DESCRIPTOR_FILE:
            raise ValueError(f"{path}: {size} bytes, more than a descriptor set holds (limit {MAX_DESCRIPTOR_FILE})")
        data = where.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    files = descriptor_pb2.FileDescriptorSet()
    try:
        files.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"{path} is not a FileDescriptorSet (expected the output of protoc "
                         f"--descriptor_set_out=FILE --include_imports): {exc}") from None
    if not files.file:
        raise ValueError(f"{path} holds no file descriptor (expected the output of protoc "
                         f"--descriptor_set_out=FILE --include_imports)")
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        try:
            pool.Add(proto)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: file {proto.name!r} can not be loaded ({exc}); were its imports "
                             f"included (protoc --include_imports)?") from None
    methods = {}
    for proto in files.file:
        try:
            described = pool.FindFileByName(proto.name)
        except KeyError as exc:
            raise ValueError(f"{path}: file {proto.name!r} can not be loaded ({exc}); were its imports "
                             f"included (protoc --include_imports)?") from None
        for service in described.services_by_name.values():
            for method in service.methods:
                level = method.GetOptions().idempotency_level
                name = method.GetOptions().IdempotencyLevel.Name(level)
                methods[f"/{service.full_name}/{method.name}"] = (
                    message_factory.GetMessageClass(method.input_type),
                    message_factory.GetMessageClass(method.output_type), name)
    return Schema((path,), methods)


def combined(schemas) -> Schema | None:
    """One Schema of every --replay-proto-descriptors file (None without any)."""
    out = None
    for schema in schemas:
        out = schema if out is None else out.merged(schema)
    return out


# -- messages -------------------------------------------------------------------------------------------
def messages(response: Response) -> tuple[list[bytes], str | None]:
    """The messages of a gRPC response body, inflated, and what is wrong with the framing (or None)."""
    body = response.body
    coding = (response.header("grpc-encoding") or b"identity").strip().lower()
    out: list[bytes] = []
    pos = 0
    while pos < len(body):
        if len(body) - pos < 5:
            return out, f"{len(body) - pos} bytes left after message {len(out)}"
        compressed, length = body[pos], int.from_bytes(body[pos + 1:pos + 5], "big")
        if pos + 5 + length > len(body):
            return out, f"message {len(out) + 1} claims {length} bytes, {len(body) - pos - 5} left"
        message = bytes(body[pos + 5:pos + 5 + length])
        if compressed:
            try:
                message = _inflate(coding, message)
            except (OSError, EOFError, zlib.error, ValueError) as exc:
                return out, f"message {len(out) + 1} can not be inflated ({coding.decode('latin-1')}): {exc}"
        out.append(message)
        pos += 5 + length
    return out, None


def _inflate(coding: bytes, data: bytes) -> bytes:
    if coding == b"gzip":
        return gzip.decompress(data)
    if coding == b"deflate":
        return zlib.decompress(data)
    raise ValueError("unknown grpc-encoding")


def _status(response: Response) -> tuple[str, str]:
    code, message = grpc_status(response)
    return ("(absent)" if code is None else str(code)), (message or "")


def both_grpc(recorded: Response, replayed: Response) -> bool:
    return is_grpc(recorded.headers) and is_grpc(replayed.headers)


def compare_status(check, recorded: Response, replayed: Response) -> None:
    """grpc-status and grpc-message, as header differences (an ignore rule 'header:grpc-message'
    applies)."""
    (old_code, old_text), (new_code, new_text) = _status(recorded), _status(replayed)
    if old_code != new_code:
        check.add("header", "grpc-status", old_code, new_code, change="changed")
    if old_text != new_text:
        check.unless_ignored("header", "grpc-message", ("header", "grpc-message", old_text or "(absent)",
                                                        new_text or "(absent)"), noise=False, change="changed")


def compare_messages(check, recorded: Response, replayed: Response, schema: Schema | None) -> None:
    """Each message: decoded and diffed like JSON when the schema knows the method, else as bytes."""
    (old, old_problem), (new, new_problem) = messages(recorded), messages(replayed)
    if old_problem or new_problem:
        check.add("body", "grpc framing", old_problem or "framed", new_problem or "framed")
        return
    if old == new:
        return
    cls = schema.message_class(check.path, response=True) if schema is not None else None
    if cls is not None:
        decoded = [_decode(cls, side) for side in (old, new)]
        problems = [p for _, p in decoded if p]
        if not problems:
            a, b = decoded[0][0], decoded[1][0]
            if len(a) == 1 and len(b) == 1:  # a unary reply: paths from the message itself ($.name)
                a, b = a[0], b[0]
            check.json(a, b)
            return
        check.add("body", "grpc message", "decoded", "; ".join(problems))
    if len(old) != len(new):
        check.add("body", "grpc messages", f"{len(old)} messages", f"{len(new)} messages", change="count changed")
    for i, (a, b) in enumerate(zip(old, new)):
        if a != b:
            at = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            check.add("body", f"grpc message {i + 1}", f"{len(a)} bytes", f"{len(b)} bytes, differing from byte {at}",
                      change="bytes changed", where="grpc message")


def _decode(cls, raw: list[bytes]) -> tuple[list[dict], str | None]:
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError

    out = []
    for i, data in enumerate(raw):
        message = cls()
        try:
            message.ParseFromString(data)
        except DecodeError as exc:
            return out, f"message {i + 1} is not a {cls.DESCRIPTOR.full_name}: {exc}"
        out.append(_to_dict(json_format, message))
    return out, None


def _to_dict(json_format, message) -> dict:
    """A message as JSON would carry it, with int64 values as numbers where they fit (protobuf 5.28+;
    older versions quote them as the proto3 JSON mapping says)."""
    options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    try:
        return json_format.MessageToDict(message, unquote_int64_if_possible=True, **options)
    except TypeError:
        return json_format.MessageToDict(message, **options)
