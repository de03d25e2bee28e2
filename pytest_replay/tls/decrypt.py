"""One TCP connection's TLS, decrypted: the handshake read, the keys found by client random, and
each direction's records opened into the plaintext byte stream the HTTP framing reads.

A :class:`TlsConnection` stands between a connection's two TCP streams and their framers: each
:class:`TlsDirection` has the framer's sink interface (feed, gap, close) for the TCP stream, and
feeds the framer the application data it decrypts, stamped with the timestamp, frame and file
offset of the packet where the record carrying it starts (no TCP ACK: the plaintext offsets are
not TCP sequence offsets, so responses pair first-in-first-out).

What cannot be decrypted is reported through `report(code, detail, frame, where)`, never raised:
no key for the client random ("tls"), records that do not authenticate ("tls-failed", with the
frame), streams that are not TLS after all. A single corrupted record mid-stream is a gap in the
plaintext (the framer resynchronises after it) and a warning; a direction whose first records do
not authenticate, or several in a row, fails the connection (wrong key).

ALPN h2 (in the TLS 1.2 ServerHello or the TLS 1.3 EncryptedExtensions): `on_h2` returns the sinks
of the connection's HTTP/2 session (reassembly/flows.py, http/h2.py), which take the plaintext from
the client preface on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..http.message import GAP
from .keylog import KeyLog
from .keys import (SUITES, VERSIONS, DecryptError, Tls12Protection, Tls13Protection, suite_name,
                   tls12_key_block)
from .records import (ALERT, APPLICATION_DATA, CHANGE_CIPHER_SPEC, CLIENT_HELLO, ENCRYPTED_EXTENSIONS, END_OF_EARLY_DATA,
                      FINISHED, HANDSHAKE, HEADER, KEY_UPDATE, SERVER_HELLO, ClientHello, NotTls, ServerHello,
                      handshake_messages, parse_client_hello, parse_encrypted_extensions, parse_server_hello,
                      record_header)

TLS13 = 0x0304
MAX_FAILURES = 3  # records in a row that do not authenticate before the connection is given up
MAX_EARLY_FAILURES = 8  # TLS 1.3 without handshake secrets: handshake records skipped by trial
MAX_EARLY_BYTES = 1 << 20  # 0-RTT records held until the server's EncryptedExtensions say what became of them

# Connection outcomes (CaptureStats.tls counts them)
HANDSHAKE_ONLY, DECRYPTED, NO_KEY, FAILED, UNSUPPORTED, NOT_TLS = (
    "handshake", "decrypted", "no-key", "failed", "unsupported", "not-tls")

Report = Callable[[str, str, "int | None", "int | None"], None]  # (code, detail, frame, file offset)


class TlsConnection:
    """Both directions of one TLS connection; `client` and `server` are the TCP streams' sinks."""

    def __init__(self, keylog: KeyLog | None, client_sink, server_sink, report: Report, warn: Report,
                 on_h2: Callable[[TlsConnection], tuple | None] | None = None) -> None:
        self.keylog = keylog
        self.on_h2 = on_h2  # ALPN h2 chosen: returns (client sink, server sink) for HTTP/2, or None
        self.report = report  # the connection is given up (it stops being read)
        self.warn = warn  # something was lost, reading goes on
        self.client = TlsDirection(self, True, client_sink)
        self.server = TlsDirection(self, False, server_sink)
        self.hello: ClientHello | None = None
        self.server_hello: ServerHello | None = None
        self.status = HANDSHAKE_ONLY
        self.reason = ""
        self.records = 0  # records decrypted
        self.failed_records = 0
        self.early: dict | None = None  # TLS 1.3 0-RTT: what became of the client's early data (for inspect)

    # -- what is known ------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        return VERSIONS.get(self.server_hello.version, "?") if self.server_hello else None

    @property
    def suite(self) -> str | None:
        return suite_name(self.server_hello.suite) if self.server_hello else None

    @property
    def server_name(self) -> str | None:
        return self.hello.server_name if self.hello else None

    @property
    def alpn(self) -> str | None:
        return self.server_hello.alpn if self.server_hello else None

    @property
    def protocol(self) -> str:
        """What inspect calls the connection: TLS+h2, TLS+HTTP/1.1 (decrypted) or TLS undecrypted."""
        if self.status != DECRYPTED:
            return "TLS undecrypted"
        return "TLS+h2" if self.alpn == "h2" else "TLS+HTTP/1.1"

    def describe(self) -> str:
        parts = [self.version or "TLS"]
        if self.suite:
            parts.append(self.suite)
        if self.server_name:
            parts.append(f"SNI {self.server_name}")
        return ", ".join(parts)

    def info(self) -> dict:
        """For inspect and the capture stats (no key material)."""
        return {"protocol": self.protocol, "version": self.version, "cipher_suite": self.suite, "server_name": self.server_name,
                "alpn_offered": list(self.hello.alpn) if self.hello else [], "alpn": self.alpn,
                "decrypted": self.status == DECRYPTED, "status": self.status, "reason": self.reason,
                "records": self.records, "failed_records": self.failed_records, "early_data": self.early}

    # -- events from the directions ------------------------------------------------------------
    def handshake(self, direction: TlsDirection, kind: int, body: bytes, mark: tuple) -> None:
        try:
            if kind == CLIENT_HELLO and direction.from_client:
                hello = parse_client_hello(body)
                # after a HelloRetryRequest the second ClientHello comes with the same random
                self.hello = hello
            elif kind == SERVER_HELLO and not direction.from_client:
                server_hello = parse_server_hello(body)
                if not server_hello.retry:
                    self.server_hello = server_hello
                    self._check_suite(mark)
                    if server_hello.alpn == "h2":
                        self._h2()
        except ValueError as exc:
            self.give_up(FAILED, f"malformed {'Client' if kind == 1 else 'Server'}Hello ({exc})", mark)

    def encrypted_extensions(self, body: bytes, mark: tuple) -> None:
        try:
            alpn, early_accepted = parse_encrypted_extensions(body)
        except ValueError:
            return
        if alpn is not None and self.server_hello is not None:
            self.server_hello.alpn = alpn
            if alpn == "h2":
                self._h2()
        # the 0-RTT records wait for this answer (and for the ALPN sinks); a client that offered early
        # data but whose records come after this answer still sends them: they follow the answer too
        if self.client.held is not None or (self.hello is not None and self.hello.early_data and self.early is None):
            self.client.early_data(early_accepted, mark)

    def _h2(self) -> None:
        """ALPN h2: the plaintext is HTTP/2, not for the HTTP/1.x framers: `on_h2` returns the sinks
        for the two decrypted streams (feed(data, ts_ns, frame, ack, where), gap(), close()); without
        it (a caller that wants the records alone) the plaintext is dropped."""
        sinks = self.on_h2(self) if self.on_h2 is not None else None
        client, server = sinks if sinks is not None else (_Discard(), _Discard())
        self.client.sink, self.server.sink = client, server

    def _check_suite(self, mark: tuple) -> None:
        if self.server_hello.suite not in SUITES:
            self.give_up(UNSUPPORTED, f"{self.describe()}: cipher suite not supported for decryption", mark)
        elif self.server_hello.version < 0x0302:
            self.give_up(UNSUPPORTED, f"{self.describe()}: version not supported for decryption", mark)

    def protections(self, direction: TlsDirection, mark: tuple):
        """(protection now, protection after the handshake) of a direction starting to encrypt,
        or None (the connection is given up: no ServerHello, no key)."""
        if self.status in (NO_KEY, FAILED, UNSUPPORTED, NOT_TLS):
            return None
        if self.hello is None or self.server_hello is None:
            self.give_up(FAILED, "encrypted records before the ClientHello and ServerHello were seen "
                         "(capture started mid-handshake, or TLS 1.3 early data)", mark)
            return None
        secrets = self.keylog.get(self.hello.random) if self.keylog is not None else None
        suite = SUITES[self.server_hello.suite]
        if self.server_hello.version == TLS13:
            side = "CLIENT" if direction.from_client else "SERVER"
            hs = secrets and secrets.get(f"{side}_HANDSHAKE_TRAFFIC_SECRET")
            app = secrets and secrets.get(f"{side}_TRAFFIC_SECRET_0")
            if not hs and not app:
                self._no_key("no TLS 1.3 traffic secrets", mark)
                return None
            app_protection = Tls13Protection(suite, app) if app else None
            if hs:
                direction.tls13_handshake = app_protection is None  # handshake keys only
                return Tls13Protection(suite, hs), app_protection
            direction.trial = MAX_EARLY_FAILURES  # handshake records are skipped, by trial
            if not direction.from_client and self.client.held is not None:
                # its EncryptedExtensions cannot be read: the 0-RTT records are opened if they can be
                self.client.early_data(True, mark, known=False)
            return app_protection, None
        master = secrets and secrets.get("CLIENT_RANDOM")
        if not master:
            self._no_key("no CLIENT_RANDOM line", mark)
            return None
        client, server = tls12_key_block(suite, master, self.hello.random, self.server_hello.random)
        mac, key, iv = client if direction.from_client else server
        return Tls12Protection(suite, mac, key, iv, self.server_hello.etm), None

    def _no_key(self, what: str, mark: tuple) -> None:
        why = "no key log given" if self.keylog is None else f"{what} in the key log"
        self.give_up(NO_KEY, f"{self.describe()}, no key for client random {self.hello.random.hex()} ({why})",
                     mark)

    def decrypted(self) -> None:
        self.records += 1
        if self.status == HANDSHAKE_ONLY:
            self.status = DECRYPTED

    def give_up(self, status: str, reason: str, mark: tuple | None) -> None:
        if self.status in (NO_KEY, FAILED, UNSUPPORTED, NOT_TLS):
            return
        self.status, self.reason = status, reason
        self.client.dead = self.server.dead = True
        frame, where = (mark[2], mark[3]) if mark else (None, None)
        self.report("tls-failed" if status == FAILED else "tls", reason, frame, where)


class _Discard:
    """A sink that drops plaintext nobody reads (HTTP/2 until its parser is wired)."""

    def feed(self, data: bytes, ts_ns: int, frame: int = 0, ack: int | None = None, where: int = 0) -> None:
        pass

    def gap(self, nbytes: int, code: str = GAP, detail: str = "") -> None:
        pass

    def close(self, code: str | None = None, detail: str = "") -> None:
        pass


class TlsDirection:
    """One direction's records: the TCP stream's sink, feeding plaintext to the framer `sink`."""

    def __init__(self, conn: TlsConnection, from_client: bool, sink) -> None:
        self.conn = conn
        self.from_client = from_client
        self.sink = sink
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]
        self.marks: deque[tuple] = deque()  # (stream offset, ts_ns, frame, file offset) per feed
        self.hs = bytearray()  # handshake messages not yet whole
        self.protection = None
        self.after_handshake = None  # TLS 1.3: the application traffic protection, after Finished
        self.trial = 0  # TLS 1.3 without handshake secrets: records that may fail before one opens
        self.tls13_handshake = False  # TLS 1.3 with handshake secrets but no application traffic secret
        self.opened = 0
        self.failures = 0  # records in a row that did not authenticate
        self.dead = False
        self.plain = 0  # plaintext bytes fed to the framer
        self.held: list | None = None  # client 0-RTT records (header, body, mark) waiting for the server's answer
        self.held_bytes = 0
        self.after_early = None  # 0-RTT: the (handshake, application) protections after EndOfEarlyData
        self.early_trial = 0  # and the records to skip by trial then (no handshake keys)
        self.rejected_bytes = 0  # 0-RTT records the server rejected: skipped, counted in conn.early
        self.rejected_frame: int | None = None

    # -- the sink interface of tcp.Stream ---------------------------------------------------
    def feed(self, data: bytes, ts_ns: int, frame: int = 0, ack: int | None = None, where: int = 0) -> None:
        if self.dead:
            return
        self.marks.append((self.base + len(self.buf), ts_ns, frame, where))
        self.buf += data
        self._records()

    def gap(self, nbytes: int, code: str = GAP, detail: str = "") -> None:
        """TCP bytes missing: the record boundaries are lost, so this direction stops here."""
        if self.dead:
            return
        self.dead = True
        self.conn.warn("tls-gap", f"{self.conn.describe()}: {nbytes} bytes of the "
                       f"{'client' if self.from_client else 'server'} TLS stream missing; the rest of this "
                       "direction cannot be decrypted", None, None)
        self.sink.gap(max(nbytes, 1), code, (detail + "; " if detail else "") + "TLS records lost")

    def close(self, code: str | None = None, detail: str = "") -> None:
        self.sink.close(code, detail)

    # -- records ------------------------------------------------------------------------------
    def _mark(self, offset: int) -> tuple:
        marks = self.marks
        while len(marks) > 1 and marks[1][0] <= offset:
            marks.popleft()
        return marks[0]

    def _records(self) -> None:
        buf = self.buf
        pos = 0
        size = len(buf)
        while size - pos >= HEADER and not self.dead:
            try:
                ctype, _version, length = record_header(buf, pos)
            except NotTls as exc:
                self.conn.give_up(NOT_TLS, f"{self.conn.describe()}: {exc}", self._mark(self.base + pos))
                break
            end = pos + HEADER + length
            if end > size:
                break
            mark = self._mark(self.base + pos)
            self._record(ctype, bytes(buf[pos:pos + HEADER]), bytes(buf[pos + HEADER:end]), mark)
            pos = end
        if self.dead:
            buf.clear()
            return
        if pos:
            del buf[:pos]
            self.base += pos
            self._mark(self.base)

    def _record(self, ctype: int, header: bytes, body: bytes, mark: tuple) -> None:
        conn = self.conn
        if self.protection is None:
            if ctype == HANDSHAKE:
                self.hs += body
                for kind, message in handshake_messages(self.hs):
                    conn.handshake(self, kind, message, mark)
                return
            tls13 = conn.server_hello is not None and conn.server_hello.version == TLS13
            if ctype == ALERT or (ctype == CHANGE_CIPHER_SPEC and tls13):
                return  # cleartext alert; TLS 1.3's compatibility change_cipher_spec
            if self.from_client and conn.hello is not None and conn.hello.early_data and (
                    conn.server_hello is None or self.held is not None):
                if ctype == CHANGE_CIPHER_SPEC:
                    return  # the compatibility change_cipher_spec before 0-RTT data
                self._hold(header, body, mark)  # 0-RTT: opened once the server's answer to it is known
                return
            if not self._start(mark):
                return
            if ctype == CHANGE_CIPHER_SPEC:
                return  # TLS 1.2: what follows is protected
        elif ctype == CHANGE_CIPHER_SPEC:
            return
        self._open(header, body, mark)

    # -- TLS 1.3 early data (0-RTT) ---------------------------------------------------------
    def _hold(self, header: bytes, body: bytes, mark: tuple) -> None:
        """A client record after a ClientHello offering early data, before the server said whether
        it accepts it (its EncryptedExtensions): held, in order, up to MAX_EARLY_BYTES."""
        if self.held is None:
            self.held = []
        self.held.append((header, body, mark))
        self.held_bytes += len(body)
        if self.held_bytes > MAX_EARLY_BYTES:
            self.conn.give_up(FAILED, f"{self.conn.describe()}: more than {MAX_EARLY_BYTES} bytes of client records "
                              "before the server's EncryptedExtensions", mark)

    def early_data(self, accepted: bool, mark: tuple, known: bool = True) -> None:
        """The server answered the client's 0-RTT offer: accepted records are opened with
        CLIENT_EARLY_TRAFFIC_SECRET (the application data is the first request(s)); rejected ones
        never reached the application and are dropped; without the secret they are reported."""
        conn = self.conn
        records, self.held = self.held or [], None
        conn.early = {"offered": True, "accepted": accepted if known else None, "records": 0, "decrypted": 0,
                      "reason": ""}
        if not accepted:  # the client's records up to its Finished (handshake keys) are early data: skipped
            self.rejected_bytes = sum(len(body) for _, body, _ in records)
            self.rejected_frame = records[0][2][2] if records else None
            conn.early["records"] = len(records)
            self._rejected()
            self.trial = MAX_EARLY_FAILURES
            return
        found = conn.protections(self, records[0][2] if records else mark)
        if found is None:
            return
        secrets = conn.keylog.get(conn.hello.random) if conn.keylog is not None else None
        early = secrets and secrets.get("CLIENT_EARLY_TRAFFIC_SECRET")
        suite = SUITES[conn.server_hello.suite]
        if not early:
            conn.early["reason"] = "no CLIENT_EARLY_TRAFFIC_SECRET line in the key log"
            self.protection, self.after_handshake = found
            self.trial = MAX_EARLY_FAILURES  # the early records and EndOfEarlyData do not open with these keys
            where = records[0][2] if records else mark
            size = sum(len(body) for _, body, _ in records)
            conn.early["records"] = len(records)
            conn.warn("tls-early", f"{conn.describe()}: TLS 1.3 early data (0-RTT) accepted by the server, "
                      f"{len(records)} records ({size} bytes) not decrypted: no CLIENT_EARLY_TRAFFIC_SECRET "
                      f"for client random {conn.hello.random.hex()} in the key log", where[2], where[3])
            if size:
                self.sink.gap(max(size - 17 * len(records), 1), GAP, "TLS 1.3 early data without its secret")
            return
        self.protection, self.after_early = Tls13Protection(suite, early), found
        self.early_trial = self.trial  # without handshake keys: the client's Finished is skipped after EndOfEarlyData
        for header, body, record_mark in records:
            if self.dead:
                return
            conn.early["records"] += 1
            before = self.opened
            self._open(header, body, record_mark)
            conn.early["decrypted"] += self.opened - before

    def _rejected(self) -> None:
        """The report of early data the server rejected: how much was skipped, from which frame."""
        early = self.conn.early
        count = early["records"]
        where = f", from frame {self.rejected_frame}" if self.rejected_frame is not None else ""
        early["reason"] = (f"rejected by the server: {count} record{'s' if count != 1 else ''} "
                           f"({self.rejected_bytes} bytes{where}) skipped, the early data never reached the "
                           "application" if count else "rejected by the server (no early data record seen)")

    def _start(self, mark: tuple) -> bool:
        found = self.conn.protections(self, mark)
        if found is None:
            return False
        self.protection, self.after_handshake = found
        return True

    def _open(self, header: bytes, body: bytes, mark: tuple) -> None:
        conn = self.conn
        try:
            inner, content = self.protection.open(header, body)
        except DecryptError as exc:
            self._failed(str(exc), len(body), mark)
            return
        self.failures = self.trial = 0
        self.opened += 1
        conn.decrypted()
        if inner == APPLICATION_DATA:
            if content:
                self.plain += len(content)
                self.sink.feed(content, mark[1], mark[2], None, mark[3])
        elif inner == HANDSHAKE:
            self.hs += content
            for kind, message in handshake_messages(self.hs):
                if kind == ENCRYPTED_EXTENSIONS and not self.from_client:
                    conn.encrypted_extensions(message, mark)
                elif kind == END_OF_EARLY_DATA and self.after_early is not None:
                    self.protection, self.after_handshake = self.after_early
                    self.after_early = None
                    self.trial = self.early_trial
                elif kind == FINISHED and self.after_handshake is not None:
                    self.protection, self.after_handshake = self.after_handshake, None
                elif kind == FINISHED and self.tls13_handshake:  # the key log lacks the traffic secret
                    side = "CLIENT" if self.from_client else "SERVER"
                    conn._no_key(f"no {side}_TRAFFIC_SECRET_0 line", mark)
                    return
                elif kind == KEY_UPDATE and isinstance(self.protection, Tls13Protection):
                    self.protection = self.protection.updated()

    def _failed(self, why: str, size: int, mark: tuple) -> None:
        conn = self.conn
        if self.trial:  # TLS 1.3, no handshake secret: a handshake record, skipped
            self.trial -= 1
            early = conn.early
            if self.from_client and early is not None and early["accepted"] is False and not self.opened:
                # rejected early data that came after the server's answer (a client still sending it)
                early["records"] += 1
                self.rejected_bytes += size
                if self.rejected_frame is None:
                    self.rejected_frame = mark[2]
                self._rejected()
            return
        conn.failed_records += 1
        self.failures += 1
        side = "client" if self.from_client else "server"
        if not self.opened or self.failures >= MAX_FAILURES:
            conn.give_up(FAILED, f"{conn.describe()}: {side} record in frame {mark[2]}: {why} "
                         f"({'wrong key or corrupted records' if self.opened else 'wrong key?'})", mark)
            return
        self.protection.seq += 1  # the record was there: the next one has the next sequence number
        conn.warn("tls-record", f"{conn.describe()}: {side} record in frame {mark[2]}: {why}; "
                  "its plaintext is missing", mark[2], mark[3])
        self.sink.gap(max(size - 17, 1), GAP, f"a TLS record that did not authenticate (frame {mark[2]})")
