"""Server CPU per TLS 1.3 handshake, full against resumed (session ticket): N handshakes of
each kind on the direct-TLS port, one after another, the server's CPU (utime + stime
from /proc/PID/stat, every thread) read before and after each batch. Prints one JSON
line with microseconds of server CPU per handshake and the ratio.

Against a running server:  /usr/bin/python3 bench/tls_resume.py --port 5223 --pid PID
Or let it start one:       XMPPD_BUILD=build /usr/bin/python3 bench/tls_resume.py -n 2000

Each connection does the handshake only (the client's Finished reaches the server, which
then sends its NewSessionTicket) and closes, so the figure is the handshake and the
connection's set-up and tear-down, which both kinds pay alike.
"""
import argparse
import json
import os
import socket
import ssl
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ  # utime, stime (fields 14, 15)


def handshake(ctx, port, session=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    t = ctx.wrap_socket(s, server_hostname="localhost", session=session)
    reused = t.session_reused
    t.close()
    return reused


def batch(ctx, port, pid, n, session):
    c0, w0 = cpu_seconds(pid), time.monotonic()
    reused = sum(handshake(ctx, port, session) for _ in range(n))
    time.sleep(0.2)  # the last connections' closes
    return cpu_seconds(pid) - c0, time.monotonic() - w0, reused


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, help="direct-TLS port of a running xmppd (with --pid)")
    ap.add_argument("--pid", type=int)
    ap.add_argument("-n", type=int, default=2000, help="handshakes of each kind")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each kind is kept")
    a = ap.parse_args()
    srv = None
    if not a.port:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
        from harness import Server  # noqa: E402
        srv = Server(**{"server.io_threads": 1, "server.router_workers": 1}).start()
        a.port, a.pid = srv.tls_port, srv.proc.pid
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        # a session with a ticket: read after the handshake so the ticket is taken
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", a.port), timeout=10), server_hostname="localhost")
        s.sendall(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                  b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")
        buf = b""
        while b"</stream:features>" not in buf:
            buf += s.recv(4096)
        session = s.session
        s.close()
        if not session.has_ticket:
            raise SystemExit("the server issued no session ticket")
        for _ in range(50):  # warm-up
            handshake(ctx, a.port)
            handshake(ctx, a.port, session)
        full, resumed = [], []
        for _ in range(a.rounds):
            cpu, wall, r = batch(ctx, a.port, a.pid, a.n, None)
            if r:
                raise SystemExit("a full handshake resumed")
            full.append(cpu)
            cpu, wall, r = batch(ctx, a.port, a.pid, a.n, session)
            if r != a.n:
                raise SystemExit(f"only {r} of {a.n} handshakes resumed")
            resumed.append(cpu)
        f_us, r_us = min(full) / a.n * 1e6, min(resumed) / a.n * 1e6
        print(json.dumps({"handshakes": a.n, "rounds": a.rounds, "full_us": round(f_us, 1),
                          "resumed_us": round(r_us, 1), "ratio": round(f_us / r_us, 2)}))
    finally:
        if srv:
            srv.stop()


if __name__ == "__main__":
    main()
