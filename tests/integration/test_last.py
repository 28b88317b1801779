"""XEP-0012 last activity (router/mod_last.c) and XEP-0202 entity time (mod_time.c):
the server's uptime and time; an account's last activity for itself and its subscribed
contacts (0 while it has an available resource, else the seconds since its last one went,
with the status of its last unavailable presence), <forbidden/> for others (XEP-0012
§3, §8), <item-not-found/> when nothing was recorded; the recorded status is cut to
limits.max_doc_bytes. Checked with slixmpp (xep_0012, xep_0202), aioxmpp (generic IQ
XSOs) and raw XML."""
import asyncio
import datetime
import re
import time
import unittest

import aioxmpp
import aioxmpp.xso as xso
from slixmpp.exceptions import IqError

from harness import DOMAIN, Client, RawStream, ServerTest, run, subscribe, aioxmpp_client


async def login(srv, jid):
    c = Client(srv, jid, "pw")
    c.register_plugin("xep_0012")
    c.register_plugin("xep_0202")
    assert await c.login(), jid
    return c


async def last(c, jid):
    r = await c["xep_0012"].get_last_activity(jid)
    return int(r["last_activity"]["seconds"]), r["last_activity"]["status"] or ""


class LastTest(ServerTest):
    users = ("alice", "bob", "carol", "dave")

    def test_server_uptime_and_time(self):
        async def go():
            a = await login(self.srv, f"alice@{DOMAIN}/s")
            secs, status = await last(a, DOMAIN)
            self.assertGreaterEqual(secs, 0)
            self.assertLess(secs, 600)
            self.assertEqual(status, "")
            r = await a["xep_0202"].get_entity_time(DOMAIN)
            # (read from the XML: slixmpp 1.8's entity_time['utc'] appends a second 'Z')
            text = r.xml.find("{urn:xmpp:time}time/{urn:xmpp:time}utc").text
            utc = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
            self.assertLess(abs((utc - datetime.datetime.now(datetime.timezone.utc)).total_seconds()), 5)
            tzo = r.xml.find("{urn:xmpp:time}time/{urn:xmpp:time}tzo").text
            self.assertRegex(tzo, r"^[+-]\d\d:\d\d$")
            self.assertRegex(r.xml.find("{urn:xmpp:time}time/{urn:xmpp:time}utc").text,
                             r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            # entity time of an account's bare JID is nobody's (clients answer for full JIDs)
            with self.assertRaises(IqError) as e:
                await a["xep_0202"].get_entity_time(f"bob@{DOMAIN}")
            self.assertEqual(e.exception.condition, "service-unavailable")
            await a.close()
        run(go())

    def test_contact_sees_last_logout_and_status_stranger_forbidden(self):
        async def go():
            a = await login(self.srv, f"alice@{DOMAIN}/s")
            b = await login(self.srv, f"bob@{DOMAIN}/s")
            c = await login(self.srv, f"carol@{DOMAIN}/s")
            a.send_presence()
            b.send_presence()
            await subscribe(b, a)  # bob may see alice's presence; carol may not
            self.assertEqual(await last(b, f"alice@{DOMAIN}"), (0, ""))  # online (§3)
            self.assertEqual((await last(a, f"alice@{DOMAIN}"))[0], 0)  # herself
            with self.assertRaises(IqError) as e:
                await c["xep_0012"].get_last_activity(f"alice@{DOMAIN}")
            self.assertEqual(e.exception.condition, "forbidden")
            d = await login(self.srv, f"dave@{DOMAIN}/s")
            d.send_presence()
            c.send_presence()
            await subscribe(c, d)
            await d.close()
            # alice goes with a status
            a.send_presence(ptype="unavailable", pstatus="Heading Home")
            await b.next_presence(pred=lambda p: p["from"].bare == f"alice@{DOMAIN}" and p["type"] == "unavailable")
            secs, status = await last(b, f"alice@{DOMAIN}")
            self.assertLessEqual(secs, 2)
            self.assertEqual(status, "Heading Home")
            await a.close()  # the session's end does not overwrite the status
            deadline = time.monotonic() + 5
            while True:  # the seconds grow
                secs, status = await last(b, f"alice@{DOMAIN}")
                if secs >= 1 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            self.assertGreaterEqual(secs, 1)
            self.assertEqual(status, "Heading Home")
            # dave's connection ended without unavailable presence: recorded, no status
            secs, status = await last(c, f"dave@{DOMAIN}")
            self.assertLessEqual(secs, 5)
            self.assertEqual(status, "")
            # back online: 0
            a2 = await login(self.srv, f"alice@{DOMAIN}/t")
            a2.send_presence()
            await b.next_presence(pred=lambda p: p["from"] == f"alice@{DOMAIN}/t" and p["type"] == "available")
            self.assertEqual(await last(b, f"alice@{DOMAIN}"), (0, ""))
            # a full JID of an offline resource: service-unavailable (RFC 6121 §8.5.3.2.2)
            with self.assertRaises(IqError) as e:
                await b["xep_0012"].get_last_activity(f"alice@{DOMAIN}/gone")
            self.assertEqual(e.exception.condition, "service-unavailable")
            for x in (a2, b, c):
                await x.close()
        run(go())


class LastStatusCapTest(ServerTest):
    users = ("alice", "bob")
    server_options = {"limits.max_doc_bytes": 256}

    def test_long_status_cut_at_a_character(self):
        async def go():
            a = await login(self.srv, f"alice@{DOMAIN}/s")
            b = await login(self.srv, f"bob@{DOMAIN}/s")
            a.send_presence()
            b.send_presence()
            await subscribe(b, a)
            status = "é" * 2000  # 4,000 bytes of UTF-8
            a.send_presence(ptype="unavailable", pstatus=status)
            await b.next_presence(pred=lambda p: p["from"].bare == f"alice@{DOMAIN}" and p["type"] == "unavailable")
            secs, got = await last(b, f"alice@{DOMAIN}")
            self.assertTrue(status.startswith(got))
            self.assertGreater(len(got.encode()), 200)
            self.assertLessEqual(len(got.encode()), 256)
            await a.close()
            await b.close()
        run(go())


class LastQuery(xso.XSO):
    TAG = ("jabber:iq:last", "query")
    seconds = xso.Attr("seconds", type_=xso.Integer(), default=None)
    text = xso.Text(default="")


class TimeQuery(xso.XSO):
    TAG = ("urn:xmpp:time", "time")
    tzo = xso.ChildText(("urn:xmpp:time", "tzo"), default=None)
    utc = xso.ChildText(("urn:xmpp:time", "utc"), default=None)


aioxmpp.IQ.as_payload_class(LastQuery)
aioxmpp.IQ.as_payload_class(TimeQuery)


class LastAioxmppTest(ServerTest):
    users = ("erin", "frank")

    def client(self, user):
        return aioxmpp_client(self.srv, f"{user}@{DOMAIN}/ax")

    def test_aioxmpp_uptime_time_and_forbidden(self):
        async def go():
            ejid, e = self.client("erin")
            async with e.connected():
                server = aioxmpp.JID.fromstr(DOMAIN)
                r = await e.send(aioxmpp.IQ(type_=aioxmpp.IQType.GET, to=server, payload=LastQuery()))
                self.assertIsNotNone(r.seconds)
                self.assertGreaterEqual(r.seconds, 0)
                r = await e.send(aioxmpp.IQ(type_=aioxmpp.IQType.GET, to=server, payload=TimeQuery()))
                self.assertTrue(r.utc.endswith("Z"))
                self.assertRegex(r.tzo, r"^[+-]\d\d:\d\d$")
                with self.assertRaises(aioxmpp.errors.XMPPAuthError) as err:
                    await e.send(aioxmpp.IQ(type_=aioxmpp.IQType.GET, to=aioxmpp.JID.fromstr(f"frank@{DOMAIN}"),
                                            payload=LastQuery()))
                self.assertEqual(err.exception.condition, aioxmpp.ErrorCondition.FORBIDDEN)
        asyncio.run(go())


if __name__ == "__main__":
    unittest.main()
