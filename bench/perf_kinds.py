#!/usr/bin/python3
"""Where a server's CPU goes, by kind of work, from a `perf record -g` file (bench/cluster.sh --perf).

  perf_kinds.py PERF.DATA [--json XMPP-BENCH.JSON] [--pids PIDS-FILE] [--top N]

Every sample is put in one kind: a kernel sample by the system call it is under (a read or
a write on a TCP socket, on an eventfd, epoll_wait, ...; a TCP write includes the loopback
delivery to the receiving socket that the kernel does in the sender's context), a sample
outside any system call in the kernel by itself (interrupts, scheduling, page faults), a
user-space sample by its library (xmppd's own code, libc, libuv, wolfSSL, libxml2, ...).
With --json (the xmpp-bench report of the same run) each share is also given in µs per
delivered message (run_server_cpu_us_per_msg × share: it assumes the perf window looks like
the whole measurement window). With --pids (deploy/local-cluster.sh's DIR/pids: "name pid
prog" lines) the shares per process are labelled with the node's name. Then the top
user-space symbols (self time).
"""
import argparse
import collections
import json
import subprocess
import sys

SYSCALL_PREFIXES = ("__x64_sys_", "__do_sys_", "ksys_", "__sys_")


def kind(frames):
    syms = [s for s, _ in frames]
    leafdso = frames[0][1]
    sc = None
    for s in reversed(syms):  # outermost first: the system call's entry
        if s.startswith(SYSCALL_PREFIXES):
            sc = s
            for p in SYSCALL_PREFIXES:
                if sc.startswith(p):
                    sc = sc[len(p):]
                    break
            break
    if sc is None and leafdso != "[kernel.kallsyms]":
        return "user: " + ("xmppd (own code)" if leafdso == "xmppd" else leafdso)
    if sc is None:
        return "kernel outside system calls (interrupts, scheduling, faults)"
    tcp = any(s.startswith("tcp_") for s in syms)
    efd = any(s.startswith("eventfd") for s in syms)
    if sc in ("write", "writev", "sendto", "sendmsg"):
        return "write: TCP (incl. loopback delivery)" if tcp else "write: eventfd (wake-up)" if efd else "write: other"
    if sc in ("read", "readv", "recvfrom", "recvmsg"):
        return "read: TCP" if tcp else "read: eventfd" if efd else "read: other"
    if sc.startswith("epoll_wait") or sc.startswith("epoll_pwait"):
        return "epoll_wait (incl. going to sleep and waking)"
    return "syscall: " + sc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--json")
    ap.add_argument("--pids")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    us = None
    if a.json:
        with open(a.json) as f:
            us = json.load(f)["results"].get("run_server_cpu_us_per_msg")
    names = {}
    if a.pids:
        with open(a.pids) as f:
            for line in f:
                p = line.split()
                if len(p) >= 2:
                    names[p[1]] = p[0]
    out = subprocess.run(["perf", "script", "-i", a.data, "-F", "pid,ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout
    kinds, per_pid, user_syms = collections.Counter(), collections.Counter(), collections.Counter()
    per_pid_kind = collections.defaultdict(collections.Counter)
    n = 0
    for block in out.split("\n\n"):
        lines = [l for l in block.split("\n") if l.strip()]
        if len(lines) < 2:
            continue
        frames = []
        for l in lines[1:]:
            p = l.strip().split(None, 1)
            if len(p) < 2:
                continue
            sym, _, dso = p[1].rpartition(" (")
            frames.append((sym.split("+0x")[0], dso.rstrip(")").split("/")[-1]))
        if not frames:
            continue
        n += 1
        pid = lines[0].split()[0]
        k = kind(frames)
        kinds[k] += 1
        per_pid[pid] += 1
        per_pid_kind[pid][k] += 1
        if frames[0][1] != "[kernel.kallsyms]":
            user_syms[f"{frames[0][0]} ({frames[0][1]})"] += 1
    if not n:
        sys.exit("no samples")
    print(f"{n} samples" + (f"; server CPU {us:.1f} µs per delivered message" if us else ""))

    def show(counter, total, indent="  "):
        for k, c in counter.most_common():
            share = c / total
            extra = f"  {share * us * total / n:6.1f} µs/msg" if us else ""
            print(f"{indent}{share * 100:5.1f} %{extra}  {k}")

    show(kinds, n)
    if len(per_pid) > 1:
        print("per process (share of all samples, then its own breakdown):")
        for pid, c in sorted(per_pid.items(), key=lambda x: names.get(x[0], x[0])):
            print(f"  {names.get(pid, pid)} ({pid}): {c * 100 / n:.1f} %")
            for k, kc in per_pid_kind[pid].most_common(6):
                print(f"      {kc * 100 / c:5.1f} %  {k}")
    print(f"top user-space symbols (self, % of all samples):")
    for s, c in user_syms.most_common(a.top):
        print(f"  {c * 100 / n:5.1f} %  {s}")


if __name__ == "__main__":
    main()
