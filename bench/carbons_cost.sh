#!/usr/bin/env bash
# What XEP-0280 carbons cost the server (router/mod_carbons.c): 500 pairs chat at RATE
# msgs/s open loop for DURATION s, each user also logged in a second time (resource
# "copy", priority -1: it takes no message itself, only copies), in three runs:
#   off   nobody enables carbons (the second sessions get nothing);
#   one   the chatting sessions enable carbons, the second ones do not: every check is
#         made, no copy is written;
#   both  both sessions of every user enable carbons: each message gives one sent copy
#         (to the sender's second session) and one received copy (to the recipient's).
# Server CPU per message = (server CPU over the run - CPU of the log-ins) / delivered.
#
#   bench/carbons_cost.sh [DURATION] [RATE]
#
# Prints one line per run; the JSON files stay in build/carbons-cost/.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/peers/common.sh
DUR=${1:-10}
RATE=${2:-5000}
OUT=build/carbons-cost
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
[ -x build/xmpp-bench ] && [ -x build/xmppd ] || make build >&2
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null

one() { # NAME CHAT_CARBONS(0|1) COPY_CARBONS(0|1)
  local name=$1 dir="$OUT/$1.srv" port pid cpid cflag="" kflag=""
  [ "$2" = 1 ] && cflag=--carbons
  [ "$3" = 1 ] && kflag=--carbons
  port=$(free_port)
  pid=$(bench/peers/ours.sh start --dir "$dir" --port "$port" --cert "$OUT/cert.pem" --key "$OUT/key.pem" \
        --users 1000 --password secret)
  build/xmpp-bench idle --port "$port" --users 1000 --resource copy --priority -1 $kflag \
    --duration 600 --password secret >"$OUT/$name.copy.out" 2>"$OUT/$name.copy.err" &
  cpid=$!
  for _ in $(seq 600); do # the second sessions are all on before the chat logs in
    grep -q "online 1000 " "$OUT/$name.copy.err" && break
    sleep 0.1
  done
  build/xmpp-bench chat --port "$port" --pairs 500 --rate "$RATE" --duration "$DUR" --password secret \
    $cflag --server-pid "$pid" --json "$OUT/$name.json" --quiet >"$OUT/$name.out" 2>&1 || true
  kill -INT "$cpid" 2>/dev/null || true # a report, then out
  wait "$cpid" 2>/dev/null || true
  bench/peers/ours.sh stop --dir "$dir"
  $PY - "$OUT/$name.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def find(d, k):
    if isinstance(d, dict):
        for kk, v in d.items():
            if kk == k:
                return v
            x = find(v, k)
            if x is not None:
                return x
    return None
cpu = r["server"]["cpu_s"]
logins = find(r, "logins_ok") or 0
per_login = find(r, "server_cpu_ms_per_login") or 0
delivered = find(r, "delivered")
chat_cpu = cpu - per_login * logins / 1000.0
print(f"{sys.argv[2]:5s} delivered {delivered} of {find(r, 'sent')}, p99 {r['results']['latency_ms']['p99']:.2f} ms; "
      f"server CPU {chat_cpu:.2f} s for the chat = {chat_cpu / delivered * 1e6:.1f} us/msg")
PY
}

[ -n "${ONLY:-}" ] || one off 0 0
[ -n "${ONLY:-}" ] || one one 1 0
one both 1 1
