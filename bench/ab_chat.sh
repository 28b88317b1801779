#!/usr/bin/env bash
# Two builds of xmppd side by side on the chat scenario (one process, PAIRS pairs, closed
# loop, DURATION s), in one command: rounds alternate A, B, A, B... so that the load the
# machine carries at the time falls on both alike. Prints each run, then the medians and
# the ratios B/A of delivered msgs/s and of server CPU per delivered message (the CPU of
# the log-ins taken out).
#
#   bench/ab_chat.sh BUILD_A BUILD_B [ROUNDS] [PAIRS] [DURATION]
#
# BUILD_x: a build directory with xmppd and xmppctl (e.g. a build of the base commit made
# from `git archive`, and build/). The bench is this tree's build/xmpp-bench. JSON files
# stay in build/ab-chat/.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/peers/common.sh
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
A=$(realpath "$1") B=$(realpath "$2")
ROUNDS=${3:-3} PAIRS=${4:-500} DUR=${5:-10}
OUT=build/ab-chat
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
  build/xmpp-bench chat --port "$port" --pairs "$PAIRS" --duration "$DUR" --password secret \
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
def run(name):
    r = json.load(open(f"{out}/{name}.json"))
    res = r["results"]
    cpu = r["server"]["cpu_s"] - res.get("server_cpu_ms_per_login", 0) * res["logins_ok"] / 1000.0
    return res["delivered_per_s"], cpu / res["delivered"] * 1e6
m = {}
for side in "ab":
    runs = [run(f"{side}{i}") for i in range(1, rounds + 1)]
    for i, (dps, us) in enumerate(runs, 1):
        print(f"{side.upper()}{i}: {dps:9.0f} msgs/s delivered, server CPU {us:6.2f} us/msg")
    m[side] = (statistics.median(x[0] for x in runs), statistics.median(x[1] for x in runs))
for side in "ab":
    print(f"median {side.upper()}: {m[side][0]:9.0f} msgs/s, {m[side][1]:6.2f} us/msg")
print(f"B/A: throughput {m['b'][0] / m['a'][0]:.3f}x, CPU per message {m['b'][1] / m['a'][1]:.3f}x")
PY
