"""XEP-0352 client state indication (edge/csi.c): while a client is inactive, presence
broadcasts (the latest per sender) and bare chat states wait; a message with a body, an
IQ or <active/> writes what waited first, in order; what waits is bounded; <inactive/>
never ends the stream (it used to: <unsupported-stanza-type/>). Raw XML for exact order,
and slixmpp's XEP-0352 plugin."""
import asyncio
import re
import unittest

from harness import DOMAIN, Client, RawStream, ServerTest, run

CSI = "urn:xmpp:csi:0"
CS = "http://jabber.org/protocol/chatstates"


def top_level(text):
    """(name, element) of the stanzas in text, in order."""
    return [(m.group(1), m.group(0)) for m in
            re.finditer(r"<(presence|message|iq)\b[^>]*?(?:/>|>.*?</\1>)", text, re.S)]


class CsiTest(ServerTest):
    users = ("carol", "dave", "erin", "frank", "gina", "hank")
    server_options = {"limits.rate_stanzas": "0"}

    def pair(self, rcv, snd):
        r = RawStream(self.srv.port).login(rcv, "pw", "r")
        self.assertIn(f"<csi xmlns='{CSI}'/>", r.buf.decode(), "the feature is offered")
        r.send("<presence/>")
        r.recv_until("<presence[^>]*/>")
        s = RawStream(self.srv.port).login(snd, "pw", "s")
        r.buf = b""
        return r, s

    def quiet(self, r, tag):
        """What r was written in half a second (the sender's stanzas were handled before
        this is called; anything urgent sent to r, an IQ too, would flush what waits)."""
        r.closed(timeout=0.5)
        return [n for n, _ in top_level(r.buf.decode(errors="replace"))]

    def test_inactive_holds_presence_and_chat_states_until_a_message(self):
        r, s = self.pair("carol", "dave")
        r.send(f"<inactive xmlns='{CSI}'/>")
        to = f"carol@{DOMAIN}/r"
        for i in range(5):
            s.send(f"<presence to='{to}'><status>s{i}</status></presence>")
        s.send(f"<message to='{to}' type='chat'><composing xmlns='{CS}'/></message>")
        s.send(f"<iq type='get' id='sync' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
        s.recv_until("id='sync'")  # dave's stanzas were handled before this answer
        self.assertEqual(self.quiet(r, "q1"), [], "nothing written while inactive")
        r.buf = b""
        s.send(f"<message to='{to}' type='chat' id='m1'><body>hello</body></message>")
        text = r.recv_until("</message>.*</message>")
        got = top_level(text)
        self.assertEqual([n for n, _ in got], ["presence", "message", "message"], text)
        self.assertIn("<status>s4</status>", got[0][1], "only the latest presence of a sender")
        self.assertIn("composing", got[1][1])
        self.assertIn("hello", got[2][1])
        r.close()
        s.close()

    def test_active_writes_what_waited(self):
        r, s = self.pair("erin", "frank")
        r.send(f"<inactive xmlns='{CSI}'/>")
        s.send(f"<presence to='erin@{DOMAIN}/r'><status>away</status></presence>")
        s.send(f"<iq type='get' id='sync' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
        s.recv_until("id='sync'")
        self.assertEqual(self.quiet(r, "q1"), [])
        r.buf = b""
        r.send(f"<active xmlns='{CSI}'/>")
        text = r.recv_until("</presence>")
        self.assertIn("away", text)
        # active again: a presence is written at once
        r.buf = b""
        s.send(f"<presence to='erin@{DOMAIN}/r'><status>back</status></presence>")
        r.recv_until("back")
        r.close()
        s.close()

    def test_active_writes_the_latest_presence_of_each_contact_once(self):
        """Several senders, interleaved changes (as bench/csi.py makes them at scale):
        <active/> writes one presence per sender, its latest, nothing older."""
        r = RawStream(self.srv.port).login("carol", "pw", "multi")
        r.send("<presence/>")
        r.recv_until("<presence[^>]*/>")
        senders = [RawStream(self.srv.port).login(u, "pw", "m") for u in ("dave", "erin", "frank")]
        r.send(f"<inactive xmlns='{CSI}'/>")
        r.send(f"<iq type='get' id='in' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
        r.recv_until("id='in'")
        r.buf = b""
        to = f"carol@{DOMAIN}/multi"
        for n in range(4):
            for k, s in enumerate(senders):
                s.send(f"<presence to='{to}'><status>{k}-{n}</status></presence>")
        for s in senders:  # each sender's presences were handled before its answer
            s.send(f"<iq type='get' id='sync' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
            s.recv_until("id='sync'")
        self.assertEqual(self.quiet(r, "q"), [], "nothing written while inactive")  # (an IQ would flush)
        r.buf = b""
        r.send(f"<active xmlns='{CSI}'/><iq type='get' id='out' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
        got = top_level(r.recv_until("id='out'"))
        statuses = sorted(re.search(r"<status>([^<]*)</status>", e).group(1) for n, e in got if n == "presence")
        self.assertEqual(statuses, ["0-3", "1-3", "2-3"], got)
        for s in senders + [r]:
            s.close()

    def test_what_waits_is_bounded(self):
        r, s = self.pair("gina", "hank")
        r.send(f"<inactive xmlns='{CSI}'/>")
        n = 300
        s.send("".join(f"<message to='gina@{DOMAIN}/r' type='chat' id='c{i}'><paused xmlns='{CS}'/></message>"
                       for i in range(n)))
        # past 256 waiting, they are written: the first 257 come without anything urgent
        text = r.recv_until("id='c256'", timeout=10)
        self.assertEqual(len(re.findall(r"<paused", text)), 257)
        self.assertTrue(self.srv.alive())
        r.close()
        s.close()

    def test_unknown_csi_element_is_a_stream_error(self):
        r = RawStream(self.srv.port).login("carol", "pw", "x")
        r.buf = b""
        r.send(f"<sleepy xmlns='{CSI}'/>")
        self.assertIn("unsupported-stanza-type", r.recv_until("</stream:stream>"))
        r.close()

    def test_slixmpp_csi_plugin(self):
        async def go():
            a = Client(self.srv, f"carol@{DOMAIN}/slix", "pw")
            a.register_plugin("xep_0352")
            enabled = asyncio.get_running_loop().create_future()
            a.add_event_handler("csi_enabled", lambda e: enabled.done() or enabled.set_result(True))
            self.assertTrue(await a.login())
            await asyncio.wait_for(enabled, 5)
            a.send_presence()
            await a.next_presence()  # its own
            a.plugin["xep_0352"].send_inactive()
            b = Client(self.srv, f"dave@{DOMAIN}/slix", "pw")
            self.assertTrue(await b.login())
            b.send_presence(pto=f"carol@{DOMAIN}/slix", pstatus="one")
            b.send_presence(pto=f"carol@{DOMAIN}/slix", pstatus="two")
            await b.plugin["xep_0199"].ping(jid=DOMAIN, timeout=5)  # dave's presences were handled
            await asyncio.sleep(0.5)
            self.assertTrue(a.presences.empty(), "held while inactive")
            a.plugin["xep_0352"].send_active()
            p = await a.next_presence()
            self.assertEqual(p["status"], "two", "only the latest")
            await a.plugin["xep_0199"].ping(jid=DOMAIN, timeout=5)  # written after anything held
            self.assertTrue(a.presences.empty(), "the older one was dropped")
            await a.close()
            await b.close()
        run(go())


if __name__ == "__main__":
    unittest.main()
