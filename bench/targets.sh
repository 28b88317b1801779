#!/usr/bin/env bash
# The figures the performance issue asks of xmppd alone, in one command (the side-by-side
# with Prosody and ejabberd is bench/compare.sh):
#
#   bench/targets.sh [--out DIR] [--quick]
#
#   login    10,000 log-ins, STARTTLS + SCRAM-SHA-256, as fast as they come (concurrency 400):
#            log-ins/s and server CPU per log-in
#   idle     10,000 and 19,000 authenticated sessions with presence (one server process
#            holds at most ~19,900 under a 20,000 open-file limit): RSS per session
#   chat     1,000 pairs, closed loop (window 4): delivered msgs/s, p99
#   big      19,000 TLS sessions in one server (1,000 chatting pairs + 17,000 idle), open loop
#            10,000 msgs/s: p50/p99/p99.9
#
# Each scenario starts a fresh server (bench/peers/ours.sh: defaults, shaper off, warn
# logs); every JSON and PNG goes to --out, and a Markdown table is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/peers/common.sh

OUT=build/targets-$(date +%Y%m%d-%H%M%S)
QUICK=0
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2; shift 2;;
    --quick) QUICK=1; shift;;
    *) die "usage: bench/targets.sh [--out DIR] [--quick]";;
  esac
done
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
[ -x build/xmpp-bench ] && [ -x build/xmppd ] || make build >&2
FAILED=0

if [ "$QUICK" = 1 ]; then
  LOGIN_N=2000 IDLE_A=1000 IDLE_B=3000 PAIRS=200 BIG_IDLE=2000 DUR=5
else
  LOGIN_N=10000 IDLE_A=10000 IDLE_B=19000 PAIRS=1000 BIG_IDLE=17000 DUR=15
fi

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null

# run NAME USERS -- xmpp-bench args...
run() {
  local name=$1 users=$2; shift 3
  local dir="$OUT/$name.srv" port pid
  port=$(free_port)
  pid=$(bench/peers/ours.sh start --dir "$dir" --port "$port" --cert "$OUT/cert.pem" --key "$OUT/key.pem" \
        --users "$users" --password secret)
  peer_log "$name: xmppd pid $pid on port $port"
  local rc=0
  rm -f "$OUT/$name.status"
  timeout 900 build/xmpp-bench "$@" --port "$port" --password secret --mech SCRAM-SHA-256 \
    --server-pid "$pid" --json "$OUT/$name.json" --plot "$OUT/$name.png" --label "$name" \
    > "$OUT/$name.out" 2>&1 || rc=$?
  # a run that lost, bounced or dropped anything exits non-zero: its row says so
  if [ "$rc" -ne 0 ]; then
    peer_log "$name: xmpp-bench exited with $rc"
    echo "xmpp-bench exited $rc: $(grep -m1 -E 'ERRORS:|exited early|cannot' "$OUT/$name.out" | sed 's/^ *//')" \
      > "$OUT/$name.status"
    FAILED=$((FAILED + 1))
  fi
  grep -v '^\s*\[' "$OUT/$name.out" | sed "s/^/  [$name] /" >&2
  bench/peers/ours.sh stop --dir "$dir" || true
}

run login "$LOGIN_N" -- login --users "$LOGIN_N" --concurrency 400
run idle-a "$IDLE_A" -- idle --users "$IDLE_A" --arrival 1500 --duration "$DUR"
run idle-b "$IDLE_B" -- idle --users "$IDLE_B" --arrival 1500 --duration "$DUR"
run chat "$((2 * PAIRS))" -- chat --pairs "$PAIRS" --window 4 --duration "$DUR"
run big "$((2 * PAIRS + BIG_IDLE))" -- chat --pairs "$PAIRS" --idle-extra "$BIG_IDLE" --rate 10000 \
  --arrival 1500 --duration "$DUR"

$PY - "$OUT" <<'EOF' | tee "$OUT/table.md"
import json, os, sys
out = sys.argv[1]
def j(name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.load(f)
    except OSError:
        return None
def failed(name):
    try:
        with open(os.path.join(out, name + ".status")) as f:
            return "**FAILED** (" + f.read().strip() + "); "
    except OSError:
        return ""
rows = []
l = j("login")
if l:
    r = l["results"]
    rows.append(("login, STARTTLS + SCRAM-SHA-256, %d users" % r.get("logins_ok", 0),
                 failed("login") + "%.0f log-ins/s, %.3f ms server CPU per log-in, %d failed" %
                 (r.get("logins_per_s", 0), r.get("server_cpu_ms_per_login", 0), r.get("logins_failed", 0))))
for n in ("idle-a", "idle-b"):
    d = j(n)
    if d:
        r = d["results"]
        rows.append(("idle, %d sessions" % r.get("sessions", 0),
                     failed(n) + "%.2f KiB per session (RSS %d -> %d KiB), server CPU idle %.2f %%" %
                     (r.get("rss_kib_per_session", 0), r.get("server_rss_kib_before", 0),
                      r.get("server_rss_kib_after", 0), r.get("server_cpu_pct_idle", 0))))
for n, what in (("chat", "chat, closed loop (window 4)"), ("big", "chat at 10,000 msgs/s open loop, with idle sessions")):
    d = j(n)
    if d:
        r = d["results"]
        lat = r.get("latency_ms", {})
        # the sessions that were online, not the ones asked for
        asked = 2 * d["params"].get("pairs", 0) + d["params"].get("idle_extra", 0)
        held = r.get("sessions", 0)
        conns = "%d sessions" % held if held == asked else "%d of %d sessions" % (held, asked)
        rows.append(("%s, %s" % (what, conns),
                     failed(n) + "%.0f msgs/s delivered (%d/%d, %d errors), p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms" %
                     (r.get("delivered_per_s", 0), r.get("delivered", 0), r.get("sent", 0), r.get("errors", 0),
                      lat.get("p50", 0), lat.get("p99", 0), lat.get("p999", 0))))
print("| scenario | result |")
print("|---|---|")
for a, b in rows:
    print(f"| {a} | {b} |")
for n in ("login", "idle-a", "idle-b", "chat", "big"):
    d = j(n)
    if d:
        b = d.get("bench", {})
        print(f"\n{n}: bench CPU {b.get('cpu_s', 0):.1f} s, {b.get('procs', 0)} process(es), fd limit {b.get('fd_limit', 0)}", end="")
print()
EOF
if [ "$FAILED" -ne 0 ]; then
  echo "targets.sh: $FAILED run(s) failed (see the **FAILED** rows)" >&2
  exit 1
fi
