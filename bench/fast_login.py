"""Server CPU per SASL2 log-in: PLAIN, SCRAM-SHA-256 and FAST (XEP-0484 HT-SHA-256-NONE),
N log-ins of each kind one after another on the direct-TLS port, every one on a resumed
TLS 1.3 session (the same ticket), so that what differs between the kinds is the SASL
exchange. Each log-in: TLS, stream header, features, <authenticate/> (SCRAM: one
challenge round trip), <success/>, </stream:stream>. The server's CPU (utime + stime of
every thread, /proc/PID/stat) is read before and after each batch. Prints one JSON line:
microseconds of server CPU per log-in for each kind, and FAST against SCRAM and PLAIN.

    XMPPD_BUILD=build /usr/bin/python3 bench/fast_login.py -n 2000

The client caches SCRAM's salted password (as clients do), so the client's PBKDF2 does
not slow the loop down; the server never runs PBKDF2 for SCRAM (it keeps StoredKey and
ServerKey), it does for PLAIN (on its thread pool, counted here: every thread).
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import socket
import ssl
import sys
import time
import uuid

HZ = os.sysconf("SC_CLK_TCK")
NS = "urn:xmpp:sasl:2"
HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def b64(b):
    return base64.b64encode(b).decode()


class Conn:
    def __init__(self, ctx, port, session):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.t = ctx.wrap_socket(s, server_hostname="localhost", session=session)
        self.buf = ""

    def until(self, pat):
        rx = re.compile(pat, re.S)
        while not rx.search(self.buf):
            chunk = self.t.recv(65536)
            if not chunk:
                raise RuntimeError("closed: " + self.buf[-500:])
            self.buf += chunk.decode()
        m = rx.search(self.buf)
        self.buf = self.buf[m.end():]
        return m

    def send(self, s):
        self.t.sendall(s.encode())

    def close(self):
        try:
            self.send("</stream:stream>")
            self.t.close()
        except OSError:
            pass


SALTED = {}


def login(ctx, port, session, kind, ua, token=None, want_token=False):
    c = Conn(ctx, port, session)
    c.send(HEADER)
    c.until("</stream:features>")
    if session is not None and not c.t.session_reused:
        raise RuntimeError("TLS session not resumed")
    agent = f"<user-agent id='{ua}'/>" + ("<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"
                                          if want_token else "")
    if kind == "PLAIN":
        ir = b64(b"\0bench\0pw")
        c.send(f"<authenticate xmlns='{NS}' mechanism='PLAIN'><initial-response>{ir}"
               f"</initial-response>{agent}</authenticate>")
    elif kind == "FAST":
        proof = hmac.new(token.encode(), b"Initiator", "sha256").digest()
        c.send(f"<authenticate xmlns='{NS}' mechanism='HT-SHA-256-NONE'><initial-response>"
               f"{b64(b'bench' + bytes([0]) + proof)}</initial-response>{agent}</authenticate>")
    else:
        nonce = b64(os.urandom(18))
        bare = f"n=bench,r={nonce}"
        c.send(f"<authenticate xmlns='{NS}' mechanism='SCRAM-SHA-256'><initial-response>"
               f"{b64(('n,,' + bare).encode())}</initial-response>{agent}</authenticate>")
        sf = base64.b64decode(c.until(r"<challenge xmlns='urn:xmpp:sasl:2'>([^<]*)</challenge>").group(1)).decode()
        at = dict(kv.split("=", 1) for kv in sf.split(","))
        key = (at["s"], at["i"])
        if key not in SALTED:
            SALTED[key] = hashlib.pbkdf2_hmac("sha256", b"pw", base64.b64decode(at["s"]), int(at["i"]))
        ck = hmac.new(SALTED[key], b"Client Key", "sha256").digest()
        without = f"c=biws,r={at['r']}"
        sig = hmac.new(hashlib.sha256(ck).digest(), f"{bare},{sf},{without}".encode(), "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(ck, sig))
        c.send(f"<response xmlns='{NS}'>{b64(f'{without},p={b64(proof)}'.encode())}</response>")
    m = c.until(r"<success xmlns='urn:xmpp:sasl:2'>.*?</success>|<failure.*?</failure>")
    text = m.group(0)
    if not text.startswith("<success"):
        raise RuntimeError(f"{kind}: {text}")
    tok = re.search(r"token='([^']+)'", text)
    c.close()
    return tok.group(1) if tok else None


def batch(ctx, port, pid, n, session, kind, ua, token):
    c0, w0 = cpu_seconds(pid), time.monotonic()
    for _ in range(n):
        login(ctx, port, session, kind, ua, token)
    time.sleep(0.2)  # the last connections' closes
    return cpu_seconds(pid) - c0, time.monotonic() - w0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000, help="log-ins of each kind per round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each kind is kept")
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
    from harness import Server  # noqa: E402
    srv = Server(**{"server.io_threads": 1, "server.router_workers": 1})
    srv.adduser("bench@localhost", "pw")
    srv.start()
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        # one full handshake for the ticket (read after some data: TLS 1.3 sends it late)
        c = Conn(ctx, srv.tls_port, None)
        c.send(HEADER)
        c.until("</stream:features>")
        session = c.t.session
        c.close()
        ua = str(uuid.uuid4())
        token = login(ctx, srv.tls_port, session, "SCRAM-SHA-256", ua, want_token=True)
        best = {}
        for _ in range(a.rounds):
            for kind in ("PLAIN", "SCRAM-SHA-256", "FAST"):
                cpu, wall = batch(ctx, srv.tls_port, srv.proc.pid, a.n, session, kind, ua, token)
                us = cpu / a.n * 1e6
                if kind not in best or us < best[kind][0]:
                    best[kind] = (us, wall / a.n * 1e3)
        out = {"logins_per_kind": a.n, "rounds": a.rounds}
        for k, (us, ms) in best.items():
            out[f"{k}_server_cpu_us"] = round(us, 1)
            out[f"{k}_wall_ms"] = round(ms, 3)
        out["FAST_vs_SCRAM"] = round(best["FAST"][0] / best["SCRAM-SHA-256"][0], 3)
        out["FAST_vs_PLAIN"] = round(best["FAST"][0] / best["PLAIN"][0], 3)
        print(json.dumps(out))
    finally:
        assert srv.stop() == 0, srv.log_text()


if __name__ == "__main__":
    main()
