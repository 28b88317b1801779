"""Time to resume a stream (XEP-0198 §5): a client with resumption enabled gets --pending
messages it does not acknowledge, its TCP connection is killed, and a new connection
resumes the session. Two figures per round, from the client's side:
  - reconnect: from the new TCP connect to <resumed/> (STARTTLS, SASL PLAIN, <resume/>);
  - resume: from sending <resume/> to <resumed/> (the hand-over itself: the detached
    state found, possibly on the other edge thread, the router's move, the answer);
and that every pending message came back once after <resumed/>.

  XMPPD_BUILD=build /usr/bin/python3 bench/sm_resume.py -n 200 --pending 20
"""
import argparse
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from harness import DOMAIN, RawStream, Server  # noqa: E402

SM = "urn:xmpp:sm:3"


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200, help="rounds")
    ap.add_argument("--pending", type=int, default=20, help="unacknowledged messages per round")
    a = ap.parse_args()
    srv = Server(**{"limits.rate_stanzas": 0, "limits.sm_resume_timeout": 60,
                    "server.log_level": "info"})
    for u in ("alice", "bob"):
        srv.adduser(f"{u}@{DOMAIN}", "pw")
    srv.start()
    try:
        alice = RawStream(srv.port).login("alice", "pw", "pc")
        bob = RawStream(srv.port).login("bob", "pw", "phone")
        bob.buf = b""
        bob.send(f"<enable xmlns='{SM}' resume='true'/>")
        previd = re.search(r"id='([0-9a-f]+)'", bob.recv_until("<enabled[^>]*/>")).group(1)
        h = 0
        reconnect, resume = [], []
        detached = 0
        for rnd in range(a.n):
            bob.buf = b""
            tag = f"r{rnd}-"
            alice.send("".join(f"<message to='bob@{DOMAIN}/phone' type='chat'><body>{tag}{i}</body></message>"
                               for i in range(a.pending)))
            bob.recv_until(f"{tag}{a.pending - 1}</body>")
            bob.sock.close()
            # wait until the server saw the loss (else the resume drops the old connection
            # itself: also correct, but not what is timed here)
            while srv.log_text().count("detached for resumption") <= detached:
                time.sleep(0.001)
            detached += 1
            t0 = time.perf_counter()
            bob = RawStream(srv.port)
            bob.starttls()
            bob.auth_plain("bob", "pw")
            bob.buf = b""
            t1 = time.perf_counter()
            bob.send(f"<resume xmlns='{SM}' previd='{previd}' h='{h}'/>")
            bob.recv_until("<resumed[^>]*/>")
            t2 = time.perf_counter()
            text = bob.recv_until(f"{tag}{a.pending - 1}</body>")
            got = re.findall(rf"<body>{tag}(\d+)</body>", text)
            assert got == [str(i) for i in range(a.pending)], got
            h += a.pending
            reconnect.append((t2 - t0) * 1e6)
            resume.append((t2 - t1) * 1e6)
        res = {"rounds": a.n, "pending": a.pending,
               "reconnect_us": {"p50": round(pct(reconnect, 50)), "p99": round(pct(reconnect, 99)),
                                "mean": round(statistics.mean(reconnect))},
               "resume_us": {"p50": round(pct(resume, 50)), "p99": round(pct(resume, 99)),
                             "mean": round(statistics.mean(resume))},
               "handed_over_between_threads": srv.log_text().count("handed over to edge")}
        print(json.dumps(res))
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
