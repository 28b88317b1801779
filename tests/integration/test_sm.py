"""XEP-0198 stream management (acks, no resumption): enabling, <r/>/<a/> counting both
ways, and messages a client never acknowledged handed back to the router when its
connection ends (another resource or offline storage gets them: nothing lost to a dead
phone connection). Raw XML for exact counts, and slixmpp's own XEP-0198 plugin."""
import asyncio
import re
import time
import unittest

from harness import DOMAIN, Client, RawStream, ServerTest, run

SM = "urn:xmpp:sm:3"


def bodies(text):
    return re.findall(r"<body>([^<]*)</body>", text)


class StreamManagementTest(ServerTest):
    users = ("alice", "bob", "carol", "dave", "erin", "frank")
    server_options = {"limits.sm_max_unacked": "10", "limits.rate_stanzas": "0"}

    def enabled(self, user, resource="r"):
        r = RawStream(self.srv.port).login(user, "pw", resource)
        self.assertIn(f"<sm xmlns='{SM}'/>", r.buf.decode(), "features offer stream management")
        r.buf = b""
        r.send(f"<enable xmlns='{SM}'/>")
        self.assertNotIn("resume", r.recv_until("<enabled[^>]*/>"), "no resumption offered")
        r.buf = b""
        return r

    def test_client_requests_ack_of_what_it_sent(self):
        r = self.enabled("alice")
        r.send("<presence/><iq type='get' id='q1'><query xmlns='jabber:iq:roster'/></iq>"
               f"<message to='nobody@{DOMAIN}' type='chat'><body>x</body></message>")
        r.send(f"<r xmlns='{SM}'/>")
        self.assertIn("h='3'", r.recv_until(r"<a xmlns='urn:xmpp:sm:3' h='\d+'/>"))
        r.close()

    def test_unacknowledged_messages_go_offline_when_the_connection_dies(self):
        bob = self.enabled("bob", "phone")
        alice = RawStream(self.srv.port).login("alice", "pw", "pc")
        alice.send("".join(f"<message to='bob@{DOMAIN}/phone' type='chat'><body>m{i}</body></message>"
                           for i in range(1, 8)))
        text = bob.recv_until(r"m7</body>")
        self.assertEqual(bodies(text), [f"m{i}" for i in range(1, 8)])
        self.assertIn(f"<r xmlns='{SM}'/>", text, "the server asks for an ack")
        bob.send(f"<a xmlns='{SM}' h='3'/>")  # m1..m3 handled; m4..m7 never acknowledged
        time.sleep(0.3)
        bob.sock.close()  # the connection dies without </stream:stream>
        time.sleep(0.5)
        again = RawStream(self.srv.port).login("bob", "pw", "phone2")
        again.send("<presence/>")
        text = again.recv_until(r"m7</body>")
        self.assertEqual(bodies(text), ["m4", "m5", "m6", "m7"], "exactly the unacknowledged ones")
        self.assertIn("urn:xmpp:delay", text)
        again.close()
        alice.close()

    def test_unacknowledged_go_to_another_resource(self):
        carol = self.enabled("carol", "phone")
        laptop = RawStream(self.srv.port).login("carol", "pw", "laptop")
        laptop.send("<presence/>")
        alice = RawStream(self.srv.port).login("alice", "pw", "pc2")
        alice.send(f"<message to='carol@{DOMAIN}/phone' type='chat'><body>for the phone</body></message>")
        carol.recv_until("for the phone")
        carol.sock.close()
        self.assertIn("for the phone", laptop.recv_until("for the phone"))
        laptop.close()
        alice.close()

    def test_client_never_acking_is_disconnected_and_nothing_is_lost(self):
        dave = self.enabled("dave")
        alice = RawStream(self.srv.port).login("alice", "pw", "pc3")
        alice.send("".join(f"<message to='dave@{DOMAIN}/r' type='chat'><body>n{i}</body></message>"
                           for i in range(20)))
        text = dave.recv_until("</stream:stream>")
        self.assertIn("<policy-violation", text)
        self.assertIn("too many unacknowledged stanzas", text)
        time.sleep(0.5)
        again = RawStream(self.srv.port).login("dave", "pw", "r2")
        again.send("<presence/>")
        got = set(bodies(again.recv_until(r"n19</body>", timeout=5)))
        got |= set(re.findall(r"n\d+", text))
        self.assertEqual(got, {f"n{i}" for i in range(20)}, "every message arrived at least once")
        again.close()
        alice.close()

    def test_errors(self):
        r = RawStream(self.srv.port).login("erin", "pw", "a")
        r.send(f"<r xmlns='{SM}'/>")  # before <enable/>
        self.assertIn("<unsupported-stanza-type", r.recv_until("</stream:stream>"))
        r = self.enabled("erin", "b")
        r.send(f"<enable xmlns='{SM}'/>")  # twice
        self.assertIn("<unexpected-request", r.recv_until("</failed>"))
        r.send(f"<a xmlns='{SM}' h='5'/>")  # acknowledges more than was sent
        text = r.recv_until("</stream:stream>")
        self.assertIn("<undefined-condition", text)
        self.assertIn("handled-count-too-high", text)
        self.assertTrue(self.srv.alive())

    def test_slixmpp_with_its_stream_management_plugin(self):
        async def go():
            a = Client(self.srv, f"frank@{DOMAIN}/sm", "pw")
            a.register_plugin("xep_0198")
            enabled = asyncio.get_running_loop().create_future()
            a.add_event_handler("sm_enabled", lambda e: enabled.done() or enabled.set_result(True))
            self.assertTrue(await a.login())
            await asyncio.wait_for(enabled, 5)
            b = Client(self.srv, f"alice@{DOMAIN}/plain", "pw")
            self.assertTrue(await b.login())
            for i in range(6):
                b.send_message(mto=f"frank@{DOMAIN}/sm", mbody=f"s{i}", mtype="chat")
                a.send_message(mto=f"alice@{DOMAIN}/plain", mbody=f"t{i}", mtype="chat")
            for i in range(6):
                self.assertEqual((await a.next_message())["body"], f"s{i}")
                self.assertEqual((await b.next_message())["body"], f"t{i}")
            sm = a.plugin["xep_0198"]
            sm.request_ack()  # slixmpp asks every `window` stanzas; once more for the tail
            await asyncio.sleep(0.5)
            self.assertEqual(sm.handled, 6 + 0, "slixmpp counted what it received")
            self.assertFalse(sm.unacked_queue, "the server acknowledged every stanza slixmpp sent")
            await a.close()
            await b.close()
        run(go())


if __name__ == "__main__":
    unittest.main()
