"""xmppd on the Redis back-end (storage.backend = redis), against a redis-server this test
starts itself on a free loopback port in a temp dir (AOF on, so that restarting Redis keeps
the data; never the system service): log-in, roster, offline messages across an xmppd
restart, xmppctl populate/adduser/deluser, and Redis going away and coming back while
xmppd runs. A missing redis-server fails these tests (it does not skip them)."""
import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

from harness import XMPPCTL, Client, RawStream, Redis, Server, free_port, resp, run, wait_routed

def ctl(srv, *args, stdin=None):
    return subprocess.run([XMPPCTL, "-c", srv.conf, *args], capture_output=True, text=True,
                          input=stdin, timeout=120)


async def login(srv, jid, pw="pw"):
    c = Client(srv, jid, pw)
    assert await c.login(), f"login {jid}"
    await c.get_roster()
    c.send_presence()
    return c


def plain_auth_reply(srv, user, password):
    """Raw STARTTLS + SASL PLAIN; returns the server's answer to <auth/>."""
    import base64
    r = RawStream(srv.port)
    try:
        r.starttls()
        r.open_stream()
        r.recv_until(r"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        r.buf = b""
        r.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        return r.recv_until(r"<success|</failure>")
    finally:
        r.close()


class RedisStoreTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        cls.redis.start()
        cls.srv = Server(**{"storage.backend": "redis",
                            "storage.redis": f"127.0.0.1:{cls.redis.port}",
                            "limits.auth_fail_ip": "1000",
                            "server.log_level": "debug"})
        for u in ("alice", "bob", "carol"):
            cls.srv.adduser(f"{u}@localhost", "pw")
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

    def test_accounts_live_in_redis_not_sqlite(self):
        self.assertFalse(os.path.exists(os.path.join(self.srv.dir, "xmppd.db")))
        self.assertEqual(resp(self.redis.port, "EXISTS", "{u:alice@localhost}:a"), b":1\r\n")
        # SCRAM credentials only: the password is nowhere in Redis
        dump = resp(self.redis.port, "HGETALL", "{u:alice@localhost}:a")
        self.assertIn(b"sha256_stored", dump)
        self.assertEqual(ctl(self.srv, "adduser", "judy", "a-very-secret-pw").returncode, 0)
        aof = b""
        for root, _, files in os.walk(self.redis.dir):
            for f in files:
                if "aof" in f:
                    with open(os.path.join(root, f), "rb") as fh:
                        aof += fh.read()
        self.assertIn(b"{u:alice@localhost}:a", aof, "AOF is on and holds the accounts")
        self.assertIn(b"{u:judy@localhost}:a", aof)
        self.assertNotIn(b"a-very-secret-pw", aof)

    def test_roster_and_offline_across_xmppd_restart(self):
        async def before():
            a = await login(self.srv, "alice@localhost/a")
            await a.update_roster("zed@localhost", name="Zed", groups=["Friends", "a,b"])
            a.send_message(mto="bob@localhost", mbody="kept in redis", mtype="chat")
            a.send_message(mto="bob@localhost", mbody="second", mtype="chat")
            await wait_routed(a, "bob@localhost")  # both stored
            await a.close()
        run(before())
        self.assertEqual(resp(self.redis.port, "LLEN", "{u:bob@localhost}:o"), b":2\r\n")
        self.assertEqual(self.srv.stop(), 0, self.srv.log_text())
        self.srv.start()

        async def after():
            b = await login(self.srv, "bob@localhost/b")
            m1 = await b.next_message()
            m2 = await b.next_message()
            self.assertEqual([m1["body"], m2["body"]], ["kept in redis", "second"])
            self.assertIn("urn:xmpp:delay", str(m1))
            a = await login(self.srv, "alice@localhost/a")
            r = await a.full_roster()
            item = r["roster"]["items"]["zed@localhost"]
            self.assertEqual(item["name"], "Zed")
            self.assertEqual(sorted(item["groups"]), ["Friends", "a,b"])
            await a.close()
            await b.close()
        run(after())
        self.assertEqual(resp(self.redis.port, "EXISTS", "{u:bob@localhost}:o"), b":0\r\n")

    def test_login_storm_rosters_read_ahead(self):
        """40 users in groups of 4 mutual contacts log in at once: their routers read the
        rosters of a batch of binds in one go (roster_prefetch), and the offline queue
        lengths of a batch of initial presences (offline_prefetch). Every client gets its
        exact roster, the presence of each of its 3 contacts, and its offline messages
        (every third user has two)."""
        self.assertEqual(ctl(self.srv, "populate", "storm", "40", "pw", "--roster", "3").returncode, 0)

        async def leave_offline():
            a = await login(self.srv, "carol@localhost/c")
            for i in range(1, 41, 3):
                for k in (1, 2):
                    a.send_message(mto=f"storm{i}@localhost", mbody=f"offline {i} {k}", mtype="chat")
            await wait_routed(a, *(f"storm{i}@localhost" for i in range(1, 41, 3)))
            await a.close()
        run(leave_offline())

        async def one(i):
            c = Client(self.srv, f"storm{i}@localhost/r", "pw")
            assert await c.login(), f"storm{i}"
            return c

        async def go():
            cs = await asyncio.gather(*(one(i) for i in range(1, 41)))
            seen = {i: set() for i in range(1, 41)}
            bodies = {i: [] for i in range(1, 41)}
            for i, c in enumerate(cs, 1):
                c.add_event_handler("presence_available",
                                    lambda p, i=i: seen[i].add(p["from"].bare))
                c.add_event_handler("message", lambda m, i=i: bodies[i].append(m["body"]))
            rosters = await asyncio.gather(*(c.full_roster() for c in cs))
            for c in cs:
                c.send_presence()
            for i, r in enumerate(rosters, 1):
                first = (i - 1) // 4 * 4 + 1
                want = {f"storm{k}@localhost" for k in range(first, first + 4) if k != i}
                items = r["roster"]["items"]
                self.assertEqual(set(items), want, f"roster of storm{i}")
                self.assertTrue(all(items[j]["subscription"] == "both" for j in items))
            deadline = time.time() + 15
            while time.time() < deadline and any(len(seen[i]) < 3 for i in seen):
                await asyncio.sleep(0.1)
            missing = {i: 3 - len(seen[i]) for i in seen if len(seen[i]) < 3}
            self.assertEqual(missing, {}, "presences missing")
            want = {i: [f"offline {i} 1", f"offline {i} 2"] if i % 3 == 1 else [] for i in bodies}
            deadline = time.time() + 10
            while time.time() < deadline and bodies != want:
                await asyncio.sleep(0.1)
            self.assertEqual(bodies, want, "offline messages")
            for c in cs:
                await c.close()
        run(go())
        self.assertRegex(self.srv.log_text(), r"rosters read ahead in one batch")
        self.assertRegex(self.srv.log_text(), r"offline queues read ahead in one batch")

    def test_xmppctl_populate_adduser_deluser(self):
        srv = self.srv
        r = ctl(srv, "populate", "pop", "300", "secret", "--roster", "4")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("300 accounts (300 created", r.stdout)
        r = ctl(srv, "populate", "pop", "300", "secret2")
        self.assertIn("300 updated", r.stdout)
        users = ctl(srv, "listusers").stdout.split()
        self.assertEqual(len([u for u in users if u.startswith("pop")]), 300)
        self.assertEqual(users, sorted(users))
        self.assertEqual(ctl(srv, "checkpassword", "pop7", "secret2").returncode, 0)
        self.assertEqual(ctl(srv, "adduser", "ivan", "ivan-pw").returncode, 0)
        r = ctl(srv, "adduser", "ivan", "again")
        self.assertEqual(r.returncode, 1)
        self.assertIn("exists", r.stderr)

        async def go():
            c = await login(srv, "pop7@localhost/x", "secret2")
            roster = await c.full_roster()
            self.assertEqual(len(roster["roster"]["items"]), 4)
            await c.close()
            i = await login(srv, "ivan@localhost/x", "ivan-pw")
            await i.close()
        run(go())
        self.assertEqual(ctl(srv, "deluser", "ivan").returncode, 0)
        r = ctl(srv, "deluser", "ivan")
        self.assertEqual(r.returncode, 1)
        self.assertIn("no such user", r.stderr)
        self.assertNotIn("ivan@localhost", ctl(srv, "listusers").stdout.split())
        self.assertEqual(resp(self.redis.port, "EXISTS", "{u:ivan@localhost}:a"), b":0\r\n")

    def test_redis_restart_while_running(self):
        self.redis.stop()
        try:
            # Down: authentication is a temporary failure, not a crash, not "not-authorized".
            for _ in range(2):
                text = plain_auth_reply(self.srv, "carol", "pw")
                self.assertIn("<temporary-auth-failure/>", text)
            self.assertTrue(self.srv.alive(), self.srv.log_text())
        finally:
            self.redis.start()  # same port, same AOF

        async def go():
            c = await login(self.srv, "carol@localhost/back")
            c.send_message(mto="alice@localhost", mbody="after the outage", mtype="chat")
            await wait_routed(c, "alice@localhost")  # stored in Redis
            await c.close()
            a = await login(self.srv, "alice@localhost/z")
            m = await a.next_message(pred=lambda m: m["body"] == "after the outage")
            self.assertIn("urn:xmpp:delay", str(m), "from offline storage")
            await a.close()
        run(go())
        # the outage was logged (once per handle that met it); which edge thread took the
        # connections, and so which handles saw the outage, is the kernel's choice
        self.assertIn("will retry on the next call", self.srv.log_text())


if __name__ == "__main__":
    unittest.main()
