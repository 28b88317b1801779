"""The cluster (2 routers, 2 edges; the store and the directory on one Redis Cluster of 3
primaries and 3 replicas) while Redis Cluster changes under chat traffic (issue 12):

- test_1: slots holding live keys (users' accounts, rosters, archives, directory hashes)
  are MIGRATED key by key (CLUSTER SETSLOT IMPORTING / MIGRATING, MIGRATE one key at a
  time, then SETSLOT NODE) while clients log in, chat across the edges and read their
  archives: multi-key scripts meet TRYAGAIN (some keys moved, not all), single keys ASK,
  then MOVED once the move ends; the archive writer's pipelines span the moving slots.
  Nothing may be lost, doubled or answered with an error, every log-in succeeds, every
  archive holds every message.
- test_2 / test_3: a primary serving the registry, the shard map and some chatting
  users is killed (SIGKILL) / stopped (SIGSTOP: a hung or CPU-starved primary that
  accepts connections and never answers) while pairs chat across the edges and new
  conversations start (their first messages read preferences and blocklists from the
  store). Delivery must resume within RESUME_BOUND_S of the fault; nothing lost or
  doubled. The figures are printed.
A missing redis-server fails these tests (it does not skip them)."""
import asyncio
import os
import signal
import time
import unittest

import re

import socket

from harness import RedisSentinel, resp, resp_text, run
import test_cluster_redis_cluster
from test_cluster import check_every_message_once, error_watch, login
from test_mam import Raw

RESUME_BOUND_S = 12  # cluster-node-timeout 1 s + the promotion + our timeouts, on a loaded machine


def ukey_slot(cl, user):
    return cl.keyslot("{u:%s@localhost}:a" % user)


def dir_slot(cl, user):
    return cl.keyslot("it:s:{%s@localhost}" % user)


def primaries(cl, port):
    return [n for n in cl.nodes(port) if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"]]


def owner_of(cl, slot, port):
    for n in primaries(cl, port):
        if any(lo <= slot <= hi for lo, hi in n["slots"]):
            return n
    raise RuntimeError(f"no primary serves slot {slot}")


def keys_in_slot(port, slot):
    raw = resp(port, "CLUSTER", "GETKEYSINSLOT", slot, 1000).split(b"\r\n")
    return [k.decode() for k in raw[2::2] if k]


def migrate_slot(cl, slot, dst, pause, ask_port, first=None, hold=0.0):
    """Moves slot to dst by hand, one key at a time with pause between (the window in which
    a multi-key command meets TRYAGAIN). first: a key moved before the others, then the
    slot held half-moved for hold seconds (a multi-key command on its keys gets TRYAGAIN
    for that long, whatever the timing of the traffic). Returns how many keys moved."""
    src = owner_of(cl, slot, ask_port)
    if src["id"] == dst["id"]:
        return 0
    assert resp(dst["port"], "CLUSTER", "SETSLOT", slot, "IMPORTING", src["id"]) == b"+OK\r\n"
    assert resp(src["port"], "CLUSTER", "SETSLOT", slot, "MIGRATING", dst["id"]) == b"+OK\r\n"
    moved = 0
    if first is not None:
        end = time.monotonic() + 5  # written by the archive's first group
        while resp(src["port"], "EXISTS", first) != b":1\r\n" and time.monotonic() < end:
            time.sleep(0.1)
        r = resp(src["port"], "MIGRATE", "127.0.0.1", dst["port"], "", 0, 5000, "KEYS", first)
        assert r == b"+OK\r\n", (first, r)
        moved += 1
        time.sleep(hold)
    while True:
        keys = keys_in_slot(src["port"], slot)
        if not keys:
            break
        for k in keys:
            r = resp(src["port"], "MIGRATE", "127.0.0.1", dst["port"], "", 0, 5000, "KEYS", k)
            assert r in (b"+OK\r\n", b"+NOKEY\r\n"), r
            moved += 1
            time.sleep(pause)
    # the end of the move: the destination first (Redis Cluster spec, "Live resharding")
    assert resp(dst["port"], "CLUSTER", "SETSLOT", slot, "NODE", dst["id"]) == b"+OK\r\n"
    for n in primaries(cl, ask_port):
        if n["id"] != dst["id"]:
            resp(n["port"], "CLUSTER", "SETSLOT", slot, "NODE", dst["id"])
    return moved


def archive_count(edge, user):
    """How many messages user's archive holds: a MAM query on a raw stream of its own
    (test_mam.Raw), paged 100 at a time (blocking: run it in a thread)."""
    c = Raw(edge, user, res="q", presence=False)
    try:
        total, after = 0, ""
        while True:
            rsm = "<max>100</max>" + (f"<after>{after}</after>" if after else "")
            res, fin, _ = c.query(rsm=rsm)
            assert fin is not None, "no <fin/>"
            total += len(res)
            if fin.get("complete") == "true" or not res:
                return total
            after = res[-1][0]
    finally:
        c.close()


def redirects(cl, skip=()):
    """The error replies the cluster's nodes have given so far, by kind (INFO errorstats,
    Redis 6.2+): {"TRYAGAIN": n, "ASK": n, "MOVED": n, ...}."""
    out = {}
    for p in cl.live_ports():
        if p in skip:
            continue
        for kind, n in re.findall(r"errorstat_(\w+):count=(\d+)", resp_text(p, "INFO", "errorstats")):
            out[kind] = out.get(kind, 0) + int(n)
    return out


class Pump:
    """Pairs (sender, receiver, receiver's JID) chatting: each sender sends one message per
    period; the receivers' arrival times are recorded."""

    def __init__(self, pairs, tag):
        self.pairs, self.tag = pairs, tag
        self.sent = {}  # body -> monotonic time sent
        self.got = []   # (body, monotonic time received)
        self.errors = error_watch([s for s, _, _ in pairs])
        for _, r, _ in pairs:
            r.add_event_handler("message", lambda m: m["body"].startswith(tag + " ") and
                                self.got.append((m["body"], time.monotonic())))
        self.k = 0

    def round(self):
        for i, (s, _, to) in enumerate(self.pairs):
            body = f"{self.tag} {i} {self.k}"
            s.send_message(mto=to, mbody=body, mtype="chat")
            self.sent[body] = time.monotonic()
        self.k += 1

    async def run_for(self, seconds, period=0.1, during=None):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.round()
            if during:
                await during()
            await asyncio.sleep(period)

    async def settle(self, quiet=4, timeout=60):
        """Until everything sent has arrived, or nothing arrives for quiet seconds."""
        end = time.monotonic() + timeout
        last = len(self.got)
        quiet_since = time.monotonic()
        while time.monotonic() < end:
            if len({b for b, _ in self.got}) >= len(self.sent):
                await asyncio.sleep(0.5)  # a duplicate would show now
                return
            await asyncio.sleep(0.2)
            if len(self.got) != last:
                last, quiet_since = len(self.got), time.monotonic()
            elif time.monotonic() - quiet_since > quiet:
                return

    def resume_after(self, t0):
        """Seconds from t0 until every pair has received a message sent after t0, and the
        longest any message sent after t0 took."""
        first = {}
        worst = 0.0
        for body, t in self.got:
            ts = self.sent.get(body)
            if ts is None or ts < t0:
                continue
            pair = body.split()[1]
            first.setdefault(pair, t)
            worst = max(worst, t - ts)
        if len(first) < len(self.pairs):
            return None, worst
        return max(first.values()) - t0, worst


class RedisClusterFaultsTest(test_cluster_redis_cluster.RedisClusterNodes):
    users = [f"f{i}" for i in range(48)]

    def some_port(self):
        return next(p for p in self.cl.live_ports() if p not in getattr(self, "stopped", []))

    async def logins(self, names, res):
        cs = []
        for i, u in enumerate(names):
            cs.append(await login(self.edges[i % 2], f"{u}@localhost/{res}"))
        return cs

    def test_1_slots_migrating_under_chat(self):
        cl = self.cl
        names = self.users[:16]
        later = self.users[16:24]  # log in while their slots move
        moving = sorted({ukey_slot(cl, u) for u in names[:8] + later[:4]} |
                        {dir_slot(cl, u) for u in names[:8] + later[:4]})
        figures = {}
        before = redirects(cl)

        async def go():
            cs = await self.logins(names, "m")
            # cross-edge pairs: user 2i (edge 0) <-> user 2i+1 (edge 1)
            pairs = [(cs[i], cs[i + 1], f"{names[i + 1]}@localhost/m") for i in range(0, len(cs), 2)]
            pairs += [(cs[i + 1], cs[i], f"{names[i]}@localhost/m") for i in range(0, len(cs), 2)]
            pump = Pump(pairs, "mig")
            await pump.run_for(1.0)  # archives and directory entries exist before the move
            loop = asyncio.get_running_loop()
            port = self.some_port()

            # names[0]'s archive stream moves first and its slot stays half-moved for 1.5 s:
            # the archive writer's next group (server.mam_commit_ms, 1 s) holds names[0]'s
            # rows, and its append script (stream, index and account hash) gets TRYAGAIN
            # until the rest follows (the store waits it out: up to ~4.8 s)
            held = ukey_slot(cl, names[0])

            def move_all():
                moved = 0
                for k, slot in enumerate(moving):
                    src = owner_of(cl, slot, port)
                    others = [n for n in primaries(cl, port) if n["id"] != src["id"]]
                    if slot == held:
                        moved += migrate_slot(cl, slot, others[k % len(others)], 0.1, port,
                                              first="{u:%s@localhost}:m" % names[0], hold=1.5)
                    else:
                        moved += migrate_slot(cl, slot, others[k % len(others)], 0.1, port)
                return moved
            mover = loop.run_in_executor(None, move_all)
            newcomers, reads = [], []

            async def during():
                # log-ins and archive reads while the slots move
                if len(newcomers) < len(later):
                    u = later[len(newcomers)]
                    newcomers.append(await login(self.edges[len(newcomers) % 2], f"{u}@localhost/n"))
                if pump.k % 3 == 0:
                    reads.append(await loop.run_in_executor(None, archive_count, self.edges[pump.k % 2],
                                                            names[pump.k % len(names)]))
            t0 = time.monotonic()
            while not mover.done():
                await pump.run_for(0.2, during=during)
            figures["keys"] = await mover
            figures["move_s"] = time.monotonic() - t0
            await pump.run_for(1.0)  # after the move: MOVED
            await pump.settle()
            got = [b for b, _ in pump.got]
            check_every_message_once(self, got, pump.errors, list(pump.sent))
            self.assertEqual(len(newcomers), len(later), "every log-in during the move succeeded")
            # every archive holds every message its owner sent and received
            per_user = {}
            for body in pump.sent:
                i = int(body.split()[1])
                s, r, _ = pairs[i]
                for c in (s, r):
                    per_user[c] = per_user.get(c, 0) + 1
            await asyncio.sleep(1.5)  # the archive writer's group (server.mam_commit_ms)
            for i, c in enumerate(cs):
                n = await loop.run_in_executor(None, archive_count, self.edges[i % 2], names[i])
                self.assertEqual(n, per_user.get(c, 0), f"{names[i]}'s archive")
            figures["sent"] = len(pump.sent)
            figures["reads"] = len(reads)
            for c in cs + newcomers:
                await c.close()
        run(go())
        for slot in moving:
            self.assertIsNotNone(owner_of(cl, slot, self.some_port()))
        after = redirects(cl)
        met = {k: after.get(k, 0) - before.get(k, 0) for k in ("TRYAGAIN", "ASK", "MOVED")}
        print(f"  replies met during the move: {met}")
        for k, n in met.items():
            self.assertGreater(n, 0, f"the move produced no {k}: the test did not exercise it")
        print(f"  {len(moving)} slots ({figures['keys']} keys) moved key by key in {figures['move_s']:.1f} s "
              f"under chat: {figures['sent']} messages, none lost or doubled, {figures['reads']} archive "
              f"reads and {len(later)} log-ins during the move, every archive complete")
        for n in self.routers + self.edges:
            self.assertNotRegex(n.log_text(), r"gave up after retries|TRYAGAIN|could not be stored",
                                f"node {n.node_id}")

    def fault_under_chat(self, how):
        cl = self.cl
        port = self.some_port()
        reg = cl.keyslot("it:{nodes}:all")
        victim = owner_of(cl, reg, port)
        on_victim = [u for u in self.users[24:] if owner_of(cl, ukey_slot(cl, u), port)["id"] == victim["id"]]
        others = [u for u in self.users[24:] if u not in on_victim]
        # chatting pairs across the edges, half of them with a user whose data the victim serves
        warm = on_victim[:3] + others[:3]
        fresh = on_victim[3:5] + others[3:5]  # first messages only after the fault
        self.assertGreaterEqual(len(warm), 6)
        self.assertGreaterEqual(len(fresh), 4)
        figures = {}

        async def go():
            a = await self.logins(warm, "w")
            b = await self.logins(fresh, "w")
            pairs = [(a[i], a[i + 1], f"{warm[i + 1]}@localhost/w") for i in range(0, len(a) - 1, 2)]
            pairs += [(a[i + 1], a[i], f"{warm[i]}@localhost/w") for i in range(0, len(a) - 1, 2)]
            pump = Pump(pairs, how)
            await pump.run_for(1.0)
            await pump.settle(quiet=2, timeout=10)
            fpairs = [(b[i], b[i + 1], f"{fresh[i + 1]}@localhost/w") for i in range(0, len(b) - 1, 2)]
            fpairs += [(b[i + 1], b[i], f"{fresh[i]}@localhost/w") for i in range(0, len(b) - 1, 2)]
            fpump = Pump(fpairs, how + "-new")
            resp(victim["port"], "WAIT", "1", "2000")  # the replica has everything written so far
            t0 = time.monotonic()
            if how == "kill":
                cl.kill(victim["port"])
            else:
                os.kill(cl.procs[victim["port"]].pid, signal.SIGSTOP)
                self.__class__.stopped = [victim["port"]]
            login_took = []

            async def late_login():
                await asyncio.sleep(0.5)
                t = time.monotonic()
                c = await login(self.edges[1], f"{on_victim[0]}@localhost/late")
                login_took.append(time.monotonic() - t)
                await c.close()
            late = asyncio.ensure_future(late_login())

            async def registry_back():
                """Seconds from the fault until every node's lease is live on the primary
                that now serves the registry slot (the heartbeats follow the fail-over)."""
                while time.monotonic() - t0 < 40:
                    try:
                        own = owner_of(cl, reg, port)["port"]
                        if own != victim["port"] and all(
                                int(resp(own, "PTTL", f"it:{{nodes}}:n:{n}").decode().strip()[1:]) > 0
                                for n in (1, 2, 11, 12)):
                            return time.monotonic() - t0
                    except (OSError, RuntimeError, ValueError):
                        pass
                    await asyncio.sleep(0.1)
                return None
            reg_back = asyncio.ensure_future(registry_back())

            async def during():
                fpump.round()
            await pump.run_for(RESUME_BOUND_S + 3, during=during)
            await asyncio.wait_for(late, 30)
            figures["registry"] = await reg_back
            await pump.settle(timeout=30)
            await fpump.settle(timeout=30)
            resumed, worst = pump.resume_after(t0)
            fresumed, fworst = fpump.resume_after(t0)
            figures.update(sent=len(pump.sent) + len(fpump.sent), resumed=resumed, worst=worst,
                           fresumed=fresumed, fworst=fworst, login=login_took)
            got = [x for x, _ in pump.got]
            fgot = [x for x, _ in fpump.got]
            dup = sum(got.count(x) - 1 for x in set(got)) + sum(fgot.count(x) - 1 for x in set(fgot))
            lost = len(set(pump.sent) - set(got)) + len(set(fpump.sent) - set(fgot))
            print(f"  primary {victim['port']} ({how}; registry, shard map, {len(on_victim)} users' data) "
                  f"under chat: {figures['sent']} messages, {lost} lost, {dup} doubled; delivery resumed "
                  f"{resumed if resumed is None else round(resumed, 2)} s after the fault (longest message "
                  f"{worst:.2f} s); new conversations' first messages after "
                  f"{fresumed if fresumed is None else round(fresumed, 2)} s (longest {fworst:.2f} s); "
                  f"a log-in took {login_took[0] if login_took else None} s; every lease live on the new "
                  f"primary after {figures['registry']} s")
            check_every_message_once(self, got, pump.errors, list(pump.sent))
            check_every_message_once(self, fgot, fpump.errors, list(fpump.sent))
            self.assertIsNotNone(resumed)
            self.assertLess(resumed, RESUME_BOUND_S)
            self.assertIsNotNone(fresumed)
            self.assertLess(fresumed, RESUME_BOUND_S)
            self.assertEqual(len(login_took), 1)
            self.assertLess(login_took[0], RESUME_BOUND_S)
            self.assertIsNotNone(figures["registry"], "the heartbeats did not follow the fail-over")
            self.assertLess(figures["registry"], RESUME_BOUND_S)
            for c in a + b:
                await c.close()
        try:
            run(go())
        finally:
            if how == "stop":
                # it wakes up demoted (its replica was promoted) and follows the new primary
                os.kill(cl.procs[victim["port"]].pid, signal.SIGCONT)
                self.__class__.stopped = []
            else:  # back as a replica of the promoted one, for the next test
                cl.start_node(cl.ports.index(victim["port"]))
        cl.wait_ok(ports=cl.live_ports())

    def test_2_primary_killed_under_chat(self):
        self.fault_under_chat("kill")

    def test_3_primary_stopped_under_chat(self):
        self.fault_under_chat("stop")


class HungFirst(RedisSentinel):
    """The harness's Sentinel set-up, with a sentinel that accepts connections and never
    answers (a hung process) first in the address xmppd is given."""

    def start(self):
        self.hung = socket.socket()
        self.hung.bind(("127.0.0.1", 0))
        self.hung.listen(128)
        super().start()

    def addr(self):
        return super().addr().replace("sentinel:", f"sentinel:127.0.0.1:{self.hung.getsockname()[1]},", 1)

    def cleanup(self):
        self.hung.close()
        super().cleanup()


class UnansweringSentinelTest(test_cluster_redis_cluster.SentinelDirectoryTest):
    """test_cluster_redis_cluster.SentinelDirectoryTest (1 router, 2 edges, store and
    directory behind Sentinel; the primary killed while users chat across the edges) with
    the first sentinel of the address never answering: the nodes start, follow the
    fail-over and lose nothing; the directory's client asks the sentinels on its loop
    (common/credis.c), the store starts from the sentinel that answered last."""

    @classmethod
    def setUpClass(cls):
        orig = test_cluster_redis_cluster.RedisSentinel
        test_cluster_redis_cluster.RedisSentinel = HungFirst
        try:
            super().setUpClass()
        finally:
            test_cluster_redis_cluster.RedisSentinel = orig
        assert cls.sn.addr().startswith(f"sentinel:127.0.0.1:{cls.sn.hung.getsockname()[1]},")

    @classmethod
    def tearDownClass(cls):
        if os.environ.get("SHOW_LOGS"):
            for n in cls.routers + cls.edges:
                print(f"---- node {n.node_id}\n" + "\n".join(n.log_text().splitlines()[-40:]))
        super().tearDownClass()


if __name__ == "__main__":
    unittest.main()
