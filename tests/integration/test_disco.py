"""Router modules (router/module.h) answering for the server and for an account's bare
JID: XEP-0030 disco#info/#items built from the module table (identity account/registered
on an account, for itself and for subscribed contacts only), XEP-0199 ping to the server
and to a bare JID (answered by the server on the account's behalf), XEP-0092 version,
and <service-unavailable/> for what no module takes (RFC 6120 §8.4, RFC 6121 §8.5).
Checked with slixmpp and with aioxmpp (two independent client libraries)."""
import asyncio
import unittest

import aioxmpp
import aioxmpp.disco
import aioxmpp.ping
from slixmpp.exceptions import IqError

from harness import DOMAIN, Client, RawStream, ServerTest, run, aioxmpp_client

SERVER_FEATURES = {"http://jabber.org/protocol/disco#info", "http://jabber.org/protocol/disco#items",
                   "urn:xmpp:ping", "jabber:iq:version", "jabber:iq:roster", "msgoffline", "urn:xmpp:delay",
                   "vcard-temp", "jabber:iq:private", "jabber:iq:last", "urn:xmpp:time",
                   "urn:xmpp:carbons:2", "urn:xmpp:blocking"}


async def login(srv, jid):
    c = Client(srv, jid, "pw")
    assert await c.login(), jid
    return c


class DiscoSlixmppTest(ServerTest):
    users = ("alice", "bob", "carol", "dave")

    def test_server_info_lists_every_module(self):
        async def go():
            a = await login(self.srv, f"alice@{DOMAIN}/s")
            info = await a.plugin["xep_0030"].get_info(jid=DOMAIN)
            ids = {(c, t) for c, t, _, _ in info["disco_info"]["identities"]}
            self.assertIn(("server", "im"), ids)
            feats = set(info["disco_info"]["features"])
            self.assertEqual(feats, SERVER_FEATURES)
            self.assertEqual(len(info["disco_info"]["features"]), len(feats), "no feature twice")
            items = await a.plugin["xep_0030"].get_items(jid=DOMAIN)
            self.assertEqual(list(items["disco_items"]["items"]), [])
            with self.assertRaises(IqError) as e:
                await a.plugin["xep_0030"].get_info(jid=DOMAIN, node="nothing-here")
            self.assertEqual(e.exception.condition, "item-not-found")
            await a.close()
        run(go())

    def test_own_account_info_and_ping(self):
        async def go():
            a = await login(self.srv, f"alice@{DOMAIN}/s")
            info = await a.plugin["xep_0030"].get_info(jid=f"alice@{DOMAIN}")
            ids = {(c, t) for c, t, _, _ in info["disco_info"]["identities"]}
            self.assertEqual(ids, {("account", "registered")})
            self.assertIn("urn:xmpp:ping", info["disco_info"]["features"])
            for f in ("vcard-temp", "jabber:iq:last"):  # answered for the account (XEP-0054, XEP-0012)
                self.assertIn(f, info["disco_info"]["features"])
            self.assertEqual(str(info["from"]), f"alice@{DOMAIN}")
            rtt = await a.plugin["xep_0199"].ping(jid=f"alice@{DOMAIN}", timeout=5)
            self.assertLess(rtt, 5)
            await a.close()
        run(go())

    def test_account_info_for_contacts_only(self):
        async def go():
            b = await login(self.srv, f"bob@{DOMAIN}/s")
            c = await login(self.srv, f"carol@{DOMAIN}/s")
            with self.assertRaises(IqError) as e:  # a stranger learns nothing
                await c.plugin["xep_0030"].get_info(jid=f"bob@{DOMAIN}")
            self.assertEqual(e.exception.condition, "service-unavailable")
            # carol subscribes to bob's presence; bob approves
            b.send_presence()
            c.send_presence()
            c.send_presence(pto=f"bob@{DOMAIN}", ptype="subscribe")
            await b.next_presence(pred=lambda p: p["type"] == "subscribe")
            b.send_presence(pto=f"carol@{DOMAIN}", ptype="subscribed")
            await c.next_presence(pred=lambda p: p["type"] == "subscribed")
            info = await c.plugin["xep_0030"].get_info(jid=f"bob@{DOMAIN}")
            self.assertIn(("account", "registered", None, None), info["disco_info"]["identities"])
            # but bob, not subscribed to carol, still learns nothing of her
            with self.assertRaises(IqError) as e:
                await b.plugin["xep_0030"].get_info(jid=f"carol@{DOMAIN}")
            self.assertEqual(e.exception.condition, "service-unavailable")
            await b.close()
            await c.close()
        run(go())

    def test_ping_other_bare_jid_and_unknown(self):
        async def go():
            d = await login(self.srv, f"dave@{DOMAIN}/s")
            await d.plugin["xep_0199"].ping(jid=f"alice@{DOMAIN}", timeout=5)  # offline: the server answers
            for to, cond in ((f"nobody@{DOMAIN}", "service-unavailable"),
                             (f"alice@{DOMAIN}/gone", "service-unavailable")):
                with self.assertRaises(IqError) as e:
                    await d.plugin["xep_0199"].ping(jid=to, timeout=5)
                self.assertEqual(e.exception.condition, cond, to)
            await d.close()
        run(go())

    def test_unknown_namespace_and_malformed(self):
        r = RawStream(self.srv.port).login("alice", "pw", "raw")
        r.buf = b""
        for to in (DOMAIN, f"alice@{DOMAIN}", f"bob@{DOMAIN}"):
            r.send(f"<iq type='get' id='u1' to='{to}'><query xmlns='urn:example:nothing'/></iq>")
            text = r.recv_until("</iq>")
            self.assertIn("type='error'", text)
            self.assertIn("<service-unavailable", text, to)
            r.buf = b""
        # a result or an error sent to the server is absorbed, never answered
        r.send(f"<iq type='result' id='x1' to='{DOMAIN}'/><iq type='get' id='p1' to='{DOMAIN}'>"
               "<ping xmlns='urn:xmpp:ping'/></iq>")
        text = r.recv_until("id='p1'")
        self.assertNotIn("x1", text)
        r.close()


class DiscoAioxmppTest(ServerTest):
    users = ("erin", "frank")

    def client(self, user):
        return aioxmpp_client(self.srv, f"{user}@{DOMAIN}/ax")

    def test_aioxmpp_disco_and_ping(self):
        async def go():
            jid, c = self.client("erin")
            async with c.connected():
                disco = c.summon(aioxmpp.DiscoClient)
                info = await disco.query_info(jid.bare(), require_fresh=True)
                self.assertEqual([(i.category, i.type_) for i in info.identities], [("account", "registered")])
                info = await disco.query_info(aioxmpp.JID.fromstr(DOMAIN), require_fresh=True)
                self.assertEqual(set(info.features), SERVER_FEATURES)
                self.assertIn(("server", "im"), [(i.category, i.type_) for i in info.identities])
                await aioxmpp.ping.ping(c, jid.bare())
                await aioxmpp.ping.ping(c, aioxmpp.JID.fromstr(DOMAIN))
                with self.assertRaises(aioxmpp.errors.XMPPCancelError) as e:
                    await disco.query_info(aioxmpp.JID.fromstr(f"frank@{DOMAIN}"), require_fresh=True)
                self.assertEqual(e.exception.condition, aioxmpp.ErrorCondition.SERVICE_UNAVAILABLE)
        asyncio.run(go())


if __name__ == "__main__":
    unittest.main()
