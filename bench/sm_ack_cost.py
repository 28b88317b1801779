"""What forwarding XEP-0198 acknowledgements to the routers costs on the bus (docs/cluster.md
"Exactly once"): Redis, 1 router, 2 edges (plain processes on loopback, the tests' Node);
--pairs senders on edge 12 each chat to their own receiver on edge 11 at --rate messages/s
in all for --duration s; the receivers have stream management on and acknowledge either
after every read (--ack read: the worst case, one <a/> per message at a low rate per
client) or only when the server asks (--ack asked: it sends <r/> every 5 unacknowledged);
with --resume they enable resumption, and the edge also lists in a BUS_SM_ACK per loop
turn the copies it wrote (what a resumption after its death needs).
Once every message arrived, the nodes' metrics give: messages written by edge 11, data
frames on all bus links (xmppd_bus_link_frames_sent_total, every node), and BUS_SM_ACK
frames (xmppd_sm_ack_frames_total): how many frames a message costs with and without them.
Counts, not time: the machine's load changes only how much coalescing happens.

  XMPPD_BUILD=build /usr/bin/python3 bench/sm_ack_cost.py --pairs 50 --rate 1000 --duration 10 --ack read
"""
import argparse
import os
import re
import socket
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from harness import DOMAIN, RawStream, Redis, free_port  # noqa: E402
from test_cluster import Node, stop_all  # noqa: E402

SM = "urn:xmpp:sm:3"


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as f:
        return f.read().decode()


def total(text, name, labels=""):
    return sum(int(float(v)) for v in re.findall(rf"^{name}(?:{{[^}}]*{labels}[^}}]*}})? (\S+)", text, re.M))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=50)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--ack", choices=("read", "asked"), default="read")
    ap.add_argument("--resume", action="store_true",
                    help="the receivers enable resumption (resume='true'): their edge also tells the router at "
                         "which count it wrote each copy (docs/cluster.md \"Stream resumption across nodes\")")
    a = ap.parse_args()
    redis = Redis()
    redis.start()
    opts = {"limits.rate_stanzas": "0", "limits.sm_max_unacked": "1000", "server.log_level": "warn"}
    ports = {}
    nodes = []
    for nid, role in ((1, "router"), (11, "edge"), (12, "edge")):
        ports[nid] = free_port()
        nodes.append(Node(redis, nid, role, **dict(opts, **{"metrics.listen": f"127.0.0.1:{ports[nid]}"})))
    router, e11, e12 = nodes
    try:
        for i in range(a.pairs):
            e11.adduser(f"r{i}@{DOMAIN}", "pw")
            e11.adduser(f"s{i}@{DOMAIN}", "pw")
        for n in nodes:
            n.start()
        time.sleep(2)
        got = [0] * a.pairs
        stop = threading.Event()

        def receiver(i, r):
            h, text = 0, ""
            r.sock.settimeout(0.1)
            while not stop.is_set():
                try:
                    chunk = r.sock.recv(65536)
                except (socket.timeout, TimeoutError):
                    continue
                if not chunk:
                    return
                text += chunk.decode(errors="replace")
                n = text.count("</message>")
                asked = text.count("<r xmlns")
                h += n
                got[i] += n
                text = text[text.rfind("</message>") + 10:] if n else text
                if a.ack == "read" and n or asked:
                    r.send(f"<a xmlns='{SM}' h='{h}'/>")
                    if asked:
                        text = text.replace("<r xmlns='urn:xmpp:sm:3'/>", "")

        rcv = []
        for i in range(a.pairs):
            r = RawStream(e11.port).login(f"r{i}", "pw", "r")
            r.send(f"<enable xmlns='{SM}'" + (" resume='true'" if a.resume else "") + "/>")
            r.recv_until("<enabled")
            r.buf = b""
            rcv.append(r)
        snd = [RawStream(e12.port).login(f"s{i}", "pw", "s") for i in range(a.pairs)]
        before = {n: metrics(ports[n]) for n in ports}
        threads = [threading.Thread(target=receiver, args=(i, r), daemon=True) for i, r in enumerate(rcv)]
        for t in threads:
            t.start()
        n_msgs = int(a.rate * a.duration)
        t0 = time.monotonic()
        for k in range(n_msgs):
            i = k % a.pairs
            snd[i].send(f"<message to='r{i}@{DOMAIN}/r' type='chat' id='m{k}'><body>m{k}</body></message>")
            delay = t0 + (k + 1) / a.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        end = time.monotonic() + 60
        while sum(got) < n_msgs and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(1)  # the last acknowledgements
        stop.set()
        after = {n: metrics(ports[n]) for n in ports}

        def delta(name, labels="", nodes_=ports):
            return sum(total(after[n], name, labels) - total(before[n], name, labels) for n in nodes_)

        msgs = delta("xmppd_stanzas_out_total", 'kind="message"', (11,))
        frames = delta("xmppd_bus_link_frames_sent_total")
        acks = delta("xmppd_sm_ack_frames_total", "", (11,))
        print(f"{a.pairs} pairs, {a.rate:g} msgs/s, {a.duration:g} s, receivers ack {a.ack}: {sum(got)} of {n_msgs} "
              f"received; edge 11 wrote {msgs} messages")
        print(f"bus link data frames: {frames} ({frames / max(msgs, 1):.2f} per message), of which BUS_SM_ACK {acks} "
              f"({acks / max(msgs, 1):.2f} per message); without them {(frames - acks) / max(msgs, 1):.2f} per message")
    finally:
        stop_all(redis, nodes)


if __name__ == "__main__":
    main()
