"""Log-in: STARTTLS and direct TLS, SCRAM and PLAIN, wrong passwords, stream header checks."""
import asyncio
import base64
import time
import unittest

from harness import ServerTest, Client, RawStream, Server, run


class LoginTest(ServerTest):
    users = ("alice",)
    password = 'correct horse'

    def test_starttls_scram_sha256(self):
        async def go():
            c = Client(self.srv, "alice@localhost/t1", "correct horse")
            self.assertTrue(await c.login())
            self.assertEqual(str(c.boundjid), "alice@localhost/t1")
            await c.close()
        run(go())

    def test_scram_sha1_and_plain(self):
        for mech in ("SCRAM-SHA-1", "PLAIN"):
            async def go():
                c = Client(self.srv, "alice@localhost/m", "correct horse", sasl_mech=mech)
                self.assertTrue(await c.login(), mech)
                await c.close()
            run(go())

    def test_direct_tls(self):
        async def go():
            c = Client(self.srv, "alice@localhost/d", "correct horse")
            self.assertTrue(await c.login(direct_tls=True))
            await c.close()
        run(go())

    def test_wrong_password_not_authorized(self):
        r = RawStream(self.srv.port)
        r.starttls()
        r.open_stream()
        r.recv_until("</stream:features>")
        token = base64.b64encode(b"\0alice\0wrong").decode()
        r.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        text = r.recv_until(r"</failure>")
        self.assertIn("<not-authorized/>", text)
        r.close()

    def test_wrong_password_slixmpp(self):
        async def go():
            c = Client(self.srv, "alice@localhost/x", "nope")
            self.assertFalse(await c.login())
        run(go())

    def test_auth_before_tls_refused(self):
        r = RawStream(self.srv.port)
        r.open_stream()
        text = r.recv_until("</stream:features>")
        self.assertIn("<required/>", text)
        self.assertNotIn("PLAIN", text)
        token = base64.b64encode(b"\0alice\0correct horse").decode()
        r.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        text = r.recv_until("</stream:stream>")
        self.assertIn("<encryption-required/>", text)
        self.assertTrue(r.closed())

    def test_host_unknown(self):
        r = RawStream(self.srv.port)
        r.open_stream(to="example.org")
        text = r.recv_until("</stream:stream>")
        self.assertIn("<host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", text)
        self.assertTrue(r.closed())

    def test_bad_namespace_and_version(self):
        r = RawStream(self.srv.port)
        r.send("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' "
               "to='localhost' version='1.0'>")
        self.assertIn("<invalid-namespace", r.recv_until("</stream:stream>"))
        r = RawStream(self.srv.port)
        r.send("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
               "to='localhost'>")
        self.assertIn("<unsupported-version", r.recv_until("</stream:stream>"))

    def test_stanza_before_auth_not_authorized(self):
        r = RawStream(self.srv.port)
        r.open_stream()
        r.recv_until("</stream:features>")
        r.send("<message to='alice@localhost'><body>x</body></message>")
        self.assertIn("<not-authorized", r.recv_until("</stream:stream>"))

    def test_retry_limit(self):
        r = RawStream(self.srv.port)
        r.starttls()
        r.open_stream()
        r.recv_until("</stream:features>")
        token = base64.b64encode(b"\0alice\0wrong").decode()
        for i in range(3):
            r.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
            text = r.recv_until("(</failure>.*){%d}" % (i + 1))
        text = r.recv_until("</stream:stream>")
        self.assertEqual(text.count("<not-authorized/>"), 3)
        self.assertIn("<policy-violation", text)

    def test_plain_aborted_while_checking_stays_unauthenticated(self):
        """<abort/> (or a second <auth/>, answered <aborted/>) while PLAIN's password check
        runs on the thread pool: the check's late result is void. It used to authenticate
        the stream with no account, and the bind that followed crashed the server."""
        good = base64.b64encode(b"\0alice\0correct horse").decode()
        bad = base64.b64encode(b"\0alice\0wrong").decode()
        for second in ("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>",
                       f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{bad}</auth>"):
            r = RawStream(self.srv.port)
            r.starttls()
            r.open_stream()
            r.recv_until("</stream:features>")
            r.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{good}</auth>" + second)
            text = r.recv_until("<aborted/></failure>")
            time.sleep(1)  # the password check has finished by now
            r.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                   "<resource>x</resource></bind></iq>")
            text = r.recv_until("</stream:stream>")
            self.assertNotIn("<success", text)
            self.assertIn("<not-authorized", text)
            r.close()
        self.assertIsNone(self.srv.proc.poll(), "server died")
        # and a proper log-in still works
        r = RawStream(self.srv.port).login("alice", "correct horse")
        self.assertIn("type='result'", r.buf.decode())
        r.close()

    def test_new_scram_auth_right_after_abort_is_answered(self):
        """<auth/>, <abort/> and a new <auth/> in one write, while the first one's account
        read is still queued: the new exchange gets its challenge (it was dropped)."""
        first = base64.b64encode(b"n,,n=alice,r=abcdefghijkl").decode()
        for middle in ("<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", ""):
            r = RawStream(self.srv.port)
            r.starttls()
            r.open_stream()
            r.recv_until("</stream:features>")
            auth = f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{first}</auth>"
            r.send(auth + middle + auth)
            text = r.recv_until("<challenge")
            self.assertIn("<aborted/>", text)
            try:  # and nothing more: the first exchange's read was voided, not answered late
                text = r.recv_until("<challenge.*<challenge", timeout=1)
            except AssertionError:
                text = r.buf.decode(errors="replace")
            self.assertEqual(text.count("<challenge"), 1, text)
            r.close()
        self.assertIsNone(self.srv.proc.poll(), "server died")


if __name__ == "__main__":
    unittest.main()
