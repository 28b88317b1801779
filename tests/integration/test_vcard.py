"""XEP-0054 vcard-temp (router/mod_vcard.c) and the server side of XEP-0153 vCard-based
avatars: an account sets and gets its own vCard, anyone gets another account's at its
bare JID (an empty <vCard/> for one's own when none is stored, <service-unavailable/>
for another's), a set on another account's vCard is <forbidden/>; a vCard's XML is
capped at limits.max_doc_bytes (<not-acceptable/> at N + 1); the SHA-1 of the photo's
decoded BINVAL is added to broadcast presence that carries no x:update of the client's
own. Checked with slixmpp (xep_0054, xep_0153), aioxmpp (aioxmpp.vcard) and raw XML."""
import asyncio
import base64
import hashlib
import os
import re
import time
import unittest
import xml.etree.ElementTree as ET

import aioxmpp
import aioxmpp.avatar
import aioxmpp.dispatcher
import aioxmpp.vcard
import aioxmpp.vcard.xso
from slixmpp import JID
from slixmpp.exceptions import IqError

from harness import DOMAIN, Client, RawStream, ServerTest, run, subscribe, aioxmpp_client

UPDATE = "vcard-temp:x:update"


async def login(srv, jid, plugins=("xep_0054",)):
    c = Client(srv, jid, "pw")
    for p in plugins:
        c.register_plugin(p)
    assert await c.login(), jid
    return c


def photo_hash(p):
    """The x:update photo hash of a presence stanza, None when it has no x:update."""
    x = p.xml.find(f"{{{UPDATE}}}x")
    if x is None:
        return None
    ph = x.find(f"{{{UPDATE}}}photo")
    return "" if ph is None else (ph.text or "")


def raw_iq(r, body, iq_id, to=None, typ="set"):
    """Sends an IQ on a RawStream and returns the text of its answer."""
    r.buf = b""
    t = f" to='{to}'" if to else ""
    r.send(f"<iq type='{typ}' id='{iq_id}'{t}>{body}</iq>")
    text = r.recv_until(rf"<iq[^>]*id='{iq_id}'.*?(</iq>|/>)")
    return text[text.index("<iq"):]


class VcardTest(ServerTest):
    users = ("alice", "bob", "carol", "dave", "gina")

    def test_own_vcard_round_trip_others_read_it_only(self):
        async def go():
            a = await login(self.srv, f"alice@{DOMAIN}/s")
            b = await login(self.srv, f"bob@{DOMAIN}/s")
            alice = JID(f"alice@{DOMAIN}")
            # none yet: an empty vCard for the account itself (XEP-0054 §3.1)
            r = await a["xep_0054"].get_vcard(alice)
            self.assertEqual(r["type"], "result")
            self.assertEqual(len(r["vcard_temp"].xml), 0)
            v = a["xep_0054"].make_vcard()
            v["FN"] = "Alice Liddell"
            v["NICKNAME"] = "al"
            await a["xep_0054"].publish_vcard(v)  # no 'to': its own
            r = await a["xep_0054"].get_vcard(alice)
            self.assertEqual(r["vcard_temp"]["FN"], "Alice Liddell")
            # anyone reads it at the bare JID, answered by the server
            r = await b["xep_0054"].get_vcard(alice)
            self.assertEqual(str(r["from"]), f"alice@{DOMAIN}")
            self.assertEqual(r["vcard_temp"]["FN"], "Alice Liddell")
            self.assertEqual(r["vcard_temp"]["NICKNAME"], ["al"])
            # another account's missing vCard, or no account: service-unavailable (§3.3)
            for who in (f"gina@{DOMAIN}", f"nobody@{DOMAIN}"):
                with self.assertRaises(IqError) as e:
                    await b["xep_0054"].get_vcard(JID(who))
                self.assertEqual(e.exception.condition, "service-unavailable", who)
            # nobody sets another's vCard (§3.2)
            evil = b["xep_0054"].make_vcard()
            evil["FN"] = "Not Alice"
            with self.assertRaises(IqError) as e:
                await b["xep_0054"].publish_vcard(evil, jid=alice)
            self.assertEqual(e.exception.condition, "forbidden")
            r = await b["xep_0054"].get_vcard(alice)
            self.assertEqual(r["vcard_temp"]["FN"], "Alice Liddell")
            # a set replaces the whole vCard
            v2 = a["xep_0054"].make_vcard()
            v2["FN"] = "Alice L."
            await a["xep_0054"].publish_vcard(v2)
            r = await b["xep_0054"].get_vcard(alice)
            self.assertEqual(r["vcard_temp"]["FN"], "Alice L.")
            self.assertFalse(r["vcard_temp"]["NICKNAME"])
            await a.close()
            await b.close()
        run(go())

    def test_avatar_hash_added_to_presence(self):
        async def go():
            # carol's client does not do XEP-0153; dave's does (it reads x:update)
            c = await login(self.srv, f"carol@{DOMAIN}/s")
            d = await login(self.srv, f"dave@{DOMAIN}/s", ("xep_0054", "xep_0153"))
            c.send_presence()
            d.send_presence()
            await subscribe(d, c)
            img = os.urandom(3000)
            v = c["xep_0054"].make_vcard()
            v["FN"] = "Carol"
            v["PHOTO"]["TYPE"] = "image/png"
            v["PHOTO"]["BINVAL"] = img
            await c["xep_0054"].publish_vcard(v)

            async def next_from_carol(pred=lambda p: True):
                return await d.next_presence(pred=lambda p: p["from"].bare == f"carol@{DOMAIN}" and
                                             p["type"] == "available" and pred(p))

            c.send_presence(pstatus="with photo")
            p = await next_from_carol(lambda p: p["status"] == "with photo")
            self.assertEqual(photo_hash(p), hashlib.sha1(img).hexdigest())  # of the bytes, not the base64
            # dave reads the photo back: the same bytes
            r = await d["xep_0054"].get_vcard(JID(f"carol@{DOMAIN}"))
            self.assertEqual(r["vcard_temp"]["PHOTO"]["BINVAL"], img)

            # a client's own x:update is left alone
            own = "0123456789abcdef0123456789abcdef01234567"
            p = c.make_presence(pstatus="own hash")
            p.append(ET.fromstring(f"<x xmlns='{UPDATE}'><photo>{own}</photo></x>"))
            p.send()
            p = await next_from_carol(lambda p: p["status"] == "own hash")
            self.assertEqual(photo_hash(p), own)
            self.assertEqual(len(p.xml.findall(f"{{{UPDATE}}}x")), 1)

            # BINVAL in lines of 76 (RFC 2045): whitespace ignored (XEP-0153 §4.4)
            img2 = os.urandom(500)
            b64 = base64.encodebytes(img2).decode()  # with newlines
            self.assertIn("\n", b64.strip())
            iq = c.make_iq_set()
            iq.append(ET.fromstring(f"<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE>"
                                    f"<BINVAL>\n{b64}</BINVAL></PHOTO></vCard>"))
            await iq.send()
            c.send_presence(pstatus="lines")
            p = await next_from_carol(lambda p: p["status"] == "lines")
            self.assertEqual(photo_hash(p), hashlib.sha1(img2).hexdigest())

            # a BINVAL that is not base64: the vCard is stored as given, no hash announced
            iq = c.make_iq_set()
            iq.append(ET.fromstring("<vCard xmlns='vcard-temp'><FN>Carol</FN><PHOTO><TYPE>image/png</TYPE>"
                                    "<BINVAL>not*base64!</BINVAL></PHOTO></vCard>"))
            await iq.send()
            c.send_presence(pstatus="bad photo")
            p = await next_from_carol(lambda p: p["status"] == "bad photo")
            self.assertIsNone(photo_hash(p))
            r = await d["xep_0054"].get_vcard(JID(f"carol@{DOMAIN}"))
            binval = r["vcard_temp"].xml.find("{vcard-temp}PHOTO/{vcard-temp}BINVAL")
            self.assertEqual(binval.text, "not*base64!")

            # no photo: nothing added either
            v = c["xep_0054"].make_vcard()
            v["FN"] = "Carol"
            await c["xep_0054"].publish_vcard(v)
            c.send_presence(pstatus="no photo")
            p = await next_from_carol(lambda p: p["status"] == "no photo")
            self.assertIsNone(photo_hash(p))
            await c.close()
            await d.close()
        run(go())

    def test_photo_hash_survives_a_new_session(self):
        """The hash is kept with the vCard: a later session's presence carries it."""
        async def go():
            a = await login(self.srv, f"alice@{DOMAIN}/one")
            b = await login(self.srv, f"bob@{DOMAIN}/s")
            a.send_presence()
            b.send_presence()
            await subscribe(b, a)
            img = os.urandom(100)
            v = a["xep_0054"].make_vcard()
            v["PHOTO"]["BINVAL"] = img
            await a["xep_0054"].publish_vcard(v)
            await a.close()
            a2 = await login(self.srv, f"alice@{DOMAIN}/two")
            a2.send_presence(pstatus="again")
            p = await b.next_presence(pred=lambda p: p["from"] == f"alice@{DOMAIN}/two" and p["status"] == "again")
            self.assertEqual(photo_hash(p), hashlib.sha1(img).hexdigest())
            await a2.close()
            await b.close()
        run(go())


class VcardAioxmppTest(ServerTest):
    users = ("erin", "frank")

    def client(self, user):
        return aioxmpp_client(self.srv, f"{user}@{DOMAIN}/ax")

    def test_aioxmpp_vcard_and_photo(self):
        async def go():
            ejid, e = self.client("erin")
            fjid, f = self.client("frank")
            async with e.connected(), f.connected():
                ev = e.summon(aioxmpp.vcard.VCardService)
                fv = f.summon(aioxmpp.vcard.VCardService)
                mine = await ev.get_vcard()
                self.assertIsNone(mine.get_photo_data())
                img = os.urandom(2048)
                card = aioxmpp.vcard.xso.VCard()
                card.set_photo_data("image/png", img)
                await ev.set_vcard(card)
                got = await fv.get_vcard(ejid.bare())
                self.assertEqual(got.get_photo_data(), img)
                self.assertEqual(got.get_photo_mime_type(), "image/png")
                # erin's own presence, echoed to her by the server, carries the hash
                seen = asyncio.get_running_loop().create_future()

                def on_presence(p):
                    if p.from_ == ejid and p.xep0153_x is not None and not seen.done():
                        seen.set_result(p.xep0153_x.photo)
                e.summon(aioxmpp.dispatcher.SimplePresenceDispatcher).register_callback(
                    aioxmpp.PresenceType.AVAILABLE, None, on_presence)
                e.presence = aioxmpp.PresenceState(True, aioxmpp.PresenceShow.AWAY)
                self.assertEqual(await asyncio.wait_for(seen, 5), hashlib.sha1(img).hexdigest())
                with self.assertRaises(aioxmpp.errors.XMPPAuthError) as err:
                    await fv.set_vcard(aioxmpp.vcard.xso.VCard(), jid=ejid.bare())
                self.assertEqual(err.exception.condition, aioxmpp.ErrorCondition.FORBIDDEN)
        asyncio.run(go())


def vcard_of_len(n):
    """A vCard whose XML, as the server writes it, is exactly n bytes."""
    head, tail = "<vCard xmlns='vcard-temp'><FN>", "</FN></vCard>"
    return head + "x" * (n - len(head) - len(tail)) + tail


class VcardLimitTest(ServerTest):
    users = ("alice",)
    server_options = {"limits.max_doc_bytes": 1024}

    def test_size_cap_n_and_n_plus_1(self):
        r = RawStream(self.srv.port).login("alice", "pw", "raw")
        self.assertEqual(len(vcard_of_len(1024)), 1024)
        ok = raw_iq(r, vcard_of_len(1024), "n")
        self.assertIn("type='result'", ok)
        bad = raw_iq(r, vcard_of_len(1025), "n1")
        self.assertIn("type='error'", bad)
        self.assertRegex(bad, r"<error type='modify'><not-acceptable ")
        # the refused one changed nothing
        got = raw_iq(r, "<vCard xmlns='vcard-temp'/>", "g", typ="get")
        fn = re.search(r"<FN>(x*)</FN>", got)
        self.assertIsNotNone(fn, got)
        self.assertEqual(len(vcard_of_len(1024)), len("<vCard xmlns='vcard-temp'><FN></FN></vCard>") + len(fn.group(1)))
        r.close()


class VcardFloodTest(ServerTest):
    users = ("alice", "bob")
    server_options = {"limits.rate_bytes": 0, "limits.rate_stanzas": 0}

    def test_flood_of_sets_answered_server_responsive(self):
        """300 vCard sets with a 4 KB photo each, pipelined: every one answered, the last
        one is what is stored, another user's ping is answered at once; the server's CPU
        for the whole flood is printed."""
        n = 300
        imgs = [os.urandom(4096) for _ in range(n)]
        r = RawStream(self.srv.port).login("alice", "pw", "raw")
        with open(f"/proc/{self.srv.proc.pid}/stat") as f:
            before = sum(int(x) for x in f.read().split()[13:15])
        t0 = time.monotonic()
        r.buf = b""
        r.send("".join(f"<iq type='set' id='f{i}'><vCard xmlns='vcard-temp'><PHOTO><BINVAL>"
                       f"{base64.b64encode(img).decode()}</BINVAL></PHOTO></vCard></iq>" for i, img in enumerate(imgs)))
        text = r.recv_until(rf"id='f{n - 1}'", timeout=60)
        elapsed = time.monotonic() - t0
        self.assertEqual(len(re.findall(r"type='result'", text)), n, text[-500:])
        with open(f"/proc/{self.srv.proc.pid}/stat") as f:
            cpu = (sum(int(x) for x in f.read().split()[13:15]) - before) / os.sysconf("SC_CLK_TCK")
        print(f"\n{n} vCard sets of 4 KB photos: {elapsed:.2f} s, server CPU {cpu:.2f} s")

        async def ping():
            b = await login(self.srv, f"bob@{DOMAIN}/s")
            rtt = await b["xep_0199"].ping(jid=DOMAIN, timeout=5)
            r2 = await b["xep_0054"].get_vcard(JID(f"alice@{DOMAIN}"))
            self.assertEqual(r2["vcard_temp"]["PHOTO"]["BINVAL"], imgs[-1])
            await b.close()
            return rtt
        self.assertLess(run(ping()), 1.0)
        r.close()


if __name__ == "__main__":
    unittest.main()
