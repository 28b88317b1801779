"""The edge's negotiation states (edge/negotiate.c: PLAIN, TLS, SECURED, AUTHED, BINDING,
RESUMING, RESUME_MOVING, BOUND): what each refuses, for the rows other test files do not
reach: a second <starttls/>, stream management before authentication, <enable/> before
the bind (XEP-0198 §3), SASL after authentication, a bind pipelined behind a bind still
pending (RFC 6120 §7.7.2.1), a stanza pipelined behind a <resume/> (XEP-0198 §5). Every
case is raw XML sent in one write, so the state the server is in when it reads each
element does not depend on timing. The server must never log an illegal state change
(in a debug build the transition asserts: the server dies)."""
import re
import time
import unittest

from harness import DOMAIN, RawStream, ServerTest

SM = "urn:xmpp:sm:3"
STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"


class NegotiationStateTest(ServerTest):
    users = ("alice", "bob")

    def tearDown(self):
        super().tearDown()
        self.assertNotIn("illegal state change", self.srv.log_text())

    def secured(self):
        r = RawStream(self.srv.port)
        r.starttls()
        return r

    def authed(self, user):
        r = self.secured()
        r.auth_plain(user, "pw")
        r.buf = b""
        return r

    def stream_error(self, r, cond):
        text = r.recv_until("</stream:stream>")
        self.assertRegex(text, f"<stream:error><{cond} xmlns='{STREAMS}'/>")
        self.assertTrue(r.closed(), "the server closes the connection")
        return text

    def test_second_starttls_fails_and_closes(self):
        # SECURED: RFC 6120 §5.4.2.2, TLS once per stream
        r = self.secured()
        r.open_stream()
        r.recv_until("</stream:features>")
        r.buf = b""
        r.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        text = r.recv_until("</stream:stream>")
        self.assertIn("<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>", text)
        self.assertTrue(r.closed())

    def test_stream_management_before_auth(self):
        # SECURED: XEP-0198 is not offered before authentication (only as what SASL2 may
        # do inline once authenticated, XEP-0388 §2.2: inside <authentication/>); its
        # elements are not first-level elements of an unauthenticated stream
        r = self.secured()
        r.open_stream()
        feats = r.recv_until("</stream:features>")
        outside = re.sub(r"<authentication xmlns='urn:xmpp:sasl:2'>.*?</authentication>", "", feats, flags=re.S)
        self.assertIn("urn:xmpp:sasl:2", feats)
        self.assertNotIn(SM, outside)
        r.send(f"<enable xmlns='{SM}'/>")
        self.stream_error(r, "unsupported-stanza-type")

    def test_enable_before_bind_then_bind(self):
        # AUTHED: <enable/> only after the bind (XEP-0198 §3); the stream goes on
        r = self.authed("alice")
        r.send(f"<enable xmlns='{SM}'/>")
        self.assertIn("<unexpected-request", r.recv_until("</failed>"))
        r.bind("after")
        self.assertIn(f"<jid>alice@{DOMAIN}/after</jid>", r.buf.decode())
        r.buf = b""
        r.send(f"<enable xmlns='{SM}'/>")
        r.recv_until(f"<enabled xmlns='{SM}'/>")
        r.close()

    def test_sasl_after_auth(self):
        # AUTHED: SASL is over (§6.4.6: the stream restarted); an <auth/> is no stanza
        r = self.authed("alice")
        r.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>")
        self.stream_error(r, "unsupported-stanza-type")

    def test_bind_pipelined_behind_a_pending_bind(self):
        # BINDING: the first bind waits for the router; a second one, read in the same
        # write, is refused (§7.7.2.1: one resource per stream); the first one succeeds
        r = self.authed("bob")
        r.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
               "<resource>one</resource></bind></iq>"
               "<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
               "<resource>two</resource></bind></iq>")
        text = r.recv_until(r"<iq[^>]*id='b1'.*?</iq>")
        text = r.recv_until(r"<iq[^>]*id='b2'.*?</iq>")
        b2 = re.search(r"<iq[^>]*id='b2'.*?</iq>", text).group(0)
        self.assertIn("type='error'", b2)
        self.assertIn("<not-allowed", b2)
        self.assertIn(f"<jid>bob@{DOMAIN}/one</jid>", text)
        # and the session is bound under the first resource: a ping goes through
        r.buf = b""
        r.send(f"<iq type='get' id='p' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
        ping = r.recv_until(r"<iq[^>]*id='p'[^>]*>")
        self.assertRegex(ping, rf"<iq[^>]*to='bob@{DOMAIN}/one'")
        r.close()

    def test_stanza_pipelined_behind_resume(self):
        # RESUMING / RESUME_MOVING: nothing before <resumed/> or <failed/> (XEP-0198 §5)
        r = RawStream(self.srv.port).login("alice", "pw", "phone")
        r.buf = b""
        r.send(f"<enable xmlns='{SM}' resume='true'/>")
        previd = re.search(r"id='([0-9a-f]{40})'", r.recv_until("<enabled[^>]*/>")).group(1)
        line = f"alice@{DOMAIN}/phone detached for resumption"
        r.sock.close()
        end = time.monotonic() + 5
        while line not in self.srv.log_text():
            self.assertLess(time.monotonic(), end, "the session was not detached")
            time.sleep(0.02)
        n = self.authed("alice")
        n.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>"
               f"<message to='bob@{DOMAIN}' type='chat'><body>early</body></message>")
        text = self.stream_error(n, "not-authorized")
        self.assertIn("the stream is being resumed", text)


if __name__ == "__main__":
    unittest.main()
