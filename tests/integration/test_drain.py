"""A planned drain of an edge node (docs/operations.md "Draining an edge"): `xmppctl drain
RATE HOST:PORT` on edge A makes A refuse new connections at once, then send each of its
clients <see-other-host>HOST:PORT</see-other-host> (RFC 6120 §4.9.3.19), RATE per second;
a session with XEP-0198 resumption is detached first, so its client resumes it on the
other edge (docs/cluster.md "Stream resumption across nodes"). Redis, 1 router, 2 edges;
clients on A receive a steady flow of messages from a client on B while A drains: each
client is sent to B, comes back there (slixmpp follows see-other-host and resumes by
itself; raw XML for a resume and for a plain log-in), and every message arrives exactly
once, with no error to the sender."""
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from harness import DOMAIN, XMPPCTL, Client, Redis, RawStream, ServerTest, run
from test_cluster import Node, login

SM = "urn:xmpp:sm:3"
STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"


def bodies(text):
    return re.findall(r"<body>([^<]*)</body>", text)


class DrainTest(unittest.TestCase):
    opts = {"limits.sm_max_unacked": "1000", "limits.rate_stanzas": "0", "limits.sm_resume_timeout": "30",
            "server.log_level": "info"}

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="xd-drain-")
        cls.redis = Redis()
        cls.redis.start()
        cls.router = Node(cls.redis, 1, "router", **cls.opts)
        cls.edges = [Node(cls.redis, i, "edge", **dict(cls.opts, **{"server.control_socket":
                                                                    os.path.join(cls.tmp, f"{i}.ctl")}))
                     for i in (11, 12)]
        for u in ("alice", "bob", "carol", "dave"):
            cls.edges[0].adduser(f"{u}@{DOMAIN}", "pw")
        for n in [cls.router] + cls.edges:
            n.start()
        deadline = time.time() + 15
        while not all("1 routers," in e.log_text() for e in cls.edges):
            if time.time() > deadline:
                raise AssertionError("edges never saw the router:\n" + cls.edges[0].log_text())
            time.sleep(0.1)

    @classmethod
    def tearDownClass(cls):
        bad = []
        try:
            for n in cls.edges + [cls.router]:  # the drained edge A too: a clean stop, status 0
                if n.proc and n.proc.poll() is None and n.stop() != 0:
                    bad.append(n.log_text()[-3000:])
        finally:
            cls.redis.stop()
            cls.redis.cleanup()
            shutil.rmtree(cls.tmp, ignore_errors=True)
        assert not bad, bad

    def ctl(self, node, *args):
        r = subprocess.run([XMPPCTL, "--socket", os.path.join(self.tmp, f"{node.node_id}.ctl"), *args],
                           capture_output=True, text=True, timeout=30)
        return r.returncode, json.loads(r.stdout) if r.stdout.strip() else None

    def test_drain_sends_every_client_to_the_other_edge_each_message_once(self):
        a, b = self.edges
        target = f"127.0.0.1:{b.port}"
        rc, bad = self.ctl(a, "drain", "0", target)
        self.assertEqual((rc, bad["ok"]), (1, False), "a rate of 0 is refused")
        rc, bad = self.ctl(a, "drain", "2", "not a host")
        self.assertEqual((rc, bad["ok"]), (1, False), "a bad target is refused")
        rc, st = self.ctl(a, "status")
        self.assertNotIn("drain", st, "the refused requests started no drain")

        # carol (raw XML, XEP-0198 with resumption) and dave (raw XML, no XEP-0198) on A
        carol = RawStream(a.port, timeout=10).login("carol", "pw", "raw")
        carol.buf = b""
        carol.send(f"<enable xmlns='{SM}' resume='true'/>")
        previd = re.search(r"<enabled[^>]*id='([0-9a-f]+)'", carol.recv_until("<enabled[^>]*/>")).group(1)
        carol.buf = b""
        dave = RawStream(a.port, timeout=10).login("dave", "pw", "raw")
        dave.buf = b""
        got = {"carol": [], "dave": []}
        moved = {}  # who -> (time the see-other-host came, its value)
        back = {"carol": threading.Event(), "dave": threading.Event()}
        errors = []

        def follow(who, s):
            try:
                text = s.recv_until("</stream:stream>", timeout=60)
                moved[who] = (time.monotonic(), re.search(
                    rf"<stream:error><see-other-host xmlns='{STREAMS}'>([^<]*)</see-other-host></stream:error>",
                    text).group(1) if "see-other-host" in text else text[-300:])
                before = bodies(text)
                got[who] += before
                s.close()
                host, port = moved[who][1].rsplit(":", 1)
                self.assertEqual(host, "127.0.0.1")
                if who == "carol":  # resumes there, acknowledging what it read (h counts messages)
                    s2 = RawStream(int(port), timeout=10)
                    s2.starttls()
                    s2.auth_plain("carol", "pw")
                    s2.buf = b""
                    s2.send(f"<resume xmlns='{SM}' previd='{previd}' h='{len(before)}'/>")
                    text = s2.recv_until(r"<resumed[^>]*/>|</failed>", timeout=10)
                    if "<resumed" not in text:
                        raise AssertionError("carol's resume failed: " + text)
                else:  # logs in again there; its initial presence brings the offline messages
                    s2 = RawStream(int(port), timeout=10).login("dave", "pw", "raw")
                    s2.buf = b""
                    s2.send("<presence/>")
                back[who].set()
                text = s2.recv_until(f"{who}-end</body>", timeout=60)
                got[who] += bodies(text)
                s2.close()
            except Exception as e:  # reported by the main thread
                errors.append(f"{who}: {e!r}")
                back[who].set()

        async def go():
            alice = await login(b, f"alice@{DOMAIN}/b", presence=False)
            bob = Client(a, f"bob@{DOMAIN}/slix", "pw")
            bob.register_plugin("xep_0198")
            loop = asyncio.get_running_loop()
            enabled, resumed = loop.create_future(), loop.create_future()
            bob.add_event_handler("sm_enabled", lambda e: enabled.done() or enabled.set_result(True))
            bob.add_event_handler("session_resumed", lambda e: resumed.done() or resumed.set_result(True))
            # Debian's slixmpp (1.8) sees see-other-host but reconnects to the JID's domain,
            # port 5222 (ClientXMPP.connect() without an address drops the one it set): its
            # own redirect is turned off, and the client connects where it was sent, as an
            # application does
            bob.max_redirects = -1
            bob_moved = []

            def redirected(e):
                if e["condition"] == "see-other-host":
                    bob_moved.append(time.monotonic())
                    host, port = e["see_other_host"].rsplit(":", 1)
                    bob.add_event_handler("disconnected", lambda _: bob.connect((host, int(port))), disposable=True)

            bob.add_event_handler("stream_error", redirected)
            self.assertTrue(await bob.login())
            await asyncio.wait_for(enabled, 10)
            threads = [threading.Thread(target=follow, args=(w, s), daemon=True)
                       for w, s in (("carol", carol), ("dave", dave))]
            for t in threads:
                t.start()
            sent = 0
            to = {"bob": f"bob@{DOMAIN}/slix", "carol": f"carol@{DOMAIN}/raw", "dave": f"dave@{DOMAIN}/raw"}

            def send_round():
                nonlocal sent
                for who, jid in to.items():
                    alice.send_message(mto=jid, mbody=f"{who}-{sent}", mtype="chat")
                sent += 1

            for _ in range(20):  # a flow before the drain
                send_round()
            await asyncio.sleep(0.2)
            drain = loop.run_in_executor(None, self.ctl, a, "drain", "2", target)
            while not drain.done():
                send_round()
                await asyncio.sleep(0.02)
            rc, ans = drain.result()
            self.assertEqual(rc, 0, ans)
            self.assertEqual((ans["count"], ans["rate"], ans["target"]), (3, 2, target))
            with self.assertRaises(ConnectionRefusedError, msg="A accepts no new connection while draining"):
                socket.create_connection(("127.0.0.1", a.port), timeout=2).close()
            rc, again = self.ctl(a, "drain", "2", target)
            self.assertEqual((rc, again["ok"]), (1, False), "one drain at a time")
            end = time.monotonic() + 30
            while not (resumed.done() and all(e.is_set() for e in back.values())):
                self.assertEqual(errors, [])
                self.assertLess(time.monotonic(), end, f"not all back on B: moved {moved}, errors {[e[:300] for e in errors]}"
                                + "\n".join(l for l in a.log_text().split("\n") if "bob" in l))
                send_round()
                await asyncio.sleep(0.02)
            for _ in range(20):  # and after
                send_round()
                await asyncio.sleep(0.01)
            for who, jid in to.items():
                alice.send_message(mto=jid, mbody=f"{who}-end", mtype="chat")
            self.assertEqual(await resumed, True, "slixmpp followed see-other-host and resumed its session")
            err = bob.stream_errors.get_nowait()
            self.assertEqual((err["condition"], err["see_other_host"]), ("see-other-host", target))
            self.assertEqual(bob.address, ("127.0.0.1", b.port), "slixmpp is connected to B now")
            got_bob = []
            while not got_bob or got_bob[-1] != "bob-end":
                got_bob.append((await bob.next_message(20))["body"])
            for t in threads:
                await loop.run_in_executor(None, t.join, 60)
            self.assertEqual(errors, [])
            want = lambda who: [f"{who}-{i}" for i in range(sent)] + [f"{who}-end"]
            for who, g in (("bob", got_bob), ("carol", got["carol"]), ("dave", got["dave"])):
                self.assertEqual(len(g), len(set(g)), f"{who}: duplicates {sorted(x for x in set(g) if g.count(x) > 1)}")
                self.assertEqual(sorted(g), sorted(want(who)), f"{who}: missing {sorted(set(want(who)) - set(g))}")
            await asyncio.sleep(0.3)
            while not alice.messages.empty():
                m = alice.messages.get_nowait()
                self.assertNotEqual(m["type"], "error", f"a stanza error came back: {m}")
            # the moves were spread over time: 3 connections at 2 per second
            times = sorted([t for t, _ in moved.values()] + bob_moved[:1])
            self.assertEqual({v for _, v in moved.values()}, {target})
            await bob.close()
            await alice.close()
            return times

        times = run(go())
        self.assertEqual(len(times), 3)
        self.assertGreaterEqual(times[-1] - times[0], 0.9, "3 connections at 2 per second: 1 s at least")
        # status: done once no connection and no detached session remain on A
        end = time.monotonic() + 15
        while True:
            rc, st = self.ctl(a, "status")
            if st["drain"]["state"] == "done":
                break
            self.assertLess(time.monotonic(), end, st)
            time.sleep(0.1)
        self.assertEqual((st["drain"]["connections"], st["drain"]["detached"], st["drain"]["target"]), (0, 0, target))
        self.assertEqual(st["sessions"], 0)
        self.assertIn("handed over to node 12", a.log_text(), "carol's and bob's sessions were resumed on B")
        self.assertEqual(a.log_text().count("handed over to node 12"), 2)


class DrainAloneTest(ServerTest):
    """One process, no other edge: `drain RATE` without a target refuses new connections
    (both ports) and ends each stream with <system-shutdown/>; a session with XEP-0198 is
    not kept for a resumption (no node could take it), its unacknowledged messages go to
    offline storage as in a stop; status says done, and the server still stops cleanly."""
    users = ("alice", "bob")

    def test_drain_without_target_shuts_streams_down(self):
        bob = RawStream(self.srv.port, timeout=10).login("bob", "pw", "raw")
        bob.send(f"<enable xmlns='{SM}' resume='true'/>")
        bob.recv_until("<enabled[^>]*/>")
        alice = RawStream(self.srv.port, timeout=10).login("alice", "pw", "raw")
        alice.send(f"<message to='bob@{DOMAIN}/raw' type='chat' id='m1'><body>m1</body></message>")
        bob.recv_until("m1</body>")  # not acknowledged
        for bad in (["100001"], ["x"], ["5", "host:65536"], ["5", "[::1"], ["5", "a_b:5222"]):  # past the caps, bad forms
            r = subprocess.run([XMPPCTL, "-c", self.srv.conf, "drain", *bad], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 1, (bad, r.stdout))
        r = subprocess.run([XMPPCTL, "-c", self.srv.conf, "drain", "100000"], capture_output=True, text=True,
                           timeout=30)  # the highest rate
        self.assertEqual(r.returncode, 0, r.stderr)
        ans = json.loads(r.stdout)
        self.assertEqual((ans["count"], ans["target"]), (2, None))
        for port in (self.srv.port, self.srv.tls_port):
            with self.assertRaises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        for s in (bob, alice):
            text = s.recv_until("</stream:stream>", timeout=10)
            self.assertIn("<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", text)
            self.assertNotIn("see-other-host", text)
        end = time.monotonic() + 10
        while True:
            st = json.loads(subprocess.run([XMPPCTL, "-c", self.srv.conf, "status"], capture_output=True,
                                           text=True, timeout=30).stdout)
            if st["drain"]["state"] == "done":
                break
            self.assertLess(time.monotonic(), end, st)
            time.sleep(0.1)
        self.assertEqual((st["drain"]["detached"], st["sessions"]), (0, 0), "no session kept for a resumption")
        self.assertNotIn("detached for resumption", self.srv.log_text())


if __name__ == "__main__":
    unittest.main()
