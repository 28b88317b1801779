"""RFC 6121 roster versioning (§2.6), subscription pre-approval (§3.4), and three
subscription rules of Appendix A (router/mod_roster.c, router/mod_presence.c).

Versioning: both stream features are offered after authentication; a roster get with
ver='' (or a stale ver) gets the whole roster with the current ver, one with the current
ver an empty result; every push carries the ver it leads to, and the ver survives a new
session. Checked with raw XML, slixmpp (its rosterver feature and client_roster.version)
and aioxmpp (RosterClient, whose cached roster is re-used on an empty result).

Pre-approval: 'subscribed' to a contact that did not ask is not routed, pushes the item
with approved='true' (created with subscription none), and the contact's later
'subscribe' is approved at once (the user's clients are not asked); 'unsubscribed'
cancels it, and a later 'subscribe' is then asked as usual.

Appendix A: an 'unsubscribed' in state None or To (nothing pending in) is neither routed
nor pushed and leaves the item as it is (on one server the routing itself cannot be seen: the
contact's side ignores such a stanza, §3.2.3); an 'unsubscribe' that changes nothing pushes nothing; a contact that got
directed presence and is subscribed gets ONE unavailable when the session goes
unavailable or ends (§4.6.3 and §4.2.2 together).

Absence is proved on an ordered path: a push would reach the user before the result of a
roster get sent after the stanza (both from the user's shard); a stanza routed to the
contact would reach it before a message sent after that result."""
import asyncio
import re
import unittest

import aioxmpp
import aioxmpp.roster

from harness import DOMAIN, Client, RawStream, ServerTest, run
from test_roster_limits import stanza_with_id, wait_iq

PW = "pw"
ROSTER_PUSH = r"<iq\b[^>]*type='set'[^>]*>\s*<query xmlns='jabber:iq:roster'"


def j(user):
    return f"{user}@{DOMAIN}"


def login(srv, user, resource="r"):
    r = RawStream(srv.port, timeout=10)
    r.login(user, PW, resource)
    return r


def get(r, sid, ver=None):
    """The roster get's result (the whole <iq/>); ver None: no ver attribute."""
    v = "" if ver is None else f" ver='{ver}'"
    r.send(f"<iq type='get' id='{sid}'><query xmlns='jabber:iq:roster'{v}/></iq>")
    return wait_iq(r, sid)


def ver_of(iq):
    m = re.search(r"<query xmlns='jabber:iq:roster' ver='([^']*)'", iq)
    return m.group(1) if m else None


def drain(r):
    """What r received so far (and forget it)."""
    text = r.buf.decode(errors="replace")
    r.buf = b""
    return text


def barrier(r, sid, keep=False):
    """Everything the user's shard sent r before answering a roster get sent now (keep:
    with what r had received before, else only what arrives from now on)."""
    if not keep:
        drain(r)
    r.send(f"<iq type='get' id='{sid}'><query xmlns='jabber:iq:roster'/></iq>")
    text = r.recv_until(r"<iq\b[^>]*\bid='%s'" % sid, 10)
    return text[:text.index(f"id='{sid}'")]


def contact_barrier(sender, receiver, sid):
    """Everything the receiver got (since its last drain) before a message the sender
    sends once its own shard has handled what it sent before (that shard routes to the
    receiver's in order)."""
    barrier(sender, sid + "b")
    sender.send(f"<message to='{receiver.jid}' type='chat' id='{sid}'><body>{sid}</body></message>")
    text = receiver.recv_until(r"<message\b[^>]*\bid='%s'" % sid, 10)
    return text[:text.index(f"id='{sid}'")]


def presence(r, to, ptype):
    r.send(f"<presence to='{to}' type='{ptype}'/>")


class RosterVersioningTest(ServerTest):
    users = ("alice", "bob", "carol", "sx", "ax")

    def test_features_offered_after_auth(self):
        r = RawStream(self.srv.port, timeout=10)
        r.starttls()
        r.auth_plain("alice", PW)
        feats = r.buf.decode()
        self.assertIn("<ver xmlns='urn:xmpp:features:rosterver'/>", feats)
        self.assertIn("<sub xmlns='urn:xmpp:features:pre-approval'/>", feats)
        r.close()

    def test_get_with_ver(self):
        r = login(self.srv, "alice")
        full = get(r, "g0", "")
        v0 = ver_of(full)
        self.assertIsNotNone(v0, full)
        self.assertIsNone(ver_of(get(r, "g0b")))  # no ver asked, none given (§2.6.2)
        same = get(r, "g1", v0)
        self.assertRegex(same, r"^<iq\b[^>]*type='result'[^>]*/>$")  # §2.6.3: empty result
        # a change: the push carries the new ver, the result of a get with it is empty
        drain(r)
        r.send(f"<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='{j('bob')}' "
               "name='Bob'/></query></iq>")
        text = r.recv_until(r"<iq\b[^>]*id='s1'", 10)
        push = re.search(ROSTER_PUSH + r" ver='([^']*)'>", text)
        self.assertIsNotNone(push, text)
        v1 = push.group(1)
        self.assertNotEqual(v1, v0)
        self.assertRegex(get(r, "g2", v1), r"^<iq\b[^>]*type='result'[^>]*/>$")
        # a change to an item that exists (a rename) is a change too
        drain(r)
        r.send(f"<iq type='set' id='s2'><query xmlns='jabber:iq:roster'><item jid='{j('bob')}' "
               "name='Robert'/></query></iq>")
        text = r.recv_until(r"<iq\b[^>]*id='s2'", 10)
        push = re.search(ROSTER_PUSH + r" ver='([^']*)'>", text)
        self.assertIsNotNone(push, text)
        self.assertNotIn(push.group(1), (v0, v1))
        renamed = get(r, "g2b", v1)
        self.assertIn("name='Robert'", renamed)
        v1 = ver_of(renamed)
        self.assertEqual(v1, push.group(1))
        # the old ver: the whole roster, with the new ver
        stale = get(r, "g3", v0)
        self.assertEqual(ver_of(stale), v1)
        self.assertIn(f"jid='{j('bob')}'", stale)
        # a bogus ver is a stale one
        self.assertEqual(ver_of(get(r, "g4", "not-a-version")), v1)
        r.close()
        # a new session: the ver is the account's
        r = login(self.srv, "alice", "r2")
        self.assertRegex(get(r, "g5", v1), r"^<iq\b[^>]*type='result'[^>]*/>$")
        # a subscription change pushes a new ver too
        drain(r)
        presence(r, j("carol"), "subscribe")
        before = barrier(r, "g6")
        push = re.search(ROSTER_PUSH + r" ver='([^']*)'>.*?ask='subscribe'", before, re.S)
        self.assertIsNotNone(push, before)
        self.assertNotIn(push.group(1), (v0, v1))
        r.close()

    def test_slixmpp_roster_version(self):
        async def go():
            c = Client(self.srv, j("sx") + "/a", PW)
            assert await c.login()
            self.assertIn("rosterver", c.features)
            self.assertIn("preapproval", c.features)
            await c.get_roster()
            v0 = c.client_roster.version
            self.assertTrue(v0)
            # a push from another resource's change updates the kept version
            changed = asyncio.get_running_loop().create_future()
            c.add_event_handler("roster_update", lambda iq: changed.done() or changed.set_result(iq))
            c2 = Client(self.srv, j("sx") + "/b", PW)
            assert await c2.login()
            await c2.update_roster(j("bob"), name="Bob")
            await asyncio.wait_for(changed, 10)
            v1 = c.client_roster.version
            self.assertNotEqual(v1, v0)
            # a get with the kept version: empty result, the roster kept
            res = await c.get_roster()
            self.assertEqual(len(res["roster"]["items"]), 0, res)  # nothing sent again (§2.6.3)
            self.assertIn(j("bob"), c.client_roster)
            self.assertEqual(c.client_roster.version, v1)
            await c.close()
            await c2.close()
        run(go())

    def test_aioxmpp_roster_version(self):
        saved = {}

        async def session(resource, expect_unchanged):
            jid = aioxmpp.JID.fromstr(f"ax@{DOMAIN}/{resource}")
            c = aioxmpp.PresenceManagedClient(
                jid, aioxmpp.make_security_layer(PW, no_verify=True),
                override_peer=[("127.0.0.1", self.srv.port, aioxmpp.connector.STARTTLSConnector())])
            roster = c.summon(aioxmpp.RosterClient)
            if saved:
                roster.import_from_json(saved["data"])
            got = asyncio.get_running_loop().create_future()
            roster.on_initial_roster_received.connect(lambda: got.done() or got.set_result(True))
            added = []
            roster.on_entry_added.connect(lambda item: added.append(item))
            async with c.connected():
                await asyncio.wait_for(got, 10)
                if expect_unchanged:
                    self.assertEqual(added, [])  # nothing sent again: the cache was current
                else:
                    await roster.set_entry(aioxmpp.JID.fromstr(j("carol")), name="Carol")
                    for _ in range(100):  # the push updates the version
                        if roster.version != saved.get("v0"):
                            break
                        await asyncio.sleep(0.05)
                self.assertIn(aioxmpp.JID.fromstr(j("carol")), roster.items)
                saved["data"] = roster.export_as_json()
                saved.setdefault("v0", roster.version)
                return roster.version

        v_first = run(session("a1", False))
        self.assertTrue(v_first)
        v_again = run(session("a2", True))
        self.assertEqual(v_again, v_first)


class PreApprovalTest(ServerTest):
    users = ("alice", "bob", "carol", "dave", "erin")

    def test_pre_approved_subscribe_is_approved_at_once(self):
        a = login(self.srv, "alice")
        b = login(self.srv, "bob")
        a.jid, b.jid = j("alice") + "/r", j("bob") + "/r"
        get(a, "ag")
        get(b, "bg")
        a.send("<presence/>")
        b.send("<presence/>")
        b.recv_until(r"<presence\b[^>]*from='%s/r'" % re.escape(j("bob")), 10)  # its own
        drain(b)
        presence(a, j("bob"), "subscribed")
        before = barrier(a, "a1")
        self.assertRegex(before, ROSTER_PUSH + r" ver='[^']+'><item jid='%s' subscription='none' "
                         r"approved='true'/>" % re.escape(j("bob")))
        got = contact_barrier(a, b, "m1")
        self.assertNotIn("subscribed", got)  # §3.4.1: not routed
        self.assertIn("approved='true'", get(a, "ag2"))
        # bob asks: approved at once, alice's clients are not asked
        drain(a)
        drain(b)
        presence(b, j("alice"), "subscribe")
        text = b.recv_until(r"<presence\b[^>]*from='%s'[^>]*type='subscribed'" % re.escape(j("alice")), 10)
        self.assertRegex(text, ROSTER_PUSH + r"[^>]*><item jid='%s' subscription='to'/>" % re.escape(j("alice")))
        b.recv_until(r"<presence\b[^>]*from='%s/r'" % re.escape(j("alice")), 10)  # her presence (§3.1.5)
        got = contact_barrier(b, a, "m2")
        self.assertNotRegex(got, r"<presence\b[^>]*type='subscribe'")
        self.assertRegex(got, ROSTER_PUSH + r"[^>]*><item jid='%s' subscription='from'/>" % re.escape(j("bob")))
        a.close()
        b.close()

    def test_unsubscribed_cancels_pre_approval(self):
        a = login(self.srv, "carol")
        b = login(self.srv, "dave")
        a.jid, b.jid = j("carol") + "/r", j("dave") + "/r"
        get(a, "cg")
        get(b, "dg")
        a.send("<presence/>")
        b.send("<presence/>")
        b.recv_until(r"<presence\b[^>]*from='%s/r'" % re.escape(j("dave")), 10)  # its own
        drain(b)
        presence(a, j("dave"), "subscribed")
        self.assertIn("approved='true'", barrier(a, "c1"))
        presence(a, j("dave"), "unsubscribed")
        before = barrier(a, "c2")
        self.assertRegex(before, ROSTER_PUSH + r"[^>]*><item jid='%s' subscription='none'/>" % re.escape(j("dave")))
        got = contact_barrier(a, b, "m3")
        self.assertNotIn("subscribed", got)  # neither was routed
        self.assertNotIn("approved", get(a, "cg2"))
        # now dave's request is asked as usual
        drain(a)
        presence(b, j("carol"), "subscribe")
        a.recv_until(r"<presence\b[^>]*from='%s'[^>]*type='subscribe'" % re.escape(j("dave")), 10)
        a.close()
        b.close()

    def test_already_subscribed_is_not_pre_approved(self):
        a = login(self.srv, "erin")
        b = login(self.srv, "bob", "r9")
        get(a, "eg")
        b.send("<presence/>")
        presence(b, j("erin"), "subscribe")
        a.send("<presence/>")
        a.recv_until(r"type='subscribe'", 10)
        presence(a, j("bob"), "subscribed")  # approves the pending request
        self.assertIn("subscription='from'", barrier(a, "e1"))
        presence(a, j("bob"), "subscribed")  # From: nothing changes, nothing pushed
        before = barrier(a, "e2")
        self.assertNotRegex(before, ROSTER_PUSH)
        self.assertNotIn("approved", get(a, "eg2"))
        a.close()
        b.close()


class SubscriptionTablesTest(ServerTest):
    users = ("alice", "bob", "carol", "dave")

    def test_unsubscribed_in_none_or_to_is_not_routed(self):
        a = login(self.srv, "alice")
        b = login(self.srv, "bob")
        a.jid, b.jid = j("alice") + "/r", j("bob") + "/r"
        get(a, "ag")
        get(b, "bg")
        a.send("<presence/>")
        b.send("<presence/>")
        # None (an item, no subscription, nothing pending)
        a.send(f"<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='{j('bob')}'/></query></iq>")
        wait_iq(a, "s1")
        b.recv_until(r"<presence\b[^>]*from='%s/r'" % re.escape(j("bob")), 10)  # its own
        drain(b)
        presence(a, j("bob"), "unsubscribed")
        self.assertNotRegex(barrier(a, "a1"), ROSTER_PUSH)
        self.assertNotIn("unsubscribed", contact_barrier(a, b, "m1"))
        self.assertIn(f"jid='{j('bob')}'", get(a, "ag1"))  # no state change: the item stays
        # To: alice subscribed to bob
        presence(a, j("bob"), "subscribe")
        b.recv_until(r"type='subscribe'", 10)
        presence(b, j("alice"), "subscribed")
        a.recv_until(r"subscription='to'", 10)
        drain(b)
        presence(a, j("bob"), "unsubscribed")
        self.assertNotRegex(barrier(a, "a2"), ROSTER_PUSH)
        self.assertNotIn("unsubscribed", contact_barrier(a, b, "m2"))
        self.assertIn("subscription='to'", get(a, "ag2"))
        # no item at all: not routed either
        presence(a, j("dave"), "unsubscribed")
        self.assertNotRegex(barrier(a, "a3"), ROSTER_PUSH)
        a.close()
        b.close()

    def test_unsubscribe_without_change_pushes_nothing(self):
        a = login(self.srv, "carol")
        get(a, "cg")
        a.send(f"<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='{j('dave')}'/></query></iq>")
        wait_iq(a, "s1")
        presence(a, j("dave"), "unsubscribe")  # From (or None): no state change
        self.assertNotRegex(barrier(a, "c1"), ROSTER_PUSH)
        a.close()

    def test_one_unavailable_after_directed_presence(self):
        # dave subscribes to carol (carol: From), carol sends dave directed presence too
        c = login(self.srv, "carol", "d")
        d = login(self.srv, "dave", "d")
        c.jid, d.jid = j("carol") + "/d", j("dave") + "/d"
        get(c, "cg")
        get(d, "dg")
        d.send("<presence/>")
        presence(d, j("carol"), "subscribe")
        c.send("<presence/>")
        c.recv_until(r"type='subscribe'", 10)
        presence(c, j("dave"), "subscribed")
        d.recv_until(r"<presence\b[^>]*from='%s/d'" % re.escape(j("carol")), 10)
        c.send(f"<presence to='{j('dave')}'><status>hi</status></presence>")
        d.recv_until(r"<status>hi</status>", 10)
        # unavailable: one, not two
        drain(d)
        c.send("<presence type='unavailable'/>")
        got = contact_barrier(c, d, "m1")
        self.assertEqual(len(re.findall(r"<presence\b[^>]*from='%s/d'[^>]*type='unavailable'"
                                        % re.escape(j("carol")), got)), 1, got)
        # the session ends after directed presence: one again
        c.send("<presence/>")
        d.recv_until(r"<presence(?![^>]*\btype=)[^>]*from='%s/d'" % re.escape(j("carol")), 10)
        c.send(f"<presence to='{j('dave')}'><status>again</status></presence>")
        d.recv_until(r"<status>again</status>", 10)
        drain(d)
        c.close()
        d.wait_session_gone(j("carol") + "/d")
        got = barrier(d, "d9", keep=True)
        self.assertEqual(len(re.findall(r"<presence\b[^>]*from='%s/d'[^>]*type='unavailable'"
                                        % re.escape(j("carol")), got)), 1, got)
        d.close()


if __name__ == "__main__":
    unittest.main()
