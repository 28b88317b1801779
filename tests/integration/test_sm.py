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

    def ack(self, r, h):
        """Acknowledges h stanzas, and waits for the evidence the server processed it:
        its answer to the <r/> sent after it, in order."""
        r.buf = b""
        r.send(f"<a xmlns='{SM}' h='{h}'/><r xmlns='{SM}'/>")
        r.recv_until(r"<a xmlns='urn:xmpp:sm:3' h='\d+'/>")

    def end_marker(self, sender, to, receiver, tag):
        """Sends a last message after everything else and returns every body the
        receiver got up to it (a duplicate routed before the marker is in the list)."""
        sender.send(f"<message to='{to}' type='chat'><body>{tag}</body></message>")
        return bodies(receiver.recv_until(f"{tag}</body>"))

    def test_unacknowledged_messages_go_offline_when_the_connection_dies(self):
        """Each message is received once by a connection whose receipt counts: the
        acknowledged ones on the connection that died, every other one on the next."""
        bob = self.enabled("bob", "phone")
        alice = RawStream(self.srv.port).login("alice", "pw", "pc")
        sent = [f"m{i}" for i in range(1, 8)]
        alice.send("".join(f"<message to='bob@{DOMAIN}/phone' type='chat'><body>{b}</body></message>"
                           for b in sent))
        text = bob.recv_until(r"m7</body>")
        self.assertEqual(bodies(text), sent)
        self.assertIn(f"<r xmlns='{SM}'/>", text, "the server asks for an ack")
        self.ack(bob, 3)  # m1..m3 handled; m4..m7 never acknowledged
        bob.sock.close()  # the connection dies without </stream:stream>
        alice.wait_session_gone(f"bob@{DOMAIN}/phone")
        again = RawStream(self.srv.port).login("bob", "pw", "phone2")
        again.send("<presence/>")
        text = again.recv_until(r"m7</body>")
        self.assertIn("urn:xmpp:delay", text, "they were stored offline")
        got = self.end_marker(alice, f"bob@{DOMAIN}/phone2", again, "end")
        self.assertEqual(got, ["m4", "m5", "m6", "m7", "end"], "exactly the unacknowledged ones, once")
        self.assertEqual(sorted(sent[:3] + got[:-1], key=lambda b: int(b[1:])), sent)
        again.close()
        alice.close()

    def test_unacknowledged_go_to_another_resource(self):
        carol = self.enabled("carol", "phone")
        laptop = RawStream(self.srv.port).login("carol", "pw", "laptop")
        laptop.send("<presence/>")
        laptop.recv_until("<presence[^>]*/>")
        laptop.buf = b""
        alice = RawStream(self.srv.port).login("alice", "pw", "pc2")
        alice.send(f"<message to='carol@{DOMAIN}/phone' type='chat'><body>for the phone</body></message>")
        carol.recv_until("for the phone")
        carol.sock.close()
        alice.wait_session_gone(f"carol@{DOMAIN}/phone")
        got = self.end_marker(alice, f"carol@{DOMAIN}/laptop", laptop, "end")
        self.assertEqual(got, ["for the phone", "end"], "handed to the other resource, once")
        laptop.close()
        alice.close()

    def test_client_never_acking_is_disconnected_and_nothing_is_lost(self):
        """dave acknowledges nothing: what reached the connection that was cut off does
        not count, so every message must arrive on the next connection, exactly once."""
        dave = self.enabled("dave")
        alice = RawStream(self.srv.port).login("alice", "pw", "pc3")
        sent = [f"n{i}" for i in range(20)]
        alice.send("".join(f"<message to='dave@{DOMAIN}/r' type='chat'><body>{b}</body></message>"
                           for b in sent))
        text = dave.recv_until("</stream:stream>")
        self.assertIn("<policy-violation", text)
        self.assertIn("too many unacknowledged stanzas", text)
        self.assertTrue(bodies(text), "some reached the connection before it was cut off")
        alice.wait_session_gone(f"dave@{DOMAIN}/r")
        again = RawStream(self.srv.port).login("dave", "pw", "r2")
        again.send("<presence/>")
        # what the cut-off connection held comes back once its edge lets go of it, which
        # may be just after the new session's presence (then live, else from offline
        # storage): wait for the last, then a marker catches any duplicate
        got = bodies(again.recv_until("n19</body>"))
        got += self.end_marker(alice, f"dave@{DOMAIN}/r2", again, "end")[len(got):]
        self.assertEqual(got.pop(), "end")
        self.assertEqual(len(got), len(set(got)), f"a message arrived twice: {got}")
        self.assertEqual(sorted(got, key=lambda b: int(b[1:])), sent, "every message arrived once")
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
            end = time.monotonic() + 5
            while sm.unacked_queue and time.monotonic() < end:
                await asyncio.sleep(0.05)
            self.assertFalse(sm.unacked_queue, "the server acknowledged every stanza slixmpp sent")
            self.assertEqual(sm.last_ack, 6, "the server's h: the six messages")
            self.assertEqual(sm.handled, 6, "slixmpp counted what it received")
            await a.close()
            await b.close()
        run(go())


if __name__ == "__main__":
    unittest.main()
