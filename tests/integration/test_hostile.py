"""Hostile clients: malformed and restricted XML, oversize input, protocol abuse.

Every case checks the exact RFC 6120 stream (or stanza) error the server answers with,
that the offending connection is closed when it must be, and that other users are
unharmed: two well-behaved slixmpp clients (alice and bob), logged in once per class,
must still exchange messages both ways after every test (tearDown), and the server must
still be running.
"""
import asyncio
import re
import select
import ssl
import time
import unittest
import uuid
import xml.etree.ElementTree as ET

import statistics
import threading

from harness import DOMAIN, Client, RawStream, Server, cpu_seconds, rss_kib

PASSWORD = "hostile pw"
USERS = ("alice", "bob", "carol", "mallory", "eve")
STREAMS_NS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZAS_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
MAX_STANZA = 262144  # limits.max_stanza_bytes default


def stanza_with_id(text, name, sid):
    """The first <name ... id='sid' ...> element in text, as a string, or None."""
    m = re.search(r"<%s\b[^>]*\bid='%s'[^>]*?(?:/>|>.*?</%s>)" % (name, re.escape(sid), name), text, re.S)
    return m.group(0) if m else None


def parse(stanza):
    """Parses one serialised stanza. Its default namespace (jabber:client) is inherited
    from the stream, so it is not declared on the stanza itself: ElementTree sees the
    stanza element without a namespace and its extensions with theirs."""
    return ET.fromstring(stanza)


def blast(r, data, chunk=65536, timeout=20):
    """Sends data, stopping early once the server has something to say (the stream
    error) or the connection breaks. Returns the number of bytes sent."""
    if isinstance(data, str):
        data = data.encode()
    sent = 0
    end = time.monotonic() + timeout
    sock = r.sock
    while sent < len(data) and time.monotonic() < end:
        pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
        rl, wl, _ = select.select([sock], [sock], [], 0.5)
        if rl or pending:
            break
        if not wl:
            continue
        try:
            n = sock.send(data[sent:sent + chunk])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            continue
        except (OSError, ssl.SSLError):
            break
        sent += n
    return sent




class HostileBase(unittest.TestCase):
    """One server per class, with alice and bob online for the whole class."""

    server_options = {}

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(**cls.server_options)
        for u in USERS:
            cls.srv.adduser(f"{u}@{DOMAIN}", PASSWORD)
        cls.srv.start()
        cls.loop = asyncio.new_event_loop()
        cls.alice = cls.bob = None
        cls.extra_clients = []
        try:
            cls.run_async(cls._login_pair())
        except BaseException:
            # tearDownClass does not run when setUpClass fails
            cls.loop.close()
            cls.srv.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.run_async(cls._close_pair())
        finally:
            # slixmpp leaves per-connection tasks (send queue, filters) pending
            pending = asyncio.all_tasks(cls.loop)
            for t in pending:
                t.cancel()
            cls.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            cls.loop.close()
            rc = cls.srv.stop()
            assert rc == 0, f"xmppd exited with {rc}:\n{cls.srv.log_text()[-5000:]}"

    @classmethod
    def run_async(cls, coro, timeout=60):
        return cls.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    @classmethod
    async def _login_pair(cls):
        cls.alice = Client(cls.srv, f"alice@{DOMAIN}/main", PASSWORD)
        cls.bob = Client(cls.srv, f"bob@{DOMAIN}/main", PASSWORD)
        ok = await asyncio.gather(cls.alice.login(), cls.bob.login())
        assert all(ok), "alice/bob could not log in"

    @classmethod
    async def _close_pair(cls):
        for c in (cls.alice, cls.bob):
            if c is not None:
                await c.close()

    def setUp(self):
        self.raws = []

    def client(self, jid):
        """A further slixmpp client, kept referenced until the class ends (its tasks are
        cancelled then, not garbage-collected while pending)."""
        c = Client(self.srv, jid, PASSWORD)
        type(self).extra_clients.append(c)
        return c

    def tearDown(self):
        for r in self.raws:
            r.close()
        self.assertTrue(self.srv.alive(), self.srv.log_text()[-5000:])
        try:
            self.run_async(self.chat("after " + self.id()))
        except BaseException:
            # make the next test start from working clients, then report the harm
            self.run_async(self._close_pair())
            type(self).extra_clients += [self.alice, self.bob]
            self.run_async(self._login_pair())
            raise

    # ---- helpers ---------------------------------------------------------------------

    async def chat(self, tag):
        """alice -> bob and bob -> alice; both must arrive, stamped with the sender."""
        a, b = self.alice, self.bob
        for src, dst in ((a, b), (b, a)):
            body = f"{tag} {src.boundjid.user}->{dst.boundjid.user} {uuid.uuid4().hex}"
            src.send_message(mto=dst.boundjid.full, mbody=body, mtype="chat")
            m = await dst.next_message(timeout=10, pred=lambda m, body=body: m["body"] == body)
            self.assertEqual(str(m["from"]), src.boundjid.full)

    async def in_thread(self, fn, *args):
        """Runs blocking raw-socket work while the slixmpp clients stay live."""
        return await asyncio.to_thread(fn, *args)

    def raw_plain(self):
        r = RawStream(self.srv.port)
        self.raws.append(r)
        return r

    def raw_session(self, user="mallory", resource=None):
        """A raw, authenticated, bound stream; its buffer is empty on return."""
        resource = resource or "raw-" + uuid.uuid4().hex[:8]
        r = self.raw_plain()
        r.starttls()
        r.auth_plain(user, PASSWORD)
        r.bind(resource)
        self.assertIn(f"<jid>{user}@{DOMAIN}/{resource}</jid>", r.buf.decode(errors="replace"))
        r.buf = b""
        r.jid = f"{user}@{DOMAIN}/{resource}"
        return r

    def assert_stream_error(self, r, cond, timeout=10):
        """The server sends <stream:error><cond/>...</stream:error></stream:stream> and
        closes the connection. Returns all text received since the buffer was reset."""
        closed = r.closed(timeout)
        text = r.buf.decode(errors="replace")
        self.assertRegex(text, r"<stream:error><%s xmlns='%s'/>(<text xmlns='%s'>[^<]*</text>)?</stream:error>"
                         r"</stream:stream>" % (cond, re.escape(STREAMS_NS), re.escape(STREAMS_NS)))
        self.assertEqual(text.count("<stream:error>"), 1, text[-2000:])
        self.assertTrue(closed, f"connection not closed after <{cond}/>")
        return text

    def raw_stream_error(self, payload, cond, timeout=10):
        """New raw session, send payload after bind, expect the stream error."""
        r = self.raw_session()
        blast(r, payload)
        return self.assert_stream_error(r, cond, timeout)


class MalformedXmlTest(HostileBase):
    """XML that is not well-formed, or uses what RFC 6120 §11 forbids."""

    def test_malformed_xml_while_others_chat(self):
        async def go():
            await self.chat("before")
            r = await self.in_thread(self.raw_session)
            r.send("<message><body>x</message>")
            text = await self.in_thread(self.assert_stream_error, r, "not-well-formed")
            self.assertIn(f"<not-well-formed xmlns='{STREAMS_NS}'/>", text)
            await self.chat("after")
        self.run_async(go())

    def test_billion_laughs_doctype(self):
        ents = "<!ENTITY lol 'lol'>" + "".join(
            f"<!ENTITY lol{i} '{('&lol%s;' % (i - 1 if i > 1 else '')) * 10}'>" for i in range(1, 10))
        doc = (f"<?xml version='1.0'?><!DOCTYPE lolz [{ents}]>"
               f"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
               f"to='{DOMAIN}' version='1.0'><message to='bob@{DOMAIN}'><body>&lol9;</body></message>")
        self.assertIn("&lol8;&lol8;", doc)
        r = self.raw_plain()
        r.send(doc)
        text = self.assert_stream_error(r, "restricted-xml")
        self.assertNotIn("lollol", text)
        # the stream was opened for the error (RFC 6120 §4.9.1.2)
        self.assertIn("<stream:stream", text)

    def test_quadratic_blowup_doctype(self):
        # one big entity referenced many times: refused at the DOCTYPE, nothing expanded
        big = "A" * 50000
        doc = (f"<?xml version='1.0'?><!DOCTYPE q [<!ENTITY a '{big}'>]>"
               f"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
               f"to='{DOMAIN}' version='1.0'><message><body>{'&a;' * 5000}</body></message>")
        r = self.raw_plain()
        t0 = time.monotonic()
        blast(r, doc)
        text = self.assert_stream_error(r, "restricted-xml")
        self.assertNotIn("AAAA", text)
        self.assertLess(time.monotonic() - t0, 5)

    def test_many_character_references_linear(self):
        # without a DTD the same shape is 40,000 character references in one body: legal,
        # delivered intact, and parsed in linear time (text pieces merge geometrically)
        async def go():
            r = await self.in_thread(self.raw_session)
            t0 = time.monotonic()
            r.send(f"<message to='{self.bob.boundjid.full}' type='chat'><body>{'&#x41;&amp;' * 20000}</body></message>")
            m = await self.bob.next_message(timeout=15, pred=lambda m: len(m["body"]) > 1000)
            self.assertEqual(m["body"], "A&" * 20000)
            self.assertLess(time.monotonic() - t0, 5)
        self.run_async(go())

    def test_doctype_mid_stream_after_auth(self):
        self.raw_stream_error("<!DOCTYPE x [<!ENTITY e 'boom'>]><message to='bob@localhost'><body>&e;</body></message>",
                              "restricted-xml")

    def test_undeclared_entity_in_body(self):
        self.raw_stream_error(f"<message to='bob@{DOMAIN}/main'><body>a &foo; b</body></message>",
                              "restricted-xml")

    def test_external_entity_in_attribute(self):
        self.raw_stream_error(f"<message to='bob@{DOMAIN}/main' id='&xxe;'><body>x</body></message>",
                              "restricted-xml")

    def test_comment_and_processing_instruction(self):
        self.raw_stream_error("<message><!-- hidden --><body>x</body></message>", "restricted-xml")
        self.raw_stream_error("<message><?evil x?><body>x</body></message>", "restricted-xml")

    def test_invalid_utf8(self):
        self.raw_stream_error(b"<message to='bob@localhost/main'><body>\xff\xfe</body></message>",
                              "not-well-formed")

    def test_overlong_utf8_and_surrogates(self):
        # overlong '/' and an encoded UTF-16 surrogate are not UTF-8 (RFC 3629)
        self.raw_stream_error(b"<message to='bob@localhost/main'><body>\xc0\xaf</body></message>",
                              "not-well-formed")
        self.raw_stream_error(b"<message to='bob@localhost/main'><body>\xed\xa0\x80</body></message>",
                              "not-well-formed")

    def test_nul_byte(self):
        self.raw_stream_error(b"<message to='bob@localhost/main'><body>a\x00b</body></message>",
                              "not-well-formed")

    def test_mismatched_and_duplicate_attributes(self):
        self.raw_stream_error("<message><body>x</body></presence>", "not-well-formed")
        self.raw_stream_error("<message id='1' id='2'/>", "not-well-formed")

    def test_nothing_delivered_from_a_broken_stanza(self):
        # the part before the error must not reach bob either
        async def go():
            r = await self.in_thread(self.raw_session)
            marker = uuid.uuid4().hex
            r.send(f"<message to='{self.bob.boundjid.full}' type='chat'><body>{marker}".encode()
                   + b"\xff</body></message>")
            await self.in_thread(self.assert_stream_error, r, "not-well-formed")
            with self.assertRaises(asyncio.TimeoutError):
                await self.bob.next_message(timeout=1, pred=lambda m: marker in m["body"])
        self.run_async(go())


class LimitsTest(HostileBase):
    """Size, depth and attribute limits (limits.* defaults)."""

    def test_oversize_stanza_raw(self):
        body = "a" * (300 * 1024)
        self.raw_stream_error(f"<message to='bob@{DOMAIN}/main'><body>{body}</body></message>",
                              "policy-violation")

    def test_oversize_stanza_slixmpp(self):
        async def go():
            await self.chat("before")
            big = self.client(f"carol@{DOMAIN}/big")
            self.assertTrue(await big.login())
            gone = asyncio.get_running_loop().create_future()
            big.add_event_handler("disconnected", lambda e: gone.done() or gone.set_result(True))
            marker = uuid.uuid4().hex
            big.send_message(mto=self.bob.boundjid.full, mbody=marker + "b" * (300 * 1024), mtype="chat")
            err = await asyncio.wait_for(big.stream_errors.get(), 15)
            self.assertEqual(err["condition"], "policy-violation")
            await asyncio.wait_for(gone, 10)
            with self.assertRaises(asyncio.TimeoutError):
                await self.bob.next_message(timeout=0.5, pred=lambda m: m["body"].startswith(marker))
            await self.chat("after")
        self.run_async(go())

    def test_stanza_under_limit_delivered_intact(self):
        async def go():
            unit = "0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ \u263a &\n"
            body = unit * (200 * 1024 // len(unit.encode()))
            self.assertGreater(len(body.encode()), 199 * 1024)
            # escaped on the wire (&amp;) this is still under the 256 KiB limit
            self.assertLess(len(body.encode()) + body.count("&") * 4 + 500, MAX_STANZA - 4096)
            # a sender of its own, so that a wrongful disconnect does not harm alice
            tx = self.client(f"carol@{DOMAIN}/under")
            try:
                self.assertTrue(await tx.login())
                tx.send_message(mto=self.bob.boundjid.full, mbody=body, mtype="chat")
                got = asyncio.ensure_future(self.bob.next_message(timeout=15, pred=lambda m: len(m["body"]) > 1000))
                err = asyncio.ensure_future(tx.stream_errors.get())
                await asyncio.wait({got, err}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
                if err.done():
                    got.cancel()
                    self.fail(f"a {len(body.encode())}-byte body was refused: the sender got "
                              f"<{err.result()['condition']}/> ({err.result()['text']})")
                err.cancel()
                m = await got
                self.assertEqual(len(m["body"]), len(body))
                self.assertEqual(m["body"], body)
                self.assertEqual(str(m["from"]), tx.boundjid.full)
            finally:
                await tx.close()
        self.run_async(go())

    def test_raw_stanza_under_limit_delivered(self):
        # 200 KiB of plain text from a raw client to bob, in one write
        async def go():
            r = await self.in_thread(self.raw_session)
            body = ("x" * 1023 + "\n") * 200
            r.send(f"<message to='{self.bob.boundjid.full}' type='chat'><body>{body}</body></message>")
            r.send(f"<iq type='get' id='pp' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
            # the sender is still connected: it gets the ping answer, and no stream error
            text = await self.in_thread(r.recv_until, r"<iq[^>]*id='pp'|</stream:stream>")
            self.assertNotIn("<stream:error>", text)
            m = await self.bob.next_message(timeout=15, pred=lambda m: len(m["body"]) > 1000)
            self.assertEqual(m["body"], body)
            self.assertEqual(str(m["from"]), r.jid)
        self.run_async(go())

    def test_deep_nesting(self):
        self.raw_stream_error("<message to='bob@localhost/main'>" + "<a>" * 10000, "policy-violation")

    def test_too_many_attributes(self):
        attrs = " ".join(f"a{i}='v'" for i in range(100))
        self.raw_stream_error(f"<message to='bob@localhost/main' {attrs}><body>x</body></message>",
                              "policy-violation")

    def test_too_many_attributes_on_child(self):
        attrs = " ".join(f"a{i}='v'" for i in range(100))
        self.raw_stream_error(f"<message to='bob@localhost/main'><x xmlns='urn:x' {attrs}/></message>",
                              "policy-violation")

    def test_huge_attribute_value_bounded_memory(self):
        pid = self.srv.proc.pid
        before = rss_kib(pid)
        r = self.raw_session()
        payload = b"<message to='bob@localhost/main' a='" + b"x" * (10 * 1024 * 1024) + b"'/>"
        sent = blast(r, payload)
        during = rss_kib(pid)
        self.assert_stream_error(r, "policy-violation")
        after = rss_kib(pid)
        # refused long before the whole value arrived
        self.assertLess(sent, len(payload), "the server read all 10 MB")
        for v in (during, after):
            self.assertLess(v, 200 * 1024, f"RSS {v} KiB (before: {before} KiB)")
        self.assertLess(after - before, 64 * 1024, f"RSS grew from {before} to {after} KiB")

    def test_many_small_stanzas_is_fine(self):
        # the limit is per stanza, not per stream
        async def go():
            r = await self.in_thread(self.raw_session)
            chunk = "".join(f"<message to='{self.bob.boundjid.full}' id='n{i}'><body>{'y' * 4000} {i}</body></message>"
                            for i in range(100))  # ~400 KB in total
            r.send(chunk)
            for i in range(100):
                await self.bob.next_message(timeout=10, pred=lambda m, i=i: m["body"].endswith(f" {i}"))
        self.run_async(go())


MAX_ATTRS = 64  # limits.max_attrs default: attributes plus namespace declarations
MAX_DEPTH = 64  # limits.max_depth default
HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='%s' version='1.0'" % DOMAIN)


def attrs(nattrs, ndecls, first=0):
    """nattrs attributes and ndecls namespace declarations, every name distinct."""
    return "".join(f" a{i}='v'" for i in range(first, first + nattrs)) + \
        "".join(f" xmlns:p{i}='urn:p{i}'" for i in range(first, first + ndecls))


# Hostile input of about `size` bytes, each shape at or far beyond a limit: what it
# costs the server must stay linear in its bytes.
def header_of_declarations(size=240000):
    return HEADER + "".join(f" xmlns:p{i}='u'" for i in range(size // 16)) + ">"


def element_of_attributes(size=240000):
    return HEADER + "><message" + "".join(f" a{i}=''" for i in range(size // 10)) + "/>"


def nesting_with_declarations_at_the_limits(size=240000):
    """MAX_DEPTH - 2 elements each with MAX_ATTRS declarations, then 4-byte children:
    libxml2 looks every child's namespace up among all the declarations in scope."""
    levels = "".join("<x" + attrs(0, MAX_ATTRS, first=d * MAX_ATTRS) + ">" for d in range(MAX_DEPTH - 2))
    body = "<a/>" * ((size - len(levels)) // 4)
    return HEADER + "><message>" + levels + body + "</x>" * (MAX_DEPTH - 2) + "</message>"


def nesting_at_the_depth_limit(size=240000):
    one = "<a>" * (MAX_DEPTH - 1) + "</a>" * (MAX_DEPTH - 1)
    return HEADER + "><message>" + one * (size // len(one)) + "</message>"


def many_children(size=240000):
    return HEADER + "><message>" + "<a/>" * (size // 4) + "</message>"


def prefixed_attributes_deep(size=240000):
    """A prefix declared on the stream header, used by attributes 62 elements deep."""
    levels = "".join("<x" + attrs(MAX_ATTRS, 0) + ">" for _ in range(MAX_DEPTH - 2))
    one = "<a" + "".join(f" e:b{i}=''" for i in range(MAX_ATTRS)) + "/>"
    body = one * ((size - len(levels)) // len(one))
    return HEADER + " xmlns:e='urn:e'><message>" + levels + body + "</x>" * (MAX_DEPTH - 2) + "</message>"


HOSTILE_SHAPES = (header_of_declarations, element_of_attributes, nesting_with_declarations_at_the_limits,
                  nesting_at_the_depth_limit, many_children, prefixed_attributes_deep)


def send_hostile(port, payload, timeout=20):
    """One unauthenticated connection sends all of payload (whatever the server answers
    meanwhile, e.g. its stream features) and waits for the server to close. Returns the
    bytes sent."""
    r = RawStream(port, timeout=timeout)
    sent = 0
    try:
        while sent < len(payload):
            sent += r.sock.send(payload[sent:sent + 65536])
        r.closed(timeout)
    except OSError:
        pass  # the server refused and closed before the end
    finally:
        r.close()
    return sent


class LimitBoundaryTest(HostileBase):
    """limits.max_attrs at N (accepted) and N + 1 (refused): attributes, namespace
    declarations and their mix, on a stanza, a child and the stream header (issue 13)."""

    def deliver(self, r, stanza_open, marker):
        r.send(f"{stanza_open}<body>{marker}</body></message>")
        return self.bob.next_message(timeout=10, pred=lambda m: m["body"] == marker)

    def test_attributes_and_declarations_at_the_limit(self):
        async def go():
            to = f" to='{self.bob.boundjid.full}'"
            for nattrs, ndecls in ((MAX_ATTRS - 1, 0), (0, MAX_ATTRS - 1), (30, MAX_ATTRS - 31)):
                with self.subTest(attributes=nattrs + 1, declarations=ndecls):
                    r = await self.in_thread(self.raw_session)
                    marker = uuid.uuid4().hex
                    # 'to' is the one more attribute: N in all
                    await self.deliver(r, "<message" + to + attrs(nattrs, ndecls) + ">", marker)
                    marker = uuid.uuid4().hex
                    await self.deliver(r, "<message" + to + "><x xmlns='urn:x'" + attrs(nattrs, ndecls) + "/>",
                                       marker)
                    for extra in (" b='1'", " xmlns:q='urn:q'"):
                        r = await self.in_thread(self.raw_session)
                        r.send("<message" + to + attrs(nattrs, ndecls) + extra + "><body>x</body></message>")
                        await self.in_thread(self.assert_stream_error, r, "policy-violation")
        self.run_async(go())

    def test_stream_header_at_the_limit(self):
        # HEADER has xmlns, xmlns:stream, to and version: 4
        for nattrs, ndecls in ((MAX_ATTRS - 4, 0), (0, MAX_ATTRS - 4), (20, MAX_ATTRS - 24)):
            with self.subTest(attributes=nattrs, declarations=ndecls):
                r = self.raw_plain()
                r.send(HEADER + attrs(nattrs, ndecls) + ">")
                r.recv_until(r"</stream:features>")
                for extra in (" b='1'", " xmlns:q='urn:q'"):
                    r = self.raw_plain()
                    r.send(HEADER + attrs(nattrs, ndecls) + extra + ">")
                    self.assert_stream_error(r, "policy-violation")


class AlgorithmicCostTest(HostileBase):
    """What a client sends costs the server CPU linear in its bytes (issue 9): a stream
    header of 15,000 namespace declarations cost 0.38 s of CPU before authentication,
    and four such connections made another user's ping take 461 ms instead of 0.4 ms."""

    # Inputs of 1 MB (the stanza limit raised to let them in, shaping off): a quadratic
    # cost per byte grows with the input, a linear one does not. Linear parsing costs up
    # to 0.6 us a byte here (libxml2 looking namespaces up among max_depth x max_attrs
    # declarations in scope); the quadratic paths cost 0.9-1.9 us a byte at 240 KB and
    # 3.3-7.3 at 1 MB. (Around 2 MB libxml2 gives up on a start tag by itself.)
    SIZE = 1000000
    MAX_CPU_PER_BYTE = 1.5e-6
    server_options = {"limits.max_stanza_bytes": str(SIZE + 65536), "limits.rate_bytes": "0"}

    def test_cpu_per_input_byte_is_bounded(self):
        pid = self.srv.proc.pid
        for shape in HOSTILE_SHAPES:
            payload = shape(self.SIZE).encode()
            with self.subTest(shape=shape.__name__):
                best = None
                for _ in range(3):  # best of three: another process's burst is not ours
                    before = cpu_seconds(pid)
                    send_hostile(self.srv.port, payload)
                    used = cpu_seconds(pid) - before
                    best = used if best is None else min(best, used)
                per_byte = best / len(payload)  # of all of it: refusing early is the point
                print(f"\n  {shape.__name__}: {len(payload)} bytes, {best * 1000:.0f} ms of server CPU, "
                      f"{per_byte * 1e9:.0f} ns a byte", end="")
                self.assertLess(per_byte, self.MAX_CPU_PER_BYTE,
                                f"{shape.__name__}: {best:.3f} s of CPU for {len(payload)} bytes")

    def test_ping_stays_fast_during_hostile_headers(self):
        r = self.raw_session()

        def ping_rtts(n):
            rtts = []
            for i in range(n):
                t0 = time.monotonic()
                r.send(f"<iq type='get' id='ping{i}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
                r.recv_until(r"<iq[^>]*id='ping%d'" % i, timeout=10)
                rtts.append(time.monotonic() - t0)
                time.sleep(0.02)
            return rtts

        quiet = ping_rtts(20)
        stop = threading.Event()
        payload = header_of_declarations(self.SIZE).encode()

        def attacker():
            while not stop.is_set():
                send_hostile(self.srv.port, payload, timeout=5)

        threads = [threading.Thread(target=attacker, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            busy = ping_rtts(150)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        p90 = sorted(busy)[int(len(busy) * 0.9)]
        print(f"\n  ping: quiet median {statistics.median(quiet) * 1000:.1f} ms; under attack median "
              f"{statistics.median(busy) * 1000:.1f} ms, 90th percentile {p90 * 1000:.1f} ms, "
              f"max {max(busy) * 1000:.1f} ms", end="")
        self.assertLess(statistics.median(busy), 0.05)
        self.assertLess(max(busy), 0.25, "a ping waited while the server parsed a hostile header")


class ProtocolAbuseTest(HostileBase):
    """Stream and stanza rules of RFC 6120 broken on purpose."""

    # ---- order of negotiation --------------------------------------------------------

    def test_stanzas_before_authentication(self):
        for st in (f"<message to='bob@{DOMAIN}'><body>x</body></message>", "<presence/>",
                   f"<iq type='get' id='i' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"):
            r = self.raw_plain()
            r.open_stream()
            r.recv_until("</stream:features>")
            r.send(st)
            self.assert_stream_error(r, "not-authorized")
        # also under TLS, before SASL
        r = self.raw_plain()
        r.starttls()
        r.open_stream()
        r.recv_until("</stream:features>")
        r.buf = b""
        r.send(f"<message to='bob@{DOMAIN}/main'><body>x</body></message>")
        self.assert_stream_error(r, "not-authorized")

    def test_stanza_after_auth_before_bind(self):
        async def go():
            def raw():
                r = self.raw_plain()
                r.starttls()
                r.auth_plain("mallory", PASSWORD)
                r.buf = b""
                r.send(f"<message to='{self.bob.boundjid.full}' type='chat'><body>unbound</body></message>")
                self.assert_stream_error(r, "not-authorized")
            await self.in_thread(raw)
            with self.assertRaises(asyncio.TimeoutError):
                await self.bob.next_message(timeout=0.5, pred=lambda m: m["body"] == "unbound")
        self.run_async(go())

    # ---- binding -----------------------------------------------------------------------

    def test_bind_twice_on_one_stream(self):
        r = self.raw_session()
        r.send("<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
               "<resource>second</resource></bind></iq>")
        st = parse(stanza_with_id(r.recv_until(r"<iq[^>]*id='b2'.*?</iq>"), "iq", "b2"))
        self.assertEqual(st.get("type"), "error")
        err = st.find("error")
        self.assertEqual(err.get("type"), "cancel")
        self.assertIsNotNone(err.find(f"{{{STANZAS_NS}}}not-allowed"), ET.tostring(st))
        # the stream is still usable, under the first resource
        r.buf = b""
        r.send(f"<iq type='get' id='p' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
        st = parse(stanza_with_id(r.recv_until(r"<iq[^>]*id='p'"), "iq", "p"))
        self.assertEqual(st.get("type"), "result")
        self.assertEqual(st.get("to"), r.jid)

    def test_same_full_jid_twice_raw(self):
        async def go():
            first = await self.in_thread(self.raw_session, "mallory", "dup")
            second = await self.in_thread(self.raw_session, "mallory", "dup")
            await self.in_thread(self.assert_stream_error, first, "conflict")
            # the second session works: it receives bob's message and can send
            body = "to the new one " + uuid.uuid4().hex
            self.bob.send_message(mto=f"mallory@{DOMAIN}/dup", mbody=body, mtype="chat")
            text = await self.in_thread(second.recv_until, re.escape(body) + ".*?</message>", 10)
            self.assertIn(f"from='{self.bob.boundjid.full}'", text)
            second.send(f"<message to='{self.bob.boundjid.full}' type='chat'><body>back {body}</body></message>")
            m = await self.bob.next_message(timeout=10, pred=lambda m: m["body"] == "back " + body)
            self.assertEqual(str(m["from"]), f"mallory@{DOMAIN}/dup")
        self.run_async(go())

    def test_same_full_jid_twice_slixmpp(self):
        async def go():
            c1 = self.client(f"eve@{DOMAIN}/same")
            self.assertTrue(await c1.login())
            gone = asyncio.get_running_loop().create_future()
            c1.add_event_handler("disconnected", lambda e: gone.done() or gone.set_result(True))
            c2 = self.client(f"eve@{DOMAIN}/same")
            self.assertTrue(await c2.login())
            err = await asyncio.wait_for(c1.stream_errors.get(), 10)
            self.assertEqual(err["condition"], "conflict")
            await asyncio.wait_for(gone, 10)
            body = "hello second " + uuid.uuid4().hex
            self.alice.send_message(mto=f"eve@{DOMAIN}/same", mbody=body, mtype="chat")
            m = await c2.next_message(timeout=10, pred=lambda m: m["body"] == body)
            self.assertEqual(str(m["from"]), self.alice.boundjid.full)
            c2.send_message(mto=self.alice.boundjid.full, mbody="re " + body, mtype="chat")
            await self.alice.next_message(timeout=10, pred=lambda m: m["body"] == "re " + body)
            await c2.close()
        self.run_async(go())

    # ---- addresses ---------------------------------------------------------------------

    def test_from_spoofing(self):
        async def go():
            r = await self.in_thread(self.raw_session)
            r.send(f"<message from='bob@{DOMAIN}/x' to='carol@{DOMAIN}'><body>spoof</body></message>")
            await self.in_thread(self.assert_stream_error, r, "invalid-from")
            # another resource of one's own account is not one's own full JID either
            r = await self.in_thread(self.raw_session)
            r.send(f"<message from='mallory@{DOMAIN}/other' to='{self.bob.boundjid.full}'><body>spoof2</body></message>")
            await self.in_thread(self.assert_stream_error, r, "invalid-from")
            with self.assertRaises(asyncio.TimeoutError):
                await self.bob.next_message(timeout=0.5, pred=lambda m: m["body"].startswith("spoof"))
        self.run_async(go())

    def test_from_own_bare_and_full_jid_accepted_and_stamped(self):
        async def go():
            r = await self.in_thread(self.raw_session)
            for i, frm in enumerate((f"mallory@{DOMAIN}", r.jid, f"MALLORY@{DOMAIN.upper()}")):
                body = f"own from {i} {uuid.uuid4().hex}"
                r.send(f"<message from='{frm}' to='{self.bob.boundjid.full}' type='chat'><body>{body}</body></message>")
                m = await self.bob.next_message(timeout=10, pred=lambda m, body=body: m["body"] == body)
                self.assertEqual(str(m["from"]), r.jid, frm)
        self.run_async(go())

    def test_message_to_unknown_user(self):
        r = self.raw_session()
        r.send(f"<message to='nobody@{DOMAIN}' id='u1' type='chat'><body>anyone?</body></message>")
        st = parse(stanza_with_id(r.recv_until(r"<message[^>]*id='u1'.*?</message>"), "message", "u1"))
        self.assertEqual(st.get("type"), "error")
        self.assertEqual(st.get("from"), f"nobody@{DOMAIN}")
        self.assertEqual(st.get("to"), r.jid)
        err = st.find("error")
        self.assertEqual(err.get("type"), "cancel")
        self.assertIsNotNone(err.find(f"{{{STANZAS_NS}}}service-unavailable"), ET.tostring(st))

    def test_message_to_other_domain(self):
        r = self.raw_session()
        r.send("<message to='someone@example.org' id='u2' type='chat'><body>far away</body></message>")
        st = parse(stanza_with_id(r.recv_until(r"<message[^>]*id='u2'.*?</message>"), "message", "u2"))
        self.assertEqual(st.get("type"), "error")
        self.assertEqual(st.get("from"), "someone@example.org")
        self.assertIsNotNone(st.find(f"error/{{{STANZAS_NS}}}remote-server-not-found"), ET.tostring(st))

    # ---- the server's own IQs ------------------------------------------------------------

    def server_iq(self, r, sid, child):
        r.buf = b""
        r.send(f"<iq type='get' id='{sid}' to='{DOMAIN}'>{child}</iq>")
        st = parse(stanza_with_id(r.recv_until(r"<iq[^>]*id='%s'[^>]*?(/>|>.*?</iq>)" % sid), "iq", sid))
        self.assertEqual(st.get("from"), DOMAIN)
        self.assertEqual(st.get("to"), r.jid)
        return st

    def test_server_iqs(self):
        r = self.raw_session()
        st = self.server_iq(r, "unk", "<query xmlns='urn:example:unknown'/>")
        self.assertEqual(st.get("type"), "error")
        self.assertIsNotNone(st.find(f"error/{{{STANZAS_NS}}}service-unavailable"), ET.tostring(st))
        self.assertEqual(st.find("error").get("type"), "cancel")

        st = self.server_iq(r, "ping", "<ping xmlns='urn:xmpp:ping'/>")
        self.assertEqual(st.get("type"), "result")

        st = self.server_iq(r, "disco", "<query xmlns='http://jabber.org/protocol/disco#info'/>")
        self.assertEqual(st.get("type"), "result")
        ns = "{http://jabber.org/protocol/disco#info}"
        ids = st.findall(f"{ns}query/{ns}identity")
        self.assertIn("server", [i.get("category") for i in ids])
        feats = [f.get("var") for f in st.findall(f"{ns}query/{ns}feature")]
        self.assertIn("urn:xmpp:ping", feats)
        self.assertIn("jabber:iq:version", feats)

        st = self.server_iq(r, "ver", "<query xmlns='jabber:iq:version'/>")
        self.assertEqual(st.get("type"), "result")
        self.assertEqual(st.findtext("{jabber:iq:version}query/{jabber:iq:version}name"), "xmppd")
        self.assertTrue(st.findtext("{jabber:iq:version}query/{jabber:iq:version}version"))

    def test_server_iqs_slixmpp(self):
        async def go():
            info = await self.alice["xep_0030"].get_info(jid=DOMAIN, timeout=10)
            cats = [i[0] for i in info["disco_info"]["identities"]]
            self.assertIn("server", cats)
            ver = await self.alice["xep_0092"].get_version(DOMAIN, timeout=10)
            self.assertEqual(ver["software_version"]["name"], "xmppd")
            # raises IqError / IqTimeout unless the server answers with a result
            await self.alice["xep_0199"].ping(DOMAIN, timeout=10)
        self.run_async(go())

    # ---- closing -----------------------------------------------------------------------

    def test_client_closes_stream(self):
        r = self.raw_session()
        r.send("</stream:stream>")
        closed = r.closed(10)
        text = r.buf.decode(errors="replace")
        self.assertIn("</stream:stream>", text)
        self.assertNotIn("<stream:error>", text)
        self.assertTrue(closed)

    # ---- re-escaping -------------------------------------------------------------------

    def test_reescaping_on_delivery(self):
        rx = self.raw_session("carol", "rx")
        tx = self.raw_session("mallory", "tx")
        tx.send(f"<message to='{rx.jid}' id='esc1' type='chat' data=\"&quot;'&amp;&lt;\">"
                "<body>&lt;inject/&gt; &amp;amp; \"q\" 'a' &#x3C;b&#62; \u263a&#13;</body>"
                "<x xmlns='urn:test' attr='&lt;tag a=&apos;1&apos;&gt;'><y>&lt;/message&gt;</y></x></message>")
        text = rx.recv_until(r"<message[^>]*id='esc1'.*?</message>")
        raw = stanza_with_id(text, "message", "esc1")
        self.assertNotIn("<inject/>", raw)
        self.assertNotIn("<b>", raw)
        self.assertNotIn("<tag", raw)
        self.assertIn("&lt;inject/&gt;", raw)
        st = parse(raw)  # well-formed
        self.assertEqual(st.get("from"), tx.jid)
        self.assertEqual(st.get("to"), rx.jid)
        self.assertEqual(st.get("data"), "\"'&<")
        self.assertEqual(st.findtext("body"), "<inject/> &amp; \"q\" 'a' <b> \u263a\r")
        x = st.find("{urn:test}x")
        self.assertEqual(x.get("attr"), "<tag a='1'>")
        self.assertEqual(x.findtext("{urn:test}y"), "</message>")
        # exactly one stanza arrived: nothing was injected
        self.assertEqual(text.count("<message"), 1)

    def test_xml_namespace_element_delivered_well_formed(self):
        # found in review: the delivery path wrote <foo xmlns='http://www.w3.org/XML/1998/namespace'>,
        # which parsers refuse: one stanza could break the recipient's stream
        rx = self.raw_session("carol", "rx2")
        tx = self.raw_session("mallory", "tx2")
        tx.send(f"<message to='{rx.jid}' id='xns' type='chat'><xml:foo>hi<bar xml:lang='en'/></xml:foo>"
                "<body>b</body></message>")
        text = rx.recv_until(r"<message[^>]*id='xns'.*?</message>")
        raw = stanza_with_id(text, "message", "xns")
        self.assertIn("<xml:foo>hi", raw)
        st = parse(raw)  # well-formed: xml: is always bound
        self.assertEqual(st.find("{http://www.w3.org/XML/1998/namespace}foo").text, "hi")
        # the recipient's stream is still usable
        tx.send(f"<message to='{rx.jid}' id='after' type='chat'><body>still</body></message>")
        rx.recv_until(r"id='after'.*?still")


if __name__ == "__main__":
    unittest.main()
