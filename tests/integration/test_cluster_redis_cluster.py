"""The cluster (2 routers, 2 edges) with its directory on a real Redis Cluster: the node
registry, the shard map and the session directory (common/credis.c) go through the same
slot layer as the store (common/redis_slots.c), which is on the same Redis Cluster
(`cluster.redis` and `storage.redis` = cluster:SEEDS). The Redis Cluster set-up is the
harness's (RedisCluster: 3 primaries, 3 replicas, redis-cli --cluster create), the nodes
are test_cluster's. Checks the key layout on the real cluster (registry and map in one
slot, the directory spread over the primaries), log-ins and cross-edge chat each message
once, a router killed (shards move, the epoch goes up), and the primary holding the
registry and the shard map killed under load: its replica takes over, no message lost,
sessions reachable, the epoch does not go back, no two nodes with one id; the time to
recover is printed. A missing redis-server fails these tests (it does not skip them)."""
import asyncio
import os
import re
import signal
import subprocess
import time
import unittest

from harness import XMPPCTL, RedisCluster, RedisSentinel, resp, run
import test_cluster
from test_cluster import (BOUND_S, Node, chat_until_delivered, check_every_message_once, drain_list, error_watch,
                          login)


def ctl(redis, *args):
    """xmppctl against the cluster's Redis (whatever its kind): (status, output)."""
    env = {**os.environ, "XMPPD_CLUSTER_REDIS": redis.addr(), "XMPPD_CLUSTER_NAME": "it"}
    out = subprocess.run([XMPPCTL, *args], env=env, capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout + out.stderr


def ctl_epoch(redis):
    rc, out = ctl(redis, "cluster")
    m = re.search(r"shard map: epoch (\d+)", out)
    assert m, out
    return int(m.group(1)), out


def dir_key(user):
    return "it:s:{%s@localhost}" % user


def hlen(cl, key):
    """HLEN of key on the primary serving its slot (asked directly: no redirection)."""
    port = cl.owner(cl.keyslot(key))["port"]
    return int(resp(port, "HLEN", key).decode().strip().lstrip(":")), port


class RedisClusterNodes(unittest.TestCase):
    """The set-up of the tests on a Redis Cluster (no test of its own): the Redis Cluster,
    2 routers and 2 edges holding the cluster's `users`, started once per class; each
    test ends with every node alive and none having lost its lease. Ports a test leaves
    stopped (SIGSTOP) in cls.stopped are continued before the stop."""
    users = ()
    wait_map = classmethod(test_cluster.ClusterTest.wait_map.__func__)

    @classmethod
    def setUpClass(cls):
        cls.cl = RedisCluster()
        try:
            cls.cl.start()
            cls.routers = [Node(cls.cl, 1, "router"), Node(cls.cl, 2, "router")]
            cls.edges = [Node(cls.cl, 11, "edge"), Node(cls.cl, 12, "edge")]
            for u in cls.users:
                cls.edges[0].adduser(f"{u}@localhost", "pw")
            for n in cls.routers + cls.edges:
                n.start()
            cls.wait_map(2, timeout=20)
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        bad = []
        try:
            for p in getattr(cls, "stopped", []):
                os.kill(cls.cl.procs[p].pid, signal.SIGCONT)
            for n in getattr(cls, "edges", []) + getattr(cls, "routers", []):
                if n.proc and n.proc.poll() is None and n.stop() != 0:
                    bad.append(n.log_text())
        finally:
            cls.cl.stop()
            cls.cl.cleanup()
        assert not bad, bad

    def tearDown(self):
        for n in self.routers + self.edges:
            self.assertTrue(n.alive(), f"node {n.node_id} died:\n" + n.log_text())
            self.assertNotIn("lost its lease", n.log_text())


class RedisClusterDirectoryTest(RedisClusterNodes):
    users = [f"u{i}" for i in range(1, 25)]

    async def chat_pairs(self, pairs, per, tag, during=None):
        """Each (sender, receiver, receiver's jid) pair: per messages; returns (got, errors,
        sent). during(k) runs after the k-th round."""
        errors = error_watch([s for s, _, _ in pairs])
        sent = []
        for k in range(per):
            for i, (s, _, to) in enumerate(pairs):
                body = f"{tag} {i} {k}"
                s.send_message(mto=to, mbody=body, mtype="chat")
                sent.append(body)
            if during:
                await during(k)
            await asyncio.sleep(0.02)
        got = []
        for _, r, _ in pairs:
            got += await drain_list(r, tag + " ", quiet=3)
        return got, errors, sent

    def test_1_key_layout_logins_and_chat_across_edges(self):
        cl = self.cl
        # the registry and the shard map share one slot (scripts use several of them)
        slot = cl.keyslot("it:{nodes}:all")
        for k in ("it:{nodes}:shardmap", "it:{nodes}:n:1", "it:{nodes}:n:12"):
            self.assertEqual(cl.keyslot(k), slot, k)
        owner = cl.owner(slot)["port"]
        for node in (1, 2, 11, 12):
            self.assertEqual(resp(owner, "EXISTS", f"it:{{nodes}}:n:{node}"), b":1\r\n", node)
        self.assertTrue(resp(owner, "GET", "it:{nodes}:shardmap").startswith(b"$"))

        async def go():
            t0 = time.monotonic()
            cs = [await login(self.edges[i % 2], f"{u}@localhost/r") for i, u in enumerate(self.users)]
            took = time.monotonic() - t0
            print(f"  {len(cs)} log-ins on a Redis Cluster in {took:.2f} s")
            # the session directory: one hash per bare JID, spread over the primaries
            ports = set()
            deadline = time.time() + BOUND_S
            for u in self.users:
                while True:
                    n, port = hlen(cl, dir_key(u))
                    if n == 1 or time.time() > deadline:
                        break
                    await asyncio.sleep(0.05)
                self.assertEqual(n, 1, f"directory entry of {u} on its primary {port}")
                ports.add(port)
            self.assertGreaterEqual(len(ports), 2, "the directory is spread over the primaries")
            # cross-edge chat: user i (edge i % 2) to user i + 1 (the other edge)
            pairs = [(cs[i], cs[i + 1], f"{self.users[i + 1]}@localhost") for i in range(0, len(cs), 2)]
            pairs += [(cs[i + 1], cs[i], f"{self.users[i]}@localhost") for i in range(0, len(cs), 2)]
            got, errors, sent = await self.chat_pairs(pairs, 5, "x")
            check_every_message_once(self, got, errors, sent)
            for c in cs:
                await c.close()
        run(go())
        # xmppctl reads the registry, the map and the directory through the same layer
        rc, out = ctl(cl, "cluster")
        self.assertEqual(rc, 0, out)
        for node, role in ((1, "router"), (2, "router"), (11, "edge"), (12, "edge")):
            self.assertEqual(len(re.findall(rf"(?m)^{node} +{role} ", out)), 1, out)

    def test_2_router_killed_shards_move(self):
        epoch0, _ = ctl_epoch(self.cl)
        self.assertGreater(epoch0, 0)

        async def go():
            a = await login(self.edges[0], "u1@localhost/k")
            b = await login(self.edges[1], "u2@localhost/k")
            self.routers[1].kill9()
            self.wait_map(1, timeout=20)
            took = await chat_until_delivered(a, b, "u2@localhost", "after-kill", BOUND_S * 2)
            print(f"  router killed: chat resumed after {took:.2f} s")
            await a.close()
            await b.close()
        try:
            run(go())
            epoch1, out = ctl_epoch(self.cl)
            self.assertGreater(epoch1, epoch0, out)
            self.assertRegex(out, r"node 1: 4096 shards")
        finally:
            self.routers[1].start()
            self.wait_map(2, timeout=20)

    def test_3_primary_of_the_registry_killed_under_load(self):
        """The primary serving the {nodes} slot (leases, node set, shard map) is SIGKILLed
        while messages flow across the edges; its replica is promoted."""
        cl = self.cl
        slot = cl.keyslot("it:{nodes}:all")
        victim = cl.owner(slot)
        epoch0, _ = ctl_epoch(cl)
        killed = {}

        async def monitor(users):
            """From the kill: when a replica serves the slot, and when every lease is
            refreshed there and every session is in the directory again."""
            t = {}
            while time.monotonic() - killed["t"] < 60:
                try:
                    own = cl.owner(slot)["port"]
                    if own != victim["port"]:
                        t.setdefault("promoted", time.monotonic() - killed["t"])
                        leases = all(int(resp(own, "PTTL", f"it:{{nodes}}:n:{n}").decode().strip()[1:]) > 0
                                     for n in (1, 2, 11, 12))
                        if leases and all(hlen(cl, dir_key(u))[0] >= 1 for u in users):
                            t["recovered"] = time.monotonic() - killed["t"]
                            return t
                except (OSError, RuntimeError, ValueError):
                    pass
                await asyncio.sleep(0.1)
            return t

        async def go():
            users = self.users[:12]
            cs = [await login(self.edges[i % 2], f"{u}@localhost/f") for i, u in enumerate(users)]
            pairs = [(cs[i], cs[i + 1], f"{users[i + 1]}@localhost/f") for i in range(0, len(cs), 2)]
            pairs += [(cs[i + 1], cs[i], f"{users[i]}@localhost/f") for i in range(0, len(cs), 2)]

            async def during(k):
                if k == 20:
                    cl.kill(victim["port"])
                    killed["t"] = time.monotonic()
                    killed["mon"] = asyncio.ensure_future(monitor(users))
                await asyncio.sleep(0.03)
            got, errors, sent = await self.chat_pairs(pairs, 150, "load", during)
            check_every_message_once(self, got, errors, sent)
            t = await killed["mon"]
            self.assertIn("recovered", t, f"leases or directory entries not back within 60 s: {t}")
            cl.wait_ok(ports=cl.live_ports())
            # sessions reachable: a new client logged in after the failover reaches each one
            n = await login(self.edges[0], "u13@localhost/n")
            for i, u in enumerate(users):
                n.send_message(mto=f"{u}@localhost/f", mbody=f"after {i}", mtype="chat")
            for i, c in enumerate(cs):
                m = await c.next_message(BOUND_S, pred=lambda m, i=i: m["body"] == f"after {i}")
                self.assertEqual(m["body"], f"after {i}")
            print(f"  primary {victim['port']} (registry, shard map) killed under load: {len(sent)} messages "
                  f"across the edges, none lost or doubled; replica serving after {t['promoted']:.2f} s, "
                  f"leases and directory complete again after {t['recovered']:.2f} s")
            for c in cs + [n]:
                await c.close()
        run(go())
        self.assertNotEqual(cl.owner(slot)["port"], victim["port"], "the replica was promoted")
        # the registry and the map live on: every node once, the epoch did not go back
        epoch1, out = ctl_epoch(cl)
        self.assertGreaterEqual(epoch1, epoch0, out)
        for node, role in ((1, "router"), (2, "router"), (11, "edge"), (12, "edge")):
            self.assertEqual(len(re.findall(rf"(?m)^{node} +{role} ", out)), 1, out)
        for n in self.routers + self.edges:
            self.assertRegex(n.log_text(), r"redis cluster:\S+ back", f"node {n.node_id} saw the failover")

    def test_4_directory_slot_migrating(self):
        """The slot of a user's directory hash is MIGRATING to another primary when the user
        logs in: the old owner answers ASK for the new key, so the router's HSET and
        xmppctl's HGETALL must go to the new owner with ASKING first. Once the move ends,
        the old owner answers MOVED: the HDEL at log-out follows it."""
        cl, u = self.cl, "u20"
        key = dir_key(u)
        slot = cl.keyslot(key)
        src = cl.owner(slot)
        dst = next(n for n in cl.nodes()
                   if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"] and n["id"] != src["id"])
        self.assertEqual(resp(dst["port"], "CLUSTER", "SETSLOT", slot, "IMPORTING", src["id"]), b"+OK\r\n")
        self.assertEqual(resp(src["port"], "CLUSTER", "SETSLOT", slot, "MIGRATING", dst["id"]), b"+OK\r\n")
        self.assertTrue(resp(src["port"], "HLEN", key).startswith(b"-ASK "))

        async def go():
            c = await login(self.edges[1], f"{u}@localhost/m")
            deadline = time.time() + BOUND_S
            out = ""
            while time.time() < deadline:
                rc, out = ctl(cl, "sessions", f"{u}@localhost")
                if re.search(rf"{u}@localhost/m +node 12 ", out):
                    break
                await asyncio.sleep(0.2)
            self.assertRegex(out, rf"{u}@localhost/m +node 12 ", "the entry written and read through ASK")
            self.assertTrue(resp(src["port"], "HLEN", key).startswith(b"-ASK "), "still migrating")
            # the move ends: every primary learns the new owner
            for n in cl.nodes():
                if "master" in n["flags"] and "fail" not in n["flags"]:
                    resp(n["port"], "CLUSTER", "SETSLOT", slot, "NODE", dst["id"])
            self.assertEqual(hlen(cl, key), (1, dst["port"]))
            self.assertTrue(resp(src["port"], "HLEN", key).startswith(b"-MOVED "))
            await c.close()
            deadline = time.time() + BOUND_S
            while time.time() < deadline and hlen(cl, key)[0]:
                await asyncio.sleep(0.1)
            self.assertEqual(hlen(cl, key), (0, dst["port"]), "the HDEL followed MOVED")
        run(go())


class SentinelDirectoryTest(unittest.TestCase):
    """cluster.redis (and storage.redis) = sentinel:...: the harness's RedisSentinel (one
    primary, one replica, three sentinels); 1 router, 2 edges. The primary is killed while
    users chat across the edges: the sentinels promote the replica, every node follows it
    (leases refreshed there, the directory written again), chat goes on."""
    users = [f"s{i}" for i in range(1, 7)]
    wait_map = classmethod(test_cluster.ClusterTest.wait_map.__func__)

    @classmethod
    def setUpClass(cls):
        cls.sn = RedisSentinel()
        try:
            cls.sn.start()
            cls.routers = [Node(cls.sn, 1, "router")]
            cls.edges = [Node(cls.sn, 11, "edge"), Node(cls.sn, 12, "edge")]
            for u in cls.users:
                cls.edges[0].adduser(f"{u}@localhost", "pw")
            for n in cls.routers + cls.edges:
                n.start()
            cls.wait_map(1, timeout=20)
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        bad = []
        try:
            for n in getattr(cls, "edges", []) + getattr(cls, "routers", []):
                if n.proc and n.proc.poll() is None and n.stop() != 0:
                    bad.append(n.log_text())
        finally:
            cls.sn.stop()
            cls.sn.cleanup()
        assert not bad, bad

    def test_failover_followed(self):
        sn = self.sn
        old = sn.primary_port()
        epoch0, _ = ctl_epoch(sn)
        self.assertGreater(epoch0, 0)

        async def go():
            cs = [await login(self.edges[i % 2], f"{u}@localhost/f") for i, u in enumerate(self.users)]
            pairs = [(cs[i], cs[i + 1], f"{self.users[i + 1]}@localhost/f") for i in range(0, len(cs), 2)]
            errors = error_watch([c for c in cs])
            sent, killed = [], {}
            for k in range(100):
                for i, (a, _, to) in enumerate(pairs):
                    a.send_message(mto=to, mbody=f"sl {i} {k}", mtype="chat")
                    sent.append(f"sl {i} {k}")
                if k == 10:
                    sn.kill(old)
                    killed["t"] = time.monotonic()
                await asyncio.sleep(0.05)
            got = []
            for _, b, _ in pairs:
                got += await drain_list(b, "sl ", quiet=3)
            # the sentinels name the replica; every lease is refreshed there and every
            # session is in the directory there
            deadline = time.time() + 40
            new, ok = old, False
            while time.time() < deadline and not ok:
                try:
                    new = sn.primary_port()
                    if new != old:
                        ok = all(int(resp(new, "PTTL", f"it:{{nodes}}:n:{n}").decode().strip()[1:]) > 0
                                 for n in (1, 11, 12)) and \
                            all(resp(new, "HLEN", dir_key(u)) == b":1\r\n" for u in self.users)
                except (OSError, ValueError):
                    pass
                if not ok:
                    await asyncio.sleep(0.1)
            self.assertTrue(ok, f"the nodes did not follow the failover to {new}")
            # what a router worker held while the store waited out the failover (the
            # archive's writes) arrives late: read on until quiet again
            for _, b, _ in pairs:
                got += await drain_list(b, "sl ", quiet=3)
            check_every_message_once(self, got, errors, sent)
            print(f"  Sentinel failover: leases and directory on the new primary {time.monotonic() - killed['t']:.2f} s "
                  f"after the kill; {len(sent)} messages, none lost or doubled")
            n = await login(self.edges[1], f"{self.users[0]}@localhost/n")
            for i, u in enumerate(self.users[1:], 1):
                n.send_message(mto=f"{u}@localhost/f", mbody=f"after {i}", mtype="chat")
            for i, c in enumerate(cs[1:], 1):
                await c.next_message(BOUND_S, pred=lambda m, i=i: m["body"] == f"after {i}")
            for c in cs + [n]:
                await c.close()
        run(go())
        epoch1, out = ctl_epoch(sn)
        self.assertGreaterEqual(epoch1, epoch0, out)
        for n in self.routers + self.edges:
            self.assertTrue(n.alive(), n.log_text())
            self.assertIn("the primary is now", n.log_text())
            self.assertNotIn("lost its lease", n.log_text())


if __name__ == "__main__":
    unittest.main()
