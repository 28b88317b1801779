"""Virtual hosting (docs/operations.md "Virtual hosting"): several domains in one server,
each with its own certificate chosen by SNI, its own accounts, modules and limits; the
domain list reloaded on SIGHUP. Real TLS (certificates made here with openssl), slixmpp
and aioxmpp as clients, raw streams for the refusals."""
import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import unittest

import slixmpp

from harness import (DOMAIN, XMPPCTL, XMPPD, Client, RawStream, Server, aioxmpp_client, insecure_context,
                     run)

ALPHA, BETA, GAMMA = "alpha.test", "beta.test", "gamma.test"


def make_cert(directory, name, san=None):
    """A self-signed certificate for name (CN and subjectAltName DNS:san or name)."""
    cert = os.path.join(directory, f"{name}.pem")
    key = os.path.join(directory, f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", f"/CN={san or name}",
                    "-addext", f"subjectAltName=DNS:{san or name}", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def domain_section(name, cert=None, key=None, **opts):
    lines = [f"[domain {name}]"]
    if cert:
        lines += [f"certificate = {cert}", f"key = {key}"]
    lines += [f"{k} = {v}" for k, v in opts.items()]
    return "\n".join(lines) + "\n\n"


def write_conf(srv, sections):
    """srv's configuration with the [domain] sections replaced by sections."""
    with open(srv.conf) as f:
        base = f.read().split("[domain ", 1)[0]
    with open(srv.conf, "w") as f:
        f.write(base + "".join(sections))


def peer_cert_der(port, sni, alpn=None):
    """The DER certificate the server shows on its direct-TLS port for SNI sni (None:
    no SNI)."""
    ctx = insecure_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            return t.getpeercert(binary_form=True)


def der_of(pem_file):
    with open(pem_file) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def cert_names(der):
    """The CN and the DNS subjectAltNames of a DER certificate (openssl's reading)."""
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject", "-ext", "subjectAltName"],
                         input=der, capture_output=True, check=True).stdout.decode()
    cn = re.search(r"CN\s*=\s*([^\s,/]+)", out).group(1)
    return cn, set(re.findall(r"DNS:([^\s,]+)", out))


def wait_log(srv, pattern, timeout=10, after=0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = srv.log_text()[after:]
        if re.search(pattern, text):
            return text
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the log:\n" + srv.log_text()[-3000:])


async def slix_login(srv, jid, password, direct_tls=False):
    c = Client(srv, jid, password)
    ok = await c.login(direct_tls=direct_tls)
    return c, ok


def rich_server():
    """localhost (the default) + alpha (own certificate, at most 2 resources) + beta (own
    certificate, 'version', 'ping' and 'offline' switched off)."""
    srv = Server()
    alpha = make_cert(srv.dir, ALPHA)
    beta = make_cert(srv.dir, BETA)
    write_conf(srv, [domain_section(ALPHA, *alpha, max_resources=2),
                     domain_section(BETA, *beta, disable="version, ping, offline")])
    return srv, alpha, beta


class VirtualHostTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv, cls.alpha, cls.beta = rich_server()
        for jid, pw in ((f"alice@{ALPHA}", "alpha-pw"), (f"alice@{BETA}", "beta-pw"),
                        (f"bob@{BETA}", "pw"), (f"erin@{BETA}", "pw"), (f"carol@{ALPHA}", "pw"), (f"dave@{DOMAIN}", "pw")):
            cls.srv.adduser(jid, pw)
        cls.srv.start()

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0, cls.srv.log_text()

    def tearDown(self):
        self.assertTrue(self.srv.alive(), self.srv.log_text())

    def test_sni_selects_each_domains_certificate(self):
        for sni, pem in ((ALPHA, self.alpha[0]), (BETA, self.beta[0]), (DOMAIN, self.srv.cert),
                         (None, self.srv.cert), (ALPHA.upper(), self.alpha[0])):
            der = peer_cert_der(self.srv.tls_port, sni, alpn=["xmpp-client"])
            self.assertEqual(der, der_of(pem), f"SNI {sni}")
        cn, sans = cert_names(peer_cert_der(self.srv.tls_port, BETA))
        self.assertEqual((cn, sans), (BETA, {BETA}))
        # a client that verifies: the certificate it gets names the domain it asked for
        for name, pem in ((ALPHA, self.alpha[0]), (BETA, self.beta[0])):
            ctx = ssl.create_default_context(cafile=pem)
            with socket.create_connection(("127.0.0.1", self.srv.tls_port), timeout=5) as s:
                with ctx.wrap_socket(s, server_hostname=name) as t:
                    self.assertEqual(t.getpeercert()["subjectAltName"], (("DNS", name),))
        # STARTTLS too
        r = RawStream(self.srv.port)
        r.open_stream(to=BETA)
        r.recv_until(r"</stream:features>")
        r.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        r.recv_until(r"<proceed")
        r.sock = insecure_context().wrap_socket(r.sock, server_hostname=BETA)
        self.assertEqual(r.sock.getpeercert(binary_form=True), der_of(self.beta[0]))
        r.close()

    def test_channel_binding_follows_the_sni_certificate(self):
        """RFC 5929 §4.1: tls-server-end-point is the hash of the certificate the client
        got, i.e. the domain's own one chosen by SNI, not the default one."""
        from test_sasl2 import PlusStream
        beta_endpoint = hashlib.sha256(der_of(self.beta[0])).digest()
        default_endpoint = hashlib.sha256(der_of(self.srv.cert)).digest()
        self.assertNotEqual(beta_endpoint, default_endpoint)
        for cb, want in ((beta_endpoint, "<success"), (default_endpoint, "<failure")):
            q = PlusStream(self.srv.port, domain=BETA)
            try:
                self.assertEqual(q.endpoint, beta_endpoint, "the certificate shown is beta's")
                self.assertIn("SCRAM-SHA-256-PLUS", q.feats)
                t = q.scram("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", cb, password="beta-pw")
            finally:
                q.close()
            self.assertIn(want, t, cb.hex())

    def test_unknown_sni_gets_unrecognized_name(self):
        with self.assertRaises(ssl.SSLError) as cm:
            peer_cert_der(self.srv.tls_port, "nowhere.test")
        self.assertIn("UNRECOGNIZED_NAME", str(cm.exception).upper())
        # and the server goes on serving the names it knows
        self.assertEqual(peer_cert_der(self.srv.tls_port, ALPHA), der_of(self.alpha[0]))

    def test_unknown_domain_gets_host_unknown(self):
        r = RawStream(self.srv.port)
        r.open_stream(to="nowhere.test")
        text = r.recv_until(r"</stream:stream>")
        self.assertIn("<host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>", text)
        self.assertTrue(r.closed())
        # a hosted domain is served on the same port
        for name in (ALPHA, BETA, DOMAIN):
            r = RawStream(self.srv.port)
            r.open_stream(to=name)
            text = r.recv_until(r"</stream:features>")
            self.assertIn(f"from='{name}'", text)
            self.assertNotIn("host-unknown", text)
            r.close()
        # the stream restarted after STARTTLS may not name another domain
        r = RawStream(self.srv.port)
        r.open_stream(to=ALPHA)
        r.recv_until(r"</stream:features>")
        r.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        r.recv_until(r"<proceed")
        r.sock = insecure_context().wrap_socket(r.sock, server_hostname=ALPHA)
        r.buf = b""
        r.open_stream(to=BETA)
        self.assertIn("<host-unknown", r.recv_until(r"</stream:stream>"))
        r.close()

    def test_same_localpart_on_two_domains_are_two_accounts(self):
        async def go():
            a, ok = await slix_login(self.srv, f"alice@{ALPHA}", "alpha-pw")
            self.assertTrue(ok)
            self.assertEqual(a.boundjid.bare, f"alice@{ALPHA}")
            # the other domain's password is not this account's, and the reverse
            x, ok = await slix_login(self.srv, f"alice@{ALPHA}", "beta-pw")
            self.assertFalse(ok)
            x.disconnect()
            x, ok = await slix_login(self.srv, f"alice@{BETA}", "alpha-pw")
            self.assertFalse(ok)
            x.disconnect()
            # aioxmpp on the other domain, with its own password
            jid, c = aioxmpp_client(self.srv, f"alice@{BETA}/ax", "beta-pw")
            async with c.connected():
                self.assertEqual(str(c.local_jid.bare()), f"alice@{BETA}")
                # rosters are the account's own: alpha's alice adds a contact, beta's does not see it
                a.send_presence()
                await a.get_roster()
                a.update_roster(f"carol@{ALPHA}", name="Carol")
                await asyncio.sleep(0.3)
                import aioxmpp.roster
                rs = c.summon(aioxmpp.roster.RosterClient)
                await asyncio.sleep(0.3)
                self.assertEqual(list(rs.items), [])
            a.disconnect()
        run(go())

    def test_messages_across_domains(self):
        async def go():
            a, ok = await slix_login(self.srv, f"carol@{ALPHA}", "pw")
            self.assertTrue(ok)
            a.send_presence()
            import aioxmpp
            jid, c = aioxmpp_client(self.srv, f"bob@{BETA}/ax", "pw")
            got = asyncio.Queue()
            async with c.connected():
                c.stream.register_message_callback(aioxmpp.MessageType.CHAT, None,
                                                   lambda m: got.put_nowait(m))
                a.send_message(mto=f"bob@{BETA}", mbody="alpha to beta", mtype="chat")
                m = await asyncio.wait_for(got.get(), 5)
                self.assertEqual(m.body.any(), "alpha to beta")
                self.assertEqual(str(m.from_.bare()), f"carol@{ALPHA}")
                reply = aioxmpp.Message(type_=aioxmpp.MessageType.CHAT, to=aioxmpp.JID.fromstr(f"carol@{ALPHA}"))
                reply.body[None] = "beta to alpha"
                await c.send(reply)
                m = await a.next_message(pred=lambda m: m["body"] == "beta to alpha")
                self.assertEqual(m["from"].bare, f"bob@{BETA}")
                # and the default domain's accounts reach both
                d, ok = await slix_login(self.srv, f"dave@{DOMAIN}", "pw")
                self.assertTrue(ok)
                d.send_message(mto=f"carol@{ALPHA}", mbody="from localhost", mtype="chat")
                m = await a.next_message(pred=lambda m: m["body"] == "from localhost")
                self.assertEqual(m["from"].bare, f"dave@{DOMAIN}")
                d.disconnect()
            a.disconnect()
        run(go())

    def test_module_switched_off_on_one_domain(self):
        async def go():
            a, ok = await slix_login(self.srv, f"carol@{ALPHA}", "pw")
            self.assertTrue(ok)
            b, ok = await slix_login(self.srv, f"bob@{BETA}", "pw")
            self.assertTrue(ok)
            # XEP-0092 version: answered on alpha, service-unavailable on beta
            v = await a["xep_0092"].get_version(ALPHA, timeout=5)
            self.assertEqual(v["software_version"]["name"], "xmppd")
            for who in (b, a):  # beta's own user, and alpha's user asking beta
                with self.assertRaises(slixmpp.exceptions.IqError) as cm:
                    await who["xep_0092"].get_version(BETA, timeout=5)
                self.assertEqual(cm.exception.condition, "service-unavailable")
            # XEP-0199 ping, addressed to the server and to an account of beta
            await a["xep_0199"].send_ping(ALPHA, timeout=5)
            with self.assertRaises(slixmpp.exceptions.IqError) as cm:
                await b["xep_0199"].send_ping(BETA, timeout=5)
            self.assertEqual(cm.exception.condition, "service-unavailable")
            # disco#info does not list what is off
            fa = (await a["xep_0030"].get_info(jid=ALPHA, timeout=5))["disco_info"]["features"]
            fb = (await b["xep_0030"].get_info(jid=BETA, timeout=5))["disco_info"]["features"]
            self.assertIn("jabber:iq:version", fa)
            self.assertIn("urn:xmpp:ping", fa)
            self.assertNotIn("jabber:iq:version", fb)
            self.assertNotIn("urn:xmpp:ping", fb)
            self.assertEqual(set(fa) - set(fb), {"jabber:iq:version", "urn:xmpp:ping", "msgoffline", "urn:xmpp:delay"})
            a.disconnect()
            b.disconnect()
        run(go())

    def test_offline_storage_switched_off_on_one_domain(self):
        """A module's hooks follow the recipient's domain: no offline storage on beta."""
        async def go():
            a, ok = await slix_login(self.srv, f"carol@{ALPHA}", "pw")
            self.assertTrue(ok)
            a.send_message(mto=f"erin@{BETA}", mbody="to erin, absent", mtype="chat")
            m = await a.next_message(pred=lambda m: m["type"] == "error")
            self.assertEqual((m["from"].bare, m["error"]["condition"]), (f"erin@{BETA}", "service-unavailable"))
            a.send_message(mto=f"alice@{ALPHA}", mbody="kept for alice", mtype="chat")
            x, ok = await slix_login(self.srv, f"alice@{ALPHA}", "alpha-pw")
            self.assertTrue(ok)
            x.send_presence()
            m = await x.next_message(pred=lambda m: m["body"] == "kept for alice")
            self.assertEqual(m["from"].bare, f"carol@{ALPHA}")
            self.assertTrue(a.messages.empty())  # no error for the stored one
            a.disconnect()
            x.disconnect()
        run(go())

    def test_max_resources_of_one_domain(self):
        # alpha: max_resources = 2; the default domain keeps the global 16
        streams = []
        try:
            for i in range(2):
                r = RawStream(self.srv.port)
                streams.append(r)
                self.login_raw(r, ALPHA, "carol", f"r{i}")
                self.assertIn(f"<jid>carol@{ALPHA}/r{i}</jid>", r.buf.decode())
            r = RawStream(self.srv.port)
            streams.append(r)
            self.login_raw(r, ALPHA, "carol", "r2")
            self.assertIn("resource-constraint", r.buf.decode())
            for i in range(3):
                r = RawStream(self.srv.port)
                streams.append(r)
                self.login_raw(r, DOMAIN, "dave", f"r{i}")
                self.assertIn(f"<jid>dave@{DOMAIN}/r{i}</jid>", r.buf.decode())
        finally:
            for r in streams:
                r.close()

    def login_raw(self, r, domain, user, resource):
        r.open_stream(to=domain)
        r.recv_until(r"</stream:features>")
        r.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        r.recv_until(r"<proceed")
        r.sock = insecure_context().wrap_socket(r.sock, server_hostname=domain)
        r.buf = b""
        import base64
        r.open_stream(to=domain)
        r.recv_until(r"</stream:features>")
        token = base64.b64encode(f"\0{user}\0pw".encode()).decode()
        r.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        r.recv_until(r"<success")
        r.buf = b""
        r.open_stream(to=domain)
        r.recv_until(r"</stream:features>")
        r.bind(resource)


class VirtualHostReloadTest(unittest.TestCase):
    def setUp(self):
        self.srv, self.alpha, self.beta = rich_server()
        self.gamma = make_cert(self.srv.dir, GAMMA)
        for jid in (f"carol@{ALPHA}", f"bob@{BETA}", f"gina@{GAMMA}"):
            self.srv.adduser(jid, "pw")
        self.srv.start()

    def tearDown(self):
        self.assertEqual(self.srv.stop(), 0, self.srv.log_text())

    def reload(self, sections, expect):
        mark = len(self.srv.log_text())
        write_conf(self.srv, sections)
        self.srv.proc.send_signal(signal.SIGHUP)
        return wait_log(self.srv, expect, after=mark)

    def test_reload_adds_gamma_and_removes_beta(self):
        async def go():
            a, ok = await slix_login(self.srv, f"carol@{ALPHA}", "pw")
            self.assertTrue(ok)
            a.send_presence()
            b, ok = await slix_login(self.srv, f"bob@{BETA}", "pw")
            self.assertTrue(ok)
            pre = RawStream(self.srv.port)  # a beta stream not authenticated yet
            pre.open_stream(to=BETA)
            pre.recv_until(r"</stream:features>")
            # before: gamma is unknown
            with self.assertRaises(ssl.SSLError):
                peer_cert_der(self.srv.tls_port, GAMMA)

            text = self.reload([domain_section(ALPHA, *self.alpha, max_resources=2),
                                domain_section(GAMMA, *self.gamma)], r"reload: 3 domains")
            self.assertIn(f"domain {GAMMA} added", text)
            wait_log(self.srv, rf"domain {BETA} removed: 2 streams ended")
            err = await asyncio.wait_for(b.stream_errors.get(), 5)
            self.assertEqual(err["condition"], "host-gone")
            self.assertIn("<host-gone", pre.recv_until(r"</stream:stream>"))
            self.assertTrue(pre.closed())
            # beta is gone for new streams and for SNI; gamma is served with its certificate
            r = RawStream(self.srv.port)
            r.open_stream(to=BETA)
            self.assertIn("<host-unknown", r.recv_until(r"</stream:stream>"))
            with self.assertRaises(ssl.SSLError):
                peer_cert_der(self.srv.tls_port, BETA)
            self.assertEqual(peer_cert_der(self.srv.tls_port, GAMMA), der_of(self.gamma[0]))
            g, ok = await slix_login(self.srv, f"gina@{GAMMA}", "pw")
            self.assertTrue(ok)
            # alpha's session lived through it, and gamma reaches it
            g.send_message(mto=f"carol@{ALPHA}", mbody="hello from gamma", mtype="chat")
            m = await a.next_message(pred=lambda m: m["body"] == "hello from gamma")
            self.assertEqual(m["from"].bare, f"gina@{GAMMA}")
            # beta's users are now remote: no server-to-server here
            a.send_message(mto=f"bob@{BETA}", mbody="still there?", mtype="chat")
            m = await a.next_message(pred=lambda m: m["type"] == "error")
            self.assertEqual(m["error"]["condition"], "remote-server-not-found")
            a.disconnect()
            g.disconnect()
        run(go())

    def test_reload_refuses_a_certificate_that_does_not_match(self):
        wrong = make_cert(self.srv.dir, "other", san="other.test")
        text = self.reload([domain_section(ALPHA, *self.alpha), domain_section(BETA, *self.beta),
                            domain_section(GAMMA, *wrong)], r"reload: the configuration is refused")
        self.assertIn(f"domain {GAMMA}: the certificate {wrong[0]} does not name it", text)
        # nothing changed: gamma unknown, beta still served
        r = RawStream(self.srv.port)
        r.open_stream(to=GAMMA)
        self.assertIn("<host-unknown", r.recv_until(r"</stream:stream>"))
        self.assertEqual(peer_cert_der(self.srv.tls_port, BETA), der_of(self.beta[0]))


    def ctl(self, *args):
        return subprocess.run([XMPPCTL, "-c", self.srv.conf, *args], capture_output=True, text=True, timeout=10)

    def test_xmppctl_domains_and_reload(self):
        r = self.ctl("domains")
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout)
        self.assertEqual([d["name"] for d in got["domains"]], [DOMAIN, ALPHA, BETA])
        self.assertEqual(got["count"], 3)
        by = {d["name"]: d for d in got["domains"]}
        self.assertEqual(sorted(by[BETA]["disabled"]), ["offline", "ping", "version"])
        self.assertEqual(by[ALPHA]["max_resources"], 2)
        self.assertEqual(by[ALPHA]["certificate"], self.alpha[0])
        self.assertTrue(by[DOMAIN]["default"])
        # a refused reload says why, and changes nothing
        wrong = make_cert(self.srv.dir, "other", san="other.test")
        write_conf(self.srv, [domain_section(GAMMA, *wrong)])
        r = self.ctl("reload")
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"domain {GAMMA}: the certificate {wrong[0]} does not name it", r.stderr)
        self.assertEqual(json.loads(self.ctl("domains").stdout)["count"], 3)
        # an accepted one lists what changed
        write_conf(self.srv, [domain_section(GAMMA, *self.gamma)])
        r = self.ctl("reload")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["result"], f"2 domains; added: {GAMMA}; removed: {ALPHA} {BETA}")
        self.assertEqual([d["name"] for d in json.loads(self.ctl("domains").stdout)["domains"]], [DOMAIN, GAMMA])


class VirtualHostConfigTest(unittest.TestCase):
    def check(self, srv):
        return subprocess.run([XMPPD, "-c", srv.conf, "--check-config"], capture_output=True, text=True)

    def test_certificate_that_does_not_name_the_domain_is_refused(self):
        srv = Server()
        alpha = make_cert(srv.dir, ALPHA)
        write_conf(srv, [domain_section(BETA, *alpha)])
        r = self.check(srv)
        self.assertEqual(r.returncode, 2, r.stdout)
        self.assertIn(f"domain {BETA}: the certificate {alpha[0]} does not name it", r.stderr)
        # the same at start
        p = subprocess.run([XMPPD, "-c", srv.conf], capture_output=True, text=True, timeout=10)
        self.assertEqual(p.returncode, 2)
        self.assertIn("does not name it", p.stderr)
        # a [domain] without a certificate of its own is served by tls.certificate (CN=localhost)
        write_conf(srv, [domain_section(BETA)])
        r = self.check(srv)
        self.assertEqual(r.returncode, 2)
        self.assertIn(f"domain {BETA}: the certificate {srv.cert} does not name it", r.stderr)
        write_conf(srv, [domain_section(ALPHA, *alpha)])
        self.assertEqual(self.check(srv).returncode, 0)

    def test_bad_domain_sections(self):
        srv = Server()
        alpha = make_cert(srv.dir, ALPHA)
        cases = [
            ([domain_section(ALPHA, *alpha, disable="nosuch")], "unknown module 'nosuch'"),
            ([domain_section(ALPHA, *alpha, disable="presence")], "the module presence cannot be switched off"),
            ([domain_section(ALPHA, *alpha, max_resources=1001)], "max_resources"),
            ([domain_section(ALPHA, *alpha), domain_section(ALPHA.upper(), *alpha)], "listed twice"),
            ([domain_section(ALPHA, alpha[0], "")], "certificate and key must be set together"),
            ([domain_section(ALPHA, *alpha, colour="blue")], f"unknown option [domain {ALPHA}] colour"),
            ([domain_section("a" * 43 + ".test")], "section name longer than 49 bytes"),
            ([domain_section("bad..x")], "not a valid domain name"),
            (["[domain bad name]\n"], "without blanks"),
        ]
        for sections, msg in cases:
            write_conf(srv, sections)
            r = self.check(srv)
            self.assertEqual(r.returncode, 2, (sections, r.stdout))
            self.assertIn(msg, r.stderr, sections)
        # at the boundary: a name of 42 bytes fits in the section
        write_conf(srv, [domain_section("a" * 37 + ".test")])
        r = self.check(srv)
        self.assertNotIn("section name longer", r.stderr)


if __name__ == "__main__":
    unittest.main()
