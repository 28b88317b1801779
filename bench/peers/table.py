#!/usr/bin/python3
"""Side-by-side Markdown table from the xmpp-bench JSON files bench/compare.sh wrote.

  table.py OUTDIR [--servers ours,prosody,ejabberd] [--scenarios login,idle,chat,presence,everyday]

Reads OUTDIR/SCENARIO-SERVER.json (and .status when a run failed or was skipped).
Ratio columns read "how many times better ours is": value(ours)/value(peer) for metrics
where higher is better, value(peer)/value(ours) where lower is better; > 1 means ours wins.
"""
import argparse
import json
import os

HIGHER, LOWER, INFO = "higher", "lower", "info"


def g(d, path):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def chat_cpu_us_per_msg(d):
    cpu = g(d, "server.cpu_s")
    per_login = g(d, "results.server_cpu_ms_per_login") or 0
    logins = g(d, "results.logins_ok") or 0
    dl = g(d, "results.delivered")
    if cpu is None or not dl:
        return None
    return max(0.0, cpu * 1000 - per_login * logins) / dl * 1000


def sustained(d):
    off, dps = g(d, "results.offered_rate"), g(d, "results.delivered_per_s")
    if not off or dps is None:
        return None
    # nothing missing at the end, and the window's delivered rate within 3 % of the offered one
    # (the deliveries still in flight when the window closes are not counted in it)
    return "yes" if dps >= 0.97 * off and not g(d, "results.lost") else "no"


METRICS = {
    "login": [
        ("log-ins ok / failed", lambda d: f"{g(d, 'results.logins_ok')} / {g(d, 'results.logins_failed')}", INFO),
        ("log-ins/s", lambda d: g(d, "results.logins_per_s"), HIGHER),
        ("time until all logged in (s)", lambda d: g(d, "results.time_to_all_s"), LOWER),
        ("log-in latency p99 (ms)", lambda d: g(d, "results.login_latency_ms.p99"), LOWER),
        ("server CPU per log-in (ms)", lambda d: g(d, "results.server_cpu_ms_per_login"), LOWER),
        ("server RSS max (MiB)", lambda d: (g(d, "server.rss_kib_max") or 0) / 1024 or None, LOWER),
    ],
    "idle": [
        ("idle sessions", lambda d: g(d, "results.sessions"), INFO),
        ("RSS per idle session (KiB)", lambda d: g(d, "results.rss_kib_per_session"), LOWER),
        ("server RSS max (MiB)", lambda d: (g(d, "server.rss_kib_max") or 0) / 1024 or None, LOWER),
        ("server CPU while idle (% of a core)", lambda d: g(d, "results.server_cpu_pct_idle"), LOWER),
        ("log-ins/s (to get there)", lambda d: g(d, "results.logins_per_s"), HIGHER),
    ],
    "chat": [
        ("mode", lambda d: g(d, "results.mode") + (f" {g(d, 'results.offered_rate')}/s" if g(d, "results.mode") == "open" else ""), INFO),
        ("sent / delivered", lambda d: f"{fmt(g(d, 'results.sent'))} / {fmt(g(d, 'results.delivered'))}", INFO),
        ("delivered msgs/s", lambda d: g(d, "results.delivered_per_s"), HIGHER),
        ("latency p50 (ms)", lambda d: g(d, "results.latency_ms.p50"), LOWER),
        ("latency p99 (ms)", lambda d: g(d, "results.latency_ms.p99"), LOWER),
        ("latency max (ms)", lambda d: g(d, "results.latency_ms.max"), LOWER),
        ("server CPU per msg (µs, log-ins excluded)", chat_cpu_us_per_msg, LOWER),
        ("server RSS max (MiB)", lambda d: (g(d, "server.rss_kib_max") or 0) / 1024 or None, LOWER),
        ("bench CPU (s)", lambda d: g(d, "bench.cpu_s"), INFO),
    ],
    "everyday": [
        ("offered msgs/s (open loop)", lambda d: g(d, "results.offered_rate"), INFO),
        ("sent / delivered", lambda d: f"{fmt(g(d, 'results.sent'))} / {fmt(g(d, 'results.delivered'))}", INFO),
        ("delivered msgs/s", lambda d: g(d, "results.delivered_per_s"), INFO),
        ("sustained (all delivered, ≥ 97 % of the offered rate in the window)", sustained, INFO),
        ("deliveries missing when the run ended", lambda d: g(d, "results.lost"), INFO),
        ("server CPU per msg (µs)", lambda d: g(d, "results.run_server_cpu_us_per_msg"), LOWER),
        ("context switches per msg", lambda d: g(d, "results.run_server_cs_per_msg"), LOWER),
        ("read + write syscalls per msg", lambda d: g(d, "results.run_server_rw_syscalls_per_msg"), LOWER),
        ("latency p50 (ms)", lambda d: g(d, "results.latency_ms.p50"), LOWER),
        ("latency p99 (ms)", lambda d: g(d, "results.latency_ms.p99"), LOWER),
        ("server RSS max (MiB)", lambda d: (g(d, "server.rss_kib_max") or 0) / 1024 or None, LOWER),
        ("bench CPU (s)", lambda d: g(d, "bench.cpu_s"), INFO),
    ],
    "presence": [
        ("sent / delivered", lambda d: f"{fmt(g(d, 'results.sent'))} / {fmt(g(d, 'results.delivered'))}", INFO),
        ("presence deliveries/s", lambda d: g(d, "results.presence_delivered_per_s"), HIGHER),
        ("latency p50 (ms)", lambda d: g(d, "results.latency_ms.p50"), LOWER),
        ("latency p99 (ms)", lambda d: g(d, "results.latency_ms.p99"), LOWER),
        ("server RSS max (MiB)", lambda d: (g(d, "server.rss_kib_max") or 0) / 1024 or None, LOWER),
    ],
}


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def ratio(ours, peer, kind):
    if kind == INFO or not isinstance(ours, (int, float)) or not isinstance(peer, (int, float)):
        return ""
    if ours <= 0 or peer <= 0:
        return "–"
    r = ours / peer if kind == HIGHER else peer / ours
    return f"**{r:.2f}×**" if r >= 1 else f"{r:.2f}×"


def load(out, scen, server):
    path = os.path.join(out, f"{scen}-{server}.json")
    status = None
    sp = os.path.join(out, f"{scen}-{server}.status")
    if os.path.exists(sp):
        with open(sp) as f:
            status = f.read().strip()
    # everyday: a server that falls behind the offered rate leaves deliveries missing when
    # the run ends (xmpp-bench exits 1); its figures are the result, so they are shown
    partial = scen == "everyday" and status and status.startswith("failed (rc 1)") and "missing" in status
    if status and status != "ok" and not partial:
        return None, status
    try:
        with open(path) as f:
            return json.load(f), None
    except (OSError, ValueError):
        return None, status or "no result"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--servers", default="ours,prosody,ejabberd")
    p.add_argument("--scenarios", default="login,idle,chat,presence,everyday")
    a = p.parse_args()
    servers = a.servers.split(",")
    peers = [s for s in servers if s != "ours"] if "ours" in servers else []
    lines = []
    for scen in a.scenarios.split(","):
        data = {s: load(a.out, scen, s) for s in servers}
        if not any(os.path.exists(os.path.join(a.out, f"{scen}-{s}.{x}"))
                   for s in servers for x in ("json", "status")):
            continue
        any_d = next((d for d, _ in data.values() if d), None)
        params = ""
        if any_d:
            pr = any_d["params"]
            keys = {"login": ["users", "concurrency", "arrival"], "idle": ["users", "duration"],
                    "chat": ["pairs", "rate", "window", "size", "duration", "idle_extra"],
                    "everyday": ["pairs", "duration"],
                    "presence": ["users", "roster", "rate", "duration"]}[scen]
            params = ", ".join(f"{k} {pr.get(k)}" for k in keys) + f"; {pr.get('tls')} + {pr.get('mech')}"
        lines.append(f"### {scen} ({params})\n")
        head = ["metric"] + servers + [f"ours vs {p}" for p in peers]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for name, fn, kind in METRICS[scen]:
            vals = {}
            for s in servers:
                d, st = data[s]
                if d is None:
                    vals[s] = None
                    continue
                try:
                    vals[s] = fn(d)
                except (TypeError, KeyError, ZeroDivisionError):
                    vals[s] = None
            row = [name + ("" if kind == INFO else (" ↑" if kind == HIGHER else " ↓"))]
            for s in servers:
                d, st = data[s]
                row.append(fmt(vals[s]) if d is not None else f"*{st}*")
            for pe in peers:
                row.append(ratio(vals.get("ours"), vals.get(pe), kind))
            lines.append("| " + " | ".join(row) + " |")
        loads = []
        for s in servers:
            lp = os.path.join(a.out, f"{scen}-{s}.load")
            if os.path.exists(lp):
                with open(lp) as f:
                    loads.append(f.read().strip())
            else:
                loads.append("–")
        if any(x != "–" for x in loads):
            lines.append("| machine load average (1/5/15 min, at the start) | " + " | ".join(loads) + " |" + " |" * len(peers))
        lines.append("")
    lines.append("↑ higher is better, ↓ lower is better; \"ours vs X\" > 1 (bold) means ours is better by that factor.")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
