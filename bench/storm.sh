#!/usr/bin/env bash
# A reconnect storm (issue 11): N sessions log in, then all drop at once (TCP reset, as a
# network event does) and reconnect at once. Each mode runs against a fresh server with
# the same N accounts, the modes alternating over ROUNDS rounds:
#   full     full TLS handshake, SASL (--mech), a new session (bind, initial presence)
#   resume   TLS 1.3 ticket (RFC 8446 §2.2), SASL, XEP-0198 <resume/> of the dropped session
#   fast     TLS 1.3 ticket, SASL2 (XEP-0388) with the FAST token (XEP-0484) the first log-in
#            asked for, and the XEP-0198 <resume/> inline in <authenticate/>: one round trip
#            after TLS, no PBKDF2, no stream restart
# Figures per run (xmpp-bench storm): time from the drop until every session is back,
# reconnect latency (TCP connect to <resumed/> or to the bound session), server CPU per
# reconnect; printed as one line per run and, at the end, the medians with the ratio
# against full.
#
#   bench/storm.sh [N] [ROUNDS] [MECH]        defaults: 2000 3 SCRAM-SHA-256
#
# The JSON files stay in build/storm/.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/peers/common.sh
N=${1:-2000}
ROUNDS=${2:-3}
MECH=${3:-SCRAM-SHA-256}
MODES=${MODES:-"full resume fast"}
OUT=build/storm
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
[ -x build/xmpp-bench ] && [ -x build/xmppd ] || make build >&2
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null

flags() {
  case $1 in
    full) echo "" ;;
    resume) echo "--sm --tickets" ;;
    fast) echo "--fast --sm --tickets" ;;
    *) die "unknown mode $1" ;;
  esac
}

run() { # MODE ROUND
  local mode=$1 dir="$OUT/$1.srv" port pid
  port=$(free_port)
  pid=$(bench/peers/ours.sh start --dir "$dir" --port "$port" --cert "$OUT/cert.pem" --key "$OUT/key.pem" \
        --users "$N" --password secret)
  # shellcheck disable=SC2046
  build/xmpp-bench storm --port "$port" --users "$N" --mech "$MECH" --password secret $(flags "$mode") \
    --duration 60 --server-pid "$pid" --json "$OUT/$mode.$2.json" --quiet >"$OUT/$mode.$2.out" 2>&1 || {
      cat "$OUT/$mode.$2.out" >&2
      bench/peers/ours.sh stop --dir "$dir"
      die "storm run $mode failed"
    }
  bench/peers/ours.sh stop --dir "$dir"
  $PY - "$OUT/$mode.$2.json" "$mode" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["results"]["storm"]
print(f"{sys.argv[2]:7s} {s['back']}/{s['dropped']} back in {s['time_to_all_back_s']:.2f} s, "
      f"TLS resumed {s['tls_resumed']}, XEP-0198 resumed {s['sm_resumed']}; reconnect p50 "
      f"{s['reconnect_latency_ms']['p50']:.0f} ms p99 {s['reconnect_latency_ms']['p99']:.0f} ms; "
      f"server CPU {s['server_cpu_ms_per_reconnect']:.3f} ms per reconnect")
PY
}

for r in $(seq "$ROUNDS"); do
  for m in $MODES; do run "$m" "$r"; done
done
$PY - "$OUT" "$ROUNDS" $MODES <<'PY'
import json, statistics, sys
out, rounds, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
med = {}
for m in modes:
    runs = [json.load(open(f"{out}/{m}.{r}.json"))["results"]["storm"] for r in range(1, rounds + 1)]
    med[m] = {k: statistics.median(x[k] for x in runs) for k in ("server_cpu_ms_per_reconnect", "time_to_all_back_s")}
    med[m]["p99"] = statistics.median(x["reconnect_latency_ms"]["p99"] for x in runs)
base = med[modes[0]]
print(f"medians over {rounds} round(s); ratios against {modes[0]}")
for m in modes:
    x = med[m]
    print(f"{m:7s} server CPU {x['server_cpu_ms_per_reconnect']:.3f} ms/reconnect "
          f"({x['server_cpu_ms_per_reconnect'] / base['server_cpu_ms_per_reconnect']:.2f}x), "
          f"all back in {x['time_to_all_back_s']:.2f} s ({x['time_to_all_back_s'] / base['time_to_all_back_s']:.2f}x), "
          f"p99 reconnect {x['p99']:.0f} ms ({x['p99'] / base['p99']:.2f}x)")
PY
