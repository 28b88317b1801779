"""Interim measurement until bench/xmpp-bench exists: server RSS per idle session.

Starts xmppd (build/ by default) on free loopback ports, logs N sessions (one account each) in over
STARTTLS + SASL PLAIN, binds, sends initial presence, and prints the server's RSS (from
/proc/PID/status) before and after, and the difference per session.

  /usr/bin/python3 bench/idle_rss.py [N]
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from harness import RawStream, Server  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    srv = Server(**{"server.log_level": "warn", "limits.idle_timeout": "3600"})
    for i in range(n):
        srv.adduser(f"u{i}@localhost", "pw")
    srv.adduser("bench@localhost", "pw")
    srv.start()
    # warm up: one session so TLS and SQLite caches are allocated before the baseline
    warm = RawStream(srv.port)
    warm.starttls(); warm.auth_plain("bench", "pw"); warm.bind("warm")
    time.sleep(0.5)
    before = rss_kib(srv.proc.pid)
    conns, t0 = [], time.time()
    for i in range(n):
        r = RawStream(srv.port)
        r.starttls()
        r.auth_plain(f"u{i}", "pw")
        r.bind("r")
        r.send("<presence/>")
        conns.append(r)
    elapsed = time.time() - t0
    time.sleep(1.0)
    after = rss_kib(srv.proc.pid)
    print(f"sessions: {n} (TLS 1.3, PLAIN, bound, available), log-in loop {elapsed:.1f} s (one Python client)")
    print(f"server RSS before: {before} KiB, after: {after} KiB")
    print(f"RSS per session: {(after - before) / n:.1f} KiB")
    for r in conns:
        r.close()
    warm.close()
    srv.stop()


if __name__ == "__main__":
    main()
