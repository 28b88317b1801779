"""A persistent flooder for bench/flood_cost.sh: logs in over STARTTLS (SASL PLAIN), sends
messages as fast as --rate allows, and when the server disconnects it (the shaper's
<policy-violation/>) logs in again and goes on, until --seconds have passed. Prints one
JSON line: messages written, disconnects, stream errors seen.

  /usr/bin/python3 bench/flood_cost.py --port P --user u --password pw --to v@localhost --rate 2000 --seconds 15
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from harness import RawStream  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--seconds", type=float, default=15)
    a = ap.parse_args()
    end = time.monotonic() + a.seconds
    sent = kicks = policy = 0
    batch = max(1, int(a.rate / 50))
    while time.monotonic() < end:
        try:
            r = RawStream(a.port, timeout=5).login(a.user, a.password, "flood")
        except Exception:
            time.sleep(0.2)
            continue
        r.sock.settimeout(0.5)
        t0 = time.monotonic()
        try:
            while time.monotonic() < end:
                msg = "".join(f"<message to='{a.to}' type='chat'><body>flood {sent + i}</body></message>"
                              for i in range(batch))
                r.sock.sendall(msg.encode())
                sent += batch
                due = t0 + sent / a.rate
                while time.monotonic() < due:
                    time.sleep(max(0, min(0.02, due - time.monotonic())))
        except Exception:
            pass
        try:
            r.sock.settimeout(1)
            data = r.sock.recv(65536)
            policy += b"<policy-violation" in data or b"policy-violation" in r.buf
        except Exception:
            pass
        kicks += 1
        r.close()
    print(json.dumps({"sent": sent, "disconnects": kicks, "policy_violations_seen": policy}))


if __name__ == "__main__":
    main()
