"""The Redis store on a real Redis Cluster (3 primaries + 3 replicas started by the test,
`redis-cli --cluster create`) and behind Sentinel (1 primary, 1 replica, 3 sentinels):
slot routing, MOVED and ASK during a slot migration while xmppd runs, a primary killed
under load (its replica promoted), CLUSTERDOWN answered with bounded retries then a
clear error, a Sentinel failover followed (docs/storage-redis.md, "Redis Cluster" and
"Sentinel"). A missing redis-server fails these tests (it does not skip them)."""
import asyncio
import subprocess
import time
import unittest

from harness import (XMPPCTL, Client, RedisCluster, RedisSentinel, Server, resp, resp_text, run,
                     wait_routed)
from test_redis_store import plain_auth_reply


def ctl(srv, *args):
    return subprocess.run([XMPPCTL, "-c", srv.conf, *args], capture_output=True, text=True, timeout=120)


async def login(srv, jid, pw="pw"):
    c = Client(srv, jid, pw)
    assert await c.login(timeout=30), f"login {jid}"
    await c.get_roster()
    c.send_presence()
    return c


def user_slot(cl, user):
    return cl.keyslot("{u:%s@localhost}:a" % user)


class ClusterStoreTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cl = RedisCluster()
        try:
            cls.cl.start()
        except Exception:
            cls.cl.stop()
            raise
        cls.srv = Server(**{"storage.backend": "redis", "storage.redis": cls.cl.addr(),
                            "limits.auth_fail_ip": "1000"})
        cls.users = [f"u{i}" for i in range(1, 13)] + ["alice", "bob", "carol", "dave"]
        # xmppctl writes through the same store: accounts land on every primary
        r = ctl(cls.srv, "populate", "u", "12", "pw")
        assert r.returncode == 0, r.stdout + r.stderr
        for u in ("alice", "bob", "carol", "dave"):
            cls.srv.adduser(f"{u}@localhost", "pw")
        cls.srv.start()

    @classmethod
    def tearDownClass(cls):
        try:
            assert cls.srv.stop() == 0, cls.srv.log_text()
        finally:
            cls.cl.stop()
            cls.cl.cleanup()

    def tearDown(self):
        self.assertTrue(self.srv.alive(), self.srv.log_text())

    def test_keys_spread_over_the_primaries_by_slot(self):
        """Each account is on the primary that serves its slot (no MOVED left behind: the
        client hashed it as Redis does), and the accounts are on more than one primary."""
        holders = set()
        for u in self.users:
            slot = user_slot(self.cl, u)
            owner = self.cl.owner(slot)
            self.assertEqual(resp(owner["port"], "EXISTS", "{u:%s@localhost}:a" % u), b":1\r\n", u)
            holders.add(owner["port"])
        self.assertGreaterEqual(len(holders), 2, "all accounts on one primary")

    def test_login_roster_offline_messages(self):
        async def go():
            a = await login(self.srv, "alice@localhost/a")
            b = await login(self.srv, "bob@localhost/b")
            a.update_roster("bob@localhost", name="Bob", groups=["g"])
            await asyncio.sleep(0)
            roster = await a.get_roster()
            self.assertIn("bob@localhost", roster["roster"]["items"])
            b.send_message(mto="alice@localhost", mbody="live", mtype="chat")
            m = await a.next_message(pred=lambda m: m["body"] == "live", timeout=10)
            self.assertEqual(m["body"], "live")
            for k in range(3):
                a.send_message(mto="carol@localhost", mbody=f"offline {k}", mtype="chat")
            await wait_routed(a, "carol@localhost")
            c = await login(self.srv, "carol@localhost/c")
            got = [(await c.next_message(timeout=10))["body"] for _ in range(3)]
            self.assertEqual(got, ["offline 0", "offline 1", "offline 2"])
            for x in (a, b, c):
                await x.close()
        run(go())
        # the accounts index (its own slot) lists every user
        r = ctl(self.srv, "listusers")
        self.assertEqual(r.returncode, 0, r.stderr)
        for u in self.users:
            self.assertIn(f"{u}@localhost", r.stdout)

    def test_slot_migration_while_running(self):
        """dave's slot moves to another primary while xmppd runs: while the slot is
        MIGRATING/IMPORTING with dave's keys already moved, the old owner answers ASK
        (ASKING + the new owner); after CLUSTER SETSLOT NODE it answers MOVED (the map is
        updated). Log-ins, the roster and offline messages work through both."""
        slot = user_slot(self.cl, "dave")
        src = self.cl.owner(slot)
        dst = next(n for n in self.cl.nodes() if "master" in n["flags"] and n["id"] != src["id"])

        async def leave(body):
            a = await login(self.srv, "alice@localhost/m")
            a.send_message(mto="dave@localhost", mbody=body, mtype="chat")
            await wait_routed(a, "dave@localhost")
            await a.close()

        async def read(bodies):
            d = await login(self.srv, "dave@localhost/d")
            got = [(await d.next_message(timeout=10))["body"] for _ in bodies]
            self.assertEqual(got, bodies)
            await d.close()

        run(leave("before the move"))
        self.assertEqual(resp(dst["port"], "CLUSTER", "SETSLOT", slot, "IMPORTING", src["id"]), b"+OK\r\n")
        self.assertEqual(resp(src["port"], "CLUSTER", "SETSLOT", slot, "MIGRATING", dst["id"]), b"+OK\r\n")
        keys = resp(src["port"], "CLUSTER", "GETKEYSINSLOT", slot, 100).split(b"\r\n")
        keys = [k.decode() for k in keys[2::2] if k]
        self.assertIn("{u:dave@localhost}:a", keys)
        self.assertEqual(resp(src["port"], "MIGRATE", "127.0.0.1", dst["port"], "", 0, 5000, "KEYS", *keys),
                         b"+OK\r\n")
        # the ASK window: dave's keys are on dst, the slot still src's
        self.assertTrue(resp(src["port"], "EXISTS", "{u:dave@localhost}:a").startswith(b"-ASK "))
        run(leave("during the move"))
        run(read(["before the move", "during the move"]))
        # the end of the move: every primary learns the new owner; the client meets MOVED
        for n in self.cl.nodes():
            if "master" in n["flags"]:
                resp(n["port"], "CLUSTER", "SETSLOT", slot, "NODE", dst["id"])
        deadline = time.time() + 10
        while time.time() < deadline and self.cl.owner(slot)["id"] != dst["id"]:
            time.sleep(0.1)
        self.assertEqual(self.cl.owner(slot)["id"], dst["id"])
        run(leave("after the move"))
        run(read(["after the move"]))
        self.assertEqual(resp(dst["port"], "EXISTS", "{u:dave@localhost}:a"), b":1\r\n")

    def test_z_primary_killed_under_load(self):
        """Messages to offline users stream in while the primary serving carol's slot is
        killed (SIGKILL); its replica is promoted after cluster-node-timeout. Every message
        the server accepted (no error came back) is in carol's offline queue afterwards;
        messages refused with an error during the failover are allowed, none silently
        lost."""
        slot = user_slot(self.cl, "carol")
        victim = self.cl.owner(slot)
        n = 60
        errors = set()

        async def go():
            a = await login(self.srv, "alice@localhost/load")
            a.add_event_handler("message_error", lambda m: errors.add(m["body"] or m["id"]))
            for k in range(n):
                a.send_message(mto="carol@localhost", mbody=f"load {k}", mtype="chat")
                if k == 10:
                    await wait_routed(a, "carol@localhost")
                    self.cl.kill(victim["port"])
                await asyncio.sleep(0.05)
            await wait_routed(a, "carol@localhost")
            await a.close()
        run(go())
        self.cl.wait_ok(ports=[p for p in self.cl.live_ports()])
        self.assertNotEqual(self.cl.owner(slot)["port"], victim["port"], "the replica was promoted")

        async def read():
            c = await login(self.srv, "carol@localhost/after")
            got = []
            try:
                while True:
                    got.append((await c.next_message(timeout=3))["body"])
            except asyncio.TimeoutError:
                pass
            await c.close()
            return got
        got = run(read())
        accepted = [f"load {k}" for k in range(n) if f"load {k}" not in errors]
        self.assertEqual([b for b in got if b.startswith("load ")], accepted,
                         f"errors during the failover: {sorted(errors)}")
        self.assertLessEqual(len(errors), 5, "the failover was not waited out")


class ClusterDownTest(unittest.TestCase):
    """A primary and its replica both gone: the cluster says CLUSTERDOWN to every command.
    A log-in gets <temporary-auth-failure/> after the bounded retries (not a hang, not a
    crash), and works again once the cluster is whole."""

    def test_clusterdown_then_back(self):
        cl = RedisCluster(aof=True)
        srv = None
        try:
            cl.start()
            srv = Server(**{"storage.backend": "redis", "storage.redis": cl.addr(),
                            "limits.auth_fail_ip": "1000", "limits.auth_fail_account": "1000"})
            srv.adduser("erin@localhost", "pw")
            srv.start()
            self.assertIn("<success", plain_auth_reply(srv, "erin", "pw"))
            primary = cl.owner(user_slot(cl, "erin"))
            replica = next(x for x in cl.nodes() if x["master"] == primary["id"])
            cl.kill(replica["port"])
            cl.kill(primary["port"])
            survivor = cl.live_ports()[0]
            deadline = time.time() + 20
            while time.time() < deadline and "cluster_state:fail" not in resp_text(survivor, "CLUSTER", "INFO"):
                time.sleep(0.1)
            self.assertIn("cluster_state:fail", resp_text(survivor, "CLUSTER", "INFO"))
            t = time.time()
            text = plain_auth_reply(srv, "erin", "pw")
            took = time.time() - t
            self.assertIn("<temporary-auth-failure/>", text)
            self.assertLess(took, 15, "the retries are bounded")
            self.assertTrue(srv.alive(), srv.log_text())
            # back: the two nodes return with their nodes.conf
            for i, p in enumerate(cl.ports):
                if p in (primary["port"], replica["port"]):
                    cl.start_node(i)
            cl.wait_ok()
            deadline = time.time() + 20
            while True:
                text = plain_auth_reply(srv, "erin", "pw")
                if "<success" in text or time.time() > deadline:
                    break
                time.sleep(0.5)
            self.assertIn("<success", text, srv.log_text())
            self.assertEqual(srv.stop(), 0, srv.log_text())
            srv = None
        finally:
            if srv:
                srv.stop()
            cl.stop()
            cl.cleanup()


class SentinelStoreTest(unittest.TestCase):
    """storage.redis = sentinel:...: xmppd asks the sentinels for the primary, and after
    the primary is killed and a sentinel promotes the replica, xmppd follows it (asked
    again on the lost connection / READONLY); what was written before the failover is
    there after it."""

    def test_failover_followed(self):
        st = RedisSentinel()
        srv = None
        try:
            st.start()
            srv = Server(**{"storage.backend": "redis", "storage.redis": st.addr(),
                            "limits.auth_fail_ip": "1000"})
            for u in ("frank", "grace"):
                srv.adduser(f"{u}@localhost", "pw")
            srv.start()

            async def leave(body):
                a = await login(srv, "frank@localhost/f")
                a.send_message(mto="grace@localhost", mbody=body, mtype="chat")
                await wait_routed(a, "grace@localhost")
                await a.close()
            run(leave("before the failover"))
            old = st.primary_port()
            self.assertEqual(old, st.data_ports[0])
            # the replica has the data before the primary dies
            deadline = time.time() + 10
            while time.time() < deadline and resp(st.data_ports[1], "EXISTS", "{u:grace@localhost}:o") != b":1\r\n":
                time.sleep(0.05)
            st.kill(old)
            deadline = time.time() + 30
            while time.time() < deadline and st.primary_port() == old:
                time.sleep(0.2)
            self.assertEqual(st.primary_port(), st.data_ports[1], "the sentinels promoted the replica")
            deadline = time.time() + 30
            while True:
                text = plain_auth_reply(srv, "frank", "pw")
                if "<success" in text or time.time() > deadline:
                    break
                time.sleep(0.5)
            self.assertIn("<success", text)
            run(leave("after the failover"))

            async def read():
                g = await login(srv, "grace@localhost/g")
                got = [(await g.next_message(timeout=10))["body"] for _ in range(2)]
                self.assertEqual(got, ["before the failover", "after the failover"])
                await g.close()
            run(read())
            self.assertIn("the primary is now", srv.log_text())
            self.assertEqual(srv.stop(), 0, srv.log_text())
            srv = None
        finally:
            if srv:
                srv.stop()
            st.stop()
            st.cleanup()


if __name__ == "__main__":
    unittest.main()
