"""The HTTP admin API (admin.listen, admin.token; common/control_http.c): the control
socket's commands as JSON over HTTP, through the same dispatcher (common/control.c) and
commands (cmd/xmppd_admin.c), with real slixmpp and aioxmpp clients; the bearer token
(401, audited), the body cap (413), the connection cap (503). Also the control socket's
refused connections, which are closed at once."""
import asyncio
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

import aioxmpp

from harness import DOMAIN, XMPPD, Client, Server, ServerTest, aioxmpp_client, free_port, run, self_signed

TOKEN = "s3cret-admin-token-0123456789"
MAX_BODY = 1024
MAX_CLIENTS = 3


def wait_port(port, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def call(port, method, path, body=None, token=TOKEN, headers=None, tls=None):
    """One request on a fresh connection (HTTPS with tls, an SSLContext): (status, parsed JSON body)."""
    c = (http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=tls) if tls
         else http.client.HTTPConnection("127.0.0.1", port, timeout=20))
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = "Bearer " + token
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data)


async def in_thread(fn, *args, **kw):
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kw))


class AdminHttpTest(ServerTest):
    users = ("alice", "bob", "carol", "dave")

    @classmethod
    def setUpClass(cls):
        cls.http = free_port()
        cls.server_options = {"admin.listen": f"127.0.0.1:{cls.http}", "admin.token": TOKEN,
                              "admin.max_body": str(MAX_BODY), "admin.max_clients": str(MAX_CLIENTS)}
        super().setUpClass()
        wait_port(cls.http)

    def ok(self, method, path, body=None):
        st, ans = call(self.http, method, path, body)
        self.assertEqual(st, 200, ans)
        self.assertIs(ans["ok"], True)
        return ans

    def test_status_sessions_cluster(self):
        st = self.ok("GET", "/admin/status")
        self.assertEqual(st["pid"], self.srv.proc.pid)
        self.assertEqual(st["domain"], DOMAIN)
        self.assertEqual(self.ok("POST", "/admin/status")["pid"], self.srv.proc.pid)  # POST works for all
        cl = self.ok("GET", "/admin/cluster")
        self.assertIs(cl["clustered"], False)
        self.assertEqual(cl["owners"], [{"node": 0, "shards": cl["shards"], "self": True}])
        self.assertEqual(cl["unowned"], 0)

        async def go():
            a = Client(self.srv, f"alice@{DOMAIN}/one", "pw")
            b = Client(self.srv, f"bob@{DOMAIN}/two", "pw")
            self.assertTrue(await a.login())
            self.assertTrue(await b.login())
            try:
                ans = await in_thread(self.ok, "GET", "/admin/sessions")
                self.assertEqual({s["jid"] for s in ans["sessions"]}, {f"alice@{DOMAIN}/one", f"bob@{DOMAIN}/two"})
                # show: one user's sessions, by query (GET) or body (POST); the domain is appended
                ans = await in_thread(self.ok, "GET", "/admin/sessions?jid=alice")
                self.assertEqual([s["jid"] for s in ans["sessions"]], [f"alice@{DOMAIN}/one"])
                self.assertEqual(ans["sessions"][0]["state"], "bound")
                ans = await in_thread(self.ok, "POST", "/admin/sessions", {"jid": f"bob@{DOMAIN}/two"})
                self.assertEqual([s["jid"] for s in ans["sessions"]], [f"bob@{DOMAIN}/two"])
                st, ans = await in_thread(call, self.http, "GET", "/admin/sessions?jid=carol")
                self.assertEqual(st, 400)
                self.assertIn(f"no session of carol@{DOMAIN}", ans["error"])
                st, ans = await in_thread(call, self.http, "GET", "/admin/sessions?user=alice")
                self.assertEqual(st, 400)
                self.assertIn("does not take", ans["error"])
            finally:
                await a.close()
                await b.close()
        run(go())

    def test_kick_ends_the_session(self):
        async def go():
            c = Client(self.srv, f"carol@{DOMAIN}/k", "pw")
            gone = asyncio.get_running_loop().create_future()
            c.add_event_handler("disconnected", lambda e: gone.done() or gone.set_result(True))
            self.assertTrue(await c.login())
            ans = await in_thread(self.ok, "POST", "/admin/kick", {"jid": f"carol@{DOMAIN}/k", "text": "bye now"})
            self.assertEqual(ans["kicked"], [f"carol@{DOMAIN}/k"])
            err = await asyncio.wait_for(c.stream_errors.get(), 10)
            self.assertEqual(err["condition"], "policy-violation")
            self.assertEqual(err["text"], "bye now")
            await asyncio.wait_for(gone, 10)
            ans = await in_thread(self.ok, "GET", "/admin/sessions")
            self.assertNotIn(f"carol@{DOMAIN}/k", {s["jid"] for s in ans["sessions"]})
            st, ans = await in_thread(call, self.http, "POST", "/admin/kick", {"jid": f"carol@{DOMAIN}/k"})
            self.assertEqual(st, 400)
            self.assertIn("no session of", ans["error"])
        run(go())

    def test_broadcast_reaches_slixmpp_and_aioxmpp(self):
        async def go():
            slix = Client(self.srv, f"alice@{DOMAIN}/bc", "pw")
            self.assertTrue(await slix.login())
            _, aio = aioxmpp_client(self.srv, f"dave@{DOMAIN}/aio")
            got = asyncio.Queue()

            def catch(msg):
                got.put_nowait(msg)
                return msg
            aio.stream.app_inbound_message_filter.register(catch, 0)
            try:
                async with aio.connected():
                    text = "maintenance at noon \u00fcn\u00efcode \"quoted\"\nsecond line"
                    # JSON escapes in the body: \n is a control character, refused as on the socket
                    st, ans = await in_thread(call, self.http, "POST", "/admin/broadcast", {"text": text})
                    self.assertEqual(st, 400)
                    self.assertIn("not UTF-8 text without control characters", ans["error"])
                    text = text.replace("\n", " ")
                    ans = await in_thread(self.ok, "POST", "/admin/broadcast", {"text": text})
                    self.assertGreaterEqual(ans["count"], 2)
                    m = await slix.next_message(pred=lambda m: m["type"] == "headline", timeout=10)
                    self.assertEqual(m["body"], text)
                    self.assertEqual(str(m["from"]), DOMAIN)
                    while True:
                        a = await asyncio.wait_for(got.get(), 10)
                        if a.type_ == aioxmpp.MessageType.HEADLINE:
                            break
                    self.assertEqual(a.body.any(), text)
            finally:
                await slix.close()
        run(go())

    def test_user_create_passwd_delete(self):
        async def login(jid, pw):
            c = Client(self.srv, jid, pw)
            try:
                return await c.login()
            finally:
                await c.close()

        async def go():
            jid = f"newbie@{DOMAIN}"
            self.assertFalse(await login(jid, "first-pass"))
            ans = await in_thread(self.ok, "POST", "/admin/adduser", {"password": "first-pass", "jid": "newbie"})
            self.assertEqual(ans["jid"], jid)
            self.assertTrue(await login(jid + "/a", "first-pass"))
            st, ans = await in_thread(call, self.http, "POST", "/admin/adduser", {"jid": jid, "password": "x1234567"})
            self.assertEqual(st, 400)
            self.assertIn("already exists", ans["error"])
            await in_thread(self.ok, "POST", "/admin/passwd", {"jid": jid, "password": "second-pass"})
            self.assertFalse(await login(jid + "/b", "first-pass"))
            self.assertTrue(await login(jid + "/c", "second-pass"))
            await in_thread(self.ok, "POST", "/admin/deluser", {"jid": jid})
            self.assertFalse(await login(jid + "/d", "second-pass"))
            st, ans = await in_thread(call, self.http, "POST", "/admin/deluser", {"jid": jid})
            self.assertEqual(st, 400)
            self.assertIn("no such user", ans["error"])
            st, ans = await in_thread(call, self.http, "POST", "/admin/passwd", {"jid": jid, "password": "x1234567"})
            self.assertEqual(st, 400)
            self.assertIn("no such user", ans["error"])
        run(go())
        log = self.srv.log_text()
        # the password never reaches the log
        self.assertNotIn("first-pass", log)
        self.assertNotIn("second-pass", log)
        self.assertRegex(log, r'audit: via=http peer=127\.0\.0\.1:\d+ command=adduser args=\["newbie","\*\*\*"\] '
                              r'result=ok detail="created"')
        self.assertRegex(log, r'audit: via=http peer=127\.0\.0\.1:\d+ command=deluser args=\["newbie@localhost"\] '
                              r'result=ok detail="deleted"')

    def test_user_commands_on_the_control_socket_too(self):
        """One implementation, two transports: the socket runs the same adduser."""
        path = os.path.join(self.srv.dir, "xmppd.db.ctl")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.sendall(b"adduser\tsockuser\tsock-pass-1\n")
        ans = json.loads(s.makefile().readline())
        s.close()
        self.assertEqual(ans, {"ok": True, "jid": f"sockuser@{DOMAIN}"})

        async def go():
            c = Client(self.srv, f"sockuser@{DOMAIN}/x", "sock-pass-1")
            try:
                self.assertTrue(await c.login())
            finally:
                await c.close()
        run(go())
        self.assertRegex(self.srv.log_text(), r'audit: uid=\d+ pid=\d+ command=adduser args=\["sockuser","\*\*\*"\]')

    def test_token_required_on_every_route(self):
        routes = [("GET", "/admin/status", None), ("GET", "/admin/sessions", None), ("GET", "/admin/cluster", None),
                  ("POST", "/admin/status", {}), ("POST", "/admin/sessions", {}), ("POST", "/admin/cluster", {}),
                  ("POST", "/admin/kick", {"jid": f"alice@{DOMAIN}"}), ("POST", "/admin/broadcast", {"text": "x"}),
                  ("POST", "/admin/adduser", {"jid": "intruder", "password": "intruder-pw"}),
                  ("POST", "/admin/passwd", {"jid": "alice", "password": "intruder-pw"}),
                  ("POST", "/admin/deluser", {"jid": "bob"}), ("GET", "/admin/nosuch", None), ("GET", "/", None)]
        wrong = [None, "", TOKEN[:-1], TOKEN + "x", TOKEN[:-1] + "X", TOKEN.upper()]
        for method, path, body in routes:
            for tok in wrong:
                st, ans = call(self.http, method, path, body, token=tok)
                self.assertEqual(st, 401, (method, path, tok, ans))
                self.assertIs(ans["ok"], False)
        # a scheme other than Bearer
        st, _ = call(self.http, "GET", "/admin/status", token=None, headers={"Authorization": "Basic " + TOKEN})
        self.assertEqual(st, 401)
        # nothing happened: bob still logs in with his password, alice's is unchanged, no intruder
        async def go():
            for jid, pw, want in ((f"bob@{DOMAIN}/t", "pw", True), (f"alice@{DOMAIN}/t", "pw", True),
                                  (f"intruder@{DOMAIN}/t", "intruder-pw", False)):
                c = Client(self.srv, jid, pw)
                try:
                    self.assertEqual(await c.login(), want, jid)
                finally:
                    await c.close()
        run(go())
        log = self.srv.log_text()
        denied = [l for l in log.splitlines() if "result=denied" in l and "via=http" in l]
        self.assertGreaterEqual(len(denied), len(routes) * len(wrong) + 1)
        self.assertRegex(log, r'audit: via=http peer=127\.0\.0\.1:\d+ command=- args=\[\] result=denied '
                              r'detail="no bearer token \(POST /admin/deluser\)"')
        self.assertRegex(log, r'audit: via=http peer=127\.0\.0\.1:\d+ command=- args=\[\] result=denied '
                              r'detail="wrong bearer token \(GET /admin/status\)"')
        self.assertNotIn("intruder", "\n".join(l for l in log.splitlines() if "result=ok" in l))

    def test_methods_and_bad_bodies(self):
        st, ans = call(self.http, "GET", "/admin/kick")
        self.assertEqual(st, 405)
        st, ans = call(self.http, "DELETE", "/admin/status")
        self.assertEqual(st, 405)
        st, ans = call(self.http, "GET", "/admin/nosuch")
        self.assertEqual(st, 404)
        for body in (b"[]", b'{"text":1}', b'{"text":"a"', b'{"text":"a"} x', b'{"text":"a","text":"b"}',
                     b'{"texts":"a"}', b'{"text":"\\ud800"}', b'{"text":"a\\u0000b"}', b"\xff"):
            st, ans = call(self.http, "POST", "/admin/broadcast", body)
            self.assertEqual(st, 400, body)
            self.assertIs(ans["ok"], False)
        # JSON escapes are decoded: a surrogate pair and \/ make the text of the broadcast
        ans = self.ok("POST", "/admin/broadcast", b'{"text":"smile \\ud83d\\ude00 a\\/b"}')
        self.assertIn('args=["smile \U0001F600 a/b"]', self.srv.log_text())

    def test_body_cap(self):
        # at admin.max_body: read and parsed; one byte more: 413, by Content-Length or chunked
        pad = MAX_BODY - len(json.dumps({"text": ""}).encode())
        body = json.dumps({"text": "y" * pad}).encode()
        self.assertEqual(len(body), MAX_BODY)
        self.assertEqual(self.ok("POST", "/admin/broadcast", body)["count"] >= 0, True)
        big = json.dumps({"text": "y" * (pad + 1)}).encode()
        st, ans = call(self.http, "POST", "/admin/broadcast", big)
        self.assertEqual(st, 413)
        self.assertIn("admin.max_body", ans["error"])
        # chunked, without a length: refused once past the cap
        c = http.client.HTTPConnection("127.0.0.1", self.http, timeout=20)
        c.request("POST", "/admin/broadcast", body=iter([big[:600], big[600:]]),
                  headers={"Authorization": "Bearer " + TOKEN}, encode_chunked=True)
        r = c.getresponse()
        self.assertEqual(r.status, 413)
        c.close()
        # a declared length far over the cap is refused before anything is read
        s = socket.create_connection(("127.0.0.1", self.http), timeout=10)
        s.sendall(f"POST /admin/broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"Content-Length: 1000000000\r\n\r\n".encode())
        self.assertIn(b" 413 ", s.recv(4096).split(b"\r\n")[0] + b" ")
        s.close()

    def test_connection_cap(self):
        """admin.max_clients = 3: with 2 idle connections a third is served, with 3 the
        fourth gets 503; once one goes, the next is served again."""
        idle = []
        try:
            for _ in range(MAX_CLIENTS - 1):
                idle.append(socket.create_connection(("127.0.0.1", self.http), timeout=10))
            st, ans = call(self.http, "GET", "/admin/status")
            self.assertEqual(st, 200, ans)
            idle.append(socket.create_connection(("127.0.0.1", self.http), timeout=10))
            st, ans = call(self.http, "GET", "/admin/status")
            self.assertEqual(st, 503, ans)
            self.assertIn("admin.max_clients", ans["error"])
            idle.pop().close()
            end = time.monotonic() + 10
            while True:  # the close is seen by the server's thread a moment later
                st, ans = call(self.http, "GET", "/admin/status")
                if st == 200 or time.monotonic() > end:
                    break
                time.sleep(0.05)
            self.assertEqual(st, 200, ans)
        finally:
            for s in idle:
                s.close()


class AdminStopTest(unittest.TestCase):
    def test_stop_while_a_request_waits(self):
        """SIGTERM while adduser derives its keys (10^6 PBKDF2 iterations, twice): the
        waiting request is answered (503, or 200 when the job won the race) or its
        connection closed, the job ends before the dispatcher goes, and the server exits
        0 (under ASan: no use after free, no leak)."""
        port = free_port()
        srv = Server(**{"admin.listen": f"127.0.0.1:{port}", "admin.token": TOKEN,
                        "storage.scram_iterations": "1000000"})
        try:
            srv.start()
            wait_port(port)
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("POST", "/admin/adduser", body=json.dumps({"jid": "slow", "password": "slow-pass"}).encode(),
                      headers={"Authorization": "Bearer " + TOKEN})
            # the request is in: its job runs (the audit line comes only with the answer)
            time.sleep(0.3)
            srv.proc.send_signal(15)
            try:
                r = c.getresponse()
                status, body = r.status, json.loads(r.read())
                self.assertIn(status, (200, 503), body)
                if status == 503:
                    self.assertEqual(body["error"], "the server is stopping")
            except (http.client.RemoteDisconnected, ConnectionResetError):
                pass  # closed by the stop before an answer
            c.close()
            self.assertEqual(srv.proc.wait(30), 0, srv.log_text())  # one SIGTERM: a second would kill it
        finally:
            self.assertEqual(srv.stop(), 0, srv.log_text())
            shutil.rmtree(srv.dir, ignore_errors=True)


class ControlRefusedClosedTest(ServerTest):
    """A control connection refused as it comes (past server.control_max_clients) holds
    no slot, even while its client keeps it open, and the server closes it within a
    second (CONTROL_REFUSED_MS), not after the 10 s a served connection may idle."""
    server_options = {"server.control_max_clients": "2"}

    def test_refused_connection_holds_no_slot(self):
        path = os.path.join(self.srv.dir, "xmppd.db.ctl")

        def connect():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(path)
            return s

        def status(s):
            try:
                s.sendall(b"status\n")
            except BrokenPipeError:
                pass  # refused and closed at once: its answer is still there to read
            line = s.makefile().readline()
            return json.loads(line) if line else {"ok": False, "error": "closed without an answer"}
        held = [connect(), connect()]
        refused = []
        try:
            # the third is refused (retried until the server has accepted the first two)
            end = time.monotonic() + 10
            while True:
                r = connect()
                refused.append(r)
                ans = json.loads(r.makefile().readline())
                if not ans["ok"] or time.monotonic() > end:
                    break
            self.assertIn("server.control_max_clients = 2", ans["error"])
            # more refused ones, kept open here: still no slot for them
            for _ in range(3):
                x = connect()
                refused.append(x)
                self.assertIn("too many", json.loads(x.makefile().readline())["error"])
            # one held connection goes: a new one is served, the refused ones still open here
            held.pop().close()
            end = time.monotonic() + 5
            while True:
                s = connect()
                ans = status(s)
                s.close()
                if ans["ok"] or time.monotonic() > end:
                    break
                time.sleep(0.05)
            self.assertIs(ans["ok"], True, ans)
            # the server has closed the refused one (a write fails) well before 10 s
            t0 = time.monotonic()
            while True:
                try:
                    r.sendall(b"x")
                except (BrokenPipeError, ConnectionResetError):
                    break
                self.assertLess(time.monotonic() - t0, 5, "the refused connection is still open")
                time.sleep(0.05)
        finally:
            for s in held + refused:
                s.close()


class AdminConfigTest(unittest.TestCase):
    def check(self, *sets):
        srv = Server()  # its configuration file (certificate, ports), never started
        try:
            args = [XMPPD, "-c", srv.conf, "--check-config"]
            for s in sets:
                args += ["--set", s]
            return subprocess.run(args, capture_output=True, text=True, timeout=30)
        finally:
            shutil.rmtree(srv.dir, ignore_errors=True)

    def test_token_required(self):
        r = self.check("admin.listen=127.0.0.1:5999")
        self.assertEqual(r.returncode, 2)
        self.assertIn("admin.token must be set, at least 16 bytes", r.stderr)
        r = self.check("admin.listen=127.0.0.1:5999", "admin.token=" + "a" * 15)
        self.assertEqual(r.returncode, 2)
        r = self.check("admin.listen=127.0.0.1:5999", "admin.token=" + "a" * 16)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.check("admin.listen=localhost:5999", "admin.token=" + "a" * 16)
        self.assertEqual(r.returncode, 2)
        self.assertIn("admin.listen", r.stderr)

    def test_http_alone_without_control_socket(self):
        port = free_port()
        srv = Server(**{"server.control_socket": "", "admin.listen": f"127.0.0.1:{port}", "admin.token": TOKEN})
        try:
            srv.start()
            wait_port(port)
            st, ans = call(port, "GET", "/admin/status")
            self.assertEqual(st, 200, ans)
            self.assertEqual(ans["pid"], srv.proc.pid)
            self.assertFalse(os.path.exists(os.path.join(srv.dir, "xmppd.db.ctl")))
        finally:
            self.assertEqual(srv.stop(), 0, srv.log_text())
            shutil.rmtree(srv.dir, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()


class AdminHttpsTest(unittest.TestCase):
    """admin.tls_cert / admin.tls_key: the API speaks HTTPS only (TLS 1.2 and 1.3, GnuTLS
    through libmicrohttpd), with its own certificate; Python's OpenSSL client checks it."""

    def test_https_only_with_its_certificate(self):
        d = tempfile.mkdtemp(prefix="xmppd-admin-tls-")
        cert, key = self_signed(d, "admin.localhost", "admin-")
        port = free_port()
        srv = Server(**{"admin.listen": f"127.0.0.1:{port}", "admin.token": TOKEN,
                        "admin.tls_cert": cert, "admin.tls_key": key})
        srv.adduser(f"alice@{DOMAIN}", "pw")
        srv.start()
        try:
            wait_port(port)
            end = time.monotonic() + 10  # logged once libmicrohttpd's start returned, maybe after its listen
            while f"admin API: https://127.0.0.1:{port}/admin/" not in srv.log_text() and time.monotonic() < end:
                time.sleep(0.05)
            self.assertIn(f"admin API: https://127.0.0.1:{port}/admin/", srv.log_text())
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                ctx = ssl.create_default_context(cafile=cert)  # this certificate and no other
                ctx.check_hostname = False
                ctx.minimum_version = ctx.maximum_version = version
                st, ans = call(port, "GET", "/admin/status", tls=ctx)
                self.assertEqual((st, ans["ok"], ans["pid"]), (200, True, srv.proc.pid), version)
                st, ans = call(port, "GET", "/admin/status", token="wrong-token-0123456789", tls=ctx)
                self.assertEqual(st, 401)
            # a changing command over TLS, seen by a real client
            ctx = ssl.create_default_context(cafile=cert)
            ctx.check_hostname = False
            st, ans = call(port, "POST", "/admin/adduser", {"jid": "erin", "password": "pw2"}, tls=ctx)
            self.assertEqual(st, 200, ans)

            async def login():
                c = Client(srv, f"erin@{DOMAIN}/x", "pw2")
                await c.login()
                await c.close()
            run(login())
            # the server's client certificate is not the admin one: the client checked it
            other = ssl.create_default_context(cafile=srv.cert)
            other.check_hostname = False
            with self.assertRaises(ssl.SSLCertVerificationError):
                call(port, "GET", "/admin/status", tls=other)
            # plain HTTP to the TLS port gets no answer
            with self.assertRaises((http.client.RemoteDisconnected, http.client.BadStatusLine,
                                    ConnectionResetError)):
                call(port, "GET", "/admin/status")
            self.assertTrue(srv.alive())
        finally:
            self.assertEqual(srv.stop(), 0)
            shutil.rmtree(d, ignore_errors=True)

    def test_bad_tls_settings_refused_at_start(self):
        d = tempfile.mkdtemp(prefix="xmppd-admin-tls-")
        cert, key = self_signed(d, "admin.localhost", "admin-")
        other_cert, other_key = self_signed(d, "other.localhost", "other-")
        with open(os.path.join(d, "junk.pem"), "w") as f:
            f.write("not a key\n")
        cases = [
            ({"admin.tls_cert": cert}, "admin.tls_cert and admin.tls_key must be set together"),
            ({"admin.tls_cert": cert, "admin.tls_key": os.path.join(d, "missing.pem")},
             "admin.tls_key: cannot read"),
            ({"admin.tls_cert": cert, "admin.tls_key": os.path.join(d, "junk.pem")}, "is not PEM"),
            ({"admin.tls_cert": cert, "admin.tls_key": other_key},
             "admin.tls_cert and admin.tls_key are not a certificate and its key"),
        ]
        try:
            for opts, why in cases:
                srv = Server(**{"admin.listen": f"127.0.0.1:{free_port()}", "admin.token": TOKEN, **opts})
                try:  # refused by the configuration's check, or when the endpoint starts
                    srv.start()
                    srv.proc.wait(10)
                except RuntimeError:
                    pass
                self.assertNotEqual(srv.stop(), 0, opts)
                self.assertIn(why, srv.log_text(), opts)
        finally:
            shutil.rmtree(d, ignore_errors=True)
