"""XEP-0313 Message Archive Management (urn:xmpp:mam:2) for one-to-one messages, with
XEP-0359 stanza ids (router/mod_mam.c): both sides archived, each in its own account's
archive, once per message whatever the number of resources; the recipient's copy carries
<stanza-id by=account/> (a forged one is removed, origin-id kept), offline messages too;
queries with the form fields and RSM paging both ways, exact ids; preferences; the page
cap; bad input; retention by count. Everything on SQLite and on Redis.

Three independent clients: raw XML over a socket (every id and attribute checked exactly),
slixmpp's xep_0313 / xep_0059 plugins (its RSM iterator pages through the archive), and
aioxmpp (no MAM module of its own: its RSM, forms, forwarding and stanza-id XSOs with a
small MAM query XSO below) paging both ways.

The archive writer (one thread per router, group commits within server.mam_commit_ms):
a query finds what was just sent however long the window, a clean stop commits what is
still queued, and a row reaches the store within the window with no query to force it
(MamWriterTest).

The store going away while messages flow (MamStoreOutageTest): Redis stopped (or frozen
with SIGSTOP, so that writes already sent are applied after their replies were given up)
and brought back; every message of the outage is then in both archives exactly once, in
order, through the writer thread and without it; beyond server.mam_retry_bytes rows are
dropped, counted and logged once."""
import asyncio
import os
import re
import signal
import socket
import sqlite3
import time
import unittest
import xml.etree.ElementTree as ET

import aioxmpp
import aioxmpp.forms
import aioxmpp.misc
import aioxmpp.ping
import aioxmpp.rsm.xso as rsm_xso
import aioxmpp.xso as xso

from harness import DOMAIN, Client, RawStream, Redis, Server, ServerTest, aioxmpp_client, free_port, run
from test_faults import wait_log
from test_metrics import scrape, val

MAM = "urn:xmpp:mam:2"
SID = "urn:xmpp:sid:0"
RSM = "http://jabber.org/protocol/rsm"
FWD = "urn:xmpp:forward:0"
C = "jabber:client"
Q = "{%s}" % MAM


def J(u):
    return f"{u}@{DOMAIN}"


# aioxmpp 0.13 has no XEP-0313 module: the query, its <fin/> and the <result/> of a
# message, as XSOs over aioxmpp's own RSM (XEP-0059), data form and forwarding ones.
@aioxmpp.IQ.as_payload_class
class AioMamQuery(xso.XSO):
    TAG = (MAM, "query")
    queryid = xso.Attr("queryid", default=None)
    form = xso.Child([aioxmpp.forms.Data])
    rsm = xso.Child([rsm_xso.ResultSetMetadata])


@aioxmpp.IQ.as_payload_class
class AioMamFin(xso.XSO):
    TAG = (MAM, "fin")
    complete = xso.Attr("complete", type_=xso.Bool(), default=False)
    rsm = xso.Child([rsm_xso.ResultSetMetadata])


class AioMamResult(xso.XSO):
    TAG = (MAM, "result")
    queryid = xso.Attr("queryid", default=None)
    id_ = xso.Attr("id")
    forwarded = xso.Child([aioxmpp.misc.Forwarded])


aioxmpp.Message.xep0313_result = xso.Child([AioMamResult])


def parse(text):
    """Top-level stanzas of a piece of stream text, as elements (jabber:client)."""
    return list(ET.fromstring(f"<r xmlns='{C}'>{text}</r>"))


class Raw:
    """A logged-in raw stream that sends stanzas and reads until a given IQ answer."""

    def __init__(self, srv, user, res="r", presence=True):
        self.user = user
        self.s = RawStream(srv.port).login(user, "pw", res)
        self.s.buf = b""
        self.seen = 0  # characters of buf already parsed into stanzas
        self.n = 0
        self.pending = []  # messages read while waiting for something else
        if presence:
            self.s.send("<presence/>")

    def iq(self, body, type_="set", to=None):
        self.n += 1
        iid = f"i{self.n}"
        to_attr = f" to='{to}'" if to else ""
        self.s.send(f"<iq type='{type_}' id='{iid}'{to_attr}>{body}</iq>")
        self.s.recv_until(rf"<iq[^>]*\bid=['\"]{iid}['\"][^>]*(/>|>.*?</iq>)", timeout=10)
        stanzas = self.take()
        for k, st in enumerate(stanzas):
            if st.tag == f"{{{C}}}iq" and st.get("id") == iid:
                rest = stanzas[k + 1:]
                self.pending += [m for m in stanzas[:k] + rest
                                 if m.tag == f"{{{C}}}message" and m.find(f"{Q}result") is None]
                return stanzas[:k], st, rest
        raise AssertionError("no answer")

    def take(self):
        """Every complete stanza read since the last call."""
        text = self.s.buf.decode(errors="replace")
        els, end = [], self.seen
        while True:
            m = re.compile(r"<(message|presence|iq)\b").search(text, end)
            if not m:
                break
            name = m.group(1)
            gt = text.find(">", m.start())
            if gt < 0:
                break
            if text[gt - 1] == "/":
                stop = gt + 1
            else:
                depth, pos, stop = 0, m.start(), -1
                rx = re.compile(rf"<(/?){name}\b[^>]*?(/?)>")
                for t in rx.finditer(text, pos):
                    if t.group(1):
                        depth -= 1
                    elif not t.group(2):
                        depth += 1
                    if depth == 0:
                        stop = t.end()
                        break
                if stop < 0:
                    break
            els.append(text[m.start():stop])
            end = stop
        self.seen = end
        return parse("".join(els))

    def messages(self, n, timeout=10):
        """The next n messages (other stanzas skipped)."""
        got = self.pending
        end = time.monotonic() + timeout
        while len(got) < n:
            got += [m for m in self.take() if m.tag == f"{{{C}}}message"]
            if len(got) >= n:
                break
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(got)} messages of {n}; got {self.s.buf[-1500:]!r}")
            self.s.sock.settimeout(left)
            try:
                chunk = self.s.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            if not chunk:
                raise AssertionError("connection closed")
            self.s.buf += chunk
        self.pending = got[n:]
        return got[:n]

    def send(self, to, body=None, extra="", mid=None, type_="chat"):
        b = f"<body>{body}</body>" if body is not None else ""
        i = f" id='{mid}'" if mid else ""
        self.s.send(f"<message to='{to}' type='{type_}'{i}>{b}{extra}</message>")

    def ping(self):
        """A round trip to the account's shard: what was sent before is handled."""
        self.iq("<ping xmlns='urn:xmpp:ping'/>", "get")

    def query(self, fields=None, rsm="", extra="", qid="q"):
        """A MAM query: (results [(id, inner message)], fin element or None, iq)."""
        form = ""
        if fields is not None:
            fs = "".join(
                f"<field var='{k}'>" + "".join(f"<value>{x}</value>" for x in (v if isinstance(v, list) else [v]))
                + "</field>" for k, v in fields)
            form = f"<x xmlns='jabber:x:data' type='submit'>{fs}</x>"
        set_ = f"<set xmlns='{RSM}'>{rsm}</set>" if rsm else ""
        before, iq, _ = self.iq(f"<query xmlns='{MAM}' queryid='{qid}'>{form}{set_}{extra}</query>")
        results = []
        for m in before:
            r = m.find(f"{Q}result")
            if r is None:
                continue
            assert r.get("queryid") == qid, ET.tostring(m)
            assert m.get("from") == J(self.user), ET.tostring(m)
            fw = r.find(f"{{{FWD}}}forwarded")
            assert fw.find("{urn:xmpp:delay}delay").get("stamp"), ET.tostring(m)
            results.append((r.get("id"), fw.find(f"{{{C}}}message")))
        return results, iq.find(f"{Q}fin"), iq

    def close(self):
        self.s.close()


def body(m):
    b = m.find(f"{{{C}}}body")
    return b.text if b is not None else None


def stanza_ids(m):
    return [(s.get("by"), s.get("id")) for s in m.findall(f"{{{SID}}}stanza-id")]


def fin_ids(fin):
    s = fin.find(f"{{{RSM}}}set")
    f, l = s.find(f"{{{RSM}}}first"), s.find(f"{{{RSM}}}last")
    return (f.text if f is not None else None, l.text if l is not None else None)


def error_of(iq):
    assert iq.get("type") == "error", ET.tostring(iq)
    e = iq.find(f"{{{C}}}error")
    return [c.tag.split("}")[1] for c in e if c.tag.startswith("{urn:ietf:params:xml:ns:xmpp-stanzas}")][0]


USERS = [f"u{i}" for i in range(1, 31)]


class MamCore:
    """The cases, run against one back-end (the subclasses say which)."""

    def fill(self, a, b, n, tag):
        """a sends b n chat messages; returns the ids b's archive gave them (what b received)."""
        for i in range(n):
            a.send(J(b.user), f"{tag}{i}", mid=f"{tag}{i}")
        got = b.messages(n)
        self.assertEqual([body(m) for m in got], [f"{tag}{i}" for i in range(n)])
        ids = []
        for m in got:
            sids = stanza_ids(m)
            self.assertEqual(len(sids), 1, ET.tostring(m))
            self.assertEqual(sids[0][0], J(b.user))
            ids.append(sids[0][1])
        self.assertEqual(len(set(ids)), n)
        return ids

    def test_archive_both_sides_with_stanza_ids(self):
        a, b = Raw(self.srv, "u1"), Raw(self.srv, "u2")
        try:
            b.ping()
            a.send(J("u2"), "one", mid="m1")
            a.send(J("u2"), None, extra="<active xmlns='http://jabber.org/protocol/chatstates'/>")  # no body
            a.send(J("u2"), "headline", type_="headline")
            a.send(J("u2"), "not stored", extra="<no-store xmlns='urn:xmpp:hints'/>")
            a.send(J("u2"), "two", mid="m2", type_="normal")
            got = b.messages(5)
            with_sid = [m for m in got if stanza_ids(m)]
            self.assertEqual([body(m) for m in with_sid], ["one", "two"])
            delivered = [stanza_ids(m)[0][1] for m in with_sid]
            res, fin, _ = b.query()
            self.assertEqual([r[0] for r in res], delivered, "the archive's ids are the delivered stanza-ids")
            self.assertEqual([body(m) for _, m in res], ["one", "two"])
            self.assertEqual(res[0][1].get("from"), J("u1") + "/r")
            self.assertEqual(res[0][1].get("to"), J("u2"))
            self.assertEqual(res[0][1].get("id"), "m1")
            self.assertEqual(stanza_ids(res[0][1]), [(J("u2"), delivered[0])])
            self.assertEqual(fin.get("complete"), "true")
            self.assertEqual(fin_ids(fin), (delivered[0], delivered[1]))
            # the sender's own archive, with its own ids
            res, fin, _ = a.query()
            self.assertEqual([body(m) for _, m in res], ["one", "two"])
            self.assertEqual(res[1][1].get("to"), J("u2"))
            self.assertTrue(all(r[0] not in delivered for r in res), "a separate archive, its own ids")
        finally:
            a.close()
            b.close()

    def test_two_resources_archived_once(self):
        a = Raw(self.srv, "u3")
        b1, b2 = Raw(self.srv, "u4", "one"), Raw(self.srv, "u4", "two")
        try:
            b1.ping()
            b2.ping()
            a.send(J("u4"), "to both")
            m1, m2 = b1.messages(1)[0], b2.messages(1)[0]
            self.assertEqual(stanza_ids(m1), stanza_ids(m2), "one archive entry, one id")
            res, fin, _ = b1.query()
            self.assertEqual([(r[0], body(m)) for r, m in [(x, x[1]) for x in res]],
                             [(stanza_ids(m1)[0][1], "to both")])
        finally:
            for c in (a, b1, b2):
                c.close()

    def test_paging_both_ways_exact_ids(self):
        a, b = Raw(self.srv, "u5"), Raw(self.srv, "u6")
        try:
            b.ping()
            ids = self.fill(a, b, 10, "p")
            # forward, 3 at a time
            seen, after = [], None
            for page in range(4):
                rsm = "<max>3</max>" + (f"<after>{after}</after>" if after else "")
                res, fin, _ = b.query(rsm=rsm)
                got = [r[0] for r in res]
                self.assertEqual(got, ids[3 * page:3 * page + 3])
                self.assertEqual(fin.get("complete"), "true" if page == 3 else None, page)
                if got:
                    self.assertEqual(fin_ids(fin), (got[0], got[-1]))
                seen += got
                after = got[-1] if got else None
            self.assertEqual(seen, ids)
            # backward from the end: an empty <before/> is the last page
            res, fin, _ = b.query(rsm="<max>3</max><before/>")
            self.assertEqual([r[0] for r in res], ids[7:10])
            self.assertIsNone(fin.get("complete"))
            self.assertEqual(fin_ids(fin), (ids[7], ids[9]))
            res, fin, _ = b.query(rsm=f"<max>3</max><before>{ids[7]}</before>")
            self.assertEqual([r[0] for r in res], ids[4:7])
            self.assertIsNone(fin.get("complete"))
            res, fin, _ = b.query(rsm=f"<max>3</max><before>{ids[1]}</before>")
            self.assertEqual([r[0] for r in res], ids[0:1])
            self.assertEqual(fin.get("complete"), "true")
            # both bounds
            res, fin, _ = b.query(rsm=f"<max>10</max><after>{ids[2]}</after><before>{ids[6]}</before>")
            self.assertEqual([r[0] for r in res], ids[3:6])
        finally:
            a.close()
            b.close()

    def test_filters(self):
        a, c, b = Raw(self.srv, "u7", "ra"), Raw(self.srv, "u8", "rc"), Raw(self.srv, "u9")
        try:
            b.ping()
            a.send(J("u9"), "a0")
            b.messages(1)
            c.send(J("u9"), "c0")
            b.messages(1)
            a.send(J("u9"), "a1")
            b.messages(1)
            c.send(J("u9"), "c1")
            b.messages(1)
            all_ = b.query()[0]
            ids = [r[0] for r in all_]
            self.assertEqual([body(m) for _, m in all_], ["a0", "c0", "a1", "c1"])
            ft = ("FORM_TYPE", MAM)
            res = b.query([ft, ("with", J("u7"))])[0]
            self.assertEqual([body(m) for _, m in res], ["a0", "a1"])
            res = b.query([ft, ("with", J("u7") + "/ra")])[0]
            self.assertEqual([body(m) for _, m in res], ["a0", "a1"], "a full JID: that resource")
            res = b.query([ft, ("with", J("u7") + "/other")])[0]
            self.assertEqual(res, [])
            res = b.query([("with", J("U8"))])[0]  # normalised like any JID
            self.assertEqual([body(m) for _, m in res], ["c0", "c1"])
            res = b.query([("after-id", ids[0]), ("before-id", ids[3])])[0]
            self.assertEqual([r[0] for r in res], ids[1:3])
            res = b.query([("with", J("u8")), ("after-id", ids[1])])[0]
            self.assertEqual([body(m) for _, m in res], ["c1"])
            res = b.query([("ids", [ids[3], ids[0], "nothere"])])[0]
            self.assertEqual([r[0] for r in res], [ids[0], ids[3]])
            # time: start and end are inclusive; a start in the future gives nothing
            res = b.query([("start", "2999-01-01T00:00:00Z")])[0]
            self.assertEqual(res, [])
            res = b.query([("end", "2000-01-01T00:00:00.5+01:00")])[0]
            self.assertEqual(res, [])
            res = b.query([("start", "2000-01-01T00:00:00Z"), ("end", "2999-01-01T00:00:00Z")])[0]
            self.assertEqual([r[0] for r in res], ids)
            # errors
            self.assertEqual(error_of(b.query([("nonsense", "x")])[2]), "bad-request")
            self.assertEqual(error_of(b.query([("FORM_TYPE", "urn:xmpp:mam:1")])[2]), "bad-request")
            self.assertEqual(error_of(b.query([("start", "yesterday")])[2]), "bad-request")
            self.assertEqual(error_of(b.query([("with", "@@")])[2]), "bad-request")
            self.assertEqual(error_of(b.query([("after-id", "nothere")])[2]), "item-not-found")
            self.assertEqual(error_of(b.query([("before-id", "1")])[2]), "item-not-found")
            # another account's archive is not ours to read
            _, iq, _ = a.iq(f"<query xmlns='{MAM}'/>", to=J("u9"))
            self.assertEqual(error_of(iq), "service-unavailable")
        finally:
            for x in (a, b, c):
                x.close()

    def test_forged_stanza_id_removed_origin_id_kept(self):
        a, b = Raw(self.srv, "u10"), Raw(self.srv, "u11")
        try:
            b.ping()
            forged = (f"<stanza-id xmlns='{SID}' by='{J('u11')}' id='forged'/>"
                      f"<stanza-id xmlns='{SID}' by='U11@{DOMAIN.upper()}' id='forged-upper'/>"
                      f"<stanza-id xmlns='{SID}' id='forged-no-by'/>"
                      f"<stanza-id xmlns='{SID}' by='{J('u10')}' id='forged-too'/>"
                      f"<stanza-id xmlns='{SID}' by='elsewhere.example' id='kept'/>"
                      f"<origin-id xmlns='{SID}' id='origin-1'/>")
            a.send(J("u11"), "hi", extra=forged)
            m = b.messages(1)[0]
            sids = stanza_ids(m)
            self.assertEqual([x for x in sids if x[1].startswith("forged")], [])
            self.assertEqual([s for s in sids if s[0] == J("u11")].__len__(), 1)
            self.assertIn(("elsewhere.example", "kept"), sids)
            self.assertEqual(m.find(f"{{{SID}}}origin-id").get("id"), "origin-1")
            res = b.query()[0]
            self.assertNotIn("forged", [x[1] for x in stanza_ids(res[0][1])])
            res = a.query()[0]
            self.assertEqual([s for s in stanza_ids(res[0][1]) if s[1].startswith("forged")], [])
        finally:
            a.close()
            b.close()

    def test_offline_then_archive_no_duplicates(self):
        a = Raw(self.srv, "u12")
        try:
            for i in range(3):
                a.send(J("u13"), f"off{i}")
            a.ping()
            b = Raw(self.srv, "u13")  # initial presence: the offline messages come
            got = b.messages(3)
            self.assertEqual([body(m) for m in got], ["off0", "off1", "off2"])
            offline_ids = [stanza_ids(m)[0][1] for m in got]
            self.assertTrue(all(m.find("{urn:xmpp:delay}delay") is not None for m in got))
            res, fin, _ = b.query()
            self.assertEqual([r[0] for r in res], offline_ids, "one archive entry each, the same ids")
            self.assertEqual(fin.get("complete"), "true")
            b.close()
        finally:
            a.close()

    def test_preferences(self):
        a, c, b = Raw(self.srv, "u14"), Raw(self.srv, "u15"), Raw(self.srv, "u16")
        try:
            _, iq, _ = b.iq(f"<prefs xmlns='{MAM}'/>", "get")
            self.assertEqual(iq.find(f"{Q}prefs").get("default"), "always")
            _, iq, _ = b.iq(f"<prefs xmlns='{MAM}' default='never'><always><jid>{J('u15')}</jid></always>"
                            f"<never/></prefs>")
            p = iq.find(f"{Q}prefs")
            self.assertEqual(p.get("default"), "never")
            self.assertEqual([j.text for j in p.find(f"{Q}always")], [J("u15")])
            a.send(J("u16"), "from a: never")
            c.send(J("u16"), "from c: always")
            b.messages(2)
            self.assertEqual([body(m) for _, m in b.query()[0]], ["from c: always"])
            # the sender's preferences rule the sender's archive
            self.assertEqual([body(m) for _, m in a.query()[0]], ["from a: never"])
            # back to always, u14 never
            _, iq, _ = b.iq(f"<prefs xmlns='{MAM}' default='always'><never><jid>{J('u14')}</jid></never></prefs>")
            self.assertEqual(iq.get("type"), "result")
            a.send(J("u16"), "a again")
            c.send(J("u16"), "c again")
            b.messages(2)
            self.assertEqual([body(m) for _, m in b.query()[0]], ["from c: always", "c again"])
            # roster: only contacts in the roster
            _, iq, _ = b.iq(f"<prefs xmlns='{MAM}' default='roster'/>")
            self.assertEqual(iq.get("type"), "result")
            b.iq(f"<query xmlns='jabber:iq:roster'><item jid='{J('u15')}'/></query>")
            a.send(J("u16"), "a stranger")
            c.send(J("u16"), "c contact")
            b.messages(2)
            self.assertEqual([body(m) for _, m in b.query()[0]][-1], "c contact")
            self.assertNotIn("a stranger", [body(m) for _, m in b.query()[0]])
            # bad input
            _, iq, _ = b.iq(f"<prefs xmlns='{MAM}' default='sometimes'/>")
            self.assertEqual(error_of(iq), "bad-request")
            _, iq, _ = b.iq(f"<prefs xmlns='{MAM}' default='always'><always><jid>@@</jid></always></prefs>")
            self.assertEqual(error_of(iq), "jid-malformed")
        finally:
            for x in (a, b, c):
                x.close()

    def test_page_cap_and_bogus_rsm(self):
        a, b = Raw(self.srv, "u17"), Raw(self.srv, "u18")
        try:
            b.ping()
            ids = self.fill(a, b, self.CAP + 2, "c")
            res, fin, _ = b.query(rsm=f"<max>{self.CAP + 1}</max>")
            self.assertEqual([r[0] for r in res], ids[:self.CAP], "N+1 asked, the cap given")
            self.assertIsNone(fin.get("complete"))
            res, fin, _ = b.query(rsm=f"<max>{self.CAP}</max>")
            self.assertEqual(len(res), self.CAP)
            res, fin, _ = b.query()
            self.assertEqual(len(res), min(self.CAP, 50), "no <max/>: the default page")
            res, fin, _ = b.query(rsm="<max>0</max>")
            self.assertEqual(res, [])
            for bogus in ("<max>x</max>", "<max>-1</max>", "<max></max>", "<max>99999999999</max>", "<what/>"):
                self.assertEqual(error_of(b.query(rsm=bogus)[2]), "bad-request", bogus)
            self.assertEqual(error_of(b.query(rsm="<after>nothere</after>")[2]), "item-not-found")
            self.assertEqual(error_of(b.query(rsm="<before>nothere</before>")[2]), "item-not-found")
            self.assertEqual(error_of(b.query(rsm="<index>3</index>")[2]), "feature-not-implemented")
            self.assertEqual(error_of(b.query([("ids", ids[:1] * (self.CAP + 1))])[2]), "bad-request")
            # the form of §4.1.5
            _, iq, _ = b.iq(f"<query xmlns='{MAM}'/>", "get")
            vars_ = [f.get("var") for f in iq.find(f"{Q}query").find("{jabber:x:data}x")]
            self.assertEqual(vars_, ["FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"])
        finally:
            a.close()
            b.close()

    def test_disco_announces_mam(self):
        b = Raw(self.srv, "u19")
        try:
            _, iq, _ = b.iq("<query xmlns='http://jabber.org/protocol/disco#info'/>", "get", to=J("u19"))
            feats = {f.get("var") for f in iq.find("{http://jabber.org/protocol/disco#info}query")
                     if f.get("var")}
            self.assertTrue({MAM, MAM + "#extended", SID} <= feats, feats)
        finally:
            b.close()

    def test_aioxmpp_archive_paged_both_ways(self):
        """aioxmpp: 9 messages archived; forward pages of 4 (RSM <after/>) and backward
        ones (<before/> empty, then <before>first</before>) give exactly the delivered
        stanza-ids, bodies and senders, with first/last and complete as XEP-0059 says."""
        async def go():
            ja, a = aioxmpp_client(self.srv, J("u22") + "/aio")
            jb, b = aioxmpp_client(self.srv, J("u23") + "/aio")
            inbox, results = asyncio.Queue(), {}

            def catch(msg):
                r = msg.xep0313_result
                if r is not None:
                    results.setdefault(r.queryid, []).append(r)
                elif msg.body:
                    inbox.put_nowait(msg)
                return msg

            b.stream.app_inbound_message_filter.register(catch, 0)
            qids = iter(range(1000))

            async def page(rsm):
                form = aioxmpp.forms.Data(aioxmpp.forms.DataType.SUBMIT)
                form.fields.append(aioxmpp.forms.Field(type_=aioxmpp.forms.FieldType.HIDDEN, var="FORM_TYPE",
                                                       values=[MAM]))
                form.fields.append(aioxmpp.forms.Field(var="with", values=[J("u22")]))
                q = AioMamQuery()
                q.queryid = f"aio{next(qids)}"
                q.form, q.rsm = form, rsm
                fin = await b.send(aioxmpp.IQ(type_=aioxmpp.IQType.SET, payload=q))
                self.assertIsInstance(fin, AioMamFin)
                got = results.pop(q.queryid, [])
                for r in got:
                    fw = r.forwarded
                    self.assertIsNotNone(fw.delay)
                    self.assertEqual(fw.stanza.from_, ja)
                    self.assertEqual([s.id_ for s in fw.stanza.xep0359_stanza_ids], [r.id_])
                ids = [r.id_ for r in got]
                if ids:
                    self.assertEqual((fin.rsm.first.value, fin.rsm.last.value), (ids[0], ids[-1]))
                return ids, [r.forwarded.stanza.body.any() for r in got], fin.complete

            async with a.connected(), b.connected():
                await b.send(aioxmpp.IQ(type_=aioxmpp.IQType.GET, to=jb.bare(),
                                        payload=aioxmpp.ping.Ping()))
                for i in range(9):
                    m = aioxmpp.Message(type_=aioxmpp.MessageType.CHAT, to=jb.bare())
                    m.body[None] = f"x{i}"
                    await a.send(m)
                got = [await asyncio.wait_for(inbox.get(), 10) for _ in range(9)]
                self.assertEqual([m.body.any() for m in got], [f"x{i}" for i in range(9)])
                delivered = []
                for m in got:
                    sids = m.xep0359_stanza_ids
                    self.assertEqual([(s.by, len(s.id_) > 0) for s in sids], [(jb.bare(), True)])
                    delivered.append(sids[0].id_)
                bodies = [f"x{i}" for i in range(9)]
                # forward, 4 at a time
                rsm, seen = rsm_xso.ResultSetMetadata.limit(4), []
                for k in range(3):
                    ids, texts, complete = await page(rsm)
                    self.assertEqual(ids, delivered[4 * k:4 * k + 4], k)
                    self.assertEqual(texts, bodies[4 * k:4 * k + 4], k)
                    self.assertEqual(complete, k == 2, k)
                    seen += ids
                    rsm = rsm_xso.ResultSetMetadata.limit(4)
                    rsm.after = rsm_xso.After()
                    rsm.after.value = ids[-1]
                self.assertEqual(seen, delivered)
                # backward from the end
                ids, texts, complete = await page(rsm_xso.ResultSetMetadata.last_page(4))
                self.assertEqual((ids, texts, complete), (delivered[5:], bodies[5:], False))
                back = rsm_xso.ResultSetMetadata.limit(4)
                back.before = rsm_xso.Before()
                back.before.value = ids[0]
                ids, texts, complete = await page(back)
                self.assertEqual((ids, texts, complete), (delivered[1:5], bodies[1:5], False))
                back.before.value = ids[0]
                ids, texts, complete = await page(back)
                self.assertEqual((ids, texts, complete), (delivered[:1], bodies[:1], True))
        run(go())

    def test_slixmpp_archive_and_rsm_iterator(self):
        async def go():
            a = Client(self.srv, J("u20") + "/s", "pw")
            b = Client(self.srv, J("u21") + "/s", "pw")
            for c in (a, b):
                c.register_plugin("xep_0059")
                c.register_plugin("xep_0359")
                c.register_plugin("xep_0313")
                self.assertTrue(await c.login())
                c.send_presence()
            await b.plugin["xep_0199"].ping(jid=J("u21"), timeout=5)
            for i in range(7):
                a.send_message(mto=J("u21"), mbody=f"s{i}", mtype="chat")
            got = [await b.next_message(pred=lambda m: m["body"]) for _ in range(7)]
            delivered = [m["stanza_id"]["id"] for m in got]
            self.assertTrue(all(m["stanza_id"]["by"] == J("u21") for m in got))
            bodies, rids = [], []
            async for r in b.plugin["xep_0313"].iterate(with_jid=J("u20"), rsm={"max": 3}):
                rids.append(r["mam_result"]["id"])
                bodies.append(r["mam_result"]["forwarded"]["stanza"]["body"])
            self.assertEqual(bodies, [f"s{i}" for i in range(7)])
            self.assertEqual(rids, delivered)
            # newest first, paging backwards
            bodies = []
            async for r in b.plugin["xep_0313"].iterate(with_jid=J("u20"), rsm={"max": 2}, reverse=True):
                bodies.append(r["mam_result"]["forwarded"]["stanza"]["body"])
            self.assertEqual(bodies, [f"s{i}" for i in reversed(range(7))])
            iq = await b.plugin["xep_0313"].retrieve(with_jid=J("u20"), rsm={"max": 4})
            self.assertEqual([m["mam_result"]["forwarded"]["stanza"]["body"] for m in iq["mam"]["results"]],
                             [f"s{i}" for i in range(4)])
            self.assertFalse(iq["mam_fin"]["complete"])
            sent = []
            async for r in a.plugin["xep_0313"].iterate(with_jid=J("u21")):
                sent.append(r["mam_result"]["forwarded"]["stanza"]["body"])
            self.assertEqual(sent, [f"s{i}" for i in range(7)])
            await a.close()
            await b.close()
        run(go())


class MamSqliteTest(MamCore, ServerTest):
    users = USERS
    CAP = 5
    server_options = {"limits.mam_max_page": "5"}


class MamRedisTest(MamCore, unittest.TestCase):
    CAP = 5

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        cls.redis.start()
        cls.srv = Server(**{"storage.backend": "redis", "storage.redis": f"127.0.0.1:{cls.redis.port}",
                            "limits.mam_max_page": "5"})
        for u in USERS:
            cls.srv.adduser(J(u), "pw")
        cls.srv.start()

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.srv.stop() == 0, cls.srv.log_text()
        finally:
            cls.redis.stop()
            cls.redis.cleanup()

    def tearDown(self):
        self.assertTrue(self.srv.alive(), self.srv.log_text())


class MamDefaultPageTest(ServerTest):
    """No cap option: a page is 50 unless asked for more, and at most 250."""
    users = ("a", "b")

    def test_default_and_cap(self):
        a, b = Raw(self.srv, "a"), Raw(self.srv, "b")
        try:
            b.ping()
            for i in range(260):
                a.send(J("b"), f"m{i}")
            b.messages(260)
            self.assertEqual(len(b.query()[0]), 50)
            self.assertEqual(len(b.query(rsm="<max>251</max>")[0]), 250)
            self.assertEqual(len(b.query(rsm="<max>60</max>")[0]), 60)
        finally:
            a.close()
            b.close()


class MamRetentionTest(ServerTest):
    users = ("a", "b")
    server_options = {"limits.mam_max_messages": "5"}

    def test_by_count(self):
        a, b = Raw(self.srv, "a"), Raw(self.srv, "b")
        try:
            b.ping()
            for i in range(12):
                a.send(J("b"), f"m{i}")
            got = b.messages(12)
            ids = [stanza_ids(m)[0][1] for m in got]
            res = b.query()[0]
            self.assertEqual([r[0] for r in res], ids[7:], "the newest five kept")
            self.assertEqual([body(m) for _, m in a.query()[0]], [f"m{i}" for i in range(7, 12)])
            self.assertEqual(error_of(b.query(rsm=f"<after>{ids[0]}</after>")[2]), "item-not-found")
        finally:
            a.close()
            b.close()


class MamWriterTest(ServerTest):
    """The archive writer with a window (5 s) far longer than each step here takes: a
    query still finds what was just sent, a clean stop commits what is queued, and with
    no query the rows reach the store within the window."""
    users = ("a", "b", "c", "d", "e", "f")
    server_options = {"server.mam_commit_ms": "5000", "limits.rate_bytes": "0", "limits.rate_stanzas": "0"}

    def sql(self, query, *args):
        """The rows of a query on the server's database (its own connection: what is committed)."""
        db = sqlite3.connect(os.path.join(self.srv.dir, "xmppd.db"), timeout=10)
        try:
            return db.execute(query, args).fetchall()
        finally:
            db.close()

    def test_queue_bound_ends_a_group_early(self):
        """40 messages of 200 KB to an offline account (archived on both sides, stored
        offline): 16 MB of rows within one window, so the queue's bound (16 MiB; a group
        ends at half of it) commits before the window ends; each message archived once."""
        a = Raw(self.srv, "e")
        try:
            big = "y" * 200_000
            for i in range(40):
                a.send(J("f"), f"{i}:{big}")
            a.ping()
            b = Raw(self.srv, "f", presence=False)  # no initial presence: no offline flood
            try:
                res, _, _ = b.query(rsm="<max>1</max><before/>")  # the queue committed first
                self.assertEqual(len(res), 1)
                self.assertTrue(body(res[0][1]).startswith("39:"))
            finally:
                b.close()
            counts = dict(self.sql("SELECT owner, count(*) FROM mam WHERE owner IN (?, ?) GROUP BY owner",
                                   J("e"), J("f")))
            self.assertEqual(counts, {J("e"): 40, J("f"): 40}, "each message once on each side")
            self.assertIn("queued before the window's end: committed now", self.srv.log_text())
        finally:
            a.close()

    def test_query_sees_what_is_queued_and_stop_commits_it(self):
        a, b = Raw(self.srv, "c"), Raw(self.srv, "d")
        try:
            b.ping()
            for i in range(5):
                a.send(J("d"), f"w{i}")
            ids = [stanza_ids(m)[0][1] for m in b.messages(5)]
            t = time.monotonic()
            self.assertEqual([r[0] for r in b.query()[0]], ids, "queued rows committed before the query")
            self.assertLess(time.monotonic() - t, 4, "the query did not wait for the window's end")
            for i in range(5, 8):
                a.send(J("d"), f"w{i}")
            ids += [stanza_ids(m)[0][1] for m in b.messages(3)]
        finally:
            a.close()
            b.close()
        self.assertEqual(self.srv.stop(), 0, self.srv.log_text())  # well within the window
        self.srv.start()
        b = Raw(self.srv, "d")
        try:
            self.assertEqual([r[0] for r in b.query()[0]], ids, "the stop committed what was queued")
            self.assertEqual([body(m) for _, m in b.query()[0]], [f"w{i}" for i in range(8)])
        finally:
            b.close()

    def test_committed_within_the_window_without_a_query(self):
        a, b = Raw(self.srv, "a"), Raw(self.srv, "b")
        try:
            b.ping()
            a.send(J("b"), "unasked")
            b.messages(1)
            t = time.monotonic()
            n = 0
            while n < 2 and time.monotonic() - t < 5 + 10:  # both sides' rows
                n = self.sql("SELECT count(*) FROM mam m JOIN mam_msg d ON d.id = m.msg "
                             "WHERE instr(d.data, CAST('unasked' AS BLOB)) > 0")[0][0]
                if n < 2:
                    time.sleep(0.05)
            self.assertEqual(n, 2, "archived within the window")
            # the two local sides' copies are the same bytes, stored once (schema 7)
            self.assertEqual(self.sql("SELECT refs FROM mam_msg WHERE instr(data, CAST('unasked' AS BLOB)) > 0"),
                             [(2,)], "one stored copy for both archives")
            self.assertGreater(time.monotonic() - t, 1, "a group of 5 s, not a commit per batch")
        finally:
            a.close()
            b.close()


class MamStoreOutageTest(unittest.TestCase):
    """Redis unavailable for a few seconds while o1 chats with o2 (router/mod_mam.c: rows the
    store could not take are kept and written again with back-off)."""

    def start(self, **opts):
        self.redis = Redis()
        self.redis.start()
        self.addCleanup(self.redis.cleanup)
        self.addCleanup(self.redis.stop)
        self.addCleanup(self.resume_redis)
        self.mport = free_port()
        self.srv = Server(**{"storage.backend": "redis", "storage.redis": f"127.0.0.1:{self.redis.port}",
                             "metrics.listen": f"127.0.0.1:{self.mport}", **opts})
        for u in ("o1", "o2"):
            self.srv.adduser(J(u), "pw")
        self.srv.start()
        self.addCleanup(lambda: self.assertEqual(self.srv.stop(), 0, self.srv.log_text()))
        self.frozen = False

    def resume_redis(self):
        if self.frozen:
            self.redis.proc.send_signal(signal.SIGCONT)
            self.frozen = False

    def archive(self, r):
        """The bodies of r's whole archive, in the order the archive gives them."""
        res, fin, iq = r.query(rsm="<max>250</max>")
        self.assertEqual(fin.get("complete"), "true", ET.tostring(iq))
        return [body(m) for _, m in res]

    def outage(self, freeze, n=40):
        """o1 sends o2 w0-w4, then n messages with Redis down, then y0-y4 once it is back.
        Returns the two Raw streams once every archive row kept for retry was stored."""
        a, b = Raw(self.srv, "o1"), Raw(self.srv, "o2")
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        b.ping()
        for i in range(5):
            a.send(J("o2"), f"w{i}", mid=f"w{i}")
        b.messages(5)
        self.assertEqual(self.archive(b), [f"w{i}" for i in range(5)])  # committed before the outage
        if freeze:
            self.redis.proc.send_signal(signal.SIGSTOP)
            self.frozen = True
        else:
            self.redis.stop()
        for i in range(n):  # over about 2 s, as the writer commits and fails
            a.send(J("o2"), f"x{i}", mid=f"x{i}")
            time.sleep(0.05)
        self.assertEqual([body(m) for m in b.messages(n, timeout=60)], [f"x{i}" for i in range(n)])
        self.assertTrue(wait_log(self.srv, "archive: the store is unavailable", 30), self.srv.log_text())
        if freeze:
            self.resume_redis()
        else:
            self.redis.start()  # same port, same AOF
        for i in range(5):
            a.send(J("o2"), f"y{i}", mid=f"y{i}")
        b.messages(5, timeout=30)
        return a, b

    def archives_until(self, a, b, done, timeout=30):
        """Queries both archives (each query first tries the rows kept for retry again) until
        done(archive of o1, archive of o2); returns the last two."""
        end = time.monotonic() + timeout
        while True:
            got = self.archive(a), self.archive(b)
            if done(*got) or time.monotonic() > end:
                return got
            time.sleep(0.1)

    def check_whole(self, a, b, n):
        want = [f"w{i}" for i in range(5)] + [f"x{i}" for i in range(n)] + [f"y{i}" for i in range(5)]
        ga, gb = self.archives_until(a, b, lambda x, y: x == want and y == want)
        self.assertEqual(ga, want)
        self.assertEqual(gb, want)
        self.assertIn("the store is back", self.srv.log_text())
        self.assertEqual(val(scrape(self.mport), "xmppd_mam_rows_dropped_total"), 0)
        self.assertNotIn("messages dropped", self.srv.log_text())

    def test_redis_restarted_nothing_lost(self):
        self.start()
        a, b = self.outage(freeze=False)
        self.check_whole(a, b, 40)

    def test_redis_frozen_replies_lost_archived_once(self):
        # writes sent before the timeout are applied when Redis resumes: written again
        # (replay), each must still be there once
        self.start()
        a, b = self.outage(freeze=True)
        self.check_whole(a, b, 40)

    def test_without_writer_thread_nothing_lost(self):
        self.start(**{"server.mam_commit_ms": "0"})
        a, b = self.outage(freeze=False)
        self.check_whole(a, b, 40)

    def test_retry_budget_bounds_what_is_kept(self):
        # 4 KiB: a dozen rows or so (row_bytes: the row, its JIDs and the stanza)
        self.start(**{"server.mam_retry_bytes": "4096"})
        a, b = self.outage(freeze=False)
        xs = [f"x{i}" for i in range(40)]
        kept = 0
        ys = [f"y{i}" for i in range(5)]
        for got in self.archives_until(a, b, lambda x, y: x[-5:] == ys and y[-5:] == ys):
            self.assertEqual(got[:5], [f"w{i}" for i in range(5)])
            self.assertEqual(got[-5:], [f"y{i}" for i in range(5)])
            mid = got[5:-5]
            self.assertEqual(mid, xs[:len(mid)], "the oldest are kept, in order, each once")
            kept += len(mid)
        self.assertGreater(kept, 0)
        self.assertLessEqual(kept, 4096 // 100)
        self.assertEqual(val(scrape(self.mport), "xmppd_mam_rows_dropped_total"), 80 - kept)
        self.assertEqual(self.srv.log_text().count("messages dropped"), 1, self.srv.log_text())


if __name__ == "__main__":
    unittest.main()
