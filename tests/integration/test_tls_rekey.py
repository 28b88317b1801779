"""TLS 1.3 KeyUpdate (RFC 8446 §4.6.3) on the edge's own record layer (edge/tls.c), held
to an independent implementation: OpenSSL's libssl, through tests/tools/tls_rekey_client.c
(Python's ssl module cannot send KeyUpdate).

Long-lived device connections are the ones that rekey: a client's KeyUpdate, with or
without update_requested, must leave the session working both ways; the server must
rekey itself before the AES-GCM record limit (§5.5) instead of closing; a malformed
KeyUpdate gets the alert RFC 8446 names, and a flood of them one answer."""
import base64
import os
import queue
import re
import struct
import subprocess
import threading
import time
import unittest

from harness import BUILD, DOMAIN, RawStream, ServerTest, insecure_context

CLIENT = os.path.join(BUILD, "tls_rekey_client")

SUITES = ("TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384")

# alert descriptions (RFC 8446 §6)
UNEXPECTED_MESSAGE, DECODE_ERROR, ILLEGAL_PARAMETER = 10, 50, 47


class RekeyClient:
    """One connection to the direct-TLS port through the OpenSSL client."""

    def __init__(self, port, suite=None):
        args = [CLIENT, str(port)] + ([suite] if suite else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.events = queue.Queue()
        self.buf = b""
        self.updates = []      # request_update of every KeyUpdate the server sent, in order
        self.alerts = []       # (level, description) of alerts from the server
        self.closed_why = None
        self.cipher = None
        self.reader = threading.Thread(target=self._reader, daemon=True)
        self.reader.start()
        kind, payload = self._next(10)
        if kind != b"R":
            raise AssertionError(f"no handshake: {kind!r} {payload!r} {self.stderr()}")
        self.cipher = payload.decode()

    def _reader(self):
        out = self.proc.stdout
        while True:
            h = out.read(5)
            if len(h) < 5:
                self.events.put((None, b""))
                return
            kind, n = h[:1], struct.unpack(">I", h[1:])[0]
            self.events.put((kind, out.read(n) if n else b""))

    def stderr(self):
        if self.proc.poll() is None or self.proc.stderr.closed:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    def _next(self, timeout):
        try:
            kind, payload = self.events.get(timeout=timeout)
        except queue.Empty:
            return None, b""
        if kind == b"D":
            self.buf += payload
        elif kind == b"U":
            self.updates.append(payload[0])
        elif kind == b"A":
            self.alerts.append((payload[0], payload[1]))
        elif kind in (b"C", None):
            self.closed_why = payload.decode() if kind else "exited"
        return kind, payload

    def _cmd(self, kind, payload=b""):
        self.proc.stdin.write(kind + struct.pack(">I", len(payload)) + payload)
        self.proc.stdin.flush()

    def send(self, data):
        self._cmd(b"W", data.encode() if isinstance(data, str) else data)

    def key_update(self, requested):
        self._cmd(b"K" if requested else b"k")

    def flood(self, n):
        self._cmd(b"F", struct.pack(">I", n))

    def inject(self, *records):
        """(content type, body) records sealed by hand from sequence 0; only first."""
        self._cmd(b"X", b"".join(bytes([t]) + struct.pack(">H", len(b)) + b for t, b in records))

    def inject_handshake(self, body):
        self.inject((22, body))

    def recv_until(self, pattern, timeout=10):
        """Reads until the regex matches the received text; returns the text so far."""
        end = time.monotonic() + timeout
        rx = re.compile(pattern, re.S)
        while not rx.search(self.buf.decode(errors="replace")):
            left = end - time.monotonic()
            if self.closed_why or left <= 0:
                raise AssertionError(f"{'closed (' + self.closed_why + ')' if self.closed_why else 'timeout'} "
                                     f"waiting for {pattern!r}; alerts {self.alerts}; got {self.buf[-500:]!r}")
            self._next(left)
        return self.buf.decode(errors="replace")

    def wait_closed(self, timeout=10):
        end = time.monotonic() + timeout
        while not self.closed_why and time.monotonic() < end:
            self._next(end - time.monotonic())
        return self.closed_why

    def login(self, user, password, resource):
        hdr = (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
               f"xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>")
        self.send(hdr)
        self.recv_until(r"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        self.recv_until(r"<success")
        self.buf = b""
        self.send(hdr)
        self.recv_until(r"</stream:features>")
        self.send(f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        self.recv_until(r"</iq>")
        self.send("<presence/>")
        self.buf = b""
        return self

    def ping(self, n):
        """An XEP-0199 ping to the server; returns once its result arrived."""
        self.send(f"<iq type='get' id='ping{n}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.recv_until(rf"id='ping{n}'")

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)  # it ends at the pipe's end of file
        self.proc.stdout.close()
        self.proc.stderr.close()


class RekeyTest(ServerTest):
    users = ("alice", "bob")

    def peer(self, resource):
        """bob on Python's ssl (a third TLS implementation), bound and available."""
        s = RawStream(self.srv.tls_port, timeout=10)
        s.sock = insecure_context().wrap_socket(s.sock, server_hostname=DOMAIN)
        s.auth_plain("bob", self.password)
        s.bind(resource)
        s.send("<presence/>")
        return s

    def exchange(self, a, b, tag, size):
        """A message of `size` body bytes each way, checked byte for byte, then a ping."""
        body = (tag + "-" + "0123456789abcdef" * (size // 16 + 1))[:size]
        a.send(f"<message to='bob@{DOMAIN}/b' type='chat' id='{tag}'><body>{body}</body></message>")
        text = b.recv_until(rf"id='{tag}'.*?</message>", timeout=15)
        got = re.search(rf"id='{tag}'[^>]*><body>(.*?)</body>", text, re.S)
        self.assertIsNotNone(got, text[-300:])
        self.assertEqual(got.group(1), body)
        b.buf = b""
        reply = body[::-1]
        b.send(f"<message to='alice@{DOMAIN}/a' type='chat' id='r{tag}'><body>{reply}</body></message>")
        text = a.recv_until(rf"id='r{tag}'.*?</message>", timeout=15)
        got = re.search(rf"id='r{tag}'[^>]*><body>(.*?)</body>", text, re.S)
        self.assertIsNotNone(got, text[-300:])
        self.assertEqual(got.group(1), reply)
        a.buf = b""
        a.ping(tag)
        a.buf = b""

    def check_rekeys(self, suite):
        a = RekeyClient(self.srv.tls_port, suite)
        self.assertEqual(a.cipher, suite)
        a.login("alice", self.password, "a")
        b = self.peer("b")
        time.sleep(0.2)  # both presences in
        sizes = (1, 200, 4000, 16384 - 64, 40000)
        rounds = 0
        for i, requested in enumerate((False, True, False, True, True, False)):
            for size in sizes:
                self.exchange(a, b, f"m{i}s{size}", size)
            before = len(a.updates)
            a.key_update(requested)
            # records of every size right after the rekey: one SSL_write is one record
            for n in (1, 7, 300, 16384):
                a.send(" " * n)  # whitespace between stanzas
            a.ping(f"k{i}")
            # update_requested is answered (once) before the server's next record;
            # update_not_requested is not (RFC 8446 §4.6.3)
            self.assertEqual(a.updates[before:], [0] if requested else [], a.updates)
            rounds += 1
        for size in sizes:
            self.exchange(a, b, f"end{size}", size)
        self.assertEqual(rounds, 6)
        self.assertEqual(a.alerts, [])
        a.close()
        b.close()

    def test_rekeys_chacha20_poly1305(self):
        self.check_rekeys("TLS_CHACHA20_POLY1305_SHA256")

    def test_rekeys_aes_128_gcm(self):
        self.check_rekeys("TLS_AES_128_GCM_SHA256")

    def test_rekeys_aes_256_gcm_sha384(self):
        self.check_rekeys("TLS_AES_256_GCM_SHA384")

    def test_keyupdate_flood_answered_once(self):
        """1000 update_requested KeyUpdates while the server is silent cost one derivation
        each and get one answer, before the server's next record (§4.6.3: "an
        implementation which receives multiple KeyUpdates while it is silent [responds]
        with a single update")."""
        a = RekeyClient(self.srv.tls_port).login("alice", self.password, "fl")
        t0 = time.monotonic()
        a.flood(1000)
        a.ping("after")
        took = time.monotonic() - t0
        self.assertEqual(a.updates, [0])
        self.assertLess(took, 5, "1000 KeyUpdates took too long")
        a.ping("again")
        self.assertEqual(a.updates, [0])
        a.close()

    def bad(self, body, alert):
        a = RekeyClient(self.srv.tls_port)
        a.inject_handshake(body)
        self.assertIsNotNone(a.wait_closed(), "the server kept the connection")
        self.assertIn((2, alert), a.alerts)
        a.close()
        # the server is fine
        RekeyClient(self.srv.tls_port).login("alice", self.password, "ok").close()

    def test_keyupdate_bad_length_decode_error(self):
        self.bad(bytes([24, 0, 0, 2, 0, 0]), DECODE_ERROR)

    def test_keyupdate_empty_decode_error(self):
        self.bad(bytes([24, 0, 0, 0]), DECODE_ERROR)

    def test_keyupdate_bad_value_illegal_parameter(self):
        self.bad(bytes([24, 0, 0, 1, 2]), ILLEGAL_PARAMETER)

    def test_keyupdate_not_at_record_end_unexpected_message(self):
        # §5.1: a KeyUpdate must end its record (the key changes after it)
        self.bad(bytes([24, 0, 0, 1, 0, 24, 0, 0, 1, 0]), UNEXPECTED_MESSAGE)

    def test_other_handshake_message_unexpected_message(self):
        self.bad(bytes([4, 0, 0, 0]), UNEXPECTED_MESSAGE)  # a NewSessionTicket from a client

    def test_keyupdate_split_over_records_accepted(self):
        """A KeyUpdate may be fragmented (RFC 8446 §5.1 only asks that it end a record);
        the record after it is under the next key (OpenSSL's own keys are then behind,
        so nothing more is written through it)."""
        a = RekeyClient(self.srv.tls_port)
        a.inject((22, bytes([24, 0])), (22, bytes([0, 1, 1])))
        self.assertIsNone(a.wait_closed(1))
        self.assertEqual(a.alerts, [])
        a.close()

    def test_split_keyupdate_interleaved_unexpected_message(self):
        a = RekeyClient(self.srv.tls_port)
        a.inject((22, bytes([24, 0, 0])), (23, b" "))
        self.assertIsNotNone(a.wait_closed())
        self.assertIn((2, UNEXPECTED_MESSAGE), a.alerts)
        a.close()

    def test_empty_handshake_record_unexpected_message(self):
        self.bad(b"", UNEXPECTED_MESSAGE)

    def test_valid_injected_keyupdate_accepted(self):
        """The injection path itself is sound: a well-formed KeyUpdate sealed by hand is
        taken, and the session goes on (OpenSSL's own keys are then one behind, so only
        the server's answer is read)."""
        a = RekeyClient(self.srv.tls_port)
        a.inject_handshake(bytes([24, 0, 0, 1, 0]))
        self.assertIsNone(a.wait_closed(1))
        self.assertEqual(a.alerts, [])
        a.close()


class RecordLimitTest(ServerTest):
    """tls.rekey_records lowered so a test can pass the AES-GCM record limit (RFC 8446
    §5.5) both ways: the server sends KeyUpdate before its own limit and asks the client
    for one at the client's, instead of closing."""
    users = ("alice", "bob")
    server_options = {"tls.rekey_records": 32}
    own_update = 0  # the request_update of the server's own KeyUpdates

    def peer(self):
        return RekeyTest.peer(self, "b")

    def check_limit(self, suite, aes):
        a = RekeyClient(self.srv.tls_port, suite).login("alice", self.password, "lim")
        b = self.peer()
        time.sleep(0.2)
        # the server's direction: 300 messages to alice, none from her
        for i in range(300):
            b.send(f"<message to='alice@{DOMAIN}/lim' type='chat' id='m{i}'><body>n{i}</body></message>")
        text = a.recv_until(r"id='m299'.*?</message>", timeout=20)
        self.assertEqual(re.findall(r"<body>n(\d+)</body>", text), [str(i) for i in range(300)])
        sent = list(a.updates)
        # the client's direction: 300 records from alice, a ping after every tenth
        # (so that she reads the server's requests, and answers them, as she goes)
        for i in range(300):
            a.send(" ")
            if i % 10 == 9:
                a.ping(f"c{i}")
        asked = a.updates[len(sent):]
        if aes:
            # 300 records at 32 a key: nine updates; at least three whatever the
            # server's coalescing of stanzas into records
            self.assertGreaterEqual(sent.count(self.own_update), 3, sent)
            # 330 records, each request answered within 11: at least 330 / 43
            self.assertGreaterEqual(asked.count(1), 7, asked)
        else:
            self.assertEqual(a.updates, [])
        self.assertIsNone(a.closed_why)
        self.assertEqual(a.alerts, [])
        a.close()
        b.close()

    def test_aes_gcm_rekeys_at_the_limit(self):
        self.check_limit("TLS_AES_128_GCM_SHA256", True)

    def test_aes_256_gcm_rekeys_at_the_limit(self):
        self.check_limit("TLS_AES_256_GCM_SHA384", True)

    def test_chacha_has_no_limit(self):
        self.check_limit("TLS_CHACHA20_POLY1305_SHA256", False)


class NoOffloadRecordLimitTest(ServerTest):
    """Sessions wolfSSL keeps (tls.offload off) update the server's key at the same count:
    wolfSSL_update_keys, whose KeyUpdate asks the client to update too."""
    users = ("alice", "bob")
    server_options = {"tls.rekey_records": 32, "tls.offload": "false"}

    def test_aes_gcm_rekeys_at_the_limit(self):
        a = RekeyClient(self.srv.tls_port, "TLS_AES_128_GCM_SHA256").login("alice", self.password, "lim")
        b = RekeyTest.peer(self, "b")
        time.sleep(0.2)
        for i in range(300):
            b.send(f"<message to='alice@{DOMAIN}/lim' type='chat' id='m{i}'><body>n{i}</body></message>")
        text = a.recv_until(r"id='m299'.*?</message>", timeout=20)
        self.assertEqual(re.findall(r"<body>n(\d+)</body>", text), [str(i) for i in range(300)])
        self.assertGreaterEqual(a.updates.count(1), 3, a.updates)
        a.ping("end")
        self.assertIsNone(a.closed_why)
        a.close()
        b.close()


class NoOffloadRekeyTest(RekeyTest):
    """The same with tls.offload off: wolfSSL keeps every session and handles KeyUpdate."""
    server_options = {"tls.offload": "false"}

    # wolfSSL answers malformed KeyUpdates in its own way; the offloaded layer's alerts
    # are what this file holds to RFC 8446
    test_keyupdate_bad_length_decode_error = None
    test_keyupdate_empty_decode_error = None
    test_keyupdate_bad_value_illegal_parameter = None
    test_keyupdate_not_at_record_end_unexpected_message = None
    test_other_handshake_message_unexpected_message = None
    test_split_keyupdate_interleaved_unexpected_message = None
    test_keyupdate_split_over_records_accepted = None  # wolfSSL closes on a split KeyUpdate
    test_empty_handshake_record_unexpected_message = None
    test_keyupdate_flood_answered_once = None


if __name__ == "__main__":
    unittest.main()
