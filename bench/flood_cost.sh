#!/usr/bin/env bash
# What one flooding client costs everybody else, with the default limits (input shaper on):
# 500 pairs chat at 5,000 msgs/s open loop (5 msgs/s per sender, far under the 200/s
# per-connection default) for DURATION s, first alone, then while one more client floods
# at 2,000 msgs/s (10x its rate limit) and logs in again each time it is disconnected.
#
#   bench/flood_cost.sh [DURATION]
#
# Prints the chat's delivered msgs/s and latency percentiles for both runs and what the
# flooder managed; the JSON files stay in build/flood-cost/.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/peers/common.sh
DUR=${1:-15}
OUT=build/flood-cost
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
[ -x build/xmpp-bench ] && [ -x build/xmppd ] || make build >&2
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null

one() { # NAME FLOOD(0|1)
  local name=$1 flood=$2 dir="$OUT/$1.srv" port pid fpid=""
  port=$(free_port)
  pid=$(bench/peers/ours.sh start --dir "$dir" --port "$port" --cert "$OUT/cert.pem" --key "$OUT/key.pem" \
        --users 1002 --password secret --shaper --log-level info)
  if [ "$flood" = 1 ]; then
    $PY bench/flood_cost.py --port "$port" --user user1001 --password secret --to user1002@localhost \
      --rate 2000 --seconds $((DUR + 15)) >"$OUT/$name.flooder.json" &
    fpid=$!
  fi
  build/xmpp-bench chat --port "$port" --pairs 500 --rate 5000 --duration "$DUR" --password secret \
    --mech SCRAM-SHA-256 --server-pid "$pid" --json "$OUT/$name.json" --quiet >"$OUT/$name.out" 2>&1 ||
    echo "flood_cost.sh: $name: xmpp-bench exited $? (errors or losses among the well-behaved pairs): $(grep -m1 ERRORS: "$OUT/$name.out")" >&2
  [ -n "$fpid" ] && wait "$fpid" || true
  bench/peers/ours.sh stop --dir "$dir"
  grep -c "above its rate for too long" "$dir/xmppd.log" >"$OUT/$name.kicks" || true
}

one alone 0
one flooded 1
$PY - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
print("| run | delivered msgs/s | p50 ms | p99 ms | p99.9 ms | max ms |")
print("|---|---:|---:|---:|---:|---:|")
for n in ("alone", "flooded"):
    r = json.load(open(os.path.join(out, n + ".json")))["results"]
    l = r["latency_ms"]
    print(f"| {n} | {r['delivered_per_s']:.0f} ({r['delivered']}/{r['sent']}) | {l['p50']:.2f} | {l['p99']:.2f} | {l['p999']:.2f} | {l['max']:.2f} |")
f = json.load(open(os.path.join(out, "flooded.flooder.json")))
kicks = open(os.path.join(out, "flooded.kicks")).read().strip()
print(f"\nflooder: wrote {f['sent']} messages, disconnected {f['disconnects']} times; "
      f"server log: {kicks} disconnects with <policy-violation/> for persistent excess")
EOF
