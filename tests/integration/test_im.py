"""Instant messaging and presence (RFC 6121) between real slixmpp clients."""
import asyncio
import socket
import unittest

from harness import ServerTest, Client, RawStream, Server, run, wait_routed, befriend


async def login(srv, jid, pw="pw", priority=None, presence=True):
    c = Client(srv, jid, pw)
    assert await c.login(), f"login {jid}"
    await c.get_roster()
    if presence:
        if priority is None:
            c.send_presence()
        else:
            c.send_presence(ppriority=priority)
    return c


class IMTest(ServerTest):
    users = ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank")

    def test_subscribe_presence_two_resources_each_and_chat(self):
        async def go():
            a1 = await login(self.srv, "alice@localhost/phone")
            a2 = await login(self.srv, "alice@localhost/laptop")
            b1 = await login(self.srv, "bob@localhost/phone")
            b2 = await login(self.srv, "bob@localhost/laptop")
            await befriend(a1, b1)
            # rosters: both sides 'both', pushed to every interested resource
            for c, other in ((a1, "bob@localhost"), (a2, "bob@localhost"), (b1, "alice@localhost"),
                             (b2, "alice@localhost")):
                r = await c.full_roster()
                items = r["roster"]["items"]
                self.assertEqual(items[other]["subscription"], "both", (c.boundjid, items))
            # a fresh resource of bob sees both of alice's resources on initial presence
            b3 = await login(self.srv, "bob@localhost/tablet", presence=False)
            seen = set()
            b3.send_presence()
            while seen != {"alice@localhost/phone", "alice@localhost/laptop"}:
                p = await b3.next_presence(pred=lambda p: p["from"].bare == "alice@localhost")
                if p["type"] == "available":
                    seen.add(str(p["from"]))
            # and alice's resources see the new resource of bob come online
            for a in (a1, a2):
                await a.next_presence(pred=lambda p: str(p["from"]) == "bob@localhost/tablet")
            # chat both ways, full JIDs
            a1.send_message(mto="bob@localhost/laptop", mbody="hi bob laptop", mtype="chat")
            m = await b2.next_message(pred=lambda m: m["body"] == "hi bob laptop")
            self.assertEqual(str(m["from"]), "alice@localhost/phone")
            b2.send_message(mto="alice@localhost/phone", mbody="hi alice phone", mtype="chat")
            m = await a1.next_message(pred=lambda m: m["body"] == "hi alice phone")
            self.assertEqual(str(m["from"]), "bob@localhost/laptop")
            # presence change reaches every resource of the contact
            a2.send_presence(pshow="away", pstatus="lunch")
            for b in (b1, b2, b3):
                p = await b.next_presence(pred=lambda p: str(p["from"]) == "alice@localhost/laptop"
                                          and p["show"] == "away")
                self.assertEqual(p["status"], "lunch")
            # logout -> unavailable at the contact
            await a2.close()
            for b in (b1, b2, b3):
                await b.next_presence(pred=lambda p: str(p["from"]) == "alice@localhost/laptop"
                                      and p["type"] == "unavailable")
            for c in (a1, b1, b2, b3):
                await c.close()
        run(go())

    def test_bare_jid_goes_to_highest_priority(self):
        async def go():
            c1 = await login(self.srv, "carol@localhost/low", priority=1)
            c2 = await login(self.srv, "carol@localhost/high", priority=10)
            d = await login(self.srv, "dave@localhost/x")
            d.send_message(mto="carol@localhost", mbody="to the bare jid", mtype="chat")
            m = await c2.next_message(pred=lambda m: m["body"] == "to the bare jid")
            self.assertEqual(str(m["to"]), "carol@localhost/high")
            with self.assertRaises(asyncio.TimeoutError):
                await c1.next_message(timeout=0.7, pred=lambda m: m["body"] == "to the bare jid")
            # a full JID that is not online is treated as the bare JID (RFC 6121 §8.5.3.2.1)
            d.send_message(mto="carol@localhost/gone", mbody="stale resource", mtype="chat")
            await c2.next_message(pred=lambda m: m["body"] == "stale resource")
            for c in (c1, c2, d):
                await c.close()
        run(go())

    def test_offline_message_delivered_at_next_login(self):
        async def go():
            e = await login(self.srv, "erin@localhost/a")
            e.send_message(mto="frank@localhost", mbody="while you were out", mtype="chat")
            e.send_message(mto="frank@localhost", mbody="second one", mtype="normal")
            await wait_routed(e, "frank@localhost")  # both stored
            f = await login(self.srv, "frank@localhost/b")
            m1 = await f.next_message()
            m2 = await f.next_message()
            self.assertEqual([m1["body"], m2["body"]], ["while you were out", "second one"])
            self.assertEqual(str(m1["from"]), "erin@localhost/a")
            self.assertIn("urn:xmpp:delay", str(m1))
            # delivered once only
            await f.close()
            f = await login(self.srv, "frank@localhost/b")
            with self.assertRaises(asyncio.TimeoutError):
                await f.next_message(timeout=0.7)
            await f.close()
            await e.close()
        run(go())

    def test_message_to_unknown_user_errors(self):
        async def go():
            g = await login(self.srv, "gina@localhost/a")
            g.send_message(mto="nobody@localhost", mbody="hello?", mtype="chat")
            m = await g.next_message(pred=lambda m: m["type"] == "error")
            self.assertEqual(m["error"]["condition"], "service-unavailable")
            self.assertEqual(str(m["from"]), "nobody@localhost")
            await g.close()
        run(go())

    def test_abrupt_disconnect_sends_unavailable(self):
        async def go():
            h = await login(self.srv, "hank@localhost/a")
            g = await login(self.srv, "gina@localhost/b")
            await befriend(h, g)
            # kill hank's TCP connection without a closing stream
            h.transport.abort()
            # next_presence raises unless it comes within 5 s
            await g.next_presence(pred=lambda p: str(p["from"]) == "hank@localhost/a"
                                  and p["type"] == "unavailable")
            await g.close()
        run(go())

    def test_roster_set_push_and_remove(self):
        async def go():
            a = await login(self.srv, "alice@localhost/r1")
            a2 = await login(self.srv, "alice@localhost/r2")
            pushes = asyncio.Queue()
            a2.add_event_handler("roster_update", lambda iq: iq["type"] == "set" and pushes.put_nowait(iq))
            await a.update_roster("zed@localhost", name="Zed", groups=["Friends", "Work"])
            iq = await asyncio.wait_for(pushes.get(), 5)
            item = iq["roster"]["items"]["zed@localhost"]
            self.assertEqual(item["name"], "Zed")
            self.assertEqual(sorted(item["groups"]), ["Friends", "Work"])
            r = await a2.full_roster()
            self.assertIn("zed@localhost", r["roster"]["items"])
            await a.del_roster_item("zed@localhost")
            iq = await asyncio.wait_for(pushes.get(), 5)
            self.assertEqual(iq["roster"]["items"]["zed@localhost"]["subscription"], "remove")
            r = await a.full_roster()
            self.assertNotIn("zed@localhost", r["roster"]["items"])
            await a.close()
            await a2.close()
        run(go())


class CancelSubscriptionTest(ServerTest):
    """Ending a subscription while both are online: the subscriber gets the contact's
    unavailable presence (RFC 6121 §3.2.2, §3.3.3). It used to be lost: sent after the
    cancellation, the subscriber's server had already ended the subscription and dropped
    it, so the contact looked online for ever."""
    users = ("r1", "j1", "r2", "j2", "r3", "j3")

    def subscribed_pair(self, r_name, j_name):
        """r subscribes to j (j approves); both available. Returns (r, j) raw streams."""
        d = "localhost"
        r = RawStream(self.srv.port).login(r_name, "pw", "a")
        j = RawStream(self.srv.port).login(j_name, "pw", "b")
        for x in (r, j):
            x.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>")
            x.recv_until("id='r1'")
            x.send("<presence/>")
        r.send(f"<presence to='{j_name}@{d}' type='subscribe'/>")
        j.recv_until("type='subscribe'")
        j.send(f"<presence to='{r_name}@{d}' type='subscribed'/>")
        r.recv_until(rf"<presence[^>]*from='{j_name}@{d}/b'")  # j's current presence
        r.buf = b""
        return r, j

    def expect_unavailable(self, r, j_name):
        text = r.recv_until(rf"<presence[^>]*from='{j_name}@localhost/b'[^>]*type='unavailable'|"
                            rf"<presence[^>]*type='unavailable'[^>]*from='{j_name}@localhost/b'", timeout=3)
        return text

    def test_contact_sends_unsubscribed(self):
        r, j = self.subscribed_pair("r1", "j1")
        j.send("<presence to='r1@localhost' type='unsubscribed'/>")
        text = self.expect_unavailable(r, "j1")
        self.assertLess(text.find("type='unavailable'"), text.find("type='unsubscribed'")
                        if "type='unsubscribed'" in text else len(text) + 1,
                        "the unavailable comes before the cancellation")
        r.close()
        j.close()

    def test_contact_removes_subscriber_from_roster(self):
        r, j = self.subscribed_pair("r2", "j2")
        j.send("<iq type='set' id='rm'><query xmlns='jabber:iq:roster'>"
               "<item jid='r2@localhost' subscription='remove'/></query></iq>")
        self.expect_unavailable(r, "j2")
        r.close()
        j.close()

    def test_subscriber_unsubscribes(self):
        r, j = self.subscribed_pair("r3", "j3")
        r.send("<presence to='j3@localhost' type='unsubscribe'/>")
        self.expect_unavailable(r, "j3")
        r.close()
        j.close()


class OtherDomainPresenceTest(ServerTest):
    """Presence to a domain this server does not serve (a MUC join, a remote contact) gets
    <remote-server-not-found/> (RFC 6120 §10.4.3) instead of silence: there is no
    server-to-server yet. Nothing is remembered or added to the roster."""
    users = ("kim", "lee")

    def test_muc_join_and_remote_subscription_get_an_error(self):
        async def go():
            k = await login(self.srv, "kim@localhost/a")
            k.send_presence(pto="room@conference.localhost/kim")  # a MUC join
            p = await k.next_presence(pred=lambda p: p["type"] == "error")
            self.assertEqual(p["error"]["condition"], "remote-server-not-found")
            self.assertEqual(str(p["from"]), "room@conference.localhost/kim")
            k.send_presence(pto="someone@example.org", ptype="subscribe")
            p = await k.next_presence(pred=lambda p: p["type"] == "error")
            self.assertEqual(p["error"]["condition"], "remote-server-not-found")
            roster = await k.full_roster()
            self.assertNotIn("someone@example.org", roster["roster"]["items"])
            await k.close()
        run(go())

    def test_error_presence_is_not_answered(self):
        r = RawStream(self.srv.port).login("lee", "pw", "x")
        r.buf = b""
        r.send("<presence to='room@conference.localhost/lee' type='error'><error type='cancel'>"
               "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
               "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        text = r.recv_until("id='p1'")
        self.assertNotIn("<presence", text)
        r.close()


if __name__ == "__main__":
    unittest.main()
