"""XEP-0198 §5 stream resumption: a session whose connection dropped is detached, not
closed, for limits.sm_resume_timeout seconds; a new connection of the same account takes
it over with <resume previd h/>: what the client did not acknowledge, and what arrived
meanwhile, is written exactly once, under the same full JID, with no presence change seen
by contacts. Raw XML for exact h accounting; slixmpp's xep_0198 plugin for a real client
that reconnects and resumes under load."""
import asyncio
import re
import signal
import time
import socket
import threading
import unittest
from datetime import timedelta

from harness import DOMAIN, SANITIZED, Client, RawStream, ServerTest, resp, run

SM = "urn:xmpp:sm:3"


async def paced_send(client, to, ids):
    """A slixmpp client sends one chat message per id (body and id both the id), pausing
    5 ms every 20: a burst the server paces, not one write."""
    for i, mid in enumerate(ids):
        m = client.make_message(mto=to, mbody=mid, mtype="chat")
        m["id"] = mid
        m.send()
        if i % 20 == 0:
            await asyncio.sleep(0.005)


def bodies(text):
    return re.findall(r"<body>([^<]*)</body>", text)


def message(to, body):
    return f"<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"


class Base(ServerTest):
    def enable_resume(self, user, resource="r"):
        """A bound stream with resumption enabled; returns (stream, previd, max)."""
        r = RawStream(self.srv.port).login(user, "pw", resource)
        r.buf = b""
        r.send(f"<enable xmlns='{SM}' resume='true'/>")
        text = r.recv_until("<enabled[^>]*/>")
        m = re.search(r"<enabled xmlns='urn:xmpp:sm:3' id='([0-9a-f]{40})' resume='true' max='(\d+)'/>", text)
        self.assertIsNotNone(m, text)
        r.buf = b""
        return r, m.group(1), int(m.group(2))

    def authed(self, user):
        """A new stream authenticated as user, not bound (where <resume/> goes)."""
        r = RawStream(self.srv.port)
        r.starttls()
        r.auth_plain(user, "pw")
        self.assertIn(f"<sm xmlns='{SM}'/>", r.buf.decode())
        r.buf = b""
        return r

    def resume(self, user, previd, h):
        r = self.authed(user)
        r.send(f"<resume xmlns='{SM}' previd='{previd}' h='{h}'/>")
        text = r.recv_until(r"<resumed[^>]*/>|</failed>")
        return r, text

    def barrier(self, r, bare):
        """Waits until what r sent to bare before this has been handled by bare's shard:
        the router answers an IQ to the bare JID on the account's behalf from there."""
        pid = f"bar{time.monotonic_ns()}"
        r.send(f"<iq type='get' to='{bare}' id='{pid}'><ping xmlns='urn:xmpp:ping'/></iq>")
        r.recv_until(f"<iq[^>]*id='{pid}'")

    def ack(self, r, h):
        r.buf = b""
        r.send(f"<a xmlns='{SM}' h='{h}'/><r xmlns='{SM}'/>")
        r.recv_until(r"<a xmlns='urn:xmpp:sm:3' h='\d+'/>")

    def kill(self, r, full_jid, watcher):
        """Drops r's TCP connection (no </stream:stream>) and waits until the server saw
        it: the session is detached (still bound: an IQ to it goes unanswered)."""
        line = f"{full_jid} detached for resumption"
        before = self.srv.log_text().count(line)
        r.sock.close()
        end = time.monotonic() + 5
        while time.monotonic() < end:
            if self.srv.log_text().count(line) > before:
                return
            time.sleep(0.02)
        raise AssertionError("the session was not detached:\n" + self.srv.log_text()[-3000:])


class ResumeTest(Base):
    users = ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank")
    server_options = {"limits.sm_max_unacked": "50", "limits.rate_stanzas": "0",
                      "limits.sm_resume_timeout": "60", "server.log_level": "info"}

    def test_resume_exact_h_and_everything_once(self):
        """bob got m1..m5, acknowledged m1..m3, handled m4..m5 without saying so; the
        connection dies; m6..m9 arrive while detached. The resume with h=5 gets
        <resumed h=(what bob sent)/> and m6..m9 exactly once, then the stream goes on
        with the same full JID and coherent counters."""
        bob, previd, mx = self.enable_resume("bob", "phone")
        self.assertEqual(mx, 60)
        alice = RawStream(self.srv.port).login("alice", "pw", "pc")
        alice.send("<presence/>")
        bob.send(f"<presence to='alice@{DOMAIN}/pc'/>")  # directed: its end would be seen
        alice.recv_until(f"<presence[^>]*from='bob@{DOMAIN}/phone'")
        alice.send("".join(message(f"bob@{DOMAIN}/phone", f"m{i}") for i in range(1, 6)))
        self.assertEqual(bodies(bob.recv_until("m5</body>")), [f"m{i}" for i in range(1, 6)])
        self.ack(bob, 2)
        self.kill(bob, f"bob@{DOMAIN}/phone", alice)
        alice.buf = b""
        alice.send("".join(message(f"bob@{DOMAIN}/phone", f"m{i}") for i in range(6, 10)))
        self.barrier(alice, f"bob@{DOMAIN}")  # m6..m9 routed before this
        # bob handled m1..m3 (acknowledged 2 of them); m4, m5 were lost with the connection
        b2, text = self.resume("bob", previd, 3)
        # bob sent one stanza since enabling (the directed presence)
        self.assertRegex(text, rf"<resumed xmlns='{SM}' previd='{previd}' h='1'/>")
        alice.send(message(f"bob@{DOMAIN}/phone", "end"))
        raw = b2.recv_until("end</body>")
        got = bodies(raw)
        self.assertEqual(got, ["m4", "m5", "m6", "m7", "m8", "m9", "end"],
                         "each unhandled message once, in order")
        # h continues from 3: 3 + 7 = 10 is what bob may acknowledge now
        self.ack(b2, 10)
        b2.buf = b""
        b2.send(f"<r xmlns='{SM}'/>")
        self.assertIn("h='1'", b2.recv_until(r"<a xmlns='urn:xmpp:sm:3' h='\d+'/>"))
        # the session goes on under its full JID: no bind, no presence change for alice
        b2.send(message(f"alice@{DOMAIN}/pc", "back"))
        text = alice.recv_until("back</body>")
        self.assertIn(f"from='bob@{DOMAIN}/phone'", re.search(r"<message[^>]*>[^\n]*?back</body>", text).group(0))
        self.assertNotIn("type='unavailable'", text, "alice saw no unavailable presence across the resume")
        self.assertNotIn("handled-count-too-high", b2.buf.decode())
        # bob may resume again with the same id after another drop
        self.kill(b2, f"bob@{DOMAIN}/phone", alice)
        b3, text = self.resume("bob", previd, 10)
        self.assertIn("<resumed", text)
        b3.send("<presence type='unavailable'/></stream:stream>")
        self.assertIn("unavailable", alice.recv_until("type='unavailable'"))
        b3.close()
        alice.close()

    def test_resume_with_another_accounts_id_fails(self):
        carol, previd, _ = self.enable_resume("carol", "phone")
        dave = RawStream(self.srv.port).login("dave", "pw", "pc")
        dave.send(message(f"carol@{DOMAIN}/phone", "secret"))
        carol.recv_until("secret</body>")
        self.kill(carol, f"carol@{DOMAIN}/phone", dave)
        thief, text = self.resume("erin", previd, 0)
        self.assertIn("<item-not-found", text)
        self.assertNotIn("<resumed", text)
        self.assertNotIn("secret", thief.recv_until("</failed>"))
        # the thief is left to bind normally, as itself
        thief.bind("x")
        self.assertIn(f"erin@{DOMAIN}/x", thief.buf.decode())
        # bogus ids fail the same way
        for bad in ("0" * 40, previd[:8] + "0" * 32, previd[:-1] + ("0" if previd[-1] != "0" else "1"), "x"):
            r, text = self.resume("carol", bad, 0)
            self.assertIn("<item-not-found", text, bad)
            r.close()
        # the owner still can
        c2, text = self.resume("carol", previd, 0)
        self.assertIn("<resumed", text)
        self.assertEqual(bodies(c2.recv_until("secret</body>")), ["secret"])
        for s in (c2, thief, dave):
            s.close()

    def test_resume_after_replacement_by_a_new_bind_fails(self):
        frank, previd, _ = self.enable_resume("frank", "phone")
        gina = RawStream(self.srv.port).login("gina", "pw", "pc")
        gina.send(message(f"frank@{DOMAIN}/phone", "q1"))
        frank.recv_until("q1</body>")
        self.kill(frank, f"frank@{DOMAIN}/phone", gina)
        again = RawStream(self.srv.port).login("frank", "pw", "phone")  # the same resource
        self.assertIn(f"frank@{DOMAIN}/phone</jid>", again.buf.decode())
        again.send("<presence/>")
        # the unacknowledged q1 went to the new session, not lost
        self.assertIn("q1</body>", again.recv_until("q1</body>"))
        r, text = self.resume("frank", previd, 0)
        self.assertIn("<item-not-found", text)
        for s in (r, again, gina):
            s.close()

    def test_resume_on_the_other_edge_thread(self):
        """server.io_threads=2: connections spread over both threads; resumes repeat until
        the server has handed a detached session from one thread to the other (the log
        says so), each one checked for exactly-once delivery."""
        hank, previd, _ = self.enable_resume("hank", "phone")
        alice = RawStream(self.srv.port).login("alice", "pw", "pc2")
        h = 0
        for n in range(40):
            alice.send(message(f"hank@{DOMAIN}/phone", f"x{n}"))
            hank.recv_until(f"x{n}</body>")
            self.kill(hank, f"hank@{DOMAIN}/phone", alice)
            alice.send(message(f"hank@{DOMAIN}/phone", f"y{n}"))
            self.barrier(alice, f"hank@{DOMAIN}")
            # several connections at once so that the kernel spreads them over threads
            extra = [RawStream(self.srv.port) for _ in range(3)]
            hank, text = self.resume("hank", previd, h)
            self.assertIn("<resumed", text)
            self.assertEqual(bodies(hank.recv_until(f"y{n}</body>")), [f"x{n}", f"y{n}"])
            h += 2
            for e in extra:
                e.close()
            if "handed over to edge" in self.srv.log_text():
                break
        else:
            self.fail("no resume landed on the other edge thread in 40 tries")
        hank.close()
        alice.close()

    def test_bad_resume_requests(self):
        r = self.authed("dave")
        r.send(f"<resume xmlns='{SM}' h='0'/>")
        self.assertIn("<bad-request", r.recv_until("</failed>"))
        r.buf = b""
        r.send(f"<resume xmlns='{SM}' previd='{'a' * 32}' h='99999999999'/>")
        self.assertIn("<bad-request", r.recv_until("</failed>"))
        r.close()
        # a bound stream cannot resume
        b, previd, _ = self.enable_resume("dave", "d1")
        b.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
        self.assertIn("<unexpected-request", b.recv_until("</failed>"))
        # h beyond what was sent: §4, the session cannot go on. The message to nobody is
        # answered with an error, which may reach dave before the connection drops (1
        # sent) or not (0): h=2 is beyond either way
        b.send(f"<message to='nobody@{DOMAIN}' type='chat'><body>x</body></message>")
        self.kill(b, f"dave@{DOMAIN}/d1", None)
        r, text = self.resume("dave", previd, 2)
        self.assertIn("<item-not-found", text)
        r2, text = self.resume("dave", previd, 0)
        self.assertIn("<item-not-found", text, "the session ended")
        for s in (r, r2):
            s.close()


class ResumeInterplayTest(Base):
    users = ("alice", "bob", "carol")
    server_options = {"limits.rate_stanzas": "0", "limits.sm_resume_timeout": "60", "server.log_level": "info"}

    def test_csi_held_stanzas_come_after_resumed_and_the_stream_starts_active(self):
        """XEP-0352 §5.2: the CSI state is not restored on resumption; what CSI held when
        the connection dropped is written after <resumed/>."""
        bob, previd, _ = self.enable_resume("bob", "phone")
        alice = RawStream(self.srv.port).login("alice", "pw", "pc")
        bob.send("<inactive xmlns='urn:xmpp:csi:0'/>")
        alice.send(f"<presence to='bob@{DOMAIN}/phone'><status>held</status></presence>")
        self.barrier(alice, f"bob@{DOMAIN}")
        bob.send(f"<r xmlns='{SM}'/>")
        self.assertNotIn("held", bob.recv_until(r"<a xmlns='urn:xmpp:sm:3' h='\d+'/>"), "held while inactive")
        self.kill(bob, f"bob@{DOMAIN}/phone", alice)
        b2, text = self.resume("bob", previd, 0)
        self.assertIn("<resumed", text)
        self.assertIn("<status>held</status>", b2.recv_until("held</status>"))
        # active now: a presence is written at once, not held
        alice.send(f"<presence to='bob@{DOMAIN}/phone'><status>now</status></presence>")
        b2.recv_until("now</status>")
        b2.close()
        alice.close()

    def test_offline_messages_unacknowledged_survive_a_resume(self):
        """Messages from offline storage (BUS_F_OFFLINE) stay stored until acknowledged:
        across a resume they are sent again once, and once acknowledged on the resumed
        stream they are gone from storage."""
        alice = RawStream(self.srv.port).login("alice", "pw", "pc")
        alice.send("".join(message(f"carol@{DOMAIN}", f"o{i}") for i in range(1, 4)))
        self.barrier(alice, f"carol@{DOMAIN}")
        carol, previd, _ = self.enable_resume("carol", "phone")
        carol.send("<presence/>")
        text = carol.recv_until("o3</body>")
        self.assertIn("urn:xmpp:delay", text)
        # carol handled every stanza up to o1 (her own presence among them), not o2, o3
        upto = text[:text.index("o1</body>")]
        h = len(re.findall(r"<(?:message|presence|iq)[\s>/]", upto))
        total = len(re.findall(r"<(?:message|presence|iq)[\s>/]", text))
        self.kill(carol, f"carol@{DOMAIN}/phone", alice)
        c2, text = self.resume("carol", previd, h)
        text = c2.recv_until("o3</body>")
        self.assertEqual(bodies(text), ["o2", "o3"])
        self.ack(c2, total)
        c2.send("<presence type='unavailable'/></stream:stream>")
        c2.closed()
        alice.wait_session_gone(f"carol@{DOMAIN}/phone")
        again = RawStream(self.srv.port).login("carol", "pw", "pc")
        again.send("<presence/>")
        alice.send(message(f"carol@{DOMAIN}/pc", "fresh"))
        self.assertEqual(bodies(again.recv_until("fresh</body>")), ["fresh"], "nothing left in storage")
        again.close()
        alice.close()


class ResumeKilledTest(Base):
    """The connection that sent <resume h/> dies at once (found by bench/sm_kill.py
    --kill-resuming): whether the server finished the resume first (the session is
    detached again) or not (the session ended as a closed one does: its messages went to
    offline storage), the client that resumes again with the same h, or binds anew when
    that fails, gets each message exactly once: not the ones that h acknowledged."""
    users = ("alice", "bob")
    server_options = {"limits.rate_stanzas": "0", "limits.sm_resume_timeout": "60", "server.log_level": "info",
                      "server.io_threads": "1"}

    def test_acknowledged_in_the_resume_are_not_delivered_again(self):
        alice = RawStream(self.srv.port).login("alice", "pw", "pc")
        for rnd in range(6):
            bob, previd, _ = self.enable_resume("bob", "phone")
            sent = [f"k{rnd}-{i}" for i in range(1, 6)]
            alice.send("".join(message(f"bob@{DOMAIN}/phone", b) for b in sent[:3]))
            self.assertEqual(bodies(bob.recv_until(f"{sent[2]}</body>")), sent[:3])
            self.kill(bob, f"bob@{DOMAIN}/phone", alice)
            alice.send("".join(message(f"bob@{DOMAIN}/phone", b) for b in sent[3:]))
            self.barrier(alice, f"bob@{DOMAIN}")
            # bob handled the first 3: its resume says so, and the connection dies at once
            r = self.authed("bob")
            r.send(f"<resume xmlns='{SM}' previd='{previd}' h='3'/>")
            r.sock.close()
            again, text = self.resume("bob", previd, 3)
            if "<resumed" not in text:
                self.assertIn("<item-not-found", text)
                again.bind("phone")
                again.send("<presence/>")  # offline storage is sent with its answer
                again.recv_until(f"<presence from='bob@{DOMAIN}/phone' to='bob@{DOMAIN}/phone'/>")
            self.barrier(alice, f"bob@{DOMAIN}")
            alice.send(message(f"bob@{DOMAIN}/phone", f"end{rnd}"))
            self.assertEqual(bodies(again.recv_until(f"end{rnd}</body>")), sent[3:] + [f"end{rnd}"],
                             "what the resume acknowledged is not delivered again\n" + self.srv.log_text()[-4000:])
            if "<resumed" in text:
                self.ack(again, 3 + 3)  # else a clean close sends them to offline storage
            again.send("<presence type='unavailable'/></stream:stream>")
            again.closed()
            alice.wait_session_gone(f"bob@{DOMAIN}/phone")
        alice.close()


class ResumeKilledTwoThreadsTest(ResumeKilledTest):
    """The same where the detached state may come from the other edge thread."""
    server_options = dict(ResumeKilledTest.server_options, **{"server.io_threads": "2"})


class ResumeTimeoutTest(Base):
    users = ("alice", "bob")
    server_options = {"limits.sm_resume_timeout": "1", "limits.rate_stanzas": "0", "server.log_level": "info"}

    def test_after_the_timeout_resume_fails_and_messages_went_offline(self):
        bob, previd, mx = self.enable_resume("bob", "phone")
        self.assertEqual(mx, 1)
        alice = RawStream(self.srv.port).login("alice", "pw", "pc")
        alice.send("<presence/>")
        bob.send(f"<presence to='alice@{DOMAIN}/pc'/>")
        alice.recv_until(f"<presence[^>]*from='bob@{DOMAIN}/phone'")
        alice.send("".join(message(f"bob@{DOMAIN}/phone", f"m{i}") for i in range(1, 4)))
        bob.recv_until("m3</body>")
        self.kill(bob, f"bob@{DOMAIN}/phone", alice)
        alice.send(message(f"bob@{DOMAIN}/phone", "m4"))
        # the session ends after the timeout: alice sees bob go unavailable then
        alice.recv_until(f"<presence[^>]*from='bob@{DOMAIN}/phone'[^>]*type='unavailable'", timeout=10)
        r, text = self.resume("bob", previd, 0)
        self.assertIn("<item-not-found", text)
        r.bind("phone2")
        r.send("<presence/>")
        text = r.recv_until("m4</body>")
        self.assertIn("urn:xmpp:delay", text, "they were stored offline")
        self.assertEqual(bodies(text), ["m1", "m2", "m3", "m4"])
        r.close()
        alice.close()


class NoResumeTest(Base):
    users = ("alice",)
    server_options = {"limits.sm_resume_timeout": "0"}

    def test_resumption_off(self):
        r = RawStream(self.srv.port).login("alice", "pw", "r")
        r.buf = b""
        r.send(f"<enable xmlns='{SM}' resume='true'/>")
        self.assertEqual(r.recv_until("<enabled[^>]*/>").strip(), f"<enabled xmlns='{SM}'/>")
        r.close()
        r = self.authed("alice")
        r.send(f"<resume xmlns='{SM}' previd='{'a' * 32}' h='0'/>")
        self.assertIn("<unexpected-request", r.recv_until("</failed>"))
        r.close()


class SlixmppResumeTest(Base):
    users = ("alice", "bob")
    server_options = {"limits.sm_max_unacked": "1000", "limits.rate_stanzas": "0",
                      "limits.sm_resume_timeout": "60", "server.log_level": "debug"}

    def test_slixmpp_reconnects_and_resumes_under_load(self):
        async def go():
            a = Client(self.srv, f"alice@{DOMAIN}/pc", "pw")
            b = Client(self.srv, f"bob@{DOMAIN}/phone", "pw")
            b.register_plugin("xep_0198")
            b.plugin["xep_0198"].window = 1000  # its own <r/>s are not the point here
            resumed = asyncio.get_running_loop().create_future()
            b.add_event_handler("session_resumed", lambda e: resumed.done() or resumed.set_result(True))
            b.add_event_handler("session_end", lambda e: resumed.done() or resumed.set_result(False))
            enabled = asyncio.get_running_loop().create_future()
            b.add_event_handler("sm_enabled", lambda e: enabled.done() or enabled.set_result(True))
            # every wait below is for evidence; the bounds are for a loaded machine under
            # ASan, where the router (archiving each message) fell seconds behind the
            # burst of 300: a wait of 5 s per message ran out before the first 60 came
            wait = 30 if SANITIZED else 10
            self.assertTrue(await a.login(timeout=wait))
            self.assertTrue(await b.login(timeout=wait))
            await asyncio.wait_for(enabled, wait)
            self.assertTrue(b.plugin["xep_0198"].sm_id)
            a.send_presence()
            b.send_presence(pto=a.boundjid.full)  # directed: its end would reach alice
            await a.next_presence(pred=lambda p: p["from"] == b.boundjid, timeout=wait)
            n = 300
            ids = [f"id{i}" for i in range(n)]

            send = asyncio.ensure_future(paced_send(a, f"bob@{DOMAIN}/phone", ids))
            got = []
            while len(got) < 60:
                got.append((await b.next_message(timeout=wait))["id"])
            # the TCP connection dies mid-conversation; slixmpp reconnects once it has
            # seen the loss (the old connection's end must not come after the new one's
            # start: it clears slixmpp's transport and stream management state)
            gone = asyncio.get_running_loop().create_future()
            b.add_event_handler("disconnected", lambda e: gone.done() or gone.set_result(True))
            b.transport.abort()
            await asyncio.wait_for(gone, wait)
            b.connect(("127.0.0.1", self.srv.port))
            self.assertTrue(await asyncio.wait_for(resumed, 2 * wait), "slixmpp resumed")
            await send

            async def until(mid):
                """Collects bob's messages until mid has come and none of ids is missing
                (a message that reached the old connection's thread after the move is
                routed again, and may come after later ones)."""
                m = a.make_message(mto=f"bob@{DOMAIN}/phone", mbody=mid, mtype="chat")
                m["id"] = mid
                m.send()
                while mid not in got or not set(ids) <= set(got):
                    try:
                        got.append((await b.next_message(timeout=wait))["id"])
                    except asyncio.TimeoutError:
                        self.fail(f"missing {sorted(set(ids) - set(got), key=lambda x: int(x[2:]))}, "
                                  f"{len(got) - len(set(got))} duplicates")

            await until("last")
            # and once more: a duplicate written late would come before this one
            await until("last2")
            self.assertEqual(sorted(got, key=lambda x: int(x[2:]) if x[2:].isdigit() else 1 << 20),
                             ids + ["last", "last2"], "every message exactly once")
            # alice saw no unavailable presence from bob across the resume
            while not a.presences.empty():
                p = a.presences.get_nowait()
                self.assertNotEqual(p["type"], "unavailable", p)
            self.assertEqual(b.boundjid.full, f"bob@{DOMAIN}/phone")
            await b.close()
            await a.close()

        run(go())


class AioxmppResumeTest(Base):
    users = ("alice", "bob")
    server_options = {"limits.rate_stanzas": "0", "limits.sm_resume_timeout": "60", "server.log_level": "info"}

    def test_aioxmpp_resumes_after_a_tcp_kill(self):
        """aioxmpp's client reconnects by itself and resumes (its StanzaStream); every
        message arrives once, and it reports the stream resumed, not re-established."""
        import aioxmpp

        def client(jid):
            c = aioxmpp.PresenceManagedClient(
                aioxmpp.JID.fromstr(jid), aioxmpp.make_security_layer("pw", no_verify=True),
                override_peer=[("127.0.0.1", self.srv.port, aioxmpp.connector.STARTTLSConnector())])
            c.backoff_start = timedelta(seconds=0.1)
            return c

        async def go():
            alice, bob = client(f"alice@{DOMAIN}/pc"), client(f"bob@{DOMAIN}/phone")
            inbox = asyncio.Queue()

            def catch(msg):
                inbox.put_nowait(msg)
                return msg

            bob.stream.app_inbound_message_filter.register(catch, 0)
            resumed, established = [], []
            bob.on_stream_resumed.connect(lambda: resumed.append(1))
            bob.on_stream_established.connect(lambda: established.append(1))
            async with alice.connected(), bob.connected():
                self.assertTrue(bob.stream.sm_enabled)
                self.assertTrue(bob.stream.sm_resumable, "the server offered resumption")

                async def send(lo, hi):
                    for i in range(lo, hi):
                        m = aioxmpp.Message(type_=aioxmpp.MessageType.CHAT, to=bob.local_jid)
                        m.body[None] = f"a{i}"
                        await alice.send(m)

                got = []
                await send(0, 50)
                while len(got) < 20:
                    got.append((await asyncio.wait_for(inbox.get(), 10)).body.any())
                # the TCP connection dies under it (no stream footer): both ends see it
                bob.stream._xmlstream._transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
                await send(50, 100)
                while len(got) < 100:
                    got.append((await asyncio.wait_for(inbox.get(), 15)).body.any())
                with self.assertRaises(asyncio.TimeoutError):
                    await asyncio.wait_for(inbox.get(), 0.5)
                self.assertEqual(sorted(got, key=lambda b: int(b[1:])), [f"a{i}" for i in range(100)])
                self.assertEqual(resumed, [1], "aioxmpp resumed the stream")
                self.assertEqual(len(established), 1, "not established anew")
                self.assertEqual(str(bob.local_jid), f"bob@{DOMAIN}/phone")

        run(go())


class SlixmppResumeOneThreadTest(SlixmppResumeTest):
    """The same with one edge thread: the resume always lands on the detached session's."""
    server_options = dict(SlixmppResumeTest.server_options, **{"server.io_threads": "1"})


class ClusterResumeBase(unittest.TestCase):
    """Redis, 2 routers (node ids 1, 2) and the edges `edge_ids`, with raw-stream helpers."""
    users = ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank", "ivy", "kim")
    opts = {"limits.sm_max_unacked": "1000", "limits.rate_stanzas": "0", "limits.sm_resume_timeout": "8",
            "server.log_level": "info"}
    edge_ids = (11, 12, 13)

    @classmethod
    def setUpClass(cls):
        from harness import Redis
        from test_cluster import Node
        cls.redis = Redis()
        cls.redis.start()
        cls.routers = [Node(cls.redis, i, "router", **cls.opts) for i in (1, 2)]
        cls.edges = [Node(cls.redis, i, "edge", **cls.opts) for i in cls.edge_ids]
        for u in cls.users:
            cls.edges[0].adduser(f"{u}@{DOMAIN}", "pw")
        for n in cls.routers + cls.edges:
            n.start()
        deadline = time.time() + 15
        while not all("2 routers," in e.log_text().split("shard map epoch")[-1] for e in cls.edges):
            if time.time() > deadline:
                raise AssertionError("edges never saw both routers:\n" + cls.edges[0].log_text())
            time.sleep(0.1)

    @classmethod
    def tearDownClass(cls):
        bad = []
        try:
            for n in cls.edges + cls.routers:
                if n.proc and n.proc.poll() is None and n.stop() != 0:
                    bad.append(n.log_text()[-3000:])
        finally:
            cls.redis.stop()
            cls.redis.cleanup()
        assert not bad, bad

    def tearDown(self):
        for n in self.routers + self.edges:
            if n is not getattr(self, "killed", None):
                self.assertTrue(n.alive(), f"node {n.node_id} died:\n" + n.log_text()[-3000:])

    # raw-stream helpers, for a given edge
    def login(self, edge, user, resource):
        return RawStream(edge.port).login(user, "pw", resource)

    def enable_resume(self, edge, user, resource):
        r = self.login(edge, user, resource)
        r.buf = b""
        r.send(f"<enable xmlns='{SM}' resume='true'/>")
        m = re.search(r"<enabled xmlns='urn:xmpp:sm:3' id='([0-9a-f]{40})' resume='true' max='8'/>",
                      r.recv_until("<enabled[^>]*/>"))
        self.assertIsNotNone(m)
        r.buf = b""
        return r, m.group(1)

    def resume(self, edge, user, previd, h):
        r = RawStream(edge.port, timeout=10)
        r.starttls()
        r.auth_plain(user, "pw")
        r.buf = b""
        r.send(f"<resume xmlns='{SM}' previd='{previd}' h='{h}'/>")
        return r, r.recv_until(r"<resumed[^>]*/>|</failed>", timeout=10)

    def kill(self, r, edge, full_jid):
        line = f"{full_jid} detached for resumption"
        before = edge.log_text().count(line)
        r.sock.close()
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if edge.log_text().count(line) > before:
                return
            time.sleep(0.02)
        raise AssertionError("the session was not detached:\n" + edge.log_text()[-3000:])

    def barrier(self, r, bare):
        pid = f"bar{time.monotonic_ns()}"
        r.send(f"<iq type='get' to='{bare}' id='{pid}'><ping xmlns='urn:xmpp:ping'/></iq>")
        r.recv_until(f"<iq[^>]*id='{pid}'", timeout=10)

    def ack(self, r, h):
        r.buf = b""
        r.send(f"<a xmlns='{SM}' h='{h}'/><r xmlns='{SM}'/>")
        r.recv_until(r"<a xmlns='urn:xmpp:sm:3' h='\d+'/>")



class ClusterResumeTest(ClusterResumeBase):
    """XEP-0198 §5 across edge NODES (docs/cluster.md "Stream resumption across nodes"):
    Redis, 2 routers, 3 edges (node ids 11, 12, 13). A session detached on one edge node
    is resumed on another: the new edge asks the account's router, which forwards the
    request to the edge holding the session; its state (counters, unacknowledged and
    queued messages, presence, id) comes back with the router's answer."""

    def test_1_resume_on_another_edge_node_everything_once(self):
        """bob on edge 11 got m1..m5, acknowledged 2, handled 3; his TCP dies; m6..m9 arrive
        while detached. bob resumes on edge 12: <resumed h=1/>, m4..m9 exactly once, no
        presence change for alice, new messages flow to edge 12 (the directory says so),
        and the same id resumes again, back on edge 11 (the id moved with the session)."""
        a, b, c = self.edges
        bob, previd = self.enable_resume(a, "bob", "phone")
        alice = self.login(b, "alice", "pc")
        alice.send("<presence/>")
        bob.send(f"<presence to='alice@{DOMAIN}/pc'/>")  # directed: its end would be seen
        alice.recv_until(f"<presence[^>]*from='bob@{DOMAIN}/phone'", timeout=10)
        alice.send("".join(message(f"bob@{DOMAIN}/phone", f"m{i}") for i in range(1, 6)))
        self.assertEqual(bodies(bob.recv_until("m5</body>", timeout=10)), [f"m{i}" for i in range(1, 6)])
        self.ack(bob, 2)
        self.kill(bob, a, f"bob@{DOMAIN}/phone")
        alice.buf = b""
        alice.send("".join(message(f"bob@{DOMAIN}/phone", f"m{i}") for i in range(6, 10)))
        self.barrier(alice, f"bob@{DOMAIN}")
        b2, text = self.resume(b, "bob", previd, 3)
        self.assertRegex(text, rf"<resumed xmlns='{SM}' previd='{previd}' h='1'/>")
        self.assertIn("handed over to node 12", a.log_text())
        alice.send(message(f"bob@{DOMAIN}/phone", "end"))
        got = bodies(b2.recv_until("end</body>", timeout=10))
        self.assertEqual(got, ["m4", "m5", "m6", "m7", "m8", "m9", "end"], "each unhandled message once, in order")
        self.ack(b2, 10)
        b2.buf = b""
        b2.send(f"<r xmlns='{SM}'/>")
        self.assertIn("h='1'", b2.recv_until(r"<a xmlns='urn:xmpp:sm:3' h='\d+'/>"))
        b2.send(message(f"alice@{DOMAIN}/pc", "back"))
        text = alice.recv_until("back</body>", timeout=10)
        self.assertIn(f"from='bob@{DOMAIN}/phone'", re.search(r"<message[^>]*>[^\n]*?back</body>", text).group(0))
        self.assertNotIn("type='unavailable'", text, "alice saw no unavailable presence across the resume")
        d = resp(self.redis.port, "HGETALL", f"it:s:{{bob@{DOMAIN}}}")
        self.assertIn(b"12 ", d, "the directory has bob on edge node 12")
        with self.assertRaises(AssertionError):  # nothing more: no duplicate
            b2.recv_until("m[0-9]</body>.*m[0-9]</body>.*m[0-9]</body>.*m[0-9]</body>.*m[0-9]</body>.*"
                          "m[0-9]</body>.*m[0-9]</body>", timeout=0.5)
        # again, back to edge 11: the id is edge 12's now, edge 11 asks the router
        self.kill(b2, b, f"bob@{DOMAIN}/phone")
        alice.send(message(f"bob@{DOMAIN}/phone", "m10"))
        self.barrier(alice, f"bob@{DOMAIN}")
        b3, text = self.resume(a, "bob", previd, 10)
        self.assertRegex(text, rf"<resumed xmlns='{SM}' previd='{previd}' h='2'/>")
        self.assertEqual(bodies(b3.recv_until("m10</body>", timeout=10)), ["m10"])
        b3.send("<presence type='unavailable'/></stream:stream>")
        alice.recv_until(f"from='bob@{DOMAIN}/phone'[^>]*type='unavailable'", timeout=10)
        for x in (b3, alice):
            x.close()

    def test_1b_stanza_behind_a_remote_resume_is_refused(self):
        """A stanza pipelined behind a <resume/> whose id this edge node does not hold (so it
        waits for the account's router, RESUME_REMOTE) ends the stream with <not-authorized/>
        as on one node; it must not be routed (no full JID yet: the edge crashed on it)."""
        a = self.edges[0]
        r = RawStream(a.port, timeout=10)
        r.starttls()
        r.auth_plain("kim", "pw")
        r.buf = b""
        r.send(f"<resume xmlns='{SM}' previd='{'0' * 40}' h='0'/>"
               f"<message to='bob@{DOMAIN}' type='chat'><body>early</body></message>"
               f"<iq type='set' id='pw'><query xmlns='jabber:iq:register'><username>kim</username>"
               f"<password>new</password></query></iq>")
        text = r.recv_until("</stream:stream>", timeout=10)
        self.assertIn("<not-authorized", text)
        self.assertIn("the stream is being resumed", text)
        r.close()
        self.assertTrue(a.alive(), a.log_text()[-3000:])
        self.login(a, "kim", "pc").close()  # the password did not change

    def test_2_another_accounts_id_fails_on_another_node(self):
        a, b, c = self.edges
        carol, previd = self.enable_resume(a, "carol", "phone")
        dave = self.login(b, "dave", "pc")
        dave.send(message(f"carol@{DOMAIN}/phone", "secret"))
        carol.recv_until("secret</body>", timeout=10)
        self.kill(carol, a, f"carol@{DOMAIN}/phone")
        thief, text = self.resume(b, "erin", previd, 0)
        self.assertIn("<item-not-found", text)
        self.assertNotIn("<resumed", text)
        self.assertNotIn("secret", thief.recv_until("</failed>"))
        thief.bind("x")
        self.assertIn(f"erin@{DOMAIN}/x", thief.buf.decode())
        # a forged id with carol's tag and other random bits, and one with another tag
        for bad in (previd[:8] + "0" * 32, "0" * 40):
            r, text = self.resume(b, "carol", bad, 0)
            self.assertIn("<item-not-found", text, bad)
            r.close()
        c2, text = self.resume(c, "carol", previd, 0)
        self.assertIn("<resumed", text, "the owner still can, on a third node")
        self.assertEqual(bodies(c2.recv_until("secret</body>", timeout=10)), ["secret"])
        for s in (c2, thief, dave):
            s.close()

    def test_3_expired_fails_and_the_messages_went_offline(self):
        a, b, c = self.edges
        frank, previd = self.enable_resume(a, "frank", "phone")
        gina = self.login(b, "gina", "pc")
        gina.send("<presence/>")
        frank.send(f"<presence to='gina@{DOMAIN}/pc'/>")
        gina.recv_until(f"<presence[^>]*from='frank@{DOMAIN}/phone'", timeout=10)
        gina.send("".join(message(f"frank@{DOMAIN}/phone", f"q{i}") for i in range(1, 4)))
        frank.recv_until("q3</body>", timeout=10)
        self.kill(frank, a, f"frank@{DOMAIN}/phone")
        gina.send(message(f"frank@{DOMAIN}/phone", "q4"))
        gina.recv_until(f"<presence[^>]*from='frank@{DOMAIN}/phone'[^>]*type='unavailable'", timeout=20)
        r, text = self.resume(b, "frank", previd, 0)
        self.assertIn("<item-not-found", text)
        r.bind("phone2")
        r.send("<presence/>")
        text = r.recv_until("q4</body>", timeout=10)
        self.assertIn("urn:xmpp:delay", text, "they were stored offline")
        self.assertEqual(bodies(text), ["q1", "q2", "q3", "q4"])
        r.close()
        gina.close()

    def test_4_a_live_old_connection_is_dropped_and_two_resumes_give_one_session(self):
        """The client resumes on edge 12 while its old connection on edge 11 still looks
        alive: that connection is dropped and the session moves. Then two resumes of it at
        once, on edges 11 and 13: one connection stays (a later resume takes over an earlier
        one, as it takes over a live old connection), the message it did not acknowledge is
        written to it once, a refused one gets <failed/>."""
        a, b, c = self.edges
        hank, previd = self.enable_resume(a, "hank", "phone")
        ivy = self.login(b, "ivy", "pc")
        ivy.send(message(f"hank@{DOMAIN}/phone", "p1"))
        hank.recv_until("p1</body>", timeout=10)
        h2, text = self.resume(b, "hank", previd, 0)
        self.assertIn("<resumed", text)
        self.assertTrue(hank.closed(10), "the old connection was dropped")
        self.assertEqual(bodies(h2.recv_until("p1</body>", timeout=10)), ["p1"])
        self.kill(h2, b, f"hank@{DOMAIN}/phone")
        ivy.send(message(f"hank@{DOMAIN}/phone", "p2"))
        self.barrier(ivy, f"hank@{DOMAIN}")
        streams = []
        for e in (a, c):
            r = RawStream(e.port, timeout=10)
            r.starttls()
            r.auth_plain("hank", "pw")
            r.buf = b""
            streams.append(r)
        for r in streams:
            r.send(f"<resume xmlns='{SM}' previd='{previd}' h='1'/>")
        def answer(r):
            try:
                return r.recv_until(r"<resumed[^>]*/>|</failed>", timeout=10)
            except AssertionError as e:
                # resumed, then dropped by the other resume in the same loop turn, before
                # its <resumed/> was written (a dropped connection's output is not written)
                if "connection closed before" in str(e) and r.buf == b"":
                    return ""
                raise
        texts = [answer(r) for r in streams]
        won = [r for r, t in zip(streams, texts) if "<resumed" in t]
        dropped = [r for r, t in zip(streams, texts) if t == ""]
        self.assertLessEqual(len(dropped), 1, texts)
        if dropped:
            self.assertEqual(len(won), 1, f"a connection was dropped but no other resumed: {texts}")
        for r, t in zip(streams, texts):
            if r not in won and r not in dropped:
                self.assertIn("<item-not-found", t)
        # both may have resumed one after the other: then the first was dropped (a
        # resume takes over a live old connection); never two live connections
        live = [r for r in won if not r.closed(2)]
        self.assertLessEqual(len(live), 1, texts)
        self.assertEqual(len(live), len(won[-1:]), "the last to resume stays")
        if live:
            self.assertEqual(bodies(live[0].recv_until("p2</body>", timeout=10)), ["p2"])
        else:  # both lost the race: the message is not lost, a new log-in gets it
            r = self.login(b, "hank", "phone")
            r.send("<presence/>")
            self.assertIn("p2</body>", r.recv_until("p2</body>", timeout=10))
            streams.append(r)
        for r in streams + [ivy]:
            r.close()

    def test_5_slixmpp_resumes_on_the_other_edge_node_under_load(self):
        a, b, c = self.edges

        async def go():
            alice = Client(b, f"alice@{DOMAIN}/slix", "pw")
            bob = Client(a, f"bob@{DOMAIN}/slix", "pw")
            bob.register_plugin("xep_0198")
            bob.plugin["xep_0198"].window = 1000
            loop = asyncio.get_running_loop()
            resumed, enabled = loop.create_future(), loop.create_future()
            bob.add_event_handler("session_resumed", lambda e: resumed.done() or resumed.set_result(True))
            bob.add_event_handler("session_end", lambda e: resumed.done() or resumed.set_result(False))
            bob.add_event_handler("sm_enabled", lambda e: enabled.done() or enabled.set_result(True))
            self.assertTrue(await alice.login())
            self.assertTrue(await bob.login())
            await asyncio.wait_for(enabled, 10)
            alice.send_presence()
            bob.send_presence(pto=alice.boundjid.full)
            await alice.next_presence(10, pred=lambda p: p["from"] == bob.boundjid)
            n = 200
            ids = [f"id{i}" for i in range(n)]

            send = asyncio.ensure_future(paced_send(alice, f"bob@{DOMAIN}/slix", ids))
            got = []
            while len(got) < 50:
                got.append((await bob.next_message(10))["id"])
            bob.transport.abort()  # the TCP connection dies mid-conversation
            await asyncio.sleep(0)
            bob.connect(("127.0.0.1", b.port))  # the other edge node
            self.assertTrue(await asyncio.wait_for(resumed, 20), "slixmpp resumed on edge 12")
            await send
            while len(got) < n:
                try:
                    got.append((await bob.next_message(timeout=10))["id"])
                except asyncio.TimeoutError:
                    self.fail(f"missing {sorted(set(ids) - set(got), key=lambda x: int(x[2:]))}, "
                              f"{len(got) - len(set(got))} duplicates")
            self.assertEqual(sorted(got, key=lambda x: int(x[2:])), ids, "every message exactly once")
            with self.assertRaises(asyncio.TimeoutError):
                await bob.next_message(timeout=0.5)
            while not alice.presences.empty():
                self.assertNotEqual(alice.presences.get_nowait()["type"], "unavailable")
            self.assertEqual(bob.boundjid.full, f"bob@{DOMAIN}/slix")
            self.assertIn("handed over to node 12", a.log_text())
            await bob.close()
            await alice.close()

        run(go())

    def test_6_offline_queue_past_one_window_across_nodes(self):
        """BUS_OFFLINE_ACK crosses the bus links (the router is another process): an
        offline queue longer than one window (64 messages) is delivered whole, and what
        was delivered is gone from storage. The links refused that kind as node-internal:
        the first window came, the rest stayed stored until the next log-in, and came
        again then."""
        a, b, c = self.edges
        alice = self.login(b, "alice", "off")
        alice.send("".join(message(f"kim@{DOMAIN}", f"o{i}") for i in range(100)))
        self.barrier(alice, f"kim@{DOMAIN}")
        kim = self.login(a, "kim", "k1")
        kim.send("<presence/>")
        self.assertEqual(bodies(kim.recv_until("o99</body>", timeout=10)), [f"o{i}" for i in range(100)])
        kim.send("<presence type='unavailable'/></stream:stream>")
        kim.closed()
        alice.wait_session_gone(f"kim@{DOMAIN}/k1", timeout=10)
        again = self.login(c, "kim", "k2")
        again.send("<presence/>")
        alice.send(message(f"kim@{DOMAIN}/k2", "fresh"))
        self.assertEqual(bodies(again.recv_until("fresh</body>", timeout=10)), ["fresh"], "nothing left stored")
        for x in (again, alice):
            x.close()

    def test_9_edge_killed_not_resumed_in_time_contacts_see_unavailable(self):
        """The edge node holding a detached session dies and nobody resumes it: the
        routers keep it limits.sm_resume_timeout (8 s here: router/sm_orphan.c), then end
        it (contacts see unavailable), and a resume elsewhere gets <failed/>, at once;
        what is sent to the account afterwards goes to offline storage. Resumed in time:
        ClusterResumeFaultTest, EdgeKilledSmResumeTest."""
        a, b, c = self.edges
        dave, previd = self.enable_resume(c, "dave", "phone")
        erin = self.login(b, "erin", "pc")
        erin.send("<presence/>")
        dave.send(f"<presence to='erin@{DOMAIN}/pc'/>")
        erin.recv_until(f"<presence[^>]*from='dave@{DOMAIN}/phone'", timeout=10)
        self.kill(dave, c, f"dave@{DOMAIN}/phone")
        self.killed = c
        c.kill9()
        erin.recv_until(f"<presence[^>]*from='dave@{DOMAIN}/phone'[^>]*type='unavailable'", timeout=30)
        t0 = time.monotonic()
        r, text = self.resume(a, "dave", previd, 0)
        self.assertIn("<item-not-found", text)
        self.assertLess(time.monotonic() - t0, 5)
        erin.send(message(f"dave@{DOMAIN}", "after"))
        self.barrier(erin, f"dave@{DOMAIN}")
        r.bind("phone")
        r.send("<presence/>")
        self.assertEqual(bodies(r.recv_until("after</body>", timeout=10)), ["after"])
        r.close()
        erin.close()


class ClusterResumeFaultTest(ClusterResumeBase):
    """XEP-0198 §5 across edge nodes when a node dies at the worst moment (docs/cluster.md,
    "Stream resumption across nodes"): every message the server accepted reaches the
    account exactly once, live, after a resumption from what the account's router kept,
    or from offline storage. Four edges (11..14): tests a and b kill one each. A lease of 5 s, so
    that an edge stopped (SIGSTOP) for two seconds keeps its sessions, and frames wait
    1 s for a link that is down (cluster.max_wait_ms)."""
    opts = dict(ClusterResumeBase.opts, **{"cluster.node_ttl_ms": 5000, "cluster.max_wait_ms": 1000})
    edge_ids = (11, 12, 13, 14)
    killed = ()

    def tearDown(self):
        for n in self.routers + self.edges:
            if n not in self.killed:
                self.assertTrue(n.alive(), f"node {n.node_id} died:\n" + n.log_text()[-3000:])

    def wait_log(self, node, text, before=0, timeout=10):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if node.log_text().count(text) > before:
                return
            time.sleep(0.02)
        raise AssertionError(f"node {node.node_id} never logged {text!r}:\n" + node.log_text()[-3000:])

    def offline_once(self, edge, user, want, sender):
        """user logs in on edge: the offline messages are exactly `want`, and nothing comes
        twice (a message sent after them comes right after them). In any order: a message
        on its way to the dead node comes back when the link gives it up, the others when
        the router sees the node dead (docs/cluster.md)."""
        r = self.login(edge, user, "back")
        r.send("<presence/>")
        r.recv_until("(?s)^" + "".join(f"(?=.*{w}</body>)" for w in want), timeout=15)  # all of them
        sender.send(message(f"{user}@{DOMAIN}/back", "sentinel"))
        text = r.recv_until("sentinel</body>", timeout=10)
        got = bodies(text)
        self.assertEqual(got[-1], "sentinel")
        self.assertEqual(sorted(got[:-1]), sorted(want), "each message once, from offline storage")
        self.assertEqual(text.count("urn:xmpp:delay"), len(want), text)
        r.close()

    def test_a_holder_killed_resumed_from_the_router_every_message_once(self):
        """bob, on edge 13, got m1..m5 and acknowledged 3; his TCP dies (detached); m6, m7
        reach edge 13 while detached (bob's laptop on edge 13 got a later message: edge
        13 has them). Edge 13 is killed (-9). A resume on edge 11 with h=4 (he had handled
        m4, its <a/> never sent) succeeds from what the account's router kept (router/
        sm_orphan.c): <resumed h='1'/> (his one stanza, the directed presence), then m5,
        m6, m7, each once; alice never sees him unavailable."""
        a, b, c, d = self.edges
        bob, previd = self.enable_resume(c, "bob", "phone")
        laptop = self.login(c, "bob", "laptop")
        alice = self.login(b, "alice", "pc")
        alice.send("<presence/>")
        bob.send(f"<presence to='alice@{DOMAIN}/pc'/>")
        alice.recv_until(f"<presence[^>]*from='bob@{DOMAIN}/phone'", timeout=10)
        alice.send("".join(message(f"bob@{DOMAIN}/phone", f"m{i}") for i in range(1, 6)))
        self.assertEqual(bodies(bob.recv_until("m5</body>", timeout=10)), [f"m{i}" for i in range(1, 6)])
        self.ack(bob, 3)
        self.kill(bob, c, f"bob@{DOMAIN}/phone")
        alice.send("".join(message(f"bob@{DOMAIN}/phone", f"m{i}") for i in (6, 7)))
        alice.send(message(f"bob@{DOMAIN}/laptop", "lap"))
        laptop.recv_until("lap</body>", timeout=10)
        time.sleep(0.7)  # what is tested is what edge 13 held (its links acknowledged it)
        type(self).killed += (c,)
        alice.buf = b""
        c.kill9()
        r = RawStream(a.port, timeout=20)
        r.starttls()
        r.auth_plain("bob", "pw")
        r.buf = b""
        r.send(f"<resume xmlns='{SM}' previd='{previd}' h='4'/>")
        text = r.recv_until(r"<resumed[^>]*/>|</failed>", timeout=20)  # once the routers see edge 13 dead
        self.assertIn(f"<resumed xmlns='urn:xmpp:sm:3' previd='{previd}' h='1'/>", text)
        alice.send(message(f"bob@{DOMAIN}/phone", "sentinel"))
        self.assertEqual(bodies(r.recv_until("sentinel</body>", timeout=10)), ["m5", "m6", "m7", "sentinel"])
        self.assertNotRegex(alice.buf.decode(errors="replace"), "type='unavailable'")
        r.close()
        alice.close()

    def test_b_new_edge_killed_mid_resume_the_messages_go_offline_once(self):
        """hank, detached on edge 11 with h2, h3 unacknowledged and h4 queued, resumes on
        edge 14 with h=2; edge 11 is stopped until the router has forwarded the request,
        edge 14 is killed (-9) before the state reaches it, then edge 11 goes on and hands
        the session over to the dead node. h3 and h4 come from offline storage at the next
        log-in, each once (h2, acknowledged by the <resume/>, does not come again): the
        routers keep the session moved to the dead node limits.sm_resume_timeout (8 s),
        then end it."""
        a, b, c, d = self.edges
        hank, previd = self.enable_resume(a, "hank", "phone")
        ivy = self.login(b, "ivy", "pc")
        ivy.send("<presence/>")
        hank.send(f"<presence to='ivy@{DOMAIN}/pc'/>")
        ivy.recv_until(f"<presence[^>]*from='hank@{DOMAIN}/phone'", timeout=10)
        ivy.send("".join(message(f"hank@{DOMAIN}/phone", f"h{i}") for i in range(1, 4)))
        hank.recv_until("h3</body>", timeout=10)
        self.ack(hank, 1)
        self.kill(hank, a, f"hank@{DOMAIN}/phone")
        ivy.send(message(f"hank@{DOMAIN}/phone", "h4"))
        self.barrier(ivy, f"hank@{DOMAIN}")
        r = self.resume_stalled(a, d, "hank", previd, 2)
        type(self).killed += (d,)
        d.kill9()
        a.proc.send_signal(signal.SIGCONT)
        self.wait_log(a, "handed over to node 14")
        ivy.recv_until(f"<presence[^>]*from='hank@{DOMAIN}/phone'[^>]*type='unavailable'", timeout=30)
        self.offline_once(b, "hank", ["h3", "h4"], ivy)
        ivy.close()

    def test_e_holder_stalled_past_its_lease_resumed_from_the_router_once(self):
        """gina, detached on edge 12 with g2, g3 unacknowledged and g4 queued; edge 12
        stalls (SIGSTOP) past its lease: the routers keep her session for resumption
        (router/sm_orphan.c), contacts see nothing. Edge 12 runs again: the routers had
        ended its sessions for it, so the detached one ends there without sending its
        messages again; a resume on edge 11 with h=2 gets the session from the router:
        g3, g4, once; kim never sees her unavailable."""
        a, b, c, d = self.edges
        gina, previd = self.enable_resume(b, "gina", "phone")
        kim = self.login(a, "kim", "pc")
        kim.send("<presence/>")
        gina.send(f"<presence to='kim@{DOMAIN}/pc'/>")
        kim.recv_until(f"<presence[^>]*from='gina@{DOMAIN}/phone'", timeout=10)
        kim.send("".join(message(f"gina@{DOMAIN}/phone", f"g{i}") for i in range(1, 4)))
        gina.recv_until("g3</body>", timeout=10)
        self.ack(gina, 1)
        self.kill(gina, b, f"gina@{DOMAIN}/phone")
        kim.send(message(f"gina@{DOMAIN}/phone", "g4"))
        self.barrier(kim, f"gina@{DOMAIN}")
        released = "detached gina@localhost/phone had been ended by its router"
        kept = "gina@localhost/phone: its edge node 12 is down: kept"
        time.sleep(0.7)  # edge 12's links acknowledge what it took (see test_a)
        kim.buf = b""
        b.proc.send_signal(signal.SIGSTOP)
        try:
            end = time.monotonic() + 20
            while not any(kept in rt.log_text() for rt in self.routers):
                self.assertLess(time.monotonic(), end, "the routers did not keep the session")
                time.sleep(0.05)
        finally:
            b.proc.send_signal(signal.SIGCONT)
        self.wait_log(b, released, timeout=15)
        r, text = self.resume(a, "gina", previd, 2)
        self.assertIn("<resumed", text)
        kim.send(message(f"gina@{DOMAIN}/phone", "sentinel"))
        self.assertEqual(bodies(r.recv_until("sentinel</body>", timeout=10)), ["g3", "g4", "sentinel"])
        self.assertNotRegex(kim.buf.decode(errors="replace"), "type='unavailable'")
        r.close()
        kim.close()

    def resume_stalled(self, holder, edge, user, previd, h):
        """A raw stream on edge sends <resume/>; holder is stopped until a router has
        forwarded the request to it. Returns the stream (holder stopped: the caller
        continues it)."""
        r = RawStream(edge.port, timeout=10)
        r.starttls()
        r.auth_plain(user, "pw")
        forwarded = f"resume of {user}@{DOMAIN} asked at node {edge.node_id}: forwarded"
        before = sum(x.log_text().count(forwarded) for x in self.routers)
        holder.proc.send_signal(signal.SIGSTOP)
        r.send(f"<resume xmlns='{SM}' previd='{previd}' h='{h}'/>")
        end = time.monotonic() + 10
        while sum(x.log_text().count(forwarded) for x in self.routers) == before:
            if time.monotonic() > end:
                holder.proc.send_signal(signal.SIGCONT)
                self.fail("no router forwarded the resume request")
            time.sleep(0.01)
        return r


if __name__ == "__main__":
    unittest.main()


def scrape_counter(port, name):
    """The value of a counter on a node's metrics endpoint (metrics.listen)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as f:
        text = f.read().decode()
    m = re.search(rf"^{name} (\d+)", text, re.M)
    if not m:
        raise AssertionError(f"{name} not exported:\n{text[:2000]}")
    return int(m.group(1))


class SmReceiver:
    """A raw XEP-0198 client on an edge: reads messages and acknowledges all it has read
    after each read (<a h/>, unasked). Frozen, it sends its last <a/> and reads no more."""

    def __init__(self, test, edge, user, presence=False, resume=False):
        self.user = user
        self.r = test.login(edge, user, "r")
        self.r.buf = b""
        if presence:  # available: messages to the bare JID come here (before <enable/>: h counts none)
            self.r.send("<presence/>")
            self.r.recv_until("<presence[^>]*/>")
            self.r.buf = b""
        self.r.send(f"<enable xmlns='{SM}'" + (" resume='true'" if resume else "") + "/>")
        m = re.search(r"<enabled[^>]* id='([0-9a-f]{40})'", self.r.recv_until("<enabled[^>]*/>"))
        self.previd = m.group(1) if m else None
        self.r.buf = b""
        # the router has the enabling BUS_SM_ACK before any message for us: it went ahead
        # of this IQ on the way to the account's shard (the answer is a stanza: h counts it)
        test.barrier(self.r, f"{user}@{DOMAIN}")
        self.h = 1
        self.r.buf = b""
        self.ids = []
        self.acked_ids = 0  # how many of ids the last <a/> sent acknowledged
        self.noack = threading.Event()  # set: reads on, acknowledges no more
        self.freeze = threading.Event()
        self.frozen = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        sock, text = self.r.sock, ""
        sock.settimeout(0.05)
        while not self.freeze.is_set():
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                break
            if not chunk:
                break
            text += chunk.decode(errors="replace")
            ends = [m.end() for m in re.finditer(r"</message>", text)]
            if ends:
                done, text = text[:ends[-1]], text[ends[-1]:]
                self.h += done.count("<message ")
                self.ids += bodies(done)
                if not self.noack.is_set():
                    sock.sendall(f"<a xmlns='{SM}' h='{self.h}'/>".encode())
                    self.acked_ids = len(self.ids)
        self.frozen.set()


class EdgeKilledBase(unittest.TestCase):
    """Redis, 2 routers (metrics exported), edges 11 and 12; rcvI and sndI for I < N."""
    N = 8
    opts = {"limits.sm_max_unacked": "1000", "limits.rate_stanzas": "0", "server.log_level": "info"}

    @classmethod
    def setUpClass(cls):
        from harness import Redis, free_port
        from test_cluster import Node
        cls.redis = Redis()
        cls.redis.start()
        cls.mports = [free_port(), free_port()]
        cls.routers = [Node(cls.redis, i, "router", **dict(cls.opts, **{"metrics.listen": f"127.0.0.1:{p}"}))
                       for i, p in zip((1, 2), cls.mports)]
        cls.edges = [Node(cls.redis, i, "edge", **cls.opts) for i in (11, 12)]
        for i in range(cls.N):
            cls.edges[0].adduser(f"rcv{i}@{DOMAIN}", "pw")
            cls.edges[0].adduser(f"snd{i}@{DOMAIN}", "pw")
        for n in cls.routers + cls.edges:
            n.start()
        deadline = time.time() + 15
        while not all("2 routers," in e.log_text().split("shard map epoch")[-1] for e in cls.edges):
            if time.time() > deadline:
                raise AssertionError("edges never saw both routers:\n" + cls.edges[0].log_text())
            time.sleep(0.1)

    @classmethod
    def tearDownClass(cls):
        bad = []
        try:
            for n in cls.edges + cls.routers:
                if n.proc and n.proc.poll() is None and n.stop() != 0:
                    bad.append(n.log_text()[-3000:])
        finally:
            cls.redis.stop()
            cls.redis.cleanup()
        assert not bad, bad

    login = ClusterResumeBase.login
    barrier = ClusterResumeBase.barrier

    def acked_at_routers(self):
        return sum(scrape_counter(p, "xmppd_sm_copies_acked_total") for p in self.mports)

    def wait_node_11_gone(self):
        for rt in self.routers:
            end = time.monotonic() + 15
            while not re.search(r"node 11 \(\S+\) left the registry", rt.log_text()):
                self.assertLess(time.monotonic(), end, rt.log_text()[-3000:])
                time.sleep(0.05)


class EdgeKilledSmExactlyOnceTest(EdgeKilledBase):
    """Exactly once across the death (kill -9) of an edge node for XEP-0198 sessions
    (docs/cluster.md "Exactly once"). Redis, 2 routers, 2 edges. Eight receivers with
    stream management on edge 11 acknowledge every message they read; eight senders on
    edge 12 each send one a numbered message every 8 ms. The receivers then stop reading
    (having acknowledged all they read) while the senders go on; once both routers counted
    every acknowledgement (xmppd_sm_copies_acked_total), edge 11 is killed (-9) under that
    load and the receivers log in again on edge 12 (a new session, initial presence, so
    offline storage counts too). Every message must arrive exactly once over the two
    sessions, none lost. Before, the routers bounced every DELIVER edge 11 had not
    bus-acknowledged (once a heartbeat) to the account, read and acknowledged or not."""

    def test_edge_killed_under_load_every_message_once(self):
        e11, e12 = self.edges
        rcv = [SmReceiver(self, e11, f"rcv{i}") for i in range(self.N)]
        snd = [self.login(e12, f"snd{i}", "s") for i in range(self.N)]
        sent = [[] for _ in range(self.N)]
        stop = threading.Event()

        def sender(i):
            k = 0
            while not stop.is_set():
                k += 1
                mid = f"p{i}-{k}"
                snd[i].send(message(f"rcv{i}@{DOMAIN}/r", mid))
                sent[i].append(mid)
                time.sleep(0.008)

        threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(self.N)]
        for t in threads:
            t.start()
        try:
            end = time.monotonic() + 15
            while min(len(x.ids) for x in rcv) < 100:  # the load is flowing to every receiver
                self.assertLess(time.monotonic(), end, "messages do not flow")
                time.sleep(0.02)
            for x in rcv:
                x.freeze.set()
            for x in rcv:
                self.assertTrue(x.frozen.wait(5))
            read = sum(len(x.ids) for x in rcv)
            # evidence that both routers had every acknowledgement before the kill
            end = time.monotonic() + 10
            while self.acked_at_routers() < read:
                self.assertLess(time.monotonic(), end, f"{self.acked_at_routers()} of {read} acks counted")
                time.sleep(0.01)
            e11.kill9()
            for x in rcv:
                x.r.sock.close()
            again = []
            for i in range(self.N):
                r = self.login(e12, f"rcv{i}", "r")
                r.buf = b""
                r.send("<presence/>")
                again.append(r)
            time.sleep(0.5)  # the senders go on a while with the receivers on edge 12
        finally:
            stop.set()
            for t in threads:
                t.join()
        # every message left over: live on edge 12, or from offline storage; then, once
        # both routers have ended edge 11's sessions (its copies and its link's bounces
        # handled), a sentinel behind anything that could still come twice
        for rt in self.routers:
            end = time.monotonic() + 15
            while not re.search(r"node 11 \(\S+\) left the registry", rt.log_text()):
                self.assertLess(time.monotonic(), end, rt.log_text()[-3000:])
                time.sleep(0.05)
        dups, lost, total = [], [], 0
        for i, r in enumerate(again):
            got_before = rcv[i].ids
            want = set(sent[i]) - set(got_before)
            end = time.monotonic() + 20
            while not want <= set(bodies(r.buf.decode(errors="replace"))):
                missing = want - set(bodies(r.buf.decode(errors="replace")))
                self.assertGreater(end - time.monotonic(), 0, f"rcv{i}: {len(missing)} never came")
                r.sock.settimeout(0.5)
                try:
                    chunk = r.sock.recv(65536)
                except (socket.timeout, TimeoutError):
                    continue
                self.assertTrue(chunk, f"rcv{i}: stream closed")
                r.buf += chunk
            snd[i].send(message(f"rcv{i}@{DOMAIN}/r", "sentinel"))
            got = bodies(r.recv_until("sentinel</body>", timeout=10))
            self.assertEqual(got[-1], "sentinel")
            seen = got_before + got[:-1]
            total += len(seen)
            from collections import Counter
            c = Counter(seen)
            dups += [m for m, n in c.items() if n > 1]
            lost += [m for m in sent[i] if m not in c]
            self.assertEqual(set(c) - set(sent[i]), set())
            r.close()
        for s in snd:
            s.close()
        print(f"\n  {sum(len(s) for s in sent)} messages, {read} read and acknowledged on edge 11 before its death, "
              f"{total} received in all, {len(dups)} twice, {len(lost)} lost")
        self.assertEqual(lost, [], "lost")
        self.assertEqual(dups, [], f"{len(dups)} messages received twice")


class EdgeKilledSmReloginTest(EdgeKilledBase):
    """bench/faults.py's edge-kill row in small (docs/cluster.md "Exactly once"): eight
    receivers, available, with stream management on edge 11, acknowledge every message
    they read; eight senders on edge 12 send to their bare JIDs every 8 ms. The receivers
    stop reading; once the routers counted every acknowledgement and the senders sent 20
    more each (copies the routers keep, unacknowledged), edge 11 is killed (-9) and each
    receiver logs in again at once on edge 12 with the SAME resource, which replaces the
    old session before the routers see edge 11 gone: its unacknowledged copies go back to
    the account. They are messages to the bare JID: the new resource, bound but not yet
    available, must get none before its initial presence (RFC 6121 §8.5.2.1; offline
    storage takes them). Before the fix the routers sent them to the new bind of the full
    JID, between <bind/> and <enabled/>, where bench/faults.py's client drops them (it
    expects <enabled/>) and no copy is kept: thousands of acknowledged messages lost in
    the bench. Then it enables stream management and sends presence: every message
    arrives exactly once over the two sessions."""

    def test_relogin_same_resource_nothing_before_presence_every_message_once(self):
        e11, e12 = self.edges
        rcv = [SmReceiver(self, e11, f"rcv{i}", presence=True) for i in range(self.N)]
        snd = [self.login(e12, f"snd{i}", "s") for i in range(self.N)]
        sent = [[] for _ in range(self.N)]
        stop = threading.Event()

        def sender(i):
            k = 0
            while not stop.is_set():
                k += 1
                mid = f"q{i}-{k}"
                snd[i].send(message(f"rcv{i}@{DOMAIN}", mid))
                sent[i].append(mid)
                time.sleep(0.008)

        threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(self.N)]
        for t in threads:
            t.start()
        again, early = [], {}
        try:
            end = time.monotonic() + 15
            while min(len(x.ids) for x in rcv) < 100:  # the load is flowing to every receiver
                self.assertLess(time.monotonic(), end, "messages do not flow")
                time.sleep(0.02)
            for x in rcv:
                x.freeze.set()
            for x in rcv:
                self.assertTrue(x.frozen.wait(5))
            read = sum(len(x.ids) for x in rcv)
            end = time.monotonic() + 10
            while self.acked_at_routers() < read:
                self.assertLess(time.monotonic(), end, f"{self.acked_at_routers()} of {read} acks counted")
                time.sleep(0.01)
            marks = [len(s) for s in sent]
            while any(len(s) < m + 20 for s, m in zip(sent, marks)):
                time.sleep(0.01)
            e11.kill9()
            for x in rcv:
                x.r.sock.close()
            for i in range(self.N):
                r = self.login(e12, f"rcv{i}", "r")  # replaces rcv{i}@.../r of dead edge 11
                # behind what the replacement sent back to the account (same shard, same link)
                self.barrier(r, f"rcv{i}@{DOMAIN}")
                early[i] = bodies(r.buf.decode(errors="replace"))
                r.buf = b""
                r.send(f"<enable xmlns='{SM}'/>")
                r.recv_until("<enabled[^>]*/>")
                r.buf = r.buf[r.buf.index(b"<enabled"):]
                r.send("<presence/>")
                again.append(r)
        finally:
            stop.set()
            for t in threads:
                t.join()
        back = [int(n) for rt in self.routers
                for n in re.findall(r"session rcv\d+@\S+/r: replaced: (\d+) messages", rt.log_text())]
        self.assertEqual(len(back), self.N, "every old session was replaced, not ended by the routers first:\n" +
                         "\n".join(l for rt in self.routers for l in rt.log_text().splitlines()
                                   if "rcv" in l and "offline queue" not in l)[-5000:])
        self.assertGreater(sum(back), 0, "the routers kept unacknowledged copies at the kill")
        self.assertEqual({i: m for i, m in early.items() if m}, {},
                         "messages to the bare JID reached a resource before its initial presence")
        self.wait_node_11_gone()
        dups, lost, total = [], [], 0
        answered = [0] * self.N
        from collections import Counter
        for i, r in enumerate(again):
            want = set(sent[i]) - set(rcv[i].ids)
            end = time.monotonic() + 20
            while not want <= set(bodies(r.buf.decode(errors="replace"))):
                missing = want - set(bodies(r.buf.decode(errors="replace")))
                self.assertGreater(end - time.monotonic(), 0, f"rcv{i}: {len(missing)} never came")
                r.sock.settimeout(0.5)
                try:
                    chunk = r.sock.recv(65536)
                except (socket.timeout, TimeoutError):
                    continue
                self.assertTrue(chunk, f"rcv{i}: stream closed")
                r.buf += chunk
                # answer the edge's <r/>: offline storage sends its next window once the
                # last one is acknowledged (h: every stanza since <enabled/>)
                text = r.buf.decode(errors="replace")
                asked = text.count(f"<r xmlns='{SM}'/>")
                if asked > answered[i]:
                    answered[i] = asked
                    r.send(f"<a xmlns='{SM}' h='{text.count('<message ') + text.count('<presence')}'/>")
            snd[i].send(message(f"rcv{i}@{DOMAIN}", "sentinel"))
            got = bodies(r.recv_until("sentinel</body>", timeout=10))
            self.assertEqual(got[-1], "sentinel")
            c = Counter(rcv[i].ids + got[:-1])
            total += sum(c.values())
            dups += [m for m, n in c.items() if n > 1]
            lost += [m for m in sent[i] if m not in c]
            self.assertEqual(set(c) - set(sent[i]), set())
            r.close()
        for s in snd:
            s.close()
        print(f"\n  {sum(len(s) for s in sent)} messages, {sum(back)} copies sent back at the replacements, "
              f"{total} received in all, {len(dups)} twice, {len(lost)} lost")
        self.assertEqual(lost, [], "lost")
        self.assertEqual(dups, [], f"{len(dups)} messages received twice")


class EdgeKilledSmResumeTest(EdgeKilledBase):
    """XEP-0198 §5 after the death (kill -9) of the edge node holding the sessions
    (docs/cluster.md "Stream resumption across nodes"): eight receivers with resumable
    stream management on edge 11 read and acknowledge messages that eight senders on edge
    12 send every 8 ms to their full JIDs; then they go on reading WITHOUT acknowledging
    (20 more each: read, never acknowledged to anyone), stop reading, and edge 11 is
    killed under the load. Each receiver resumes at once on edge 12 with the exact h of
    what it read: <resumed/> (the account's router answers from what it kept, once it
    sees edge 11 dead), then the messages it had not read, and every message arrives
    exactly once over the two connections. Before, the resumption failed (the state died
    with edge 11) and a new log-in got again every message read and not acknowledged."""

    def test_resume_after_the_edge_died_every_message_once(self):
        e11, e12 = self.edges
        rcv, previd = [], []
        for i in range(self.N):
            x = SmReceiver(self, e11, f"rcv{i}", resume=True)
            rcv.append(x)
            previd.append(x.previd)
        snd = [self.login(e12, f"snd{i}", "s") for i in range(self.N)]
        sent = [[] for _ in range(self.N)]
        stop = threading.Event()

        def sender(i):
            k = 0
            while not stop.is_set():
                k += 1
                mid = f"z{i}-{k}"
                snd[i].send(message(f"rcv{i}@{DOMAIN}/r", mid))
                sent[i].append(mid)
                time.sleep(0.008)

        threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(self.N)]
        for t in threads:
            t.start()
        again = []
        try:
            end = time.monotonic() + 15
            while min(len(x.ids) for x in rcv) < 100:  # the load is flowing to every receiver
                self.assertLess(time.monotonic(), end, "messages do not flow")
                time.sleep(0.02)
            marks = [len(x.ids) for x in rcv]
            for x in rcv:
                x.noack.set()
            end = time.monotonic() + 15
            while any(len(x.ids) < m + 20 for x, m in zip(rcv, marks)):
                self.assertLess(time.monotonic(), end, "messages do not flow")
                time.sleep(0.01)
            for x in rcv:
                x.freeze.set()
            for x in rcv:
                self.assertTrue(x.frozen.wait(5))
            unacked = sum(len(x.ids) - x.acked_ids for x in rcv)
            e11.kill9()
            for x in rcv:
                x.r.sock.close()
            for i, x in enumerate(rcv):
                r = RawStream(e12.port, timeout=20)
                r.starttls()
                r.auth_plain(f"rcv{i}", "pw")
                r.buf = b""
                r.send(f"<resume xmlns='{SM}' previd='{previd[i]}' h='{x.h}'/>")
                try:
                    text = r.recv_until(r"<resumed[^>]*/>|</failed>", timeout=20)
                except AssertionError:
                    raise AssertionError("\n".join(l for rt in self.routers + [e12] for l in rt.log_text().splitlines()
                                                   if ("resum" in l or "node 11" in l or "kept" in l or "down" in l or "rcv0" in l) and "offline queue" not in l)[-8000:])
                self.assertIn("<resumed", text, f"rcv{i}: the resumption failed")
                r.buf = r.buf[r.buf.index(b"<resumed"):]
                again.append(r)
            time.sleep(0.5)  # the senders go on a while with the receivers resumed on edge 12
        finally:
            stop.set()
            for t in threads:
                t.join()
        self.wait_node_11_gone()
        dups, lost, total = [], [], 0
        from collections import Counter
        for i, r in enumerate(again):
            h, answered = rcv[i].h, 0
            want = set(sent[i]) - set(rcv[i].ids)
            end = time.monotonic() + 20
            while not want <= set(bodies(r.buf.decode(errors="replace"))):
                missing = want - set(bodies(r.buf.decode(errors="replace")))
                self.assertGreater(end - time.monotonic(), 0, f"rcv{i}: {len(missing)} never came")
                r.sock.settimeout(0.5)
                try:
                    chunk = r.sock.recv(65536)
                except (socket.timeout, TimeoutError):
                    continue
                self.assertTrue(chunk, f"rcv{i}: stream closed")
                r.buf += chunk
                text = r.buf.decode(errors="replace")
                asked = text.count(f"<r xmlns='{SM}'/>")
                if asked > answered:
                    answered = asked
                    r.send(f"<a xmlns='{SM}' h='{h + text.count('<message ')}'/>")
            snd[i].send(message(f"rcv{i}@{DOMAIN}/r", "sentinel"))
            got = bodies(r.recv_until("sentinel</body>", timeout=10))
            self.assertEqual(got[-1], "sentinel")
            c = Counter(rcv[i].ids + got[:-1])
            total += sum(c.values())
            dups += [m for m, n in c.items() if n > 1]
            lost += [m for m in sent[i] if m not in c]
            self.assertEqual(set(c) - set(sent[i]), set())
            r.close()
        for s in snd:
            s.close()
        resumed = sum(rt.log_text().count("resumed at node 12 after its edge's death") for rt in self.routers)
        print(f"\n  {sum(len(s) for s in sent)} messages, {unacked} read and not acknowledged at the kill, "
              f"{resumed} sessions resumed from a router, {total} received in all, {len(dups)} twice, "
              f"{len(lost)} lost")
        self.assertEqual(resumed, self.N)
        self.assertEqual(lost, [], "lost")
        self.assertEqual(dups, [], f"{len(dups)} messages received twice")


class SlixmppEdgeKilledResumeTest(ClusterResumeBase):
    """A real client (slixmpp, XEP-0198 plugin) resumes its session on edge 12 after edge
    11, which held it, was killed (-9) in the middle of a conversation: <resumed/> (from
    the account's router, once it sees edge 11 dead), no presence change seen by its
    contact, every message exactly once (docs/cluster.md "Stream resumption across
    nodes"). Before, the resumption got no answer (or <failed/> once the routers had
    ended the session) and slixmpp started a new session."""
    edge_ids = (11, 12)

    def test_slixmpp_resumes_after_its_edge_was_killed(self):
        a, b = self.edges

        async def go():
            alice = Client(b, f"alice@{DOMAIN}/slix", "pw")
            bob = Client(a, f"bob@{DOMAIN}/slix", "pw")
            bob.register_plugin("xep_0198")
            bob.plugin["xep_0198"].window = 1000
            loop = asyncio.get_running_loop()
            resumed, enabled, down = loop.create_future(), loop.create_future(), loop.create_future()
            bob.add_event_handler("session_resumed", lambda e: resumed.done() or resumed.set_result(True))
            bob.add_event_handler("session_end", lambda e: resumed.done() or resumed.set_result(False))
            bob.add_event_handler("sm_enabled", lambda e: enabled.done() or enabled.set_result(True))
            bob.add_event_handler("disconnected", lambda e: down.done() or down.set_result(True))
            self.assertTrue(await alice.login())
            self.assertTrue(await bob.login())
            await asyncio.wait_for(enabled, 10)
            alice.send_presence()
            bob.send_presence(pto=alice.boundjid.full)
            await alice.next_presence(10, pred=lambda p: p["from"] == bob.boundjid)
            n = 300
            ids = [f"id{i}" for i in range(n)]
            send = asyncio.ensure_future(paced_send(alice, f"bob@{DOMAIN}/slix", ids))
            got = []
            while len(got) < 80:
                got.append((await bob.next_message(10))["id"])
            self.killed = a
            a.kill9()  # the edge dies mid-conversation
            await asyncio.wait_for(down, 10)
            bob.connect(("127.0.0.1", b.port))  # the other edge node
            self.assertTrue(await asyncio.wait_for(resumed, 20), "slixmpp resumed on edge 12")
            await send
            while len(got) < n:
                try:
                    got.append((await bob.next_message(timeout=10))["id"])
                except asyncio.TimeoutError:
                    self.fail(f"missing {sorted(set(ids) - set(got), key=lambda x: int(x[2:]))}, "
                              f"{len(got) - len(set(got))} duplicates")
            self.assertEqual(sorted(got, key=lambda x: int(x[2:])), ids, "every message exactly once")
            self.assertEqual(got, ids, "in order")
            with self.assertRaises(asyncio.TimeoutError):
                await bob.next_message(timeout=0.5)
            while not alice.presences.empty():
                self.assertNotEqual(alice.presences.get_nowait()["type"], "unavailable")
            self.assertEqual(bob.boundjid.full, f"bob@{DOMAIN}/slix")
            self.assertTrue(any("resumed at node 12 after its edge's death" in rt.log_text() for rt in self.routers))
            await bob.close()
            await alice.close()

        run(go())
