"""Server RSS per idle session, up to ~19,000 sessions in a few minutes.

Starts xmppd (build/ by default, or $XMPPD_BUILD) on free loopback ports and logs in idle
sessions in steps: each session is a raw socket speaking STARTTLS (TLS 1.3 via Python's
ssl), SASL SCRAM-SHA-256 (or PLAIN), resource binding and initial presence, one account
each, then stays silent. Clients run in several processes (asyncio, bounded concurrency)
so no process needs more than ~5,000 descriptors, and bind source addresses spread over
127.0.x.y so ephemeral ports never run out.

At every checkpoint it waits until the server's RSS is steady and prints RSS (from
/proc/PID/status) minus the baseline (the server after a warm-up of a few sessions),
divided by the sessions added. When the server was built with jemalloc it also asks
it (SIGUSR1) for jemalloc's allocated/resident figures, which are in the log.

  /usr/bin/python3 bench/idle_rss.py [N1 N2 ...]     e.g.  1000 10000 19000
  options: --procs P (client processes, default 4), --mech PLAIN|SCRAM-SHA-256,
           --set section.key=value (server option), --keep (leave the server's files)

One xmppd process can hold at most about 19,900 client sockets under a 20,000 open-file
limit; checkpoints above that are refused.
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import multiprocessing as mp
import os
import re
import shutil
import sqlite3
import ssl
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from harness import DOMAIN, Server, insecure_context, rss_kib  # noqa: E402

PASSWORD = "bench-pw"
HEADER = (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          f"xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' version='1.0'>").encode()




def steady_rss(pid, settle=1.0, timeout=30.0):
    """RSS once two readings `settle` seconds apart agree within 0.1 %."""
    end = time.time() + timeout
    prev = rss_kib(pid)
    while True:
        time.sleep(settle)
        cur = rss_kib(pid)
        if abs(cur - prev) <= max(64, cur // 1000) or time.time() > end:
            return cur
        prev = cur


# ---------------------------------------------------------------- client side (asyncio)

class Session:
    def __init__(self, reader, writer):
        self.r, self.w, self.buf = reader, writer, b""

    async def until(self, pattern):
        rx = re.compile(pattern, re.S)
        while True:
            m = rx.search(self.buf)
            if m:
                out, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return out
            chunk = await self.r.read(65536)
            if not chunk:
                raise ConnectionError(f"closed before {pattern!r}: {self.buf[-300:]!r}")
            self.buf += chunk

    def send(self, data):
        self.w.write(data)


def scram_client(user, salted_cache):
    """Returns (first message, function(server_first) -> (final message, expected v))."""
    nonce = base64.b64encode(os.urandom(18)).decode()
    bare = f"n={user},r={nonce}"

    def final(server_first):
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        salt, it, rnonce = base64.b64decode(attrs["s"]), int(attrs["i"]), attrs["r"]
        key = (attrs["s"], it)
        if key not in salted_cache:
            salted_cache[key] = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, it)
        salted = salted_cache[key]
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={rnonce}"
        auth_msg = f"{bare},{server_first},{without_proof}".encode()
        sig = hmac.new(stored, auth_msg, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        v = base64.b64encode(hmac.new(server_key, auth_msg, "sha256").digest()).decode()
        return f"{without_proof},p={base64.b64encode(proof).decode()}", v

    return "n,," + bare, final


async def login(port, idx, src, mech, ctx, salted_cache):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
    s = Session(reader, writer)
    s.send(HEADER)
    await s.until(rb"</stream:features>")
    s.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await s.until(rb"<proceed[^>]*/>")
    await writer.start_tls(ctx, server_hostname=DOMAIN)
    s.buf = b""
    s.send(HEADER)
    await s.until(rb"</stream:features>")
    user = f"u{idx}"
    if mech == "PLAIN":
        tok = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        s.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{tok}</auth>".encode())
    else:
        first, final = scram_client(user, salted_cache)
        s.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>"
               f"{base64.b64encode(first.encode()).decode()}</auth>".encode())
        ch = await s.until(rb"<challenge[^>]*>[^<]*</challenge>")
        server_first = base64.b64decode(re.search(rb">([^<]*)<", ch).group(1)).decode()
        msg, _v = final(server_first)
        s.send(f"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
               f"{base64.b64encode(msg.encode()).decode()}</response>".encode())
    await s.until(rb"<success[^>]*(/>|>[^<]*</success>)")
    s.buf = b""
    s.send(HEADER)
    await s.until(rb"</stream:features>")
    s.send(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           b"<resource>r</resource></bind></iq>")
    await s.until(rb"</iq>")
    s.send(b"<presence/>")
    await writer.drain()
    return writer


async def client_main(wid, nprocs, port, mech, conn):
    ctx = insecure_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    salted_cache = {}
    writers = []
    sem = asyncio.Semaphore(32)
    failures = 0

    async def one(idx):
        nonlocal failures
        src = f"127.{1 + wid}.{(idx // 250) % 250 + 1}.{idx % 250 + 2}"
        async with sem:
            for attempt in range(3):
                try:
                    writers.append(await asyncio.wait_for(login(port, idx, src, mech, ctx, salted_cache), 60))
                    return
                except (OSError, ConnectionError, asyncio.TimeoutError, ssl.SSLError) as e:
                    err = e
                    await asyncio.sleep(0.2)
            failures += 1
            if failures <= 3:
                print(f"client {wid}: session u{idx} failed: {err!r}", file=sys.stderr)

    loop = asyncio.get_running_loop()
    have = 0
    while True:
        target = await loop.run_in_executor(None, conn.recv)
        if target is None:
            break
        # this process logs in accounts wid, wid + P, wid + 2P, ... below target
        idxs = [i for i in range(have, target) if i % nprocs == wid]
        await asyncio.gather(*(one(i) for i in idxs))
        have = target
        conn.send((len(writers), failures))
    for w in writers:
        w.transport.abort()
    conn.send("bye")


def client_proc(wid, nprocs, port, mech, conn):
    asyncio.run(client_main(wid, nprocs, port, mech, conn))


# ---------------------------------------------------------------- server side

def make_accounts(srv, n):
    srv.adduser(f"u0@{DOMAIN}", PASSWORD)
    db = sqlite3.connect(srv.conf and os.path.join(srv.dir, "xmppd.db"))
    cols = [r[1] for r in db.execute("PRAGMA table_info(accounts)")]
    rest = ", ".join(c for c in cols if c != "jid")
    db.executemany(f"INSERT INTO accounts (jid, {rest}) SELECT ?, {rest} FROM accounts WHERE jid = ?",
                   ((f"u{i}@{DOMAIN}", f"u0@{DOMAIN}") for i in range(1, n)))
    db.commit()
    db.close()


def jemalloc_line(srv):
    """Asks the server for jemalloc's figures (SIGUSR1) and returns its log line, if any."""
    try:
        mark = len(srv.log_text())
        os.kill(srv.proc.pid, 10)
        time.sleep(0.3)
        m = re.findall(r"memory: [^\n]*", srv.log_text()[mark:])
        return m[-1] if m else None
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("counts", nargs="*", type=int, default=[1000])
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--mech", default="SCRAM-SHA-256", choices=["SCRAM-SHA-256", "PLAIN"])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    counts = sorted(a.counts)
    if counts[-1] > 19800:
        ap.error("one server process holds at most ~19,800 sessions under a 20,000 open-file limit")
    warm = 4
    opts = {"server.log_level": "info", "limits.idle_timeout": "3600"}
    for kv in a.set:
        k, v = kv.split("=", 1)
        opts[k] = v
    srv = Server(**opts)
    make_accounts(srv, counts[-1] + warm)
    srv.start()
    pid = srv.proc.pid
    pipes, procs = [], []
    ctx = mp.get_context("fork")
    for w in range(a.procs):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=client_proc, args=(w, a.procs, srv.port, a.mech, child), daemon=True)
        p.start()
        pipes.append(parent)
        procs.append(p)

    def grow(target):
        for p in pipes:
            p.send(target)
        got = [p.recv() for p in pipes]
        return sum(g[0] for g in got), sum(g[1] for g in got)

    # warm-up: a few sessions so TLS, SQLite and thread caches exist before the baseline;
    # they are counted out (accounts u0..u{warm-1})
    grow(warm)
    base = steady_rss(pid)
    print(f"xmppd {srv.proc.pid}: baseline RSS {base} KiB after {warm} warm-up sessions "
          f"(mech {a.mech}, {a.procs} client processes)")
    jl = jemalloc_line(srv)
    if jl:
        print(f"  baseline {jl}")
    print(f"{'sessions':>9} {'RSS KiB':>9} {'delta KiB':>10} {'KiB/session':>12} {'log-in s':>9}")
    results = []
    for n in counts:
        t0 = time.time()
        ok, failed = grow(n + warm)
        dt = time.time() - t0
        time.sleep(3.5)  # idle streams give their parser back after 2 s (edge sweep)
        rss = steady_rss(pid)
        live = ok - warm
        per = (rss - base) / max(1, live)
        print(f"{live:>9} {rss:>9} {rss - base:>10} {per:>12.2f} {dt:>9.1f}" +
              (f"   ({failed} failed log-ins)" if failed else ""))
        jl = jemalloc_line(srv)
        if jl:
            print(f"  {jl}")
        results.append((live, per))
        sys.stdout.flush()
    for p in pipes:
        p.send(None)
    for p in pipes:
        try:
            p.recv()
        except EOFError:
            pass
    for p in procs:
        p.join(10)
    alive = srv.alive()
    rc = srv.stop(60)
    if not alive or rc != 0:
        print(f"server exited badly (rc {rc}):\n{srv.log_text()[-3000:]}", file=sys.stderr)
        sys.exit(1)
    if not a.keep:
        shutil.rmtree(srv.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
