"""Configurable limits (issue: hold up under attack): per-address connection caps,
authentication back-off, the input shaper (flood), slow readers, resources per account,
roster size. Each test asserts the exact error and that other users are unharmed."""
import asyncio
import os
import re
import select
import socket
import sqlite3
import ssl
import threading
import time

from harness import DOMAIN, SANITIZED, Client, RawStream, ServerTest, rss_kib, run

STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"




async def chat_ok(test, a, b, n=5, timeout=5):
    """a and b exchange n messages each way; every one arrives."""
    for i in range(n):
        a.send_message(mto=b.boundjid.full, mbody=f"a{i}", mtype="chat")
        b.send_message(mto=a.boundjid.full, mbody=f"b{i}", mtype="chat")
    def ours(m):  # skip errors bounced for earlier traffic
        return m["type"] == "chat"
    got_b = [(await b.next_message(timeout, ours))["body"] for _ in range(n)]
    got_a = [(await a.next_message(timeout, ours))["body"] for _ in range(n)]
    test.assertEqual(got_b, [f"a{i}" for i in range(n)])
    test.assertEqual(got_a, [f"b{i}" for i in range(n)])


class ConnectionCapTest(ServerTest):
    users = ("alice",)
    server_options = {"limits.max_conns_per_ip": "5", "limits.auth_fail_ip": "3"}

    def test_sixth_connection_from_one_address_refused(self):
        held = [RawStream(self.srv.port, src="127.0.0.5") for _ in range(5)]
        for r in held:
            r.open_stream()
            r.recv_until(r"</stream:features>")
        extra = RawStream(self.srv.port, src="127.0.0.5")
        text = extra.recv_until(r"</stream:stream>")
        self.assertIn("<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", text)
        self.assertTrue(extra.closed())
        # another address is not affected
        RawStream(self.srv.port, src="127.0.0.6").login("alice", "pw").close()
        # a freed slot is usable again
        held.pop().close()
        deadline = time.monotonic() + 5  # until the server has seen the close
        while True:
            r = RawStream(self.srv.port, src="127.0.0.5")
            r.open_stream()
            text = r.recv_until(r"</stream:features>|</stream:stream>")
            if "</stream:features>" in text:
                break
            r.close()
            self.assertLess(time.monotonic(), deadline, "the freed slot never became usable")
            time.sleep(0.05)
        for r2 in held + [r, extra]:
            r2.close()

    def test_auth_failures_back_off_per_address(self):
        for _ in range(3):
            r = RawStream(self.srv.port, src="127.0.0.7")
            r.starttls()
            r.open_stream()
            r.recv_until(r"</stream:features>")
            r.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHdyb25n</auth>")
            r.recv_until(r"<not-authorized/>")
            r.close()
        # now even the right password is refused from that address, without a check
        r = RawStream(self.srv.port, src="127.0.0.7")
        r.starttls()
        r.open_stream()
        r.recv_until(r"</stream:features>")
        r.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth>")
        text = r.recv_until(r"</failure>")
        self.assertIn("<temporary-auth-failure/>", text)
        self.assertIn("too many failed attempts", text)
        r.close()
        # alice from elsewhere logs in fine
        RawStream(self.srv.port, src="127.0.0.8").login("alice", "pw").close()


class FloodTest(ServerTest):
    users = ("alice", "bob", "carol", "mallory")
    server_options = {"limits.rate_stanzas": "20", "limits.rate_burst": "1", "limits.rate_grace": "2"}

    def test_flooder_slowed_then_disconnected_others_unharmed(self):
        async def go():
            a, b, c, m = (Client(self.srv, f"{u}@{DOMAIN}", "pw") for u in ("alice", "bob", "carol", "mallory"))
            for x in (a, b, c, m):
                self.assertTrue(await x.login())
            gone = asyncio.get_running_loop().create_future()
            c.send_presence()
            m.add_event_handler("disconnected", lambda e: gone.done() or gone.set_result(time.monotonic()))
            from_m = []
            c.add_event_handler("message", lambda msg: from_m.append(msg) if msg["from"].user == "mallory" else None)
            t0 = time.monotonic()
            sent = 0
            # mallory at 10x her rate (200/s against 20/s); alice and bob chat meanwhile
            chat = asyncio.create_task(self._chat_slowly(a, b, 30))
            while not gone.done() and time.monotonic() - t0 < 15:
                for _ in range(20):
                    m.send_message(mto=f"carol@{DOMAIN}", mbody=f"flood {sent}", mtype="chat")
                    sent += 1
                await asyncio.sleep(0.1)
            self.assertTrue(gone.done(), "the flooder was never disconnected")
            elapsed = gone.result() - t0
            err = await asyncio.wait_for(m.stream_errors.get(), 2)
            self.assertEqual(err["condition"], "policy-violation")
            self.assertLess(elapsed, 10)
            await asyncio.sleep(0.5)
            # slowed: carol got about the allowed rate, not what mallory sent
            self.assertLess(len(from_m), 20 * elapsed + 20 + 40)
            self.assertGreater(sent, 3 * len(from_m))
            await chat
            for x in (a, b, c):
                await x.close()
        run(go())

    async def _chat_slowly(self, a, b, n):
        got = []
        for i in range(n):
            a.send_message(mto=b.boundjid.full, mbody=f"hi {i}", mtype="chat")
            got.append((await b.next_message(5))["body"])
            await asyncio.sleep(0.1)
        self.assertEqual(got, [f"hi {i}" for i in range(n)])


class PartialWriteTest(ServerTest):
    """A reader that falls behind by more than the kernel's socket buffers hold."""
    users = ("sloth", "sender")
    server_options = {"limits.max_pending_out": "33554432", "limits.rate_bytes": "0",
                      "limits.rate_stanzas": "0", "server.mam": "false"}

    def test_reader_behind_for_a_while_gets_every_message_in_order(self):
        """The server writes what the kernel takes at once and keeps the rest for a later
        write (edge/conn.c, flush_one: uv_try_write, then uv_write for the rest). 24 MB
        for a client that does not read for a second (more than the loopback socket
        buffers take: partial writes), then reads: every message once, in order, its TLS
        records whole (a rest dropped or written twice breaks the record layer)."""
        slow = RawStream(self.srv.port, timeout=30).login("sloth", "pw", "r")
        sender = RawStream(self.srv.port).login("sender", "pw", "s")
        n, body = 6000, "y" * 4000
        for k in range(0, n, 100):
            sender.send("".join(f"<message to='sloth@{DOMAIN}/r' type='chat' id='p{i}'><body>{i} {body}</body></message>"
                                for i in range(k, k + 100)))
        time.sleep(1)
        data, seen, pos, end = bytearray(), 0, 0, time.monotonic() + 60
        while seen < n and time.monotonic() < end:
            slow.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = slow.sock.recv(1 << 20)
            except (socket.timeout, TimeoutError):
                continue
            if not chunk:
                break
            data += chunk
            while (hit := data.find(b"</message>", pos)) >= 0:
                seen, pos = seen + 1, hit + 10
        got = [int(x) for x in re.findall(rb"<body>(\d+) y+</body>", data)]
        self.assertEqual(got, list(range(n)))
        self.assertNotIn("does not read", self.srv.log_text())
        slow.close()
        sender.close()


class SlowReaderTest(ServerTest):
    users = ("alice", "bob", "sloth", "sender")
    # archiving off: 20 MB of archive writes grow SQLite's page caches by up to 2 MiB per
    # worker, which is not what this measures; bus queues bounded at 1 MiB: with the
    # default 8 MiB the frames in flight towards the worker may legitimately hold a few MB
    # on a loaded machine (seen: 3.4 MB against the 3.3 MB the test allows)
    server_options = {"limits.max_pending_out": "262144", "limits.rate_bytes": "0",
                      "limits.rate_stanzas": "0", "limits.offline_max": "10", "server.mam": "false",
                      "limits.bus_queue_bytes": "1048576"}

    def test_reader_that_never_reads_is_disconnected_memory_bounded(self):
        """10 MB at a client that reads nothing (its receive buffer 4 KiB): the server
        holds at most limits.max_pending_out for it, then closes the connection (the
        rest goes to offline storage, 10 at most, then bounces). Checked: the server's
        RSS grew by well under what was sent (a server that kept the backlog grows by
        more than the 10 MB), the connection really ended (EOF once the little the
        kernel buffered is read: the server's send buffer may hold a few MB), and alice
        and bob still chat. The flood comes from a raw stream that drains the ~2,500
        bounces between its sends (one thread: a TLS socket is never read and written at
        once) (a slixmpp sender parsing 10 MB of bounces
        on a loaded machine fell behind and was itself cut off as a slow reader)."""
        sloth = RawStream(self.srv.port, rcvbuf=4096).login("sloth", "pw")
        sloth.send("<presence/>")
        sloth.recv_until("<presence[^>]*/>")
        sender = RawStream(self.srv.port).login("sender", "pw", "s")
        sender.sock.setblocking(False)
        body = "x" * 4000
        flood = {"sent": 0, "done": False, "eof": False}

        def drain(seconds):
            end = time.monotonic() + seconds
            while not flood["eof"]:
                left = end - time.monotonic()
                if left <= 0:
                    return
                r, _, _ = select.select([sender.sock], [], [], left)
                if not r:
                    continue
                try:
                    if not sender.sock.recv(1 << 20):
                        flood["eof"] = True
                except (ssl.SSLWantReadError, BlockingIOError):
                    pass
                except OSError:
                    flood["eof"] = True

        def send_all(data):
            view = memoryview(data.encode())
            while view and not flood["eof"]:
                try:
                    view = view[sender.sock.send(view):]
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    drain(0.01)

        def run_flood():  # one thread reads and writes the TLS socket: never two at once
            for i in range(50):  # 2,500 messages, 10 MB, whatever the server does meanwhile
                send_all("".join(f"<message to='sloth@{DOMAIN}/r' type='chat' id='f{i}-{j}'>"
                                 f"<body>{body}</body></message>" for j in range(50)))
                flood["sent"] += 50 * len(body)
                drain(0.05)
            flood["done"] = True
            drain(30)  # the bounces that are still coming

        flooder = threading.Thread(target=run_flood, daemon=True)

        async def go():
            a, b = Client(self.srv, f"alice@{DOMAIN}", "pw"), Client(self.srv, f"bob@{DOMAIN}", "pw")
            self.assertTrue(await a.login())
            self.assertTrue(await b.login())
            await chat_ok(self, a, b)
            before = rss_kib(self.srv.proc.pid)
            flooder.start()
            while not flood["done"]:
                await asyncio.sleep(0.1)
            sent_bytes = flood["sent"]
            await chat_ok(self, a, b, timeout=60)
            grown = rss_kib(self.srv.proc.pid) - before
            print(f"  10 MB at a client that does not read: server RSS grew {grown} KiB")
            if not SANITIZED:
                self.assertLess(grown * 1024, sent_bytes // 3, f"server grew {grown} KiB")
            await a.close()
            await b.close()
        run(go())
        self.assertIn("client does not read", self.srv.log_text())
        self.assertTrue(sloth.closed(10), "the connection of the client that does not read is still open")
        self.assertFalse(flood["eof"], "the sender, which reads everything, was disconnected")
        sloth.close()


class BusQueueBoundTest(ServerTest):
    """A router worker that stalls (here: its storage write waits for a lock another
    process holds, as behind a backup or a slow disk) must not let its bus queue grow
    without end: once the queue passes limits.bus_queue_bytes the edges stop reading
    their bound clients (TCP pushes back on the senders), and when the worker runs again
    every message that was accepted is delivered, none lost and none twice. The stall
    lasts 3 s against a rate grace of 1 s: waiting for the bus is not held against the
    sender's rate (it is not disconnected)."""
    users = ("alice", "bob", "carol")
    # server.inline_routing off: the worker's own thread stalls and the queue in front of
    # it fills (with it on, the edge thread that runs the worker's work stalls with it:
    # BusQueueInlineStallTest below)
    server_options = {"server.router_workers": "1", "server.io_threads": "1",
                      "limits.rate_bytes": "0", "limits.rate_stanzas": "0", "limits.rate_grace": "1",
                      "limits.max_pending_out": str(1 << 28), "limits.offline_max": "0",
                      "server.inline_routing": "false"}
    expect_watermark = True

    def test_stalled_worker_pauses_senders_memory_bounded_nothing_lost(self):
        bob = RawStream(self.srv.port).login("bob", "pw", "b")
        alice = RawStream(self.srv.port).login("alice", "pw", "a")
        bob.sock.settimeout(180)  # login left a short one; the sender waits seconds by design
        alice.sock.settimeout(180)
        # 60 MB (20 MB under ASan, which moves it several times slower on CI's two
        # loaded cores): either is far over the queue's 8 MiB bound
        count, size = (2000 if SANITIZED else 6000), 10000
        got = []
        ids = re.compile(rb"<body>(\d+):")

        def read_bob():
            tail = b""
            while len(got) < count:
                chunk = bob.sock.recv(1 << 20)
                if not chunk:
                    return
                data = tail + chunk
                cut = data.rfind(b"</message>") + len(b"</message>") if b"</message>" in data else 0
                got.extend(int(x) for x in ids.findall(data[:cut]))
                tail = data[cut:]
        reader = threading.Thread(target=read_bob, daemon=True)
        reader.start()
        filler = "x" * size
        payload = "".join(f"<message to='bob@{DOMAIN}/b' type='chat'><body>{i}:{filler}</body></message>"
                          for i in range(count)).encode()
        # another process takes SQLite's write lock: the worker's next storage write
        # (a message to offline carol) waits in the busy handler (5 s at most)
        lock = sqlite3.connect(os.path.join(self.srv.dir, "xmppd.db"), timeout=5, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        stalled_at = time.monotonic()
        try:
            alice.send(f"<message to='carol@{DOMAIN}' type='chat'><body>offline:first</body></message>")
            base = rss_kib(self.srv.proc.pid)
            sent = []
            sender = threading.Thread(target=lambda: sent.append(alice.sock.sendall(payload)), daemon=True)
            sender.start()
            # evidence of the bound, or 2.5 s of flooding without it
            while "over its high watermark" not in self.srv.log_text() and time.monotonic() - stalled_at < 2.5:
                time.sleep(0.05)
            grew = 0
            while time.monotonic() - stalled_at < 3.2:
                grew = max(grew, rss_kib(self.srv.proc.pid) - base)
                time.sleep(0.05)
            paused = sender.is_alive()
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        print(f"  worker stalled 3 s under a {count * size // 1000000} MB flood: server grew {grew} KiB")
        if not SANITIZED:
            self.assertLess(grew, 32 * 1024, f"server grew {grew} KiB while the worker was stalled")
        self.assertTrue(paused, "the sender was not held back while the worker stalled")
        if self.expect_watermark:
            self.assertIn("over its high watermark", self.srv.log_text())
        sender.join(180)
        self.assertEqual(sent, [None], f"the whole flood was sent (bob has {len(got)} of {count})")
        reader.join(180)
        self.assertEqual(sorted(got), list(range(count)), "every accepted message delivered once")
        self.assertEqual(got, list(range(count)), "in order")
        carol = RawStream(self.srv.port).login("carol", "pw", "c")
        carol.send("<presence/>")
        carol.recv_until(r"offline:first")
        self.assertNotIn("policy-violation", self.srv.log_text())
        self.assertNotIn("write failed", self.srv.log_text())
        for r in (alice, bob, carol):
            r.close()


class BusQueueInlineStallTest(BusQueueBoundTest):
    """The same stall with server.inline_routing on (the default): the edge thread that
    hands alice's stanzas to the idle worker runs the worker's work itself, so the
    storage wait holds that thread and it reads nothing more: the sender is held back by
    TCP at once, memory stays bounded without the queue filling, and every accepted
    message is delivered once, in order, when the lock goes."""
    server_options = dict(BusQueueBoundTest.server_options, **{"server.inline_routing": "true"})
    expect_watermark = False


class ResourceAndRosterLimitTest(ServerTest):
    users = ("alice", "bob", "carol", "dave")
    server_options = {"limits.max_resources": "2", "limits.max_roster_items": "2"}

    def test_third_resource_gets_resource_constraint(self):
        r1 = RawStream(self.srv.port).login("alice", "pw", "one")
        r2 = RawStream(self.srv.port).login("alice", "pw", "two")
        r3 = RawStream(self.srv.port)
        r3.starttls()
        r3.auth_plain("alice", "pw")
        r3.send("<iq type='set' id='b3'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                "<resource>three</resource></bind></iq>")
        text = r3.recv_until(r"</iq>")
        self.assertRegex(text, r"<iq type='error' id='b3'><error type='wait'><resource-constraint xmlns='%s'/>"
                         % re.escape(STANZAS_NS))
        # the first two still work: one sends the other a message
        r1.send(f"<message to='alice@{DOMAIN}/two' type='chat'><body>still here</body></message>")
        r2.recv_until(r"still here")
        # a replaced resource (same name) is not a new one
        r4 = RawStream(self.srv.port).login("alice", "pw", "two")
        self.assertIn("<conflict", r2.recv_until(r"</stream:stream>"))
        for r in (r1, r2, r3, r4):
            r.close()

    def test_roster_full(self):
        r = RawStream(self.srv.port).login("bob", "pw")
        for i, who in enumerate(("carol", "dave")):
            r.send(f"<iq type='set' id='s{i}'><query xmlns='jabber:iq:roster'><item jid='{who}@{DOMAIN}'/></query></iq>")
            r.recv_until(rf"<iq[^>]*id='s{i}'[^>]*type='result'|<iq[^>]*type='result'[^>]*id='s{i}'")
        r.send(f"<iq type='set' id='s9'><query xmlns='jabber:iq:roster'><item jid='alice@{DOMAIN}'/></query></iq>")
        text = r.recv_until(r"id='s9'.*?</iq>")
        self.assertRegex(text, r"<not-allowed xmlns='%s'/>" % re.escape(STANZAS_NS))
        # an outbound subscription to a new contact is refused the same way
        r.send(f"<presence to='alice@{DOMAIN}' type='subscribe' id='p1'/>")
        text = r.recv_until(r"<presence[^>]*type='error'.*?</presence>")
        self.assertIn("<not-allowed", text)
        # existing items still change
        r.send(f"<iq type='set' id='s10'><query xmlns='jabber:iq:roster'><item jid='carol@{DOMAIN}' name='C'/></query></iq>")
        r.recv_until(r"id='s10'")
        r.close()
