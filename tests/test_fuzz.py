"""Seeded mutation fuzz of every committed capture, for CI: no traceback, no hang, bounded memory.

Inputs are mutations of the files under fixtures/captures/ (the real ones included), in six kinds
taken in turn - .gor, .gor.gz, pcap, pcap.gz, pcapng, pcapng.gz - so that however few inputs the
time allows, every kind is exercised. Mutations: bit flips, inserted and deleted bytes,
truncation, a length field (pcap record, pcapng block, EPB, .gor header, Content-Length, chunk
size) overwritten with a huge value, and gzip wrapping, whose compressed bytes may be cut or
flipped in turn.

Each input is read (capture.load, then the inspect summary) by a worker process that limits its
own address space to its size after imports plus MEMORY_BUDGET; the parent gives each input
PER_INPUT_S seconds. A failure is any exception other than CaptureError (which must name the
file), a MemoryError (a length trusted before it was checked), or a hang. The run stops after
COUNT inputs or SECONDS seconds, whichever comes first; input i depends only on (SEED, i), so a
failure is reproduced with ``python tests/test_fuzz.py SEED I OUT`` whatever the machine's speed.
Environment: REPLAY_FUZZ_SEED, REPLAY_FUZZ_COUNT, REPLAY_FUZZ_SECONDS for longer runs.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import select
import struct
import subprocess
import sys
import time
from pathlib import Path
from support import FIXTURES, ROOT

SEED = int(os.environ.get("REPLAY_FUZZ_SEED", "20250611"))
COUNT = int(os.environ.get("REPLAY_FUZZ_COUNT", "5000"))
SECONDS = float(os.environ.get("REPLAY_FUZZ_SECONDS", "30"))
PER_INPUT_S = 10.0  # a whole committed capture reads in well under 0.2 s
MEMORY_BUDGET = 384 << 20  # above the worker's own size: inputs are < 1 MB, a 64 MiB record limit
KINDS = ("gor", "gor.gz", "pcap", "pcap.gz", "pcapng", "pcapng.gz")
HUGE = (0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFF0, 0x80000000, 0x7FFFFFFF, 0x04000001, 0x01000000, 0x00FFFFFF,
        0x00010001, 0)
HUGE_DIGITS = (b"99999999999999999999", b"18446744073709551616", b"9223372036854775808", b"4294967296",
               b"1e400", b"-1")
TOKENS = (b"\r\n", b"\n", b"\r\n\r\n", "\n🐵🙈🙉\n".encode(), b"HTTP/1.1 200 OK\r\n", b"GET / HTTP/1.1\r\n",
          b"Content-Length: 99999999999\r\n", b"Transfer-Encoding: chunked\r\n", b"\x1f\x8b\x08\x00",
          b"\x0a\x0d\x0d\x0a", b"\xd4\xc3\xb2\xa1", b"\x00" * 16, b"\xff" * 16)


# -- the corpus ------------------------------------------------------------------------------------

def _format(data: bytes) -> str | None:
    from pytest_replay.capture import sniff

    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return sniff(data[:256])


def corpus() -> dict[str, list[tuple[str, bytes]]]:
    """Format ("gor", "pcap", "pcapng") -> [(relative path, uncompressed bytes)], sorted."""
    out: dict[str, list[tuple[str, bytes]]] = {"gor": [], "pcap": [], "pcapng": []}
    for path in sorted(FIXTURES.rglob("*")):
        if not path.is_file() or path.suffix in (".json", ".py", ".md"):
            continue
        data = path.read_bytes()
        fmt = _format(data)
        if fmt is not None:
            out[fmt].append((str(path.relative_to(FIXTURES)), gzip.decompress(data) if data[:2] == b"\x1f\x8b"
                             else data))
    return out


# -- length fields ---------------------------------------------------------------------------------

def _pcap_fields(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of the length fields of a classic pcap: snaplen, caplen, wirelen."""
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    fields, at = [(16, endian + "I")], 24
    while at + 16 <= len(data):
        fields += [(at + 8, endian + "I"), (at + 12, endian + "I")]
        at += 16 + struct.unpack_from(endian + "I", data, at + 8)[0]
    return fields


def _pcapng_fields(data: bytes) -> list[tuple[int, str]]:
    """Block lengths (leading and trailing), EPB caplen and wirelen, SHB section length, IDB snaplen."""
    fields, at, endian = [], 0, "<"
    while at + 12 <= len(data):
        if data[at:at + 4] == b"\x0a\x0d\x0d\x0a":
            endian = "<" if data[at + 8:at + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        kind, length = struct.unpack_from(endian + "II", data, at)
        if length < 12 or at + length > len(data):
            break
        fields += [(at + 4, endian + "I"), (at + length - 4, endian + "I")]
        if kind == 6 and length >= 32:
            fields += [(at + 20, endian + "I"), (at + 24, endian + "I")]
        elif kind == 0x0A0D0D0A and length >= 28:
            fields.append((at + 16, endian + "q"))
        elif kind == 1 and length >= 20:
            fields.append((at + 12, endian + "I"))
        at += length
    return fields


_DIGITS = re.compile(rb"(?:^[123] [0-9A-Za-z]+ |Content-Length: ?|\r\n)(-?[0-9a-fA-F]+)(?=\s)", re.M | re.I)


def _text_fields(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of numbers in text: .gor header timestamps, Content-Length values, chunk sizes."""
    return [m.span(1) for m in _DIGITS.finditer(data[:200_000])]


# -- mutations -------------------------------------------------------------------------------------

def _length_field(rng: random.Random, buf: bytearray, fmt: str) -> str:
    binary = _pcap_fields(bytes(buf)) if fmt == "pcap" else _pcapng_fields(bytes(buf)) if fmt == "pcapng" else []
    binary = [(at, form) for at, form in binary if at + struct.calcsize(form) <= len(buf)]
    text = _text_fields(bytes(buf))
    if binary and (not text or rng.random() < 0.7):
        at, form = rng.choice(binary[:3] if rng.random() < 0.3 else binary)  # headers are few: favour them
        value = rng.choice(HUGE)
        if form.endswith("q"):
            value = rng.choice((-2, 1 << 62, 0x7FFFFFFFFFFFFFFF, value))
        struct.pack_into(form, buf, at, value)
        return f"length@{at}={value:#x}"
    if text:
        start, end = rng.choice(text)
        digits = rng.choice(HUGE_DIGITS)
        buf[start:end] = digits if rng.random() < 0.5 else digits[:end - start].ljust(end - start, b"9")
        return f"number@{start}"
    return _bitflip(rng, buf)


def _bitflip(rng: random.Random, buf: bytearray) -> str:
    for _ in range(rng.randint(1, 8)):
        if buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return "bitflip"


def _insert(rng: random.Random, buf: bytearray) -> str:
    at = rng.randint(0, len(buf))
    buf[at:at] = rng.choice(TOKENS) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 64))
    return f"insert@{at}"


def _delete(rng: random.Random, buf: bytearray) -> str:
    at = rng.randrange(len(buf)) if buf else 0
    del buf[at:at + rng.randint(1, 64)]
    return f"delete@{at}"


def _truncate(rng: random.Random, buf: bytearray) -> str:
    at = rng.randrange(len(buf)) if buf else 0
    del buf[at:]
    return f"truncate@{at}"


def _splice(rng: random.Random, buf: bytearray) -> str:
    if len(buf) < 2:
        return "splice-none"
    start = rng.randrange(len(buf))
    piece = bytes(buf[start:start + rng.randint(1, 2048)])
    at = rng.randint(0, len(buf))
    buf[at:at] = piece
    return f"splice@{at}"


OPS = ((_bitflip, 3), (_insert, 2), (_delete, 2), (_truncate, 1), (_splice, 1), (_length_field, 3))


def mutate(seed: int, index: int, sources: dict[str, list[tuple[str, bytes]]]) -> tuple[str, bytes, str]:
    """(kind, input bytes, what was done) of input `index`: depends only on (seed, index)."""
    rng = random.Random(f"{seed}-{index}")
    kind = KINDS[index % len(KINDS)]
    fmt, compressed = kind.split(".")[0], kind.endswith(".gz")
    name, original = rng.choice(sources[fmt])
    buf = bytearray(original)
    done = [name]
    for _ in range(rng.randint(0 if compressed else 1, 4)):
        op = rng.choices([op for op, _ in OPS], [w for _, w in OPS])[0]
        done.append(op(rng, buf, fmt) if op is _length_field else op(rng, buf))
    data = bytes(buf)
    if compressed:
        data = gzip.compress(data, compresslevel=rng.randint(1, 9), mtime=0)
        roll = rng.random()
        if roll < 0.15:
            cut = rng.randrange(len(data))
            data = data[:cut]
            done.append(f"gzip-cut@{cut}")
        elif roll < 0.25:
            flipped = bytearray(data)
            done.append("gzip-" + _bitflip(rng, flipped))
            data = bytes(flipped)
        elif roll < 0.3:
            data += gzip.compress(rng.randbytes(rng.randint(0, 100)))
            done.append("gzip-second-member")
    return kind, data, " ".join(done)


# -- the worker ------------------------------------------------------------------------------------

WORKER = r"""
import json, resource, sys, traceback
from pytest_replay.capture import CaptureError, load
from pytest_replay.capture.summary import render_summary, summary_data

for warm in sys.argv[2:]:  # lazy imports (scapy) happen before the limit is set
    load(warm)
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
limit = size + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
print(json.dumps({"ready": True, "limit_mib": limit >> 20}), flush=True)
for line in sys.stdin:
    path = line.rstrip("\n")
    try:
        exchanges, stats = load(path)
        render_summary(summary_data(stats))
        assert stats.exchanges == len(exchanges), "stats.exchanges disagrees with the exchanges"
        assert [e.index for e in exchanges] == list(range(len(exchanges))), "exchange indexes out of order"
        out = {"ok": True}
    except CaptureError as exc:
        out = {"ok": True} if exc.file == path else {"ok": False, "error": f"CaptureError not naming the file: {exc}"}
    except BaseException as exc:
        frames = traceback.extract_tb(exc.__traceback__)[-4:]
        where = " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(frames))
        out = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]} (at {where})"}
    print(json.dumps(out), flush=True)
    if not out["ok"]:
        break  # a MemoryError or an exception may leave the worker in any state: start afresh
"""


class Worker:
    def __init__(self, warm: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(MEMORY_BUDGET), *warm], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = self.answer(60)
        assert ready and ready.get("ready"), f"the fuzz worker did not start: {ready}"

    def answer(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else {"ok": False, "error": f"the worker died ({self.proc.poll()})"}

    def read(self, path: str, timeout: float = PER_INPUT_S) -> dict:
        self.proc.stdin.write(path + "\n")
        self.proc.stdin.flush()
        started = time.monotonic()
        out = self.answer(timeout)
        if out is None:
            return {"ok": False, "error": f"no answer within {timeout:g} s (a hang)"}
        out["seconds"] = time.monotonic() - started
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()


def run(seed: int, count: int, seconds: float, workdir: Path) -> tuple[int, dict[str, int], list[str]]:
    """(inputs read, inputs per kind, failures)."""
    sources = corpus()
    warm = [str(FIXTURES / sources[fmt][0][0]) for fmt in ("gor", "pcap", "pcapng")]
    worker = Worker(warm)
    deadline = time.monotonic() + seconds
    per_kind = dict.fromkeys(KINDS, 0)
    failures: list[str] = []
    done = 0
    try:
        for index in range(count):
            if time.monotonic() > deadline:
                break
            kind, data, what = mutate(seed, index, sources)
            path = workdir / f"input-{index}.{kind}"
            path.write_bytes(data)
            out = worker.read(str(path))
            done += 1
            per_kind[kind] += 1
            if out["ok"]:
                path.unlink()
            else:
                failures.append(f"input {index} ({kind}: {what}; kept as {path}): {out['error']}")
                worker.stop()
                worker = Worker(warm)
    finally:
        worker.stop()
    return done, per_kind, failures


def test_seeded_mutation_fuzz(tmp_path: Path, record_property) -> None:
    started = time.monotonic()
    done, per_kind, failures = run(SEED, COUNT, SECONDS, tmp_path)
    elapsed = time.monotonic() - started
    record_property("fuzz_inputs", done)
    print(f"fuzz: {done} inputs in {elapsed:.1f} s (seed {SEED}): {per_kind}")
    assert min(per_kind.values()) > 0, f"a kind of input was not exercised: {per_kind}"
    assert not failures, f"{len(failures)} of {done} inputs failed (seed {SEED}):\n" + "\n".join(failures[:20])


def test_mutations_depend_only_on_seed_and_index() -> None:
    sources = corpus()
    assert all(sources[fmt] for fmt in ("gor", "pcap", "pcapng"))
    assert mutate(7, 11, sources) == mutate(7, 11, sources)
    assert [mutate(7, i, sources)[0] for i in range(6)] == list(KINDS)


def test_the_worker_reports_a_hang(tmp_path: Path) -> None:
    """The harness itself: a read that never returns (a FIFO without a writer) is a hang, and the
    next worker takes a CaptureError naming the file as a pass."""
    fifo = tmp_path / "never.pcap"
    os.mkfifo(fifo)
    worker = Worker([])
    try:
        out = worker.read(str(fifo), timeout=1)
        assert out == {"ok": False, "error": "no answer within 1 s (a hang)"}
    finally:
        worker.stop()
    empty = tmp_path / "empty.gor"
    empty.write_bytes(b"")
    worker = Worker([])
    try:
        out = worker.read(str(empty))  # "the file is empty": a CaptureError naming it
        assert out["ok"] and "error" not in out, out
    finally:
        worker.stop()


if __name__ == "__main__":  # python tests/test_fuzz.py SEED INDEX OUT: write input INDEX of SEED to OUT
    sys.path.insert(0, str(ROOT))
    kind, data, what = mutate(int(sys.argv[1]), int(sys.argv[2]), corpus())
    Path(sys.argv[3]).write_bytes(data)
    print(f"{kind}: {what}")
