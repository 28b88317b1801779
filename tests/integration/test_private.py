"""XEP-0049 private XML storage (router/mod_private.c): an account stores elements keyed
by name and namespace and reads them back; another account can neither read nor write
them (<service-unavailable/>, as for an account that does not exist); malformed queries
get <not-acceptable/> / <bad-request/>; an element's XML is capped at
limits.max_doc_bytes (N stored, N + 1 refused), a set at limits.max_private_elements
elements, an account's documents at limits.max_account_doc_bytes (<not-allowed/>).
Checked with slixmpp (xep_0049), aioxmpp (aioxmpp.private_xml with its bookmark XSOs)
and raw XML."""
import asyncio
import re
import unittest
import xml.etree.ElementTree as ET

import aioxmpp
import aioxmpp.bookmarks
import aioxmpp.private_xml
from slixmpp.xmlstream import ElementBase

from harness import DOMAIN, Client, RawStream, ServerTest, run, aioxmpp_client
from test_vcard import raw_iq


class Prefs(ElementBase):
    namespace = "exodus:prefs"
    name = "exodus"
    plugin_attrib = "exodus"
    interfaces = {"defaultnick"}
    sub_interfaces = interfaces


async def login(srv, jid):
    c = Client(srv, jid, "pw")
    c.register_plugin("xep_0049")
    c["xep_0049"].register(Prefs)
    assert await c.login(), jid
    return c


def q(body):
    return f"<query xmlns='jabber:iq:private'>{body}</query>"


def error_of(text):
    m = re.search(r"<error type='(\w+)'><([\w-]+) ", text)
    return m and (m.group(1), m.group(2))


class PrivateTest(ServerTest):
    users = ("alice", "bob")
    server_options = {"limits.max_private_elements": 3}

    def test_store_and_retrieve_own_only(self):
        async def go():
            a = await login(self.srv, f"alice@{DOMAIN}/s")
            b = await login(self.srv, f"bob@{DOMAIN}/s")
            p = Prefs()
            p["defaultnick"] = "Hamlet"
            await a["xep_0049"].store(p)
            r = await a["xep_0049"].retrieve("exodus")
            self.assertEqual(r["private"]["exodus"]["defaultnick"], "Hamlet")
            # bob's storage is his own: the same name gives him an empty element
            r = await b["xep_0049"].retrieve("exodus")
            self.assertEqual(r["private"]["exodus"]["defaultnick"], "")
            self.assertIsNotNone(r.xml.find("{jabber:iq:private}query/{exodus:prefs}exodus"))
            p2 = Prefs()
            p2["defaultnick"] = "Bob"
            await b["xep_0049"].store(p2)
            r = await a["xep_0049"].retrieve("exodus")
            self.assertEqual(r["private"]["exodus"]["defaultnick"], "Hamlet")
            await a.close()
            await b.close()
        run(go())
        # bob asks alice's bare JID for her storage: nothing, whatever he sends
        r = RawStream(self.srv.port).login("bob", "pw", "raw")
        for typ, body in (("get", "<exodus xmlns='exodus:prefs'/>"),
                          ("set", "<exodus xmlns='exodus:prefs'><defaultnick>Macbeth</defaultnick></exodus>")):
            text = raw_iq(r, q(body), f"x{typ}", to=f"alice@{DOMAIN}", typ=typ)
            self.assertEqual(error_of(text), ("cancel", "service-unavailable"), text)
            self.assertNotIn("Hamlet", text)
        r.close()

        async def still():
            a = await login(self.srv, f"alice@{DOMAIN}/s")
            r = await a["xep_0049"].retrieve("exodus")
            self.assertEqual(r["private"]["exodus"]["defaultnick"], "Hamlet")
            await a.close()
        run(still())

    def test_keys_are_name_and_namespace_and_bad_queries(self):
        r = RawStream(self.srv.port).login("alice", "pw", "raw")
        self.assertIn("type='result'", raw_iq(r, q("<a xmlns='urn:k'>1</a><b xmlns='urn:k'>2</b>"), "s1"))
        self.assertIn("type='result'", raw_iq(r, q("<a xmlns='urn:other'>3</a>"), "s2"))
        for name, ns, want in (("a", "urn:k", "1"), ("b", "urn:k", "2"), ("a", "urn:other", "3")):
            text = raw_iq(r, q(f"<{name} xmlns='{ns}'/>"), "g", typ="get")
            self.assertIn(f"<{name} xmlns='{ns}'>{want}</{name}>", text)
        # XEP-0049 §2.3: no child; a get of two; reserved namespaces; too many in a set
        for typ, body, want in (
                ("get", "", ("modify", "not-acceptable")),
                ("set", "", ("modify", "not-acceptable")),
                ("get", "<a xmlns='urn:k'/><b xmlns='urn:k'/>", ("modify", "bad-request")),
                ("set", "<nons>x</nons>", ("modify", "not-acceptable")),  # in jabber:iq:private
                ("get", "<nons/>", ("modify", "not-acceptable")),
                ("set", "<m xmlns='jabber:client'/>", ("modify", "not-acceptable")),
                ("set", "<m xmlns='jabber:server'/>", ("modify", "not-acceptable")),
                ("set", "<e xmlns=''/>", ("modify", "not-acceptable")),
                ("set", "".join(f"<n{i} xmlns='urn:many'>v</n{i}>" for i in range(4)), ("modify", "not-acceptable"))):
            text = raw_iq(r, q(body), "b", typ=typ)
            self.assertEqual(error_of(text), want, f"{typ} {body}: {text}")
        # the refused set stored none of its elements; three are fine
        self.assertIn("<n0 xmlns='urn:many'/>", raw_iq(r, q("<n0 xmlns='urn:many'/>"), "g0", typ="get"))
        self.assertIn("type='result'",
                      raw_iq(r, q("".join(f"<n{i} xmlns='urn:many'>v</n{i}>" for i in range(3))), "s3"))
        self.assertIn("<n2 xmlns='urn:many'>v</n2>", raw_iq(r, q("<n2 xmlns='urn:many'/>"), "g2", typ="get"))
        # a private query to the server's domain is no one's
        text = raw_iq(r, q("<a xmlns='urn:k'/>"), "d", to=DOMAIN, typ="get")
        self.assertEqual(error_of(text), ("cancel", "service-unavailable"))
        r.close()


def elem_of_len(n, name="p", ns="urn:cap"):
    head, tail = f"<{name} xmlns='{ns}'>", f"</{name}>"
    return head + "y" * (n - len(head) - len(tail)) + tail


class PrivateLimitTest(ServerTest):
    users = ("alice",)
    server_options = {"limits.max_doc_bytes": 1024, "limits.max_account_doc_bytes": 8192}

    def test_element_cap_and_account_budget(self):
        r = RawStream(self.srv.port).login("alice", "pw", "raw")
        self.assertEqual(len(elem_of_len(1024)), 1024)
        self.assertIn("type='result'", raw_iq(r, q(elem_of_len(1024)), "n"))
        text = raw_iq(r, q(elem_of_len(1025)), "n1")
        self.assertEqual(error_of(text), ("modify", "not-acceptable"))
        self.assertIn(elem_of_len(1024), raw_iq(r, q("<p xmlns='urn:cap'/>"), "g", typ="get"))
        # distinct elements until the account's budget is spent: about 8 of ~1 KB
        stored = 1
        for i in range(20):
            text = raw_iq(r, q(elem_of_len(1000, ns=f"urn:b{i}")), f"b{i}")
            if "type='error'" in text:
                self.assertEqual(error_of(text), ("cancel", "not-allowed"), text)
                break
            stored += 1
        else:
            self.fail("the account's budget was never reached")
        self.assertIn(stored, range(6, 9))
        # what was stored is intact; a new one does not fit, a smaller replacement does and
        # frees room
        self.assertIn(elem_of_len(1000, ns="urn:b0"), raw_iq(r, q("<p xmlns='urn:b0'/>"), "g0", typ="get"))
        self.assertEqual(error_of(raw_iq(r, q(elem_of_len(1000, ns="urn:new")), "nw")), ("cancel", "not-allowed"))
        self.assertIn("type='result'", raw_iq(r, q("<p xmlns='urn:b0'>small</p>"), "r0"))
        self.assertIn("type='result'", raw_iq(r, q(elem_of_len(1000, ns="urn:new")), "nw2"))
        r.close()


class PrivateAioxmppTest(ServerTest):
    users = ("erin",)

    def test_aioxmpp_bookmarks_in_private_storage(self):
        async def go():
            jid, c = aioxmpp_client(self.srv, f"erin@{DOMAIN}/ax")
            async with c.connected():
                px = c.summon(aioxmpp.private_xml.PrivateXMLService)
                got = await px.get_private_xml(aioxmpp.bookmarks.xso.Storage())
                self.assertEqual(list(got.registered_payload.bookmarks), [])
                st = aioxmpp.bookmarks.xso.Storage()
                st.bookmarks.append(aioxmpp.bookmarks.xso.Conference(
                    "Coven", aioxmpp.JID.fromstr("coven@chat.example"), autojoin=True, nick="erin"))
                await px.set_private_xml(st)
                got = await px.get_private_xml(aioxmpp.bookmarks.xso.Storage())
                bms = list(got.registered_payload.bookmarks)
                self.assertEqual(len(bms), 1)
                self.assertEqual(bms[0].name, "Coven")
                self.assertEqual(str(bms[0].jid), "coven@chat.example")
                self.assertTrue(bms[0].autojoin)
        asyncio.run(go())

        async def with_slixmpp():  # the same document, read by the other library
            c = Client(self.srv, f"erin@{DOMAIN}/sx", "pw")
            assert await c.login()
            iq = c.make_iq_get()
            iq.append(ET.fromstring(
                "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>"))
            r = await iq.send()
            conf = r.xml.find("{jabber:iq:private}query/{storage:bookmarks}storage/{storage:bookmarks}conference")
            self.assertEqual(conf.get("jid"), "coven@chat.example")
            await c.close()
        run(with_slixmpp())


if __name__ == "__main__":
    unittest.main()
