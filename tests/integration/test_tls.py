"""TLS after the handshake: TLS 1.3 sessions run on the edge's own record layer once
wolfSSL is freed (docs/memory.md); TLS 1.2 sessions keep wolfSSL. Both must carry large
stanzas in many records both ways, end on close_notify, and refuse forged records."""
import os
import select
import socket
import ssl
import time

from harness import DOMAIN, RawStream, Server, ServerTest, insecure_context


class TLSStream(RawStream):
    def __init__(self, port, version=None):
        super().__init__(port)
        self.version = version

    def starttls(self):
        self.open_stream()
        self.recv_until(r"</stream:features>")
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.recv_until(r"<proceed")
        ctx = insecure_context()
        if self.version:
            ctx.minimum_version = ctx.maximum_version = self.version
        self.sock = ctx.wrap_socket(self.sock, server_hostname=DOMAIN)
        self.buf = b""


class TLSTest(ServerTest):
    users = ("alice", "bob")

    def session(self, user, version=None, resource="r"):
        s = TLSStream(self.srv.port, version)
        s.starttls()
        s.auth_plain(user, self.password)
        s.bind(resource)
        s.send("<presence/>")
        return s

    def check_big_exchange(self, version, expect):
        a = self.session("alice", version, "a")
        b = self.session("bob", version, "b")
        self.assertEqual(a.sock.version(), expect)
        body = "0123456789abcdef" * 8192  # 128 KiB: many records each way
        a.send(f"<message to='bob@{DOMAIN}/b' type='chat'><body>{body}</body></message>")
        text = b.recv_until(r"</message>", timeout=15)
        self.assertIn(body, text)
        # and back, in tiny writes (records of a few bytes)
        msg = f"<message to='alice@{DOMAIN}/a' type='chat'><body>pong</body></message>"
        for i in range(0, len(msg), 7):
            b.send(msg[i:i + 7])
        self.assertIn("pong", a.recv_until(r"pong</body>"))
        # close_notify: the server answers with its own, promptly, and closes
        self.check_close_notify(b)
        b.close()
        a.close()

    def check_close_notify(self, s):
        """unwrap() sends close_notify and waits for the server's (RFC 8446 §6.1: each
        party sends one before closing the write side); then the server closes the TCP
        connection. Both within 5 s, or the test fails (an alert ignored would leave
        both waiting until the socket timeout)."""
        t0 = time.monotonic()
        s.sock.settimeout(5)
        raw = s.sock.unwrap()
        raw.settimeout(5)
        self.assertEqual(raw.recv(100), b"", "the server closed the connection")
        self.assertLess(time.monotonic() - t0, 5)
        raw.close()

    def test_tls13_big_stanzas_and_close_notify(self):
        self.check_big_exchange(ssl.TLSVersion.TLSv1_3, "TLSv1.3")

    def test_tls12_still_works(self):
        self.check_big_exchange(ssl.TLSVersion.TLSv1_2, "TLSv1.2")

    def forge(self, version, record):
        s = self.session("alice", version, "f")
        # bytes written under the TLS layer: a record the client never sealed
        os.write(s.sock.fileno(), record)
        try:
            closed = s.closed(5)
        except ssl.SSLError:
            closed = True
        self.assertTrue(closed)
        s.close()
        # the server is fine and others can still log in
        self.session("bob", version, "after").close()

    def test_tls13_forged_record_closes(self):
        self.forge(ssl.TLSVersion.TLSv1_3, b"\x17\x03\x03\x00\x20" + b"\x00" * 32)

    def test_tls13_plaintext_record_after_handshake_closes(self):
        self.forge(ssl.TLSVersion.TLSv1_3, b"\x16\x03\x03\x00\x04\x01\x00\x00\x00")

    def test_tls13_oversize_record_closes(self):
        self.forge(ssl.TLSVersion.TLSv1_3, b"\x17\x03\x03\xff\xff" + b"\x00" * 100)

    def test_direct_tls13(self):
        sock = socket.create_connection(("127.0.0.1", self.srv.tls_port), timeout=5)
        ctx = insecure_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        s = TLSStream.__new__(TLSStream)
        s.sock = ctx.wrap_socket(sock, server_hostname=DOMAIN)
        s.buf = b""
        s.auth_plain("alice", self.password)
        s.bind("d")
        s.send(f"<iq type='get' id='p1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
        self.assertIn("p1", s.recv_until(r"id='p1'"))
        s.close()


class TLSAesTest(TLSTest):
    """The same exchanges with AES-GCM, the second AEAD the edge's record layer speaks
    (the default list puts ChaCha20-Poly1305 first)."""
    server_options = {"tls.ciphers": "TLS13-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256"}

    def test_aes_negotiated(self):
        s = self.session("alice", ssl.TLSVersion.TLSv1_3, "x")
        self.assertEqual(s.sock.cipher()[0], "TLS_AES_128_GCM_SHA256")
        s.close()


class TLSDefaultCipherTest(ServerTest):
    users = ("alice",)

    def test_weak_suite_refused_at_start(self):
        srv = Server(**{"tls.ciphers": "TLS13-AES128-GCM-SHA256:AES128-SHA"})
        with self.assertRaises(RuntimeError):
            srv.start()
        self.assertIn("'AES128-SHA' is not one of the allowed AEAD suites", srv.log_text())
        srv.stop()

    def test_chacha_preferred(self):
        s = TLSStream(self.srv.port, ssl.TLSVersion.TLSv1_3)
        s.starttls()
        self.assertEqual(s.sock.cipher()[0], "TLS_CHACHA20_POLY1305_SHA256")
        s.close()


class MaxFragmentTest(ServerTest):
    """A client that negotiated small records (RFC 6066 max_fragment_length) must get
    records it accepts: such sessions are not offloaded (found in review)."""
    users = ("alice",)

    def test_max_fragment_length_512(self):
        import base64
        import subprocess
        p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{self.srv.tls_port}", "-tls1_3",
                              "-maxfraglen", "512", "-quiet", "-servername", DOMAIN],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        hdr = (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
               f"xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>")
        token = base64.b64encode(b"\0alice\0pw").decode()
        body = "z" * 3000
        script = (hdr + f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        out = err = b""

        def read_until(pattern, timeout=10):
            """s_client's output up to pattern (what the server sent, decrypted)."""
            nonlocal out
            end = time.monotonic() + timeout
            while pattern not in out:
                left = end - time.monotonic()
                self.assertGreater(left, 0, f"no {pattern!r} from the server; got {out[-500:]!r}")
                if select.select([p.stdout], [], [], left)[0]:
                    chunk = os.read(p.stdout.fileno(), 65536)
                    self.assertTrue(chunk, f"s_client ended before {pattern!r}; got {out[-500:]!r}")
                    out += chunk

        try:
            p.stdin.write(script.encode())
            p.stdin.flush()
            read_until(b"<success")
            p.stdin.write((hdr + "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                           "<resource>r</resource></bind></iq>").encode())
            p.stdin.flush()
            read_until(b"</iq>")
            p.stdin.write(f"<message to='alice@{DOMAIN}/r' type='chat'><body>{body}</body></message>".encode())
            p.stdin.flush()
            read_until(body.encode())  # 3,000 bytes in records of at most 512
            rest, err = p.communicate(input=b"</stream:stream>", timeout=10)
            out += rest
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertNotIn(b"data length too long", err)
