"""XEP-0388 SASL2, XEP-0386 Bind2 (with XEP-0198, XEP-0280, XEP-0352 inline) and XEP-0484
FAST, spoken raw (every element as the XEPs write it), plus bad input: unknown inline
elements, bogus tags and user agents."""
import base64
import hashlib
import hmac
import os
import re
import subprocess
import time
import unittest
import uuid

from harness import DOMAIN, XMPPCTL, Client, RawStream, Redis, Server, ServerTest, resp, run

NS = "urn:xmpp:sasl:2"


def b64(b):
    return base64.b64encode(b).decode()


class Scram:
    """SCRAM-SHA-256 client side (RFC 5802, RFC 7677); cb: tls-exporter data for -PLUS."""

    def __init__(self, user, password, name="sha256", gs2="n,,", cb=b""):
        self.user, self.password, self.name, self.gs2, self.cb = user, password, name, gs2, cb
        self.nonce = b64(os.urandom(18))
        self.bare = f"n={user},r={self.nonce}"

    def first(self):
        return (self.gs2 + self.bare).encode()

    def final(self, server_first):
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        salt = base64.b64decode(attrs["s"])
        salted = hashlib.pbkdf2_hmac(self.name, self.password.encode(), salt, int(attrs["i"]))
        ck = hmac.new(salted, b"Client Key", self.name).digest()
        sk = hashlib.new(self.name, ck).digest()
        without = f"c={b64(self.gs2.encode() + self.cb)},r={attrs['r']}"
        auth = f"{self.bare},{server_first},{without}".encode()
        sig = hmac.new(sk, auth, self.name).digest()
        proof = bytes(a ^ b for a, b in zip(ck, sig))
        server_key = hmac.new(salted, b"Server Key", self.name).digest()
        self.expect = b64(hmac.new(server_key, auth, self.name).digest())
        return f"{without},p={b64(proof)}".encode()


def secured(port):
    s = RawStream(port)
    s.starttls()
    s.open_stream()
    feats = s.recv_until(r"</stream:features>")
    s.buf = b""
    return s, feats


def ht_proof(token, who=b"Initiator"):
    return hmac.new(token.encode(), who, "sha256").digest()


def fast(port, user, token, ua_id, inline="", proof=None):
    """A FAST log-in (HT-SHA-256-NONE, no password): the text up to <success/> or <failure/>."""
    s, _ = secured(port)
    ir = user.encode() + b"\0" + (proof if proof is not None else ht_proof(token))
    s.send(f"<authenticate xmlns='{NS}' mechanism='HT-SHA-256-NONE'><initial-response>{b64(ir)}"
           f"</initial-response><user-agent id='{ua_id}'><software>t</software></user-agent>{inline}"
           f"</authenticate>")
    t = s.recv_until(r"</success>|</failure>")
    s.close()
    return t


def token_of(text):
    m = re.search(r"<token xmlns='urn:xmpp:fast:0' expiry='([^']+)' token='([^']+)'/>", text)
    assert m, text
    return m.group(2), m.group(1)


REQ = "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"


def authenticate(s, user, password, inline="", mech="SCRAM-SHA-256", ua=None):
    """Sends a SASL2 <authenticate/> and answers the challenge; returns the text up to the
    <success/> or <failure/>."""
    ua = ua if ua is not None else f"<user-agent id='{uuid.uuid4()}'><software>t</software></user-agent>"
    if mech == "PLAIN":
        ir = f"\0{user}\0{password}".encode()
    else:
        sc = Scram(user, password, "sha256" if mech == "SCRAM-SHA-256" else "sha1")
        ir = sc.first()
    s.send(f"<authenticate xmlns='{NS}' mechanism='{mech}'><initial-response>{b64(ir)}</initial-response>"
           f"{ua}{inline}</authenticate>")
    t = s.recv_until(r"</challenge>|</success>|</failure>|<failure[^>]*/>")
    m = re.search(r"<challenge xmlns='urn:xmpp:sasl:2'>([^<]*)</challenge>", t)
    if m:
        s.buf = b""
        s.send(f"<response xmlns='{NS}'>{b64(sc.final(base64.b64decode(m.group(1)).decode()))}</response>")
        t = s.recv_until(r"</success>|</failure>")
        if "<success" in t:
            ad = re.search(r"<additional-data>([^<]*)</additional-data>", t)
            assert ad and base64.b64decode(ad.group(1)).decode() == "v=" + sc.expect, t
    s.buf = b""
    return t


class Sasl2Test(ServerTest):
    users = ("alice", "bob")

    def test_feature_after_tls_only(self):
        s = RawStream(self.srv.port)
        s.open_stream()
        plain = s.recv_until(r"</stream:features>")
        self.assertNotIn("urn:xmpp:sasl:2", plain)
        s.close()
        s, feats = secured(self.srv.port)
        m = re.search(r"<authentication xmlns='urn:xmpp:sasl:2'>(.*?)</authentication>", feats)
        self.assertTrue(m, feats)
        self.assertIn("<mechanism>SCRAM-SHA-256</mechanism>", m.group(1))
        self.assertIn("<bind xmlns='urn:xmpp:bind:0'><inline><feature var='urn:xmpp:carbons:2'/>"
                      "<feature var='urn:xmpp:csi:0'/><feature var='urn:xmpp:sm:3'/></inline></bind>", m.group(1))
        self.assertIn("<sm xmlns='urn:xmpp:sm:3'/>", m.group(1))
        s.close()

    def test_scram_success_without_bind_then_legacy_bind(self):
        for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
            s, _ = secured(self.srv.port)
            t = authenticate(s, "alice", "pw", mech=mech)
            self.assertIn(f"<authorization-identifier>alice@{DOMAIN}</authorization-identifier>", t)
            # no stream restart (XEP-0388 §2.6.2): bind on the same stream
            s.bind("legacy")
            self.assertIn(f"alice@{DOMAIN}/legacy", s.buf.decode())
            s.close()

    def test_wrong_password_failure(self):
        s, _ = secured(self.srv.port)
        t = authenticate(s, "alice", "nope")
        self.assertRegex(t, r"<failure xmlns='urn:xmpp:sasl:2'><not-authorized "
                            r"xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        # still unauthenticated: a stanza is refused
        s.send("<message to='bob@localhost'><body>x</body></message>")
        self.assertIn("not-authorized", s.recv_until(r"</stream:stream>"))
        s.close()

    def test_unknown_mechanism(self):
        s, _ = secured(self.srv.port)
        s.send(f"<authenticate xmlns='{NS}' mechanism='X-NOPE'><initial-response>AA==</initial-response>"
               f"</authenticate>")
        self.assertIn("<invalid-mechanism", s.recv_until(r"</failure>"))
        s.close()

    def test_bind2_with_sm_carbons_csi(self):
        s, _ = secured(self.srv.port)
        t = authenticate(s, "alice", "pw", inline=(
            "<bind xmlns='urn:xmpp:bind:0'><tag>phone</tag>"
            "<enable xmlns='urn:xmpp:sm:3' resume='true'/><enable xmlns='urn:xmpp:carbons:2'/>"
            "<inactive xmlns='urn:xmpp:csi:0'/><unknown xmlns='urn:example:nope'/></bind>"))
        m = re.search(r"<authorization-identifier>alice@localhost/phone\.([A-Za-z0-9]{8})"
                      r"</authorization-identifier><bound xmlns='urn:xmpp:bind:0'>"
                      r"<enabled xmlns='urn:xmpp:sm:3' id='([^']+)' resume='true' max='\d+'/></bound></success>", t)
        self.assertTrue(m, t)
        # the carbons IQ's answer is not the client's: nothing but <success/> came
        s.send("<presence/>")
        # carbons on: a message bob sends to alice's other resource is copied here
        other = RawStream(self.srv.port).login("alice", "pw", "desk")
        other.send("<presence/>")
        bob = RawStream(self.srv.port).login("bob", "pw", "b")
        bob.send("<message to='alice@localhost/desk' type='chat' id='m1'><body>hi</body></message>")
        got = s.recv_until(r"<received xmlns='urn:xmpp:carbons:2'>.*</message>", timeout=10)
        self.assertNotIn("bind2-carbons", got)
        # SM: counts; <r/> is answered
        s.send("<r xmlns='urn:xmpp:sm:3'/>")
        s.recv_until(r"<a xmlns='urn:xmpp:sm:3' h='\d+'/>")
        for x in (s, other, bob):
            x.close()

    def test_bind2_csi_inactive_holds_chat_states(self):
        s, _ = secured(self.srv.port)
        t = authenticate(s, "bob", "pw", inline="<bind xmlns='urn:xmpp:bind:0'><tag>c</tag>"
                                                "<inactive xmlns='urn:xmpp:csi:0'/></bind>")
        full = re.search(r"<authorization-identifier>([^<]+)<", t).group(1)
        peer = RawStream(self.srv.port).login("alice", "pw", "cs")
        peer.send(f"<message to='{full}' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/>"
                  "</message><iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        peer.recv_until("id='sync'")  # the chat state was routed before this answer
        s.closed(timeout=0.5)
        self.assertNotIn("composing", s.buf.decode(), "held while inactive (XEP-0352)")
        peer.send(f"<message to='{full}' type='chat'><body>now</body></message>")
        t = s.recv_until(r"<body>now</body>", timeout=10)
        self.assertLess(t.index("composing"), t.index("<body>now</body>"))
        s.close()
        peer.close()

    def test_bind2_without_tag(self):
        s, _ = secured(self.srv.port)
        t = authenticate(s, "bob", "pw", inline="<bind xmlns='urn:xmpp:bind:0'/>")
        self.assertRegex(t, r"<authorization-identifier>bob@localhost/[A-Za-z0-9]{23}</authorization-identifier>"
                            r"<bound xmlns='urn:xmpp:bind:0'></bound>")
        s.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        s.recv_until(r"<iq[^>]*id='p1'")
        s.close()

    def test_bogus_tags_rejected(self):
        for tag in ("x" * 65, "a&#9;b", ""):
            s, _ = secured(self.srv.port)
            t = authenticate(s, "alice", "pw", inline=f"<bind xmlns='urn:xmpp:bind:0'><tag>{tag}</tag></bind>")
            self.assertIn("<malformed-request xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", t)
            self.assertIn("bind tag", t)
            s.close()
        # at the cap (64 bytes, limits.sasl2_text_bytes): accepted
        s, _ = secured(self.srv.port)
        t = authenticate(s, "alice", "pw", inline=f"<bind xmlns='urn:xmpp:bind:0'><tag>{'y' * 64}</tag></bind>")
        self.assertIn(f"/{'y' * 64}.", t)
        s.close()

    def test_bogus_user_agent_rejected(self):
        for ua in ("<user-agent id='not-a-uuid'/>",
                   f"<user-agent id='{uuid.uuid4()}'><software>{'s' * 65}</software></user-agent>",
                   f"<user-agent id='{uuid.uuid4()}'><device></device></user-agent>"):
            s, _ = secured(self.srv.port)
            t = authenticate(s, "alice", "pw", ua=ua)
            self.assertIn("<malformed-request", t)
            self.assertIn("user-agent", t)
            s.close()
        s, _ = secured(self.srv.port)
        t = authenticate(s, "alice", "pw", ua=f"<user-agent id='{uuid.uuid4()}'><software>{'s' * 64}</software>"
                                              f"<device>d</device></user-agent>")
        self.assertIn("<success", t)
        s.close()

    def test_sasl2_before_tls_refused(self):
        s = RawStream(self.srv.port)
        s.open_stream()
        s.recv_until(r"</stream:features>")
        ir = b64(b"\0alice\0pw")
        s.send(f"<authenticate xmlns='{NS}' mechanism='PLAIN'><initial-response>{ir}"
               f"</initial-response></authenticate>")
        t = s.recv_until(r"</stream:stream>")
        self.assertIn("policy-violation", t)
        self.assertNotIn("<success", t)
        s.close()

    def test_inline_resume(self):
        s, _ = secured(self.srv.port)
        t = authenticate(s, "alice", "pw", inline="<bind xmlns='urn:xmpp:bind:0'><tag>res</tag>"
                                                  "<enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>")
        rid = re.search(r"<enabled xmlns='urn:xmpp:sm:3' id='([^']+)'", t).group(1)
        full = re.search(r"<authorization-identifier>([^<]+)<", t).group(1)
        s.send("<presence/>")
        bob = RawStream(self.srv.port).login("bob", "pw", "r")
        bob.send(f"<message to='{full}' type='chat'><body>one</body></message>")
        s.recv_until(r"<body>one</body>")
        s.sock.close()  # dropped, not closed: the session waits (XEP-0198 §5)
        bob.send(f"<message to='{full}' type='chat'><body>two</body></message>")
        s2, _ = secured(self.srv.port)
        t = authenticate(s2, "alice", "pw", inline=f"<resume xmlns='urn:xmpp:sm:3' previd='{rid}' h='0'/>"
                                                   "<bind xmlns='urn:xmpp:bind:0'><tag>res</tag></bind>")
        self.assertIn(f"<authorization-identifier>{full}</authorization-identifier>", t)
        self.assertRegex(t, f"<resumed xmlns='urn:xmpp:sm:3' previd='{rid}' h='\\d+'/></success>")
        t = s2.recv_until(r"<body>two</body>")
        self.assertIn("<body>one</body>", t)  # not acknowledged: sent again
        # a second resume of an unknown id falls back to Bind2, with <failed/> before <bound/>
        s3, _ = secured(self.srv.port)
        t = authenticate(s3, "alice", "pw", inline="<resume xmlns='urn:xmpp:sm:3' previd='nope' h='0'/>"
                                                   "<bind xmlns='urn:xmpp:bind:0'><tag>fb</tag></bind>")
        self.assertRegex(t, r"<authorization-identifier>alice@localhost/fb\.[A-Za-z0-9]{8}</authorization-identifier>"
                            r"<failed xmlns='urn:xmpp:sm:3'><item-not-found [^>]*/></failed>"
                            r"<bound xmlns='urn:xmpp:bind:0'></bound>")
        # and without a bind: <failed/> in <success/>, the client binds itself
        s4, _ = secured(self.srv.port)
        t = authenticate(s4, "alice", "pw", inline="<resume xmlns='urn:xmpp:sm:3' previd='nope' h='0'/>")
        self.assertRegex(t, r"<authorization-identifier>alice@localhost</authorization-identifier><failed ")
        s4.bind("after")
        for x in (s2, s3, s4, bob):
            x.close()


class Sasl2ResourceLimitTest(ServerTest):
    users = ("carol",)
    server_options = {"limits.max_resources": 1}

    def test_bind2_refused_is_a_failure(self):
        a, _ = secured(self.srv.port)
        self.assertIn("<bound", authenticate(a, "carol", "pw", inline="<bind xmlns='urn:xmpp:bind:0'/>"))
        b, _ = secured(self.srv.port)
        t = authenticate(b, "carol", "pw", inline="<bind xmlns='urn:xmpp:bind:0'/>")
        self.assertIn("<temporary-auth-failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", t)
        self.assertIn("too many resources", t)
        self.assertTrue(b.closed())
        a.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        a.recv_until(r"id='p1'")
        a.close()


FAST_OPTS = {"limits.fast_tokens": 2, "limits.auth_fail_ip": 1000, "limits.auth_fail_account": 1000}
# (the refusals here are many, and on purpose: the back-off must not answer for them)


class FastTest(ServerTest):
    users = ("alice", "bob", "dora", "eve")
    server_options = FAST_OPTS

    def token(self, user, ua_id, password="pw", req=None):
        s, feats = secured(self.srv.port)
        self.assertIn("<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-EXPR</mechanism>"
                      "<mechanism>HT-SHA-256-ENDP</mechanism><mechanism>HT-SHA-256-NONE</mechanism></fast>", feats)
        self.assertNotIn("<mechanism>HT-SHA-256-NONE</mechanism></authentication>", feats)
        t = authenticate(s, user, password, ua=f"<user-agent id='{ua_id}'/>", inline=req or REQ)
        s.close()
        self.assertIn("<success", t)
        return token_of(t)[0]

    def ctl(self, *args):
        return subprocess.run([XMPPCTL, "-c", self.srv.conf, *args], capture_output=True, text=True)

    def test_token_then_login_without_password_with_bind2(self):
        ua = str(uuid.uuid4())
        tok = self.token("alice", ua)
        self.assertGreater(len(tok), 64)
        t = fast(self.srv.port, "alice", tok, ua, inline="<bind xmlns='urn:xmpp:bind:0'><tag>f</tag>"
                                                          "<enable xmlns='urn:xmpp:sm:3'/></bind>")
        self.assertIn("<success", t)
        ad = re.search(r"<additional-data>([^<]*)</additional-data>", t).group(1)
        self.assertEqual(base64.b64decode(ad), ht_proof(tok, b"Responder"))
        self.assertRegex(t, r"<authorization-identifier>alice@localhost/f\.[A-Za-z0-9]{8}</authorization-identifier>"
                            r"<bound xmlns='urn:xmpp:bind:0'><enabled xmlns='urn:xmpp:sm:3'/></bound>")
        self.assertNotIn("<token", t, "not asked, not near its expiry: no new token")
        # the store holds no token, only its hash
        stored = self.stored("alice")
        self.assertIn(hashlib.sha256(tok.encode()).digest(), stored)
        self.assertNotIn(tok.encode(), stored)

    def stored(self, user):
        """The store's bytes (SQLite: the database file and its WAL)."""
        data = b""
        for suffix in ("", "-wal"):
            path = os.path.join(self.srv.dir, "xmppd.db" + suffix)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    data += f.read()
        return data

    def test_forged_and_foreign_tokens(self):
        ua, ua2 = str(uuid.uuid4()), str(uuid.uuid4())
        tok = self.token("bob", ua)
        self.token("dora", ua)  # dora has a token for the same user agent id
        for user, proof, who in (("bob", os.urandom(32), ua), ("dora", None, ua), ("bob", None, ua2),
                                 ("nobody", None, ua), ("bob", ht_proof(tok)[:31], ua)):
            t = fast(self.srv.port, user, tok, who, proof=proof)
            self.assertIn("<failure xmlns='urn:xmpp:sasl:2'>", t, (user, who))
            self.assertRegex(t, r"<(not-authorized|malformed-request) xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        # no user agent: no FAST
        s, _ = secured(self.srv.port)
        ir = b"bob\0" + ht_proof(tok)
        s.send(f"<authenticate xmlns='{NS}' mechanism='HT-SHA-256-NONE'><initial-response>{b64(ir)}"
               f"</initial-response></authenticate>")
        self.assertIn("FAST needs a user-agent id", s.recv_until("</failure>"))
        s.close()
        self.assertIn("<success", fast(self.srv.port, "bob", tok, ua), "the right one still works")

    def test_count_replay(self):
        ua = str(uuid.uuid4())
        tok = self.token("eve", ua)
        c1 = "<fast xmlns='urn:xmpp:fast:0' count='1'/>"
        self.assertIn("<success", fast(self.srv.port, "eve", tok, ua, inline=c1))
        t = fast(self.srv.port, "eve", tok, ua, inline=c1)
        self.assertIn("<not-authorized", t)
        self.assertIn("FAST count replayed", t)
        self.assertIn("<success", fast(self.srv.port, "eve", tok, ua, inline="<fast xmlns='urn:xmpp:fast:0' count='7'/>"))
        self.assertIn("<not-authorized", fast(self.srv.port, "eve", tok, ua, inline="<fast xmlns='urn:xmpp:fast:0' count='3'/>"))
        self.assertIn("bad <fast count/>", fast(self.srv.port, "eve", tok, ua, inline="<fast xmlns='urn:xmpp:fast:0' count='-1'/>"))

    def test_count_boundary_last_and_last_plus_one(self):
        ua = str(uuid.uuid4())
        tok = self.token("eve", ua)
        cnt = lambda n: f"<fast xmlns='urn:xmpp:fast:0' count='{n}'/>"
        self.assertIn("<success", fast(self.srv.port, "eve", tok, ua, inline=cnt(41)))
        self.assertIn("FAST count replayed", fast(self.srv.port, "eve", tok, ua, inline=cnt(41)), "count = last")
        self.assertIn("<success", fast(self.srv.port, "eve", tok, ua, inline=cnt(42)), "count = last + 1")
        self.assertIn("FAST count replayed", fast(self.srv.port, "eve", tok, ua, inline=cnt(42)))

    def test_absent_count(self):
        """XEP-0484 §3.2 asks for the count only of a log-in in TLS 0-RTT data (not
        accepted here): without one a token is accepted until it is first used with one;
        from then on a log-in without a count is refused (a replay with its count cut)."""
        ua = str(uuid.uuid4())
        tok = self.token("eve", ua)
        self.assertIn("<success", fast(self.srv.port, "eve", tok, ua))
        self.assertIn("<success", fast(self.srv.port, "eve", tok, ua), "a client that never counts")
        self.assertIn("<success", fast(self.srv.port, "eve", tok, ua, inline="<fast xmlns='urn:xmpp:fast:0' count='1'/>"))
        for inline in ("", "<fast xmlns='urn:xmpp:fast:0'/>"):
            t = fast(self.srv.port, "eve", tok, ua, inline=inline)
            self.assertIn("<not-authorized", t)
            self.assertIn("FAST count required", t)
        self.assertIn("<success", fast(self.srv.port, "eve", tok, ua, inline="<fast xmlns='urn:xmpp:fast:0' count='2'/>"))

    def test_replay_of_an_exact_exchange(self):
        """The same bytes sent again on a new connection (what a TLS 0-RTT replay or a
        relay of a -NONE log-in amounts to): refused, its side effects not repeated."""
        ua = str(uuid.uuid4())
        tok = self.token("dora", ua)
        inline = "<bind xmlns='urn:xmpp:bind:0'><tag>r</tag></bind><fast xmlns='urn:xmpp:fast:0' count='5'/>"
        ir = b64(b"dora\0" + ht_proof(tok))
        exchange = (f"<authenticate xmlns='{NS}' mechanism='HT-SHA-256-NONE'><initial-response>{ir}"
                    f"</initial-response><user-agent id='{ua}'><software>t</software></user-agent>{inline}"
                    f"</authenticate>")
        got = []
        for _ in range(2):
            s, _ = secured(self.srv.port)
            s.send(exchange)
            got.append(s.recv_until(r"</success>|</failure>"))
            s.close()
        self.assertIn("<success", got[0])
        self.assertIn("<bound xmlns='urn:xmpp:bind:0'", got[0])
        self.assertIn("FAST count replayed", got[1])
        self.assertNotIn("<bound", got[1])

    def test_old_token_after_reissue_keeps_its_count(self):
        """A new token does not reset the count of the one it replaces (still valid until
        the new one is used, §3.3)."""
        ua = str(uuid.uuid4())
        old = self.token("bob", ua)
        cnt = lambda n: f"<fast xmlns='urn:xmpp:fast:0' count='{n}'/>"
        self.assertIn("<success", fast(self.srv.port, "bob", old, ua, inline=cnt(5)))
        t = fast(self.srv.port, "bob", old, ua, inline=cnt(6) + REQ)
        self.assertIn("<success", t)
        new = token_of(t)[0]
        self.assertIn("FAST count replayed", fast(self.srv.port, "bob", old, ua, inline=cnt(6)), "count = last")
        self.assertIn("FAST count replayed", fast(self.srv.port, "bob", old, ua, inline=cnt(1)))
        self.assertIn("FAST count required", fast(self.srv.port, "bob", old, ua))
        self.assertIn("<success", fast(self.srv.port, "bob", old, ua, inline=cnt(7)), "count = last + 1")
        # the new token counts on its own, from nothing
        self.assertIn("<success", fast(self.srv.port, "bob", new, ua, inline=cnt(1)))
        self.assertIn("<not-authorized", fast(self.srv.port, "bob", old, ua, inline=cnt(8)), "replaced once the new one is used")
        self.assertIn("FAST count replayed", fast(self.srv.port, "bob", new, ua, inline=cnt(1)), "its count survived the clean-up")
        self.assertIn("<success", fast(self.srv.port, "bob", new, ua, inline=cnt(2)))

    def test_rotation_and_invalidate(self):
        ua = str(uuid.uuid4())
        old = self.token("alice", ua)
        t = fast(self.srv.port, "alice", old, ua, inline=REQ)
        self.assertIn("<success", t)
        new = token_of(t)[0]
        self.assertNotEqual(new, old)
        # §3.3: the old one stays valid until the new one is used
        self.assertIn("<success", fast(self.srv.port, "alice", old, ua))
        self.assertIn("<success", fast(self.srv.port, "alice", new, ua))
        self.assertIn("<not-authorized", fast(self.srv.port, "alice", old, ua))
        self.assertIn("<success", fast(self.srv.port, "alice", new, ua, inline="<fast xmlns='urn:xmpp:fast:0' invalidate='true'/>"))
        self.assertIn("<not-authorized", fast(self.srv.port, "alice", new, ua))

    def test_tokens_per_account_capped(self):
        uas = [str(uuid.uuid4()) for _ in range(3)]
        toks = []
        for ua in uas:  # limits.fast_tokens = 2: the third evicts the one expiring first
            toks.append(self.token("dora", ua))
            time.sleep(1.05)  # expiry has a resolution of a second: order them
        self.assertIn("<not-authorized", fast(self.srv.port, "dora", toks[0], uas[0]))
        self.assertIn("<success", fast(self.srv.port, "dora", toks[1], uas[1]))
        self.assertIn("<success", fast(self.srv.port, "dora", toks[2], uas[2]))

    def test_xmppctl_revoke_and_passwd(self):
        ua, ua2 = str(uuid.uuid4()), str(uuid.uuid4())
        tok, tok2 = self.token("bob", ua), self.token("bob", ua2)
        r = self.ctl("fast-revoke", "bob@localhost", ua)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("1 FAST token of bob@localhost revoked", r.stdout)
        self.assertIn("<not-authorized", fast(self.srv.port, "bob", tok, ua))
        self.assertIn("<success", fast(self.srv.port, "bob", tok2, ua2))
        r = self.ctl("passwd", "bob@localhost", "pw")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("<not-authorized", fast(self.srv.port, "bob", tok2, ua2), "a password change revokes them")


class FastRedisTest(FastTest):
    """The same on the Redis back-end ({u:JID}:f, the Lua scripts)."""

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        cls.redis.start()
        cls.srv = Server(**{"storage.backend": "redis", "storage.redis": f"127.0.0.1:{cls.redis.port}", **FAST_OPTS})
        for u in cls.users:
            cls.srv.adduser(f"{u}@{DOMAIN}", cls.password)
        cls.srv.start()

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.srv.stop() == 0, cls.srv.log_text()
        finally:
            cls.redis.stop()
            cls.redis.cleanup()

    def stored(self, user):
        return resp(self.redis.port, "HGETALL", f"{{u:{user}@{DOMAIN}}}:f")


class FastExpiryTest(ServerTest):
    users = ("alice",)
    server_options = {"limits.fast_token_lifetime": 4}

    def test_expired_token_refused(self):
        ua = str(uuid.uuid4())
        s, _ = secured(self.srv.port)
        t = authenticate(s, "alice", "pw", ua=f"<user-agent id='{ua}'/>", inline=REQ)
        s.close()
        tok, expiry = token_of(t)
        t = fast(self.srv.port, "alice", tok, ua)
        self.assertIn("<success", t)
        end = time.mktime(time.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        if time.time() < end - 2.2:  # more than half of its life left: not rotated
            self.assertNotIn("<token", t)
        while time.time() < end - 0.8:  # (whole seconds: less than 2 s left)
            time.sleep(0.05)
        # past half of its life: a log-in with it gets a new one (rotation)
        t = fast(self.srv.port, "alice", tok, ua)
        self.assertIn("<success", t)
        new, _ = token_of(t)
        self.assertNotEqual(new, tok)
        while time.time() < end + 0.1:  # the clock is the evidence
            time.sleep(0.1)
        self.assertIn("<not-authorized", fast(self.srv.port, "alice", tok, ua))


class PlusStream:
    """STARTTLS with pyOpenSSL, whose connections export keying material (Python's ssl
    does not): the RFC 9266 tls-exporter channel binding of TLS 1.3."""

    def __init__(self, port, tls13=True, domain="localhost"):
        from OpenSSL import SSL
        raw = RawStream(port)
        raw.open_stream(to=domain)
        raw.recv_until(r"</stream:features>")
        raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        raw.recv_until(r"<proceed")
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if not tls13:
            ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        raw.sock.settimeout(None)
        self.conn = SSL.Connection(ctx, raw.sock)
        self.conn.set_connect_state()
        self.conn.set_tlsext_host_name(domain.encode())
        self.conn.do_handshake()
        self.cb = self.conn.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        self.endpoint = endpoint_of(self.conn)
        self.buf = ""
        self.send(RAW_HEADER.replace("to='localhost'", f"to='{domain}'"))
        self.feats = self.until(r"</stream:features>")

    def send(self, text):
        self.conn.sendall(text.encode())

    def until(self, pat):
        while not re.search(pat, self.buf, re.S):
            self.buf += self.conn.recv(65536).decode()
        text, self.buf = self.buf, ""
        return text

    def scram(self, mech, gs2, cb, password="pw"):
        sc = Scram("alice", password, "sha256" if "256" in mech else "sha1", gs2=gs2, cb=cb)
        self.send(f"<authenticate xmlns='{NS}' mechanism='{mech}'><initial-response>{b64(sc.first())}"
                  f"</initial-response></authenticate>")
        t = self.until(r"</challenge>|</failure>")
        m = re.search(r"<challenge xmlns='urn:xmpp:sasl:2'>([^<]*)</challenge>", t)
        if not m:
            return t
        self.send(f"<response xmlns='{NS}'>{b64(sc.final(base64.b64decode(m.group(1)).decode()))}</response>")
        t = self.until(r"</success>|</failure>")
        if "<success" in t:
            ad = re.search(r"<additional-data>([^<]*)</additional-data>", t)
            assert base64.b64decode(ad.group(1)).decode() == "v=" + sc.expect, t
        return t

    def legacy_scram(self, mech, gs2, cb, user="alice", password="pw"):
        """SCRAM over RFC 6120 SASL (<auth/>, <challenge/>, <response/>)."""
        sc = Scram(user, password, "sha256" if "256" in mech else "sha1", gs2=gs2, cb=cb)
        self.send(f"<auth xmlns='{NS_LEGACY}' mechanism='{mech}'>{b64(sc.first())}</auth>")
        t = self.until(r"</challenge>|</failure>")
        m = re.search(r"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>([^<]*)</challenge>", t)
        if not m:
            return t
        self.send(f"<response xmlns='{NS_LEGACY}'>{b64(sc.final(base64.b64decode(m.group(1)).decode()))}</response>")
        t = self.until(r"</success>|</failure>")
        if "<success" in t:
            v = re.search(r"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>([^<]*)</success>", t).group(1)
            assert base64.b64decode(v).decode() == "v=" + sc.expect, t
        return t

    def fast(self, user, token, ua, mech, cb, inline="", proof=None):
        """A FAST log-in with mech (HT-SHA-256-*) and the binding data cb; the text up to
        <success/> or <failure/>."""
        proof = proof if proof is not None else ht_proof(token, b"Initiator" + cb)
        self.last_proof = proof
        ir = user.encode() + b"\0" + proof
        self.send(f"<authenticate xmlns='{NS}' mechanism='{mech}'><initial-response>{b64(ir)}"
                  f"</initial-response><user-agent id='{ua}'><software>t</software></user-agent>{inline}"
                  f"</authenticate>")
        return self.until(r"</success>|</failure>")

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


NS_LEGACY = "urn:ietf:params:xml:ns:xmpp-sasl"


def endpoint_of(conn):
    """RFC 5929 §4.1 tls-server-end-point data: the hash of the server's certificate (its
    signature's hash, SHA-256 for MD5 and SHA-1)."""
    from OpenSSL import crypto
    cert = conn.get_peer_certificate()
    alg = cert.get_signature_algorithm().decode().lower()
    name = "sha384" if "384" in alg else "sha512" if "512" in alg else "sha256"
    return hashlib.new(name, crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)).digest()


RAW_HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
              "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")


class ScramPlusTest(ServerTest):
    """SCRAM -PLUS with tls-exporter (RFC 9266) over SASL2, TLS 1.3 only."""
    users = ("alice",)

    def test_plus_offered_and_bound(self):
        for mech in ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"):
            s = PlusStream(self.srv.port)
            self.assertIn(f"<mechanism>{mech}</mechanism>", s.feats)
            self.assertNotIn("-PLUS", s.feats.split("<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>")[1]
                             .split("</mechanisms>")[0], "not on legacy SASL")
            t = s.scram(mech, "p=tls-exporter,,", s.cb)
            self.assertIn("<success", t)
            s.close()

    def test_wrong_binding_data_or_flags_refused(self):
        cases = (("SCRAM-SHA-256-PLUS", "p=tls-exporter,,", bytes(32), "<not-authorized"),  # another channel's
                 ("SCRAM-SHA-256-PLUS", "p=tls-unique,,", b"", "<malformed-request"),
                 ("SCRAM-SHA-256-PLUS", "n,,", b"", "<malformed-request"),
                 ("SCRAM-SHA-256", "y,,", b"", "<not-authorized"),  # RFC 5802 §6: a downgrade
                 ("SCRAM-SHA-256", "p=tls-exporter,,", None, "<malformed-request"))
        for mech, gs2, cb, want in cases:
            s = PlusStream(self.srv.port)
            t = s.scram(mech, gs2, s.cb if cb is None else cb)
            self.assertIn(want, t, (mech, gs2))
            self.assertNotIn("<success", t)
            s.close()
        s = PlusStream(self.srv.port)
        self.assertIn("<success", s.scram("SCRAM-SHA-256", "n,,", b""), "plain SCRAM still works")
        s.close()

    def test_tls12_binds_with_server_end_point(self):
        """TLS 1.2 has no tls-exporter here (RFC 9266 §2 would need the extended master
        secret): -PLUS binds with tls-server-end-point (RFC 5929 §4), the only type named
        in XEP-0440's <sasl-channel-binding/>."""
        s = PlusStream(self.srv.port, tls13=False)
        self.assertIn("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-server-end-point'/>"
                      "</sasl-channel-binding>", s.feats)
        self.assertIn("<mechanism>SCRAM-SHA-256-PLUS</mechanism>", s.feats)
        t = s.scram("SCRAM-SHA-256-PLUS", "p=tls-exporter,,", s.cb)
        self.assertIn("<malformed-request", t, "a type not offered")
        s.close()
        for mech in ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"):
            s = PlusStream(self.srv.port, tls13=False)
            self.assertIn("<success", s.scram(mech, "p=tls-server-end-point,,", s.endpoint), mech)
            s.close()
        s = PlusStream(self.srv.port, tls13=False)
        self.assertIn("<not-authorized", s.scram("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,",
                                                 hashlib.sha256(b"another certificate").digest()))
        s.close()

    def test_tls13_server_end_point_too(self):
        s = PlusStream(self.srv.port)
        self.assertIn("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/>"
                      "<channel-binding type='tls-server-end-point'/></sasl-channel-binding>", s.feats)
        self.assertIn("<success", s.scram("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", s.endpoint))
        s.close()
        s = PlusStream(self.srv.port)
        self.assertIn("<not-authorized", s.scram("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", s.cb),
                      "the exporter's data under the end point's name")
        s.close()

    def test_slixmpp_logs_in_by_default(self):
        mech = []

        async def go():
            c = Client(self.srv, f"alice@{DOMAIN}/s", "pw")
            try:
                return await c.login(timeout=10)
            finally:
                mech.append(c.plugin["feature_mechanisms"].mech.name)
                c.disconnect()
        self.assertTrue(run(go()))
        self.assertEqual(mech, ["SCRAM-SHA-256"])  # with the y flag: it could bind

    def test_legacy_sasl_has_no_plus_by_default(self):
        s = PlusStream(self.srv.port)
        t = s.legacy_scram("SCRAM-SHA-256-PLUS", "p=tls-exporter,,", s.cb)
        self.assertIn("<invalid-mechanism", t)
        s.close()
        s = PlusStream(self.srv.port)
        self.assertIn("<success", s.legacy_scram("SCRAM-SHA-256", "y,,", b""),
                      "'y' is no downgrade where -PLUS is not offered (slixmpp 1.8.3 sends it)")
        s.close()


class FastChannelBindingTest(ServerTest):
    """HT-SHA-256-EXPR (tls-exporter) and -ENDP (tls-server-end-point): the proof covers
    the channel, the token is bound to the mechanism it was asked for (XEP-0484 §3.2)."""
    users = ("alice", "bob")
    server_options = FAST_OPTS

    def token(self, user, ua, mech):
        s, feats = secured(self.srv.port)
        t = authenticate(s, user, "pw", ua=f"<user-agent id='{ua}'/>",
                         inline=f"<request-token xmlns='urn:xmpp:fast:0' mechanism='{mech}'/>")
        s.close()
        self.assertIn("<success", t)
        return token_of(t)[0]

    def test_expr(self):
        ua = str(uuid.uuid4())
        tok = self.token("alice", ua, "HT-SHA-256-EXPR")
        p = PlusStream(self.srv.port)
        t = p.fast("alice", tok, ua, "HT-SHA-256-EXPR", p.cb)
        self.assertIn("<success", t)
        ad = re.search(r"<additional-data>([^<]*)</additional-data>", t).group(1)
        self.assertEqual(base64.b64decode(ad), ht_proof(tok, b"Responder" + p.cb))
        captured = p.last_proof
        p.close()
        cases = (("HT-SHA-256-EXPR", lambda q: q.cb, captured, "the proof of another connection, replayed"),
                 ("HT-SHA-256-EXPR", lambda q: bytes(32), None, "wrong binding data"),
                 ("HT-SHA-256-EXPR", lambda q: q.endpoint, None, "the end point's data"),
                 ("HT-SHA-256-ENDP", lambda q: q.endpoint, None, "another mechanism than the token's"),
                 ("HT-SHA-256-NONE", lambda q: b"", None, "-NONE with a channel-bound token"))
        for mech, cb, proof, why in cases:
            q = PlusStream(self.srv.port)
            t = q.fast("alice", tok, ua, mech, cb(q), proof=proof)
            q.close()
            self.assertIn("<not-authorized", t, why)
        q = PlusStream(self.srv.port)
        self.assertIn("<success", q.fast("alice", tok, ua, "HT-SHA-256-EXPR", q.cb), "the right one still works")
        q.close()

    def test_endp_on_tls12_and_tls13(self):
        ua = str(uuid.uuid4())
        tok = self.token("bob", ua, "HT-SHA-256-ENDP")
        q = PlusStream(self.srv.port, tls13=False)
        self.assertIn("<fast xmlns='urn:xmpp:fast:0'><mechanism>HT-SHA-256-ENDP</mechanism>"
                      "<mechanism>HT-SHA-256-NONE</mechanism></fast>", q.feats, "no -EXPR on TLS 1.2")
        self.assertIn("<success", q.fast("bob", tok, ua, "HT-SHA-256-ENDP", q.endpoint))
        q.close()
        q = PlusStream(self.srv.port, tls13=False)
        self.assertIn("<invalid-mechanism", q.fast("bob", tok, ua, "HT-SHA-256-EXPR", q.cb))
        q.close()
        for tls13, cb, want in ((True, None, "<success"), (True, hashlib.sha256(b"x").digest(), "<not-authorized"),
                                (False, bytes(32), "<not-authorized"), (True, b"", "<not-authorized")):
            q = PlusStream(self.srv.port, tls13=tls13)
            t = q.fast("bob", tok, ua, "HT-SHA-256-ENDP", q.endpoint if cb is None else cb)
            q.close()
            self.assertIn(want, t, (tls13, cb))
        self.assertIn("<not-authorized", fast(self.srv.port, "bob", tok, ua), "-NONE with an -ENDP token")

    def test_token_for_a_mechanism_not_offered_here(self):
        q = PlusStream(self.srv.port, tls13=False)
        t = q.scram("SCRAM-SHA-256", "n,,", b"")
        q.close()
        self.assertIn("<success", t)
        ua = str(uuid.uuid4())
        s = PlusStream(self.srv.port, tls13=False)
        sc = Scram("alice", "pw")
        s.send(f"<authenticate xmlns='{NS}' mechanism='SCRAM-SHA-256'><initial-response>{b64(sc.first())}"
               f"</initial-response><user-agent id='{ua}'/><request-token xmlns='urn:xmpp:fast:0' "
               f"mechanism='HT-SHA-256-EXPR'/></authenticate>")
        t = s.until(r"</challenge>")
        m = re.search(r"<challenge xmlns='urn:xmpp:sasl:2'>([^<]*)</challenge>", t)
        s.send(f"<response xmlns='{NS}'>{b64(sc.final(base64.b64decode(m.group(1)).decode()))}</response>")
        t = s.until(r"</success>|</failure>")
        s.close()
        self.assertIn("<success", t)
        self.assertNotIn("<token", t, "-EXPR is not offered on TLS 1.2: no token for it (§3.1)")


class LegacyPlusTest(ServerTest):
    """SCRAM -PLUS over RFC 6120 SASL (tls.legacy_sasl_plus), the types in XEP-0440's
    <sasl-channel-binding/>; an RSA certificate (sha256WithRSAEncryption), which is what
    aiosasl's tls-server-end-point provider can read. Clients: the raw one above, and
    aiosasl 0.5 (aioxmpp's SASL library, SCRAMPLUS with its own TLSServerEndPoint provider,
    and with a tls-exporter provider of a few lines, pyOpenSSL's exporter)."""
    users = ("alice",)

    @classmethod
    def setUpClass(cls):
        import tempfile
        cls.tmp = tempfile.mkdtemp(prefix="xmppd-rsa-")
        cert, key = os.path.join(cls.tmp, "cert.pem"), os.path.join(cls.tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes", "-days", "2",
                        "-subj", f"/CN={DOMAIN}", "-keyout", key, "-out", cert], check=True, capture_output=True)
        cls.srv = Server(**{"tls.legacy_sasl_plus": "true", "tls.certificate": cert, "tls.key": key, **FAST_OPTS})
        for u in cls.users:
            cls.srv.adduser(f"{u}@{DOMAIN}", cls.password)
        cls.srv.start()

    @classmethod
    def tearDownClass(cls):
        import shutil
        try:
            assert cls.srv.stop() == 0, cls.srv.log_text()
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def mechanisms(self, feats):
        return re.search(r"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>(.*?)</mechanisms>", feats).group(1)

    def test_offered_with_xep0440_types(self):
        s = PlusStream(self.srv.port)
        self.assertEqual(self.mechanisms(s.feats),
                         "<mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-1-PLUS</mechanism>"
                         "<mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism>")
        self.assertIn("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/>"
                      "<channel-binding type='tls-server-end-point'/></sasl-channel-binding>", s.feats)
        s.close()
        s = PlusStream(self.srv.port, tls13=False)
        self.assertIn("SCRAM-SHA-256-PLUS", self.mechanisms(s.feats))
        self.assertIn("<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-server-end-point'/>"
                      "</sasl-channel-binding>", s.feats)
        s.close()

    def test_raw_client_binds_both_types(self):
        for tls13, mech, gs2, cb in ((True, "SCRAM-SHA-256-PLUS", "p=tls-exporter,,", "cb"),
                                     (True, "SCRAM-SHA-1-PLUS", "p=tls-exporter,,", "cb"),
                                     (True, "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", "endpoint"),
                                     (False, "SCRAM-SHA-1-PLUS", "p=tls-server-end-point,,", "endpoint")):
            s = PlusStream(self.srv.port, tls13=tls13)
            t = s.legacy_scram(mech, gs2, getattr(s, cb))
            s.close()
            self.assertIn("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>", t, (tls13, mech, gs2))

    def test_wrong_binding_refused(self):
        cases = ((True, "SCRAM-SHA-256-PLUS", "p=tls-exporter,,", bytes(32), "<not-authorized"),
                 (True, "SCRAM-SHA-256-PLUS", "p=tls-exporter,,", "endpoint", "<not-authorized"),
                 (True, "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", hashlib.sha256(b"x").digest(), "<not-authorized"),
                 (False, "SCRAM-SHA-256-PLUS", "p=tls-exporter,,", "cb", "<malformed-request"),  # not on TLS 1.2
                 (True, "SCRAM-SHA-256-PLUS", "p=tls-unique,,", b"", "<malformed-request"),  # RFC 9266 §3
                 (True, "SCRAM-SHA-256", "y,,", b"", "<not-authorized"),  # RFC 5802 §6: a downgrade
                 (True, "SCRAM-SHA-1-PLUS", "n,,", b"", "<malformed-request"))
        for tls13, mech, gs2, cb, want in cases:
            s = PlusStream(self.srv.port, tls13=tls13)
            t = s.legacy_scram(mech, gs2, getattr(s, cb) if isinstance(cb, str) else cb)
            s.close()
            self.assertIn(want, t, (tls13, mech, gs2))
            self.assertNotIn("<success", t)

    def test_slixmpp_183_cannot_bind(self):
        """Why tls.legacy_sasl_plus is off by default: slixmpp 1.8.3 (Debian 12) picks
        SCRAM-SHA-1-PLUS and sends p=tls-unique on TLS 1.3, a type we do not offer."""
        fails, mech = [], []

        async def go():
            c = Client(self.srv, f"alice@{DOMAIN}/s", "pw")
            c.add_event_handler("failed_auth", lambda e: fails.append(str(e)))
            try:
                return await c.login(timeout=10)
            finally:
                mech.append(c.plugin["feature_mechanisms"].mech.name)
                c.disconnect()
        self.assertFalse(run(go()))
        self.assertEqual(mech, ["SCRAM-SHA-1-PLUS"])
        self.assertIn("malformed-request", fails[0])

    def aiosasl_login(self, mech_names, provider, tls13=True, password="pw"):
        """aiosasl's SCRAMPLUS over our <auth/>: True on success, the failure otherwise."""
        import asyncio
        import aiosasl
        s = PlusStream(self.srv.port, tls13=tls13)

        class Xmpp(aiosasl.SASLInterface):
            async def reply(self):
                t = s.until(r"</challenge>|</success>|<success[^>]*/>|</failure>")
                m = re.search(r"<(challenge|success) xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>([^<]*)<", t)
                if m:
                    st = aiosasl.SASLState.CHALLENGE if m.group(1) == "challenge" else aiosasl.SASLState.SUCCESS
                    return st, base64.b64decode(m.group(2))
                raise aiosasl.AuthenticationFailure(re.search(r"<failure[^>]*><([a-z-]+)", t).group(1))

            async def initiate(self, mechanism, payload=None):
                s.send(f"<auth xmlns='{NS_LEGACY}' mechanism='{mechanism}'>{b64(payload or b'') or '='}</auth>")
                return await self.reply()

            async def respond(self, payload):
                s.send(f"<response xmlns='{NS_LEGACY}'>{b64(payload) or '='}</response>")
                return await self.reply()

            async def abort(self):
                s.send(f"<abort xmlns='{NS_LEGACY}'/>")
                raise aiosasl.SASLFailure("aborted")

        async def creds():
            return "alice", password

        async def run():
            mech = aiosasl.SCRAMPLUS(creds, provider(s.conn))
            token = mech.any_supported(mech_names)
            assert token is not None, mech_names
            await mech.authenticate(aiosasl.SASLStateMachine(Xmpp()), token)

        try:
            asyncio.run(run())
            return True
        except aiosasl.SASLError as e:
            return str(e)
        finally:
            s.close()

    def test_aiosasl_scram_plus(self):
        import aiosasl
        import aiosasl.channel_binding

        class Exporter(aiosasl.channel_binding.ChannelBindingProvider):
            def __init__(self, conn):
                super().__init__()
                self.conn = conn

            @property
            def cb_name(self):
                return b"tls-exporter"

            def extract_cb_data(self):
                return self.conn.export_keying_material(b"EXPORTER-Channel-Binding", 32)

        class WrongExporter(Exporter):
            def extract_cb_data(self):
                return bytes(32)

        for names in (["SCRAM-SHA-256-PLUS"], ["SCRAM-SHA-1-PLUS"]):
            self.assertIs(self.aiosasl_login(names, aiosasl.channel_binding.TLSServerEndPoint), True, names)
            self.assertIs(self.aiosasl_login(names, aiosasl.channel_binding.TLSServerEndPoint, tls13=False), True, names)
            self.assertIs(self.aiosasl_login(names, Exporter), True, names)
        self.assertIn("not-authorized", self.aiosasl_login(["SCRAM-SHA-256-PLUS"], WrongExporter))
        self.assertIn("not-authorized", self.aiosasl_login(["SCRAM-SHA-256-PLUS"], aiosasl.channel_binding.TLSServerEndPoint,
                                                           password="wrong"))


JS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "js")


class XmppJsTest(ServerTest):
    """xmpp.js 0.14 (@xmpp/client, pinned in tests/js/package-lock.json; installed by
    deploy/install-deps.sh): SASL2 + Bind2 with a password, a FAST token, a log-in with the
    token alone, then a dropped connection resumed (FAST + inline XEP-0198 <resume/>) with
    the message sent meanwhile (tests/js/sasl2_fast.js). Missing node or node_modules is
    a failure, never a skip."""
    users = ("alice",)

    def test_xmppjs_sasl2_bind2_fast_resume(self):
        self.assertTrue(os.path.isdir(os.path.join(JS_DIR, "node_modules", "@xmpp", "client")),
                        "tests/js/node_modules missing: run deploy/install-deps.sh (npm ci in tests/js)")
        r = subprocess.run(["node", "sasl2_fast.js", str(self.srv.port), "alice", "pw"], cwd=JS_DIR,
                           capture_output=True, text=True, timeout=60)
        out = r.stdout
        self.assertEqual(r.returncode, 0, out + r.stderr[-2000:])
        steps = dict(re.findall(r"^STEP (\w+) (.*)$", out, re.M))
        self.assertIn('"mechanism":"SCRAM-SHA-1"', steps["sasl2"])  # xmpp.js's SCRAM
        self.assertIn('"mechanism":"HT-SHA-256-NONE"', steps["token"])
        self.assertIn('"mechanism":"HT-SHA-256-NONE"', steps["fast"])
        self.assertIn('"mechanism":"HT-SHA-256-NONE"', steps["resumed"])
        self.assertIn("message", steps)
        self.assertTrue(out.rstrip().endswith("OK"), out)
        self.assertIn("resumed (h=", self.srv.log_text())


if __name__ == "__main__":
    unittest.main()
