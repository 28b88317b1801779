"""XEP-0160 offline storage under size: a queue far larger than a connection's output
bound (limits.max_pending_out) reaches a client that reads continuously, every message
exactly once, with and without XEP-0198, and a connection lost half-way loses nothing
(router/mod_offline.c: windows confirmed by the edge, removed from the store only once the
client took them). Also the byte bound of the queue (limits.offline_max_bytes).

Raw XML for exact counts (and XEP-0198 answers computed from what was really read), and
slixmpp with its XEP-0198 plugin."""
import asyncio
import os
import re
import sqlite3
import time
import unittest

from harness import DOMAIN, Client, RawStream, ServerTest, run

SM = "urn:xmpp:sm:3"
N = 100
BODY = 100_000
TOP = re.compile(r"<(message|presence|iq|r)\b")


def queued(srv, bare):
    """Messages in bare's offline queue, read from the server's SQLite file."""
    db = sqlite3.connect(os.path.join(srv.dir, "xmppd.db"), timeout=10)
    try:
        return db.execute("SELECT count(*) FROM offline WHERE owner = ?", (bare,)).fetchone()[0]
    finally:
        db.close()


def wait_queued(srv, bare, n, timeout=30):
    end = time.monotonic() + timeout
    while queued(srv, bare) != n:
        if time.monotonic() > end:
            raise AssertionError(f"{bare}: {queued(srv, bare)} queued, waiting for {n}")
        time.sleep(0.05)


class Reader:
    """Reads a bound raw stream continuously and splits it into top-level elements in
    stream order. With XEP-0198 on, every <r/> is answered with the number of stanzas
    read before it (what a well-behaved client acknowledges)."""

    def __init__(self, stream, sm=False, pace=0):
        self.s = stream
        self.sm = sm
        self.pace = pace  # seconds between reads: a client that reads on, not at once
        self.text = ""
        self.pos = 0
        self.stanzas = 0
        self.ids = []  # ids of the messages, in the order read

    def _scan(self):
        while True:
            m = TOP.search(self.text, self.pos)
            if not m:
                return
            name = m.group(1)
            gt = self.text.find(">", m.start())
            if gt < 0:
                return
            if self.text[gt - 1] == "/":
                end = gt + 1
            else:
                close = self.text.find(f"</{name}>", gt)
                if close < 0:
                    return
                end = close + len(name) + 3
            elem = self.text[m.start():end]
            self.pos = end
            if name == "r":
                if self.sm:
                    self.s.send(f"<a xmlns='{SM}' h='{self.stanzas}'/>")
                continue
            self.stanzas += 1
            if name == "message":
                mid = re.search(r"\bid=['\"]([^'\"]+)['\"]", elem[:elem.find(">") + 1])
                self.ids.append(mid.group(1) if mid else None)

    def read_until(self, pred, timeout=30):
        end = time.monotonic() + timeout
        while not pred(self):
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timeout: {len(self.ids)} messages read, {len(set(self.ids))} distinct")
            self.s.sock.settimeout(min(left, 0.1))
            if self.pace:
                time.sleep(self.pace)
            try:
                chunk = self.s.sock.recv(1 << 16 if self.pace else 1 << 20)
            except (TimeoutError, OSError) as e:
                if "timed out" in str(e):
                    continue
                raise AssertionError(f"connection lost after {len(self.ids)} messages: {e}")
            if not chunk:
                raise AssertionError(f"connection closed after {len(self.ids)} messages: {self.text[-300:]!r}")
            self.text += chunk.decode(errors="replace")
            self._scan()
            if self.pos > 1 << 20:  # keep memory flat: drop what was scanned
                self.text = self.text[self.pos:]
                self.pos = 0


def fill(srv, sender, to, n=N, size=BODY, prefix="m"):
    """sender leaves n messages of about size bytes for the offline account `to`; returns
    their ids once all are stored."""
    a = RawStream(srv.port, timeout=30).login(sender, "pw", "w")
    pad = "x" * size
    ids = [f"{prefix}{i}" for i in range(n)]
    for mid in ids:
        a.send(f"<message to='{to}@{DOMAIN}' id='{mid}' type='chat'><body>{mid} {pad}</body></message>")
    wait_queued(srv, f"{to}@{DOMAIN}", n)
    a.close()
    return ids


class OfflineDeliveryTest(ServerTest):
    users = ("alice", "bob", "carol", "dave", "erin", "frank", "gina")
    # 100 x 100 KB is 2.4 times limits.max_pending_out (4 MiB, the default)
    server_options = {"limits.rate_stanzas": "0", "limits.rate_bytes": "0"}

    def drain(self, user, sm, resource="r", pace=0):
        # a small receive buffer: the server's writes complete only as the client reads
        s = RawStream(self.srv.port, timeout=30, rcvbuf=65536 if pace else None).login(user, "pw", resource)
        s.buf = b""
        r = Reader(s, sm, pace)
        if sm:
            s.send(f"<enable xmlns='{SM}'/>")
            s.recv_until("<enabled[^>]*/>")
            r.text = s.buf.decode(errors="replace")
            r.pos = r.text.find("/>", r.text.find("<enabled")) + 2  # counting starts here
        s.send("<presence/>")
        return s, r

    def emptied(self, r, user):
        """Reads on (answering <r/>) until user's queue is empty."""
        r.read_until(lambda r: queued(self.srv, f"{user}@{DOMAIN}") == 0, timeout=10)

    def check_all_once(self, user, sm):
        ids = fill(self.srv, "alice", user)
        s, r = self.drain(user, sm, pace=0.002)  # about 30 MB/s, reading all the time
        r.read_until(lambda r: len(r.ids) >= N)
        self.assertEqual(sorted(r.ids), sorted(ids), "every message, exactly once")
        self.assertEqual(r.ids, ids, "in the order they were sent")
        # removed from the store only as they were taken: all of them by now
        self.emptied(r, user)
        self.assertTrue(self.srv.alive())
        s.close()
        # and nothing comes again at the next log-in
        s, r = self.drain(user, sm, "again")
        s.send(f"<iq type='get' id='ping1' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
        r.read_until(lambda r: "ping1" in r.text)
        self.assertEqual(r.ids, [], "nothing delivered twice")
        s.close()

    def test_large_queue_reaches_a_reading_client(self):
        self.check_all_once("bob", sm=False)

    def test_large_queue_reaches_a_reading_client_with_stream_management(self):
        self.check_all_once("carol", sm=True)

    def test_connection_lost_half_way_loses_nothing(self):
        """XEP-0198 client whose connection dies mid-delivery: what it acknowledged is
        gone from the store, the rest is still there and comes at the next log-in (at
        least once: read but not yet acknowledged ones may come again)."""
        ids = fill(self.srv, "alice", "dave")
        s, r = self.drain("dave", sm=True)
        r.read_until(lambda r: len(r.ids) >= 30)
        s.sock.close()  # gone, without </stream:stream>, mid-delivery
        first = list(r.ids)
        time.sleep(0.3)
        left = queued(self.srv, f"dave@{DOMAIN}")
        self.assertGreater(left, 0, "what was not taken is still stored")
        self.assertGreaterEqual(left, N - len(first), "nothing removed before the client took it")
        s, r = self.drain("dave", sm=True, resource="again")
        r.read_until(lambda r: len(r.ids) >= left)
        self.assertEqual(r.ids, ids[N - left:], "exactly what was left, in order")
        self.assertEqual(set(first) | set(r.ids), set(ids), "nothing lost")
        self.emptied(r, "dave")
        s.close()

    def test_stream_management_unacknowledged_rest_stays_stored(self):
        """With XEP-0198, what the client never acknowledged is neither lost nor queued
        twice when the connection dies (the handed-back copies are dropped: the store
        still has them)."""
        ids = fill(self.srv, "alice", "erin", n=20, size=1000)
        s = RawStream(self.srv.port, timeout=30).login("erin", "pw", "r")
        s.send(f"<enable xmlns='{SM}'/>")
        s.recv_until("<enabled[^>]*/>")
        s.buf = b""
        s.send("<presence/>")
        r = Reader(s, sm=False)  # reads, never acknowledges
        r.read_until(lambda r: len(r.ids) >= 1)
        r.read_until(lambda r: "<r xmlns" in r.text)
        got = list(r.ids)
        s.sock.close()
        time.sleep(0.3)
        self.assertEqual(queued(self.srv, f"erin@{DOMAIN}"), 20, "nothing acknowledged, nothing removed")
        s2, r2 = self.drain("erin", sm=True, resource="again")
        r2.read_until(lambda r: len(r.ids) >= 20)
        self.assertEqual(r2.ids, ids, "each exactly once, in order")
        self.emptied(r2, "erin")
        self.assertTrue(set(got) <= set(ids))
        s2.close()

    def test_slixmpp_with_stream_management_gets_the_whole_queue(self):
        ids = fill(self.srv, "alice", "frank", n=60)

        async def go():
            f = Client(self.srv, f"frank@{DOMAIN}/sm", "pw")
            f.register_plugin("xep_0198")
            self.assertTrue(await f.login())
            f.send_presence()
            got = []
            while len(got) < 60:
                m = await f.next_message(timeout=30)
                self.assertEqual(m["type"], "chat", str(m)[:300])
                got.append(m["id"])
            self.assertEqual(got, ids)
            await f.close()
        run(go())
        wait_queued(self.srv, f"frank@{DOMAIN}", 0, timeout=10)


class OfflineByteLimitTest(ServerTest):
    users = ("alice", "bob")
    server_options = {"limits.rate_stanzas": "0", "limits.rate_bytes": "0",
                      "limits.offline_max_bytes": "250000"}

    def test_queue_is_bounded_in_bytes(self):
        a = RawStream(self.srv.port, timeout=30).login("alice", "pw", "w")
        pad = "x" * BODY
        for i in range(2):
            a.send(f"<message to='bob@{DOMAIN}' id='b{i}' type='chat'><body>{pad}</body></message>")
        wait_queued(self.srv, f"bob@{DOMAIN}", 2)
        a.buf = b""
        a.send(f"<message to='bob@{DOMAIN}' id='b2' type='chat'><body>{pad}</body></message>")
        text = a.recv_until(r"</message>", timeout=10)
        self.assertIn("id='b2'", text)
        self.assertIn("type='error'", text)
        self.assertIn("<service-unavailable", text)
        self.assertEqual(queued(self.srv, f"bob@{DOMAIN}"), 2)
        # a small one still fits
        a.buf = b""
        a.send(f"<message to='bob@{DOMAIN}' id='b3' type='chat'><body>small</body></message>")
        wait_queued(self.srv, f"bob@{DOMAIN}", 3)
        a.close()


if __name__ == "__main__":
    unittest.main()
