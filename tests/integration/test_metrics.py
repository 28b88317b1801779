"""The metrics endpoint (metrics.listen; docs/operations.md "Metrics"): scraped over HTTP and
parsed strictly with the reference parser (python3-prometheus-client: OpenMetrics 1.0, which
refuses any malformed line, and the Prometheus text format). Counters must move by exactly
what the clients did: log-ins (slixmpp and a raw stream), a failed log-in, messages in and
out, TLS handshakes, sessions by state. Bad HTTP input (other methods, other paths, a long
URL, many idle connections) is refused without disturbing the XMPP side; a token, when set,
is required. A cluster (Redis + router + edge) shows its bus links' state."""
import asyncio
import http.client
import base64
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from test_sasl2 import authenticate, secured
from harness import SANITIZED, XMPPD, Client, RawStream, Redis, ServerTest, free_port, run, self_signed
from test_cluster import Node, stop_all

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def fetch(port, path="/metrics", accept=OPENMETRICS, token=None, method="GET", timeout=5, tls=None):
    """tls: an SSLContext, for HTTPS."""
    req = urllib.request.Request(f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}", method=method)
    if accept:
        req.add_header("Accept", accept)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=tls) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode(errors="replace")


def scrape(port, token=None, openmetrics=True):
    """{(sample name, ((label, value), ...)): value}, parsed strictly."""
    status, ctype, text = fetch(port, accept=OPENMETRICS if openmetrics else None, token=token)
    assert status == 200, (status, text)
    if openmetrics:
        assert ctype.startswith("application/openmetrics-text"), ctype
        assert text.endswith("# EOF\n")
        fams = parse_openmetrics(text)
    else:
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        fams = parse_text(text)
    out = {}
    for fam in fams:
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def val(m, name, **labels):
    return m[(name, tuple(sorted(labels.items())))]


def wait_for(port, pred, what, timeout=10, token=None):
    """Scrapes until pred(metrics) holds; fails with the last value of what(metrics)."""
    end = time.monotonic() + timeout
    while True:
        m = scrape(port, token)
        if pred(m):
            return m
        if time.monotonic() > end:
            raise AssertionError(f"not reached in {timeout} s: {what(m)}")
        time.sleep(0.05)


class MetricsTest(ServerTest):
    users = ("alice", "bob", "carol")
    mport = free_port()
    server_options = {"metrics.listen": f"127.0.0.1:{mport}"}

    def test_counters_move(self):
        p = self.mport
        # quiet: the harness's probe of the port (or an earlier test's connections) counted and gone
        before = wait_for(p, lambda m: val(m, "xmppd_connections_accepted_total") >= 1 and all(
            val(m, "xmppd_sessions", state=s) == 0 for s in ("negotiating", "bound", "detached", "closing")),
                          lambda m: [v for k, v in m.items() if k[0] == "xmppd_sessions"])

        def delta(m, name, **labels):
            return val(m, name, **labels) - val(before, name, **labels)

        async def scenario():
            alice = Client(self.srv, "alice@localhost/a", "pw")
            self.assertTrue(await alice.login())
            bob = RawStream(self.srv.port).login("bob", "pw", "b")
            # a failed log-in: the right stream, the wrong password
            bad = RawStream(self.srv.port)
            bad.starttls()
            bad.open_stream()
            bad.recv_until(r"</stream:features>")
            token = base64.b64encode(b"\0carol\0wrong").decode()
            bad.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
            bad.recv_until(r"<not-authorized/>")
            # a SASL2 log-in (XEP-0388) is a log-in too (it once was not counted)
            s2, _ = secured(self.srv.port)
            self.assertIn("<success", authenticate(s2, "carol", "pw", mech="PLAIN"))
            m = wait_for(p, lambda m: delta(m, "xmppd_sessions", state="bound") == 2,
                         lambda m: delta(m, "xmppd_sessions", state="bound"))
            for i in range(3):
                alice.send_message(mto="bob@localhost/b", mbody=f"m{i}", mtype="chat")
            await asyncio.get_running_loop().run_in_executor(None, bob.recv_until, r"m2</body>")
            m = wait_for(p, lambda m: delta(m, "xmppd_stanzas_out_total", kind="message") >= 3,
                         lambda m: delta(m, "xmppd_stanzas_out_total", kind="message"))
            self.assertEqual(delta(m, "xmppd_logins_total"), 3)
            self.assertEqual(delta(m, "xmppd_login_failures_total", reason="not-authorized"), 1)
            self.assertEqual(delta(m, "xmppd_login_failures_total", reason="aborted"), 0)
            self.assertEqual(delta(m, "xmppd_stanzas_in_total", kind="message"), 3)
            self.assertEqual(delta(m, "xmppd_stanzas_out_total", kind="message"), 3)
            self.assertGreaterEqual(delta(m, "xmppd_stanzas_in_total", kind="iq"), 2)  # two binds at least
            self.assertEqual(delta(m, "xmppd_tls_handshakes_total", type="full"), 4)
            self.assertEqual(delta(m, "xmppd_tls_handshakes_total", type="resumed"), 0)
            self.assertEqual(delta(m, "xmppd_connections_accepted_total"), 4)
            # the connection that failed SASL and the SASL2 one that did not bind are negotiating
            self.assertEqual(delta(m, "xmppd_sessions", state="negotiating"), 2)
            # the routers handled the messages: both sides' shards (C2S, ROUTE) and the binds
            handled = sum(v - before.get(k, 0) for k, v in m.items()
                          if k[0] == "xmppd_bus_frames_handled_total" and dict(k[1])["queue"].startswith("router"))
            self.assertGreaterEqual(handled, 3 * 2 + 2)
            # bob does not read more: what alice sends is queued at his edge at most briefly
            self.assertEqual(val(m, "xmppd_bus_congested"), 0)
            bob.close()
            bad.close()
            s2.close()
            alice.disconnect()
            await alice.disconnected
            wait_for(p, lambda m: all(val(m, "xmppd_sessions", state=s) == val(before, "xmppd_sessions", state=s)
                                      for s in ("negotiating", "bound", "detached", "closing")),
                     lambda m: {s: val(m, "xmppd_sessions", state=s) for s in ("negotiating", "bound", "closing")})

        run(scenario())

    def test_formats_agree(self):
        """The Prometheus text format and OpenMetrics carry the same samples (counters
        have the same names with _total in both)."""
        a = scrape(self.mport, openmetrics=False)
        b = scrape(self.mport)
        self.assertEqual(set(a), set(b))
        for name in ("xmppd_logins_total", "xmppd_redis_rtt_seconds_count", "xmppd_build_info",
                     "xmppd_bus_queue_frames", "xmppd_process_resident_bytes"):
            self.assertTrue(any(k[0] == name for k in a), name)
        if not SANITIZED:
            self.assertGreater(val(b, "xmppd_jemalloc_allocated_bytes"), 0)
            self.assertGreaterEqual(val(b, "xmppd_jemalloc_resident_bytes"), val(b, "xmppd_jemalloc_allocated_bytes"))
        # one queue per router worker and per edge thread (2 + 2)
        self.assertEqual(sorted(dict(k[1])["queue"] for k in a if k[0] == "xmppd_bus_queue_frames"),
                         ["edge0", "edge1", "router0", "router1"])

    def test_documented_and_dashboard(self):
        """Every family a process exports is in docs/operations.md "Metrics", and every
        name deploy/grafana/xmppd.json uses is one of those."""
        import json
        import re
        root = os.path.join(os.path.dirname(__file__), "..", "..")
        with open(os.path.join(root, "docs", "operations.md")) as f:
            doc = f.read().split("## Metrics", 1)[1]
        documented = set(re.findall(r"`(xmppd_[a-z_]+)`", doc))
        m = scrape(self.mport)
        for name, _ in m:
            base = re.sub(r"_(bucket|sum|count)$", "", name) if name.startswith("xmppd_redis_rtt") else name
            self.assertIn(base, documented, "not in docs/operations.md")
        with open(os.path.join(root, "deploy", "grafana", "xmppd.json")) as f:
            dash = json.load(f)
        exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
        self.assertGreater(len(exprs), 10)
        for e in exprs:
            for name in re.findall(r"xmppd_[a-z_]+", e):
                base = re.sub(r"_(bucket|sum|count)$", "", name) if name.startswith("xmppd_redis_rtt") else name
                self.assertIn(base, documented, e)

    def test_bad_requests(self):
        p = self.mport
        for method in ("POST", "PUT", "DELETE"):
            self.assertEqual(fetch(p, method=method)[0], 405, method)
        self.assertEqual(fetch(p, path="/")[0], 404)
        self.assertEqual(fetch(p, path="/metricsx")[0], 404)
        self.assertEqual(fetch(p, path="/metrics/../etc")[0], 404)
        status = fetch(p, path="/metrics?" + "a" * 40000)[0]
        self.assertIn(status, (414, 431))
        # a raw request with a body is refused too, and nothing is read into memory
        s = socket.create_connection(("127.0.0.1", p), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        self.assertRegex(s.recv(4096), rb"^HTTP/1\.1 400 ")
        s.close()
        s = socket.create_connection(("127.0.0.1", p), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertRegex(s.recv(4096), rb"^HTTP/1\.1 400 ")
        s.close()
        self.assertIn(("xmppd_logins_total", ()), scrape(p))

    def test_many_connections(self):
        """At most 16 connections are served at once: a 17th waits (in the listen backlog)
        until one of them goes; idle ones are closed after 10 s, so they cannot hold the
        endpoint; meanwhile XMPP log-ins are served as usual."""
        p = self.mport
        t0 = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", p), timeout=15) for _ in range(16)]
        extra = socket.create_connection(("127.0.0.1", p), timeout=15)
        extra.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        extra.settimeout(1.5)
        with self.assertRaises((socket.timeout, TimeoutError)):
            extra.recv(1)  # not served: 16 are open
        # the XMPP side does not notice
        RawStream(self.srv.port).login("carol", "pw", "c").close()
        idle.pop().close()
        extra.settimeout(5)
        self.assertRegex(extra.recv(64), rb"^HTTP/1\.1 200 ")
        extra.close()

        def closed_by_server(s, timeout):
            s.settimeout(timeout)
            try:
                return s.recv(1) == b""
            except (socket.timeout, TimeoutError):
                return False
            except OSError:
                return True

        for s in idle:
            self.assertTrue(closed_by_server(s, max(0.1, 16 - (time.monotonic() - t0))), "idle connection kept")
        self.assertGreater(time.monotonic() - t0, 8, "idle connections closed before the 10 s timeout")
        for s in idle:
            s.close()
        scrape(p)


class MetricsHttpsTest(ServerTest):
    """metrics.tls_cert / metrics.tls_key: HTTPS only, with the endpoint's own certificate
    (checked by Python's OpenSSL client), the token still required."""
    mport = free_port()
    tls_dir = tempfile.mkdtemp(prefix="xmppd-metrics-tls-")
    cert, key = self_signed(tls_dir, "metrics.localhost", "metrics-")
    server_options = {"metrics.listen": f"127.0.0.1:{mport}", "metrics.token": "s3cret-token",
                      "metrics.tls_cert": cert, "metrics.tls_key": key}

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.tls_dir, ignore_errors=True)

    def test_https_scrape(self):
        ctx = ssl.create_default_context(cafile=self.cert)
        ctx.check_hostname = False
        st, ctype, text = fetch(self.mport, token="s3cret-token", tls=ctx)
        self.assertEqual(st, 200, text)
        self.assertIn("xmppd_logins_total", text)
        self.assertEqual(fetch(self.mport, token="wrong", tls=ctx)[0], 401)
        with self.assertRaises(urllib.error.URLError):  # another certificate: the client refuses
            other = ssl.create_default_context(cafile=self.srv.cert)
            other.check_hostname = False
            fetch(self.mport, token="s3cret-token", tls=other)
        with self.assertRaises((ConnectionResetError, urllib.error.URLError, http.client.RemoteDisconnected)):
            fetch(self.mport, token="s3cret-token")  # plain HTTP: no answer
        self.assertIn(f"metrics: https://127.0.0.1:{self.mport}/metrics", self.srv.log_text())


class MetricsTokenTest(ServerTest):
    mport = free_port()
    server_options = {"metrics.listen": f"127.0.0.1:{mport}", "metrics.token": "s3cret-token"}

    def test_token_required(self):
        self.assertEqual(fetch(self.mport)[0], 401)
        self.assertEqual(fetch(self.mport, token="s3cret-tokeN")[0], 401)
        self.assertEqual(fetch(self.mport, token="s3cret-token-longer")[0], 401)
        self.assertEqual(fetch(self.mport, token="")[0], 401)
        self.assertIn(("xmppd_logins_total", ()), scrape(self.mport, token="s3cret-token"))

    def test_config_refuses_open_listen_without_token(self):
        def check(*sets):
            args = [XMPPD, "--check-config", "--set", "c2s.tls_port=0", "--set", "tls.required=false"]
            for s in sets:
                args += ["--set", s]
            return subprocess.run(args, capture_output=True, text=True)

        r = check("metrics.listen=0.0.0.0:9100")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("metrics.token", r.stderr)
        self.assertEqual(check("metrics.listen=0.0.0.0:9100", "metrics.token=x").returncode, 0)
        self.assertEqual(check("metrics.listen=[::1]:9100").returncode, 0)
        for bad in ("localhost:9100", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "[::1]9100", "1.2.3.4:9:9"):
            r = check(f"metrics.listen={bad}")
            self.assertEqual(r.returncode, 2, bad)
            self.assertIn("metrics.listen", r.stderr, bad)


class MetricsClusterTest(unittest.TestCase):
    """Redis + one router + one edge, each with its own endpoint: the edge's link to the
    router is up, then down once the router is killed (a long node TTL keeps the peer in
    the registry meanwhile), and Redis round trips of both clients are counted."""

    def test_bus_link_state(self):
        redis = Redis()
        redis.start()
        rport, eport = free_port(), free_port()
        router = Node(redis, 1, "router", **{"metrics.listen": f"127.0.0.1:{rport}", "cluster.node_ttl_ms": 20000})
        edge = Node(redis, 2, "edge", **{"metrics.listen": f"127.0.0.1:{eport}", "cluster.node_ttl_ms": 20000})
        nodes = [router, edge]
        try:
            router.adduser("dave@localhost", "pw")
            router.start()
            edge.start()

            def link(m, peer, direction):
                return m.get(("xmppd_bus_link_up", (("direction", direction), ("peer", str(peer)),
                                                    ("peer_role", "router" if peer == 1 else "edge"))))

            m = wait_for(eport, lambda m: link(m, 1, "out") == 1, lambda m: link(m, 1, "out"), timeout=20)
            self.assertEqual(val(m, "xmppd_cluster_redis_up"), 1)
            self.assertEqual(val(m, "xmppd_cluster_peers"), 1)
            self.assertEqual(val(m, "xmppd_build_info", version=val_version(m), role="edge"), 1)
            wait_for(rport, lambda m: link(m, 2, "in") == 1, lambda m: link(m, 2, "in"), timeout=20)
            RawStream(edge.port).login("dave", "pw", "d").close()
            m = wait_for(eport, lambda m: val(m, "xmppd_logins_total") == 1, lambda m: val(m, "xmppd_logins_total"))
            # the edge read the account from Redis (store) and heartbeats (cluster)
            self.assertGreater(val(m, "xmppd_redis_rtt_seconds_count", client="store"), 0)
            self.assertGreater(val(m, "xmppd_redis_rtt_seconds_count", client="cluster"), 0)
            # the session's frames went on the link (the links' figures are published every 200 ms)
            wait_for(eport, lambda m: val(m, "xmppd_bus_link_frames_sent_total", peer="1", peer_role="router",
                                          direction="out") > 0,
                     lambda m: val(m, "xmppd_bus_link_frames_sent_total", peer="1", peer_role="router", direction="out"))
            rm = scrape(rport)
            self.assertEqual(val(rm, "xmppd_build_info", version=val_version(rm), role="router"), 1)
            # every cluster event has its label (a fifth event once came out as event="(null)")
            for ev in ("bounced", "unreachable", "dropped", "unknown_session", "hold_ended"):
                self.assertEqual(val(rm, "xmppd_cluster_events_total", event=ev), 0, ev)
            self.assertGreater(val(rm, "xmppd_redis_rtt_seconds_count", client="cluster"), 0)
            router.kill9()
            m = wait_for(eport, lambda m: link(m, 1, "out") == 0, lambda m: link(m, 1, "out"), timeout=10)
            self.assertGreaterEqual(val(m, "xmppd_bus_link_downs_total", peer="1", peer_role="router",
                                        direction="out"), 1)
        finally:
            stop_all(redis, nodes)


def val_version(m):
    return next(dict(k[1])["version"] for k in m if k[0] == "xmppd_build_info")


if __name__ == "__main__":
    unittest.main()
