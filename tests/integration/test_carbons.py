"""XEP-0280 message carbons (router/mod_carbons.c), with XEP-0334 <no-copy/>: enable and
disable per session, sent copies to the sender's other carbons-enabled sessions, received
copies to the recipient's sessions the RFC 6121 §8.5 rules did not deliver to, nothing
for private, no-copy, errors, groupchat or copies themselves, offline storage, a copy
bounced from a connection that died. Raw XML for exact checks (absence is proven by a
later stanza on the same path: one worker writes to one connection in order), then
slixmpp's xep_0280 plugin and aioxmpp's carbons service."""
import asyncio
import itertools
import ssl
import socket
import time
import unittest
import xml.etree.ElementTree as ET

import aioxmpp
import aioxmpp.carbons

from harness import DOMAIN, Client, RawStream, ServerTest, run, aioxmpp_client

CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
CLIENT = "jabber:client"
SM = "urn:xmpp:sm:3"
Q = lambda ns, name: f"{{{ns}}}{name}"


class Peer:
    """One raw session; parses what it is sent into top-level stanzas (ElementTree)."""

    def __init__(self, srv, user, res, carbons=True, presence=True, prio=0, sm=False):
        self.bare = f"{user}@{DOMAIN}"
        self.jid = f"{self.bare}/{res}"
        self.r = RawStream(srv.port).login(user, "pw", res)
        self.r.buf = b""
        self.parser = ET.XMLPullParser(["start", "end"])
        self.parser.feed(f"<root xmlns='{CLIENT}' xmlns:stream='http://etherx.jabber.org/streams'>".encode())
        self.depth = 0
        self.got = []
        self.ids = itertools.count()
        if sm:
            self.r.send(f"<enable xmlns='{SM}'/>")
            self.wait(lambda e: e.tag == Q(SM, "enabled"))
        if carbons:
            self.ok(self.iq(f"<enable xmlns='{CARBONS}'/>"))
        if presence:
            self.r.send(f"<presence><priority>{prio}</priority></presence>")
            self.wait(lambda e: e.tag == Q(CLIENT, "presence") and e.get("from") == self.jid)

    def pump(self, timeout):
        sock = self.r.sock
        sock.settimeout(timeout)
        try:
            data = sock.recv(65536)
        except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
            return
        if not data:
            raise AssertionError(f"{self.jid}: connection closed; got {[ET.tostring(e) for e in self.got]}")
        self.parser.feed(data)
        for ev, el in self.parser.read_events():
            if ev == "start":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 1:  # inside <root>
                    self.got.append(el)

    def wait(self, pred, timeout=5):
        """The first stanza not yet taken that matches pred; what came before stays."""
        end = time.monotonic() + timeout
        while True:
            for i, el in enumerate(self.got):
                if pred(el):
                    del self.got[i]
                    return el
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.jid}: timed out; got {[ET.tostring(e) for e in self.got]}")
            self.pump(left)

    def send(self, xml):
        self.r.send(xml)

    def iq(self, payload, to=None, type="set"):
        i = f"q{next(self.ids)}"
        self.send(f"<iq type='{type}' id='{i}'" + (f" to='{to}'" if to else "") + f">{payload}</iq>")
        return self.wait(lambda e: e.tag == Q(CLIENT, "iq") and e.get("id") == i)

    def ok(self, iq):
        assert iq.get("type") == "result", ET.tostring(iq)

    def message(self, body):
        """The message with that body, not a copy."""
        return self.wait(lambda e: e.tag == Q(CLIENT, "message") and e.findtext(Q(CLIENT, "body")) == body)

    def copy(self, kind, body):
        """A <sent/> or <received/> copy of the message with that body: (wrapper, inner)."""
        path = f"{Q(CARBONS, kind)}/{Q(FORWARD, 'forwarded')}/{Q(CLIENT, 'message')}"
        w = self.wait(lambda e: e.tag == Q(CLIENT, "message") and e.find(path) is not None
                      and e.find(path).findtext(Q(CLIENT, "body")) == body)
        return w, w.find(path)

    def copies(self):
        """The copies among what was taken so far and not waited for."""
        return [ET.tostring(e) for e in self.got if e.find(Q(CARBONS, "sent")) is not None
                or e.find(Q(CARBONS, "received")) is not None]

    def close(self):
        self.r.close()


def chat(to, body, extra="", type="chat"):
    return f"<message to='{to}' type='{type}'><body>{body}</body>{extra}</message>"


class CarbonsTest(ServerTest):
    users = tuple(f"u{i}" for i in range(40))
    server_options = {"limits.rate_stanzas": "0"}
    n = itertools.count()

    def accounts(self, k):
        """k accounts no other test uses (sessions of earlier tests may still be closing)."""
        return [f"u{next(self.n)}" for _ in range(k)]

    def test_sent_and_received_copies_go_to_the_other_resource_only(self):
        al, bo = self.accounts(2)
        a = Peer(self.srv, al, "a", prio=1)
        b = Peer(self.srv, al, "b", prio=0)
        bob = Peer(self.srv, bo, "x", carbons=False)
        a.send(chat(bob.bare, "m1"))
        bob.message("m1")
        w, inner = b.copy("sent", "m1")
        self.assertEqual((w.get("from"), w.get("to"), w.get("type")), (a.bare, b.jid, "chat"))
        self.assertEqual((inner.get("from"), inner.get("to"), inner.get("type")), (a.jid, bob.bare, "chat"))
        # to the full JID: b gets a received copy
        bob.send(chat(a.jid, "m2"))
        a.message("m2")
        w, inner = b.copy("received", "m2")
        self.assertEqual((w.get("from"), w.get("to")), (a.bare, b.jid))
        self.assertEqual((inner.get("from"), inner.get("to")), (bob.jid, a.jid))
        # to the bare JID: a (priority 1) gets it, b a received copy
        bob.send(chat(a.bare, "m3"))
        a.message("m3")
        b.copy("received", "m3")
        # the sending and receiving session got no copy: m2 and m3 came after any would have
        self.assertEqual(a.copies(), [], "no copy to the session that sent or got the message")
        # b sends: a gets the sent copy
        b.send(chat(bob.bare, "m4"))
        a.copy("sent", "m4")
        self.assertEqual(b.copies(), [])
        for p in (a, b, bob):
            p.close()

    def test_bare_jid_delivered_to_all_top_resources_copies_to_none(self):
        al, bo = self.accounts(2)
        a = Peer(self.srv, al, "a")
        b = Peer(self.srv, al, "b")
        bob = Peer(self.srv, bo, "x", carbons=False)
        bob.send(chat(a.bare, "t1"))
        a.message("t1")
        b.message("t1")
        bob.send(chat(a.jid, "t2"))
        b.copy("received", "t2")
        self.assertEqual(b.copies(), [], "t1 came to b itself: no copy of it")
        a.message("t2")
        self.assertEqual(a.copies(), [])
        for p in (a, b, bob):
            p.close()

    def test_session_without_carbons_gets_nothing(self):
        al, bo = self.accounts(2)
        a = Peer(self.srv, al, "a")
        b = Peer(self.srv, al, "b")
        c = Peer(self.srv, al, "c", carbons=False)
        bob = Peer(self.srv, bo, "x", carbons=False)
        a.send(chat(bob.bare, "x1"))
        b.copy("sent", "x1")
        bob.send(chat(a.jid, "x2"))
        b.copy("received", "x2")
        bob.send(chat(c.jid, "x3"))
        c.message("x3")
        self.assertEqual(c.copies(), [], "no copy of x1 or x2 before x3")
        for p in (a, b, c, bob):
            p.close()

    def test_disable_stops_copies_and_enable_again_resumes(self):
        al, bo = self.accounts(2)
        a = Peer(self.srv, al, "a")
        b = Peer(self.srv, al, "b")
        bob = Peer(self.srv, bo, "x", carbons=False)
        b.ok(b.iq(f"<disable xmlns='{CARBONS}'/>"))
        a.send(chat(bob.bare, "d1"))
        bob.message("d1")
        bob.send(chat(a.jid, "d2"))
        a.message("d2")
        bob.send(chat(b.jid, "d3"))
        b.message("d3")
        self.assertEqual(b.copies(), [], "disabled: no copy of d1 or d2")
        b.ok(b.iq(f"<disable xmlns='{CARBONS}'/>"))  # twice: still a result (§10.1)
        b.ok(b.iq(f"<enable xmlns='{CARBONS}'/>"))
        b.ok(b.iq(f"<enable xmlns='{CARBONS}'/>"))  # twice: on, once
        a.send(chat(bob.bare, "d4"))
        b.copy("sent", "d4")
        bob.send(chat(b.jid, "d5"))
        b.message("d5")
        self.assertEqual(b.copies(), [], "enabled twice, copied once")
        for p in (a, b, bob):
            p.close()

    def test_private_and_no_copy_are_not_copied(self):
        al, bo = self.accounts(2)
        a = Peer(self.srv, al, "a")
        b = Peer(self.srv, al, "b")
        bob = Peer(self.srv, bo, "x", carbons=False)
        private = f"<private xmlns='{CARBONS}'/>"
        nocopy = "<no-copy xmlns='urn:xmpp:hints'/>"
        a.send(chat(bob.bare, "p1", private))
        a.send(chat(bob.bare, "p2", nocopy))
        a.send(chat(bob.bare, "p3"))
        m = bob.message("p1")
        self.assertIsNone(m.find(Q(CARBONS, "private")), "the recipient's server removes it (§9)")
        self.assertEqual(m.findtext(Q(CLIENT, "body")), "p1")
        b.copy("sent", "p3")
        self.assertEqual(b.copies(), [], "no sent copy of p1, p2")
        bob.send(chat(a.jid, "p4", private))
        bob.send(chat(a.jid, "p5", nocopy))
        bob.send(chat(a.jid, "p6"))
        b.copy("received", "p6")
        self.assertEqual(b.copies(), [], "no received copy of p4, p5")
        for p in (a, b, bob):
            p.close()

    def test_which_messages_are_copied(self):
        al, bo = self.accounts(2)
        a = Peer(self.srv, al, "a")
        b = Peer(self.srv, al, "b")
        bob = Peer(self.srv, bo, "x", carbons=False)
        cs = "<composing xmlns='http://jabber.org/protocol/chatstates'/>"
        receipt = "<received xmlns='urn:xmpp:receipts' id='r1'/>"
        # not copied: errors, groupchat, headline and normal without IM payload, copies
        bob.send(f"<message to='{a.jid}' type='error'><body>e1</body><error type='cancel'>"
                 "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        a.send(f"<message to='{bob.jid}' type='error'><body>e2</body><error type='cancel'>"
               "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
        bob.send(chat(a.jid, "g1", type="groupchat"))
        bob.send(chat(a.jid, "h1", type="headline"))
        bob.send(f"<message to='{a.jid}'><subject>s1</subject></message>")
        forged = (f"<received xmlns='{CARBONS}'><forwarded xmlns='{FORWARD}'>"
                  f"<message from='{bob.jid}' to='{a.jid}' type='chat'><body>inner</body></message>"
                  "</forwarded></received>")
        bob.send(f"<message to='{a.jid}' type='chat'><body>c1</body>{forged}</message>")
        a.send(f"<message to='{bob.jid}' type='chat'><body>c2</body>{forged}</message>")
        # copied: chat, normal with a body, chat states and receipts without a body
        bob.send(chat(a.jid, "n1", type="normal"))
        bob.send(f"<message to='{a.jid}'><body>n2</body></message>")
        bob.send(f"<message to='{a.jid}' id='cs1'>{cs}</message>")
        bob.send(f"<message to='{a.jid}' id='rc1'>{receipt}</message>")
        bob.send(chat(a.jid, "end"))
        b.copy("received", "end")
        for body in ("n1", "n2"):
            w, _ = b.copy("received", body)
            self.assertEqual(w.get("type"), "normal" if body == "n1" else None, "the same type")
        b.wait(lambda e: e.find(f".//{Q(CLIENT, 'message')}[@id='cs1']") is not None)
        b.wait(lambda e: e.find(f".//{Q(CLIENT, 'message')}[@id='rc1']") is not None)
        self.assertEqual(b.copies(), [], "nothing else was copied")
        bob.message("e2")
        bob.message("c2")
        for p in (a, b, bob):
            p.close()

    def test_message_to_own_account(self):
        (al,) = self.accounts(1)
        a = Peer(self.srv, al, "a")
        b = Peer(self.srv, al, "b")
        c = Peer(self.srv, al, "c")
        a.send(chat(b.jid, "self1"))
        b.message("self1")
        w, inner = c.copy("received", "self1")
        self.assertEqual(inner.get("from"), a.jid)
        self.assertEqual(c.copies(), [], "one copy, not a sent and a received one")
        c.send(chat(a.jid, "self2"))
        a.message("self2")
        self.assertEqual(a.copies(), [], "the sender gets no copy of its own message")
        for p in (a, b, c):
            p.close()

    def test_offline_storage(self):
        """A message stored offline is copied at once to the carbons-enabled sessions
        bound but not available; delivered later from storage, it is not copied again."""
        al, bo = self.accounts(2)
        c = Peer(self.srv, al, "c", presence=False)
        bob = Peer(self.srv, bo, "x", carbons=False)
        bob.send(chat(c.bare, "o1"))
        c.copy("received", "o1")
        a = Peer(self.srv, al, "a", presence=False)
        a.send("<presence/>")
        m = a.message("o1")
        self.assertIsNotNone(m.find("{urn:xmpp:delay}delay"), "from offline storage")
        bob.send(chat(c.jid, "o2"))
        c.message("o2")
        self.assertEqual(c.copies(), [], "no second copy when storage delivers it")
        for p in (a, c, bob):
            p.close()

    def test_copy_bounced_from_a_dead_connection_is_dropped(self):
        """b takes a copy under XEP-0198 and dies without acknowledging it: the copy is not
        routed again as a message (a would get a stray copy, or storage would keep it)."""
        al, bo = self.accounts(2)
        a = Peer(self.srv, al, "a", carbons=False)
        b = Peer(self.srv, al, "b", sm=True, presence=False)
        bob = Peer(self.srv, bo, "x", carbons=False)
        bob.send(chat(a.jid, "k1"))
        b.copy("received", "k1")
        bob.send(chat(b.jid, "k2"))
        b.message("k2")
        b.close()  # k1's copy then k2 go back to the shard, in that order
        a.message("k1")
        a.message("k2")  # the bounced k2 goes to the bare JID: a
        self.assertEqual(a.copies(), [], "the bounced copy was dropped")
        a.close()
        # nothing was stored either
        z = Peer(self.srv, al, "z", carbons=False)
        bob.send(chat(z.jid, "k3"))
        z.message("k3")
        self.assertEqual([ET.tostring(e) for e in z.got if e.tag == Q(CLIENT, "message")], [])
        z.close()
        bob.close()

    def test_bad_requests(self):
        al, bo = self.accounts(2)
        a = Peer(self.srv, al, "a", carbons=False)
        bob = Peer(self.srv, bo, "x", carbons=False)

        def error(iq, cond):
            self.assertEqual(iq.get("type"), "error", ET.tostring(iq))
            self.assertIsNotNone(iq.find(f"{Q(CLIENT, 'error')}/{{urn:ietf:params:xml:ns:xmpp-stanzas}}{cond}"),
                                 ET.tostring(iq))

        # someone else's account: refused, and a's state is untouched
        error(bob.iq(f"<enable xmlns='{CARBONS}'/>", to=a.bare), "service-unavailable")
        error(a.iq(f"<enable xmlns='{CARBONS}'/>", type="get"), "bad-request")
        error(a.iq(f"<carbons xmlns='{CARBONS}'/>"), "bad-request")
        error(a.iq(f"<enable xmlns='{CARBONS}'><x/></enable>"), "bad-request")
        b = Peer(self.srv, al, "b")
        bob.send(chat(a.jid, "b1"))
        b.copy("received", "b1")
        # a itself: to its bare JID and to the server, both accepted
        a.ok(a.iq(f"<enable xmlns='{CARBONS}'/>", to=a.bare))
        a.ok(a.iq(f"<disable xmlns='{CARBONS}'/>", to=DOMAIN))
        a.ok(a.iq(f"<enable xmlns='{CARBONS}'/>", to=DOMAIN))
        b.send(chat(bob.bare, "b2"))
        a.copy("sent", "b2")
        self.assertEqual(a.copies(), [], "bob's enable did not turn a's carbons on")
        self.assertTrue(self.srv.alive())
        for p in (a, b, bob):
            p.close()

    def test_disco_features(self):
        (al,) = self.accounts(1)
        a = Peer(self.srv, al, "a", carbons=False, presence=False)
        for to in (DOMAIN, a.bare):
            iq = a.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", to=to, type="get")
            feats = [f.get("var") for f in iq.iter("{http://jabber.org/protocol/disco#info}feature")]
            self.assertIn(CARBONS, feats, to)
        a.close()


class CarbonsSlixmppTest(ServerTest):
    users = ("alice", "bob")

    def test_slixmpp_xep_0280(self):
        async def go():
            clients = []
            for jid in (f"alice@{DOMAIN}/one", f"alice@{DOMAIN}/two", f"bob@{DOMAIN}/x"):
                c = Client(self.srv, jid, "pw")
                c.register_plugin("xep_0280")
                c.sent_q, c.recv_q = asyncio.Queue(), asyncio.Queue()
                c.add_event_handler("carbon_sent", lambda m, c=c: c.sent_q.put_nowait(m))
                c.add_event_handler("carbon_received", lambda m, c=c: c.recv_q.put_nowait(m))
                self.assertTrue(await c.login())
                c.send_presence()
                clients.append(c)
            one, two, bob = clients
            await one.plugin["xep_0280"].enable()
            await two.plugin["xep_0280"].enable()
            one.send_message(mto=f"bob@{DOMAIN}", mbody="hi bob", mtype="chat")
            m = await bob.next_message(pred=lambda m: m["body"] == "hi bob")
            sent = await asyncio.wait_for(two.sent_q.get(), 5)
            fwd = sent["carbon_sent"]
            self.assertEqual((fwd["body"], str(fwd["from"]), str(fwd["to"])), ("hi bob", str(one.boundjid), f"bob@{DOMAIN}"))
            bob.send_message(mto=one.boundjid, mbody="hi one", mtype="chat")
            await one.next_message(pred=lambda m: m["body"] == "hi one")
            rec = await asyncio.wait_for(two.recv_q.get(), 5)
            self.assertEqual(rec["carbon_received"]["body"], "hi one")
            self.assertTrue(one.sent_q.empty() and one.recv_q.empty(), "no copy to one")
            # private (slixmpp's PrivateCarbon) and disable
            msg = one.make_message(mto=f"bob@{DOMAIN}", mbody="secret", mtype="chat")
            msg.enable("carbon_private")
            msg.send()
            await two.plugin["xep_0280"].disable()
            one.send_message(mto=f"bob@{DOMAIN}", mbody="after disable", mtype="chat")
            await bob.next_message(pred=lambda m: m["body"] == "after disable")
            await two.plugin["xep_0280"].enable()
            one.send_message(mto=f"bob@{DOMAIN}", mbody="again", mtype="chat")
            sent = await asyncio.wait_for(two.sent_q.get(), 5)
            self.assertEqual(sent["carbon_sent"]["body"], "again", "no copy of secret nor of after disable")
            for c in clients:
                await c.close()
        run(go())


class CarbonsAioxmppTest(ServerTest):
    users = ("carol", "dave")

    def client(self, jid):
        return aioxmpp_client(self.srv, jid)[1]

    def test_aioxmpp_carbons(self):
        async def go():
            phone, laptop, dave = (self.client(j) for j in
                                   (f"carol@{DOMAIN}/phone", f"carol@{DOMAIN}/laptop", f"dave@{DOMAIN}/x"))
            inbox = {c: asyncio.Queue() for c in (phone, laptop, dave)}
            seen = {c: [] for c in (phone, laptop, dave)}  # every message, in order

            def catch(c):
                def f(msg):
                    inbox[c].put_nowait(msg)
                    seen[c].append(msg)
                    return msg
                return f

            async def next_msg(c, pred):
                while True:
                    m = await asyncio.wait_for(inbox[c].get(), 5)
                    if pred(m):
                        return m

            for c in (phone, laptop, dave):
                c.stream.app_inbound_message_filter.register(catch(c), 0)
            async with phone.connected(), laptop.connected(), dave.connected():
                await phone.summon(aioxmpp.CarbonsClient).enable()
                await laptop.summon(aioxmpp.CarbonsClient).enable()
                msg = aioxmpp.Message(type_=aioxmpp.MessageType.CHAT, to=aioxmpp.JID.fromstr(f"dave@{DOMAIN}"))
                msg.body[None] = "from the phone"
                await phone.send(msg)
                m = await next_msg(laptop, lambda m: m.xep0280_sent is not None)
                self.assertEqual(m.from_, aioxmpp.JID.fromstr(f"carol@{DOMAIN}"))
                self.assertEqual(m.xep0280_sent.stanza.body.any(), "from the phone")
                reply = aioxmpp.Message(type_=aioxmpp.MessageType.CHAT, to=phone.local_jid)
                reply.body[None] = "to the phone"
                await dave.send(reply)
                await next_msg(phone, lambda m: m.body.any() == "to the phone")
                m = await next_msg(laptop, lambda m: m.xep0280_received is not None)
                self.assertEqual(m.xep0280_received.stanza.body.any(), "to the phone")
                self.assertEqual(m.xep0280_received.stanza.from_, dave.local_jid)
                await laptop.summon(aioxmpp.CarbonsClient).disable()
                msg = aioxmpp.Message(type_=aioxmpp.MessageType.CHAT, to=aioxmpp.JID.fromstr(f"dave@{DOMAIN}"))
                msg.body[None] = "unseen"
                await phone.send(msg)
                await next_msg(dave, lambda m: m.body.any() == "unseen")
                reply = aioxmpp.Message(type_=aioxmpp.MessageType.CHAT, to=laptop.local_jid)
                reply.body[None] = "to the laptop"
                await dave.send(reply)
                m = await next_msg(laptop, lambda m: True)
                self.assertEqual(m.body.any(), "to the laptop", "disabled: no copy of unseen came first")
                m = await next_msg(phone, lambda m: m.xep0280_received is not None)
                self.assertEqual(m.xep0280_received.stanza.body.any(), "to the laptop")
                copies = [(m.xep0280_sent or m.xep0280_received).stanza.body.any() for m in seen[phone]
                          if m.xep0280_sent or m.xep0280_received]
                self.assertEqual(copies, ["to the laptop"], "no copy of what the phone sent or got itself")
                copies = [(m.xep0280_sent or m.xep0280_received).stanza.body.any() for m in seen[laptop]
                          if m.xep0280_sent or m.xep0280_received]
                self.assertEqual(copies, ["from the phone", "to the phone"], "none while disabled")
        run(go())


if __name__ == "__main__":
    unittest.main()
