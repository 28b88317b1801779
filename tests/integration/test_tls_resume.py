"""TLS 1.3 session resumption with the edge's tickets (edge/tls_ticket.c) and ALPN on the
direct-TLS port (XEP-0368 §3).

Two independent clients: Python's ssl (OpenSSL through CPython) and `openssl s_client`
with -sess_out/-sess_in. A resumed session must log in and carry messages on the edge's
own record layer (the debug log says "resumed, edge record layer"); a ticket the server
cannot or must not open (other key, rotated out, expired, tampered) gets a full
handshake and the client still connects."""
import os
import secrets
import select
import signal
import socket
import ssl
import subprocess
import time
import unittest

from harness import DOMAIN, Server, insecure_context

HDR = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
       "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
PASSWORD = "pw"


def new_key():
    return secrets.token_hex(48)


def write_keys(path, *keys):
    with open(path + ".new", "w") as f:
        f.write("# current, then previous\n" + "".join(k + "\n" for k in keys))
    os.replace(path + ".new", path)


class Conn:
    """One XMPP connection over TLS 1.3 with Python's ssl: direct TLS or STARTTLS."""

    def __init__(self, ctx, port, session=None, starttls=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        if starttls:
            self.sock.sendall(HDR.encode())
            self.until(b"</stream:features>")
            self.sock.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            self.until(b"<proceed")
            self.buf = b""
        self.sock = ctx.wrap_socket(self.sock, server_hostname=DOMAIN, session=session)
        self.send(HDR)
        # reading after the handshake also takes the NewSessionTicket
        self.until(b"</stream:features>")

    def send(self, text):
        self.sock.sendall(text.encode())

    def until(self, marker, timeout=10):
        deadline = time.time() + timeout
        while marker not in self.buf:
            if time.time() > deadline:
                raise AssertionError(f"no {marker!r} in {self.buf[-500:]!r}")
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"closed before {marker!r}: {self.buf[-500:]!r}")
            self.buf += data
        i = self.buf.index(marker) + len(marker)
        text, self.buf = self.buf[:i].decode(errors="replace"), self.buf[i:]
        return text

    @property
    def reused(self):
        return self.sock.session_reused

    @property
    def session(self):
        return self.sock.session

    def login(self, user, resource):
        import base64
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        self.until(b"<success")
        self.send(HDR)
        self.until(b"</stream:features>")
        self.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        self.until(b"</iq>")
        self.send("<presence/>")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def tls13_context(alpn=None):
    ctx = insecure_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def s_client(port, args, starttls=False, timeout=10):
    """openssl s_client through one stream header; returns its output (the session
    summary says New or Reused)."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", DOMAIN, "-tls1_3", "-ign_eof"]
    if starttls:
        cmd += ["-starttls", "xmpp", "-xmpphost", DOMAIN]
    p = subprocess.Popen(cmd + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    p.stdin.write(HDR.encode())
    p.stdin.flush()
    out = b""
    deadline = time.time() + timeout
    try:
        while b"</stream:features>" not in out and time.time() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.2)
            if r:
                data = os.read(p.stdout.fileno(), 65536)
                if not data:
                    break
                out += data
    finally:
        p.kill()
        p.wait()
    text = out.decode(errors="replace")
    assert "</stream:features>" in text, text[-2000:]
    return text


def summary(text):
    for line in text.splitlines():
        if line.startswith(("New, ", "Reused, ")):
            return line.split(",")[0]
    raise AssertionError("no session summary in s_client output: " + text[-1500:])


# --- DER editing of an OpenSSL SSL_SESSION (PEM from -sess_out), to present tickets
# the server never issued ---

def _der_len(data, i):
    n = data[i]
    if n < 0x80:
        return n, i + 1
    k = n & 0x7F
    return int.from_bytes(data[i + 1:i + 1 + k], "big"), i + 1 + k


def _der_enc_len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag, body):
    return bytes([tag]) + _der_enc_len(len(body)) + body


def session_ticket(pem):
    """The ticket bytes of a session and a function building the session with others."""
    import base64
    body = "".join(l for l in pem.splitlines() if l and not l.startswith("-----"))
    der = base64.b64decode(body)
    assert der[0] == 0x30
    n, i = _der_len(der, 1)
    items = []
    while i < len(der):
        tag = der[i]
        ln, j = _der_len(der, i + 1)
        items.append((tag, der[j:j + ln]))
        i = j + ln
    tick = [b for t, b in items if t == 0xAA]  # [10] EXPLICIT OCTET STRING tlsext_tick
    assert tick, "no ticket in the session"
    n, j = _der_len(tick[0], 1)
    ticket = tick[0][j:j + n]

    def rebuild(new_ticket):
        out = b"".join(_tlv(t, _tlv(0x04, new_ticket) if t == 0xAA else b) for t, b in items)
        b64 = base64.encodebytes(_tlv(0x30, out)).decode()
        return "-----BEGIN SSL SESSION PARAMETERS-----\n" + b64 + "-----END SSL SESSION PARAMETERS-----\n"
    return ticket, rebuild


class ResumeBase(unittest.TestCase):
    users = ("alice", "bob")
    lifetime = 86400

    @classmethod
    def make_server(cls, key_file=None, lifetime=None, **extra):
        opts = {"server.log_level": "debug", "tls.ticket_lifetime": lifetime or cls.lifetime}
        if key_file:
            opts["tls.ticket_key_file"] = key_file
        opts.update(extra)
        srv = Server(**opts)
        for u in cls.users:
            srv.adduser(f"{u}@{DOMAIN}", PASSWORD)
        return srv.start()

    def resumed_on_edge(self, srv):
        return srv.log_text().count("resumed, edge record layer")

    def sighup(self, srv, marker):
        before = srv.log_text().count(marker)
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while srv.log_text().count(marker) == before:
            self.assertLess(time.time(), deadline, "no reload in the log")
            time.sleep(0.05)


class ResumeTest(ResumeBase):
    """One server with a ticket key file."""

    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.tmp = tempfile.mkdtemp(prefix="xmppd-keys-")
        cls.keys = os.path.join(cls.tmp, "ticket.keys")
        write_keys(cls.keys, new_key())
        cls.srv = cls.make_server(cls.keys)

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0, cls.srv.log_text()
        import shutil
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def tearDown(self):
        self.assertTrue(self.srv.alive(), self.srv.log_text())

    def chat_through_resumed(self, starttls):
        port = self.srv.port if starttls else self.srv.tls_port
        ctx = tls13_context()
        first = Conn(ctx, port, starttls=starttls)
        self.assertFalse(first.reused)
        sess = first.session
        self.assertTrue(sess.has_ticket)
        first.close()
        before = self.resumed_on_edge(self.srv)
        a = Conn(ctx, port, session=sess, starttls=starttls)
        self.assertTrue(a.reused, "the ticket did not resume the session")
        b = Conn(tls13_context(), port, starttls=starttls)
        self.assertFalse(b.reused)
        a.login("alice", "ra")
        b.login("bob", "rb")
        body = "x" * 40000  # several records each way on the resumed session
        a.send(f"<message to='bob@{DOMAIN}/rb' type='chat' id='m1'><body>{body}</body></message>")
        self.assertIn(body, b.until(b"</message>"))
        b.send(f"<message to='alice@{DOMAIN}/ra' type='chat' id='m2'><body>pong {body}</body></message>")
        self.assertIn("pong " + body, a.until(b"</message>"))
        self.assertEqual(self.resumed_on_edge(self.srv), before + 1, self.srv.log_text()[-2000:])
        a.close()
        b.close()

    def test_resumed_direct_tls_logs_in_and_chats(self):
        self.chat_through_resumed(starttls=False)

    def test_resumed_starttls_logs_in_and_chats(self):
        self.chat_through_resumed(starttls=True)

    def test_ticket_reusable_and_tls12_not_given_tickets(self):
        ctx = tls13_context()
        sess = Conn(ctx, self.srv.tls_port).session
        for _ in range(3):
            c = Conn(ctx, self.srv.tls_port, session=sess)
            self.assertTrue(c.reused)
            c.close()
        # TLS 1.2 resumption would reuse the master secret without a new key exchange
        ctx12 = insecure_context()
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
        c = Conn(ctx12, self.srv.tls_port)
        self.assertEqual(c.sock.version(), "TLSv1.2")
        self.assertFalse(c.session.has_ticket)
        c.close()

    def test_openssl_s_client_resumes_both_ports(self):
        for starttls in (False, True):
            port = self.srv.port if starttls else self.srv.tls_port
            sess = os.path.join(self.tmp, f"sess{int(starttls)}.pem")
            self.assertEqual(summary(s_client(port, ["-sess_out", sess], starttls)), "New")
            text = subprocess.run(["openssl", "sess_id", "-in", sess, "-text", "-noout"], capture_output=True,
                                  text=True, check=True).stdout
            self.assertIn("TLS session ticket lifetime hint: 86400", text)
            self.assertIn("Max Early Data: 0", text)  # no 0-RTT: nothing to replay
            self.assertEqual(summary(s_client(port, ["-sess_in", sess], starttls)), "Reused")

    def test_bogus_tickets_get_a_full_handshake(self):
        sess = os.path.join(self.tmp, "good.pem")
        s_client(self.srv.tls_port, ["-sess_out", sess])
        with open(sess) as f:
            ticket, rebuild = session_ticket(f.read())
        # key_name[16] iv[16] len[2] sealed[len] mac[32]
        self.assertEqual(int.from_bytes(ticket[32:34], "big"), len(ticket) - 66)
        variants = {"random same length": secrets.token_bytes(len(ticket)),
                    "one byte": b"\x01", "short": ticket[:40], "long": ticket + secrets.token_bytes(200),
                    "1 KiB": secrets.token_bytes(1024)}
        for i in (0, 20, 33, 40, len(ticket) - 40, len(ticket) - 20, len(ticket) - 1):
            t = bytearray(ticket)
            t[i] ^= 0x01
            variants[f"flip {i}"] = bytes(t)
        # length fields that disagree with the ticket's size: Debian's wolfSSL hands them
        # to the ticket callback unchecked (the edge read past the ticket, under ASan)
        n = len(ticket) - 66
        for name, field, size in (("field +1", n + 1, len(ticket)), ("field -1", n - 1, len(ticket)),
                                  ("field max", 0xFFFF, len(ticket)), ("field +60", n + 60, len(ticket)),
                                  ("7 bytes more", n + 7, len(ticket) + 7),
                                  ("one byte short", n, len(ticket) - 1)):
            t = bytearray(ticket + secrets.token_bytes(max(0, size - len(ticket))))[:size]
            t[32:34] = field.to_bytes(2, "big")
            variants[name] = bytes(t)
        for name, bogus in variants.items():
            path = os.path.join(self.tmp, "bogus.pem")
            with open(path, "w") as f:
                f.write(rebuild(bogus))
            self.assertEqual(summary(s_client(self.srv.tls_port, ["-sess_in", path])), "New", name)
            self.assertTrue(self.srv.alive(), name)
        # wolfSSL ends a handshake whose PSK identity passes ~1.5 KiB (no ticket is that
        # large: ours are 182 bytes) with an alert; the server goes on
        with open(path, "w") as f:
            f.write(rebuild(secrets.token_bytes(4000)))
        with self.assertRaises(AssertionError):
            s_client(self.srv.tls_port, ["-sess_in", path])
        self.assertTrue(self.srv.alive())
        self.assertIn("TLS handshake failed", self.srv.log_text())
        with open(os.path.join(self.tmp, "same.pem"), "w") as f:
            f.write(rebuild(ticket))  # the editing itself keeps a good ticket good
        self.assertEqual(summary(s_client(self.srv.tls_port, ["-sess_in", os.path.join(self.tmp, "same.pem")])),
                         "Reused")

    def test_ticket_from_another_key_is_refused(self):
        other = self.make_server()  # a random key of its own
        try:
            ctx = tls13_context()
            foreign = Conn(ctx, other.tls_port).session
            self.assertTrue(Conn(ctx, other.tls_port, session=foreign).reused)
            c = Conn(ctx, self.srv.tls_port, session=foreign)
            self.assertFalse(c.reused)
            c.login("alice", "foreign")  # a full handshake, and the session works
            c.send(f"<iq type='get' id='p1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
            self.assertIn("type='result'", c.until(b"id='p1'"))
            c.close()
        finally:
            self.assertEqual(other.stop(), 0)


class RotationTest(ResumeBase):
    """tls.ticket_key_file rotated by SIGHUP: current + previous open, older do not."""

    def test_previous_key_resumes_two_rotations_do_not(self):
        import tempfile
        tmp = tempfile.mkdtemp(prefix="xmppd-keys-")
        keys = os.path.join(tmp, "ticket.keys")
        k1, k2, k3 = new_key(), new_key(), new_key()
        write_keys(keys, k1)
        srv = self.make_server(keys)
        try:
            ctx = tls13_context()
            t1 = Conn(ctx, srv.tls_port).session
            write_keys(keys, k2, k1)
            self.sighup(srv, "ticket keys reloaded")
            c = Conn(ctx, srv.tls_port, session=t1)
            self.assertTrue(c.reused, "a ticket of the previous key must resume")
            t2 = c.session  # issued under k2
            c.close()
            write_keys(keys, k3, k2)
            self.sighup(srv, "ticket keys reloaded")
            c = Conn(ctx, srv.tls_port, session=t1)
            self.assertFalse(c.reused, "two rotations on, the ticket must not resume")
            c.login("alice", "r1")
            c.close()
            c = Conn(ctx, srv.tls_port, session=t2)
            self.assertTrue(c.reused)
            c.close()
            # a broken file is refused and the keys in use stay
            with open(keys, "w") as f:
                f.write("not a key\n")
            self.sighup(srv, "ticket keys not reloaded")
            c = Conn(ctx, srv.tls_port, session=t2)
            self.assertTrue(c.reused)
            c.close()
            # a certificate reload keeps tickets working (same keys, new wolfSSL context)
            self.assertIn("TLS certificate reloaded", srv.log_text())
        finally:
            self.assertEqual(srv.stop(), 0, srv.log_text())
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)

    def test_bad_key_file_refused_at_start(self):
        import tempfile
        tmp = tempfile.mkdtemp(prefix="xmppd-keys-")
        keys = os.path.join(tmp, "ticket.keys")
        with open(keys, "w") as f:
            f.write(new_key()[:-2] + "\n")
        srv = Server(**{"tls.ticket_key_file": keys})
        with self.assertRaises(RuntimeError):
            srv.start()
        self.assertIn("96 hex digits", srv.log_text())
        srv.stop()


class ExpiryTest(ResumeBase):
    """Two edges sharing a key file, one with a 2-second ticket lifetime: a ticket the
    other issued (the client believes it good for a day) resumes there while young and
    not once it is older than 2 s, while the issuing edge still takes it."""

    def test_expired_ticket_gets_a_full_handshake(self):
        import tempfile
        tmp = tempfile.mkdtemp(prefix="xmppd-keys-")
        keys = os.path.join(tmp, "ticket.keys")
        write_keys(keys, new_key())
        a = self.make_server(keys)
        b = self.make_server(keys, lifetime=2)
        try:
            ctx = tls13_context()
            t = Conn(ctx, a.tls_port).session
            issued = time.time()
            c = Conn(ctx, b.tls_port, session=t)
            self.assertTrue(c.reused, "a shared key file lets another edge resume")
            c.close()
            time.sleep(max(0.0, issued + 3.2 - time.time()))  # the ticket is now older than 2 s
            c = Conn(ctx, b.tls_port, session=t)
            self.assertFalse(c.reused, "an expired ticket must not resume")
            c.login("alice", "late")
            c.close()
            c = Conn(ctx, a.tls_port, session=t)
            self.assertTrue(c.reused, "within the issuing edge's lifetime it still does")
            c.close()
        finally:
            self.assertEqual(a.stop(), 0, a.log_text())
            self.assertEqual(b.stop(), 0, b.log_text())
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)


class AlpnTest(ResumeBase):
    """XEP-0368 §3: direct-TLS clients SHOULD offer ALPN "xmpp-client"; RFC 7301 §3.2: a
    server that supports none of the offered protocols answers no_application_protocol.
    Clients without ALPN are served."""

    @classmethod
    def setUpClass(cls):
        cls.srv = cls.make_server()

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0, cls.srv.log_text()

    def test_xmpp_client_selected(self):
        for offer in (["xmpp-client"], ["h2", "xmpp-client", "http/1.1"]):
            ctx = tls13_context(offer)
            c = Conn(ctx, self.srv.tls_port)
            self.assertEqual(c.sock.selected_alpn_protocol(), "xmpp-client")
            sess = c.session
            c.close()
            c = Conn(ctx, self.srv.tls_port, session=sess)  # and on a resumed handshake
            self.assertTrue(c.reused)
            self.assertEqual(c.sock.selected_alpn_protocol(), "xmpp-client")
            c.login("alice", "alpn")
            c.close()

    def test_no_alpn_served(self):
        c = Conn(tls13_context(), self.srv.tls_port)
        self.assertIsNone(c.sock.selected_alpn_protocol())
        c.login("bob", "plain")
        c.close()

    def test_wrong_alpn_gets_no_application_protocol(self):
        for offer in (["h2", "http/1.1"], ["xmpp-server"]):
            with self.assertRaises(ssl.SSLError) as cm:
                Conn(tls13_context(offer), self.srv.tls_port)
            self.assertIn("no application protocol", str(cm.exception), offer)
        # the same with openssl s_client (TLS 1.2 too: the rule is not version-specific)
        for version in ("-tls1_3", "-tls1_2"):
            p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{self.srv.tls_port}", version,
                                "-alpn", "h2"], input=b"", capture_output=True, timeout=10)
            self.assertIn(b"no application protocol", p.stdout + p.stderr, version)
        self.assertTrue(self.srv.alive())


if __name__ == "__main__":
    unittest.main()
