"""XEP-0191 blocking command (router/mod_blocking.c): the blocklist get, block, unblock and
unblock-all with their pushes to the resources that asked for the list; what a block
stops (a blocked JID's messages, presence and IQs, inbound and outbound, to an online
or an offline user); JID matching (bare, full, domain, domain/resource, subdomains); the
list kept across a restart; and the bounds (limits.max_blocklist at N and N+1, malformed
items, a 100,000-item request, thousands of small ones, the cost per stanza of a full
list), on SQLite and on Redis. Checked with slixmpp (xep_0191) and with aioxmpp
(aioxmpp.blocking)."""
import asyncio
import os
import sqlite3
import unittest

import aioxmpp
import aioxmpp.blocking
import aioxmpp.disco
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET

from harness import DOMAIN, SANITIZED, Client, RawStream, Redis, Server, ServerTest, befriend, resp, run

NS = "urn:xmpp:blocking"
NS_ERR = "urn:xmpp:blocking:errors"


def J(user, res=None):
    return f"{user}@{DOMAIN}" + (f"/{res}" if res else "")


async def login(srv, jid, presence=True, blocklist=False):
    c = Client(srv, jid, "pw")
    c.register_plugin("xep_0191")
    c.pushes = asyncio.Queue()
    c.add_event_handler("blocked", lambda iq: c.pushes.put_nowait(("block", {str(j) for j in iq["block"]["items"]})))
    c.add_event_handler("unblocked",
                        lambda iq: c.pushes.put_nowait(("unblock", {str(j) for j in iq["unblock"]["items"]})))
    assert await c.login(), jid
    if presence:
        await c.get_roster()
        c.send_presence()
    if blocklist:
        await blocked(c)
    return c


async def blocked(c):
    iq = await c.plugin["xep_0191"].get_blocked(timeout=5)
    return {str(j) for j in iq["blocklist"]["items"]}


async def unblock_all(c):
    iq = c.make_iq_set()
    iq.enable("unblock")
    await iq.send(timeout=5)


async def ping_self(c):
    """A round trip to c's own shard: whatever that shard sent c before is read by now."""
    await c.plugin["xep_0199"].ping(jid=c.boundjid.bare, timeout=5)


def is_error(cond):
    return lambda m: m["type"] == "error" and m["error"]["condition"] == cond


def has_blocked_condition(stanza):
    return stanza.xml.find(f"{{jabber:client}}error/{{{NS_ERR}}}blocked") is not None


def cpu_seconds(pid):
    """utime + stime of a process (/proc/PID/stat), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def store_count(srv, sql, redis_cmd, owner):
    """A count in the server's store: SQLite, or Redis when the test started one."""
    port = getattr(srv, "redis_port", None)
    if port:
        reply = resp(port, redis_cmd, f"{{u:{owner}}}:{'o' if redis_cmd == 'LLEN' else 'b'}")
        assert reply.startswith(b":"), reply
        return int(reply[1:].strip())
    db = sqlite3.connect(os.path.join(srv.dir, "xmppd.db"))
    try:
        return db.execute(sql, (owner,)).fetchone()[0]
    finally:
        db.close()


def offline_count(srv, owner):
    return store_count(srv, "SELECT count(*) FROM offline WHERE owner = ?", "LLEN", owner)


def block_rows(srv, owner):
    return store_count(srv, "SELECT count(*) FROM blocklist WHERE owner = ?", "SCARD", owner)


class BlockingSlixmppTest(ServerTest):
    users = ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank", "ivan", "judy", "kim", "leo",
             "mia", "ned", "olga", "pat", "quinn", "rob")

    def test_block_unblock_unblock_all_and_pushes(self):
        async def go():
            a1 = await login(self.srv, J("alice", "one"), blocklist=True)
            a2 = await login(self.srv, J("alice", "two"), blocklist=True)
            a3 = await login(self.srv, J("alice", "three"))  # never asked for the list
            a3_pushes = []
            a3.add_event_handler("blocked", lambda iq: a3_pushes.append(iq))
            a3.add_event_handler("unblocked", lambda iq: a3_pushes.append(iq))
            self.assertEqual(await blocked(a1), set())
            for at in (DOMAIN, J("alice")):  # disco#info of the server and of the account
                info = await a1.plugin["xep_0030"].get_info(jid=at, timeout=5)
                self.assertIn(NS, info["disco_info"]["features"], at)
            await a1.plugin["xep_0191"].block([J("bob"), J("carol", "phone")], timeout=5)
            for c in (a1, a2):  # every interested resource, the requester included (§3.3)
                kind, items = await asyncio.wait_for(c.pushes.get(), 5)
                self.assertEqual((kind, items), ("block", {J("bob"), J("carol", "phone")}))
            self.assertEqual(await blocked(a2), {J("bob"), J("carol", "phone")})
            await a1.plugin["xep_0191"].unblock([J("bob")], timeout=5)
            for c in (a1, a2):
                self.assertEqual(await asyncio.wait_for(c.pushes.get(), 5), ("unblock", {J("bob")}))
            self.assertEqual(await blocked(a1), {J("carol", "phone")})
            await a2.plugin["xep_0191"].block([J("dave"), "example.org"], timeout=5)
            for c in (a1, a2):
                self.assertEqual(await asyncio.wait_for(c.pushes.get(), 5), ("block", {J("dave"), "example.org"}))
            await unblock_all(a2)  # an empty <unblock/> (§3.5)
            for c in (a1, a2):
                self.assertEqual(await asyncio.wait_for(c.pushes.get(), 5), ("unblock", set()))
            self.assertEqual(await blocked(a1), set())
            await ping_self(a3)  # a push to a3 would have been read before the pong
            self.assertEqual(a3_pushes, [])
            # unblocking what is not blocked is no error; the JIDs are pushed as asked
            await a1.plugin["xep_0191"].unblock([J("nobody")], timeout=5)
            self.assertEqual(await asyncio.wait_for(a1.pushes.get(), 5), ("unblock", {J("nobody")}))
            for c in (a1, a2, a3):
                await c.close()
        run(go())

    def test_blocked_contact_messages_presence_iqs_not_delivered(self):
        async def go():
            e = await login(self.srv, J("erin", "r"), blocklist=True)
            f = await login(self.srv, J("frank", "r"))
            g = await login(self.srv, J("gina", "r"))
            await befriend(e, f)
            await e.plugin["xep_0191"].block([J("frank")], timeout=5)
            while not e.presences.empty():  # what frank sent before the block
                e.presences.get_nowait()
            # message: not delivered, the sender gets <service-unavailable/> from erin
            f.send_message(mto=J("erin"), mbody="blocked one", mtype="chat")
            err = await f.next_message(pred=is_error("service-unavailable"))
            self.assertEqual(err["from"].bare, J("erin"))
            f.send_message(mto=J("erin", "r"), mbody="blocked two", mtype="chat")
            await f.next_message(pred=is_error("service-unavailable"))
            # presence: broadcast and directed, dropped without an answer
            f.send_presence(pstatus="frank's status")
            f.send_presence(pto=J("erin", "r"), pstatus="directed")
            # IQs get and set: <service-unavailable/>
            for to in (J("erin", "r"), J("erin")):
                with self.assertRaises(IqError) as cm:
                    await f.plugin["xep_0199"].ping(jid=to, timeout=5)
                self.assertEqual(cm.exception.condition, "service-unavailable", to)
            # evidence that nothing else came: gina's message comes next, then nothing from frank
            g.send_message(mto=J("erin", "r"), mbody="marker", mtype="chat")
            m = await e.next_message()
            self.assertEqual((m["from"].bare, m["body"]), (J("gina"), "marker"))
            await ping_self(e)
            while not e.presences.empty():
                p = e.presences.get_nowait()
                self.assertNotEqual(p["from"].bare, J("frank"), p)
            for c in (e, f, g):
                await c.close()
        run(go())

    def test_outbound_to_blocked_gets_not_acceptable_blocked(self):
        async def go():
            h = await login(self.srv, J("hank", "r"), blocklist=True)
            i = await login(self.srv, J("ivan", "r"))
            await h.plugin["xep_0191"].block([J("ivan")], timeout=5)
            h.send_message(mto=J("ivan", "r"), mbody="to a blocked contact", mtype="chat")
            err = await h.next_message(pred=is_error("not-acceptable"))
            self.assertTrue(has_blocked_condition(err), err)
            self.assertEqual(err["error"]["type"], "cancel")
            self.assertEqual(str(err["from"]), J("ivan", "r"))
            with self.assertRaises(IqError) as cm:
                await h.plugin["xep_0199"].ping(jid=J("ivan", "r"), timeout=5)
            self.assertEqual(cm.exception.condition, "not-acceptable")
            self.assertTrue(has_blocked_condition(cm.exception.iq))
            h.send_presence(pto=J("ivan", "r"))
            p = await h.next_presence(pred=lambda p: p["type"] == "error")
            self.assertEqual(p["error"]["condition"], "not-acceptable")
            self.assertTrue(has_blocked_condition(p))
            # nothing reached ivan: hank's next message after the unblock is the first
            await h.plugin["xep_0191"].unblock([J("ivan")], timeout=5)
            h.send_message(mto=J("ivan", "r"), mbody="after unblock", mtype="chat")
            m = await i.next_message()
            self.assertEqual(m["body"], "after unblock")
            await h.close()
            await i.close()
        run(go())

    def test_block_sends_unavailable_and_unblock_the_current_presence(self):
        async def go():
            j = await login(self.srv, J("judy", "r"), blocklist=True)
            k = await login(self.srv, J("kim", "r"))
            await befriend(j, k)
            j.send_presence(pstatus="here")
            await k.next_presence(pred=lambda p: p["from"].bare == J("judy") and p["status"] == "here")
            await j.plugin["xep_0191"].block([J("kim")], timeout=5)
            p = await k.next_presence(pred=lambda p: p["from"].bare == J("judy"))
            self.assertEqual((p["type"], str(p["from"])), ("unavailable", J("judy", "r")))
            j.send_presence(pstatus="while blocked")  # must not reach kim
            await j.plugin["xep_0191"].unblock([J("kim")], timeout=5)
            j.send_presence(pstatus="back")
            p = await k.next_presence(pred=lambda p: p["from"].bare == J("judy"))
            self.assertEqual((p["type"], p["status"]), ("available", "while blocked"),
                             "the presence sent again at the unblock, not the one sent while blocked")
            p = await k.next_presence(pred=lambda p: p["from"].bare == J("judy"))
            self.assertEqual(p["status"], "back")
            await j.close()
            await k.close()
        run(go())

    def test_domain_and_domain_resource_and_subdomains(self):
        async def go():
            l1 = await login(self.srv, J("leo", "r"), blocklist=True)
            m_evil = await login(self.srv, J("mia", "evil"))
            m_good = await login(self.srv, J("mia", "good"))
            n = await login(self.srv, J("ned", "r"))
            # domain/resource: that resource of any account of the domain
            await l1.plugin["xep_0191"].block([f"{DOMAIN}/evil"], timeout=5)
            m_evil.send_message(mto=J("leo", "r"), mbody="from evil", mtype="chat")
            await m_evil.next_message(pred=is_error("service-unavailable"))
            m_good.send_message(mto=J("leo", "r"), mbody="from good", mtype="chat")
            m = await l1.next_message()
            self.assertEqual((str(m["from"]), m["body"]), (J("mia", "good"), "from good"))
            # a domain: every account of it, and its subdomains (outbound: no s2s here, so
            # blocked is answered before <remote-server-not-found/>)
            await l1.plugin["xep_0191"].block(["example.org"], timeout=5)
            for to in ("x@example.org", "x@chat.example.org/r", "chat.example.org"):
                l1.send_message(mto=to, mbody="hi", mtype="chat")
                err = await l1.next_message(pred=lambda m: m["type"] == "error")
                self.assertEqual(err["error"]["condition"], "not-acceptable", to)
            l1.send_message(mto="x@example.com", mbody="hi", mtype="chat")
            err = await l1.next_message(pred=lambda m: m["type"] == "error")
            self.assertEqual(err["error"]["condition"], "remote-server-not-found")
            await l1.plugin["xep_0191"].block([DOMAIN], timeout=5)
            n.send_message(mto=J("leo", "r"), mbody="from ned", mtype="chat")
            await n.next_message(pred=is_error("service-unavailable"))
            # the account's own resources are never blocked
            l2 = await login(self.srv, J("leo", "two"))
            l2.send_message(mto=J("leo", "r"), mbody="from myself", mtype="chat")
            m = await l1.next_message()
            self.assertEqual(m["body"], "from myself")
            await unblock_all(l1)
            n.send_message(mto=J("leo", "r"), mbody="unblocked", mtype="chat")
            m = await l1.next_message()
            self.assertEqual(m["body"], "unblocked")
            for c in (l1, l2, m_evil, m_good, n):
                await c.close()
        run(go())

    def test_offline_user_blocked_messages_and_subscriptions_not_stored(self):
        async def go():
            o = await login(self.srv, J("olga", "r"), blocklist=True)
            await o.plugin["xep_0191"].block([J("pat")], timeout=5)
            await o.close()
            p = await login(self.srv, J("pat", "r"))
            q = await login(self.srv, J("quinn", "r"))
            p.send_message(mto=J("olga"), mbody="stored?", mtype="chat")
            err = await p.next_message(pred=is_error("service-unavailable"))
            self.assertEqual(err["from"].bare, J("olga"))
            p.send_presence(pto=J("olga"), ptype="subscribe")
            with self.assertRaises(IqError) as cm:
                await p.plugin["xep_0199"].ping(jid=J("olga"), timeout=5)  # answered for the account
            self.assertEqual(cm.exception.condition, "service-unavailable")
            await q.plugin["xep_0199"].ping(jid=J("olga"), timeout=5)  # others still get the answer
            q.send_message(mto=J("olga"), mbody="marker", mtype="chat")
            # the pings came back from olga's shard after it handled what was sent before
            await q.plugin["xep_0199"].ping(jid=J("olga"), timeout=5)
            self.assertEqual(offline_count(self.srv, J("olga")), 1)
            o = await login(self.srv, J("olga", "r"))
            m = await o.next_message()
            self.assertEqual((m["from"].bare, m["body"]), (J("quinn"), "marker"))
            self.assertNotIn(J("pat"), o.client_roster.keys(), "no pending subscription stored")
            for c in (o, p, q):
                await c.close()
        run(go())

    def test_bad_requests(self):
        r = RawStream(self.srv.port).login("rob", "pw", "raw")

        def ask(payload, ident):
            r.buf = b""
            r.send(f"<iq type='set' id='{ident}'>{payload}</iq>")
            return r.recv_until(f"id='{ident}'.*?</iq>|id='{ident}'[^>]*/>")

        r.send(f"<iq type='get' id='l0'><blocklist xmlns='{NS}'/></iq>")
        r.recv_until("id='l0'")
        text = ask(f"<block xmlns='{NS}'><item jid='ok@{DOMAIN}'/></block>", "b0")
        self.assertIn("type='result'", text)
        for payload, cond in ((f"<block xmlns='{NS}'/>", "bad-request"),
                              (f"<block xmlns='{NS}'><other/></block>", "bad-request"),
                              (f"<block xmlns='{NS}'><item/></block>", "bad-request"),
                              (f"<block xmlns='{NS}'><item jid='a@b@c'/></block>", "jid-malformed"),
                              (f"<block xmlns='{NS}'><item jid='fine@{DOMAIN}'/><item jid=''/></block>",
                               "jid-malformed"),
                              (f"<block xmlns='{NS}'><item jid='x@{'a' * 1100}'/></block>", "jid-malformed"),
                              (f"<unblock xmlns='{NS}'><item jid='@nope'/></unblock>", "jid-malformed")):
            text = ask(payload, "bad")
            self.assertIn("type='error'", text, payload)
            self.assertIn(f"<{cond} ", text, payload)
        # nothing of the refused requests was kept, and no push went out for them
        r.buf = b""
        r.send(f"<iq type='get' id='l1'><blocklist xmlns='{NS}'/></iq>")
        text = r.recv_until("id='l1'.*?</iq>")
        self.assertNotIn("type='set'", text)
        self.assertIn(f"jid='ok@{DOMAIN}'", text)
        self.assertNotIn("fine@", text)
        self.assertEqual(block_rows(self.srv, J("rob")), 1)
        # someone else's list is not anyone's business: no answer that tells anything
        other = RawStream(self.srv.port).login("bob", "pw", "raw")
        other.send(f"<iq type='get' id='x' to='{J('rob')}'><blocklist xmlns='{NS}'/></iq>")
        text = other.recv_until("id='x'.*?</iq>")
        self.assertIn("<service-unavailable ", text)
        self.assertNotIn("ok@", text)
        other.close()
        r.close()


class BlockingRedisTest(BlockingSlixmppTest):
    """The same on the Redis back-end (storage.backend = redis): the list in the set
    {u:JID}:b, an offline recipient asked with one script."""

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        cls.redis.start()
        cls.srv = Server(**{"storage.backend": "redis", "storage.redis": f"127.0.0.1:{cls.redis.port}"})
        cls.srv.redis_port = cls.redis.port
        for u in cls.users:
            cls.srv.adduser(J(u), cls.password)
        cls.srv.start()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            cls.redis.stop()
            cls.redis.cleanup()


class BlockingAioxmppTest(ServerTest):
    users = ("sam", "tina", "uma")

    def client(self, user, res):
        jid = aioxmpp.JID.fromstr(J(user, res))
        return aioxmpp.PresenceManagedClient(
            jid, aioxmpp.make_security_layer("pw", no_verify=True),
            override_peer=[("127.0.0.1", self.srv.port, aioxmpp.connector.STARTTLSConnector())])

    def test_aioxmpp_block_push_unblock_all(self):
        async def go():
            c1, c2 = self.client("sam", "a1"), self.client("sam", "a2")
            # summoned before connecting: each fetches the list as its stream starts
            b1, b2 = c1.summon(aioxmpp.BlockingClient), c2.summon(aioxmpp.BlockingClient)
            async with c1.connected(), c2.connected():
                for _ in range(100):  # each fetches the list once connected
                    if b1.blocklist is not None and b2.blocklist is not None:
                        break
                    await asyncio.sleep(0.05)
                self.assertEqual(b2.blocklist, frozenset())
                loop = asyncio.get_running_loop()
                pushed = [loop.create_future(), loop.create_future()]  # to both resources
                for b, f in zip((b1, b2), pushed):
                    b.on_jids_blocked.connect(lambda jids, f=f: f.done() or f.set_result(jids))
                tina = aioxmpp.JID.fromstr(J("tina"))
                await b1.block_jids([tina, aioxmpp.JID.fromstr("spam.example")])
                for f in pushed:
                    self.assertEqual(await asyncio.wait_for(f, 5),
                                     frozenset({tina, aioxmpp.JID.fromstr("spam.example")}))
                self.assertEqual(b1.blocklist, b2.blocklist)
                # tina's message is refused, uma's delivered
                t = Client(self.srv, J("tina", "s"), "pw")
                assert await t.login()
                t.send_message(mto=J("sam", "a1"), mbody="hello?", mtype="chat")
                await t.next_message(pred=is_error("service-unavailable"))
                got = asyncio.get_running_loop().create_future()
                c1.stream.register_message_callback(
                    aioxmpp.MessageType.CHAT, None, lambda m: got.done() or got.set_result(m))
                u = Client(self.srv, J("uma", "s"), "pw")
                assert await u.login()
                u.send_message(mto=J("sam", "a1"), mbody="from uma", mtype="chat")
                m = await asyncio.wait_for(got, 5)
                self.assertEqual(m.from_.bare(), aioxmpp.JID.fromstr(J("uma")))
                # outbound to tina: <not-acceptable/> with the blocked condition
                with self.assertRaises(aioxmpp.errors.XMPPCancelError) as cm:
                    await c1.send(aioxmpp.IQ(type_=aioxmpp.IQType.GET, to=aioxmpp.JID.fromstr(J("tina", "s")),
                                             payload=aioxmpp.disco.xso.InfoQuery()))
                self.assertEqual(cm.exception.condition, aioxmpp.ErrorCondition.NOT_ACCEPTABLE)
                unpushed = asyncio.get_running_loop().create_future()
                b2.on_jids_unblocked.connect(lambda jids: unpushed.done() or unpushed.set_result(jids))
                await b1.unblock_all()
                await asyncio.wait_for(unpushed, 5)
                self.assertEqual(b2.blocklist, frozenset())
                t.send_message(mto=J("sam", "a1"), mbody="now?", mtype="chat")
                got = asyncio.get_running_loop().create_future()
                m = await asyncio.wait_for(got, 5)
                self.assertEqual(m.from_.bare(), aioxmpp.JID.fromstr(J("tina")))
                await t.close()
                await u.close()
        asyncio.run(go())


class BlockingRestartTest(ServerTest):
    users = ("vera", "walt")

    def test_list_survives_restart(self):
        async def go():
            v = await login(self.srv, J("vera", "r"), blocklist=True)
            await v.plugin["xep_0191"].block([J("walt"), "example.net/bot"], timeout=5)
            await v.close()
        run(go())
        self.assertEqual(self.srv.stop(), 0)
        self.srv.start()

        async def again():
            v = await login(self.srv, J("vera", "r"))
            self.assertEqual(await blocked(v), {J("walt"), "example.net/bot"})
            w = await login(self.srv, J("walt", "r"))
            w.send_message(mto=J("vera", "r"), mbody="still blocked?", mtype="chat")
            await w.next_message(pred=is_error("service-unavailable"))
            await v.close()
            await w.close()
        run(again())


class BlockingLimitTest(ServerTest):
    """limits.max_blocklist at N and N+1 (N = 5 here)."""
    users = ("xena", "yuri")
    server_options = {"limits.max_blocklist": "5"}

    def test_cap_n_fits_n_plus_one_refused(self):
        async def go():
            x = await login(self.srv, J("xena", "r"), blocklist=True)
            six = [f"u{i}@{DOMAIN}" for i in range(6)]
            with self.assertRaises(IqError) as cm:  # 6 items in one request
                await x.plugin["xep_0191"].block(six, timeout=5)
            self.assertEqual(cm.exception.condition, "not-acceptable")
            self.assertEqual(await blocked(x), set())
            # too many items is answered before any JID is read: the malformed one is not
            iq = x.make_iq_set()
            block = ET.SubElement(iq.xml, f"{{{NS}}}block")
            for jid in ["a@b@c"] + six[1:]:  # slixmpp would not write a@b@c
                ET.SubElement(block, f"{{{NS}}}item", jid=jid)
            with self.assertRaises(IqError) as cm:
                await iq.send(timeout=5)
            self.assertEqual(cm.exception.condition, "not-acceptable")
            await x.plugin["xep_0191"].block(six[:4], timeout=5)
            await x.plugin["xep_0191"].block(six[3:5], timeout=5)  # one already there: 5, the cap
            self.assertEqual(len(await blocked(x)), 5)
            with self.assertRaises(IqError) as cm:
                await x.plugin["xep_0191"].block([six[5]], timeout=5)
            self.assertEqual(cm.exception.condition, "not-acceptable")
            await x.plugin["xep_0191"].block([six[0]], timeout=5)  # at the cap, nothing new: fine
            self.assertEqual(await blocked(x), set(six[:5]))
            self.assertEqual(block_rows(self.srv, J("xena")), 5)
            await x.plugin["xep_0191"].unblock([six[0]], timeout=5)
            await x.plugin["xep_0191"].block([six[5]], timeout=5)
            self.assertEqual(await blocked(x), set(six[1:]))
            await x.close()
        run(go())


class BlockingCostTest(ServerTest):
    """What a blocklist may cost: a 100,000-item request, 2,000 one-item requests up to the
    default cap and one more, and the CPU per stanza to an account with a full list (all
    measured as the server's own CPU time, /proc/PID/stat)."""
    users = ("zed", "amy", "ben", "cid")
    server_options = {"limits.max_stanza_bytes": str(4 << 20), "limits.rate_stanzas": "0",
                      "limits.rate_bytes": "0"}

    def test_huge_request_refused_cheaply(self):
        r = RawStream(self.srv.port, timeout=30).login("zed", "pw", "raw")
        items = "".join(f"<item jid='u{i}@example.org'/>" for i in range(100000))

        def cpu_of(stanza, reply):
            cpu0 = cpu_seconds(self.srv.proc.pid)
            r.buf = b""
            r.send(stanza + f"<iq type='get' id='{reply}'><ping xmlns='urn:xmpp:ping'/></iq>")
            text = r.recv_until(f"id='{reply}'", timeout=30)
            return cpu_seconds(self.srv.proc.pid) - cpu0, text

        # the same bytes as a headline to an offline resource (dropped): reading, routing
        # and decoding them, what any stanza of that size costs. Each is measured twice
        # after one of each (the first ones also grow buffers and, under ASan, map shadow
        # memory: up to 3 times the cost), the least counted.
        headline = f"<message type='headline' to='{J('zed', 'gone')}'><x xmlns='urn:example'>{items}</x></message>"
        block = f"<iq type='set' id='huge'><block xmlns='{NS}'>{items}</block></iq>"
        cpu_of(headline, "w0")
        cpu_of(block, "w1")
        base = min(cpu_of(headline, f"h{k}")[0] for k in range(2))
        cpu, text = min(cpu_of(block, f"b{k}") for k in range(2))
        self.assertIn("<not-acceptable ", text)
        self.assertLess(len(text), 2000, "the refusal does not echo the items")
        self.assertEqual(block_rows(self.srv, J("zed")), 0)
        print(f"\n100,000-item block ({len(items)} bytes): {cpu * 1000:.0f} ms of server CPU; "
              f"a dropped headline of the same size: {base * 1000:.0f} ms")
        # refused after counting 2,001 items, no JID of it parsed: about what the headline
        # costs (+10-60 ms seen; parsing all 100,000 JIDs first: +90-270 ms; what refuses
        # before parsing is checked in BlockingLimitTest)
        # (under ASan every cost is ~3 times: 0.48 s against a 0.33 s headline was seen on a
        # loaded machine, the margin there is 0.25 s)
        self.assertLess(cpu, base + (0.25 if SANITIZED else 0.15))
        r.close()

    def test_many_small_requests_up_to_the_cap(self):
        r = RawStream(self.srv.port, timeout=30).login("amy", "pw", "raw")
        n = 2000  # the default limits.max_blocklist
        cpu = []
        for lo in range(0, n, 500):
            cpu0 = cpu_seconds(self.srv.proc.pid)
            r.buf = b""
            r.send("".join(f"<iq type='set' id='b{i}'><block xmlns='{NS}'><item jid='u{i}@example.org'/></block></iq>"
                           for i in range(lo, lo + 500)))
            r.recv_until(f"id='b{lo + 499}'", timeout=30)
            cpu.append(cpu_seconds(self.srv.proc.pid) - cpu0)
        self.assertEqual(r.buf.decode().count("type='error'"), 0)
        r.buf = b""
        r.send(f"<iq type='set' id='over'><block xmlns='{NS}'><item jid='one-more@example.org'/></block></iq>")
        text = r.recv_until("id='over'.*?</iq>")
        self.assertIn("<not-acceptable ", text)
        self.assertEqual(block_rows(self.srv, J("amy")), n)
        per = [c / 500 * 1e6 for c in cpu]
        print(f"\nblock requests, us of server CPU each, by 500s up to {n}: {', '.join(f'{p:.0f}' for p in per)}")
        # the last ones (list of 1,500-2,000) cost about what the first did (empty list)
        self.assertLess(per[-1], 3 * per[0] + 100)
        r.close()

    def test_cost_per_stanza_of_a_full_list(self):
        async def go():
            b = await login(self.srv, J("ben", "r"), blocklist=True)
            c = await login(self.srv, J("cid", "r"))
            got = asyncio.Queue()
            b.add_event_handler("message", lambda m: got.put_nowait(m))

            async def burst(k):
                cpu0 = cpu_seconds(self.srv.proc.pid)
                for i in range(k):
                    c.send_message(mto=J("ben", "r"), mbody=f"m{i}", mtype="chat")
                for i in range(k):
                    m = await b.next_message(timeout=10)
                    self.assertEqual(m["body"], f"m{i}")
                return (cpu_seconds(self.srv.proc.pid) - cpu0) / k * 1e6

            empty = await burst(1000)
            jids = [f"u{i}@example.org" for i in range(1999)] + ["example.com"]  # a domain: subdomains looked up too
            for lo in range(0, 2000, 500):
                await b.plugin["xep_0191"].block(jids[lo:lo + 500], timeout=10)
            full = await burst(1000)
            print(f"\nserver CPU per message: {empty:.0f} us (empty blocklist), {full:.0f} us (2,000 JIDs)")
            self.assertLess(full, 2 * empty + 50)
            await b.close()
            await c.close()
        run(go())


if __name__ == "__main__":
    unittest.main()
