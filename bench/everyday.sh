#!/usr/bin/env bash
# Everyday load, two builds side by side: the chat scenario open loop at RATE msgs/s
# (default 8,000) on PAIRS pairs (default 1,000: 2,000 STARTTLS sessions) for DURATION s,
# rounds alternating A, B, A, B... in one command (as bench/ab_chat.sh), so whatever else
# loads the machine falls on both. For each run, over the measurement window only (log-ins
# and drain left out): the server's CPU per delivered message, its context switches per
# message (voluntary + involuntary, summed over its threads) and its read + write system
# calls per message (/proc/PID/io: epoll_wait not included), and the latency p50/p99.
# Then the medians and the ratios B/A.
#
#   bench/everyday.sh BUILD_A BUILD_B [ROUNDS] [RATE] [PAIRS] [DURATION]
#
# BUILD_x: a build directory with xmppd and xmppctl (e.g. build-base/, a build of the
# base commit, and build/). The bench is this tree's build/xmpp-bench. JSON files stay in
# build/everyday/. Settings for both servers go in the environment (XMPPD_SECTION_KEY=value).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/peers/common.sh
[ $# -ge 2 ] || { sed -n '2,16p' "$0"; exit 2; }
A=$(realpath "$1") B=$(realpath "$2")
ROUNDS=${3:-3} RATE=${4:-8000} PAIRS=${5:-1000} DUR=${6:-10}
OUT=build/everyday
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
[ -x build/xmpp-bench ] || make build >&2
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null

one() { # NAME BUILD
  local name=$1 build=$2 dir="$OUT/$1.srv" port pid
  port=$(free_port)
  pid=$(bench/peers/ours.sh start --build "$build" --dir "$dir" --port "$port" --cert "$OUT/cert.pem" \
        --key "$OUT/key.pem" --users $((2 * PAIRS)) --password secret)
  build/xmpp-bench chat --port "$port" --pairs "$PAIRS" --rate "$RATE" --duration "$DUR" --password secret \
    --server-pid "$pid" --json "$OUT/$name.json" --quiet >"$OUT/$name.out" 2>&1 || true
  bench/peers/ours.sh stop --dir "$dir"
}

for r in $(seq "$ROUNDS"); do
  one "a$r" "$A"
  one "b$r" "$B"
done
$PY - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
keys = [("run_server_cpu_us_per_msg", "CPU us/msg", "{:6.1f}"), ("run_server_cs_per_msg", "cs/msg", "{:5.2f}"),
        ("run_server_vcs_per_msg", "(vol", "{:5.2f}"), ("run_server_ivcs_per_msg", "invol)", "{:5.2f}"),
        ("run_server_rw_syscalls_per_msg", "r+w syscalls/msg", "{:5.2f}")]
def run(name):
    res = json.load(open(f"{out}/{name}.json"))["results"]
    v = {k: res[k] for k, _, _ in keys}
    v["p50"], v["p99"] = res["latency_ms"]["p50"], res["latency_ms"]["p99"]
    v["dps"], v["lost"], v["errors"] = res["delivered_per_s"], res["lost"], res["errors"]
    return v
def line(tag, v):
    s = ", ".join(f"{label} " + fmt.format(v[k]) for k, label, fmt in keys)
    return f"{tag}: {v['dps']:6.0f} msgs/s, {s}, p50 {v['p50']:.2f} p99 {v['p99']:.2f} ms"
med = {}
for side in "ab":
    runs = []
    for i in range(1, rounds + 1):
        v = run(f"{side}{i}")
        runs.append(v)
        print(line(f"{side.upper()}{i}", v) + (f"  LOST {v['lost']} ERRORS {v['errors']}" if v["lost"] or v["errors"] else ""))
    med[side] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
for side in "ab":
    print(line(f"median {side.upper()}", med[side]))
print("B/A: " + ", ".join(f"{label.strip('()')} {med['b'][k] / med['a'][k]:.3f}x" for k, label, _ in keys if med['a'][k]) +
      f", p99 {med['b']['p99'] / med['a']['p99']:.3f}x")
PY
