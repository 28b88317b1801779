"""Chat across the edges of a cluster while a fault is injected: the driver of
`bench/cluster.sh --faults` (docs/cluster.md, "Fault injection").

--pairs pairs chat at --rate messages/s in all (open loop), for --duration seconds: the
sender of pair i is on one edge, its receiver on the other (pairs alternate directions).
Every message has a unique id (f<pair>-<k>) and carries its send time; senders send
<r/> after every message (XEP-0198 §4) and count a message acknowledged when the
server's <a h/> covers it; receivers answer with <a h/> after every message. A client
whose connection ends resumes its session (XEP-0198 §5, <resume previd h/> with its exact
count) on the other edge at once, or, if the server answers <failed/>, logs in afresh
there (then alternating, every 0.2 s); a sender that resumed sends again the messages
the server's <resumed h/> does not cover (--no-resume: always a new log-in). After the run each receiver closes its stream and logs in again, so what went
to offline storage is delivered and counted.

Counting, per message id:
  delivered live      arrived without a XEP-0203 <delay/> (offline storage adds one)
  delivered offline   arrived with it
  lost                acknowledged to the sender, never delivered
  duplicated          deliveries beyond the first
  stanza errors       <message type='error'/> the senders got (by condition)
  offline detours     delivered offline although its receiver was online from the moment
                      it was sent until --detour-margin seconds later
Other figures: time from a client's connection loss to its new session (bound, stream
management enabled), live latency p50/p99 (send to receipt, same clock), the driver's own
CPU (to check that it kept up) and its event loop lag.

Clients are spread over --procs processes (each holds whole pairs). The cluster.sh side
waits for --ready-file (written when sending starts) and injects the fault.

  python3 bench/faults.py --ports 21100,21102 --pairs 200 --rate 2000 --duration 60

Accounts: PREFIX1 .. PREFIX(2*pairs), password --password (xmppctl populate f N secret).
"""
import argparse
import asyncio
import base64
import collections
import json
import os
import resource
import ssl
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

SM = "urn:xmpp:sm:3"
C = "{jabber:client}"
STANZAS = (C + "message", C + "presence", C + "iq")
DELAY = "{urn:xmpp:delay}delay"
STANZA_NS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"


def opening(domain):
    return (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>")


def pct(v, p):
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


class Stream:
    """One XML stream over TCP (STARTTLS, SASL PLAIN); top-level elements whole from next()."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer
        self.previd = None   # XEP-0198 §5: the session's resumption id
        self.resumed = None  # resumed: the server's h (our stanzas it handled)
        self.restart()

    def restart(self):
        self.parser = ET.XMLPullParser(("start", "end"))
        self.depth = 0
        self.ready = collections.deque()

    def send(self, s):
        self.w.write(s.encode())

    async def next(self):
        while not self.ready:
            data = await self.r.read(65536)
            if not data:
                raise ConnectionError("closed")
            self.parser.feed(data)
            for ev, el in self.parser.read_events():
                if ev == "start":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        self.ready.append(el)
                    elif self.depth == 0:
                        raise ConnectionError("stream closed by the server")
        return self.ready.popleft()

    async def expect(self, tag):
        el = await self.next()
        if el.tag != tag:
            raise RuntimeError(f"expected {tag}, got {ET.tostring(el)[:200]!r}")
        return el

    def close(self):
        try:
            self.w.transport.abort()
        except Exception:
            pass


async def login(d, port, user, resource, resume=None):
    """A bound stream with stream management enabled, or an exception. resume: (previd,
    h): the session is resumed instead if the server can (s.resumed: its h), else
    (<failed/>) a new one is bound."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    s = Stream(r, w)
    try:
        s.send(opening(d.a.domain))
        await s.expect("{http://etherx.jabber.org/streams}features")
        s.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await s.expect("{urn:ietf:params:xml:ns:xmpp-tls}proceed")
        await w.start_tls(d.ctx, server_hostname=d.a.domain)
        s.restart()
        s.send(opening(d.a.domain))
        await s.expect("{http://etherx.jabber.org/streams}features")
        tok = base64.b64encode(f"\0{user}\0{d.a.password}".encode()).decode()
        s.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{tok}</auth>")
        el = await s.next()
        if el.tag != "{urn:ietf:params:xml:ns:xmpp-sasl}success":
            cond = [c.tag.split("}")[1] for c in el] or ["?"]
            d.login_failures[cond[0]] += 1
            raise RuntimeError("auth: " + cond[0])
        s.restart()
        s.send(opening(d.a.domain))
        await s.expect("{http://etherx.jabber.org/streams}features")
        if resume:
            s.send(f"<resume xmlns='{SM}' previd='{resume[0]}' h='{resume[1]}'/>")
            el = await s.next()
            if el.tag == f"{{{SM}}}resumed":
                s.previd, s.resumed = resume[0], int(el.get("h"))
                d.resumed += 1
                return s
            d.resume_failed += 1  # <failed/>: a new session
        s.send(f"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
               f"<resource>{resource}</resource></bind></iq>")
        el = await s.expect(C + "iq")
        if el.get("type") != "result":
            d.login_failures["bind"] += 1
            raise RuntimeError("bind failed")
        s.send(f"<enable xmlns='{SM}'" + (" resume='true'" if d.a.resume else "") + "/>")
        el = await s.expect(f"{{{SM}}}enabled")
        s.previd = el.get("id")
        return s
    except BaseException:
        s.close()
        raise


class Client:
    """A session that comes back: on connection loss it logs in on the other edge."""

    def __init__(self, d, user, resource, home):
        self.d, self.user, self.resource, self.home = d, user, resource, home
        self.s = None
        self.up = False
        self.closing = False
        self.task = None
        self.previd = None  # the session's resumption id (XEP-0198 §5)

    def h_in(self):
        """Stanzas received on the session (XEP-0198 h)."""
        return 0

    async def connect(self, first_port_index):
        i = first_port_index
        end = time.monotonic() + self.d.a.reconnect_limit
        while True:
            port = self.d.ports[i % len(self.d.ports)]
            try:
                resume = (self.previd, self.h_in()) if self.previd else None
                self.s = await asyncio.wait_for(login(self.d, port, self.user, self.resource, resume),
                                                self.d.a.login_timeout)
                self.previd = self.s.previd
                self.port_index = i % len(self.d.ports)
                return
            except (OSError, ConnectionError, RuntimeError, ssl.SSLError, asyncio.TimeoutError, ET.ParseError):
                if time.monotonic() > end or self.d.stopping:
                    raise
                i += 1
                await asyncio.sleep(0.2)

    def on_session(self):
        """Called with a new session (stream management enabled)."""

    def on_resumed(self, h):
        """Called when the session was resumed (the server handled h of our stanzas)."""

    def on_element(self, el):
        pass

    def on_down(self):
        pass

    async def run(self):
        while True:
            try:
                while True:
                    self.on_element(await self.s.next())
            except (OSError, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, ET.ParseError):
                pass
            self.s.close()
            self.up = False
            if self.closing:
                return
            t0 = time.monotonic()
            self.on_down()
            self.d.drops += 1
            try:
                await self.connect(self.port_index + 1)
            except Exception as e:
                self.d.problems.append(f"{self.user}: no new session ({e!r})")
                return
            self.d.reconnect_s.append(time.monotonic() - t0)
            if self.s.resumed is not None:
                self.on_resumed(self.s.resumed)
            else:
                self.on_session()

    async def start(self):
        self.previd = None  # a new session
        await self.connect(self.home)
        self.on_session()

    def go(self):
        self.task = asyncio.ensure_future(self.run())


class Sender(Client):
    def __init__(self, d, pair, user, to, home):
        super().__init__(d, user, "s", home)
        self.pair, self.to = pair, to
        self.k = 0

    def on_session(self):
        self.out = []  # ids sent on this session, in order (XEP-0198 counts them from <enabled/>)
        self.h = 0
        self.rx = 0  # stanzas received
        self.up = True

    def h_in(self):
        return self.rx

    def on_resumed(self, h):
        # XEP-0198 §5: the server handled h of them; the others are sent again (same ids)
        for mid in self.out[self.h:h]:
            self.d.acked.add(mid)
        self.h = max(self.h, h)
        for mid in self.out[h:]:
            self.s.send(f"<message to='{self.to}' type='chat' id='{mid}'><body>{self.d.sent_at[mid]:.6f}</body>"
                        f"</message><r xmlns='{SM}'/>")
            self.d.resent += 1
        self.up = True

    def send(self, now):
        mid = f"f{self.pair}-{self.k}"
        self.k += 1
        self.s.send(f"<message to='{self.to}' type='chat' id='{mid}'><body>{now:.6f}</body></message>"
                    f"<r xmlns='{SM}'/>")
        self.out.append(mid)
        self.d.sent.append(mid)
        self.d.sent_at[mid] = now

    def on_element(self, el):
        if el.tag in STANZAS:
            self.rx = (self.rx + 1) & 0xFFFFFFFF
        if el.tag == f"{{{SM}}}a":
            h = int(el.get("h"))
            for mid in self.out[self.h:h]:
                self.d.acked.add(mid)
            self.h = max(self.h, h)
        elif el.tag == f"{{{SM}}}r":
            self.s.send(f"<a xmlns='{SM}' h='{self.rx}'/>")
        elif el.tag == C + "message" and el.get("type") == "error":
            cond = "?"
            for e in el:
                if e.tag == C + "error":
                    cond = next((c.tag[len(STANZA_NS):] for c in e if c.tag.startswith(STANZA_NS)), "?")
            self.d.errors[cond] += 1


class Receiver(Client):
    def __init__(self, d, pair, user, home):
        super().__init__(d, user, "r", home)
        self.pair = pair
        self.intervals = []  # [online since, online until]

    def on_session(self):
        self.h = 0
        self.up = True
        self.s.send("<presence/>")
        self.intervals.append([time.time(), None])
        self.d.last_rx = time.monotonic()

    def h_in(self):
        return self.h

    def on_resumed(self, h):
        self.up = True
        if h < 1:  # its presence (its first stanza) was not handled
            self.s.send("<presence/>")
        self.intervals.append([time.time(), None])
        self.d.last_rx = time.monotonic()

    def on_down(self):
        self.intervals[-1][1] = time.time()

    def on_element(self, el):
        d = self.d
        if el.tag in STANZAS:
            self.h = (self.h + 1) & 0xFFFFFFFF
        if el.tag == C + "message":
            self.s.send(f"<a xmlns='{SM}' h='{self.h}'/>")
            mid = el.get("id") or ""
            if el.get("type") == "error" or not mid.startswith("f"):
                return
            now = time.time()
            d.last_rx = time.monotonic()
            d.got[mid] += 1
            if el.find(DELAY) is not None:
                d.offline[mid] += 1
            else:
                d.live[mid] += 1
                try:
                    d.lat_ms.append((now - float(el.findtext(C + "body"))) * 1e3)
                except (TypeError, ValueError):
                    pass
        elif el.tag == f"{{{SM}}}r":
            self.s.send(f"<a xmlns='{SM}' h='{self.h}'/>")

    def online_over(self, t0, t1):
        return any(a <= t0 and (b is None or b >= t1) for a, b in self.intervals)


class Driver:
    def __init__(self, a, lo, hi):
        self.a, self.lo, self.hi = a, lo, hi
        self.ports = [int(p) for p in a.ports.split(",")]
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.stopping = False
        self.sent, self.sent_at, self.acked = [], {}, set()
        self.got, self.live, self.offline = collections.Counter(), collections.Counter(), collections.Counter()
        self.errors, self.login_failures = collections.Counter(), collections.Counter()
        self.lat_ms, self.reconnect_s, self.lag_ms, self.problems = [], [], [], []
        self.drops = 0
        self.resumed = self.resume_failed = self.resent = 0
        self.last_rx = time.monotonic()

    async def sender_loop(self, snd, t_start, deadline):
        per = self.a.rate / self.a.pairs
        t = t_start + (snd.pair % 97) / 97 / per
        while t < deadline:
            now = time.time()
            if t > now:
                await asyncio.sleep(t - now)
            if snd.up:
                snd.send(time.time())
            t += 1 / per

    async def lag(self):
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.lag_ms.append((time.perf_counter() - t - 0.01) * 1e3)

    async def quiet(self, seconds, limit):
        """Until no message arrived for SECONDS (at most LIMIT seconds)."""
        end = time.monotonic() + limit
        while time.monotonic() < end and time.monotonic() - self.last_rx < seconds:
            await asyncio.sleep(0.1)

    async def run(self):
        a, P = self.a, self.a.pairs
        snd, rcv = [], []
        for i in range(self.lo, self.hi):
            home = i % 2
            rcv.append(Receiver(self, i, f"{a.prefix}{i + 1}", home))
            snd.append(Sender(self, i, f"{a.prefix}{P + i + 1}", f"{a.prefix}{i + 1}@{a.domain}", 1 - home))
        everyone = rcv + snd
        for i in range(0, len(everyone), 25):
            await asyncio.gather(*(c.start() for c in everyone[i:i + 25]))
        for c in everyone:
            c.go()
        print("READY", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        t_start = float(line.split()[1])
        deadline = t_start + a.duration
        cpu0 = time.process_time()
        lagger = asyncio.ensure_future(self.lag())
        await asyncio.gather(*(self.sender_loop(s, t_start, deadline) for s in snd))
        cpu1, wall = time.process_time(), time.time() - t_start
        phases = [time.monotonic()]
        lagger.cancel()
        # the last acknowledgements and live deliveries
        for s in snd:
            if s.up:
                s.s.send(f"<r xmlns='{SM}'/>")
        await self.quiet(a.settle, 30)
        phases.append(time.monotonic())
        # receivers leave and come back: offline storage is delivered
        self.stopping = True
        for r in rcv:
            r.closing = True
            if r.intervals and r.intervals[-1][1] is None:
                r.intervals[-1][1] = time.time()
            if r.up:
                r.s.send("</stream:stream>")
        await asyncio.wait([r.task for r in rcv], timeout=5)
        for r in rcv:
            r.s.close()
            r.up = False
        phases.append(time.monotonic())
        await asyncio.sleep(0.2)
        self.stopping = False
        for r in rcv:
            r.closing = False
        res = await asyncio.gather(*(r.start() for r in rcv), return_exceptions=True)
        self.relogin_failed = sum(isinstance(x, BaseException) for x in res)
        for r, x in zip(rcv, res):
            if not isinstance(x, BaseException):
                r.go()
        phases.append(time.monotonic())
        await self.quiet(a.settle, 60)
        phases.append(time.monotonic())
        self.stopping = True
        for c in everyone:
            c.closing = True
            if c.s:
                c.s.close()
        await asyncio.sleep(0.1)
        by_pair = {r.pair: r for r in rcv}
        detours = 0
        for mid, n in self.offline.items():
            r = by_pair[int(mid[1:].split("-")[0])]
            t = self.sent_at.get(mid)
            if t is not None and r.online_over(t, t + a.detour_margin):
                detours += 1
        sent = set(self.sent)

        def home_of(mid):
            return by_pair[int(mid[1:].split("-")[0])].home

        return {
            "sent": len(self.sent), "acknowledged": len(self.acked),
            "delivered_live": sum(1 for m in self.live if m in sent),
            "delivered_offline": sum(1 for m in self.offline if m in sent and m not in self.live),
            "lost_acknowledged": sum(1 for m in self.acked if m not in self.got),
            "lost_unacknowledged": sum(1 for m in sent if m not in self.acked and m not in self.got),
            "duplicated": sum(n - 1 for n in self.got.values() if n > 1),
            "never_sent": sum(1 for m in self.got if m not in sent),
            # by the receiver's edge (port index; its sender is on the other): which side of
            # a fault a loss or a duplicate comes from
            "by_receiver_edge": {str(e): {
                "lost_acknowledged": sum(1 for m in self.acked if m not in self.got and home_of(m) == e),
                "duplicated": sum(n - 1 for m, n in self.got.items() if n > 1 and home_of(m) == e),
                "offline": sum(1 for m in self.offline if m in sent and home_of(m) == e)} for e in (0, 1)},
            "stanza_errors": dict(self.errors), "offline_detours": detours,
            "connection_losses": self.drops, "reconnect_s": self.reconnect_s,
            "login_failures": dict(self.login_failures), "relogin_failed": self.relogin_failed,
            "resumed": self.resumed, "resume_failed": self.resume_failed, "resent": self.resent,
            "lat_ms": [round(x, 2) for x in self.lat_ms], "lag_ms": [round(x, 2) for x in self.lag_ms],
            "cpu_s": cpu1 - cpu0, "phases_s": [round(b - a, 2) for a, b in zip(phases, phases[1:])], "wall_s": wall, "problems": self.problems[:10],
        }


def child(a):
    d = Driver(a, a.slice[0], a.slice[1])
    res = asyncio.run(d.run())
    print("RESULT " + json.dumps(res), flush=True)


def parent(a):
    n = max(1, min(a.procs, a.pairs))
    bounds = [(a.pairs * k // n, a.pairs * (k + 1) // n) for k in range(n)]
    me = [sys.executable, os.path.abspath(__file__)]
    args = [x for x in sys.argv[1:]]
    kids = [subprocess.Popen(me + args + ["--slice", str(lo), str(hi)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True) for lo, hi in bounds]
    try:
        for k in kids:
            line = k.stdout.readline()
            if line.strip() != "READY":
                raise SystemExit(f"faults.py: a client process did not log in ({line.strip()!r})")
        t_start = time.time() + 0.5
        for k in kids:
            k.stdin.write(f"GO {t_start:.6f}\n")
            k.stdin.flush()
        if a.ready_file:
            with open(a.ready_file + ".tmp", "w") as f:
                f.write(f"{t_start:.6f}\n")
            os.replace(a.ready_file + ".tmp", a.ready_file)
        parts = []
        for k in kids:
            out = k.stdout.read()
            k.wait()
            line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"faults.py: a client process ended without a result (status {k.returncode})")
            parts.append(json.loads(line[7:]))
    finally:
        for k in kids:
            if k.poll() is None:
                k.kill()
                k.wait()
    tot = collections.Counter()
    errors, lf = collections.Counter(), collections.Counter()
    lat, rec, lag, problems = [], [], [], []
    for p in parts:
        for key in ("sent", "acknowledged", "delivered_live", "delivered_offline", "lost_acknowledged",
                    "lost_unacknowledged", "duplicated", "never_sent", "offline_detours",
                    "connection_losses", "relogin_failed", "resumed", "resume_failed", "resent"):
            tot[key] += p[key]
        errors.update(p["stanza_errors"])
        lf.update(p["login_failures"])
        lat += p["lat_ms"]
        rec += p["reconnect_s"]
        lag += p["lag_ms"]
        problems += p["problems"]
    cpu = sum(p["cpu_s"] for p in parts)
    wall = max(p["wall_s"] for p in parts)
    r2 = lambda x: None if x is None else round(x, 2)
    res = {"phases_s": [max(p["phases_s"][k] for p in parts) for k in range(len(parts[0]["phases_s"]))],
           "label": a.label, "pairs": a.pairs, "rate": a.rate, "duration_s": a.duration, "procs": n,
           **{k: tot[k] for k in sorted(tot)},
           "stanza_errors": sum(errors.values()), "stanza_errors_by_condition": dict(errors),
           "login_failures": dict(lf),
           "latency_ms": {"p50": r2(pct(lat, 50)), "p99": r2(pct(lat, 99)), "max": r2(max(lat) if lat else None)},
           "reconnect_s": {"n": len(rec), "p50": r2(pct(rec, 50)), "max": r2(max(rec) if rec else None)},
           "driver_cpu_share": round(cpu / wall, 2) if wall > 0 else None,
           "driver_loop_lag_ms": {"p99": r2(pct(lag, 99)), "max": r2(max(lag) if lag else None)},
           "by_receiver_edge": {e: {k: sum(p["by_receiver_edge"][e][k] for p in parts)
                                    for k in parts[0]["by_receiver_edge"][e]} for e in ("0", "1")},
           "problems": problems[:20]}
    print(json.dumps(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    ok = tot["sent"] > 0 and tot["never_sent"] == 0 and not problems
    sys.exit(0 if ok else 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ports", required=True, help="the edges' STARTTLS ports, comma-separated")
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--rate", type=float, default=2000, help="messages/s, all pairs together")
    ap.add_argument("--duration", type=float, default=60, help="seconds of sending")
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--prefix", default="f")
    ap.add_argument("--password", default="secret")
    ap.add_argument("--domain", default="localhost")
    ap.add_argument("--settle", type=float, default=3, help="quiet seconds that end a delivery phase")
    ap.add_argument("--detour-margin", type=float, default=1.0,
                    help="an offline delivery is a detour if its receiver was online from the send to this many s later")
    ap.add_argument("--login-timeout", type=float, default=30, help="seconds one log-in attempt may take")
    ap.add_argument("--reconnect-limit", type=float, default=120, help="seconds a client keeps trying to log in again")
    ap.add_argument("--no-resume", dest="resume", action="store_false",
                    help="a client whose connection ends logs in afresh (no XEP-0198 resumption)")
    ap.add_argument("--ready-file", help="written (the start time) when sending starts")
    ap.add_argument("--json", help="write the result there too")
    ap.add_argument("--label", default="")
    ap.add_argument("--slice", type=int, nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    if a.slice:
        child(a)
    else:
        parent(a)


if __name__ == "__main__":
    main()
