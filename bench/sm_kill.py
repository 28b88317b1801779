"""Stream resumption under load (XEP-0198 §5): --pairs senders each chat to their own
receiver at --rate messages/s in all (open loop, each message with a unique id); the
receivers enable stream management with resume='true', answer the server's <r/> with
<a h/> and ask with <r/> themselves every --ack-every messages; at random moments
(on average every --kill-every seconds per receiver) a receiver's TCP connection is
killed under it, at random one of:
  - abort: the socket closed without a TLS close_notify or </stream:stream>;
  - rst:   SO_LINGER 0, then closed: the server gets a TCP reset;
  - shut:  shutdown(SHUT_RDWR): the server reads EOF mid-stream;
and the receiver reconnects at once (STARTTLS, SASL PLAIN, <resume previd h/>) with h
the number of stanzas it parsed whole before the kill: what was in flight is lost with
the connection and must come again. At the end each sender sends a last message; once
every receiver has it (per pair order holds), every id sent is checked: received exactly
once by its recipient (a message may arrive after the resume). The figures: messages,
lost, duplicated, resumes (and failed ones), time from the new TCP connect to <resumed/>
and from <resume/> to <resumed/> (p50, p99), the server's CPU per message.

  XMPPD_BUILD=build /usr/bin/python3 bench/sm_kill.py --pairs 200 --rate 2000 --duration 20 --kill-every 3

With --kill-resuming P, the connection that sent <resume/> is killed too with
probability P: the server may end the session then (its messages go to offline
storage), the resume that follows fails and the receiver binds anew and gets them from
there; such failed resumes are counted, not errors.

Exit status 1 when a message was lost or duplicated, or a resume failed (without
--kill-resuming).
"""
import argparse
import asyncio
import base64
import collections
import json
import os
import random
import socket
import ssl
import statistics
import struct
import sys
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import DOMAIN, Server, cpu_seconds  # noqa: E402
from idle_rss import PASSWORD, make_accounts  # noqa: E402

SM = "urn:xmpp:sm:3"
C = "{jabber:client}"
STANZAS = (C + "message", C + "presence", C + "iq")
OPEN = (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
        f"xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>")


def pct(v, p):
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Stream:
    """One XML stream over TCP (STARTTLS, SASL PLAIN): top-level elements come whole
    from next(); the parser is replaced at each stream restart."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer
        self.dead = False
        self.nbytes = 0  # received (after TLS)
        self.restart()

    def restart(self):
        self.parser = ET.XMLPullParser(("start", "end"))
        self.depth = 0
        self.ready = collections.deque()

    @classmethod
    async def connect(cls, port):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    def send(self, s):
        self.w.write(s.encode())

    async def next(self):
        while not self.ready:
            data = await self.r.read(65536)
            if not data:
                raise ConnectionError("closed")
            self.nbytes += len(data)
            self.parser.feed(data)
            for ev, el in self.parser.read_events():
                if ev == "start":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        self.ready.append(el)
        return self.ready.popleft()

    async def expect(self, tag):
        el = await self.next()
        if el.tag != tag:
            raise RuntimeError(f"expected {tag}, got {el.tag} {ET.tostring(el)[:300]!r}")
        return el

    async def login(self, ctx, user, resource=None):
        self.send(OPEN)
        await self.expect("{http://etherx.jabber.org/streams}features")
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.expect("{urn:ietf:params:xml:ns:xmpp-tls}proceed")
        await self.w.start_tls(ctx, server_hostname=DOMAIN)
        self.restart()
        self.send(OPEN)
        await self.expect("{http://etherx.jabber.org/streams}features")
        tok = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{tok}</auth>")
        await self.expect("{urn:ietf:params:xml:ns:xmpp-sasl}success")
        self.restart()
        self.send(OPEN)
        await self.expect("{http://etherx.jabber.org/streams}features")
        if resource:
            await self.bind(resource)

    async def bind(self, resource):
        self.send(f"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        el = await self.expect(C + "iq")
        if el.get("type") != "result":
            raise RuntimeError("bind failed: " + ET.tostring(el).decode())

    def kill(self, how):
        self.dead = True
        sock = self.w.get_extra_info("socket")
        if how == "rst":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif how == "shut":
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.w.transport.abort()


class Stats:
    def __init__(self):
        self.resumes = 0
        self.failed = 0
        self.kills = collections.Counter()
        self.reconnect_us = []
        self.resume_us = []
        self.errors = 0
        self.problems = []


class Receiver:
    def __init__(self, bench, i):
        self.b = bench
        self.i = i
        self.user = f"u{i}"
        self.got = collections.Counter()
        self.h = 0  # stanzas parsed whole since <enable/>, mod 2^32
        self.since_r = 0
        self.fin = asyncio.Event()
        self.stream = None
        self.previd = None
        self.up = asyncio.Event()

    def handle(self, el, s):
        """One top-level element of an established stream s."""
        if el.tag in STANZAS:
            self.h = (self.h + 1) & 0xFFFFFFFF
            if el.tag == C + "message":
                mid = el.get("id")
                if el.get("type") == "error":
                    self.b.stats.errors += 1
                elif mid == f"p{self.i}-fin":
                    self.fin.set()
                elif mid:
                    self.got[mid] += 1
                    self.since_r += 1
                    if self.since_r >= self.b.args.ack_every:
                        self.since_r = 0
                        s.send(f"<r xmlns='{SM}'/>")
        elif el.tag == f"{{{SM}}}r":
            s.send(f"<a xmlns='{SM}' h='{self.h}'/>")
        elif el.tag == f"{{{SM}}}a":
            pass
        else:
            self.b.stats.problems.append(f"{self.user}: unexpected {ET.tostring(el)[:200]!r}")

    async def start(self):
        s = await Stream.connect(self.b.srv.port)
        await s.login(self.b.ctx, self.user, "phone")
        s.send(f"<enable xmlns='{SM}' resume='true'/>")
        el = await s.expect(f"{{{SM}}}enabled")
        self.previd = el.get("id")
        self.stream = s
        self.up.set()

    async def read_loop(self):
        """Reads the current stream until it dies (killed: the kill loop reconnects)."""
        while True:
            await self.up.wait()
            s = self.stream
            try:
                while True:
                    el = await s.next()
                    if s.dead:  # parsed after the kill: lost with the connection
                        break
                    self.handle(el, s)
            except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
                if s is self.stream and self.up.is_set() and not self.b.stopping:
                    self.b.stats.problems.append(f"{self.user}: the server closed the stream")
                    return
            except ET.ParseError as e:
                self.b.stats.problems.append(f"{self.user}: parse error {e}")
                return

    async def reconnect(self):
        st = self.b.stats
        while True:
            t0 = time.perf_counter()
            s = await Stream.connect(self.b.srv.port)
            await s.login(self.b.ctx, self.user)
            t1 = time.perf_counter()
            s.send(f"<resume xmlns='{SM}' previd='{self.previd}' h='{self.h}'/>")
            if random.random() >= self.b.args.kill_resuming:
                break
            # this connection dies too, before <resumed/> (or just after: not read)
            await asyncio.sleep(random.random() * 0.005)
            s.kill(random.choice(("abort", "rst", "shut")))
            st.kills["while_resuming"] += 1
        el = await s.next()
        if el.tag == f"{{{SM}}}resumed":
            t2 = time.perf_counter()
            st.resumes += 1
            st.reconnect_us.append((t2 - t0) * 1e6)
            st.resume_us.append((t2 - t1) * 1e6)
            self.stream = s
            self.since_r = 0
            self.up.set()
            return
        # a new session: what was not delivered is in offline storage (sent on presence)
        st.failed += 1
        if el.tag != f"{{{SM}}}failed" or not self.b.args.kill_resuming:
            st.problems.append(f"{self.user}: resume failed: {ET.tostring(el)[:200]!r}")
        await s.bind("phone")
        s.send(f"<enable xmlns='{SM}' resume='true'/>")
        while True:  # what is written before <enabled/> is not counted (§4)
            el = await s.next()
            if el.tag == f"{{{SM}}}enabled":
                break
            self.handle(el, s)
        self.previd = el.get("id")
        self.h = 0
        self.stream = s
        self.up.set()
        s.send("<presence/>")

    async def kill_loop(self):
        a = self.b.args
        while not self.b.stop_kills:
            await asyncio.sleep(random.expovariate(1 / a.kill_every))
            if self.b.stop_kills:
                return
            how = random.choice(("abort", "rst", "shut"))
            self.up.clear()
            self.stream.kill(how)
            self.b.stats.kills[how] += 1
            await self.reconnect()


class Bench:
    def __init__(self, args):
        self.args = args
        self.stats = Stats()
        self.stopping = False
        self.stop_kills = False
        self.ctx = tls_context()
        self.sent = 0

    async def sender(self, i, s, deadline):
        """Open loop: message k of pair i at its time, whatever the server does."""
        per = self.args.rate / self.args.pairs
        t = time.monotonic() + random.random() / per
        k = 0
        while t < deadline:
            now = time.monotonic()
            if t > now:
                await asyncio.sleep(t - now)
            s.send(f"<message to='u{i}@{DOMAIN}/phone' type='chat' id='p{i}-{k}'><body>{k}</body></message>")
            k += 1
            self.sent += 1
            t += 1 / per
        self.count[i] = k

    async def lag(self, out):
        """How late this process's event loop wakes (a 10 ms sleep): the client's own
        share of the times above, on a loaded machine."""
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            out.append((time.perf_counter() - t - 0.01) * 1e6)

    async def drain_errors(self, s):
        try:
            while True:
                el = await s.next()
                if el.tag == C + "message" and el.get("type") == "error":
                    self.stats.errors += 1
        except (ConnectionError, OSError, ssl.SSLError):
            pass

    async def run(self):
        a = self.args
        rcv = [Receiver(self, i) for i in range(a.pairs)]
        snd = []
        for i in range(0, a.pairs, 50):  # log-ins in batches
            await asyncio.gather(*(r.start() for r in rcv[i:i + 50]))
        for i in range(a.pairs):
            s = await Stream.connect(self.srv.port)
            snd.append(s)
        for i in range(0, a.pairs, 50):
            await asyncio.gather(*(s.login(self.ctx, f"u{a.pairs + j}", "pc") for j, s in enumerate(snd[i:i + 50], i)))
        self.count = [0] * a.pairs
        readers = [asyncio.ensure_future(r.read_loop()) for r in rcv]
        drains = [asyncio.ensure_future(self.drain_errors(s)) for s in snd]
        cpu0, t0 = cpu_seconds(self.srv.proc.pid), time.monotonic()
        killers = [asyncio.ensure_future(r.kill_loop()) for r in rcv]
        lags = []
        lagger = asyncio.ensure_future(self.lag(lags))
        deadline = time.monotonic() + a.duration
        await asyncio.gather(*(self.sender(i, snd[i], deadline) for i in range(a.pairs)))
        self.stop_kills = True
        await asyncio.gather(*killers)  # a reconnect under way ends
        cpu1, t1 = cpu_seconds(self.srv.proc.pid), time.monotonic()
        lagger.cancel()
        for i, s in enumerate(snd):
            s.send(f"<message to='u{i}@{DOMAIN}/phone' type='chat' id='p{i}-fin'><body>fin</body></message>")
        try:
            await asyncio.wait_for(asyncio.gather(*(r.fin.wait() for r in rcv)), a.drain)
        except asyncio.TimeoutError:
            self.stats.problems.append(f"{sum(not r.fin.is_set() for r in rcv)} receivers without the last message")
        self.stopping = True
        lost = dup = 0
        for i, r in enumerate(rcv):
            for k in range(self.count[i]):
                n = r.got.get(f"p{i}-{k}", 0)
                lost += n == 0
                dup += max(0, n - 1)
            extra = set(r.got) - {f"p{i}-{k}" for k in range(self.count[i])}
            if extra:
                self.stats.problems.append(f"u{i}: ids never sent {sorted(extra)[:5]}")
        for t in readers + drains:
            t.cancel()
        st = self.stats
        res = {"pairs": a.pairs, "rate": a.rate, "duration_s": a.duration, "kill_every_s": a.kill_every, "kill_resuming": a.kill_resuming,
               "messages": self.sent, "lost": lost, "duplicated": dup,
               "kills": dict(st.kills), "resumes": st.resumes, "failed_resumes": st.failed,
               "error_replies": st.errors,
               "reconnect_to_resumed_us": {"p50": round(pct(st.reconnect_us, 50) or 0),
                                           "p99": round(pct(st.reconnect_us, 99) or 0),
                                           "mean": round(statistics.mean(st.reconnect_us)) if st.reconnect_us else 0},
               "resume_to_resumed_us": {"p50": round(pct(st.resume_us, 50) or 0),
                                        "p99": round(pct(st.resume_us, 99) or 0)},
               "client_loop_lag_us": {"p50": round(pct(lags, 50) or 0), "p99": round(pct(lags, 99) or 0)},
               "server_cpu_us_per_msg": round((cpu1 - cpu0) / max(1, self.sent) * 1e6, 1),
               "server_cpu_share": round((cpu1 - cpu0) / (t1 - t0), 2),
               "handed_over_between_threads": self.srv.log_text().count("handed over to edge"),
               "problems": st.problems[:20], "log": self.srv.log_path}
        print(json.dumps(res))
        return 0 if lost == 0 and dup == 0 and not st.problems else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--rate", type=float, default=2000, help="messages/s, all pairs together")
    ap.add_argument("--duration", type=float, default=20, help="seconds of sending")
    ap.add_argument("--kill-every", type=float, default=3, help="mean seconds between kills of one receiver")
    ap.add_argument("--kill-resuming", type=float, default=0,
                    help="probability that the connection which sent <resume/> is killed too, at once")
    ap.add_argument("--ack-every", type=int, default=10, help="the receiver sends <r/> after this many messages")
    ap.add_argument("--drain", type=float, default=60, help="seconds to wait for the last messages")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--log-level", default="info")
    a = ap.parse_args()
    random.seed(a.seed)
    srv = Server(**{"limits.rate_stanzas": 0, "limits.sm_resume_timeout": 120,
                    "server.log_level": a.log_level})
    make_accounts(srv, 2 * a.pairs)  # receivers u0.., senders after them
    srv.start()
    b = Bench(a)
    b.srv = srv
    try:
        rc = asyncio.run(b.run())
    finally:
        stop = srv.stop()
    if stop != 0:
        print(f"xmppd exited with {stop}", file=sys.stderr)
        rc = 1
    if rc:
        print("log: " + srv.log_path, file=sys.stderr)
    sys.exit(rc)


if __name__ == "__main__":
    main()
