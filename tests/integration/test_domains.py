"""Runtime domains and per-domain limits (docs/operations.md "Virtual hosting" and
"Per-domain limits"): a domain added through xmppctl or the HTTP admin API is served at
once, kept in the store across a restart and, on Redis, by every node of a cluster within
the poll delay; removed, its sessions end with <host-gone/> and its accounts stay unless
purged. Per-domain max_sessions, max_accounts and rates, each at N and N + 1. Real TLS,
slixmpp and aioxmpp as clients, raw streams for the exact errors."""
import asyncio
import base64
import json
import os
import re
import subprocess
import time
import unittest

from harness import (DOMAIN, XMPPCTL, Client, RawStream, Redis, Server, aioxmpp_client, free_port,
                     insecure_context, run)
from test_admin_http import call, wait_port
from test_admin_socket import raw_request
from test_cluster import Node, stop_all
from test_vhost import der_of, domain_section, make_cert, peer_cert_der, write_conf

TOKEN = "domains-admin-token-0123456789"
TMPL = "tmpl.test"


def raw_tls(port, domain):
    """A raw stream to domain under STARTTLS, the post-TLS features read."""
    r = RawStream(port, timeout=10)
    r.open_stream(to=domain)
    r.recv_until(r"</stream:features>")
    r.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    r.recv_until(r"<proceed")
    r.sock = insecure_context().wrap_socket(r.sock, server_hostname=domain)
    r.buf = b""
    r.open_stream(to=domain)
    r.recv_until(r"</stream:features>")
    r.buf = b""
    return r


def raw_auth(port, domain, user, password):
    """PLAIN on a raw stream: (stream, the server's answer to <auth/>)."""
    r = raw_tls(port, domain)
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    r.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    return r, r.recv_until(r"<success|</failure>")


def raw_login(port, domain, user, password, resource="r"):
    r, text = raw_auth(port, domain, user, password)
    assert "<success" in text, text
    r.buf = b""
    r.open_stream(to=domain)
    r.recv_until(r"</stream:features>")
    r.send(f"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           f"<resource>{resource}</resource></bind></iq>")
    r.recv_until(r"</iq>")
    r.buf = b""
    return r


def raw_register(port, domain, user, password):
    """XEP-0077 registration on a raw stream: (type, error condition or None, reply)."""
    r = raw_tls(port, domain)
    try:
        r.send(f"<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>{user}</username>"
               f"<password>{password}</password></query></iq>")
        text = r.recv_until(r"<iq[^>]*id='reg'.*?</iq>", timeout=10)
        iq = re.search(r"<iq[^>]*id='reg'.*?</iq>", text, re.S).group(0)
        cond = re.search(r"<([a-z-]+) xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>", iq)
        return re.search(r"type='(\w+)'", iq).group(1), cond.group(1) if cond else None, iq
    finally:
        r.close()


async def slix_login(srv, jid, pw="pw", port=None):
    c = Client(srv, jid, pw)
    ok = await c.login(port=port)
    return c, ok


async def aio_login(srv, jid, pw="pw"):
    j, client = aioxmpp_client(srv, jid, pw)
    async with client.connected():
        return str(client.local_jid.bare())


def domain_server(**options):
    """A server (SQLite) with the control socket, the HTTP admin API and a [domain
    tmpl.test] section that runtime domains take as their template."""
    http = free_port()
    srv = Server(**{"admin.listen": f"127.0.0.1:{http}", "admin.token": TOKEN, **options})
    srv.http = http
    tmpl = make_cert(srv.dir, TMPL)
    write_conf(srv, [domain_section(TMPL, *tmpl, max_resources=3, max_sessions=5, disable="version")])
    return srv


class RuntimeDomainTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = domain_server()
        cls.srv.start()
        wait_port(cls.srv.http)

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0, cls.srv.log_text()

    def tearDown(self):
        self.assertTrue(self.srv.alive(), self.srv.log_text())

    def ctl(self, *args):
        return subprocess.run([XMPPCTL, "-c", self.srv.conf, *args], capture_output=True, text=True, timeout=20)

    def ok(self, *args):
        r = self.ctl(*args)
        self.assertEqual(r.returncode, 0, r.stderr + self.srv.log_text()[-2000:])
        return json.loads(r.stdout)

    def http(self, method, path, body=None):
        return call(self.srv.http, method, path, body, token=TOKEN)

    def test_xmppctl_add_login_restart_remove(self):
        name = "rt1.test"
        cert = make_cert(self.srv.dir, name)
        ans = self.ok("domain", "add", name, "--template", TMPL, "--certificate", cert[0], "--key", cert[1])
        self.assertIn(f"added: {name}", ans["result"])
        self.assertNotIn("note", ans)  # its own certificate names it
        for u in ("alice", "bob", "carol"):
            self.srv.adduser(f"{u}@{name}", "pw")
        # SNI picks its certificate
        self.assertEqual(peer_cert_der(self.srv.tls_port, name), der_of(cert[0]))
        show = self.ok("domain", "show", name)
        self.assertEqual((show["source"], show["template"], show["max_resources"], show["max_sessions"],
                          show["disabled"], show["accounts"], show["own_certificate"]),
                         ("runtime", TMPL, 3, 5, ["version"], 3, True))

        async def two_clients():
            c, ok = await slix_login(self.srv, f"alice@{name}")
            self.assertTrue(ok, self.srv.log_text()[-2000:])
            self.assertEqual(await aio_login(self.srv, f"bob@{name}"), f"bob@{name}")
            await c.close()
        run(two_clients())
        # a restart: still there (the store), with its template's settings
        self.assertEqual(self.srv.stop(), 0, self.srv.log_text())
        self.srv.start()
        wait_port(self.srv.http)
        self.assertIn("runtime domains from the store", self.srv.log_text())
        got = {d["name"]: d for d in self.ok("domains")["domains"]}
        self.assertEqual((got[name]["source"], got[name]["max_sessions"]), ("runtime", 5))
        self.assertEqual(peer_cert_der(self.srv.tls_port, name), der_of(cert[0]))
        # a reload of the configuration keeps the runtime domains
        self.assertNotIn(name, self.ok("reload")["result"])
        self.assertIn(name, [d["name"] for d in self.ok("domains")["domains"]])
        # removed: the session ends with <host-gone/>, the slixmpp one too
        raw = raw_login(self.srv.port, name, "carol", "pw")

        async def removed():
            c, ok = await slix_login(self.srv, f"alice@{name}")
            self.assertTrue(ok)
            ans = await asyncio.get_running_loop().run_in_executor(None, lambda: self.ok("domain", "remove", name))
            self.assertIn(f"removed: {name}", ans["result"])
            self.assertEqual(ans["purged"], 0)
            err = await asyncio.wait_for(c.stream_errors.get(), 10)
            self.assertEqual(err["condition"], "host-gone")
        run(removed())
        self.assertIn("<host-gone", raw.recv_until(r"</stream:stream>", timeout=10))
        raw.close()
        r = RawStream(self.srv.port)
        r.open_stream(to=name)
        self.assertIn("<host-unknown", r.recv_until(r"</stream:stream>"))
        r.close()
        # the accounts stayed: added again, alice logs in with her old password
        self.ok("domain", "add", name, "--template", TMPL, "--certificate", cert[0], "--key", cert[1])
        run(self._logs_in(f"alice@{name}"))
        # --purge deletes them
        ans = self.ok("domain", "remove", name, "--purge")
        self.assertEqual(ans["purged"], 3)
        users = self.ctl("listusers").stdout
        self.assertNotIn(f"@{name}", users)
        self.assertIn(f"command=domain-remove", self.srv.log_text())  # the audit line

    async def _logs_in(self, jid, pw="pw"):
        c, ok = await slix_login(self.srv, jid, pw)
        self.assertTrue(ok, self.srv.log_text()[-2000:])
        await c.close()

    def test_http_add_without_certificate_and_refusals(self):
        name = "rt2.test"
        st, ans = self.http("POST", "/admin/domain-add", {"name": name.upper()})
        self.assertEqual(st, 200, ans)
        # no certificate: tls.certificate (CN=localhost) is what SNI gets, and the answer says so
        self.assertIn("does not name it", ans["note"])
        self.assertEqual(peer_cert_der(self.srv.tls_port, name), der_of(self.srv.cert))
        st, ans = self.http("GET", f"/admin/domain-show?name={name}")
        self.assertEqual((st, ans["source"], ans["template"], ans["own_certificate"], ans["max_sessions"]),
                         (200, "runtime", "", False, 0))
        self.srv.adduser(f"dan@{name}", "pw")
        run(self._logs_in(f"dan@{name}"))
        # a certificate that does not cover the name
        wrong = make_cert(self.srv.dir, "other.test")
        st, ans = self.http("POST", "/admin/domain-add", {"name": "rt3.test", "certificate": wrong[0], "key": wrong[1]})
        self.assertEqual(st, 400)
        self.assertIn(f"the certificate {wrong[0]} does not name it", ans["error"])
        # configuration domains cannot be removed here
        for d, what in ((TMPL, "[domain] section"), (DOMAIN, "server.domain")):
            st, ans = self.http("POST", "/admin/domain-remove", {"name": d})
            self.assertEqual(st, 400)
            self.assertIn("configured in the configuration file", ans["error"])
            self.assertIn(what, ans["error"])
        r = self.ctl("domain", "remove", TMPL)
        self.assertEqual(r.returncode, 1)
        self.assertIn("configured in the configuration file", r.stderr)
        cases = [({"name": name}, "already served"),
                 ({"name": TMPL}, "already served (by the configuration file)"),
                 ({"name": ("a" * 62 + ".") * 4 + "bb"}, "1 to 253 are allowed"),  # 254 bytes
                 ({"name": ("a" * 62 + ".") * 4 + "b"}, None),  # 253 bytes: the cap itself
                 ({"name": "bad..name"}, "not a valid domain name"),
                 ({"name": "10.0.0.1"}, "not a valid domain name"),
                 ({"name": "rt4.test", "template": "nosuch.test"}, "no [domain nosuch.test] section"),
                 ({"name": "rt4.test", "certificate": wrong[0]}, "certificate and key must be given together"),
                 ({"name": "rt4.test", "certificate": "/nonexistent.pem", "key": "/nonexistent.key"}, "cannot read")]
        for body, msg in cases:
            st, ans = self.http("POST", "/admin/domain-add", body)
            if msg is None:
                self.assertEqual(st, 200, ans)
                self.http("POST", "/admin/domain-remove", body)
                continue
            self.assertEqual(st, 400, (body, ans))
            self.assertIn(msg, ans["error"], body)
        st, ans = self.http("POST", "/admin/domain-remove", {"name": "nosuch.test"})
        self.assertIn("no runtime domain nosuch.test", ans["error"])
        # without the token: refused
        st, _ = call(self.srv.http, "POST", "/admin/domain-add", {"name": "rt5.test"}, token="wrong")
        self.assertEqual(st, 401)
        st, ans = self.http("POST", "/admin/domain-remove", {"name": name})
        self.assertEqual(st, 200, ans)


class RuntimeDomainCapTest(unittest.TestCase):
    """At most XMPP_MAX_RUNTIME_DOMAINS (1,000) runtime domains: the 1,000th is added, the
    1,001st refused; all survive a restart."""
    CAP = 1000

    def test_cap(self):
        srv = domain_server()
        srv.start()
        try:
            path = os.path.join(srv.dir, "xmppd.db.ctl")
            t0 = time.monotonic()
            for i in range(self.CAP):
                ans = json.loads(raw_request(path, f"domain-add\td{i}.cap.test\n".encode(), timeout=30))
                self.assertTrue(ans["ok"], ans)
            print(f"\n{self.CAP} runtime domains added in {time.monotonic() - t0:.1f} s")
            ans = json.loads(raw_request(path, b"domain-add\tover.cap.test\n", timeout=30))
            self.assertFalse(ans["ok"])
            self.assertIn("1000 runtime domains already (the cap)", ans["error"])
            self.assertEqual(srv.stop(), 0, srv.log_text()[-3000:])
            srv.start()
            ans = json.loads(raw_request(path, b"domains\n", timeout=30))
            self.assertEqual(ans["count"], 2 + self.CAP)  # localhost, tmpl.test and the runtime ones
            # removing one makes a place
            ans = json.loads(raw_request(path, b"domain-remove\td7.cap.test\n", timeout=30))
            self.assertTrue(ans["ok"], ans)
            ans = json.loads(raw_request(path, b"domain-add\tover.cap.test\n", timeout=30))
            self.assertTrue(ans["ok"], ans)
        finally:
            self.assertEqual(srv.stop(), 0, srv.log_text()[-3000:])


class DomainLimitsTest(unittest.TestCase):
    """[domain] max_sessions, max_accounts, rate_* at N and N + 1; a runtime domain takes
    them from its template."""
    N = 2

    @classmethod
    def setUpClass(cls):
        cls.srv = domain_server(**{"registration.open": "true", "registration.per_ip_per_hour": "1000",
                                   "limits.auth_fail_ip": "1000", "limits.rate_burst": "1"})
        cls.lim, cls.rate = "lim.test", "rate.test"
        lim = make_cert(cls.srv.dir, cls.lim)
        rate = make_cert(cls.srv.dir, cls.rate)
        tmpl = make_cert(cls.srv.dir, TMPL)
        write_conf(cls.srv, [domain_section(TMPL, *tmpl, max_sessions=cls.N, max_accounts=cls.N),
                             domain_section(cls.lim, *lim, max_sessions=cls.N, max_accounts=cls.N),
                             domain_section(cls.rate, *rate, rate_stanzas=5)])
        for u in ("s1", "s2", "s3"):
            for d in (cls.lim, cls.rate, DOMAIN):
                cls.srv.adduser(f"{u}@{d}", "pw")
        cls.srv.start()
        wait_port(cls.srv.http)

    @classmethod
    def tearDownClass(cls):
        assert cls.srv.stop() == 0, cls.srv.log_text()

    def test_max_sessions(self):
        d = self.lim
        first = [raw_login(self.srv.port, d, f"s{i + 1}", "pw") for i in range(self.N)]  # N: accepted
        r, text = raw_auth(self.srv.port, d, "s3", "pw")  # N + 1: refused, before binding
        self.assertIn("<temporary-auth-failure/>", text)
        self.assertIn(f"the domain {d} has reached its limit of {self.N} sessions", text)
        r.close()

        async def slix_refused():
            c, ok = await slix_login(self.srv, f"s3@{d}")
            self.assertFalse(ok)
        run(slix_refused())
        # another domain is not affected
        run(self._slix_ok(f"s3@{DOMAIN}"))
        # one leaves: a place again
        first[0].close()
        deadline = time.monotonic() + 10
        while True:
            r, text = raw_auth(self.srv.port, d, "s3", "pw")
            r.close()
            if "<success" in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertIn("<success", text)
        for x in first[1:]:
            x.close()

    async def _slix_ok(self, jid):
        c, ok = await slix_login(self.srv, jid)
        self.assertTrue(ok)
        await c.close()

    def test_max_accounts_by_registration(self):
        d = TMPL  # no account yet
        for i in range(self.N):
            self.assertEqual(raw_register(self.srv.port, d, f"new{i}", "password-123")[:2], ("result", None))
        typ, cond, iq = raw_register(self.srv.port, d, "over", "password-123")
        self.assertEqual((typ, cond), ("error", "resource-constraint"))
        self.assertIn(f"limit of {self.N} accounts", iq)
        # a runtime domain takes the cap from its template; counted per domain
        name = "rtlim.test"
        r = subprocess.run([XMPPCTL, "-c", self.srv.conf, "domain", "add", name, "--template", TMPL],
                           capture_output=True, text=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        for i in range(self.N):
            self.assertEqual(raw_register(self.srv.port, name, f"new{i}", "password-123")[:2], ("result", None))
        self.assertEqual(raw_register(self.srv.port, name, "over", "password-123")[:2], ("error", "resource-constraint"))
        # the domain's accounts as the store counts them
        st, ans = call(self.srv.http, "GET", f"/admin/domain-show?name={name}", token=TOKEN)
        self.assertEqual(ans["accounts"], self.N)

    def test_domain_rate(self):
        """rate.test's streams are shaped at 5 stanzas/s with a burst of 1 s (the server's
        are not): 20 pings one after the other take 3 s there (15 beyond the burst), a
        fraction of one on the default domain."""
        def pings(domain, user):
            r = raw_login(self.srv.port, domain, user, "pw", resource="rate")
            t0 = time.monotonic()
            for i in range(20):
                r.send(f"<iq type='get' id='p{i}'><ping xmlns='urn:xmpp:ping'/></iq>")
                r.recv_until(rf"id='p{i}'", timeout=30)
            dt = time.monotonic() - t0
            r.close()
            return dt
        fast = pings(DOMAIN, "s1")
        slow = pings(self.rate, "s2")
        self.assertGreater(slow, 2.0)
        self.assertLess(fast, 1.0)


class ClusterDomainTest(unittest.TestCase):
    """Redis + 2 routers + 2 edges: a domain added on edge 11 is served by edge 12 within
    the poll delay (docs/operations.md: XDOM_POLL_MS, 1 s, plus a store round trip)."""

    def test_added_on_one_node_served_by_the_other(self):
        redis = Redis()
        redis.start()
        nodes = []
        try:
            h1, h2 = free_port(), free_port()
            routers = [Node(redis, 1, "router"), Node(redis, 2, "router")]
            e1 = Node(redis, 11, "edge", **{"admin.listen": f"127.0.0.1:{h1}", "admin.token": TOKEN})
            e2 = Node(redis, 12, "edge", **{"admin.listen": f"127.0.0.1:{h2}", "admin.token": TOKEN})
            nodes = routers + [e1, e2]
            for n in nodes:
                n.start()
            wait_port(h1)
            wait_port(h2)
            name = "shared.test"
            for u in ("ann", "ben"):
                e1.adduser(f"{u}@{name}", "pw")
            st, ans = call(h1, "POST", "/admin/domain-add", {"name": name}, token=TOKEN)
            self.assertEqual(st, 200, ans)
            t0 = time.monotonic()
            while not re.search(rf"runtime domains changed in the store.*added: {re.escape(name)}", e2.log_text()):
                self.assertLess(time.monotonic() - t0, 10, e2.log_text()[-3000:])
                time.sleep(0.05)
            delay = time.monotonic() - t0
            print(f"\nshared.test served by edge 12 {delay:.2f} s after the add on edge 11")
            self.assertLess(delay, 5)  # 1 s poll; generous on a loaded machine
            # the routers know it too: a message between edges
            for r in routers:
                deadline = time.monotonic() + 10
                while "runtime domains changed" not in r.log_text():
                    self.assertLess(time.monotonic(), deadline, r.log_text()[-3000:])
                    time.sleep(0.05)

            async def chat():
                a, ok = await slix_login(e1, f"ann@{name}")
                self.assertTrue(ok)
                b, ok = await slix_login(e2, f"ben@{name}")
                self.assertTrue(ok)
                b.send_presence()
                await asyncio.sleep(0.3)
                a.send_message(mto=f"ben@{name}", mbody="across", mtype="chat")
                m = await b.next_message(10)
                self.assertEqual(m["body"], "across")
                # removed on edge 12: ann's session on edge 11 ends with <host-gone/>
                st, ans = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: call(h2, "POST", "/admin/domain-remove", {"name": name}, token=TOKEN))
                self.assertEqual(st, 200, ans)
                err = await asyncio.wait_for(a.stream_errors.get(), 10)
                self.assertEqual(err["condition"], "host-gone")
                err = await asyncio.wait_for(b.stream_errors.get(), 10)
                self.assertEqual(err["condition"], "host-gone")
            run(chat())
        finally:
            stop_all(redis, nodes)


if __name__ == "__main__":
    unittest.main()
