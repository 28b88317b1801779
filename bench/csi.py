"""XEP-0352 client state indication under a presence-heavy load: what the server does not
write to inactive clients (edge/csi.c holds presence broadcasts, the latest per sender).

--users M accounts in rosters of --roster K contacts (groups of K+1 consecutive users,
each other's contacts with subscription 'both': `xmppctl populate`) log in and send
their initial presence; then two phases of --duration seconds each, with the same load:
random users change presence (<show/> and a counter in <status/>) at --rate changes/s
in all, each change going to the K contacts:
  1. every client active;
  2. every other client (half of each roster) has sent <inactive/>.
Counted per phase, from the clients' side: stanzas and bytes (after TLS) written to the
clients that are inactive in phase 2, and to the others; the server's CPU. At the end
the inactive clients send <active/>: what was held is written then, one presence per
contact, the latest each sent (checked: exit status 1 otherwise), and counted with
phase 2. Printed: the deliveries and bytes saved (1 - phase 2 / phase 1, for the same
clients), the server CPU of each phase.

  XMPPD_BUILD=build /usr/bin/python3 bench/csi.py --users 400 --roster 19 --rate 200 --duration 15
"""
import argparse
import asyncio
import collections
import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import DOMAIN, XMPPCTL, Server, cpu_seconds  # noqa: E402
from idle_rss import PASSWORD  # noqa: E402
from sm_kill import C, Stream, tls_context  # noqa: E402

CSI = "urn:xmpp:csi:0"


class Client:
    def __init__(self, i, contacts):
        self.i = i
        self.jid = f"u{i}@{DOMAIN}"
        self.contacts = contacts  # bare JIDs
        self.stanzas = 0
        self.last = {}  # contact's bare JID -> last <status/> seen from it
        self.after_active = collections.Counter()  # presences per contact since <active/>
        self.counting_active = False
        self.waiters = []

    def on(self, el):
        self.stanzas += 1
        if el.tag == C + "presence" and el.get("type") in (None, "unavailable"):
            frm = (el.get("from") or "").split("/")[0]
            st = el.find(C + "status")
            if frm != self.jid and st is not None:
                self.last[frm] = st.text
                if self.counting_active:
                    self.after_active[frm] += 1
        for w in list(self.waiters):
            if w[0](el):
                self.waiters.remove(w)
                w[1].set_result(el)

    def wait_for(self, pred):
        f = asyncio.get_running_loop().create_future()
        self.waiters.append((pred, f))
        return f

    async def reader(self):
        while True:
            self.on(await self.s.next())


async def run(a, srv):
    ctx = tls_context()
    groups = a.roster + 1
    cl = []
    for i in range(a.users):
        g = i - i % groups
        cl.append(Client(i, [f"u{j}@{DOMAIN}" for j in range(g, g + groups) if j != i]))

    async def login(c):
        c.s = await Stream.connect(srv.port)
        await c.s.login(ctx, f"u{c.i}", "r")

    for k in range(0, a.users, 50):
        await asyncio.gather(*(login(c) for c in cl[k:k + 50]))
    readers = [asyncio.ensure_future(c.reader()) for c in cl]
    latest = {}
    n = 0

    def change(c):
        nonlocal n
        n += 1
        latest[c.jid] = str(n)
        c.s.send(f"<presence><show>away</show><status>{n}</status></presence>")

    for c in cl:
        change(c)  # the initial presence, with a status

    async def settled(clients, timeout):
        """Every client in clients has seen the latest status of each contact."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(c.last.get(x) == latest[x] for c in clients for x in c.contacts):
                return True
            await asyncio.sleep(0.05)
        return False

    if not await settled(cl, 60):
        raise SystemExit("the initial presences did not arrive")
    inactive = [c for c in cl if c.i % 2 == 0]
    active = [c for c in cl if c.i % 2 == 1]

    def counts():
        return ({"stanzas": sum(c.stanzas for c in inactive), "bytes": sum(c.s.nbytes for c in inactive)},
                {"stanzas": sum(c.stanzas for c in active), "bytes": sum(c.s.nbytes for c in active)})

    async def phase():
        i0, a0 = counts()
        cpu0, t0 = cpu_seconds(srv.proc.pid), time.monotonic()
        t = t0
        while t - t0 < a.duration:
            t += 1 / a.rate
            now = time.monotonic()
            if t > now:
                await asyncio.sleep(t - now)
            change(random.choice(cl))
        ok = await settled(active, 60)  # every change routed to the active ones
        cpu1, t1 = cpu_seconds(srv.proc.pid), time.monotonic()
        i1, a1 = counts()
        return ({k: i1[k] - i0[k] for k in i1}, {k: a1[k] - a0[k] for k in a1},
                round(cpu1 - cpu0, 3), round(t1 - t0, 2), ok)

    n0 = n
    in1, ac1, cpu1, wall1, ok1 = await phase()
    changes1 = n - n0
    for c in inactive:
        c.s.send(f"<inactive xmlns='{CSI}'/>")
    # the <inactive/>s are handled before anything that follows on each stream: a ping
    await asyncio.gather(*(ping(c, "in") for c in inactive))
    n0 = n
    in2, ac2, cpu2, wall2, ok2 = await phase()
    changes2 = n - n0
    written_while_inactive = dict(in2)
    # <active/>: what was held is written (before the answer to the ping that follows)
    for c in inactive:
        c.counting_active = True
        c.after_active.clear()
    b0 = sum(c.s.nbytes for c in inactive)
    s0 = sum(c.stanzas for c in inactive)
    for c in inactive:
        c.s.send(f"<active xmlns='{CSI}'/>")
    await asyncio.gather(*(ping(c, "out") for c in inactive))
    flushed = {"stanzas": sum(c.stanzas for c in inactive) - s0 - len(inactive),  # less the ping answers
               "bytes": sum(c.s.nbytes for c in inactive) - b0}
    problems = []
    late = await settled(inactive, 10)
    for c in inactive:
        for x in c.contacts:
            if c.last.get(x) != latest[x]:
                problems.append(f"{c.jid}: {x} is {c.last.get(x)} there, {latest[x]} sent last")
            if c.after_active[x] > 1:
                problems.append(f"{c.jid}: {c.after_active[x]} presences of {x} after <active/>")
    for r in readers:
        r.cancel()
    in2 = {k: in2[k] + flushed[k] for k in in2}

    def saved(k):
        return round(1 - in2[k] / in1[k], 3) if in1[k] else None

    res = {"users": a.users, "roster": a.roster, "rate": a.rate, "duration_s": a.duration,
           "phase1_all_active": {"changes": changes1, "to_half_a": in1, "to_half_b": ac1,
                                 "server_cpu_s": cpu1, "wall_s": wall1},
           "phase2_half_a_inactive": {"changes": changes2, "to_half_a_while_inactive": written_while_inactive,
                                      "to_half_a_at_active": flushed, "to_half_b": ac2,
                                      "server_cpu_s": cpu2, "wall_s": wall2},
           "saved_stanzas": saved("stanzas"), "saved_bytes": saved("bytes"),
           "server_cpu_ratio_phase2_to_phase1": round(cpu2 / cpu1, 3) if cpu1 else None,
           "latest_per_contact_after_active": late and not problems, "problems": problems[:10]}
    print(json.dumps(res))
    return 0 if ok1 and ok2 and late and not problems else 1


async def ping(c, tag):
    pid = f"{tag}{c.i}"
    w = c.wait_for(lambda el: el.tag == C + "iq" and el.get("id") == pid)
    c.s.send(f"<iq type='get' id='{pid}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    await asyncio.wait_for(w, 30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--roster", type=int, default=19, help="contacts per user (groups of K+1)")
    ap.add_argument("--rate", type=float, default=200, help="presence changes/s, all users together")
    ap.add_argument("--duration", type=float, default=15, help="seconds per phase")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    if a.users % (a.roster + 1):
        ap.error("--users must be a multiple of --roster + 1")
    random.seed(a.seed)
    srv = Server(**{"limits.rate_stanzas": 0, "server.log_level": "warn"})
    subprocess.run([XMPPCTL, "-c", srv.conf, "populate", "u", str(a.users), PASSWORD, "--roster", str(a.roster),
                    "--first", "0"], check=True, capture_output=True)
    srv.start()
    try:
        rc = asyncio.run(run(a, srv))
    finally:
        if srv.stop() != 0:
            print("xmppd did not exit cleanly: " + srv.log_path, file=sys.stderr)
            rc = 1
    sys.exit(rc)


if __name__ == "__main__":
    main()
